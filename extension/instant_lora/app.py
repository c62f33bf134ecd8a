"""`python standalone_app.py`: the browser app, on 127.0.0.1 unless asked otherwise."""

from __future__ import annotations

import argparse
import sys

DEFAULT_PORT = 7870  # the WebUI (and Forge) use 7860


def parse_app_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="standalone_app.py", description="Instant LoRA in the browser.")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; the WebUI uses 7860)")
    p.add_argument("--listen", action="store_true", help="serve on 0.0.0.0 so other machines can connect (default: this machine only)")
    p.add_argument("--share", action="store_true", help="create a public Gradio share link")
    p.add_argument("--auth", help="require a login, as user:password")
    p.add_argument("--models-dir", help="folder of SD1.x checkpoints (default: the WebUI's models/Stable-diffusion, else ./models)")
    p.add_argument("--lora-dir", help="where trained LoRAs go (default: the WebUI's models/Lora, else ./output)")
    p.add_argument("--webui-dir", help="a WebUI install whose folders to use (also $INSTANT_LORA_WEBUI_DIR)")
    p.add_argument("--data-dir", default="instant_lora_data", help="uploads, presets and logs (default ./instant_lora_data)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    return p.parse_args(argv)


def exposure_warning(args) -> str | None:
    """Serving beyond this machine without a login lets anyone train, browse the server's image
    folders and write into the Lora folder: say so, once, at start."""
    if (args.listen or args.share) and not args.auth:
        flag = "--share" if args.share else "--listen"
        return (f"{flag} without --auth: anyone who can reach this app can train, open image folders on this machine "
                "and write into the Lora folder. Add --auth user:password.")
    return None


def run_app(argv: list[str]) -> int:
    from .host.standalone import StandaloneHost as Host
    from .ui import build_ui

    args = parse_app_args(argv)
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user:
            raise SystemExit("error: --auth must be user:password")
        auth = (user, password)
    warning = exposure_warning(args)
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    host = Host(models_dir=args.models_dir, lora_dir=args.lora_dir, data_dir=args.data_dir, webui_dir=args.webui_dir)
    print(f"models: {host.models_dir.resolve()}\nLoRAs go to: {host.lora_dir.resolve()}\ndata: {host.data_dir.resolve()}")
    demo = build_ui(host)
    demo.queue()
    demo.launch(server_name="0.0.0.0" if args.listen else "127.0.0.1", server_port=args.port, share=args.share, auth=auth,
                inbrowser=not args.no_browser, allowed_paths=[str(host.data_dir.resolve()), str(host.lora_dir.resolve())])
    return 0
