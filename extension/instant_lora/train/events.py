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
from dataclasses import asdict, dataclass, field
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
    # Every image of this step (all micro-batches, all processes), in order: the timestep drawn for
    # it and its own plain MSE (no prior or Min-SNR weighting). Defaults keep older readers working.
    timesteps: list = field(default_factory=list)
    sample_losses: list = field(default_factory=list)
    text_encoder_lr: float | None = None  # the (first) text encoder's, when it is trained


@dataclass
class Movement:
    """How far each block's LoRA has moved, {block label: norm of scale·up·down}, after `step`
    (lora/movement.py). Sent before the first step (all zeros, or a resumed run's weights), every
    few steps, and at the last step, whose numbers are the saved file's."""
    step: int
    blocks: dict


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
        record = {k: json_safe(v) for k, v in record.items()}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
        if self.failed and not self.steps:
            remove_log(self.path, self.created)


def json_safe(value):
    """`value` with every non-finite float (also inside lists and dicts) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    return value


TIMESTEP_BIN = 100  # loss_by_timestep/<bin>: the images of a step grouped by 100 timesteps


class TensorBoardSink:
    """Scalars per step. The event file (and its folder) is created at the first step, so a run
    that never trained leaves no empty TensorBoard run behind.

    Besides loss and learning rates: `timestep/mean` (this step's draws), `loss_by_timestep/000-099`
    ... `900-999` (the mean loss of this step's images whose timestep fell in that range: one curve
    per noise level, which shows why the raw loss jumps: small timesteps always lose more) and
    `movement/<block>` (how far each block's LoRA has moved)."""

    def __init__(self, log_dir: Path, writer_class=None):
        if writer_class is None:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            writer_class = SummaryWriter
        self.log_dir = Path(log_dir)
        self._writer_class = writer_class
        self.writer = None
        self._waiting: list = []  # the movement before the first step: written with that step

    def _open(self):
        if self.writer is None:
            self.writer = self._writer_class(log_dir=str(self.log_dir))
            for event in self._waiting:
                self._movement(event)
            self._waiting = []
        return self.writer

    def _movement(self, event) -> None:
        for block, norm in event.blocks.items():
            self.writer.add_scalar(f"movement/{block}", norm, event.step)

    def __call__(self, event) -> None:
        if isinstance(event, Step):
            w = self._open()
            w.add_scalar("loss/current", event.loss, event.step)
            w.add_scalar("loss/average", event.avg_loss, event.step)
            w.add_scalar("lr/unet", event.lr, event.step)
            if event.text_encoder_lr is not None:
                w.add_scalar("lr/text_encoder", event.text_encoder_lr, event.step)
            if event.timesteps:
                w.add_scalar("timestep/mean", sum(event.timesteps) / len(event.timesteps), event.step)
            for tag, loss in loss_by_timestep(event.timesteps, event.sample_losses).items():
                w.add_scalar(f"loss_by_timestep/{tag}", loss, event.step)
        elif isinstance(event, Movement):
            if self.writer is None:
                self._waiting.append(event)
            else:
                self._movement(event)
        elif isinstance(event, Validation):
            self._open()
            self.writer.add_scalar("loss/validation", event.loss, event.step)
            if event.divergence is not None:
                self.writer.add_scalar("loss/validation_divergence", event.divergence, event.step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def loss_by_timestep(timesteps, losses, width: int = TIMESTEP_BIN) -> dict:
    """{"000-099": mean loss, ...} of the finite (timestep, loss) pairs, by ranges of `width` timesteps."""
    bins: dict = {}
    for t, loss in zip(timesteps or [], losses or []):
        if loss is None or not math.isfinite(loss):
            continue
        low = int(t) // width * width
        bins.setdefault(low, []).append(loss)
    return {f"{low:03d}-{low + width - 1:03d}": sum(v) / len(v) for low, v in sorted(bins.items())}


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
