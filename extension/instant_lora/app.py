"""`python standalone_app.py`: the browser app, on 127.0.0.1 unless asked otherwise."""

from __future__ import annotations

import argparse
import contextlib
import re
import difflib
import errno
import os
import socket
import sys

from .errors import InstantLoraError

DEFAULT_PORT = 7870  # the WebUI (and Forge) use 7860
APP_FLAGS_HINT = "`python standalone_app.py --port 7870 --help` lists the app's flags"


class _AppParser(argparse.ArgumentParser):
    def error(self, message):  # argparse would print its usage and exit; we say what to type instead
        raise InstantLoraError(re.sub(r"^argument (\S+): (\1 )?", r"\1 ", message), hint=APP_FLAGS_HINT)


def port_number(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number such as {DEFAULT_PORT} (got '{value:.20}')") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be between 1 and 65535 (got {port})")
    return port


def language_name(value: str) -> str:
    from .i18n import LANGUAGES, normalize

    lang = normalize(value)
    if lang == "en" and not value.lower().startswith("en"):
        raise argparse.ArgumentTypeError(f"must be one of {', '.join(LANGUAGES)} (got '{value:.20}')")
    return lang


def parse_app_args(argv: list[str]) -> argparse.Namespace:
    from .kohya_flags import parse_collecting

    p = _AppParser(prog="standalone_app.py", description="Instant LoRA in the browser.", allow_abbrev=False,
                   exit_on_error=False)
    p.add_argument("--port", type=port_number, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; the WebUI uses 7860)")
    p.add_argument("--listen", action="store_true", help="serve on 0.0.0.0 so other machines can connect (default: this machine only)")
    p.add_argument("--share", action="store_true", help="create a public Gradio share link")
    p.add_argument("--auth", help="require a login, as user:password")
    p.add_argument("--models-dir", help="folder of SD1.x, SD2.x and SDXL checkpoints (default: the WebUI's models/Stable-diffusion, else ./models)")
    p.add_argument("--lora-dir", help="where trained LoRAs go (default: the WebUI's models/Lora, else ./output)")
    p.add_argument("--webui-dir", help="a WebUI install whose folders to use (also $INSTANT_LORA_WEBUI_DIR)")
    p.add_argument("--data-dir", default="instant_lora_data", help="uploads, presets and logs (default ./instant_lora_data)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument("--lang", type=language_name, default=None,
                   help="the page's language: en or zh-TW (default: the browser's language where the installed "
                        "Gradio can follow it, else English)")
    args, rest, refused = parse_collecting(p, list(argv), keep_flag_names=True)
    problems = [f"--{flag} {message}" for flag, message in refused]
    if rest or problems:
        known = [s for a in p._actions for s in a.option_strings if s.startswith("--")]
        i = 0
        while i < len(rest):
            arg = rest[i]
            if arg.startswith("-"):
                flag = arg.split("=", 1)[0]
                close = difflib.get_close_matches("--" + flag.lstrip("-").replace("_", "-"), known, n=1, cutoff=0.5)
                problems.append(f"unknown flag {flag}" + (f": did you mean {close[0]}?" if close else ""))
                if "=" not in arg and i + 1 < len(rest) and not rest[i + 1].startswith("-"):
                    i += 1  # its value
            else:
                from .cli import COMMANDS

                problems.append(f"'{arg}' is a command: write it first, python standalone_app.py {arg} ..." if arg in COMMANDS
                                else f"unexpected argument '{arg:.60}': the app's flags look like --port 7870")
            i += 1
        raise InstantLoraError("; ".join(problems), hint=None if all("did you mean" in p for p in problems) else APP_FLAGS_HINT)
    return args


def exposure_warning(args) -> str | None:
    """Serving beyond this machine without a login lets anyone train, browse the server's image
    folders and write into the Lora folder: say so, once, at start."""
    if (args.listen or args.share) and not args.auth:
        flag = "--share" if args.share else "--listen"
        return (f"{flag} without --auth: anyone who can reach this app can train, open image folders on this machine "
                "and write into the Lora folder. Add --auth user:password.")
    return None


# ---- the port ---------------------------------------------------------------------------------

def _free_port_near(port: int) -> int | None:
    for cand in range(port + 1, min(port + 50, 65535) + 1):
        with contextlib.suppress(OSError), socket.socket() as s:
            s.bind(("127.0.0.1", cand))
            return cand
    return None


def port_error(port: int, error: OSError | None = None) -> InstantLoraError:
    """What to do when the app cannot serve on `port`."""
    code = getattr(error, "errno", None)
    if code in (errno.EACCES, errno.EPERM):
        return InstantLoraError(f"cannot serve on port {port}: permission denied (ports below 1024 need administrator rights)",
                                hint=f"pass --port N with a port above 1023, e.g. --port {DEFAULT_PORT}")
    if code not in (None, errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", errno.EADDRINUSE)) and error is not None \
            and "port" not in str(error).lower():
        return InstantLoraError(f"cannot serve on port {port}: {error.strerror or error}",
                                hint=f"pass --port N with another port, e.g. --port {DEFAULT_PORT}")
    free = _free_port_near(port)
    return InstantLoraError(f"port {port} is already in use (another Instant LoRA, a WebUI or another program serves on it)",
                            hint=f"pass --port N with a free port{f', e.g. --port {free}' if free else ''}, "
                                 "or stop the program that uses it")


def check_port(host: str, port: int) -> None:
    """Refuse a port that is taken before anything heavy is built. Bound as Gradio binds it (on
    this machine's 127.0.0.1 and on the address served)."""
    for address in dict.fromkeys(("127.0.0.1", host)):
        s = socket.socket()
        try:
            if os.name != "nt":  # on Windows SO_REUSEADDR would let a second server share a taken port
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((address, port))
        except OSError as e:
            raise port_error(port, e) from None
        finally:
            s.close()


def is_port_error(error: OSError) -> bool:
    """Gradio's "Cannot find empty port in range: N-N" (3.41, 4.x, 6.x) or a bind that failed."""
    return "empty port" in str(error) or getattr(error, "errno", None) in (errno.EADDRINUSE, errno.EACCES)


# ---- launch -----------------------------------------------------------------------------------

def banner(args, local_url: str | None, share_url: str | None) -> str:
    url = (local_url or f"http://127.0.0.1:{args.port}/").replace("://0.0.0.0:", "://127.0.0.1:")
    lines = [f"Instant LoRA is running at {url}"]
    if args.listen:
        lines.append(f"  serving on every network interface: other machines open http://<this machine's address>:{args.port}/")
    else:
        lines.append("  this machine only: --listen serves other machines on your network, --share makes a public link")
    if args.share:
        lines.append(f"  public link: {share_url}" if share_url else
                     "  no public link could be made (Gradio's share server is not reachable); --listen serves your network")
    lines.append("  Ctrl-C stops the app")
    return "\n".join(lines)


class _WithoutGradioBanner:
    """stdout during launch, less the lines Gradio prints even with quiet=True (3.41's "Running on
    local URL"); everything else (a share link that failed, errors) passes."""

    DROPPED = ("Running on local URL", "To create a public link")

    def __init__(self, stream):
        self.stream, self.dropped = stream, False

    def write(self, text: str) -> int:
        if text == "\n" and self.dropped:  # print() writes the line's end separately
            self.dropped = False
            return len(text)
        self.dropped = text.lstrip(" *").startswith(self.DROPPED)
        if not self.dropped:
            self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


def launch_i18n(demo) -> dict:
    """launch(i18n=...) for a page that follows the browser's language (Gradio 5.30+)."""
    i18n = getattr(demo, "instant_lora_i18n", None)
    return {"i18n": i18n} if i18n is not None else {}


def serve(demo, args, auth, allowed_paths: list[str]) -> None:
    """Launch quietly (Gradio's own start-up text tells the user to edit `launch()`), print our
    banner with the URL and the flags that change it, then serve until Ctrl-C."""
    try:
        with contextlib.redirect_stdout(_WithoutGradioBanner(sys.stdout)):
            demo.launch(server_name="0.0.0.0" if args.listen else "127.0.0.1", server_port=args.port, share=args.share,
                        auth=auth, inbrowser=not args.no_browser, allowed_paths=allowed_paths, quiet=True,
                        prevent_thread_lock=True, **launch_i18n(demo))
    except OSError as e:
        if not is_port_error(e):
            raise
        with contextlib.suppress(Exception):
            demo.close()
        raise port_error(args.port, e) from None
    print(banner(args, getattr(demo, "local_url", None), getattr(demo, "share_url", None)), flush=True)
    demo.block_thread()


def run_app(argv: list[str]) -> int:
    args = parse_app_args(argv)
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user:
            raise InstantLoraError("--auth must be user:password", hint="e.g. --auth me:secret")
        auth = (user, password)
    # A taken port is refused in a fraction of a second, before Gradio and the UI are built.
    check_port("0.0.0.0" if args.listen else "127.0.0.1", args.port)
    warning = exposure_warning(args)
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)

    from .host.standalone import StandaloneHost as Host
    from .ui import build_ui

    host = Host(models_dir=args.models_dir, lora_dir=args.lora_dir, data_dir=args.data_dir, webui_dir=args.webui_dir,
                lang=args.lang)
    print(f"models: {host.models_dir.resolve()}\nLoRAs go to: {host.lora_dir.resolve()}\ndata: {host.data_dir.resolve()}")
    demo = build_ui(host)
    demo.queue()
    serve(demo, args, auth, allowed_paths=[str(host.data_dir.resolve()), str(host.lora_dir.resolve())])
    return 0
