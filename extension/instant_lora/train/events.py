"""What the trainer tells its front ends, and what they can ask of it.

The loop knows no UI: it emits these events to sinks (console, JSONL, TensorBoard, Gradio, the
WebUI's progress state) and polls a TrainControl at every step boundary.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Status:
    message: str


@dataclass
class Warn:
    message: str


@dataclass
class Step:
    step: int
    total: int
    epoch: int
    loss: float
    avg_loss: float
    lr: float
    seconds: float  # since training (not loading) started


@dataclass
class Validation:
    """The loss on the held-out images (fixed timesteps and noise: comparable from one
    evaluation to the next). A training loss that falls while this rises is overfitting."""
    step: int
    epoch: int
    loss: float
    images: int  # held-out images it averaged over
    train_avg_loss: float | None = None  # the training loss's moving average at that step

    @property
    def divergence(self) -> float | None:
        return None if self.train_avg_loss is None else self.loss - self.train_avg_loss


@dataclass
class Saved:
    path: str
    step: int
    epoch: int
    kind: str  # "epoch" | "step" | "final" | "state" | "cancelled"


@dataclass
class Sample:
    step: int
    caption: str  # the prompt
    path: str  # PNG with its infotext


@dataclass
class Finished:
    """The run completed every planned step; `path` is the final file."""
    path: str | None
    steps: int
    seconds: float
    cancelled: bool = False  # always False: a stop ends with Cancelled (kept for old log readers)


@dataclass
class Cancelled:
    """A stop request was obeyed. `path` is the file saved at the stop (None when it came before
    the first step: nothing was written into the Lora folder)."""
    path: str | None
    steps: int
    seconds: float
    stage: str  # where it stopped: "waiting", "dataset", "captioning", "loading", "caching", "training"


@dataclass
class Failed:
    """The run ended with an error; earlier saves stay intact."""
    message: str
    stage: str
    steps: int = 0


END_EVENTS = (Finished, Cancelled, Failed)


class RunStopped(Exception):
    """Raised at a stage boundary when a stop was requested; the run ends as Cancelled."""

    def __init__(self, stage: str):
        super().__init__(f"stopped during {stage}")
        self.stage = stage


class TrainControl:
    """Thread-safe requests from the front ends, read by the run at every stage boundary and
    between steps. Hosts add sources of their own (the WebUI's Interrupt button), so every way of
    stopping reaches the run through this one control."""

    def __init__(self):
        self._stop = threading.Event()
        self._sources: list = []

    def request_stop(self) -> None:
        self._stop.set()

    def add_source(self, source) -> None:
        """`source()` returning True counts as a stop request (polled, never called from a sink)."""
        self._sources.append(source)

    @property
    def stop_requested(self) -> bool:
        if self._stop.is_set():
            return True
        for source in self._sources:
            try:
                if source():
                    self._stop.set()
                    return True
            except Exception:
                continue  # a host's source that fails must not stop or break the run
        return False

    def check(self, stage: str) -> None:
        """Raise RunStopped at a stage boundary when a stop was requested."""
        if self.stop_requested:
            raise RunStopped(stage)


class Emitter:
    """Fans events out to sinks. A failing sink is reported loudly and training goes on: a UI bug
    must not cost the user their run."""

    def __init__(self, sinks):
        self.sinks = [s for s in sinks if s is not None]

    def __call__(self, event) -> None:
        for sink in self.sinks:
            try:
                sink(event)
            except Exception:
                print(f"[instant-lora] a progress sink failed on {type(event).__name__}:", file=sys.stderr)
                traceback.print_exc()

    def close(self) -> None:
        for sink in self.sinks:
            close = getattr(sink, "close", None)
            if close:
                close()


class ConsoleSink:
    """tqdm progress bar (step, loss, average loss, lr, it/s, ETA) plus one line per message."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.bar = None

    def _print(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def __call__(self, event) -> None:
        from tqdm import tqdm

        if isinstance(event, Status):
            self._print(event.message)
        elif isinstance(event, Warn):
            self._print(f"WARNING: {event.message}")
        elif isinstance(event, Step):
            if self.bar is None:
                self.bar = tqdm(total=event.total, initial=event.step - 1, desc="training", unit="step",
                                file=self.stream, dynamic_ncols=True)
            self.bar.update(event.step - self.bar.n)
            self.bar.set_postfix(loss=f"{event.loss:.4f}", avg=f"{event.avg_loss:.4f}", lr=f"{event.lr:.2e}",
                                 epoch=event.epoch, refresh=False)
        elif isinstance(event, Validation):
            self._print(f"validation loss at step {event.step}: {event.loss:.4f} ({event.images} held-out images)")
        elif isinstance(event, Saved):
            self._print(f"saved {event.kind}: {event.path}")
        elif isinstance(event, Sample):
            self._print(f"sample at step {event.step}: {event.path}")
        elif isinstance(event, Finished):
            self.close()
            self._print(f"done: {event.steps} steps in {event.seconds:.1f}s" + (f" -> {event.path}" if event.path else ""))
        elif isinstance(event, Cancelled):
            self.close()
            self._print(f"cancelled during {event.stage} after {event.steps} steps"
                        + (f" -> {event.path}" if event.path else ": nothing was saved"))
        elif isinstance(event, Failed):
            self.close()  # the command line prints the error itself, once

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class JsonlSink:
    """Every event as one JSON line: the run's complete, greppable log. A run that fails before its
    first step keeps no log (its messages were on the console or in the UI): the file, and the
    folders this sink created for it, are removed when it closes. A run that logged a step, or
    ended otherwise, keeps its log."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.created = _missing_folders(self.path.parent)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a", encoding="utf-8")
        self.steps = 0
        self.failed = False

    def __call__(self, event) -> None:
        if isinstance(event, Step):
            self.steps += 1
        elif isinstance(event, Failed):
            self.failed = True
        record = {"event": type(event).__name__.lower(), "time": round(time.time(), 3), **asdict(event)}
        # NaN/inf losses are written as null: the log stays valid JSON for every reader.
        record = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        if self.failed and not self.steps:
            remove_log(self.path, self.created)


class TensorBoardSink:
    """Scalars per step. The event file (and its folder) is created at the first step, so a run
    that never trained leaves no empty TensorBoard run behind."""

    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.log_dir = Path(log_dir)
        self._writer_class = SummaryWriter
        self.writer = None

    def __call__(self, event) -> None:
        if isinstance(event, Step):
            if self.writer is None:
                self.writer = self._writer_class(log_dir=str(self.log_dir))
            self.writer.add_scalar("loss/current", event.loss, event.step)
            self.writer.add_scalar("loss/average", event.avg_loss, event.step)
            self.writer.add_scalar("lr/unet", event.lr, event.step)
        elif isinstance(event, Validation):
            if self.writer is None:
                self.writer = self._writer_class(log_dir=str(self.log_dir))
            self.writer.add_scalar("loss/validation", event.loss, event.step)
            if event.divergence is not None:
                self.writer.add_scalar("loss/validation_divergence", event.divergence, event.step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _missing_folders(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, innermost first."""
    missing = []
    for f in (folder, *folder.parents):
        if f.exists():
            break
        missing.append(f)
    return missing


def remove_log(path: Path, created_folders=()) -> None:
    """Remove a log file and then each of `created_folders` that is left empty."""
    import contextlib
    import os

    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    for folder in created_folders:
        try:
            folder.rmdir()  # only when empty: samples or other runs' logs stay
        except OSError:
            break
