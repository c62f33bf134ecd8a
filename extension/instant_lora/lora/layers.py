"""Put LoRA layers into the UNet / text encoder with peft, and read or set their weights.

`peft.inject_adapter_in_model` works the same on peft 0.13.2 (the WebUI's ceiling) and current
peft, with or without diffusers' PEFT backend, so both models go through it.
"""

from __future__ import annotations

from typing import Iterator

ADAPTER = "default"


def inject_lora(model, target_names: list[str], rank: int, alpha: float, dropout: float = 0.0) -> int:
    """Add LoRA (down: kaiming-uniform, up: zeros, scale alpha/rank) to exactly `target_names`."""
    from peft import LoraConfig, inject_adapter_in_model

    if not target_names:
        return 0
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), target_modules=list(target_names),
                        lora_dropout=float(dropout), init_lora_weights=True)
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    injected = sum(1 for _ in lora_layers(model))
    if injected != len(target_names):
        raise RuntimeError(f"peft injected {injected} LoRA layers, expected {len(target_names)}")
    return injected


def lora_layers(model) -> Iterator[tuple[str, object]]:
    """(module path, peft LoraLayer) pairs; the path is the original module's path."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER in module.lora_A:
            yield name, module


def layer_tensors(layer) -> tuple:
    """(down, up, alpha) of one layer: down [r,in(,k,k)], up [out,r(,1,1)], alpha as a float."""
    down = layer.lora_A[ADAPTER].weight
    up = layer.lora_B[ADAPTER].weight
    alpha = float(layer.scaling[ADAPTER]) * layer.r[ADAPTER]
    return down, up, alpha


def lora_parameters(model) -> list:
    return [p for _, layer in lora_layers(model) for p in (layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight)]


def set_lora_enabled(model, enabled: bool) -> None:
    """Switch all LoRA layers off/on (off = exactly the base model)."""
    for _, layer in lora_layers(model):
        layer.enable_adapters(enabled) if hasattr(layer, "enable_adapters") else setattr(layer, "disable_adapters", not enabled)
