"""A run on several GPUs from the app: the same command line a user would launch, under the hood.

The app cannot turn its own process into N processes, so it writes the run's config to a TOML
file and starts `torchrun --nproc_per_node N standalone_app.py train --config_file <toml>` in a
new process group. The main process's JSONL log is followed and its records become events again,
so the app shows one progress as for a one-process run; a stop request is a Ctrl-C to the group
(every process stops after the same step, the main one saves once; train/distributed.py).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import events as ev

ROOT = Path(__file__).resolve().parents[3]
POLL_S = 0.5


def visible_gpus() -> list[str]:
    """"index: name (memory)" of each NVIDIA GPU, from nvidia-smi (no torch import, no CUDA
    context in the app's process); [] without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    gpus = []
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3 and parts[0].isdigit():
            gpus.append(f"{parts[0]}: {parts[1]} ({parts[2]})")
    return gpus


def free_port() -> int:
    """A TCP port nothing listens on now, for the processes' rendezvous."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gpu_index(label: str) -> int:
    return int(str(label).split(":", 1)[0])


def _toml_value(value) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, (list, tuple)):
        items = [_toml_value(v) for v in value]
        return None if any(i is None for i in items) else "[" + ", ".join(items) + "]"
    return None


def config_toml(prepared) -> str:
    """The prepared run as a --config_file: every set value, the plan's seed (so the processes
    draw what this plan drew), its output and log folders, and overwrite (the app checked it)."""
    values = dict(prepared.config.to_dict())
    values.update(seed=prepared.plan.seed, output_dir=prepared.plan.output_dir, logging_dir=prepared.plan.logging_dir)
    lines = ["# written by Instant LoRA for a multi-process run", "overwrite = true"]
    for key, value in values.items():
        text = _toml_value(value)
        if text is not None:
            lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


_EVENTS = {cls.__name__.lower(): cls for cls in (ev.Status, ev.Warn, ev.Step, ev.Movement, ev.Validation, ev.Saved,
                                                   ev.Sample, ev.Finished, ev.Cancelled, ev.Failed)}


def _nan_for_null(value):
    return math.nan if value is None else value


def event_of(record: dict):
    """The event a JSONL record was written from (None for a record of another kind). A null the
    log wrote for a NaN loss or movement is NaN again."""
    cls = _EVENTS.get(record.get("event"))
    if cls is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: (math.nan if v is None and k in ("loss", "avg_loss") else v) for k, v in record.items() if k in names}
    if isinstance(values.get("sample_losses"), list):
        values["sample_losses"] = [_nan_for_null(v) for v in values["sample_losses"]]
    if cls is ev.Movement and isinstance(values.get("blocks"), dict):
        values["blocks"] = {k: _nan_for_null(v) for k, v in values["blocks"].items()}
    try:
        return cls(**values)
    except TypeError:
        return None


class _LogFollower:
    """New records of the newest .jsonl in a folder that appeared after `since`."""

    def __init__(self, folder: Path, since: float):
        self.folder, self.since = Path(folder), since
        self.path: Path | None = None
        self.offset = 0

    def read(self) -> list[dict]:
        if self.path is None:
            fresh = [p for p in self.folder.glob("*.jsonl") if p.stat().st_mtime >= self.since - 1]
            if not fresh:
                return []
            self.path = max(fresh, key=lambda p: p.stat().st_mtime)
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # a line still being written is read next time
        self.offset += end
        return [json.loads(line) for line in data[:end].decode("utf-8").splitlines() if line.strip()]


def run_processes(prepared, processes: int, *, devices: list[int] | None = None, sinks=(), control=None,
                  python: str = sys.executable) -> None:
    """Train `prepared` on `processes` processes (on `devices`, CUDA indices; all visible when
    None), reporting to `sinks` as a one-process run would. Returns when the processes have ended;
    the run's end event (Finished, Cancelled or Failed) has been sent by then."""
    emit = ev.Emitter(list(sinks))
    logs = Path(prepared.plan.logging_dir)
    logs.mkdir(parents=True, exist_ok=True)
    config = logs / f"{prepared.plan.run_name or prepared.plan.output_name}-processes.toml"
    config.write_text(config_toml(prepared), encoding="utf-8")
    output = logs / f"{config.stem}.txt"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in devices)
    threads = max(1, (os.cpu_count() or 2) // processes)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    command = [python, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port",
               str(free_port()), str(ROOT / "standalone_app.py"), "train", "--config_file", str(config)]
    emit(ev.Status(f"starting {processes} training processes: torchrun --nproc_per_node {processes} "
                   f"standalone_app.py train --config_file {config.name} (their output: {output.name})"))
    started = time.time()
    follower = _LogFollower(logs, started)
    ended, stop_sent = False, False
    with open(output, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(command, cwd=str(ROOT), env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            while True:
                finished = proc.poll() is not None
                for record in follower.read():
                    event = event_of(record)
                    if event is not None:
                        ended = ended or isinstance(event, ev.END_EVENTS)
                        emit(event)
                if finished:
                    break
                if control is not None and control.stop_requested and not stop_sent:
                    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: stop after this step, save once
                    stop_sent = True
                time.sleep(POLL_S)
        except BaseException:
            with_suppressed_kill(proc)
            raise
    if not ended:
        tail = output.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-12:]
        emit(ev.Failed(message=f"the training processes ended (exit status {proc.returncode}) without finishing: "
                               + " | ".join(tail), stage="training"))


def with_suppressed_kill(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
