"""Which block of the model a LoRA module sits in, by its kohya name: the names LoRA users already
know from block-weight tools (IN01 … IN11, MID, OUT00 … OUT11 for the UNet's levels; TE, or TE1 /
TE2 for SDXL's two text encoders). The "what will be trained" panel groups its table by these,
the trainer reports how far each block's LoRA has moved under them, and the result card names
the blocks that moved most. No torch: a name is all it needs.
"""

from __future__ import annotations

import re

_DIFFUSERS = re.compile(r"lora_unet_(down|up)_blocks_(\d+)_attentions_(\d+)_")
_SGM = re.compile(r"lora_unet_(input|output)_blocks_(\d+)_")
_TE = re.compile(r"lora_(te[12]?)_")

PARTS = {"IN": "down", "MID": "mid", "OUT": "up"}


def block_of(kohya_name: str, layers_per_block: int = 2) -> str:
    """'IN04', 'MID', 'OUT11', 'TE', 'TE1', 'TE2' (or 'other' for a module outside these).
    Down level i, attention j is input block 1 + i(L+1) + j; up level i, attention j is output
    block i(L+1) + j, with L the UNet's layers per block (2 in every SD family): the original
    model's numbering, which SDXL's file names already use."""
    m = _DIFFUSERS.match(kohya_name)
    if m:
        kind, level, j = m.group(1), int(m.group(2)), int(m.group(3))
        n = level * (layers_per_block + 1) + j + (1 if kind == "down" else 0)
        return f"{'IN' if kind == 'down' else 'OUT'}{n:02d}"
    m = _SGM.match(kohya_name)
    if m:
        return f"{'IN' if m.group(1) == 'input' else 'OUT'}{int(m.group(2)):02d}"
    if kohya_name.startswith(("lora_unet_mid_block_", "lora_unet_middle_block_")):
        return "MID"
    m = _TE.match(kohya_name)
    if m:
        return m.group(1).upper()
    return "other"


def part_of(block: str) -> str:
    """'down' | 'mid' | 'up' | 'text encoder' | 'other' for a block_of label."""
    for prefix, part in PARTS.items():
        if block.startswith(prefix):
            return part
    return "text encoder" if block.startswith("TE") else "other"


def block_order(block: str) -> tuple:
    """Sort key: down blocks, mid, up blocks, then the text encoder(s): the path data takes."""
    rank = {"IN": 0, "MID": 1, "OUT": 2, "TE": 3}
    for prefix in ("MID", "IN", "OUT", "TE"):
        if block.startswith(prefix):
            tail = block[len(prefix):]
            return rank[prefix], int(tail) if tail.isdigit() else 0
    return 4, 0
