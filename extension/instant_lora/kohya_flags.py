"""The reference trainer's `train_network.py` command line -> TrainConfig.

Precedence: defaults < `--config_file` TOML < flags given on the command line (as the reference).
Every problem of a command line is reported at once: each unknown flag with the closest known one,
each value that is not of the flag's type or choices, a flag without its value.
"""

from __future__ import annotations

import argparse
import difflib
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from .config import FIELD_NAMES, FIELDS, TrainConfig, field_type
from .errors import InstantLoraError

GROUP_TITLES = {"model": "base model", "data": "dataset", "network": "LoRA network", "optim": "optimization",
                "memory": "precision and memory", "output": "saving", "sample": "samples during training",
                "logging": "logging"}


NOT_FLAGS = {"sample_prompt_text"}  # the app's and REST's prompt text; the command line passes a file
# --overwrite is no config field (and not the reference's): how this run may treat a file that
# exists already. The app and REST send the same as RunRequest.overwrite.
OVERWRITE_HELP = ("Replace an existing <output_name>.safetensors in the WebUI's Lora folder (without it such a run is "
                  "refused). In a folder of your own (--output_dir) a file is replaced with a warning.")
MULTI_GPU = ("several GPUs: torchrun --nproc_per_node N standalone_app.py train ... (or accelerate launch --num_processes N "
             "--num_cpu_threads_per_process T standalone_app.py train ...) trains one LoRA on N processes, one per GPU: each "
             "takes its share of every step's batches, so the global batch is train_batch_size x N x "
             "gradient_accumulation_steps; only the first process writes files and logs. One GPU needs none of this.")
EXIT_STATUSES = ("exit status: 0 trained and saved; 2 invalid settings, or a run that failed with a message; "
                 "130 cancelled with Ctrl-C (what was learned up to that step is saved; a second Ctrl-C aborts "
                 "without saving); 1 an unexpected error (a bug: please report it with the traceback).")


def escape_help(text: str) -> str:
    """argparse formats help texts with %: a literal percent sign ("~25% slower") must be doubled."""
    return text.replace("%", "%%")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse would exit(2) with usage; we raise a message users can act on
        raise InstantLoraError(message)


def build_parser(prog: str = "standalone_app.py train") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, allow_abbrev=False, argument_default=argparse.SUPPRESS, exit_on_error=False,
                description="Train an SD1.x, SD2.x or SDXL LoRA. Accepts kohya train_network.py flags with their meaning and defaults.",
                epilog=escape_help("\n\n".join(textwrap.fill(t, 100) for t in (MULTI_GPU, EXIT_STATUSES))),
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config_file", help=escape_help("TOML file with the same keys as these flags (flags given here win)."))
    groups = {g: p.add_argument_group(t) for g, t in GROUP_TITLES.items()}
    for name, f in FIELDS.items():
        meta = f.metadata
        if meta["group"] not in groups or name in NOT_FLAGS:
            continue
        shown = getattr(TrainConfig(), name)
        help_text = meta["help"] + (f" [default: {shown}]" if shown not in (None, "", []) and not isinstance(shown, bool) else "")
        kind = field_type(name)
        kw = {"help": escape_help(help_text), "dest": name}
        if name == "text_encoder_lr":  # the reference's: one value for every text encoder, or one each
            kw.update(nargs="+", type=number, metavar="FLOAT")
        elif kind is bool:
            kw["action"] = "store_true"
        elif kind is list:
            kw["nargs"] = "*"
        else:
            kw["type"] = {int: integer, float: number}.get(kind, kind)
            kw["metavar"] = name.upper() if kind is str else kind.__name__.upper()
            if meta["choices"]:
                kw["choices"] = meta["choices"]
        groups[meta["group"]].add_argument(f"--{name}", **kw)
    groups["output"].add_argument("--overwrite", action="store_true", dest="overwrite", help=escape_help(OVERWRITE_HELP))
    return p


def integer(v: str) -> int:
    try:
        f = float(v)  # accept "200" and "2e2" as the reference does via its TOML
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number (got '{v:.40}')") from None
    if not f.is_integer():
        raise argparse.ArgumentTypeError(f"must be a whole number (got {v:.40})")
    return int(f)


def number(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number such as 1e-4 or 0.5 (got '{v:.40}')") from None


def toml_parser(what: str):
    """tomllib (Python 3.11+) or tomli (the WebUI's Python 3.10); `what` names the file in the message."""
    try:
        import tomllib
    except ModuleNotFoundError:
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise InstantLoraError(f"reading {what} needs Python 3.11+ or the 'tomli' package",
                                   hint="pip install tomli") from None
    return tomllib


def read_toml(path: Path) -> dict:
    tomllib = toml_parser("--config_file")
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


@dataclass
class TrainFlags:
    """A parsed `train` command line: the config values, what the user set, and its problems."""
    values: dict
    explicit: set  # config fields the user set (flags or --config_file)
    source: str  # "command line" or the --config_file path
    overwrite: bool = False
    problems: list = field(default_factory=list)  # (field or "", message), all of them

    def raise_problems(self) -> None:
        if self.problems:
            lines = "\n".join(f"  --{k} {m}" if k else f"  {m}" for k, m in self.problems)
            raise InstantLoraError(f"Invalid training settings ({self.source}):\n{lines}", hint=self.hint)

    @property
    def hint(self) -> str | None:
        if any(not k and m.startswith(("unknown flag", "unexpected argument")) for k, m in self.problems):
            return "`python standalone_app.py train --help` lists every flag"
        return None


def parse_train_args(argv: list[str]) -> tuple[TrainConfig, set[str]]:
    """(config, names the user set explicitly) from a train_network.py-style command line."""
    values, explicit, source = parse_train_values(argv)
    return TrainConfig.from_dict(values, source=source), explicit


def parse_train_values(argv: list[str]) -> tuple[dict, set[str], str]:
    """(values, names the user set explicitly, where they came from); InstantLoraError listing
    every problem of the command line."""
    flags = parse_train_command(argv)
    flags.raise_problems()
    return flags.values, flags.explicit, flags.source


def parse_train_command(argv: list[str]) -> TrainFlags:
    """The command line's values and every problem in it, without raising for them (the caller
    adds the problems of the values themselves, so that one message lists all)."""
    parser = build_parser()
    ns, rest, problems = parse_collecting(parser, list(argv))
    known = sorted({s for a in parser._actions for s in a.option_strings if s.startswith("--")})
    problems += _leftover_problems(rest, known)
    given = vars(ns)
    overwrite = bool(given.pop("overwrite", False))
    values: dict = {}
    config_file = given.pop("config_file", None)
    if config_file:
        try:
            values.update(read_toml(Path(config_file)))
        except InstantLoraError as e:
            problems.append(("", str(e).replace("\n", " ")))
        values.pop("config_file", None)
        file_overwrite = values.pop("overwrite", False)
        overwrite = overwrite or file_overwrite is True
    explicit = set(values) | set(given)
    values.update(given)
    _split_text_encoder_lr(values, explicit, problems)
    return TrainFlags(values=values, explicit=explicit & set(FIELD_NAMES), source=config_file or "command line",
                      overwrite=overwrite, problems=problems)


def _split_text_encoder_lr(values: dict, explicit: set, problems: list) -> None:
    """--text_encoder_lr A [B] (or a TOML list): A for CLIP-L (and bigG unless B is given)."""
    lrs = values.get("text_encoder_lr")
    if not isinstance(lrs, list):
        return
    if not 1 <= len(lrs) <= 2:
        problems.append(("text_encoder_lr", f"takes one value, or two for SDXL's two text encoders (got {len(lrs)})"))
        values.pop("text_encoder_lr")
        return
    values["text_encoder_lr"] = lrs[0]
    if len(lrs) == 2:
        values["text_encoder_lr2"] = lrs[1]
        explicit.add("text_encoder_lr2")


def parse_collecting(parser: argparse.ArgumentParser, args: list[str], keep_flag_names: bool = False):
    """parse_known_args, collecting every flag argparse refuses: the refused flag (and its value)
    is reported and dropped, and the rest parsed again. (namespace, leftovers, [(dest, message)]);
    with keep_flag_names the flag's name as written (without dashes) instead of its dest."""
    problems: list[tuple[str, str]] = []
    actions = {s: a for a in parser._actions for s in a.option_strings}
    for _ in range(len(args) + 1):
        try:
            ns, rest = parser.parse_known_args(args)
            return ns, rest, problems
        except argparse.ArgumentError as e:
            action = actions.get((e.argument_name or "").split("/")[0])
            if action is None:
                raise InstantLoraError(e.message) from None
            problems.append((action.option_strings[0].lstrip("-") if keep_flag_names else action.dest, _explain(action, e.message)))
            names, kept, skip = set(action.option_strings), [], False
            for i, arg in enumerate(args):
                if skip:
                    skip = False
                    continue
                if arg.split("=", 1)[0] in names:
                    # its value is the next argument when not written as --flag=value
                    skip = ("=" not in arg and action.nargs is None and i + 1 < len(args)
                            and not _is_flag(args[i + 1]))
                    continue
                kept.append(arg)
            if kept == args:  # nothing to drop: report what argparse said
                raise InstantLoraError(f"{e.argument_name}: {e.message}") from None
            args = kept
    raise InstantLoraError("cannot read this command line")  # not reached: each round drops an argument


def _explain(action, message: str) -> str:
    flag = action.option_strings[0]
    if message.startswith("expected one argument"):
        return f"needs a value: {flag}=VALUE"
    m = re.match(r"ignored explicit argument (.*)", message)
    if m:
        return f"is a switch and takes no value (got {m[1]}): write {flag} alone, or leave it out"
    m = re.match(r"invalid choice: (.*?) \(choose from", message)
    if m and action.choices:
        return f"must be one of {', '.join(map(str, action.choices))} (got {m[1]})"
    return message


def _is_flag(arg: str) -> bool:
    if not arg.startswith("-"):
        return False
    try:
        float(arg)  # -1, -1e-4: a value
        return False
    except ValueError:
        return True


def _leftover_problems(rest: list[str], known: list[str]) -> list[tuple[str, str]]:
    """Every unknown flag with its closest known one, every stray argument."""
    problems: list[tuple[str, str]] = []
    names = [k[2:] for k in known]
    i = 0
    while i < len(rest):
        arg = rest[i]
        if _is_flag(arg):
            flag = arg.split("=", 1)[0]
            close = difflib.get_close_matches(flag.replace("-", "_").lstrip("_"), names, n=1, cutoff=0.5)
            problems.append(("", f"unknown flag {flag}" + (f": did you mean --{close[0]}?" if close else "")))
            if "=" not in arg and i + 1 < len(rest) and not _is_flag(rest[i + 1]):
                i += 1  # its value
        else:
            problems.append(("", f"unexpected argument '{arg:.60}': flags look like --name=value"))
        i += 1
    return problems
