"""JSON presets: sparse overrides of TrainConfig's defaults, shipped ones plus the user's own.

Besides the values, a preset file holds meta keys that are not settings: `config_version`,
`description` (what it is for and why each choice) and, for a preset made for one model family,
`for_family` ("sd1" | "sd2" | "sdxl"): `family_mismatch` says when such a preset meets a
checkpoint of another family, so the plan can warn.
"""

from __future__ import annotations

import json
from pathlib import Path

from .config import CONFIG_VERSION, FIELD_NAMES, TrainConfig, is_safe_name
from .errors import InstantLoraError

BUILTIN_DIR = Path(__file__).with_name("presets")
FAMILIES = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}


def list_presets(user_dir: Path | None = None) -> dict[str, Path]:
    """{name: file}; a user preset with a built-in's name shadows it."""
    found = {p.stem: p for p in sorted(BUILTIN_DIR.glob("*.json"))}
    if user_dir and Path(user_dir).is_dir():
        found.update({p.stem: p for p in sorted(Path(user_dir).glob("*.json"))})
    return found


def load_preset(path: Path) -> tuple[dict, str]:
    """(overrides, description). Unknown keys are an error naming the closest field."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InstantLoraError(f"cannot read preset {Path(path).name}: {e}", path=path) from e
    description = str(data.pop("description", ""))
    family = data.pop("for_family", None)
    if family is not None and family not in FAMILIES:
        raise InstantLoraError(f"preset {Path(path).name}: for_family '{family}' must be one of {', '.join(FAMILIES)}",
                               path=path)
    version = data.pop("config_version", CONFIG_VERSION)
    if version > CONFIG_VERSION:
        raise InstantLoraError(f"preset {Path(path).name} was written by a newer Instant LoRA (layout {version})",
                               hint="update Instant LoRA", path=path)
    TrainConfig.from_dict(data, source=Path(path).name)  # validates names and types
    return data, description


def save_preset(name: str, values: dict, user_dir: Path, description: str = "") -> Path:
    if not is_safe_name(name):
        raise InstantLoraError(f"preset name '{name}' must be a plain file name", hint="e.g. my_settings")
    default = TrainConfig().to_dict()
    per_run = {"pretrained_model_name_or_path", "train_data_dir", "output_name", "output_dir", "resume", "network_weights"}
    # A value equal to the reference's default is still written when the app's default differs
    # (e.g. Epochs cleared: None, where the app would train 10 epochs), so it loads back as saved.
    from .request import APP_DEFAULTS

    sparse = {k: v for k, v in values.items() if k in FIELD_NAMES and k not in per_run
              and (v != default.get(k) or (k in APP_DEFAULTS and v != APP_DEFAULTS[k]))}
    data = {"config_version": CONFIG_VERSION, "description": description, **sparse}
    Path(user_dir).mkdir(parents=True, exist_ok=True)
    path = Path(user_dir) / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def _read_family(path: Path) -> str | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    family = data.get("for_family") if isinstance(data, dict) else None
    return family if family in FAMILIES else None


def preset_family(preset, user_dir: Path | None = None) -> str | None:
    """The model family a preset was made for ("sd1" | "sd2" | "sdxl"), None when it suits any (or
    cannot be read: loading it reports that). `preset`: a preset's name (a built-in or one in
    `user_dir`), the path of its file, or its JSON as a dict."""
    if isinstance(preset, dict):
        family = preset.get("for_family")
        return family if family in FAMILIES else None
    if preset in (None, ""):
        return None
    path = Path(preset)
    if path.suffix.lower() != ".json" or not path.is_file():
        path = list_presets(user_dir).get(str(preset))
        if path is None:
            return None
    return _read_family(path)


def family_mismatch(preset, family, user_dir: Path | None = None) -> str | None:
    """The plan's warning when a preset made for one family is used with a checkpoint of another
    (`preset` as for preset_family; `family`: a model_family.ModelFamily or its name; None = not
    known yet: no warning)."""
    name = getattr(family, "name", family)
    made_for = preset_family(preset, user_dir)
    if made_for is None or name not in FAMILIES or name == made_for:
        return None
    if isinstance(preset, dict):
        label = "this preset"
    else:
        label = f'preset "{Path(preset).stem if str(preset).lower().endswith(".json") else preset}"'
    others = [n for n in list_presets(user_dir) if preset_family(n, user_dir) in (None, name)]
    return (f"{label} is made for {FAMILIES[made_for]} checkpoints and this one is {FAMILIES[name]}: its resolution, "
            f"memory settings and learning rate were chosen for {FAMILIES[made_for]}"
            + (f"; presets that suit it: {', '.join(others[:3])}" if others else ""))
