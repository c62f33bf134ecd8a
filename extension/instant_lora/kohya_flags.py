"""The reference trainer's `train_network.py` command line -> TrainConfig.

Precedence: defaults < `--config_file` TOML < flags given on the command line (as the reference).
An unknown flag is an error naming the closest known one.
"""

from __future__ import annotations

import argparse
import difflib
from pathlib import Path

from .config import FIELD_NAMES, FIELDS, TrainConfig, field_type
from .errors import InstantLoraError

GROUP_TITLES = {"model": "base model", "data": "dataset", "network": "LoRA network", "optim": "optimization",
                "memory": "precision and memory", "output": "saving", "sample": "samples during training",
                "logging": "logging"}


NOT_FLAGS = {"sample_prompt_text"}  # the app's and REST's prompt text; the command line passes a file


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would exit(2) with usage; we raise a message users can act on
        raise InstantLoraError(message)


def build_parser(prog: str = "standalone_app.py train") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, allow_abbrev=False, argument_default=argparse.SUPPRESS,
                description="Train an SD1.x LoRA. Accepts kohya train_network.py flags with their meaning and defaults.")
    p.add_argument("--config_file", help="TOML file with the same keys as these flags (flags given here win).")
    groups = {g: p.add_argument_group(t) for g, t in GROUP_TITLES.items()}
    for name, f in FIELDS.items():
        meta = f.metadata
        if meta["group"] not in groups or name in NOT_FLAGS:
            continue
        shown = getattr(TrainConfig(), name)
        help_text = meta["help"] + (f" [default: {shown}]" if shown not in (None, "", []) and not isinstance(shown, bool) else "")
        kind = field_type(name)
        kw = {"help": help_text, "dest": name}
        if kind is bool:
            kw["action"] = "store_true"
        elif kind is list:
            kw["nargs"] = "*"
        else:
            kw["type"] = kind if kind is not int else integer
            kw["metavar"] = name.upper() if kind is str else kind.__name__.upper()
            if meta["choices"]:
                kw["choices"] = meta["choices"]
        groups[meta["group"]].add_argument(f"--{name}", **kw)
    return p


def integer(v: str) -> int:
    f = float(v)  # accept "200" and "2e2" as the reference does via its TOML
    if not f.is_integer():
        raise argparse.ArgumentTypeError(f"{v} is not a whole number")
    return int(f)


def read_toml(path: Path) -> dict:
    try:
        import tomllib  # Python 3.11+
    except ModuleNotFoundError:  # the WebUI's Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise InstantLoraError("reading --config_file needs Python 3.11+ or the 'tomli' package",
                                   hint="pip install tomli") from None
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise InstantLoraError(f"cannot read --config_file {path}: {e.strerror}", path=path) from e
    except Exception as e:
        raise InstantLoraError(f"--config_file {path} is not valid TOML: {e}", path=path) from e
    # The reference flattens one level of [sections] (its GUI groups keys that way).
    flat = {}
    for k, v in data.items():
        if isinstance(v, dict):
            flat.update(v)
        else:
            flat[k] = v
    return flat


def parse_train_args(argv: list[str]) -> tuple[TrainConfig, set[str]]:
    """(config, names the user set explicitly) from a train_network.py-style command line."""
    values, explicit, source = parse_train_values(argv)
    return TrainConfig.from_dict(values, source=source), explicit


def parse_train_values(argv: list[str]) -> tuple[dict, set[str], str]:
    """(values, names the user set explicitly, where they came from) for the one request path."""
    parser = build_parser()
    known = {s for a in parser._actions for s in a.option_strings}
    ns, unknown = parser.parse_known_args(argv)
    if unknown:
        flag = unknown[0].split("=", 1)[0]
        if flag.startswith("-"):
            close = difflib.get_close_matches(flag.replace("-", "_").lstrip("_"), [k.lstrip("-") for k in known], n=1, cutoff=0.5)
            hint = f"did you mean --{close[0]}?" if close else "run `standalone_app.py train --help` for the flags"
            raise InstantLoraError(f"unknown flag {flag}", hint=hint)
        raise InstantLoraError(f"unexpected argument '{unknown[0]}'", hint="flags look like --name=value")
    given = vars(ns)
    values: dict = {}
    config_file = given.pop("config_file", None)
    if config_file:
        values.update(read_toml(Path(config_file)))
        if "config_file" in values:
            values.pop("config_file")
    explicit = set(values) | set(given)
    values.update(given)
    return values, explicit & set(FIELD_NAMES), config_file or "command line"


