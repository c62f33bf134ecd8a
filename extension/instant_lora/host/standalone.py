"""The standalone app's host: plain folders, the GPU owned through `gpu.hold`, nothing to unload."""

from __future__ import annotations

from pathlib import Path

from .. import model_sources
from ..models import SINGLE_FILE_SUFFIXES
from ..output_paths import find_webui_root
from . import gpu
from .base import Host

MODEL_SUFFIXES = model_sources.MODEL_SUFFIXES


class StandaloneHost(Host):
    """Plain folders (or a WebUI's, when one is named or found), diffusers for the Test panel."""

    name = "standalone"
    can_download_models = True
    can_launch_processes = True

    def __init__(self, models_dir: str | Path | None = None, lora_dir: str | Path | None = None,
                 data_dir: str | Path | None = None, webui_dir: str | None = None, *,
                 search_home: str | Path | None = None, search_near: list | None = None, lang: str | None = None):
        root = find_webui_root(webui_dir)
        self.lang = lang  # --lang; None: English, or the browser's language where Gradio can follow it
        self.follows_browser_language = lang is None
        self.webui_root = root
        self.models_dir = model_sources.default_models_dir(models_dir, root)
        # where else checkpoints are looked for (model_sources.search_places): the home folder and
        # the folders whose neighbours are searched; None = the user's home, the working folder, the repo
        self._search = {"home": search_home, "near": search_near}
        self.lora_dir = Path(lora_dir) if lora_dir else (root / "models" / "Lora" if root else Path("output"))
        self.data_dir = Path(data_dir) if data_dir else Path("instant_lora_data")

    # ---- checkpoints -----------------------------------------------------------------------
    def search_places(self) -> list:
        """The folders searched for checkpoints, the models folder first (model_sources.Place)."""
        return model_sources.search_places(self.models_dir, webui_root=self.webui_root, **self._search)

    def found_checkpoints(self) -> list:
        """The checkpoints of every search place (model_sources.FoundModel), the models folder's first."""
        return model_sources.find_checkpoints(places=self.search_places())

    def list_checkpoints(self) -> list[str]:
        """Labels for the base-model dropdown: paths relative to the models folder, then the
        checkpoints of other installs as 'file.safetensors  (A1111: ~/stable-diffusion-webui)'."""
        return [m.label for m in self.found_checkpoints()]

    def default_checkpoint(self) -> str | None:
        items = self.list_checkpoints()
        return items[0] if items else None

    def checkpoint_path(self, label: str) -> str:
        if not label:
            return label
        path = self.models_dir / label
        if path.exists():
            return str(path)
        for model in self.found_checkpoints():
            if model.label == label:
                return str(model.path)
        return label

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
