"""The one training job of a process, run in a background thread.

Front ends start it with a PreparedRun (the one request path) and poll a snapshot; closing the
browser tab does not stop it, and a page opened later sees the running job. A second start while
one runs is refused with what is running. The job's state is set from the run's end event
(Finished, Cancelled, Failed), never guessed from messages.
"""

from __future__ import annotations

import math
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InstantLoraError
from .train.events import (Cancelled, Failed, Finished, Movement, RunStopped, Sample, Saved, Status, Step, TrainControl,
                           Validation, Warn)

LOG_LINES = 200
POINTS = 3000  # (step, timestep, loss) of the last this many images: the live scatter's memory
STATES = ("idle", "running", "finished", "cancelled", "failed")


@dataclass
class JobSnapshot:
    state: str = "idle"  # one of STATES
    name: str = ""
    trigger_words: str = ""
    stage: str = ""  # what the run is doing: waiting, dataset, captioning, loading, caching, training
    step: int = 0
    total: int = 0
    epoch: int = 0
    loss: float | None = None
    avg_loss: float | None = None
    lr: float | None = None
    text_encoder_lr: float | None = None
    seconds: float = 0.0
    step_in_run: int = 0  # steps done in this process (a resumed run starts above 0)
    losses: list = field(default_factory=list)  # (step, loss) pairs
    validation: list = field(default_factory=list)  # (step, validation loss, training's average loss or None)
    points: list = field(default_factory=list)  # (step, timestep, plain loss or None) per image, the last POINTS
    movement: dict = field(default_factory=dict)  # {block: norm} of the latest Movement
    movement_step: int | None = None  # the step it was measured after
    base_model_bytes: int | None = None  # the base model file's size, when it is one file
    result_bytes: int | None = None  # the size of the file the run ended with
    samples: list = field(default_factory=list)  # (caption, image path)
    saved: list = field(default_factory=list)  # paths of LoRA files
    log: list = field(default_factory=list)
    result_path: str | None = None
    error: str | None = None
    started_at: float = 0.0
    version: int = 0  # grows with every change: pollers send only what changed

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


def finite_or_none(x):
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def file_size(path) -> int | None:
    """The size of a file in bytes; None for a folder (a diffusers model), a missing path or none."""
    if not path:
        return None
    try:
        p = Path(path)
        return p.stat().st_size if p.is_file() else None
    except (OSError, ValueError):
        return None


class TrainingJob:
    """Owns the worker thread and the state the UI reads; all updates go through one lock."""

    def __init__(self):
        self._lock = threading.Lock()
        self._snap = JobSnapshot()
        self._thread: threading.Thread | None = None
        self._control: TrainControl | None = None
        self._first_step: int | None = None
        self._end_state: str | None = None  # from the run's end event, shown when the worker is done
        self._version = 0
        self._devices: list[int] | None = None  # several GPUs chosen: the run's processes go there

    def snapshot(self) -> JobSnapshot:
        with self._lock:
            s = self._snap
            return JobSnapshot(**{**s.__dict__, "losses": list(s.losses), "validation": list(s.validation),
                                  "samples": list(s.samples), "saved": list(s.saved), "log": list(s.log),
                                  "points": list(s.points), "movement": dict(s.movement)})

    @property
    def version(self) -> int:
        with self._lock:
            return self._snap.version

    def start(self, prepared, *, host=None, model=None, extra_sinks=(), devices: list[int] | None = None) -> None:
        """Start a PreparedRun in the background. The host (if any) takes the GPU before the run
        (the WebUI's queue and VRAM hand-off) and gives it back after success, failure and cancel."""
        with self._lock:
            if self._snap.running:
                raise InstantLoraError(f"A training is already running: '{self._snap.name}' at step {self._snap.step}/{self._snap.total}.",
                                       hint="wait for it to finish or cancel it first")
            self._version += 1
            self._snap = JobSnapshot(state="running", name=prepared.name, trigger_words=prepared.config.trigger_words,
                                     stage="waiting", total=prepared.plan.max_train_steps, started_at=time.time(),
                                     version=self._version,
                                     base_model_bytes=file_size(getattr(prepared.plan, "model_path", "")))
            self._control = TrainControl()
            self._end_state = None
            for source in (host.stop_sources() if host is not None else []):
                self._control.add_source(source)
            self._first_step = None
        sinks = list(extra_sinks) + (host.progress_sinks() if host is not None else [])
        self._devices = devices
        self._thread = threading.Thread(target=self._work, args=(prepared, host, model, sinks),
                                        name="instant-lora-train", daemon=True)
        self._thread.start()

    def cancel(self) -> bool:
        with self._lock:
            if not self._snap.running or self._control is None:
                return False
            self._control.request_stop()
            self._append("cancel requested: stopping at the next step (or stage) and saving what was learned")
            return True

    @property
    def cancel_requested(self) -> bool:
        """True once a stop was requested for the current run (also before its first step)."""
        control = self._control
        return control is not None and control.stop_requested

    def wait(self, timeout: float | None = None) -> JobSnapshot:
        if self._thread is not None:
            self._thread.join(timeout)
        return self.snapshot()

    # ---- worker side ---------------------------------------------------------------------
    def _append(self, line: str) -> None:  # with the lock held
        s = self._snap
        s.log.append(line)
        del s.log[:-LOG_LINES]
        self._version += 1
        s.version = self._version

    def _on_event(self, event) -> None:
        with self._lock:
            s = self._snap
            if isinstance(event, Step):
                if self._first_step is None:
                    self._first_step = event.step - 1
                s.stage = "training"
                s.step, s.total, s.epoch, s.lr = event.step, event.total, event.epoch, event.lr
                s.loss, s.avg_loss = finite_or_none(event.loss), finite_or_none(event.avg_loss)
                s.seconds = event.seconds
                s.step_in_run = event.step - self._first_step
                s.losses.append((event.step, s.loss))
                s.text_encoder_lr = event.text_encoder_lr
                s.points.extend((event.step, int(t), finite_or_none(x))
                                for t, x in zip(event.timesteps or [], event.sample_losses or []))
                del s.points[:-POINTS]
                self._version += 1
                s.version = self._version
            elif isinstance(event, Movement):
                s.movement, s.movement_step = dict(event.blocks), event.step
                self._version += 1
                s.version = self._version
            elif isinstance(event, Validation):
                s.validation.append((event.step, finite_or_none(event.loss), finite_or_none(event.train_avg_loss)))
                self._append(f"validation loss at step {event.step}: {event.loss:.4f} ({event.images} held-out images)")
            elif isinstance(event, (Status, Warn)):
                self._append(("WARNING: " if isinstance(event, Warn) else "") + event.message)
            elif isinstance(event, Saved):
                if event.kind != "state":
                    s.saved.append(event.path)
                self._append(f"saved {event.kind}: {event.path}")
            elif isinstance(event, Sample):
                s.samples.append((event.caption, event.path))
                self._append(f"sample at step {event.step}")
            # The end state shows once the host has the GPU back (see _work), so a client that
            # sees "finished" can generate at once.
            elif isinstance(event, Finished):
                s.result_path, self._end_state = event.path, "finished"
                s.result_bytes = file_size(event.path)
                self._append(f"done: {event.steps} steps")
            elif isinstance(event, Cancelled):
                s.result_path, s.stage, self._end_state = event.path, event.stage, "cancelled"
                s.result_bytes = file_size(event.path)
                self._append(f"cancelled during {event.stage}" + (f": saved {event.path}" if event.path else ": nothing was saved"))
            elif isinstance(event, Failed):
                s.error, s.stage, self._end_state = event.message, event.stage, "failed"
                self._append(f"ERROR: {event.message}")

    def _set_stage(self, stage: str) -> None:
        with self._lock:
            self._snap.stage = stage
            self._version += 1
            self._snap.version = self._version

    def _work(self, prepared, host, model, sinks) -> None:
        from .host import gpu
        from .train import distributed
        from .train.launch import run_processes
        from .train.loop import run_prepared

        control = self._control
        error, stopped_at = None, None
        try:
            with gpu.hold(f"training '{prepared.name}'", wait=float("inf"), should_stop=lambda: control.stop_requested):
                try:
                    if host is not None:
                        host.before_training(control)
                    self._set_stage("dataset")
                    try:
                        if getattr(prepared.plan, "processes", 1) > 1 and distributed.world_size() == 1:  # several GPUs
                            run_processes(prepared, prepared.plan.processes, devices=self._devices,
                                          sinks=[self._on_event, *sinks], control=control)
                        else:
                            run_prepared(prepared, model=model, sinks=[self._on_event, *sinks], control=control)
                    finally:
                        model = None  # the run's models, caches and optimizer are unreferenced now:
                        _release_memory()  # give them back to the system before the host reloads its model
                finally:
                    if host is not None:
                        try:
                            host.after_training()
                        except Exception as e:
                            error = f"giving the GPU back to the host failed: {e}"
        except RunStopped as stop:  # while waiting for the GPU or the WebUI's queue
            stopped_at = stop.stage
        except InstantLoraError as e:
            error = error or str(e)
        except Exception as e:  # an unexpected bug: keep the traceback's text where the user looks
            error = error or f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"
        finally:
            if error:
                _release_memory()  # again: the exception's frames held the failed run until here
            with self._lock:
                s = self._snap
                if self._end_state:
                    s.state = self._end_state
                elif stopped_at and not error:  # stopped before the run began
                    s.state, s.stage = "cancelled", stopped_at
                    self._append(f"cancelled while {stopped_at}: nothing was saved")
                else:  # no end event: it failed before the run could report
                    s.state = "failed"
                if error and s.state != "cancelled":
                    s.state = "failed"
                    if s.error is None:
                        s.error = error
                        self._append(f"ERROR: {error}")
                self._version += 1
                s.version = self._version


def _release_memory() -> None:
    try:
        from .memory import release_memory

        release_memory()
    except Exception:  # never turn a finished run into a failure
        pass


_JOB: TrainingJob | None = None


def current_job() -> TrainingJob:
    """The process-wide job: every page (and the WebUI's API routes) sees the same one."""
    global _JOB
    if _JOB is None:
        _JOB = TrainingJob()
    return _JOB
