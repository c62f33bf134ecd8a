"""The interface every host provides. Front ends and the one request path ask the host; they never
reach into the WebUI's modules themselves."""

from __future__ import annotations

from pathlib import Path


class Host:
    """What a place that starts runs provides (the standalone app, the WebUI). Each method says
    what the core expects; `standalone.StandaloneHost` is the plain implementation."""

    name = "host"
    models_dir: Path  # where checkpoints are listed from (shown to the user)
    lora_dir: Path  # where LoRA files go: host-owned, a request cannot move it
    data_dir: Path  # uploads, presets, logs, grids
    # whether the UI offers to download a base model into models_dir (the WebUI lists its own)
    can_download_models = False
    # whether a run may start its own processes on several GPUs (the WebUI's tab trains on the
    # WebUI's own device, inside its process)
    can_launch_processes = False

    def language(self) -> str:
        """The UI's language ("en", "zh-TW"): the app's --lang, the WebUI's Localization setting."""
        return getattr(self, "lang", None) or "en"

    def gpu_choices(self) -> list[str]:
        """GPUs a run may be spread over ("index: name (memory)"); [] where the host decides."""
        if not self.can_launch_processes:
            return []
        from ..train.launch import visible_gpus

        return visible_gpus()

    # ---- checkpoints
    def list_checkpoints(self) -> list[str]:
        """Labels for the base-model list (never component files of a diffusers folder)."""
        raise NotImplementedError

    def default_checkpoint(self) -> str | None:
        raise NotImplementedError

    def checkpoint_path(self, label: str) -> str:
        """The file or folder behind a label of list_checkpoints()."""
        raise NotImplementedError

    def knows_checkpoint(self, label: str) -> bool:
        """Whether `label` names one of this host's checkpoints (REST refuses others at once)."""
        return label in self.list_checkpoints()

    # ---- around a training (run in the worker thread)
    def before_training(self, control=None) -> None:
        """Take the GPU for the run (the WebUI: wait for its queue, move its model off the GPU).
        May raise InstantLoraError; a stop request on `control` ends the wait."""

    def after_training(self) -> None:
        """Undo before_training; runs after success, failure and cancel alike."""

    def progress_sinks(self) -> list:
        """Extra event sinks that mirror the run (the WebUI's shared.state)."""
        return []

    def stop_sources(self) -> list:
        """Callables that say "stop" (the WebUI's Interrupt button); the run's control polls them."""
        return []

    # ---- GPU work outside training
    def exclusive(self, job: str):
        """Context manager holding the GPU for captioning or test images (one owner per process)."""
        raise NotImplementedError

    def test_renderer(self, checkpoint_label: str):
        """Context manager giving render(prompt_with_tags, seed, settings) -> PIL image."""
        raise NotImplementedError

    @property
    def grids_dir(self) -> Path:
        return self.data_dir / "grids"

    def lora_files(self) -> list[Path]:
        if not self.lora_dir.is_dir():
            return []
        return sorted(p for p in self.lora_dir.rglob("*.safetensors") if not p.name.startswith("."))

    def request_defaults(self) -> dict:
        """Values this host adds under the user's (the WebUI's Settings: sample prompts)."""
        return {}
