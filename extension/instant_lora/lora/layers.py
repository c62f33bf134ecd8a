"""Put LoRA layers into the UNet / text encoder with peft, and read or set their weights.

`peft.inject_adapter_in_model` works the same on peft 0.13.2 (the WebUI's ceiling) and current
peft, with or without diffusers' PEFT backend, so both models go through it.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from typing import Iterator

ADAPTER = "default"


def inject_lora(model, target_names: list[str], rank: int, alpha: float, dropout: float = 0.0, *,
                seed: int | None = None, seed_salt: str = "") -> int:
    """Add LoRA (down: kaiming-uniform, up: zeros, scale alpha/rank) to exactly `target_names`.

    With `seed`, every down weight is drawn from its own generator, seeded from (seed, seed_salt,
    module path): the same seed gives the same LoRA whatever the global RNG state, the injection
    order or the other targets, and the global torch RNG is left as it was. Give each model its own
    `seed_salt` ("unet", "text_encoder") so the two do not share streams.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if not target_names:
        return 0
    config = LoraConfig(r=int(rank), lora_alpha=float(alpha), target_modules=list(target_names),
                        lora_dropout=float(dropout), init_lora_weights=True)
    keep_rng = contextlib.nullcontext()
    if seed is not None:
        import torch

        keep_rng = torch.random.fork_rng(devices=[])  # peft's own init draws from the global CPU RNG
    with keep_rng:
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    injected = sum(1 for _ in lora_layers(model))
    if injected != len(target_names):
        raise RuntimeError(f"peft injected {injected} LoRA layers, expected {len(target_names)}")
    if seed is not None:
        seed_lora_layers(model, seed, seed_salt)
    return injected


def layer_seed(seed: int, salt: str, module_path: str) -> int:
    """A 63-bit generator seed from (seed, salt, module path); stable across runs, machines and
    Python processes (no hash()). A leading `text_model.` is ignored, so the text encoder's streams
    do not change with the transformers version (5.6 dropped that part of the paths)."""
    if module_path.startswith("text_model."):
        module_path = module_path[len("text_model."):]
    digest = hashlib.sha256(f"{int(seed)}\0{salt}\0{module_path}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2 ** 63 - 1)


def seed_lora_layers(model, seed: int, salt: str = "") -> int:
    """Re-draw every LoRA layer of `model` from (seed, salt, its path): down kaiming-uniform with
    a=sqrt(5) as peft does (bound 1/sqrt(fan_in)), up zeros. Drawn in fp32 on the CPU, so the
    values do not depend on the device either. Returns the number of layers set."""
    import torch

    count = 0
    with torch.no_grad():
        for path, layer in lora_layers(model):
            down, up, _ = layer_tensors(layer)
            fan_in = math.prod(down.shape[1:])
            gain = math.sqrt(2.0 / (1 + 5))  # leaky_relu gain with a = sqrt(5)
            bound = gain * math.sqrt(3.0 / fan_in)
            gen = torch.Generator(device="cpu").manual_seed(layer_seed(seed, salt, path))
            values = torch.empty(tuple(down.shape), dtype=torch.float32).uniform_(-bound, bound, generator=gen)
            down.copy_(values.to(device=down.device, dtype=down.dtype))
            up.zero_()
            count += 1
    return count


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
