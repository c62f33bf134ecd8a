"""The standalone app's host: plain folders, the GPU owned through `gpu.hold`, nothing to unload."""

from __future__ import annotations

import os
from pathlib import Path

from ..models import SINGLE_FILE_SUFFIXES
from ..output_paths import find_webui_root
from . import gpu
from .base import Host

MODEL_SUFFIXES = (".safetensors", ".ckpt")


class StandaloneHost(Host):
    """Plain folders (or a WebUI's, when one is named or found), diffusers for the Test panel."""

    name = "standalone"

    def __init__(self, models_dir: str | Path | None = None, lora_dir: str | Path | None = None,
                 data_dir: str | Path | None = None, webui_dir: str | None = None):
        root = find_webui_root(webui_dir)
        self.webui_root = root
        self.models_dir = Path(models_dir) if models_dir else (root / "models" / "Stable-diffusion" if root else Path("models"))
        self.lora_dir = Path(lora_dir) if lora_dir else (root / "models" / "Lora" if root else Path("output"))
        self.data_dir = Path(data_dir) if data_dir else Path("instant_lora_data")

    # ---- checkpoints -----------------------------------------------------------------------
    def list_checkpoints(self) -> list[str]:
        """Labels for the base-model dropdown: paths relative to the models folder."""
        if not self.models_dir.is_dir():
            return []
        found = []
        for folder, dirs, files in os.walk(self.models_dir, followlinks=False):
            here = Path(folder)
            if (here / "model_index.json").is_file() and here != self.models_dir:
                found.append(here)  # a diffusers folder: one entry, never its component files
                dirs[:] = []
                continue
            dirs.sort()
            found += [here / f for f in sorted(files) if Path(f).suffix.lower() in MODEL_SUFFIXES and not f.startswith(".")]
        return sorted(str(p.relative_to(self.models_dir)) for p in found)

    def default_checkpoint(self) -> str | None:
        items = self.list_checkpoints()
        return items[0] if items else None

    def checkpoint_path(self, label: str) -> str:
        path = self.models_dir / label
        return str(path) if path.exists() or not label else label

    # ---- around a training -----------------------------------------------------------------
    def before_training(self, control=None) -> None:
        """Free what the host holds on the GPU: here the Test panel's model."""
        from ..sample.generate import release_kept_renderer

        release_kept_renderer()

    def exclusive(self, job: str):
        """The GPU for captioning or test images; refused while a training holds it."""
        return gpu.hold(job)

    # ---- the Test panel ---------------------------------------------------------------------
    def test_renderer(self, checkpoint_label: str):
        """Context manager giving render(prompt_with_tags, seed, settings) -> PIL image for one
        image or one grid: here diffusers on a base model kept in memory."""
        from ..errors import InstantLoraError
        from ..sample.generate import kept_renderer

        if not checkpoint_label:
            raise InstantLoraError("no base model chosen", hint=f"pick one under 2. Model & LoRA (models folder: {self.models_dir})")
        return gpu.holding("test images", kept_renderer(self.checkpoint_path(checkpoint_label), self.lora_dir))

    @staticmethod
    def is_model_file(path: str) -> bool:
        return str(path).lower().endswith(SINGLE_FILE_SUFFIXES)
