"""Load an SD1.x, SD2.x or SDXL base model: a single-file checkpoint, a diffusers folder, or a hub id.

Single files load with no network at all: each family's diffusers configs ship beside this file
(`sd15_config/`, `sd21_config/`, `sdxl_config/`), the tokenizers are built from open_clip's BPE
file, and the text encoders are filled from the checkpoint by us with a strict key check (a
CLIPTextModel that loads with missing keys has random weights; `openclip_convert`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InstantLoraError, UnsupportedModel
from .model_family import SD1, ModelFamily

BUNDLED_SD15_CONFIG = Path(__file__).with_name("sd15_config")
BUNDLED_SD21_CONFIG = Path(__file__).with_name("sd21_config")  # 768-v; 2.x-base differs only in sample size
BUNDLED_SDXL_CONFIG = Path(__file__).with_name("sdxl_config")
BUNDLED_CONFIGS = {"sd1": BUNDLED_SD15_CONFIG, "sd2": BUNDLED_SD21_CONFIG, "sdxl": BUNDLED_SDXL_CONFIG}
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


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
    family: ModelFamily = SD1
    text_encoder_2: Any = None  # SDXL: OpenCLIP bigG (CLIPTextModelWithProjection)
    tokenizer_2: Any = None  # SDXL: the same BPE, padded with id 0

    @property
    def prediction_type(self) -> str:
        return self.noise_scheduler.config.prediction_type

    @property
    def text_encoders(self) -> list:
        return [self.text_encoder] + ([self.text_encoder_2] if self.text_encoder_2 is not None else [])

    @property
    def tokenizers(self) -> list:
        return [self.tokenizer] + ([self.tokenizer_2] if self.text_encoder_2 is not None else [])


def training_noise_scheduler(prediction_type: str = "epsilon"):
    """DDPM with SD's training betas (SD1.x, SD2.x and SDXL share them), as the reference trainer
    and diffusers' examples; prediction_type "epsilon" or "v_prediction"."""
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


# Where each family keeps its text encoder(s) in a single file, and in which layout.
_TE_PREFIX = "cond_stage_model.transformer."  # SD1: CLIP ViT-L, transformers' layout
_SD2_TE_PREFIX = "cond_stage_model.model."  # SD2: OpenCLIP ViT-H, open_clip's layout
_SDXL_TE1_PREFIX = "conditioner.embedders.0.transformer."  # SDXL: CLIP ViT-L, transformers' layout
_SDXL_TE2_PREFIX = "conditioner.embedders.1.model."  # SDXL: OpenCLIP bigG, open_clip's layout
_TE_PREFIXES = {"sd1": (_TE_PREFIX,), "sd2": (_SD2_TE_PREFIX,), "sdxl": (_SDXL_TE1_PREFIX, _SDXL_TE2_PREFIX)}


def bundled_config_dir(family: ModelFamily) -> Path:
    """The diffusers configs shipped for a family: SD1.5, SD2.1 (768-v) or SDXL base 1.0."""
    return BUNDLED_CONFIGS[family.name]


def family_of_state_dict(sd: dict, path: Path) -> ModelFamily:
    """family_of_shapes on loaded tensors; SD2's v-prediction statistic read from the loaded probe."""
    from .model_family import V_STAT_KEY, family_of_shapes, yaml_beside

    shapes = {k: list(v.shape) for k, v in sd.items() if hasattr(v, "shape")}
    probe = sd.get(V_STAT_KEY)
    try:
        return family_of_shapes(shapes, yaml_text=yaml_beside(path),
                                v_stat=lambda: float(probe.float().std(unbiased=False)) if probe is not None else None)
    except InstantLoraError as e:
        raise type(e)(f"{path.name}: {e.message}", hint=e.hint, path=path) from None


def _check_layout(sd: dict, path: Path, family: ModelFamily) -> None:
    if not any(k.startswith("model.diffusion_model.") for k in sd):
        raise InstantLoraError(f"{path.name} is not a Stable Diffusion checkpoint (no model.diffusion_model.* weights).",
                               hint="pass a full SD1.x, SD2.x or SDXL checkpoint, not a LoRA, VAE or embedding", path=path)
    for prefix in _TE_PREFIXES[family.name]:
        if not any(k.startswith(prefix) for k in sd):
            raise InstantLoraError(f"{path.name} is {family.label} but has no text encoder weights ({prefix}*).",
                                   hint=f"pass a full {family.label} checkpoint that includes its text encoder(s)", path=path)


def _prediction_in(config_dir: Path) -> str | None:
    """The prediction type a config folder's scheduler names, if it has one."""
    import json

    try:
        return json.loads((config_dir / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8")).get("prediction_type")
    except (OSError, ValueError):
        return None


def text_encoder_from_state_dict(sd: dict, config_dir: Path, path: Path, prefix: str = _TE_PREFIX,
                                 what: str = "the text encoder"):
    """A CLIPTextModel filled from a checkpoint in transformers' layout (SD1, SDXL's first encoder),
    whatever `text_model.` layout either side uses."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from .openclip_convert import fill_text_encoder, hf_clip_tensors

    te = CLIPTextModel(CLIPTextConfig.from_pretrained(str(config_dir / "text_encoder")))
    return fill_text_encoder(te, hf_clip_tensors(sd, prefix), path, what)


def openclip_text_encoder_from_state_dict(sd: dict, config_dir: Path, path: Path, prefix: str, subfolder: str,
                                          with_projection: bool):
    """A CLIPTextModel (SD2) or CLIPTextModelWithProjection (SDXL's second) from open_clip's layout;
    blocks past the config's num_hidden_layers are dropped (SD2 keeps 23 of ViT-H's 24)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from .openclip_convert import fill_text_encoder, openclip_tensors

    config = CLIPTextConfig.from_pretrained(str(config_dir / subfolder))
    te = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
    what = "the text encoder (OpenCLIP ViT-H)" if subfolder == "text_encoder" else "the second text encoder (OpenCLIP bigG)"
    return fill_text_encoder(te, openclip_tensors(sd, prefix, config.num_hidden_layers), path, what)


def _text_encoders(sd: dict, family: ModelFamily, config_dir: Path, path: Path) -> dict:
    """The family's text encoder(s) and tokenizer(s), as SDModel fields."""
    from .tokenizer import OPENCLIP_PAD, load_sd_tokenizer

    if family.name == "sd1":
        return {"text_encoder": text_encoder_from_state_dict(sd, config_dir, path), "tokenizer": load_sd_tokenizer()}
    if family.name == "sd2":
        te = openclip_text_encoder_from_state_dict(sd, config_dir, path, _SD2_TE_PREFIX, "text_encoder", False)
        return {"text_encoder": te, "tokenizer": load_sd_tokenizer(OPENCLIP_PAD)}
    te1 = text_encoder_from_state_dict(sd, config_dir, path, _SDXL_TE1_PREFIX, "the first text encoder (CLIP ViT-L)")
    te2 = openclip_text_encoder_from_state_dict(sd, config_dir, path, _SDXL_TE2_PREFIX, "text_encoder_2", True)
    return {"text_encoder": te1, "tokenizer": load_sd_tokenizer(),
            "text_encoder_2": te2, "tokenizer_2": load_sd_tokenizer(OPENCLIP_PAD)}


_PART_NAMES = {"unet": "UNet", "vae": "VAE"}


def _from_single_file(cls, sd: dict, config_dir: Path, subfolder: str, path: Path, family: ModelFamily):
    """diffusers' converter with our local config (no hub lookup); a tensor it did not find is an error,
    not a parameter left empty."""
    try:
        model = cls.from_single_file(sd, config=str(config_dir), subfolder=subfolder, local_files_only=True)
    except InstantLoraError:
        raise
    except Exception as e:  # a shape mismatch or a missing component, worded per diffusers version
        if "meta tensor" in str(e):  # diffusers >= 0.3x: a tensor never loaded stays on the meta device
            raise InstantLoraError(f"{path.name}: its {_PART_NAMES[subfolder]} is incomplete (tensors missing).",
                                   hint="the checkpoint is damaged; try another file", path=path) from e
        raise InstantLoraError(f"{path.name}: its {_PART_NAMES[subfolder]} does not load as {family.label} "
                               f"({type(e).__name__}: {str(e)[:300]}).",
                               hint="the checkpoint is damaged or shaped unlike its family's base model; "
                                    "pass model_config_dir for an unusual model", path=path) from e
    empty = [n for n, p in model.named_parameters() if p.device.type == "meta"]
    if empty:
        raise InstantLoraError(f"{path.name}: its {_PART_NAMES[subfolder]} is incomplete "
                               f"({len(empty)} tensors missing, e.g. {empty[0]}).",
                               hint="the checkpoint is damaged; try another file", path=path)
    return model


def load_single_file(path: Path, config_dir: Path | None = None) -> SDModel:
    """An SD1.x, SD2.x or SDXL single-file checkpoint, offline: the family's bundled configs unless
    `config_dir` (a diffusers config folder) is given; then its scheduler also names the prediction type."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .model_family import ModelFamily

    sd = load_checkpoint_state_dict(path)
    family = family_of_state_dict(sd, path)
    _check_layout(sd, path, family)
    if config_dir is not None:
        config_dir = Path(config_dir)
        predicted = _prediction_in(config_dir)
        if predicted in ("epsilon", "v_prediction") and predicted != family.scheduler_prediction:
            family = ModelFamily(family.name, "v" if predicted == "v_prediction" else "epsilon",
                                 f"{family.why}; the config folder's scheduler says {predicted}")
    else:
        config_dir = bundled_config_dir(family)
    unet = _from_single_file(UNet2DConditionModel, sd, config_dir, "unet", path, family)
    vae = _from_single_file(AutoencoderKL, sd, config_dir, "vae", path, family)
    encoders = _text_encoders(sd, family, config_dir, path)
    del sd
    return SDModel(unet=unet, vae=vae, **encoders, noise_scheduler=training_noise_scheduler(family.scheduler_prediction),
                   source=str(path), name=path.name, legacy_hash=legacy_model_hash(path), family=family)


def _folder_tokenizer(folder: Path | str, subfolder: str, pad_token: str):
    """The folder's own tokenizer when present; ours otherwise (the same ids; pad as the family)."""
    tok_dir = Path(str(folder)) / subfolder
    if tok_dir.is_dir():
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(str(tok_dir))
    from .tokenizer import load_sd_tokenizer

    return load_sd_tokenizer(pad_token)


def _folder_prediction(folder: Path | str, local_files_only: bool) -> str:
    from diffusers import DDPMScheduler

    try:
        config = DDPMScheduler.load_config(str(folder), subfolder="scheduler", local_files_only=local_files_only)
    except (OSError, ValueError):  # no scheduler: SD's default
        return "epsilon"
    return config.get("prediction_type") or "epsilon"


def load_diffusers_folder(folder: Path | str, *, local_files_only: bool = True, name: str | None = None) -> SDModel:
    """A diffusers folder (or hub id) of SD1.x, SD2.x or SDXL; epsilon or v-prediction."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from .model_family import detect_family, family_of_model
    from .tokenizer import OPENCLIP_PAD

    local = Path(str(folder))
    family = None
    if local.is_dir():  # read from its configs first, as the request path does: a refusal costs no loading
        try:
            family = detect_family(local)
        except UnsupportedModel:
            raise
        except InstantLoraError:
            pass  # configs it cannot tell apart: the loaded parts decide below
    kw = dict(local_files_only=local_files_only)
    unet = UNet2DConditionModel.from_pretrained(str(folder), subfolder="unet", **kw)
    vae = AutoencoderKL.from_pretrained(str(folder), subfolder="vae", **kw)
    text_encoder = CLIPTextModel.from_pretrained(str(folder), subfolder="text_encoder", **kw)
    text_encoder_2 = tokenizer_2 = None
    if getattr(unet.config, "addition_embed_type", None) == "text_time":  # SDXL: a second, projected encoder
        text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(str(folder), subfolder="text_encoder_2", **kw)
        tokenizer_2 = _folder_tokenizer(folder, "tokenizer_2", OPENCLIP_PAD)
    if family is None:
        family = family_of_model(unet, text_encoder_2, _folder_prediction(folder, local_files_only))
    tokenizer = _folder_tokenizer(folder, "tokenizer", OPENCLIP_PAD if family.name == "sd2" else "<|endoftext|>")
    return SDModel(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                   noise_scheduler=training_noise_scheduler(family.scheduler_prediction), source=str(folder),
                   name=name or Path(str(folder)).name, family=family,
                   text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)


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
                               hint="pass the path of an SD1.x, SD2.x or SDXL .safetensors checkpoint (e.g. models/Stable-diffusion/v1-5-pruned-emaonly.safetensors)")
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
