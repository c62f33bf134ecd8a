"""Headless commands: `train` (kohya train_network.py flags), `selftest`, `caption`.

Entry points print one line per user error and exit non-zero; library code only raises.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from .errors import InstantLoraError

# A command line stopped by its user (Ctrl-C, also before the first step) exits 130 = 128 + SIGINT,
# the shell's own status for "interrupted": scripts and CI tell it from success (0) and from a
# failure (2: a message; 1: a bug) without learning a status of ours.
EXIT_CANCELLED = 130

APP_HELP = """Instant LoRA - train SD1.x, SD2.x and SDXL LoRAs that work in the WebUI as <lora:name:0.8>.

  python standalone_app.py [--port N] [--listen] [--share] [--auth user:pass] [--models-dir D] [--lora-dir D]
                           the browser app (see --help of the app: python standalone_app.py --port 7870 --help)
commands:
  train      train a LoRA (accepts kohya train_network.py flags; see `train --help`)
  caption    caption a folder of images with CLIP interrogation (see `caption --help`)
  generate   render a prompt with <lora:name:w> tags, or a weight x epoch grid of a run (see `generate --help`)
  selftest   build a tiny model, train a few steps, check the saved LoRA works (under 2 min on a CPU)
  models     list the SD checkpoints found here (models folder, WebUI, A1111 / Forge / ComfyUI installs) and their source
  download-model NAME [--models-dir D] [--webui-dir D]
             download a base model (sd15: SD1.5, 4.3 GB) into the models folder; resumable, checked by sha256
"""


def cmd_train(argv: list[str]) -> int:
    """Exit status: 0 trained and saved, 2 invalid settings or a failed run (one message),
    EXIT_CANCELLED (130) stopped with Ctrl-C, 1 an unexpected error (a traceback)."""
    from .kohya_flags import parse_train_command
    from .request import RequestError, RunRequest, prepare_run, validate_request
    from .train.events import ConsoleSink, TrainControl
    from .train.loop import run_prepared

    if any(a in ("-h", "--help") for a in argv):
        from .kohya_flags import build_parser

        build_parser().print_help()
        return 0
    flags = parse_train_command(argv)
    request = RunRequest(front="cli", values=flags.values, explicit=frozenset(flags.explicit), overwrite=flags.overwrite,
                         find_model=True)  # a bare model name: looked up among the checkpoints found here
    try:  # validated before torch or diffusers load: a bad value costs a fraction of a second
        if flags.problems:  # the flags' own problems and the values' problems, in one message
            try:
                validate_request(request)
            except RequestError as e:
                named = {k for k, _ in flags.problems if k}
                flags.problems += [p for p in e.problems if p[0] not in named]
            flags.raise_problems()
        prepared = prepare_run(request)
    except RequestError as e:
        flags.problems += e.problems
        flags.raise_problems()
    control = TrainControl()
    first_press: list = []
    from .train import distributed

    def on_sigint(signum, frame):
        # First Ctrl-C: stop after this step and save what was learned. Second: abort now. Under
        # torchrun a Ctrl-C arrives twice (from the terminal, then forwarded by the launcher): a
        # second signal within 2 s is the same press.
        if control.stop_requested:
            if time.monotonic() - first_press[0] < 2.0:
                return
            raise KeyboardInterrupt
        first_press.append(time.monotonic())
        if distributed.is_main():
            print("\nstopping after this step and saving (Ctrl-C again to abort without saving)", file=sys.stderr)
        control.request_stop()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = run_prepared(prepared, sinks=[ConsoleSink()], control=control)
    finally:
        signal.signal(signal.SIGINT, previous)
    if result.path and distributed.is_main():  # one line for the whole multi-process run
        print(result.path)
    return EXIT_CANCELLED if result.cancelled else 0


def cmd_caption(argv: list[str]) -> int:
    from .captioning import add_caption_subcommand, run_caption_command

    parser = argparse.ArgumentParser(prog="standalone_app.py")
    sub = parser.add_subparsers(dest="command")
    add_caption_subcommand(sub)
    args = parser.parse_args(["caption", *argv])
    return run_caption_command(args)


def cmd_generate(argv: list[str]) -> int:
    from .generate_cli import run_generate

    return run_generate(argv)


def cmd_selftest(argv: list[str]) -> int:
    from .selftest import run_selftest

    return 0 if run_selftest(verbose="--quiet" not in argv) else 1


def cmd_models(argv: list[str]) -> int:
    from .model_sources import run_models_command

    return run_models_command(argv)


def cmd_download_model(argv: list[str]) -> int:
    from .model_download import run_download_command

    return run_download_command(argv)


COMMANDS = {"train": cmd_train, "caption": cmd_caption, "generate": cmd_generate, "selftest": cmd_selftest,
            "models": cmd_models, "download-model": cmd_download_model}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        from .app import run_app

        return run_command(run_app, argv)
    if argv[0] in ("-h", "--help", "help"):
        print(APP_HELP)
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        import difflib

        close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        print(f"error: unknown command '{argv[0]}'" + (f" (did you mean '{close[0]}'?)" if close else ""), file=sys.stderr)
        print(APP_HELP, file=sys.stderr)
        return 2
    return run_command(command, argv[1:])


def run_command(command, argv: list[str]) -> int:
    """A command's exit status; a user error is one message (exit 2), Ctrl-C is EXIT_CANCELLED."""
    try:
        return command(argv)
    except InstantLoraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_CANCELLED
    finally:
        sys.stdout.flush()
