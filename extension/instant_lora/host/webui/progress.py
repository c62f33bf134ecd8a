"""The WebUI's progress mirror: a run's events shown in `shared.state` (the WebUI's progress API,
its console and live preview), and the last sample kept as the Lora card's preview."""

from __future__ import annotations

import shutil
from pathlib import Path


class WebUIProgressSink:
    """Mirrors the run into shared.state (the WebUI's progress API and console) and turns the
    Interrupt button into a cancel. Also makes the last sample the Lora card's preview."""

    def __init__(self, state, job):
        self.state = state
        self.job = job
        self.last_sample: str | None = None
        self.interrupt_seen = False

    def __call__(self, event) -> None:
        st, kind = self.state, type(event).__name__
        if kind == "Step":
            st.job_count, st.job_no = 1, 0
            st.sampling_steps, st.sampling_step = event.total, event.step
            st.textinfo = f"Instant LoRA: step {event.step}/{event.total}, loss {event.loss:.4f}"
        elif kind in ("Status", "Warn"):
            st.textinfo = f"Instant LoRA: {event.message}"[:300]
        elif kind == "Saved":
            st.textinfo = f"Instant LoRA: saved {Path(event.path).name}"
        elif kind == "Sample":
            self.last_sample = event.path
            self._show_image(event.path)
        elif kind == "Finished" and event.path:
            self.write_preview(Path(event.path))
        self.poll_interrupt()

    def poll_interrupt(self) -> None:
        if getattr(self.state, "interrupted", False) and not self.interrupt_seen:
            self.interrupt_seen = True
            if self.job.cancel():
                self.state.textinfo = "Instant LoRA: interrupted, saving after this step"

    def _show_image(self, path: str) -> None:
        assign = getattr(self.state, "assign_current_image", None)
        if assign is None:
            return
        try:
            from PIL import Image

            with Image.open(path) as img:
                assign(img.convert("RGB"))
        except Exception:
            pass  # a preview is a nicety; never fail the run for it

    def write_preview(self, lora_path: Path) -> Path | None:
        """`<stem>.preview.png` (the card's thumbnail) from the last sample, unless one exists."""
        preview = lora_path.with_name(lora_path.stem + ".preview.png")
        if not self.last_sample or preview.exists() or not Path(self.last_sample).is_file():
            return None
        shutil.copyfile(self.last_sample, preview)
        return preview
