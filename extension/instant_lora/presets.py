"""JSON presets: sparse overrides of TrainConfig's defaults, shipped ones plus the user's own."""

from __future__ import annotations

import json
from pathlib import Path

from .config import CONFIG_VERSION, FIELD_NAMES, TrainConfig, is_safe_name
from .errors import InstantLoraError

BUILTIN_DIR = Path(__file__).with_name("presets")


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
