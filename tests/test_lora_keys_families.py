"""SDXL and SD2.x key names: exactly the reference trainer's, identical under transformers 4.30
and 5.x, and matched, every one, by the loaders' own naming rules (a miss there loads silently
with no effect).

The reference trainer writes SDXL's UNet under the original (SGM) block names
(`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`) and its two text encoders as
`lora_te1_` (CLIP-L) and `lora_te2_` (OpenCLIP bigG) with HF-CLIP paths; SD2 like SD1
(`lora_unet_down_blocks_...`, `lora_te_text_model_...`, 23 text-encoder layers).

The loaders' rules are restated here as facts (not their code):
- WebUI (A1111 1.10, extensions-builtin/Lora/networks.py): `convert_diffusers_name_to_compvis`, the
  `[qkv]_proj` -> MultiheadAttention fallback, the `lora_unet` -> `diffusion_model` and
  `lora_te1_text_model` -> `0_transformer_text_model` fallbacks; layer names are the loaded
  original-layout model's module paths with `.` -> `_`.
- ComfyUI / Forge (comfy/lora.py `model_lora_keys_unet` / `model_lora_keys_clip`, comfy/utils.py
  `unet_to_diffusers`).
- diffusers 0.30.3 (`_maybe_map_sgm_blocks_to_diffusers`, `_convert_non_diffusers_lora_to_diffusers`,
  then the peft renaming); the installed diffusers is also run on the names as a cross-check.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import instant_lora
from instant_lora.lora.kohya_file import kohya_names
from instant_lora.lora.targets import text_encoder_targets, unet_targets

PACKAGE = Path(instant_lora.__file__).parent
SDXL_CONFIG = PACKAGE / "sdxl_config"
SD2_CONFIG = PACKAGE / "sd21_config"
DATA = Path(__file__).parent / "data"
GOLDEN = {"sdxl": DATA / "sdxl_lora_keys.txt", "sd2": DATA / "sd2_lora_keys.txt"}

# The original (SGM / LDM) UNets, from Stability's model configs (sd_xl_base.yaml,
# v2-inference-v.yaml): res blocks per level, transformer depth per level (0 = no attention,
# SDXL's first level), depth of the middle block's transformer.
SGM_UNET = {
    "sdxl": {"num_res_blocks": 2, "transformer_depth": (0, 2, 10), "transformer_depth_middle": 10},
    "sd2": {"num_res_blocks": 2, "transformer_depth": (1, 1, 1, 0), "transformer_depth_middle": 1},
}
# Module names inside a SpatialTransformer (the same in both layouts).
SGM_ATTENTION_LAYERS = ("norm", "proj_in", "proj_out")
SGM_TRANSFORMER_LAYERS = ("norm1", "norm2", "norm3", "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                          "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ff.net.0.proj", "ff.net.2")
# An HF-CLIP encoder layer's weights -> the OpenCLIP resblock's (SDXL's bigG, SD2's ViT-H in
# their original checkpoints): q/k/v are one packed MultiheadAttention `in_proj_weight`.
HF_TO_OPENCLIP = {"self_attn.q_proj.weight": "attn.in_proj_weight", "self_attn.k_proj.weight": "attn.in_proj_weight",
                  "self_attn.v_proj.weight": "attn.in_proj_weight", "self_attn.out_proj.weight": "attn.out_proj.weight",
                  "mlp.fc1.weight": "mlp.c_fc.weight", "mlp.fc2.weight": "mlp.c_proj.weight",
                  "layer_norm1.weight": "ln_1.weight", "layer_norm2.weight": "ln_2.weight"}


# ---- full-size skeletons and their names -------------------------------------------------------

def _need(folder: Path) -> Path:
    if not (folder / "unet" / "config.json").is_file():
        pytest.skip(f"bundled model configs not found: {folder.name}/ is missing from the package")
    return folder


def build_skeleton(family: str, folder: Path | None = None):
    """(UNet, [text encoders]) of the real model, from the bundled configs, no weights allocated."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = folder or _need(SDXL_CONFIG if family == "sdxl" else SD2_CONFIG)
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(folder / "unet")))
        encoders = [CLIPTextModel(CLIPTextConfig.from_pretrained(str(folder / "text_encoder")))]
        if family == "sdxl":
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(str(folder / "text_encoder_2"))))
    return unet, encoders


def family_names(unet, encoders, preset: str = "default") -> dict:
    """{kohya name: (model, module path)} through the writer's own naming (`kohya_names`) over the
    preset's targets; model is "unet", "te0" (SDXL: CLIP-L) or "te1" (SDXL: bigG)."""
    def items(net):
        tag = "unet" if net is unet else f"te{next(i for i, e in enumerate(encoders) if e is net)}"
        paths = unet_targets(net, preset) if net is unet else text_encoder_targets(net, preset)
        return [(p, (tag, p)) for p in paths]

    return kohya_names(unet, encoders, items)


def hf_path(path: str) -> str:
    """A CLIP module path as transformers 4.x names it (5.x may drop the `text_model.` root)."""
    return path if path.startswith("text_model.") else "text_model." + path


@pytest.fixture(scope="module")
def sdxl():
    return build_skeleton("sdxl")


@pytest.fixture(scope="module")
def sd2():
    return build_skeleton("sd2")


# ---- the original checkpoint's layers (derived, no weights) -----------------------------------

def sgm_attention_blocks(family: str) -> dict:
    """{SGM transformer block: (diffusers block, depth)}, counted from the SGM side as ComfyUI's
    unet_to_diffusers does: input block n = 1 + level * (res + 1) + j; output blocks take the
    levels in reverse, n = level * (res + 1) + j (one more resnet per up level); middle_block.1."""
    cfg = SGM_UNET[family]
    res, depths = cfg["num_res_blocks"], cfg["transformer_depth"]
    blocks = {}
    for level, depth in enumerate(depths):
        for j in range(res):
            if depth:
                blocks[f"input_blocks.{1 + level * (res + 1) + j}.1"] = (f"down_blocks.{level}.attentions.{j}", depth)
    blocks["middle_block.1"] = ("mid_block.attentions.0", cfg["transformer_depth_middle"])
    for level, depth in enumerate(reversed(depths)):
        for j in range(res + 1):
            if depth:
                blocks[f"output_blocks.{level * (res + 1) + j}.1"] = (f"up_blocks.{level}.attentions.{j}", depth)
    return blocks


def sgm_unet_layers(family: str) -> dict:
    """{SGM UNet layer inside a transformer: the diffusers module it is}."""
    out = {}
    for block, (diffusers_block, depth) in sgm_attention_blocks(family).items():
        for name in SGM_ATTENTION_LAYERS:
            out[f"{block}.{name}"] = f"{diffusers_block}.{name}"
        for t in range(depth):
            for name in SGM_TRANSFORMER_LAYERS:
                out[f"{block}.transformer_blocks.{t}.{name}"] = f"{diffusers_block}.transformer_blocks.{t}.{name}"
    return out


def openclip_keys(te, prefix: str) -> set:
    keys = set()
    for k in te.state_dict():
        m = re.match(r"(?:text_model\.)?encoder\.layers\.(\d+)\.(.+)$", k)
        if m and m[2] in HF_TO_OPENCLIP:
            keys.add(f"{prefix}transformer.resblocks.{m[1]}.{HF_TO_OPENCLIP[m[2]]}")
    return keys


def original_checkpoint_keys(family: str, encoders) -> set:
    """The weight names of the family's original-layout single-file checkpoint that LoRA can
    touch: the UNet's transformers; SDXL `conditioner.embedders.0.transformer.text_model.*`
    (CLIP-L) and `conditioner.embedders.1.model.transformer.resblocks.N.*` (OpenCLIP bigG); SD2
    `cond_stage_model.model.transformer.resblocks.N.*` (OpenCLIP ViT-H)."""
    keys = {f"model.diffusion_model.{layer}.weight" for layer in sgm_unet_layers(family)}
    if family == "sdxl":
        keys |= {"conditioner.embedders.0.transformer." + hf_path(k) for k in encoders[0].state_dict()}
        keys |= openclip_keys(encoders[1], "conditioner.embedders.1.model.")
    else:
        keys |= openclip_keys(encoders[0], "cond_stage_model.model.")
    return keys


# ---- the WebUI (A1111 1.10) --------------------------------------------------------------------

def webui_layer_names(checkpoint_keys) -> set:
    """The WebUI's layer names: every module path of the loaded model (containers too, as
    named_modules lists them), `.` -> `_`; the UNet from sd_model.model (`diffusion_model_...`),
    SDXL's embedder i as `{i}_...`, SD1/SD2's cond_stage_model by its own paths."""
    names = set()
    for key in checkpoint_keys:
        module = key.rsplit(".", 1)[0]  # attn.in_proj_weight belongs to the module `attn`
        if module.startswith("model."):
            module = module[len("model."):]
        elif m := re.match(r"conditioner\.embedders\.(\d+)\.(.+)$", module):
            module = f"{m[1]}.{m[2]}"
        elif module.startswith("cond_stage_model."):
            module = module[len("cond_stage_model."):]
        parts = module.split(".")
        names.update("_".join(parts[:i]) for i in range(1, len(parts) + 1))
    return names


_RESNET = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0", "norm2": "out_layers_0",
           "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}


def _openclip_suffix(rest: str) -> str:
    if "mlp_fc1" in rest:
        return rest.replace("mlp_fc1", "mlp_c_fc")
    if "mlp_fc2" in rest:
        return rest.replace("mlp_fc2", "mlp_c_proj")
    return rest.replace("self_attn", "attn")


def webui_convert(key: str, is_sd2: bool) -> str:
    """convert_diffusers_name_to_compvis's rules for the keys a LoRA of ours can hold."""
    if m := re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)$", key):
        suffix = _RESNET.get(m[4], m[4]) if m[2] == "resnets" else m[4]
        return f"diffusion_model_input_blocks_{1 + 3 * int(m[1]) + int(m[3])}_{1 if m[2] == 'attentions' else 0}_{suffix}"
    if m := re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)$", key):
        suffix = _RESNET.get(m[3], m[3]) if m[1] == "resnets" else m[3]
        return f"diffusion_model_middle_block_{1 if m[1] == 'attentions' else 2 * int(m[2])}_{suffix}"
    if m := re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)$", key):
        suffix = _RESNET.get(m[4], m[4]) if m[2] == "resnets" else m[4]
        return f"diffusion_model_output_blocks_{3 * int(m[1]) + int(m[3])}_{1 if m[2] == 'attentions' else 0}_{suffix}"
    if m := re.match(r"lora_te_text_model_encoder_layers_(\d+)_(.+)$", key):
        if is_sd2:
            return f"model_transformer_resblocks_{m[1]}_{_openclip_suffix(m[2])}"
        return f"transformer_text_model_encoder_layers_{m[1]}_{m[2]}"
    if m := re.match(r"lora_te2_text_model_encoder_layers_(\d+)_(.+)$", key):
        return f"1_model_transformer_resblocks_{m[1]}_{_openclip_suffix(m[2])}"
    return key


def webui_lookup(key: str, layers: set) -> tuple[str, str] | None:
    """(the name the WebUI files the weights under, the layer they land on), or None (a miss):
    the converted name; else its `_[qkv]_proj`-less stem (a MultiheadAttention); else
    `lora_unet` -> `diffusion_model`; else `lora_te1_text_model` -> `0_transformer_text_model`
    (then `transformer_text_model`)."""
    is_sd2 = "model_transformer_resblocks" in layers
    converted = webui_convert(key, is_sd2)
    if converted in layers:
        return converted, converted
    m = re.match(r"(.*)_([qkv]_proj)$", converted)
    if m and m[1] in layers:
        return converted, m[1]
    if "lora_unet" in key:
        name = key.replace("lora_unet", "diffusion_model")
        return (name, name) if name in layers else None
    if "lora_te1_text_model" in key:
        for root in ("0_transformer_text_model", "transformer_text_model"):
            name = key.replace("lora_te1_text_model", root)
            if name in layers:
                return name, name
    return None


def assert_webui_loads_every_key(family, unet, encoders):
    layers = webui_layer_names(original_checkpoint_keys(family, encoders))
    names = family_names(unet, encoders)
    found = {key: webui_lookup(key, layers) for key in names}
    misses = sorted(k for k, v in found.items() if v is None)
    assert not misses, f"{len(misses)} of {len(names)} keys load nowhere in the WebUI, e.g. {misses[:3]}"
    # A MultiheadAttention (OpenCLIP) is patched only when q, k, v and out_proj are all there.
    packed = {layer for filed, layer in found.values() if filed != layer}
    filed = {f for f, _ in found.values()}
    for layer in packed:
        assert all(f"{layer}_{p}_proj" in filed for p in ("q", "k", "v", "out")), layer
    return found


def test_sdxl_keys_load_in_the_webui(sdxl):
    found = {key: layer for key, (_, layer) in assert_webui_loads_every_key("sdxl", *sdxl).items()}
    unet_key = "input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    assert found["lora_unet_" + unet_key] == "diffusion_model_" + unet_key  # SGM names: the original layers' own
    for key, layer in {
        "lora_te1_text_model_encoder_layers_11_mlp_fc2": "0_transformer_text_model_encoder_layers_11_mlp_fc2",
        "lora_te2_text_model_encoder_layers_31_self_attn_q_proj": "1_model_transformer_resblocks_31_attn",
        "lora_te2_text_model_encoder_layers_31_self_attn_out_proj": "1_model_transformer_resblocks_31_attn_out_proj",
        "lora_te2_text_model_encoder_layers_0_mlp_fc1": "1_model_transformer_resblocks_0_mlp_c_fc",
    }.items():
        assert found[key] == layer
    assert sum(layer.startswith("1_") for layer in found.values()) == 192


def test_sd2_keys_load_in_the_webui(sd2):
    """SD2's text encoder is OpenCLIP in the WebUI (`model_transformer_resblocks_N`, which is
    also how it tells SD2 apart); kohya's `lora_te_text_model_encoder_layers_N_*` is mapped onto it."""
    found = assert_webui_loads_every_key("sd2", *sd2)
    assert found["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"][1] == \
        "diffusion_model_input_blocks_1_1_transformer_blocks_0_attn1_to_q"
    assert found["lora_unet_up_blocks_3_attentions_2_proj_out"][1] == "diffusion_model_output_blocks_11_1_proj_out"
    assert found["lora_unet_mid_block_attentions_0_proj_in"][1] == "diffusion_model_middle_block_1_proj_in"
    assert found["lora_te_text_model_encoder_layers_22_self_attn_v_proj"][1] == "model_transformer_resblocks_22_attn"
    assert found["lora_te_text_model_encoder_layers_22_mlp_fc2"][1] == "model_transformer_resblocks_22_mlp_c_proj"


# ---- ComfyUI and Forge -------------------------------------------------------------------------

COMFY_CLIP_MAP = {"mlp.fc1": "mlp_fc1", "mlp.fc2": "mlp_fc2", "self_attn.k_proj": "self_attn_k_proj",
                  "self_attn.q_proj": "self_attn_q_proj", "self_attn.v_proj": "self_attn_v_proj",
                  "self_attn.out_proj": "self_attn_out_proj"}


def comfy_unet_key_map(family: str) -> dict:
    """model_lora_keys_unet: `lora_unet_` + every original-layout layer, and `lora_unet_` + the
    diffusers name of each (unet_to_diffusers) -> the original layer."""
    key_map = {}
    for sgm, diffusers in sgm_unet_layers(family).items():
        key_map["lora_unet_" + sgm.replace(".", "_")] = sgm
        key_map["lora_unet_" + diffusers.replace(".", "_")] = sgm
    return key_map


def comfy_clip_key_map(clip_keys: set) -> dict:
    """model_lora_keys_clip over the clip model's weights (`clip_l.` / `clip_g.` / `clip_h.` +
    `transformer.text_model.encoder.layers.N.*`): clip_h and clip_l take `lora_te_`/`lora_te1_`;
    clip_g takes `lora_te2_` when a clip_l is present, else `lora_te_`."""
    key_map, clip_l_present = {}, False
    for b in range(32):
        for c, lora in COMFY_CLIP_MAP.items():
            for clip in ("clip_h", "clip_l"):
                k = f"{clip}.transformer.text_model.encoder.layers.{b}.{c}.weight"
                if k in clip_keys:
                    key_map[f"lora_te_text_model_encoder_layers_{b}_{lora}"] = k
                    key_map[f"lora_te1_text_model_encoder_layers_{b}_{lora}"] = k
                    clip_l_present |= clip == "clip_l"
            k = f"clip_g.transformer.text_model.encoder.layers.{b}.{c}.weight"
            if k in clip_keys:
                prefix = "lora_te2" if clip_l_present else "lora_te"
                key_map[f"{prefix}_text_model_encoder_layers_{b}_{lora}"] = k
    return key_map


def assert_comfy_loads_every_key(family, unet, encoders):
    clips = {"sdxl": ("clip_l", "clip_g"), "sd2": ("clip_h",)}[family]
    clip_keys = {f"{clip}.transformer.{hf_path(k)}" for clip, te in zip(clips, encoders) for k in te.state_dict()}
    unet_map, clip_map = comfy_unet_key_map(family), comfy_clip_key_map(clip_keys)
    sgm_to_diffusers = sgm_unet_layers(family)
    names = family_names(unet, encoders)
    misses, wrong = [], []
    for key, (model, path) in names.items():
        if model == "unet":
            target = unet_map.get(key)
            # The layer ComfyUI patches must be the very module the name was made from.
            if target is not None and sgm_to_diffusers[target] != path:
                wrong.append((key, target))
        else:
            target = clip_map.get(key)
            expected = f"{clips[int(model[2:])]}.transformer.{hf_path(path)}.weight"
            if target is not None and target != expected:
                wrong.append((key, target))
        if target is None:
            misses.append(key)
    assert not misses, f"{len(misses)} of {len(names)} keys load nowhere in ComfyUI/Forge, e.g. {misses[:3]}"
    assert not wrong, f"keys that ComfyUI/Forge apply to another layer: {wrong[:3]}"


def test_sdxl_keys_load_in_comfyui_and_forge(sdxl):
    assert_comfy_loads_every_key("sdxl", *sdxl)


def test_sd2_keys_load_in_comfyui_and_forge(sd2):
    assert_comfy_loads_every_key("sd2", *sd2)


# ---- diffusers ---------------------------------------------------------------------------------

_DIFFUSERS_NAMES = ("down_blocks", "up_blocks", "mid_block", "transformer_blocks", "to_q", "to_k", "to_v", "to_out",
                    "proj_in", "proj_out", "text_model", "self_attn", "q_proj", "k_proj", "v_proj", "out_proj")


def diffusers_module(key: str, layers_per_block: int) -> str | None:
    """The module diffusers 0.30.3 loads a kohya key into, as `model.path` ("unet." /
    "text_encoder." / "text_encoder_2."): SGM blocks first renumbered (input block i -> down
    block (i-1) // (L+1), layer (i-1) % (L+1); output block i -> up block i // (L+1), layer
    i % (L+1); inner index 0/1/2 -> resnets/attentions/upsamplers; middle_block_1 ->
    mid_block_attentions_0), then `_` -> `.` with the multi-word names rejoined."""
    n = layers_per_block + 1
    if m := re.match(r"lora_unet_input_blocks_(\d+)_(\d+)_(.+)$", key):
        i, inner = int(m[1]), int(m[2])
        key = f"lora_unet_down_blocks_{(i - 1) // n}_{('resnets', 'attentions')[inner]}_{(i - 1) % n}_{m[3]}"
    elif m := re.match(r"lora_unet_middle_block_(\d+)_(.+)$", key):
        key = "lora_unet_mid_block_" + ("resnets_0", "attentions_0", "resnets_1")[int(m[1])] + "_" + m[2]
    elif m := re.match(r"lora_unet_output_blocks_(\d+)_(\d+)_(.+)$", key):
        i, inner = int(m[1]), int(m[2])
        kind = ("resnets", "attentions", "upsamplers")[inner]
        key = f"lora_unet_up_blocks_{i // n}_{kind}_{i % n if inner < 2 else 0}_{m[3]}"
    for prefix, model in (("lora_unet_", "unet"), ("lora_te_", "text_encoder"), ("lora_te1_", "text_encoder"),
                          ("lora_te2_", "text_encoder_2")):
        if key.startswith(prefix):
            path = key[len(prefix):].replace("_", ".")
            for name in _DIFFUSERS_NAMES:
                path = path.replace(name.replace("_", "."), name)
            return f"{model}.{path}"
    return None


def assert_diffusers_loads_every_key(unet, encoders):
    models = ["unet", "text_encoder", "text_encoder_2"]
    modules = {f"unet.{p}" for p, _ in unet.named_modules()}
    for model, te in zip(models[1:], encoders):
        modules |= {f"{model}.{hf_path(p)}" for p, _ in te.named_modules() if p}
    names = family_names(unet, encoders)
    loaded = {key: diffusers_module(key, unet.config.layers_per_block) for key in names}
    misses = sorted(k for k, v in loaded.items() if v not in modules)
    assert not misses, f"{len(misses)} of {len(names)} keys load nowhere in diffusers, e.g. {misses[:3]}"
    for key, (model, path) in names.items():
        expected = "unet" if model == "unet" else models[1 + int(model[2:])]
        assert loaded[key] == f"{expected}.{path if model == 'unet' else hf_path(path)}", key


def test_sdxl_keys_load_in_diffusers(sdxl):
    assert_diffusers_loads_every_key(*sdxl)


def test_sd2_keys_load_in_diffusers(sd2):
    assert_diffusers_loads_every_key(*sd2)


@pytest.mark.parametrize("family", ["sdxl", "sd2"])
def test_installed_diffusers_converts_every_key_to_the_same_module(family, request):
    """The installed diffusers' own kohya conversion (lora_state_dict, then its peft renaming),
    run on the names: each lands on the module it was made from."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft, convert_unet_state_dict_to_peft

    unet, encoders = request.getfixturevalue(family)
    names = family_names(unet, encoders)
    sd = {}
    for i, name in enumerate(names):  # each module's down weight holds its number, to follow it through
        sd.update({name + ".lora_down.weight": torch.full((1, 1), float(i)), name + ".lora_up.weight": torch.zeros(1, 1),
                   name + ".alpha": torch.tensor(1.0)})
    if family == "sdxl":
        converted, _ = StableDiffusionXLPipeline.lora_state_dict(sd, unet_config=unet.config)
    else:
        converted, _ = StableDiffusionPipeline.lora_state_dict(sd)
    loaded = {}
    for model in ("unet", "text_encoder", "text_encoder_2"):
        part = {k[len(model) + 1:]: v for k, v in converted.items() if k.split(".")[0] == model}
        if not part:
            continue
        if model == "unet":
            part = convert_unet_state_dict_to_peft(part)
        else:
            part = convert_state_dict_to_peft(convert_state_dict_to_diffusers(part))
        loaded.update({f"{model}.{k.split('.lora_A.')[0]}": int(v) for k, v in part.items() if ".lora_A." in k})
    models = ["unet", "text_encoder", "text_encoder_2"]
    expected = {f"unet.{p}" if m == "unet" else f"{models[1 + int(m[2:])]}.{hf_path(p)}": i
                for i, (m, p) in enumerate(names.values())}
    assert len(converted) == 2 * len(names)
    assert loaded == expected


# ---- counts and golden lists -------------------------------------------------------------------

def split_counts(names: dict) -> dict:
    counts = {}
    for model, _ in names.values():
        counts[model] = counts.get(model, 0) + 1
    return counts


def test_sdxl_module_counts_match_the_reference(sdxl):
    """722 UNet (70 transformer blocks x 10 + 11 transformers x proj_in/out) and 264 text-encoder
    modules (CLIP-L 12 x 6 + bigG 32 x 6), as the reference trainer logs them."""
    assert split_counts(family_names(*sdxl)) == {"unet": 722, "te0": 72, "te1": 192}
    assert split_counts(family_names(*sdxl, preset="attn-only")) == {"unet": 560, "te0": 48, "te1": 128}


def test_sd2_module_counts(sd2):
    """SD1's block layout (16 transformers x 12) and a 23-layer text encoder (x 6)."""
    assert split_counts(family_names(*sd2)) == {"unet": 192, "te0": 138}
    assert split_counts(family_names(*sd2, preset="attn-only")) == {"unet": 128, "te0": 92}


def test_sdxl_names_equal_the_golden_list(sdxl):
    """Written once by make_golden_keys.py; every environment (transformers 4.30 and 5.x) must
    produce exactly it, so a file trained in one loads in the other."""
    names = sorted(family_names(*sdxl))
    assert names == GOLDEN["sdxl"].read_text().split()
    for key in ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", "lora_unet_input_blocks_8_1_proj_in",
                "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2", "lora_unet_output_blocks_5_1_proj_out",
                "lora_unet_output_blocks_0_1_transformer_blocks_9_attn2_to_out_0",
                "lora_te1_text_model_encoder_layers_11_mlp_fc2", "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                "lora_te2_text_model_encoder_layers_31_self_attn_out_proj", "lora_te2_text_model_encoder_layers_0_mlp_fc1"):
        assert key in names, key
    assert not [n for n in names if re.search(r"down_blocks|up_blocks|mid_block|^lora_te_", n)]
    # SGM blocks with attention: input 4, 5, 7, 8; middle 1; output 0-5 (no 6-8, no middle_block_10).
    block = re.compile(r"lora_unet_((?:input|output)_blocks_\d+|middle_block)_")
    blocks = {block.match(n)[1] for n in names if n.startswith("lora_unet_")}
    assert blocks == {"input_blocks_4", "input_blocks_5", "input_blocks_7", "input_blocks_8", "middle_block",
                      *(f"output_blocks_{i}" for i in range(6))}
    assert "lora_unet_middle_block_1_transformer_blocks_10_ff_net_2" not in names
    assert set(family_names(*sdxl, preset="attn-only")) < set(names)


def test_sd2_names_equal_the_golden_list(sd2):
    names = sorted(family_names(*sd2))
    assert names == GOLDEN["sd2"].read_text().split()
    for key in ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q",
                "lora_unet_up_blocks_3_attentions_2_proj_out",
                "lora_unet_mid_block_attentions_0_transformer_blocks_0_ff_net_2",
                "lora_te_text_model_encoder_layers_22_self_attn_out_proj", "lora_te_text_model_encoder_layers_22_mlp_fc1"):
        assert key in names, key
    assert not [n for n in names if re.search(r"input_blocks|output_blocks|middle_block|lora_te[12]_", n)]
    assert "lora_te_text_model_encoder_layers_23_mlp_fc1" not in names
    assert set(family_names(*sd2, preset="attn-only")) < set(names)


# ---- the real code on tiny models ---------------------------------------------------------------

def _randomize_up_weights(*nets, seed=1):
    from instant_lora.lora.layers import layer_tensors, lora_layers

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for net in nets:
            for _, layer in lora_layers(net):
                up = layer_tensors(layer)[1]
                up.copy_(torch.randn(up.shape, generator=gen) * 0.2)


def _outputs(model, encoders):
    gen = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 49408, (2, 9), generator=gen)
    sample = torch.randn(2, 4, 8, 8, generator=gen)
    with torch.no_grad():
        texts = [te(ids).last_hidden_state for te in encoders]
        context = torch.randn(2, 9, model.unet.config.cross_attention_dim, generator=gen)
        kwargs = {}
        if model.unet.config.addition_embed_type == "text_time":
            kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(2, 32, generator=gen),
                                           "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
        out = model.unet(sample, torch.tensor([500, 20]), context, **kwargs).sample
    return [out, *texts]


@pytest.mark.parametrize("family", ["sdxl", "sd2"])
def test_tiny_round_trip_through_the_file_names(family):
    """Inject LoRA into a tiny model (UNet and every text encoder), write its tensors under the
    file's names, merge them into a fresh copy: the merged model computes what the LoRA model
    does, and the names are the ones the golden lists are made of."""
    from instant_lora.errors import InstantLoraError
    from instant_lora.lora.kohya_file import extract_state_dict, split_key
    from instant_lora.lora.layers import inject_lora
    from instant_lora.sample.apply import merge_lora
    from instant_lora.tiny import build_tiny_sd2, build_tiny_sdxl

    build = build_tiny_sdxl if family == "sdxl" else build_tiny_sd2
    m = build(0)
    encoders = [m.text_encoder, m.text_encoder_2] if family == "sdxl" else [m.text_encoder]
    base = _outputs(m, encoders)
    expected = set(family_names(m.unet, encoders))  # before peft adds its own Linears
    inject_lora(m.unet, unet_targets(m.unet), 4, 2.0)  # alpha != rank: the file's alpha must be used
    for te in encoders:
        inject_lora(te, text_encoder_targets(te), 4, 2.0)
    _randomize_up_weights(m.unet, *encoders)
    trained = _outputs(m, encoders)
    assert all(not torch.allclose(a, b, atol=1e-4) for a, b in zip(base, trained))

    sd = extract_state_dict(m.unet, encoders)
    names = {split_key(k)[0] for k in sd}
    assert names == expected
    assert all(float(sd[n + ".alpha"]) == 2.0 for n in names)
    te_prefixes = {re.match(r"lora_te\d?_", n)[0] for n in names if n.startswith("lora_te")}
    if family == "sdxl":
        assert te_prefixes == {"lora_te1_", "lora_te2_"}
        assert sum(n.startswith("lora_te1_") for n in names) == sum(n.startswith("lora_te2_") for n in names) == 3 * 6
        unet_names = [n for n in names if n.startswith("lora_unet_")]
        assert unet_names and all(re.match(r"lora_unet_(input_blocks|middle_block|output_blocks)_", n) for n in unet_names)
        assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names
        assert "lora_unet_output_blocks_2_1_proj_out" in names
    else:
        assert te_prefixes == {"lora_te_"}
        assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q" in names

    fresh = build(0)
    fresh_encoders = [fresh.text_encoder, fresh.text_encoder_2] if family == "sdxl" else [fresh.text_encoder]
    assert merge_lora(sd, fresh.unet, fresh_encoders) == len(names)
    for got, want in zip(_outputs(fresh, fresh_encoders), trained):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)

    bad = dict(sd)
    stray = "lora_unet_input_blocks_99_1_proj_in" if family == "sdxl" else "lora_unet_down_blocks_9_attentions_0_proj_in"
    bad.update({stray + ".alpha": torch.tensor(1.0), stray + ".lora_down.weight": torch.zeros(4, 32),
                stray + ".lora_up.weight": torch.zeros(32, 4)})
    other = build(0)
    other_encoders = [other.text_encoder, other.text_encoder_2] if family == "sdxl" else [other.text_encoder]
    with pytest.raises(InstantLoraError, match="match nothing in this model"):
        merge_lora(bad, other.unet, other_encoders)
