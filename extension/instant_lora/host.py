"""What differs between the standalone app and the WebUI: folders, the checkpoint list, the VRAM
hand-off, progress reporting. The UI talks to a Host; the WebUI entry script passes its own."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

from .models import SINGLE_FILE_SUFFIXES
from .output_paths import find_webui_root

MODEL_SUFFIXES = (".safetensors", ".ckpt")


class Host:
    """The standalone app's host: plain folders, nothing to unload, no external progress."""

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
        for p in sorted(self.models_dir.rglob("*")):
            if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES:
                found.append(p)
            elif p.is_dir() and (p / "model_index.json").is_file():
                found.append(p)  # a diffusers folder
        return [str(p.relative_to(self.models_dir)) for p in found]

    def default_checkpoint(self) -> str | None:
        items = self.list_checkpoints()
        return items[0] if items else None

    def checkpoint_path(self, label: str) -> str:
        path = self.models_dir / label
        return str(path) if path.exists() or not label else label

    # ---- around a training -----------------------------------------------------------------
    def before_training(self) -> None:
        """Free what the host holds on the GPU: here the Test panel's model."""
        from .sample.generate import release_kept_renderer

        release_kept_renderer()

    def after_training(self) -> None:
        """Give back what before_training took; runs after success, failure and cancel."""

    def progress_sinks(self) -> list:
        return []

    def exclusive(self, job: str):
        """Context manager around GPU work outside training (captioning, test images): here
        nothing to wait for; the WebUI waits for its running generation and holds its queue."""
        return nullcontext()

    # ---- the Test panel ---------------------------------------------------------------------
    def test_renderer(self, checkpoint_label: str):
        """Context manager giving render(prompt_with_tags, seed, settings) -> PIL image for one
        image or one grid: here diffusers on a base model kept in memory."""
        from .errors import InstantLoraError
        from .sample.generate import kept_renderer

        if not checkpoint_label:
            raise InstantLoraError("no base model chosen", hint=f"pick one under 2. Model & LoRA (models folder: {self.models_dir})")
        return kept_renderer(self.checkpoint_path(checkpoint_label), self.lora_dir)

    @property
    def grids_dir(self) -> Path:
        return self.data_dir / "grids"

    def lora_files(self) -> list[Path]:
        if not self.lora_dir.is_dir():
            return []
        return sorted(p for p in self.lora_dir.rglob("*.safetensors") if not p.name.startswith("."))

    @staticmethod
    def is_model_file(path: str) -> bool:
        return str(path).lower().endswith(SINGLE_FILE_SUFFIXES)
