"""How far each block's LoRA has moved: the norm of what it adds to the base weights.

A module's LoRA adds scale·B·A to its weight (scale = alpha / rank; B = up [out, r], A = down
[r, in], a 1x1 or 3x3 conv's weights read as 2-D). A block's movement is
sqrt(sum over its modules of ||scale·B·A||_F^2): zero at the start (B starts at zero), and the
blocks whose number grows are the ones learning the subject. The product is never formed:
||B·A||_F^2 = sum((BᵀB) ⊙ (A·Aᵀ)), two r x r matrices, so a whole SD model takes milliseconds.

Two ways in, the same numbers: the live peft layers of a run (`from_layers`) and a saved kohya
file's tensors (`from_file`, `from_state_dict`). Blocks are `blocks.block_of`'s labels, returned
in `blocks.block_order` (down, mid, up, text encoder).
"""

from __future__ import annotations

from pathlib import Path

from .blocks import block_of, block_order


def squared_norm(down, up, scale: float):
    """||scale · up · down||_F^2 as a 0-dim float32 tensor on the weights' device, without the product."""
    import torch

    with torch.no_grad():
        a = down.detach().float().reshape(down.shape[0], -1)  # [r, in·k·k]
        b = up.detach().float().reshape(up.shape[0], -1)  # [out, r]
        gram = (b.T @ b) * (a @ a.T)  # (BᵀB) ⊙ (A·Aᵀ): both r x r and symmetric
        return gram.sum().clamp_min(0.0) * float(scale) ** 2


def _by_block(items, layers_per_block: int) -> dict:
    """{block: norm} from (kohya name, squared-norm tensor) pairs: one device transfer per device."""
    import math

    import torch

    names, values = [], []
    for name, value in items:
        names.append(name)
        values.append(value)
    squares: list = [0.0] * len(values)
    devices: dict = {}
    for i, v in enumerate(values):
        devices.setdefault(v.device, []).append(i)
    for indices in devices.values():
        got = torch.stack([values[i] for i in indices]).double().cpu().tolist()
        for i, x in zip(indices, got):
            squares[i] = x
    sums: dict = {}
    for name, sq in zip(names, squares):
        block = block_of(name, layers_per_block)
        sums[block] = sums.get(block, 0.0) + sq
    return {block: math.sqrt(sums[block]) for block in sorted(sums, key=block_order)}


def layers_per_block(unet) -> int:
    layers = getattr(unet.config, "layers_per_block", 2)
    return layers if isinstance(layers, int) else layers[0]


def from_named_layers(layers: dict, layers_per_block: int = 2) -> dict:
    """{block: norm} of {kohya name: peft layer} (kohya_file.named_layers)."""
    from .layers import layer_tensors

    def items():
        for name, layer in layers.items():
            down, up, alpha = layer_tensors(layer)
            yield name, squared_norm(down, up, alpha / down.shape[0])

    return _by_block(items(), layers_per_block)


def from_layers(unet, text_encoders=None) -> dict:
    """{block: norm} of the LoRA layers inside a UNet and (the trained) text encoders, live."""
    from .kohya_file import named_layers

    return from_named_layers(named_layers(unet, text_encoders), layers_per_block(unet))


def from_state_dict(sd: dict, layers_per_block: int = 2) -> dict:
    """{block: norm} of a kohya state dict (`<name>.lora_down.weight`, `.lora_up.weight`, `.alpha`);
    a module without `.alpha` has scale 1 (alpha = rank), as the loaders read it."""
    suffix = ".lora_down.weight"

    def items():
        for key in sd:
            if not key.endswith(suffix):
                continue
            name = key[: -len(suffix)]
            down, up = sd[key], sd[name + ".lora_up.weight"]
            alpha = float(sd[name + ".alpha"]) if name + ".alpha" in sd else float(down.shape[0])
            yield name, squared_norm(down, up, alpha / down.shape[0])

    return _by_block(items(), layers_per_block)


def from_file(path, layers_per_block: int = 2) -> dict:
    """{block: norm} of a saved LoRA file."""
    from .kohya_file import read_lora_file

    sd, _ = read_lora_file(Path(path))
    return from_state_dict(sd, layers_per_block)


def largest(movement: dict, count: int = 3) -> list[str]:
    """The `count` blocks that moved furthest (ties: the model's order), only those that moved."""
    import math

    moved = [b for b, v in movement.items() if isinstance(v, (int, float)) and math.isfinite(v) and v > 0]
    return sorted(moved, key=lambda b: (-movement[b], block_order(b)))[:count]
