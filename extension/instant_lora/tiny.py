"""Tiny random SD1.x-, SD2.x- and SDXL-shaped models, built in a second: for `selftest`, the tests
and benchmarks.

Same topology as the real families where it matters, only narrow. SD1: cross-attention down blocks
first, up blocks last, a 4-level VAE with 8x downsampling, the real CLIP tokenizer and vocabulary.
SD2: linear projections, an OpenCLIP-style (gelu) text encoder, the tokenizer padded with id 0,
optionally v-prediction. SDXL: SDXL's block layout (a first level without attention, two resnets
per level, more transformer layers deeper down), two text encoders whose penultimate layers are
concatenated, and the size/crop conditioning (text_time) fed with the second encoder's pooled output.
"""

from __future__ import annotations

import json
from pathlib import Path

from .models import SDModel, training_noise_scheduler

TINY_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=4, norm_num_groups=32,
)
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(32, 32, 32, 32),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    norm_num_groups=32, sample_size=64,
)
TINY_TEXT = dict(
    vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32,
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)

TINY_SD2_UNET = dict(TINY_UNET, use_linear_projection=True, attention_head_dim=(2, 4))
TINY_SD2_TEXT = dict(TINY_TEXT, hidden_act="gelu")
TINY_SDXL_UNET = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
    addition_embed_type="text_time", addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=6 * 8 + 32,  # 6 size numbers x 8 + the pooled text (32)
    cross_attention_dim=64, norm_num_groups=32,  # 32 (CLIP-L-like) + 32 (bigG-like) features
)
TINY_SDXL_TEXT = dict(TINY_TEXT, num_hidden_layers=3)
TINY_SDXL_TEXT_2 = dict(TINY_TEXT, num_hidden_layers=3, hidden_act="gelu")

# Larger SD-shaped model for CPU speed benchmarks (still far smaller than SD1.5's 860M UNet).
MID_UNET = dict(TINY_UNET, block_out_channels=(128, 256, 256), layers_per_block=2, cross_attention_dim=256,
                attention_head_dim=8, sample_size=32,
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
MID_VAE = dict(TINY_VAE, block_out_channels=(64, 128, 256, 256), layers_per_block=2)
MID_TEXT = dict(TINY_TEXT, hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8, projection_dim=256)


def build_tiny_sd(seed: int = 0, unet: dict | None = None, text: dict | None = None, vae: dict | None = None) -> SDModel:
    from .heavy_imports import import_sd_libraries

    import_sd_libraries()
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tokenizer import load_sd_tokenizer

    torch.manual_seed(seed)
    return SDModel(
        unet=UNet2DConditionModel(**(unet or TINY_UNET)),
        vae=AutoencoderKL(**(vae or TINY_VAE)),
        text_encoder=CLIPTextModel(CLIPTextConfig(**(text or TINY_TEXT))),
        tokenizer=load_sd_tokenizer(),
        noise_scheduler=training_noise_scheduler(),
        source="tiny",
        name="tiny-sd",
    )


def build_tiny_sd2(seed: int = 0, prediction: str = "v") -> SDModel:
    """SD2.x-shaped: v-prediction (768-v) unless prediction="epsilon" (512-base)."""
    from .model_family import ModelFamily
    from .tokenizer import OPENCLIP_PAD, load_sd_tokenizer

    model = build_tiny_sd(seed, unet=TINY_SD2_UNET, text=TINY_SD2_TEXT)
    model.tokenizer = load_sd_tokenizer(pad_token=OPENCLIP_PAD)
    model.noise_scheduler = training_noise_scheduler("v_prediction" if prediction == "v" else "epsilon")
    model.family = ModelFamily("sd2", prediction, "tiny test model")
    model.name = "tiny-sd2"
    return model


def build_tiny_sdxl(seed: int = 0, unet: dict | None = None, text: dict | None = None, text_2: dict | None = None,
                    vae: dict | None = None) -> SDModel:
    from .heavy_imports import import_sd_libraries

    import_sd_libraries()
    import torch
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from .model_family import ModelFamily
    from .tokenizer import OPENCLIP_PAD, load_sd_tokenizer

    model = build_tiny_sd(seed, unet=unet or TINY_SDXL_UNET, text=text or TINY_SDXL_TEXT, vae=vae)
    torch.manual_seed(seed + 1)
    model.text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**(text_2 or TINY_SDXL_TEXT_2)))
    model.tokenizer_2 = load_sd_tokenizer(pad_token=OPENCLIP_PAD)
    model.family = ModelFamily("sdxl", "epsilon", "tiny test model")
    model.name = "tiny-sdxl"
    return model


def save_diffusers_folder(model: SDModel, folder: Path | str) -> Path:
    """Write the model as a diffusers folder (no tokenizer: the loader builds SD's own)."""
    folder = Path(folder)
    model.unet.save_pretrained(str(folder / "unet"))
    model.vae.save_pretrained(str(folder / "vae"))
    model.text_encoder.save_pretrained(str(folder / "text_encoder"))
    model.noise_scheduler.save_pretrained(str(folder / "scheduler"))
    index = {
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    if model.text_encoder_2 is not None:
        model.text_encoder_2.save_pretrained(str(folder / "text_encoder_2"))
        index.update(_class_name="StableDiffusionXLPipeline", text_encoder_2=["transformers", "CLIPTextModelWithProjection"])
    (folder / "model_index.json").write_text(json.dumps(index, indent=1))
    return folder


def save_tiny_model(folder: Path | str, seed: int = 0) -> Path:
    return save_diffusers_folder(build_tiny_sd(seed), folder)
