"""Which image folders a run trains on, at which resolution and batch size: the command line's
folders, or a dataset config file in the reference trainer's layout (`--dataset_config`).

The file layout is kohya sd-scripts' (`library/config_util.py`, `docs/config_README-en.md`):

    [general]                   # any dataset or subset key: the default of every dataset and subset
    shuffle_caption = true
    caption_extension = ".txt"

    [[datasets]]                # one resolution, batch size and bucket setting
    resolution = 512            # or [width, height]
    batch_size = 4

      [[datasets.subsets]]      # one folder with the images directly in it (no N_name folders)
      image_dir = "train/sks"
      num_repeats = 10
      class_tokens = "sks dog"  # the caption of images that have no caption file

      [[datasets.subsets]]
      image_dir = "reg/dog"
      is_reg = true             # regularization images

A value is looked up, as the reference does, in the subset, then its dataset, then [general],
then the command line's flag of the same meaning (`batch_size` <- `--train_batch_size`, the
others by their own name), then the reference's default. Only DreamBooth-style subsets (image_dir
plus caption files) are supported; fine-tuning (`metadata_file`) and ControlNet subsets are refused.
A `.json` file with the same structure is read as JSON (the reference accepts both).

Reference keys this trainer does not act on are decided one by one (see `IGNORED` and `REFUSED`):
the ones whose absence only loses an augmentation, a speed-up or a custom hook are accepted with a
warning (their default values silently); the ones that would change what the captions say or how
strongly a dataset trains are refused. Every problem of a file is reported at once, each with its
place in the file (`datasets[1].subsets[0].num_repeats`).
"""

from __future__ import annotations

import difflib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .buckets import BucketSettings
from .config import FIELDS
from .config_values import MAX_TEXT, coerce_value
from .errors import InstantLoraError

# ----------------------------------------------------------------------------- what we produce


@dataclass(frozen=True)
class SubsetSpec:
    """One folder of images and how its captions and images are treated.

    layout "images": `image_dir` holds the images themselves; repeats and class tokens are given
    here (a dataset config's DreamBooth subset). layout "folders": `image_dir` holds N_name repeat
    folders, each giving its repeats and class tokens (what --train_data_dir / --reg_data_dir mean);
    num_repeats and class_tokens are then unused.
    """

    image_dir: str
    layout: str = "images"
    num_repeats: int = 1
    is_reg: bool = False
    class_tokens: str = ""
    caption_extension: str = ".txt"
    shuffle_caption: bool = False
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    caption_separator: str = ","
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0
    flip_aug: bool = False
    random_crop: bool = False


@dataclass(frozen=True)
class DatasetSpec:
    """Subsets trained at one resolution and batch size (a batch never mixes datasets)."""

    resolution: tuple[int, int]
    batch_size: int
    enable_bucket: bool
    min_bucket_reso: int
    max_bucket_reso: int
    bucket_reso_steps: int
    bucket_no_upscale: bool
    subsets: tuple[SubsetSpec, ...]

    def buckets(self) -> BucketSettings:
        return BucketSettings(resolution=tuple(self.resolution), enabled=bool(self.enable_bucket),
                              min_size=self.min_bucket_reso, max_size=self.max_bucket_reso,
                              step=self.bucket_reso_steps, no_upscale=bool(self.bucket_no_upscale))


class DatasetSpecs(list):
    """A list of DatasetSpec, plus `warnings` (one line each: what is ignored and why, to show the
    user before training) and `source` (the dataset config file, or None for the flags)."""

    def __init__(self, specs=(), warnings=(), source: str | None = None):
        super().__init__(specs)
        self.warnings: tuple[str, ...] = tuple(warnings)
        self.source = source

    def __repr__(self) -> str:
        return f"DatasetSpecs({list.__repr__(self)}, warnings={self.warnings!r}, source={self.source!r})"


SUBSET_OPTIONS = ("caption_extension", "shuffle_caption", "keep_tokens", "keep_tokens_separator", "caption_separator",
                  "caption_prefix", "caption_suffix", "caption_dropout_rate", "caption_dropout_every_n_epochs",
                  "caption_tag_dropout_rate", "flip_aug", "random_crop")  # same name in the file and TrainConfig
BUCKET_OPTIONS = ("enable_bucket", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale")


def _flag(config, name: str):
    return getattr(config, name, FIELDS[name].default)


def _resolution_of(config) -> tuple[int, int]:
    if hasattr(config, "resolution_wh"):
        return tuple(config.resolution_wh())
    from .config import TrainConfig

    return TrainConfig(resolution=_flag(config, "resolution")).resolution_wh()


def specs_from_config(config) -> DatasetSpecs:
    """No dataset config: one dataset from the flags, with a "folders" subset for
    --train_data_dir and, when --reg_data_dir is set, a "folders" subset with is_reg=True. Every
    option is the flag's; the folders themselves are checked when they are scanned."""
    options = {name: _flag(config, name) for name in SUBSET_OPTIONS}
    subsets = [SubsetSpec(image_dir=str(_flag(config, "train_data_dir") or ""), layout="folders", **options)]
    reg = _flag(config, "reg_data_dir")
    if reg:
        subsets.append(SubsetSpec(image_dir=str(reg), layout="folders", is_reg=True, **options))
    spec = DatasetSpec(resolution=_resolution_of(config), batch_size=_flag(config, "train_batch_size"),
                       subsets=tuple(subsets), **{name: _flag(config, name) for name in BUCKET_OPTIONS})
    return DatasetSpecs([spec])


def dataset_specs(config) -> DatasetSpecs:
    """The run's datasets: from --dataset_config when it is set, else from the flags."""
    path = _flag(config, "dataset_config")
    return read_dataset_config(path, config) if path else specs_from_config(config)


# ----------------------------------------------------------------------------- reading the file


def load_dataset_config(path) -> dict:
    """The file's tables as a dict (TOML; JSON when the name ends in .json, as the reference)."""
    path = Path(path)
    shown = f"--dataset_config {path}"
    if not path.exists():
        raise InstantLoraError(f"Dataset config not found: {path}", path=path,
                               hint="Check the path given to --dataset_config (a relative path is read from the "
                                    f"working directory, {Path.cwd()}).")
    if path.is_dir():
        raise InstantLoraError(f"{shown} is a folder, not a file", path=path,
                               hint="Pass the .toml file itself; the image folders are named inside it (image_dir).")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise InstantLoraError(f"cannot read {shown}: {e.strerror or e}", path=path,
                               hint="Check that the file exists and that you may read it.") from e
    except UnicodeDecodeError as e:
        raise InstantLoraError(f"{shown} is not UTF-8 text: {e.reason} at byte {e.start}", path=path,
                               hint="Save the file as UTF-8 text in your editor.") from e
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise InstantLoraError(f"{shown} is not valid JSON: {e}", path=path,
                                   hint="Fix the line named above, or write the file as TOML (.toml).") from e
    else:
        from .kohya_flags import toml_parser

        tomllib = toml_parser(shown)
        try:
            data = tomllib.loads(text)
        except Exception as e:
            raise InstantLoraError(f"{shown} is not valid TOML: {e}", path=path,
                                   hint="Fix the line named above: tables are [general], [[datasets]] and "
                                        "[[datasets.subsets]]; text values need quotes.") from e
    if not isinstance(data, dict):
        raise InstantLoraError(f"{shown} must hold tables ([general], [[datasets]]), not a {type(data).__name__}",
                               path=path, hint="Write the file in the layout [general], [[datasets]], [[datasets.subsets]].")
    return data


# ---- the keys: where each may stand, how its value is checked, what it falls back to

GENERAL, DATASET, SUBSET = "general", "dataset", "subset"
SHARED = (SUBSET, DATASET, GENERAL)  # a subset option: may be set for all, per dataset or per subset
PER_DATASET = (DATASET, GENERAL)
TABLE_NAMES = {GENERAL: "[general]", DATASET: "[[datasets]]", SUBSET: "[[datasets.subsets]]"}
WHERE = {"top": "at the top of the file", GENERAL: "in [general]", DATASET: "in a dataset", SUBSET: "in a subset"}
RESIZE_FILTERS = ("lanczos", "nearest", "bilinear", "linear", "bicubic", "cubic", "area", "box")
MAX_REPEATS = 100_000


def _got(value) -> str:
    """As config_values.coerce_value says what it got."""
    return f"(got {type(value).__name__} {value!r:.40})"


def _bool(value):
    return (value, None) if isinstance(value, bool) else (None, f"must be true or false {_got(value)}")


def _text(value):
    if not isinstance(value, str):
        return None, f"must be text in quotes {_got(value)}"
    if len(value) > MAX_TEXT:
        return None, f"is too long ({len(value)} characters; at most {MAX_TEXT})"
    if "\x00" in value:
        return None, "must not contain a NUL character"
    return value, None


def _number(value, low: float, high: float, whole: bool):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None, f"must be a {'whole ' if whole else ''}number {_got(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return None, f"must be a finite number (got {value})"
    if whole and isinstance(value, float) and not value.is_integer():
        return None, f"must be a whole number (got {value:g})"
    value = int(value) if whole else float(value)
    if not low <= value <= high:
        return None, f"= {value:g} is out of range: allowed {low:g} to {high:g}"
    return value, None


def _field(name: str):
    return lambda value: coerce_value(name, value)


def _num(low, high, whole=False):
    return lambda value: _number(value, low, high, whole)


def _resolution(value):
    """512 or [512, 768], as the reference; each side a multiple of 64 from 64 to 2048."""
    form = "must be a number like 512 or [width, height] like [512, 768]"
    sides = [value, value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if not isinstance(sides, list) or len(sides) != 2:
        return None, f"{form} {_got(value)}"
    out = []
    for side in sides:
        if isinstance(side, bool) or not isinstance(side, (int, float)) or not math.isfinite(side) or side != int(side):
            return None, f"{form} {_got(value)}"
        out.append(int(side))
    if any(side % 64 or not 64 <= side <= 2048 for side in out):
        return None, f"{out[0]}x{out[1]} must be multiples of 64 between 64 and 2048 (512 for SD1.5, 1024 for SDXL)"
    return tuple(out), None


def _pair(value):
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        return None, f"must be two numbers like [1.0, 3.0] {_got(value)}"
    return tuple(float(v) for v in value), None


def _choice(value):
    if not isinstance(value, str) or value not in RESIZE_FILTERS:
        return None, f"must be one of {', '.join(RESIZE_FILTERS)} {_got(value)}"
    return value, None


def _table(value):
    return (value, None) if isinstance(value, dict) else (None, f"must be a table {_got(value)}")


@dataclass(frozen=True)
class Key:
    levels: tuple
    check: object  # value -> (value, None) or (None, message)
    flag: str | None = None  # the TrainConfig field it falls back to
    default: object = None  # when neither the file nor the flags set it


def _k(levels, check, flag=None, default=None) -> Key:
    return Key(levels, check, flag, default)


KEYS = {
    # per dataset ([[datasets]] or [general])
    "resolution": _k(PER_DATASET, _resolution, "resolution"),
    "batch_size": _k(PER_DATASET, _field("train_batch_size"), "train_batch_size"),
    **{name: _k(PER_DATASET, _field(name), name) for name in BUCKET_OPTIONS},
    "validation_split": _k(PER_DATASET, _field("validation_split"), "validation_split"),
    "validation_seed": _k(PER_DATASET, _field("validation_seed"), "validation_seed"),
    "network_multiplier": _k(PER_DATASET, _num(-1000.0, 1000.0), default=1.0),
    # per subset, or for all subsets of a dataset, or for all
    "num_repeats": _k(SHARED, _num(1, MAX_REPEATS, whole=True), default=1),
    "class_tokens": _k(SHARED, _text, default=""),
    **{name: _k(SHARED, _field(name), name) for name in SUBSET_OPTIONS},
    "color_aug": _k(SHARED, _bool, default=False),
    "face_crop_aug_range": _k(SHARED, _pair),
    "secondary_separator": _k(SHARED, _text),
    "enable_wildcard": _k(SHARED, _bool, default=False),
    "token_warmup_min": _k(SHARED, _num(0, 1_000_000, whole=True), default=1),
    "token_warmup_step": _k(SHARED, _num(0.0, 1e9), default=0.0),
    "cache_info": _k(SHARED, _bool, default=False),
    "custom_attributes": _k(SHARED, _table, default={}),
    "resize_interpolation": _k(SHARED, _choice),
    # only in a subset
    "image_dir": _k((SUBSET,), _text),
    "is_reg": _k((SUBSET,), _bool, default=False),
    "alpha_mask": _k((SUBSET,), _bool, default=False),
}
# Accepted, not acted on: a value other than the default is ignored with this reason as a warning
# (losing it loses an augmentation, a speed-up or a hook of the reference's own code).
IGNORED = {
    "color_aug": "colour augmentation is not implemented here; images train in their own colours",
    "face_crop_aug_range": "face-crop augmentation is not implemented here; images are cropped to their bucket",
    "token_warmup_min": "caption token warm-up is not implemented here; every step trains the whole caption",
    "token_warmup_step": "caption token warm-up is not implemented here; every step trains the whole caption",
    "cache_info": "image sizes and captions are read on every run here (no metadata_cache.json)",
    "alpha_mask": "masked loss is not implemented here; transparent areas are trained as white",
    "custom_attributes": "they serve the reference's own custom code",
    "resize_interpolation": "images are resized with Lanczos filtering here",
}
# Refused when set to anything but the default: ignoring them would train other captions or weights.
REFUSED = {
    "secondary_separator": ("captions would be trained with the separator in them; write those tags with the "
                            "caption separator instead and remove the key"),
    "enable_wildcard": ("{a|b} choices and multi-line captions would be trained literally; write one plain "
                        "caption per image and remove the key"),
    "network_multiplier": "every dataset trains the LoRA at strength 1.0 here; remove the key",
}
# Per dataset in the reference; here one flag holds out images of all datasets.
FLAG_ONLY = ("validation_split", "validation_seed")
NOT_SUPPORTED = {
    "metadata_file": ("makes a fine-tuning subset, which is not supported: only the DreamBooth-style layout is "
                      "(image_dir holding the images, with a caption file beside each image or class_tokens); "
                      "remove metadata_file and keep the captions as .txt files beside the images"),
    "conditioning_data_dir": ("makes a ControlNet subset, which is not supported: only the DreamBooth-style layout "
                              "is (image_dir holding the images); remove conditioning_data_dir"),
}
# Names of the command line that a dataset config spells otherwise.
RENAMED = {"train_batch_size": "batch_size", "dataset_repeats": "num_repeats"}
FOLDER_FLAGS = {
    "train_data_dir": ("is a command-line flag: in a dataset config each folder of images is a "
                       "[[datasets.subsets]] table with image_dir (the images directly in it) and num_repeats"),
    "reg_data_dir": ("is a command-line flag: in a dataset config each folder of regularization images is a "
                     "[[datasets.subsets]] table with image_dir and is_reg = true"),
}
CONTAINERS = {"general": "top", "datasets": "top", "subsets": DATASET}


def _shown(value) -> str:
    """A value as it is written in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_shown(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value) if not isinstance(value, dict) else "{...}"


def _from_file(at: str | None) -> bool:
    return bool(at) and not at.startswith("--")


def _where_it_belongs(key: str, here: str) -> str | None:
    """The message for a key that stands in the wrong place, or None when it is unknown."""
    if key in NOT_SUPPORTED:
        return NOT_SUPPORTED[key]
    if key in RENAMED:
        return f"is called {RENAMED[key]} in a dataset config"
    if key in FOLDER_FLAGS:
        return FOLDER_FLAGS[key]
    if key in KEYS:
        tables = " or ".join(TABLE_NAMES[level] for level in KEYS[key].levels)
        return f"belongs in {tables}, not {WHERE[here]}"
    if key in CONTAINERS:
        return {"general": "must be the file's own [general] table, not nested",
                "datasets": "must be the file's own [[datasets]] tables, not nested",
                "subsets": "belongs in a dataset: write [[datasets.subsets]] after its [[datasets]]"}[key]
    if key in FIELDS:
        return f"is a training flag, not a dataset key: pass --{key} on the command line (or in --config_file)"
    return None


def _suggestion(key: str, here: str) -> str:
    allowed = [k for k, spec in KEYS.items() if here in spec.levels]
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]}?)"
    close = difflib.get_close_matches(key, [k for k in KEYS if k not in allowed], n=1, cutoff=0.6)
    if close:
        tables = " or ".join(TABLE_NAMES[level] for level in KEYS[close[0]].levels)
        return f" (did you mean {close[0]}? it belongs in {tables})"
    return ""


# ---- reading


class _Reader:
    def __init__(self, path, config):
        self.path = path
        self.config = config
        self.problems: list[tuple[str, str]] = []
        self.warnings: list[str] = []

    def problem(self, where: str, message: str) -> None:
        if (where, message) not in self.problems:
            self.problems.append((where, message))

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def table(self, data: dict, level: str, prefix: str) -> dict:
        """{key: (value, its place in the file)} of one table's valid keys; problems and warnings
        for the others."""
        out = {}
        for key, value in data.items():
            where = f"{prefix}{key}"
            if key in CONTAINERS and CONTAINERS[key] == level:
                continue
            spec = KEYS.get(key)
            if spec is None or level not in spec.levels:
                message = _where_it_belongs(key, level)
                self.problem(where, message or f"is not a dataset config key{_suggestion(key, level)}")
                continue
            checked, message = spec.check(value)
            if message:
                self.problem(where, message)
                continue
            if key in REFUSED and checked not in (spec.default, ""):
                self.problem(where, f"= {_shown(checked)} is not supported: {REFUSED[key]}")
                continue
            if key in IGNORED and checked not in (spec.default, "", {}):
                self.warn(f"{self.path}: {where} = {_shown(checked)} is ignored: {IGNORED[key]}")
            if key in FLAG_ONLY:
                flag_value = _flag(self.config, key)
                if checked != flag_value:
                    shown = "not set" if flag_value is None else f"{flag_value:g}"
                    self.warn(f"{self.path}: {where} = {checked:g} is not applied per dataset here: the "
                              f"--{key} flag ({shown}) holds for all datasets; pass --{key} {checked:g} to use it")
                continue
            if key == "caption_extension":
                from .dataset import caption_extension_problem

                ext_problem = caption_extension_problem(checked)
                if ext_problem:
                    self.problem(where, ext_problem)
                    continue
            if key == "caption_separator" and not checked:
                self.problem(where, "must not be empty (',' separates tags)")
                continue
            out[key] = (checked, where)
        return out

    def value(self, key: str, merged: dict):
        """(value, where it came from): the file's, else the flag's, else the default."""
        if key in merged:
            return merged[key]
        spec = KEYS[key]
        if spec.flag == "resolution":
            try:
                return _resolution_of(self.config), "--resolution"
            except InstantLoraError as e:
                self.problem("--resolution", e.message)
                return (512, 512), "--resolution"
        if spec.flag is not None:
            flag_value = _flag(self.config, spec.flag)
            if flag_value is not None:
                return flag_value, f"--{spec.flag}"
        return spec.default, None

    def tables(self, value, where: str, name: str) -> list:
        if isinstance(value, dict):
            value = [value]
            self.problem(where, f"must be written [[{name}]] (double brackets: there may be several), not [{name}]")
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            self.problem(where, f"must be [[{name}]] tables (got {type(value).__name__})")
            return []
        return value

    def read(self, data: dict) -> list[DatasetSpec]:
        for key in data:
            if key not in ("general", "datasets"):
                message = _where_it_belongs(key, "top")
                self.problem(key, message or f"is not a dataset config key{_suggestion(key, GENERAL)}"
                             " (the file holds [general] and [[datasets]])")
        general = data.get("general", {})
        if not isinstance(general, dict):
            self.problem("general", f"must be a [general] table {_got(general)}")
            general = {}
        merged_general = self.table(general, GENERAL, "general.")
        if "datasets" not in data:
            self.problem("datasets", "are missing: add a [[datasets]] table with at least one [[datasets.subsets]] "
                                     "that names its image_dir")
        datasets = self.tables(data.get("datasets", []), "datasets", "datasets")
        if data.get("datasets") == []:
            self.problem("datasets", "is empty: add a [[datasets]] table with at least one [[datasets.subsets]]")
        return [self.dataset(dataset, i, merged_general) for i, dataset in enumerate(datasets)]

    def dataset(self, dataset: dict, i: int, merged_general: dict) -> DatasetSpec:
        prefix = f"datasets[{i}]"
        merged = {**merged_general, **self.table(dataset, DATASET, f"{prefix}.")}
        values = {key: self.value(key, merged) for key in ("resolution", "batch_size", *BUCKET_OPTIONS)}
        self.bucket_problems(values)
        subsets, seen = [], {}
        raw = self.tables(dataset.get("subsets", []), f"{prefix}.subsets", "datasets.subsets")
        if not raw and isinstance(dataset.get("subsets", []), list):
            self.problem(prefix, "has no [[datasets.subsets]]: add one with image_dir = the folder of its images")
        for j, subset in enumerate(raw):
            spec = self.subset(subset, f"{prefix}.subsets[{j}]", merged)
            if spec is None:
                continue
            folder = os.path.realpath(spec.image_dir)
            if folder in seen:
                self.warn(f"{self.path}: {prefix}.subsets[{j}].image_dir is the folder of {prefix}.subsets[{seen[folder]}]: "
                          "this subset is ignored (as the reference does); put it in another [[datasets]] to train "
                          "the folder at another resolution")
                continue
            seen[folder] = j
            subsets.append(spec)
        return DatasetSpec(subsets=tuple(subsets), **{k: v for k, (v, _) in values.items()})

    def bucket_problems(self, values: dict) -> None:
        """The flags' checks (TrainConfig._data_problems) for values the file sets."""
        (steps, steps_at), (low, low_at), (high, high_at) = (
            values["bucket_reso_steps"], values["min_bucket_reso"], values["max_bucket_reso"])
        if not any(_from_file(at) for at in (steps_at, low_at, high_at)):
            return  # the flags alone: checked with the flags
        if steps % 8:
            self.problem(steps_at, f"= {steps} must be a multiple of 8 (the VAE shrinks images 8x); 64 suits SD")
            return
        for value, at in ((low, low_at), (high, high_at)):
            if value % steps:
                self.problem(at, f"= {value} must be a multiple of bucket_reso_steps ({steps}, {steps_at})")
        if low > high:
            self.problem(low_at, f"= {low} is above max_bucket_reso ({high}, {high_at})")

    def subset(self, subset: dict, prefix: str, merged_dataset: dict) -> SubsetSpec | None:
        own = self.table(subset, SUBSET, f"{prefix}.")
        merged = {**merged_dataset, **own}
        values = {key: self.value(key, merged) for key in ("num_repeats", "is_reg", "class_tokens", *SUBSET_OPTIONS)}
        separator, separator_at = values["caption_separator"]
        keep, keep_at = values["keep_tokens_separator"]
        if keep and keep == separator and (_from_file(keep_at) or _from_file(separator_at)):
            self.problem(keep_at if _from_file(keep_at) else separator_at,
                         f"= {_shown(keep)}: the keep_tokens_separator is also the caption separator; "
                         "use another marker such as |||")
        crop, crop_at = values["random_crop"]
        caching = _flag(self.config, "cache_latents") or _flag(self.config, "cache_latents_to_disk")
        if crop and caching and _from_file(crop_at):
            self.problem(crop_at, "needs each step's own crop of the image, which cached latents cannot give: turn "
                                  "off --cache_latents / --cache_latents_to_disk, or random_crop")
        image_dir = own.get("image_dir", (None, None))[0]
        if "image_dir" not in subset:
            self.problem(f"{prefix}.image_dir", "is required: the folder that holds this subset's images")
            return None
        if image_dir is None:
            return None  # its type problem is listed
        if not image_dir.strip():
            self.problem(f"{prefix}.image_dir", "is empty: give the folder that holds this subset's images")
            return None
        image_dir = os.path.expanduser(image_dir)
        folder = Path(image_dir)
        note = "" if folder.is_absolute() else f" (a relative path is read from the working directory, {Path.cwd()})"
        if not folder.exists():
            self.problem(f"{prefix}.image_dir", f"folder not found: {folder.absolute()}{note}")
            return None
        if not folder.is_dir():
            self.problem(f"{prefix}.image_dir", f"{folder.absolute()} is a file, not a folder{note}")
            return None
        return SubsetSpec(image_dir=image_dir, layout="images", **{k: v for k, (v, _) in values.items()})


def read_dataset_config(path, config) -> DatasetSpecs:
    """The datasets of a dataset config file (TOML, or JSON by its .json name), with the flags of
    `config` (a TrainConfig) as fallbacks where the file leaves a key out, as the reference does.

    image_dir is used as written, as the reference does: a relative path is relative to the
    working directory (not to the file's folder); `~` is expanded. --train_data_dir and
    --reg_data_dir are ignored, with a warning (the reference ignores them too). Two subsets of
    one dataset with the same folder: the later one is ignored with a warning (as the reference).

    Returns DatasetSpecs (a list of DatasetSpec, with `.warnings` and `.source`). Raises one
    InstantLoraError naming the file and listing every problem with its place in the file.
    """
    path = Path(os.path.expanduser(str(path)))
    data = load_dataset_config(path)
    reader = _Reader(path, config)
    specs = reader.read(data)
    if reader.problems:
        lines = "\n".join(f"  {message}" if message.startswith(where) else f"  {where} {message}"
                          for where, message in reader.problems)
        count = len(reader.problems)
        raise InstantLoraError(
            f"Invalid dataset config {path} ({count} problem{'s' if count > 1 else ''}):\n{lines}", path=path,
            hint=f"Fix {'these' if count > 1 else 'this'} in {path}. The layout is the reference trainer's: [general], "
                 "[[datasets]] (resolution, batch_size, buckets), [[datasets.subsets]] (image_dir, num_repeats, "
                 "class_tokens, is_reg, caption options).")
    warnings = list(reader.warnings)
    ignored = [f"--{name}" for name in ("train_data_dir", "reg_data_dir") if _flag(config, name)]
    if ignored:
        warnings.insert(0, f"{' and '.join(ignored)} {'are' if len(ignored) > 1 else 'is'} ignored: the dataset "
                           f"config {path} names the image folders")
    return DatasetSpecs(specs, warnings, source=str(path))
