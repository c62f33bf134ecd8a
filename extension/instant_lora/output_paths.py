"""Where files go: the WebUI's Lora folder when one is known, else ./output. Names never escape it."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import InstantLoraError

WEBUI_ENV = "INSTANT_LORA_WEBUI_DIR"


def is_webui_root(path: Path) -> bool:
    return (path / "modules").is_dir() and ((path / "webui.py").is_file() or (path / "launch.py").is_file())


def find_webui_root(webui_dir: str | None = None) -> Path | None:
    """--webui_dir, else $INSTANT_LORA_WEBUI_DIR, else the WebUI this extension is installed in."""
    for cand in (webui_dir, os.environ.get(WEBUI_ENV)):
        if cand:
            root = Path(cand).expanduser()
            if not is_webui_root(root):
                raise InstantLoraError(f"{root} is not a Stable Diffusion WebUI folder (no webui.py and modules/).",
                                       hint="pass the folder that holds webui.py", path=root)
            return root
    here = Path(__file__).resolve()
    # <webui>/extensions/<this repo>/extension/instant_lora/output_paths.py
    if len(here.parents) > 4 and here.parents[3].name == "extensions" and is_webui_root(here.parents[4]):
        return here.parents[4]
    return None


def resolve_output_dir(output_dir: str | None, lora_dir: str | None = None, webui_dir: str | None = None) -> tuple[Path, str]:
    """(folder, why) -- why is shown to the user so they know where the LoRA went."""
    if output_dir:
        return Path(output_dir).expanduser(), "--output_dir"
    if lora_dir:
        return Path(lora_dir).expanduser(), "--lora_dir"
    root = find_webui_root(webui_dir)
    if root is not None:
        return root / "models" / "Lora", f"the WebUI at {root}"
    return Path("output"), "default (no WebUI found; pass --lora_dir or --webui_dir to save into the WebUI)"


def file_in(folder: Path, stem: str, suffix: str) -> Path:
    """folder/stem+suffix, refusing any stem that would land outside folder."""
    path = (folder / f"{stem}{suffix}")
    if path.resolve().parent != folder.resolve():
        raise InstantLoraError(f"output name '{stem}' would write outside {folder}", hint="use a plain name like my_style")
    return path
