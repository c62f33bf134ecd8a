"""Resumable training state: LoRA, optimizer, scheduler, grad scaler, RNG, step.

A state folder holds `state.pth` (tensors only, loaded with weights_only=True) and
`train_state.json` (`current_epoch`/`current_step` as the reference writes them, plus what must
match to resume). No .safetensors/.pt/.ckpt inside: the WebUI lists those as LoRA cards.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from ..errors import InstantLoraError
from ..output_paths import write_error, write_synced

STATE_FILE = "state.pth"
INFO_FILE = "train_state.json"


def _rng_state() -> dict:
    import numpy as np
    import torch

    np_state = np.random.get_state()
    state = {"python": list(random.getstate()[1]), "python_pos": random.getstate()[2],
             "numpy_keys": torch.from_numpy(np_state[1].astype("int64")), "numpy_pos": int(np_state[2]),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype("uint32"), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(folder: Path, *, lora_sd: dict, optimizer, scheduler, scaler, step: int, epoch: int, match: dict) -> Path:
    """Written whole into `<folder>.tmp` (state.pth, then train_state.json, each fsynced), then
    `<folder>` -> `<folder>.old`, `<folder>.tmp` -> `<folder>`, `<folder>.old` removed: a crash at
    any point leaves a whole state under one of the three names (output_paths.clean_leftovers puts
    it back). A full disk, denied or read-only folder raise InstantLoraError; earlier states stay."""
    import io

    import torch

    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    old = folder.with_name(folder.name + ".old")
    buf = io.BytesIO()
    torch.save({"lora": lora_sd, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "rng": _rng_state(),
                "step": step, "epoch": epoch}, buf)
    info = json.dumps({"current_epoch": epoch, "current_step": step, **match}, indent=2).encode("utf-8")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_synced(tmp / STATE_FILE, buf.getbuffer())
        write_synced(tmp / INFO_FILE, info)
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        try:
            tmp.rename(folder)
        except OSError:
            if old.exists() and not folder.exists():
                old.rename(folder)
            raise
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        error = write_error(e, folder, "saving the training state")
        if error is not None:
            raise error from e
        raise
    shutil.rmtree(old, ignore_errors=True)
    return folder


BEFORE_FAMILIES = {"model_family": "sd1", "num_processes": 1}  # states written before these keys: SD1.x, one process


def load_state(folder: Path, match: dict) -> dict:
    import torch

    folder = Path(folder)
    info_path, state_path = folder / INFO_FILE, folder / STATE_FILE
    if not state_path.is_file() or not info_path.is_file():
        raise InstantLoraError(f"--resume {folder}: not a training state folder (no {STATE_FILE} / {INFO_FILE}).",
                               hint="pass a '<name>-state' folder written by a run with --save_state", path=folder)
    info = {**BEFORE_FAMILIES, **json.loads(info_path.read_text(encoding="utf-8"))}
    diffs = [f"{k}: state has {info.get(k)!r}, this run {v!r}" for k, v in match.items() if info.get(k) != v]
    if diffs:
        raise InstantLoraError(f"--resume {folder}: the state does not fit this run's network ({'; '.join(diffs)}).",
                               hint="resume with the same base model family, network_dim, network_alpha, preset, "
                                    "text-encoder setting and number of processes (GPUs)", path=folder)
    return torch.load(str(state_path), map_location="cpu", weights_only=True)


def restore_rng(state: dict) -> None:
    _set_rng_state(state["rng"])
