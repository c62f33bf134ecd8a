"""Numbers derived from the config and the dataset, computed once before a run (and shown live in
the UI). The config itself is never changed; warnings about surprising defaults are collected here."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class TrainPlan:
    width: int
    height: int
    num_images: int  # distinct images
    num_train_images: int  # with repeats (one epoch)
    batch_size: int
    batches_per_epoch: int
    steps_per_epoch: int  # optimizer steps
    max_train_steps: int
    num_epochs: int
    warmup_steps: int
    rank: int
    alpha: float
    train_text_encoder: bool
    unet_lr: float
    text_encoder_lr: float
    precision: str  # effective: "no" | "fp16" | "bf16"
    device: str
    seed: int
    warnings: tuple = field(default_factory=tuple)

    @property
    def lora_scale(self) -> float:
        return self.alpha / self.rank


def make_plan(config, num_images: int, num_train_images: int, *, cuda: bool, explicit: frozenset | set = frozenset(),
              seed: int | None = None) -> TrainPlan:
    warnings = []
    w, h = config.resolution_wh()
    bs = config.train_batch_size
    batches = max(1, math.ceil(num_train_images / bs))
    steps_per_epoch = max(1, math.ceil(batches / config.gradient_accumulation_steps))
    if config.max_train_epochs:
        max_steps = config.max_train_epochs * steps_per_epoch
    else:
        max_steps = config.max_train_steps
    epochs = math.ceil(max_steps / steps_per_epoch)
    warmup = config.lr_warmup_steps
    warmup = int(round(warmup * max_steps)) if 0 < warmup < 1 else int(warmup)

    precision = config.mixed_precision
    if precision != "no" and not cuda:
        warnings.append(f"--mixed_precision={precision} needs a CUDA GPU; none found, training in fp32 on the CPU (slow).")
        precision = "no"
    rank, alpha = config.rank, config.network_alpha
    if "network_alpha" not in explicit and rank > 1:
        warnings.append(
            f"network_alpha is 1 (the reference trainer's default): with network_dim {rank} the LoRA's output is scaled by "
            f"1/{rank} = {1 / rank:.3g}, so it learns slowly unless the learning rate is high. "
            f"Set --network_alpha={rank} (or {max(1, rank // 2)}) for a full-strength LoRA.")
    if "network_dim" not in explicit:
        warnings.append("network_dim not set: using rank 4 (the reference default); 16-32 suits most subjects.")
    if "learning_rate" not in explicit and config.unet_lr is None:
        warnings.append("learning_rate not set: using 2e-6 (the reference default), which barely moves a LoRA; try --learning_rate=1e-4.")
    if config.full_fp16 or config.full_bf16:
        warnings.append("--full_fp16/--full_bf16 ignored: LoRA weights always train in fp32 (the frozen model still uses --mixed_precision).")
    if config.enable_bucket:
        warnings.append("--enable_bucket: aspect-ratio buckets are not supported yet; images are resized and center-cropped.")
    lr = config.learning_rate
    return TrainPlan(
        width=w, height=h, num_images=num_images, num_train_images=num_train_images, batch_size=bs,
        batches_per_epoch=batches, steps_per_epoch=steps_per_epoch, max_train_steps=max_steps, num_epochs=epochs,
        warmup_steps=warmup, rank=rank, alpha=alpha, train_text_encoder=not config.network_train_unet_only,
        unet_lr=config.unet_lr if config.unet_lr is not None else lr,
        text_encoder_lr=config.text_encoder_lr if config.text_encoder_lr is not None else lr,
        precision=precision, device="cuda" if cuda else "cpu", seed=seed if seed is not None else 0,
        warnings=tuple(warnings),
    )
