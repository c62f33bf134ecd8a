"""Optimizers and learning-rate schedules the reference trainer's users ask for."""

from __future__ import annotations

from ..errors import InstantLoraError


def make_optimizer(name: str, param_groups: list, kwargs: dict, *, cuda: bool, warn):
    import torch

    key = name.lower()
    if key == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except Exception:
            bnb = None
        if bnb is None or not cuda:
            warn("AdamW8bit needs bitsandbytes and a CUDA GPU; " + ("no GPU found" if not cuda else "bitsandbytes is not installed")
                 + ": using torch AdamW (same maths, more optimizer memory).")
            key = "adamw"
        else:
            return bnb.optim.AdamW8bit(param_groups, **kwargs)
    if key == "adamw":
        return torch.optim.AdamW(param_groups, **kwargs)
    if key == "prodigy":
        try:
            from prodigyopt import Prodigy
        except ImportError:
            raise InstantLoraError("--optimizer_type=Prodigy needs the prodigyopt package", hint="pip install prodigyopt") from None
        if any(g["lr"] < 0.1 for g in param_groups):
            warn("Prodigy adapts its own step size and expects learning_rate around 1.0 (you set less than 0.1).")
        return Prodigy(param_groups, **kwargs)
    if key == "lion":
        try:
            from lion_pytorch import Lion
        except ImportError:
            raise InstantLoraError("--optimizer_type=Lion needs the lion-pytorch package", hint="pip install lion-pytorch") from None
        return Lion(param_groups, **kwargs)
    if key == "adafactor":
        return _adafactor(param_groups, kwargs)
    raise InstantLoraError(f"optimizer '{name}' is not supported", hint="use AdamW, AdamW8bit, Adafactor, Prodigy or Lion")


def _adafactor(param_groups: list, kwargs: dict):
    """transformers' Adafactor at the learning rate the user set: its factored second moments take
    a fraction of AdamW's optimizer memory (the reference's low-VRAM SDXL recipe). Its own step
    size (relative_step) and update scaling are off unless asked for; relative_step cannot be
    combined with a learning rate, so it is refused with what to do."""
    from transformers.optimization import Adafactor

    kw = {"scale_parameter": False, "relative_step": False, "warmup_init": False, **kwargs}
    if kw["relative_step"] or kw["warmup_init"]:
        raise InstantLoraError("Adafactor with relative_step=True / warmup_init=True picks its own learning rate, "
                               "and this trainer trains at the learning rate you set",
                               hint="remove relative_step / warmup_init from --optimizer_args (they default to False here)")
    return Adafactor(param_groups, **kw)


def make_scheduler(name: str, optimizer, *, warmup_steps: int, total_steps: int, num_cycles: int = 1, power: float = 1.0):
    from diffusers.optimization import get_scheduler

    kw = dict(num_warmup_steps=warmup_steps, num_training_steps=total_steps)
    if name == "cosine_with_restarts":
        kw["num_cycles"] = num_cycles
    elif name == "polynomial":
        kw["power"] = power
    return get_scheduler(name, optimizer, **kw)
