"""The WebUI's progress mirror: a run's events shown in `shared.state` (the WebUI's progress API,
its console and live preview), and the last sample kept as the Lora card's preview."""

from __future__ import annotations

import shutil
from pathlib import Path

from ...train.events import Cancelled, Failed, Finished, Sample, Saved, Status, Step, Validation, Warn


class WebUIProgressSink:
    """Mirrors the run into shared.state (the WebUI's progress API and console) and makes the
    last sample the Lora card's preview. It only shows: the Interrupt button reaches the run
    through the run's control (WebUIHost.stop_sources), not through here."""

    def __init__(self, state, job=None):
        self.state = state
        self.last_sample: str | None = None

    def __call__(self, event) -> None:
        st = self.state
        if isinstance(event, Step):
            st.job_count, st.job_no = 1, 0
            st.sampling_steps, st.sampling_step = event.total, event.step
            loss = f"{event.loss:.4f}" if event.loss == event.loss else "NaN"
            st.textinfo = f"Instant LoRA: step {event.step}/{event.total}, loss {loss}"
        elif isinstance(event, Validation):
            st.textinfo = f"Instant LoRA: step {event.step}, validation loss {event.loss:.4f}"
        elif isinstance(event, (Status, Warn)):
            st.textinfo = f"Instant LoRA: {event.message}"[:300]
        elif isinstance(event, Saved):
            st.textinfo = f"Instant LoRA: saved {Path(event.path).name}"
        elif isinstance(event, Sample):
            self.last_sample = event.path
            self._show_image(event.path)
        elif isinstance(event, Finished) and event.path:
            self.write_preview(Path(event.path))
        elif isinstance(event, Cancelled):
            st.textinfo = "Instant LoRA: cancelled" + (f", saved {Path(event.path).name}" if event.path else ", nothing saved")
        elif isinstance(event, Failed):
            st.textinfo = f"Instant LoRA: failed: {event.message}"[:300]

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
