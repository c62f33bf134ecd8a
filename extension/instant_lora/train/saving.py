"""Saving a run's files (LoRA, sidecar, resumable state) and resuming from a state."""

from __future__ import annotations

from pathlib import Path

from .events import Saved, Status
from .metadata import WEBUI_VERSION, run_clock


def state_match(run) -> dict:
    return {"network_dim": run.plan.rank, "network_alpha": run.plan.alpha, "preset": run.config.preset,
            "train_text_encoder": run.plan.train_text_encoder, "model_family": run.model.family.name,
            "num_processes": run.plan.processes}

def maybe_resume(run) -> int:
    if not run.config.resume:
        return 0
    from ..lora.kohya_file import load_into_layers
    from .state import load_state, restore_rng

    state = load_state(Path(run.config.resume), state_match(run))
    m = run.model
    load_into_layers(state["lora"], m.unet, run.trained_encoders(), source=run.config.resume)
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    scaler = getattr(run.accelerator, "scaler", None)
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    restore_rng(state)
    run.emit(Status(f"resumed from {run.config.resume} at step {state['step']} (epoch {state['epoch']})"))
    return int(state["step"])

def save(run, stem: str, step: int, epoch: int, kind: str, finished: bool = False) -> Path:
    import torch

    from ..lora.kohya_file import extract_state_dict, save_lora_file, write_sidecar
    from ..output_paths import file_in
    from .metadata import build_metadata
    from .state import save_state

    cfg, m = run.config, run.model
    if not run.accelerator.is_main_process:
        return run.output_dir / f"{stem}.safetensors"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.save_precision or "", torch.float32)
    sd = extract_state_dict(m.unet, run.trained_encoders(), dtype=dtype)
    md = build_metadata(cfg, run.plan, run.scan, m, output_name=cfg.output_name or run.output_name,
                        started_at=getattr(run, "started_at", None) or run_clock(), step=step, epoch=epoch, finished=finished,
                        optimizer=run.optimizer_desc, data=getattr(run, "data", None))
    path = save_lora_file(file_in(run.output_dir, stem, ".safetensors"), sd, md)
    write_sidecar(path, activation_text=cfg.trigger_words, sd_version=WEBUI_VERSION[m.family.name],
                  description=f"Instant LoRA, {step} steps on {run.scan.root.name} ({run.scan.num_train_images} images x repeats)")
    run.saved.append(path)
    run.emit(Saved(path=str(path), step=step, epoch=epoch, kind=kind))
    if cfg.save_state or (finished and cfg.save_state_on_train_end):
        scaler = getattr(run.accelerator, "scaler", None)
        folder = save_state(file_in(run.output_dir, f"{stem}-state", ""), lora_sd=extract_state_dict(m.unet, run.trained_encoders()),
                            optimizer=run.optimizer, scheduler=run.scheduler, scaler=scaler, step=step, epoch=epoch,
                            match=state_match(run))
        run.emit(Saved(path=str(folder), step=step, epoch=epoch, kind="state"))
    return path
