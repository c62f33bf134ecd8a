"""Which Stable Diffusion family a checkpoint belongs to: SD1.x, SD2.x (epsilon or v-prediction)
or SDXL (base-shaped), read from the file itself before any model loads.

A single-file checkpoint is told apart by its tensor names and shapes in the safetensors header
(the cross-attention width: 768 for SD1, 1024 for SD2, 2048 for SDXL; the text encoders'
prefixes), a diffusers folder by its configs. SD2's v-prediction is not in the weights' layout:
it is read, in this order, from a `v_pred` marker key, the WebUI's convention of a `<name>.yaml`
beside the checkpoint (`parameterization: "v"`), and the weight statistic that ComfyUI and the
WebUI's SD2 loader both use (the spread of one LayerNorm bias is > 0.09 in v models), read with
numpy: this module is used where torch must not be imported. Kinds not trained here (an SDXL
refiner, SD3, FLUX, inpainting, instruct-pix2pix) are refused with UnsupportedModel.
"""

from __future__ import annotations

import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from .errors import InstantLoraError, UnsupportedModel

UNET = "model.diffusion_model."
_CROSS_ATTN = UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"  # [320, context width]
_SDXL_CROSS_ATTN = UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"  # SDXL's first attention level
V_STAT_KEY = UNET + "output_blocks.11.1.transformer_blocks.0.norm1.bias"
V_STAT_THRESHOLD = 0.09
_MAX_HEADER_BYTES = 100 * 1024 * 1024


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
    def scheduler_prediction(self) -> str:
        """diffusers' name for the prediction type."""
        return "v_prediction" if self.prediction == "v" else "epsilon"

    @property
    def text_encoders(self) -> tuple:
        return {"sd1": ("CLIP ViT-L/14",), "sd2": ("OpenCLIP ViT-H/14",),
                "sdxl": ("CLIP ViT-L/14", "OpenCLIP ViT-bigG/14")}[self.name]


SD1 = ModelFamily("sd1", "epsilon", "default")


def family_of_model(unet, text_encoder_2=None, prediction_type: str = "epsilon") -> ModelFamily:
    """The family of loaded diffusers parts (a model built in memory, the WebUI's loaded checkpoint
    converted): SDXL by its size/crop conditioning, SD2 by its 1024-wide cross-attention."""
    prediction = "v" if prediction_type == "v_prediction" else "epsilon"
    cfg = unet.config
    if getattr(cfg, "addition_embed_type", None) == "text_time" or text_encoder_2 is not None:
        return ModelFamily("sdxl", prediction, "UNet with text_time conditioning")
    if cfg.cross_attention_dim == 1024 or getattr(cfg, "use_linear_projection", False):
        return ModelFamily("sd2", prediction, f"UNet cross-attention width {cfg.cross_attention_dim}, linear projections")
    return ModelFamily("sd1", prediction, f"UNet cross-attention width {cfg.cross_attention_dim}")


_INPUT_CONV = UNET + "input_blocks.0.0.weight"  # [320, in_channels, 3, 3]
_OTHER_ARCHITECTURES = (  # (key pattern, what it is): diffusion transformers, not UNets
    (re.compile(r"(^|\.)joint_blocks\."), "a Stable Diffusion 3 checkpoint (MMDiT joint_blocks)", "SD3"),
    (re.compile(r"(^|\.)double_blocks\."), "a FLUX checkpoint (double_blocks)", "FLUX"),
)
_IN_CHANNELS = {  # UNets whose input is more than the 4 latent channels
    9: ("an inpainting checkpoint (its UNet takes 9 input channels: latent, mask, masked image)",
        "pick the normal version of the model: a LoRA trained on it also works with its inpainting version"),
    8: ("an instruct-pix2pix checkpoint (its UNet takes 8 input channels: latent and source image)",
        "pick the model it was fine-tuned from"),
    5: ("a depth-conditioned checkpoint (its UNet takes 5 input channels: latent and depth)",
        "pick the normal version of the model"),
    7: ("an upscaler checkpoint (its UNet takes 7 input channels)", "pick a text-to-image checkpoint"),
}
_ANY_FAMILY = "pick an SD1.x, SD2.x or SDXL (base-shaped) checkpoint"
_YAML_V = re.compile(r"parameterization:\s*[\"']?v[\"']?\s*$", re.M)


def _refuse_other_kinds(shapes: dict) -> None:
    for pattern, what, short in _OTHER_ARCHITECTURES:
        if any(pattern.search(n) for n in shapes):
            raise UnsupportedModel(f"this is {what}: {short} is not supported yet", hint=_ANY_FAMILY)
    in_shape = shapes.get(_INPUT_CONV)
    in_channels = in_shape[1] if in_shape and len(in_shape) == 4 else 4
    if in_channels != 4:
        what, hint = _IN_CHANNELS.get(in_channels, (f"a checkpoint whose UNet takes {in_channels} input channels "
                                                     "(text-to-image UNets take 4)", _ANY_FAMILY))
        raise UnsupportedModel(f"this is {what}: not supported yet", hint=hint)


def _sdxl_family(shapes: dict, yaml_text: str | None) -> ModelFamily:
    names = set(shapes)
    # The refiner conditions on bigG alone (in slot 0) and 5 size numbers: 1280 + 5 x 256 = 2560 inputs.
    has_embedders = any(n.startswith("conditioner.embedders.") for n in names)
    refiner_inputs = (shapes.get(UNET + "label_emb.0.0.weight") or [0, 0])[-1] == 2560
    if refiner_inputs or (has_embedders and not any(n.startswith("conditioner.embedders.1.") for n in names)):
        raise UnsupportedModel("this is an SDXL refiner (one text encoder, no CLIP-L): LoRAs are trained on SDXL base "
                               "or a checkpoint made from it, not supported yet", hint="pick an SDXL base-shaped checkpoint")
    # The context is both encoders' features side by side: 768 + 1280 = 2048 in SDXL base.
    te1 = shapes.get("conditioner.embedders.0.transformer.text_model.final_layer_norm.weight") \
        or shapes.get("conditioner.embedders.0.transformer.final_layer_norm.weight")
    te2 = shapes.get("conditioner.embedders.1.model.ln_final.weight")
    expected = te1[0] + te2[0] if te1 and te2 else 2048
    width = (shapes.get(_SDXL_CROSS_ATTN) or [0, 0])[-1]
    if width and width != expected:
        raise UnsupportedModel(f"this is an SDXL-like checkpoint with cross-attention width {width} "
                               f"(SDXL base has 2048): not supported yet", hint="pick an SDXL base-shaped checkpoint")
    if "v_pred" in names:
        return ModelFamily("sdxl", "v", "conditioner.embedders.0/1 (two text encoders), v_pred key")
    if yaml_text is not None and _YAML_V.search(yaml_text):
        return ModelFamily("sdxl", "v", "conditioner.embedders.0/1 (two text encoders), parameterization v in its .yaml")
    return ModelFamily("sdxl", "epsilon", "conditioner.embedders.0/1 (two text encoders)")


def family_of_shapes(shapes: dict, *, yaml_text: str | None = None, v_stat=None) -> ModelFamily:
    """The family of a single-file (LDM/SGM layout) checkpoint from {tensor name: shape}.
    yaml_text: a config beside the file; v_stat(): the spread of the v-prediction probe tensor.
    UnsupportedModel for a readable checkpoint of a kind not trained here."""
    names = set(shapes)
    _refuse_other_kinds(shapes)
    if any(n.startswith("conditioner.embedders.") for n in names) or UNET + "label_emb.0.0.weight" in names:
        return _sdxl_family(shapes, yaml_text)
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
        raise UnsupportedModel(f"cross-attention width {width} is none of SD1 (768), SD2 (1024), SDXL (2048): "
                               "this model family is not supported yet", hint=_ANY_FAMILY)
    if "v_pred" in names:
        return ModelFamily("sd2", "v", f"OpenCLIP text encoder, cross-attention width {width}, v_pred key")
    if yaml_text is not None and _YAML_V.search(yaml_text):
        return ModelFamily("sd2", "v", f"OpenCLIP text encoder, cross-attention width {width}, parameterization v in its .yaml")
    if v_stat is not None:
        spread = v_stat()
        if spread is not None and spread > V_STAT_THRESHOLD:
            return ModelFamily("sd2", "v", f"OpenCLIP text encoder, cross-attention width {width}, "
                                           f"weight statistic {spread:.3f} > {V_STAT_THRESHOLD}")
    return ModelFamily("sd2", "epsilon", f"OpenCLIP text encoder, cross-attention width {width}, epsilon")


_NUMPY_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "BF16": "<u2"}


def safetensors_header(path: Path) -> tuple[dict, int]:
    """(the JSON header without __metadata__, byte offset where tensor data starts); no torch."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError("too short for a safetensors file")
        (size,) = struct.unpack("<Q", raw)
        if size > _MAX_HEADER_BYTES or size > os.path.getsize(path) - 8:
            raise ValueError("not a safetensors header")
        header = json.loads(f.read(size))
    return {k: v for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}, 8 + size


def _read_tensor(path: Path, entry: dict, data_start: int):
    """One tensor's values as float64 numpy, read by its data_offsets (F16/BF16/F32/F64)."""
    import numpy as np

    dtype = _NUMPY_DTYPES.get(entry.get("dtype"))
    if dtype is None:
        return None
    begin, end = entry["data_offsets"]
    with open(path, "rb") as f:
        f.seek(data_start + begin)
        values = np.frombuffer(f.read(end - begin), dtype=dtype)
    if entry["dtype"] == "BF16":  # bfloat16 is the upper half of a float32
        values = (values.astype(np.uint32) << 16).view(np.float32)
    return values.astype(np.float64)


def _spread(path: Path, header: dict, data_start: int):
    """Population standard deviation of the v-prediction probe tensor (reads that tensor only)."""
    def read():
        entry = header.get(V_STAT_KEY)
        values = _read_tensor(path, entry, data_start) if entry else None
        return float(values.std()) if values is not None and values.size else None
    return read


def _family_of_folder(folder: Path) -> ModelFamily:
    def config(part: str, name: str) -> dict:
        try:
            return json.loads((folder / part / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    unet, scheduler = config("unet", "config.json"), config("scheduler", "scheduler_config.json")
    in_channels = unet.get("in_channels", 4)
    if in_channels != 4:
        what, hint = _IN_CHANNELS.get(in_channels, (f"a model whose UNet takes {in_channels} input channels", _ANY_FAMILY))
        raise UnsupportedModel(f"{folder.name}: this is {what}: not supported yet", hint=hint, path=folder)
    prediction = "v" if scheduler.get("prediction_type") == "v_prediction" else "epsilon"
    width = unet.get("cross_attention_dim")
    if unet.get("addition_embed_type") == "text_time" or (folder / "text_encoder_2").is_dir():
        return ModelFamily("sdxl", prediction, "diffusers folder with text_encoder_2")
    # OpenAI's CLIP (SD1) uses quick_gelu, OpenCLIP's ViT-H (SD2) gelu: what tells a folder whose
    # width is neither 768 nor 1024 (a small test model) apart
    act = config("text_encoder", "config.json").get("hidden_act")
    if width == 768 or (width != 1024 and act == "quick_gelu"):
        return ModelFamily("sd1", prediction, f"diffusers folder, cross_attention_dim {width}, CLIP ViT-L-style text encoder")
    if width == 1024 or act == "gelu":
        return ModelFamily("sd2", prediction, f"diffusers folder, cross_attention_dim {width}, OpenCLIP-style text encoder")
    raise InstantLoraError(f"{folder} is not a diffusers Stable Diffusion folder (unet/config.json has no known "
                           "cross_attention_dim)", path=folder)


def _named(e: InstantLoraError, path: Path) -> InstantLoraError:
    """The same error with the file's name in front."""
    return type(e)(f"{path.name}: {e.message}", hint=e.hint, path=path)


def detect_family(path) -> ModelFamily:
    """The family of a checkpoint file or diffusers folder; InstantLoraError saying what it is not
    (UnsupportedModel for a checkpoint of a kind not trained here). Imports no torch."""
    path = Path(path)
    if path.is_dir():
        return _family_of_folder(path)
    if path.suffix.lower() != ".safetensors":
        raise InstantLoraError(f"{path.name}: the family is read from a .safetensors header; convert the checkpoint "
                               "to .safetensors (the WebUI's checkpoint merger can)", path=path)
    try:
        header, data_start = safetensors_header(path)
    except (OSError, ValueError) as e:
        raise InstantLoraError(f"cannot read {path}: {e}", path=path) from e
    shapes = {k: v.get("shape", []) for k, v in header.items()}
    try:
        return family_of_shapes(shapes, yaml_text=yaml_beside(path), v_stat=_spread(path, header, data_start))
    except InstantLoraError as e:
        raise _named(e, path) from None


def yaml_beside(path: Path) -> str | None:
    """The WebUI's `<name>.yaml` next to a checkpoint, if any."""
    yaml = path.with_suffix(".yaml")
    return yaml.read_text(encoding="utf-8", errors="replace") if yaml.is_file() else None
