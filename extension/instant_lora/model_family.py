"""Which Stable Diffusion family a checkpoint belongs to: SD1.x, SD2.x (epsilon or v-prediction)
or SDXL (base-shaped), read from the file itself before any model loads.

A single-file checkpoint is told apart by its tensor names and shapes in the safetensors header
(the cross-attention width: 768 for SD1, 1024 for SD2, 2048 for SDXL; the text encoders'
prefixes), a diffusers folder by its configs. SD2's v-prediction is not in the weights' layout:
it is read, in this order, from a `v_pred` marker key, the WebUI's convention of a `<name>.yaml`
beside the checkpoint (`parameterization: "v"`), and the weight statistic that ComfyUI and the
WebUI's SD2 loader both use (the spread of one LayerNorm bias is > 0.09 in v models).

First step of SDXL/SD2 support: the trainer still trains SD1.x; this says what a file is.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import InstantLoraError

UNET = "model.diffusion_model."
_CROSS_ATTN = UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"  # [320, context width]
_SDXL_CROSS_ATTN = UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"  # SDXL's first attention level
_V_STAT = UNET + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_STAT_THRESHOLD = 0.09


@dataclass(frozen=True)
class ModelFamily:
    name: str  # "sd1" | "sd2" | "sdxl"
    prediction: str = "epsilon"  # "epsilon" | "v"
    why: str = ""  # how it was told, for the log

    @property
    def label(self) -> str:
        base = {"sd1": "SD1.x", "sd2": "SD2.x", "sdxl": "SDXL"}[self.name]
        return f"{base} (v-prediction)" if self.prediction == "v" else base

    @property
    def default_resolution(self) -> int:
        if self.name == "sdxl":
            return 1024
        return 768 if self.name == "sd2" and self.prediction == "v" else 512

    @property
    def text_encoders(self) -> tuple:
        return {"sd1": ("CLIP ViT-L/14",), "sd2": ("OpenCLIP ViT-H/14",),
                "sdxl": ("CLIP ViT-L/14", "OpenCLIP ViT-bigG/14")}[self.name]


def family_of_shapes(shapes: dict, *, yaml_text: str | None = None, v_stat=None) -> ModelFamily:
    """The family of a single-file (LDM/SGM layout) checkpoint from {tensor name: shape}.
    yaml_text: a config beside the file; v_stat(): the spread of the v-prediction probe tensor."""
    names = set(shapes)
    if any(n.startswith("conditioner.embedders.") for n in names) or UNET + "label_emb.0.0.weight" in names:
        width = (shapes.get(_SDXL_CROSS_ATTN) or [0, 0])[-1]
        if not any(n.startswith("conditioner.embedders.1.") for n in names):
            raise InstantLoraError("this is an SDXL refiner (one text encoder, no CLIP-L): LoRAs are trained on SDXL base "
                                   "or a checkpoint made from it", hint="pick an SDXL base-shaped checkpoint")
        if width and width != 2048:
            raise InstantLoraError(f"an SDXL-like checkpoint with cross-attention width {width} (SDXL base has 2048) is not supported")
        prediction = "v" if "v_pred" in names else "epsilon"
        return ModelFamily("sdxl", prediction, "conditioner.embedders.0/1 (two text encoders)"
                           + (", v_pred key" if prediction == "v" else ""))
    shape = shapes.get(_CROSS_ATTN)
    if shape is None:
        raise InstantLoraError("not a Stable Diffusion checkpoint: its UNet's first cross-attention layer "
                               f"({_CROSS_ATTN}) is missing", hint="pick an SD1.x, SD2.x or SDXL checkpoint (.safetensors)")
    width = shape[-1]
    # The text encoder's layout decides (HF CLIP: SD1; OpenCLIP: SD2), the width confirms it; a file
    # without its text encoder (a UNet-only export) is told by the width alone.
    openclip = any(n.startswith("cond_stage_model.model.") for n in names)
    hf_clip = any(n.startswith("cond_stage_model.transformer.") for n in names)
    if (hf_clip and width != 1024) or (not openclip and width == 768):
        return ModelFamily("sd1", "epsilon", f"CLIP ViT-L text encoder, cross-attention width {width}")
    if not (openclip or width == 1024):
        raise InstantLoraError(f"cross-attention width {width} is none of SD1 (768), SD2 (1024), SDXL (2048)")
    in_channels = (shapes.get(UNET + "input_blocks.0.0.weight") or [0, 4])[1]
    if "v_pred" in names:
        return ModelFamily("sd2", "v", "width 1024 (OpenCLIP ViT-H), v_pred key")
    if yaml_text is not None and re.search(r"parameterization:\s*[\"']?v[\"']?\s*$", yaml_text, re.M):
        return ModelFamily("sd2", "v", "width 1024 (OpenCLIP ViT-H), parameterization v in its .yaml")
    if in_channels == 4 and v_stat is not None:
        spread = v_stat()
        if spread is not None and spread > V_STAT_THRESHOLD:
            return ModelFamily("sd2", "v", f"width 1024 (OpenCLIP ViT-H), weight statistic {spread:.3f} > {V_STAT_THRESHOLD}")
    return ModelFamily("sd2", "epsilon", "width 1024 (OpenCLIP ViT-H), epsilon")


def _spread(path: Path):
    """Population standard deviation of the v-prediction probe tensor (reads that tensor only)."""
    def read():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            if _V_STAT not in f.keys():
                return None
            return float(f.get_tensor(_V_STAT).float().std(unbiased=False))
    return read


def _family_of_folder(folder: Path) -> ModelFamily:
    def config(part: str, name: str) -> dict:
        try:
            return json.loads((folder / part / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    unet, scheduler = config("unet", "config.json"), config("scheduler", "scheduler_config.json")
    prediction = "v" if scheduler.get("prediction_type") == "v_prediction" else "epsilon"
    width = unet.get("cross_attention_dim")
    if unet.get("addition_embed_type") == "text_time" or (folder / "text_encoder_2").is_dir():
        return ModelFamily("sdxl", prediction, "diffusers folder with text_encoder_2")
    # OpenAI's CLIP (SD1) uses quick_gelu, OpenCLIP's ViT-H (SD2) gelu: what tells a folder whose
    # width is neither 768 nor 1024 (a small test model) apart
    act = config("text_encoder", "config.json").get("hidden_act")
    if width == 768 or (width != 1024 and act == "quick_gelu"):
        return ModelFamily("sd1", prediction, f"diffusers folder, cross_attention_dim {width}, CLIP ViT-L-style text encoder")
    if width == 1024:
        return ModelFamily("sd2", prediction, f"diffusers folder, cross_attention_dim 1024, {prediction}")
    raise InstantLoraError(f"{folder} is not a diffusers Stable Diffusion folder (unet/config.json has no known "
                           "cross_attention_dim)", path=folder)


def detect_family(path) -> ModelFamily:
    """The family of a checkpoint file or diffusers folder; InstantLoraError saying what it is not."""
    from .train.estimate import safetensors_shapes

    path = Path(path)
    if path.is_dir():
        return _family_of_folder(path)
    if path.suffix.lower() != ".safetensors":
        raise InstantLoraError(f"{path.name}: the family is read from a .safetensors header; convert the checkpoint "
                               "to .safetensors (the WebUI's checkpoint merger can)", path=path)
    try:
        shapes = safetensors_shapes(path)
    except (OSError, ValueError) as e:
        raise InstantLoraError(f"cannot read {path}: {e}", path=path) from e
    yaml = path.with_suffix(".yaml")
    yaml_text = yaml.read_text(encoding="utf-8", errors="replace") if yaml.is_file() else None
    return family_of_shapes(shapes, yaml_text=yaml_text, v_stat=_spread(path))
