"""Load an SD1.x base model: a single-file checkpoint, a diffusers folder, or a hub id.

Single files load with no network at all: the SD1.5 diffusers configs ship in `sd15_config/`, the
tokenizer is built from open_clip's BPE file, and the text encoder is filled from the checkpoint
by us with a strict key check (a CLIPTextModel that loads with missing keys has random weights).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InstantLoraError

BUNDLED_SD15_CONFIG = Path(__file__).with_name("sd15_config")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
_TE_PREFIX = "cond_stage_model.transformer."


@dataclass
class SDModel:
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any  # DDPMScheduler with SD's training betas
    source: str  # what the user passed
    name: str  # file or folder name, for ss_sd_model_name
    legacy_hash: str | None = None  # A1111's old 8-hex model hash, for ss_sd_model_hash
    extra: dict = field(default_factory=dict)

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type


def training_noise_scheduler(prediction_type: str = "epsilon"):
    """DDPM with SD1.x's training betas (as the reference trainer and diffusers' examples)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        clip_sample=False, prediction_type=prediction_type,
    )


def legacy_model_hash(path: Path) -> str | None:
    """A1111's old short hash: sha256 of 64 KiB at offset 1 MiB, first 8 hex digits."""
    try:
        with open(path, "rb") as f:
            f.seek(0x100000)
            return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
    except OSError:
        return None


def load_checkpoint_state_dict(path: Path) -> dict:
    """Tensors of a .safetensors or (pickle-safe) .ckpt file; never runs pickled code."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types per version
            raise InstantLoraError(f"{path} is not a readable .safetensors file ({e}).",
                                   hint="re-download the checkpoint; the file may be truncated", path=path) from e
    import torch

    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise InstantLoraError(
            f"{path.name} cannot be loaded safely: it contains pickled Python objects, not just tensors ({type(e).__name__}).",
            hint="use the .safetensors version of this model (most model pages offer one)", path=path) from e
    while isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return sd


def _check_sd1_layout(sd: dict, path: Path) -> None:
    if any(k.startswith("conditioner.embedders") for k in sd):
        raise InstantLoraError(f"{path.name} is an SDXL checkpoint; Instant LoRA trains SD1.x LoRAs.",
                               hint="pick an SD1.5-based checkpoint (e.g. v1-5-pruned-emaonly.safetensors)", path=path)
    if not any(k.startswith("model.diffusion_model.") for k in sd):
        raise InstantLoraError(f"{path.name} is not a Stable Diffusion checkpoint (no model.diffusion_model.* weights).",
                               hint="pass a full SD1.x checkpoint, not a LoRA, VAE or embedding", path=path)
    k = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    if k in sd and sd[k].shape[-1] != 768:
        raise InstantLoraError(f"{path.name} looks like SD2.x (cross-attention width {sd[k].shape[-1]}, SD1.x has 768).",
                               hint="pick an SD1.x-based checkpoint", path=path)
    if not any(k.startswith(_TE_PREFIX) for k in sd):
        raise InstantLoraError(f"{path.name} has no CLIP text encoder weights (cond_stage_model.transformer.*).",
                               hint="pass a full SD1.x checkpoint that includes its text encoder", path=path)


def text_encoder_from_state_dict(sd: dict, config_dir: Path, path: Path):
    """Fill a CLIPTextModel from the checkpoint, whatever `text_model.` layout either side uses."""
    from transformers import CLIPTextConfig, CLIPTextModel

    te = CLIPTextModel(CLIPTextConfig.from_pretrained(str(config_dir / "text_encoder")))
    wanted = te.state_dict()
    model_has_prefix = next(iter(wanted)).startswith("text_model.")
    te_sd = {}
    for k, v in sd.items():
        if not k.startswith(_TE_PREFIX):
            continue
        k = k[len(_TE_PREFIX):]
        if k.startswith("text_model.") and not model_has_prefix:
            k = k[len("text_model."):]
        elif not k.startswith("text_model.") and model_has_prefix:
            k = "text_model." + k
        te_sd[k] = v
    missing = [k for k in wanted if k not in te_sd and not k.endswith("position_ids")]
    if missing:
        raise InstantLoraError(f"{path.name}: the text encoder is incomplete ({len(missing)} tensors missing, e.g. {missing[0]}).",
                               hint="the checkpoint is damaged or not SD1.x; try another file", path=path)
    te_sd = {k: v for k, v in te_sd.items() if k in wanted}
    te.load_state_dict({**{k: v for k, v in wanted.items() if k.endswith("position_ids")}, **te_sd}, strict=True)
    return te


def load_single_file(path: Path, config_dir: Path | None = None) -> SDModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    custom = config_dir is not None
    config_dir = Path(config_dir) if custom else BUNDLED_SD15_CONFIG
    sd = load_checkpoint_state_dict(path)
    if not custom:
        _check_sd1_layout(sd, path)
    # The state dict goes in directly, with our local config: no hub lookup for either.
    kw = dict(config=str(config_dir), local_files_only=True)
    unet = UNet2DConditionModel.from_single_file(sd, subfolder="unet", **kw)
    vae = AutoencoderKL.from_single_file(sd, subfolder="vae", **kw)
    text_encoder = text_encoder_from_state_dict(sd, config_dir, path)
    del sd
    from .tokenizer import load_sd_tokenizer

    return SDModel(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=load_sd_tokenizer(),
                   noise_scheduler=training_noise_scheduler(), source=str(path), name=path.name,
                   legacy_hash=legacy_model_hash(path))


def load_diffusers_folder(folder: Path | str, *, local_files_only: bool = True, name: str | None = None) -> SDModel:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    kw = dict(local_files_only=local_files_only)
    unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae", **kw)
    text_encoder = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder", **kw)
    # The folder's own tokenizer when present; SD1.x's otherwise (identical ids).
    tok_dir = Path(str(folder)) / "tokenizer"
    if tok_dir.is_dir():
        from transformers import CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    else:
        from .tokenizer import load_sd_tokenizer

        tokenizer = load_sd_tokenizer()
    prediction_type = "epsilon"
    sched_cfg = Path(str(folder)) / "scheduler" / "scheduler_config.json"
    if sched_cfg.is_file():
        import json

        prediction_type = json.loads(sched_cfg.read_text()).get("prediction_type", "epsilon")
    if prediction_type != "epsilon":
        raise InstantLoraError(f"{folder}: prediction_type '{prediction_type}' is an SD2-style v-prediction model.",
                               hint="Instant LoRA trains SD1.x (epsilon) models")
    return SDModel(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                   noise_scheduler=training_noise_scheduler(prediction_type), source=str(folder),
                   name=name or Path(str(folder)).name)


def _looks_like_path(s: str) -> bool:
    # A hub id is "org/name": one slash, no suffix, not anchored like a path.
    return (s.startswith((".", "/", "~")) or "\\" in s or s.count("/") != 1
            or s.lower().endswith(SINGLE_FILE_SUFFIXES))


def load_sd_model(source: str | Path, *, config_dir: Path | str | None = None) -> SDModel:
    """The base model from a checkpoint file, a diffusers folder, or (online) a hub id like 'org/name'."""
    from .heavy_imports import import_sd_libraries

    import_sd_libraries()
    s = str(source)
    path = Path(s).expanduser()
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise InstantLoraError(f"{path} is not a model file (expected .safetensors or .ckpt).", path=path)
        return load_single_file(path, Path(config_dir) if config_dir else None)
    if path.is_dir():
        if not (path / "unet").is_dir():
            raise InstantLoraError(f"{path} is a folder but not a diffusers model (no unet/ subfolder).",
                                   hint="pass the .safetensors checkpoint file, or a folder with model_index.json, unet/, vae/, text_encoder/",
                                   path=path)
        return load_diffusers_folder(path)
    if _looks_like_path(s):
        raise InstantLoraError(f"Base model not found: {s}",
                               hint="pass the path of an SD1.x .safetensors checkpoint (e.g. models/Stable-diffusion/v1-5-pruned-emaonly.safetensors)")
    return _load_hub_id(s)


def _load_hub_id(repo_id: str) -> SDModel:
    try:
        return load_diffusers_folder(repo_id, local_files_only=True, name=repo_id)
    except InstantLoraError:
        raise
    except Exception:
        pass  # not in the local HF cache: try the network below
    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")
    hint = "pass a local file instead: --pretrained_model_name_or_path=path/to/model.safetensors"
    if offline:
        raise InstantLoraError(f"'{repo_id}' is a hub id, it is not in the local cache, and HF_HUB_OFFLINE is set.", hint=hint)
    try:
        return load_diffusers_folder(repo_id, local_files_only=False, name=repo_id)
    except Exception as e:
        raise InstantLoraError(f"Could not download '{repo_id}' from the Hugging Face hub ({type(e).__name__}: {str(e)[:200]}).",
                               hint=hint) from e
