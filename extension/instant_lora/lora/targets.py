"""Which modules get a LoRA: the reference trainer's default set, or attention only.

UNet: every Linear and 1x1 Conv inside each Transformer2DModel (proj_in/out, attn1/attn2
q/k/v/out, ff) = 192 modules on SD1.5. Text encoder: q/k/v/out_proj, fc1, fc2 = 72 modules.
"""

from __future__ import annotations

import re

PRESETS = {
    "default": "all Linear/1x1 Conv in the UNet's transformer blocks, text encoder attention + MLP (as the reference trainer)",
    "attn-only": "attention projections only (q, k, v, out) in the UNet and the text encoder",
}
_UNET_ATTN = re.compile(r"\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$")
_TE_ALL = re.compile(r"encoder\.layers\.\d+\.(self_attn\.(q|k|v|out)_proj|mlp\.fc[12])$")
_TE_ATTN = re.compile(r"encoder\.layers\.\d+\.self_attn\.(q|k|v|out)_proj$")


def _is_pointwise(module) -> bool:
    import torch.nn as nn

    return isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1))


def unet_targets(unet, preset: str = "default") -> list[str]:
    names = []
    for name, module in unet.named_modules():
        # Class name, not isinstance: diffusers has moved this class between modules across versions.
        if type(module).__name__ != "Transformer2DModel":
            continue
        for sub_name, sub in module.named_modules():
            full = f"{name}.{sub_name}"
            if sub_name and _is_pointwise(sub) and (preset != "attn-only" or _UNET_ATTN.search(full)):
                names.append(full)
    return names


def text_encoder_targets(text_encoder, preset: str = "default") -> list[str]:
    import torch.nn as nn

    pattern = _TE_ATTN if preset == "attn-only" else _TE_ALL
    return [n for n, m in text_encoder.named_modules() if isinstance(m, nn.Linear) and pattern.search(n)]
