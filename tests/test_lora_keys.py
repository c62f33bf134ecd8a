"""Key names: derived from real modules, identical under transformers 4.30 and 5.x, and matched
by the WebUI's name mapping (a miss there loads silently with no effect)."""

import re
from pathlib import Path

import pytest
import torch

from instant_lora.lora.kohya_file import kohya_name
from instant_lora.lora.targets import text_encoder_targets, unet_targets
from instant_lora.models import BUNDLED_SD15_CONFIG

GOLDEN = Path(__file__).parent / "data" / "sd15_lora_keys.txt"


@pytest.fixture(scope="module")
def sd15_skeleton():
    """SD1.5's real UNet and text encoder, built from the bundled configs without allocating weights."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(BUNDLED_SD15_CONFIG / "unet")))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(str(BUNDLED_SD15_CONFIG / "text_encoder")))
    return unet, te


def sd15_names(unet, te, preset="default"):
    return ([kohya_name("lora_unet", n) for n in unet_targets(unet, preset)]
            + [kohya_name("lora_te", n) for n in text_encoder_targets(te, preset)])


def test_sd15_module_counts_match_the_reference(sd15_skeleton):
    unet, te = sd15_skeleton
    assert len(unet_targets(unet)) == 192 and len(text_encoder_targets(te)) == 72
    assert len(unet_targets(unet, "attn-only")) == 128 and len(text_encoder_targets(te, "attn-only")) == 48


def test_key_names_equal_the_golden_list(sd15_skeleton):
    """The committed list was written once; every environment (transformers 4.30 and 5.x) must
    produce exactly it, so a file trained in one loads in the other."""
    names = sorted(sd15_names(*sd15_skeleton))
    assert names == GOLDEN.read_text().split()
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in names
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj" in names
    assert "lora_unet_mid_block_attentions_0_proj_out" in names


def webui_module_name(key: str) -> str:
    """The WebUI's documented mapping of kohya names to its own (CompVis) layer names."""
    m = re.match(r"lora_unet_down_blocks_(\d+)_attentions_(\d+)_(.+)", key)
    if m:
        return f"diffusion_model_input_blocks_{1 + 3 * int(m[1]) + int(m[2])}_1_{m[3]}"
    m = re.match(r"lora_unet_up_blocks_(\d+)_attentions_(\d+)_(.+)", key)
    if m:
        return f"diffusion_model_output_blocks_{3 * int(m[1]) + int(m[2])}_1_{m[3]}"
    m = re.match(r"lora_unet_mid_block_attentions_0_(.+)", key)
    if m:
        return f"diffusion_model_middle_block_1_{m[1]}"
    m = re.match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)", key)
    if m:
        return f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"
    return "unmapped:" + key


def test_every_key_maps_to_a_layer_of_the_original_checkpoint(sd15_skeleton):
    """Map each name the way the WebUI does and look it up among the layers of an SD1.5 checkpoint
    in its original layout: zero misses."""
    from ldm_layout import text_encoder_to_ldm, unet_to_ldm

    unet, te = sd15_skeleton
    layers = {k.rsplit(".", 1)[0].replace(".", "_") for k in unet_to_ldm(unet)}
    layers = {k[len("model_"):] for k in layers} | {
        k.rsplit(".", 1)[0].replace(".", "_")[len("cond_stage_model_"):] for k in text_encoder_to_ldm(te)}
    misses = [k for k in sd15_names(unet, te) if webui_module_name(k) not in layers]
    assert not misses, misses[:5]


def test_tiny_model_keys_match_real_modules():
    from instant_lora.lora.kohya_file import extract_state_dict
    from instant_lora.sample.apply import merge_lora
    from instant_lora.lora.layers import inject_lora
    from instant_lora.tiny import build_tiny_sd

    m = build_tiny_sd(0)
    inject_lora(m.unet, unet_targets(m.unet), 4, 4.0)
    inject_lora(m.text_encoder, text_encoder_targets(m.text_encoder), 4, 4.0)
    sd = extract_state_dict(m.unet, m.text_encoder)
    assert len(sd) == 3 * (48 + 12)
    fresh = build_tiny_sd(0)
    merge_lora(sd, fresh.unet, fresh.text_encoder)  # raises on any unmatched key
    sd["lora_unet_no_such_module.alpha"] = torch.tensor(1.0)
    sd["lora_unet_no_such_module.lora_down.weight"] = torch.zeros(4, 4)
    sd["lora_unet_no_such_module.lora_up.weight"] = torch.zeros(4, 4)
    from instant_lora.errors import InstantLoraError

    with pytest.raises(InstantLoraError, match="match nothing in this model"):
        merge_lora(sd, build_tiny_sd(0).unet, fresh.text_encoder)
