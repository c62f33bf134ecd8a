"""The one training job of a process, run in a background thread.

Front ends start it and poll a snapshot; closing the browser tab does not stop it, and a page
opened later sees the running job. A second start while one runs is refused with what is running.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass, field

from .errors import InstantLoraError
from .train.events import Finished, Saved, Status, Step, TrainControl, Warn

LOG_LINES = 200


@dataclass
class JobSnapshot:
    state: str = "idle"  # idle | running | finished | cancelled | failed
    name: str = ""
    trigger_words: str = ""
    step: int = 0
    total: int = 0
    epoch: int = 0
    loss: float | None = None
    avg_loss: float | None = None
    lr: float | None = None
    seconds: float = 0.0
    step_in_run: int = 0  # steps done in this process (a resumed run starts above 0)
    losses: list = field(default_factory=list)  # (step, loss) pairs
    samples: list = field(default_factory=list)  # (caption, image path)
    saved: list = field(default_factory=list)  # paths of LoRA files
    log: list = field(default_factory=list)
    result_path: str | None = None
    error: str | None = None
    started_at: float = 0.0

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def it_per_s(self) -> float:
        return self.step_in_run / self.seconds if self.seconds > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        rate = self.it_per_s
        return (self.total - self.step) / rate if rate > 0 and self.total else None


class TrainingJob:
    """Owns the worker thread and the state the UI reads; all updates go through one lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._snap = JobSnapshot()
        self._thread: threading.Thread | None = None
        self._control: TrainControl | None = None
        self._first_step: int | None = None

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            s = self._snap
            return JobSnapshot(**{**s.__dict__, "losses": list(s.losses), "samples": list(s.samples),
                                  "saved": list(s.saved), "log": list(s.log)})

    def start(self, config, *, explicit=frozenset(), model=None, extra_sinks=(), before=None, after=None) -> None:
        """Start training in the background. `before`/`after` run in the worker around the run
        (the WebUI's VRAM hand-off); `after` runs on success, failure and cancel alike."""
        with self._lock:
            if self._snap.running:
                raise InstantLoraError(f"A training is already running: '{self._snap.name}' at step {self._snap.step}/{self._snap.total}.",
                                       hint="wait for it to finish or cancel it first")
            self._snap = JobSnapshot(state="running", name=config.output_name or "last", trigger_words=config.trigger_words,
                                     started_at=time.time())
            self._control = TrainControl()
            self._first_step = None
        self._thread = threading.Thread(target=self._work, args=(config, explicit, model, list(extra_sinks), before, after),
                                        name="instant-lora-train", daemon=True)
        self._thread.start()

    def cancel(self) -> bool:
        with self._lock:
            if not self._snap.running or self._control is None:
                return False
            self._control.request_stop()
            self._snap.log.append("cancel requested: stopping after the current step and saving")
            return True

    @property
    def cancel_requested(self) -> bool:
        """True once cancel() was called for the current run (also before its first step)."""
        with self._lock:
            return self._control is not None and self._control.stop_requested

    def wait(self, timeout: float | None = None) -> JobSnapshot:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.snapshot()

    # ---- worker side ---------------------------------------------------------------------
    def _on_event(self, event) -> None:
        with self._lock:
            s = self._snap
            if isinstance(event, Step):
                if self._first_step is None:
                    self._first_step = event.step - 1
                s.step, s.total, s.epoch, s.loss, s.avg_loss, s.lr = event.step, event.total, event.epoch, event.loss, event.avg_loss, event.lr
                s.seconds = event.seconds
                s.step_in_run = event.step - self._first_step
                s.losses.append((event.step, event.loss))
            elif isinstance(event, (Status, Warn)):
                s.log.append(("WARNING: " if isinstance(event, Warn) else "") + event.message)
            elif isinstance(event, Saved):
                s.log.append(f"saved {event.kind}: {event.path}")
                if event.kind != "state":
                    s.saved.append(event.path)
            elif isinstance(event, Finished):
                s.result_path = event.path
            elif type(event).__name__ == "Sample":
                s.samples.append((event.caption, event.path))
            del s.log[:-LOG_LINES]

    def _work(self, config, explicit, model, extra_sinks, before, after) -> None:
        from .train.loop import train

        state, error = "failed", None
        try:
            if before:
                before()
            result = train(config, explicit=explicit, model=model, sinks=[self._on_event, *extra_sinks], control=self._control)
            state = "cancelled" if result.cancelled else "finished"
        except InstantLoraError as e:
            error = str(e)
        except Exception as e:  # an unexpected bug: keep the traceback where the user looks
            error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"
        finally:
            if after:
                try:
                    after()
                except Exception as e:
                    error = (error or "") + f"\nrestoring the WebUI model failed: {e}"
            with self._lock:
                self._snap.state = state
                self._snap.error = error
                if error:
                    self._snap.log.append(f"ERROR: {error}")


_JOB: TrainingJob | None = None


def current_job() -> TrainingJob:
    """The process-wide job: every page (and the WebUI's API routes) sees the same one."""
    global _JOB
    if _JOB is None:
        _JOB = TrainingJob()
    return _JOB
