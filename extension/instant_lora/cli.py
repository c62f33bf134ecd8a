"""Headless commands: `train` (kohya train_network.py flags), `selftest`, `caption`.

Entry points print one line per user error and exit non-zero; library code only raises.
"""

from __future__ import annotations

import argparse
import signal
import sys

from .errors import InstantLoraError

APP_HELP = """Instant LoRA - train SD1.x LoRAs that work in the WebUI as <lora:name:0.8>.

  python standalone_app.py [--port N] [--listen] [--share] [--auth user:pass] [--models-dir D] [--lora-dir D]
                           the browser app (see --help of the app: python standalone_app.py --port 7870 --help)
commands:
  train      train a LoRA (accepts kohya train_network.py flags; see `train --help`)
  caption    caption a folder of images with CLIP interrogation (see `caption --help`)
  generate   render a prompt with <lora:name:w> tags, or a weight x epoch grid of a run (see `generate --help`)
  selftest   build a tiny model, train a few steps, check the saved LoRA works (under 2 min on a CPU)
"""


def cmd_train(argv: list[str]) -> int:
    from .kohya_flags import parse_train_values
    from .request import RequestError, RunRequest, prepare_run
    from .train.events import ConsoleSink, TrainControl
    from .train.loop import run_prepared

    if any(a in ("-h", "--help") for a in argv):
        from .kohya_flags import build_parser

        build_parser().print_help()
        return 0
    values, explicit, source = parse_train_values(argv)
    try:  # validated before torch or diffusers load: a bad value costs a fraction of a second
        prepared = prepare_run(RunRequest(front="cli", values=values, explicit=frozenset(explicit)))
    except RequestError as e:
        lines = "\n".join(f"  --{k} {m}" if k else f"  {m}" for k, m in e.problems)
        raise InstantLoraError(f"Invalid training settings ({source}):\n{lines}") from None
    control = TrainControl()

    def on_sigint(signum, frame):
        # First Ctrl-C: stop after this step and save what was learned. Second: abort now.
        if control.stop_requested:
            raise KeyboardInterrupt
        print("\nstopping after this step and saving (Ctrl-C again to abort without saving)", file=sys.stderr)
        control.request_stop()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = run_prepared(prepared, sinks=[ConsoleSink()], control=control)
    finally:
        signal.signal(signal.SIGINT, previous)
    if result.path:
        print(result.path)
    return 130 if result.cancelled else 0


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


COMMANDS = {"train": cmd_train, "caption": cmd_caption, "generate": cmd_generate, "selftest": cmd_selftest}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        from .app import run_app

        return run_app(argv)
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
    try:
        return command(argv[1:])
    except InstantLoraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout.flush()
