"""`caption DIR [options]`: headless captioning and caption lint, wired into the main CLI.

Every option comes from CaptionOptions' field help, so the CLI, the UI and the API say the same.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import MISSING
from typing import Dict, Union

from ..errors import InstantLoraError
from .options import CaptionOptions, option_fields

DESCRIPTION = """\
Caption the images of a training folder (the folder itself and its N_name subfolders) with CLIP
interrogation: each image gets '<trigger>, <best labels per category>' in <image stem>.txt.
Existing captions are kept unless --overwrite/--append. The CLIP weights are looked for on disk
first (open_clip/HF caches, ~/.cache/clip, the WebUI's models folders, --clip_search_dir); a
download happens only when they are absent and --offline is not set: once, into the HF cache
(ViT-L-14/openai: 1.71 GB), announced with its size. Without a network it stops within seconds
and says which file to put where.
With --lint, nothing is captioned: the captions are checked (empty, duplicate, missing trigger,
a tag in nearly every caption, over 75 tokens) and --fix repairs what can be repaired.
Exit status: 0 ok; 1 lint found issues left to fix; 2 error."""


def _per_category(cast):
    """'2' -> 2; 'garment=3,colour=2' -> dict; '2,garment=3' -> {'*': 2, 'garment': 3}."""
    def parse(text: str) -> Union[int, float, Dict[str, Union[int, float]]]:
        result: Dict[str, Union[int, float]] = {}
        try:
            for part in filter(None, (p.strip() for p in text.split(","))):
                name, sep, value = part.rpartition("=")
                result[name.strip() if sep else "*"] = cast(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: expected N or category=N,... ({exc})") from exc
        if list(result) == ["*"]:
            return result["*"]
        return result
    return parse


def _csv(text: str):
    return [p.strip() for p in text.split(",") if p.strip()]


def add_caption_subcommand(subparsers) -> argparse.ArgumentParser:
    """Add `caption` to an argparse subparsers object; the parser's default `func` runs it."""
    p = subparsers.add_parser(
        "caption", help="caption a folder of images with CLIP interrogation (or --lint the captions)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", metavar="DIR", help="training folder: images, or N_name subfolders of images")
    model = p.add_argument_group("model and captions")
    for f, help_text, flag in option_fields():
        default = f.default if f.default is not MISSING else f.default_factory()
        kwargs = dict(dest=f.name, help=f"{help_text} (default: {default!r})" if default not in ("", [], {}, None)
                      else help_text)
        for key in ("choices", "metavar"):
            if f.metadata.get(key):
                kwargs[key] = f.metadata[key]
        if f.type in (bool, "bool"):
            kwargs.update(action="store_true", default=False)
        elif f.name == "search_dirs":
            kwargs.update(action="append", default=[], metavar="FOLDER")
        elif f.name == "categories":
            kwargs.update(type=_csv, default=[], metavar="NAME,...")
        elif f.name == "top_k":
            kwargs.update(type=_per_category(int), default={}, metavar="N|CAT=N,...")
        elif f.name == "threshold":
            kwargs.update(type=_per_category(float), default=default, metavar="X|CAT=X,...")
        elif f.type in (int, "int"):
            kwargs.update(type=int, default=default)
        elif f.type in (float, "float"):
            kwargs.update(type=float, default=default)
        else:
            kwargs.update(type=str, default=default)
        model.add_argument(f"--{flag}", **kwargs)
    model.add_argument("--overwrite", dest="mode", action="store_const", const="overwrite",
                       help="same as --mode overwrite: replace existing captions")
    model.add_argument("--append", dest="mode", action="store_const", const="append",
                       help="same as --mode append: add new tags to existing captions")
    lint = p.add_argument_group("caption lint")
    lint.add_argument("--lint", action="store_true", help="only check the captions; no model is loaded")
    lint.add_argument("--fix", action="store_true",
                      help="with --lint: add missing triggers, drop constant/repeated tags, cut captions to 75 tokens")
    lint.add_argument("--trigger", default=None,
                      help="trigger word(s) every caption must hold (default: --caption_prefix)")
    p.set_defaults(func=run_caption_command)
    return p


def options_from_args(args: argparse.Namespace) -> CaptionOptions:
    values = {f.name: getattr(args, f.name) for f, _, _ in option_fields() if hasattr(args, f.name)}
    return CaptionOptions(**values)


class _ProgressLine:
    """n/N and images/s on one refreshed line on a terminal; a line every few seconds in logs."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.last = 0.0

    def __call__(self, done: int, total: int, rate: float) -> None:
        text = f"captioned {done}/{total} images, {rate:.2f} images/s"
        if self.tty:
            self.stream.write("\r" + text + ("\n" if done >= total else ""))
        elif done >= total or time.monotonic() - self.last > 5:
            self.stream.write(text + "\n")
            self.last = time.monotonic()
        self.stream.flush()


def run_caption_command(args: argparse.Namespace) -> int:
    from .interrogate import caption_folder
    from .lint import lint_captions

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("instant_lora.captioning")
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # printed once, here, even when the host also logs to the console
    try:
        options = options_from_args(args)
        trigger = args.trigger if args.trigger is not None else options.prefix
        if args.lint or args.fix:
            report = lint_captions(args.folder, options.caption_extension, trigger=trigger or None,
                                   fix=args.fix, max_tokens=options.max_tokens)
            print(report.summary())
            return 0 if report.ok else 1
        result = caption_folder(args.folder, options, progress=_ProgressLine())
        print(result.summary())
        for item in result.written[:3]:
            print(f"  e.g. {item.caption_file}: {item.caption}")
        report = lint_captions(args.folder, options.caption_extension, trigger=trigger or None,
                               max_tokens=options.max_tokens)
        if report.issues:
            print(report.summary())
            print("  (run `caption DIR --lint --fix` to repair the fixable ones)")
        return 0
    except InstantLoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
