"""SDXL and SD2.x base models load offline from single files (SGM / LDM layout, OpenCLIP text
encoders) and diffusers folders, with the same outputs as the model they were written from; the
bundled full-size configs build the real shapes; kinds not trained here are refused by name."""

import json
import socket

import pytest
import torch
from safetensors.torch import load_file, save_file

from instant_lora.errors import InstantLoraError, UnsupportedModel
from instant_lora.models import BUNDLED_SD21_CONFIG, BUNDLED_SDXL_CONFIG, load_sd_model
from instant_lora.tiny import build_tiny_sd2, build_tiny_sdxl, save_diffusers_folder

UNET = "model.diffusion_model."


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def single_file(model, folder, name):
    """The model in its family's original single-file layout, plus a config folder for it."""
    from ldm_layout import to_ldm_checkpoint

    save_diffusers_folder(model, folder / "config")
    path = folder / name
    save_file(to_ldm_checkpoint(model), str(path))
    return path, folder / "config"


@torch.no_grad()
def assert_same_outputs(original, loaded):
    """UNet, VAE and every text encoder give the original's outputs on the same inputs."""
    torch.manual_seed(0)
    width = original.unet.config.cross_attention_dim
    sample, context = torch.randn(1, 4, 8, 8), torch.randn(1, 5, width)
    kw = {}
    if original.text_encoder_2 is not None:
        pooled = original.text_encoder_2.config.projection_dim
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(1, pooled), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    for part in ("unet", "vae"):
        getattr(original, part).eval()
    a = original.unet(sample, 10, context, **kw).sample
    b = loaded.unet(sample, 10, context, **kw).sample
    assert torch.allclose(a, b, atol=1e-5), "UNet"
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.allclose(original.vae.encode(image).latent_dist.mean, loaded.vae.encode(image).latent_dist.mean, atol=1e-5)
    assert torch.allclose(original.vae.decode(sample).sample, loaded.vae.decode(sample).sample, atol=1e-5)
    ids = loaded.tokenizer("a photo of a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert len(original.text_encoders) == len(loaded.text_encoders)
    for te_a, te_b in zip(original.text_encoders, loaded.text_encoders):
        out_a, out_b = te_a.eval()(ids, output_hidden_states=True), te_b(ids, output_hidden_states=True)
        assert torch.allclose(out_a.hidden_states[-2], out_b.hidden_states[-2], atol=1e-5)
        assert torch.allclose(out_a[0], out_b[0], atol=1e-5)
        if hasattr(out_a, "text_embeds"):  # SDXL's pooled, projected output
            assert torch.allclose(out_a.text_embeds, out_b.text_embeds, atol=1e-5)


def test_sdxl_single_file_loads_offline(tmp_path, no_network):
    from transformers import CLIPTextModelWithProjection

    original = build_tiny_sdxl(3)
    path, config = single_file(original, tmp_path, "tiny-xl.safetensors")
    assert f"{UNET}label_emb.0.0.weight" in load_file(str(path))  # SGM layout, as sd_xl_base_1.0
    loaded = load_sd_model(path, config_dir=config)
    assert (loaded.family.name, loaded.family.prediction, loaded.prediction_type) == ("sdxl", "epsilon", "epsilon")
    assert isinstance(loaded.text_encoder_2, CLIPTextModelWithProjection)
    assert [t.pad_token_id for t in loaded.tokenizers] == [49407, 0]
    assert_same_outputs(original, loaded)


@pytest.mark.parametrize("marker", ["config", "yaml", "none"])
def test_sd2_single_file_loads_offline(tmp_path, no_network, marker):
    original = build_tiny_sd2(4, prediction="v")
    path, config = single_file(original, tmp_path, "tiny-sd2.safetensors")
    sd = load_file(str(path))
    assert "cond_stage_model.model.transformer.resblocks.2.attn.in_proj_weight" in sd  # ViT-H's unused last block
    if marker != "config":  # the prediction type then comes from the file's side, as for a real one
        (config / "scheduler" / "scheduler_config.json").unlink()
    if marker == "yaml":
        path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n', encoding="utf-8")
    loaded = load_sd_model(path, config_dir=config)
    prediction = "epsilon" if marker == "none" else "v"
    assert (loaded.family.name, loaded.family.prediction) == ("sd2", prediction)
    assert loaded.prediction_type == loaded.family.scheduler_prediction
    assert loaded.text_encoder.config.num_hidden_layers == 2 and loaded.text_encoder_2 is None
    assert loaded.tokenizer.pad_token_id == 0 and loaded.tokenizers == [loaded.tokenizer]
    assert_same_outputs(original, loaded)


def test_openclip_conversion_agrees_with_diffusers(tmp_path):
    """Our converter and diffusers' own (an independent reading of the same layout) give the same tensors."""
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint

    from instant_lora.openclip_convert import openclip_tensors

    original = build_tiny_sdxl(5)
    path, _ = single_file(original, tmp_path, "xl.safetensors")
    sd = load_file(str(path))
    prefix = "conditioner.embedders.1.model."
    ours = openclip_tensors(sd, prefix, original.text_encoder_2.config.num_hidden_layers)
    theirs = convert_open_clip_checkpoint(original.text_encoder_2, sd, prefix=prefix)
    assert ours and set(ours) <= set(theirs)
    for k, v in ours.items():
        assert torch.equal(v, theirs[k]), k


@pytest.mark.parametrize("family, drop, what", [
    ("sd2", "cond_stage_model.model.transformer.resblocks.1.", "text encoder \\(OpenCLIP ViT-H\\) is incomplete"),
    ("sdxl", "conditioner.embedders.1.model.text_projection", "second text encoder \\(OpenCLIP bigG\\) is incomplete"),
    ("sdxl", "conditioner.embedders.0.transformer.text_model.encoder.layers.1.",
     "first text encoder \\(CLIP ViT-L\\) is incomplete"),
    ("sdxl", UNET + "label_emb.0.2.", "UNet"),
])
def test_a_missing_tensor_is_an_error_not_random_weights(tmp_path, family, drop, what):
    model = build_tiny_sd2(1) if family == "sd2" else build_tiny_sdxl(1)
    path, config = single_file(model, tmp_path, "m.safetensors")
    sd = {k: v for k, v in load_file(str(path)).items() if not k.startswith(drop)}
    save_file(sd, str(path))
    with pytest.raises(InstantLoraError, match=what) as e:
        load_sd_model(path, config_dir=config)
    assert "m.safetensors" in e.value.message


def test_bundled_configs_build_the_real_shapes():
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with init_empty_weights():
        xl = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(BUNDLED_SDXL_CONFIG / "unet")))
        te1 = CLIPTextModel(CLIPTextConfig.from_pretrained(str(BUNDLED_SDXL_CONFIG / "text_encoder")))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(str(BUNDLED_SDXL_CONFIG / "text_encoder_2")))
        sd2 = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(BUNDLED_SD21_CONFIG / "unet")))
        sd2_te = CLIPTextModel(CLIPTextConfig.from_pretrained(str(BUNDLED_SD21_CONFIG / "text_encoder")))
    assert xl.config.cross_attention_dim == 2048 == te1.config.hidden_size + te2.config.hidden_size
    assert xl.add_embedding.linear_1.in_features == 2816 == 6 * 256 + te2.config.projection_dim
    assert (te2.config.num_hidden_layers, te2.config.hidden_size, te2.config.hidden_act) == (32, 1280, "gelu")
    assert (te1.config.num_hidden_layers, te1.config.hidden_size, te1.config.hidden_act) == (12, 768, "quick_gelu")
    assert sum(p.numel() for p in xl.parameters()) == 2_567_463_684  # SDXL base's UNet
    assert (sd2.config.cross_attention_dim, sd2.config.use_linear_projection) == (1024, True)
    assert (sd2_te.config.num_hidden_layers, sd2_te.config.hidden_size, sd2_te.config.hidden_act) == (23, 1024, "gelu")
    assert AutoencoderKL.load_config(str(BUNDLED_SDXL_CONFIG / "vae"))["scaling_factor"] == 0.13025
    assert UNet2DConditionModel.load_config(str(BUNDLED_SDXL_CONFIG / "unet"))["addition_embed_type"] == "text_time"
    scheduler = json.loads((BUNDLED_SD21_CONFIG / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
    assert scheduler["prediction_type"] == "v_prediction"


def test_full_size_layouts_are_detected_and_converted():
    """The real geometry, on the meta device: the family is told from SDXL base's and SD2.1's key
    layout and shapes, and the OpenCLIP converter gives exactly the tensors the bundled configs want."""
    from accelerate import init_empty_weights
    from diffusers import UNet2DConditionModel
    from ldm_layout import text_encoder_to_ldm, text_encoder_to_openclip, unet_to_ldm
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from instant_lora.model_family import V_STAT_KEY, family_of_shapes
    from instant_lora.openclip_convert import canonical_key, openclip_tensors

    def shapes(sd):
        return {k: list(v.shape) for k, v in sd.items()}

    with init_empty_weights():
        xl_unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(BUNDLED_SDXL_CONFIG / "unet")))
        te1 = CLIPTextModel(CLIPTextConfig.from_pretrained(str(BUNDLED_SDXL_CONFIG / "text_encoder")))
        te2 = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(str(BUNDLED_SDXL_CONFIG / "text_encoder_2")))
        sd2_unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(BUNDLED_SD21_CONFIG / "unet")))
        sd2_te = CLIPTextModel(CLIPTextConfig.from_pretrained(str(BUNDLED_SD21_CONFIG / "text_encoder")))
    te2_file = text_encoder_to_openclip(te2, "conditioner.embedders.1.model.")
    xl = {**unet_to_ldm(xl_unet), **text_encoder_to_ldm(te1, "conditioner.embedders.0.transformer."), **te2_file}
    assert xl[UNET + "label_emb.0.0.weight"].shape == (1280, 2816)
    assert family_of_shapes(shapes(xl)).name == "sdxl"
    sd2_file = text_encoder_to_openclip(sd2_te, "cond_stage_model.model.", extra_blocks=1)
    assert "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight" in sd2_file  # ViT-H's 24 blocks
    sd2 = {**unet_to_ldm(sd2_unet), **sd2_file}
    assert V_STAT_KEY in sd2  # the probe exists where the WebUI and ComfyUI read it
    assert family_of_shapes(shapes(sd2), yaml_text=None, v_stat=lambda: 0.2).label == "SD2.x (v-prediction)"
    for te, file, prefix in ((te2, te2_file, "conditioner.embedders.1.model."), (sd2_te, sd2_file, "cond_stage_model.model.")):
        ours = openclip_tensors(file, prefix, te.config.num_hidden_layers)
        wanted = {canonical_key(k): tuple(v.shape) for k, v in te.state_dict().items() if not k.endswith("position_ids")}
        got = {k: tuple(v.shape) for k, v in ours.items()}
        if "text_projection.weight" not in wanted:
            got.pop("text_projection.weight")  # SD2's files hold one it does not use
        assert got == wanted


def _header_only(path, tensors):
    save_file({k: torch.zeros(shape) for k, shape in tensors.items()}, str(path))
    return path


ATTN = UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"


@pytest.mark.parametrize("kind, tensors, words", [
    ("refiner", {UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (8, 1280),
                 "conditioner.embedders.0.model.ln_final.weight": (1280,)}, "SDXL refiner"),
    ("refiner-unet", {UNET + "label_emb.0.0.weight": (8, 2560)}, "SDXL refiner"),
    ("sd3", {UNET + "joint_blocks.0.x_block.attn.qkv.weight": (4, 4)}, "Stable Diffusion 3"),
    ("flux", {"double_blocks.0.img_attn.qkv.weight": (4, 4)}, "FLUX"),
    ("flux-ldm", {UNET + "double_blocks.0.img_attn.qkv.weight": (4, 4)}, "FLUX"),
    ("inpainting", {UNET + "input_blocks.0.0.weight": (8, 9, 3, 3), ATTN: (8, 768),
                    "cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,)}, "inpainting"),
    ("sdxl-inpainting", {UNET + "input_blocks.0.0.weight": (8, 9, 3, 3), UNET + "label_emb.0.0.weight": (8, 2816),
                         "conditioner.embedders.1.model.ln_final.weight": (1280,)}, "inpainting"),
    ("pix2pix", {UNET + "input_blocks.0.0.weight": (8, 8, 3, 3), ATTN: (8, 768)}, "instruct-pix2pix"),
])
def test_kinds_not_trained_here_are_refused_by_name(tmp_path, kind, tensors, words):
    from instant_lora.model_family import detect_family

    path = _header_only(tmp_path / f"{kind}.safetensors", tensors)
    with pytest.raises(UnsupportedModel, match=words) as e:
        detect_family(path)
    assert "not supported yet" in e.value.message and e.value.hint and f"{kind}.safetensors" in e.value.message
    with pytest.raises(UnsupportedModel, match=words):
        load_sd_model(path)


@pytest.mark.parametrize("family", ["sdxl", "sd2"])
def test_diffusers_folders_load_with_their_family(tmp_path, no_network, family):
    original = build_tiny_sdxl(6) if family == "sdxl" else build_tiny_sd2(6, prediction="v")
    save_diffusers_folder(original, tmp_path / "m")
    loaded = load_sd_model(tmp_path / "m")
    assert loaded.family.name == family
    if family == "sdxl":
        assert (loaded.family.prediction, [t.pad_token_id for t in loaded.tokenizers]) == ("epsilon", [49407, 0])
        assert type(loaded.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    else:
        assert (loaded.family.prediction, loaded.prediction_type, loaded.tokenizer.pad_token_id) == ("v", "v_prediction", 0)
        assert loaded.text_encoder_2 is None and loaded.tokenizer_2 is None
    assert_same_outputs(original, loaded)


def test_an_inpainting_diffusers_folder_is_refused_before_loading(tmp_path):
    from instant_lora.tiny import build_tiny_sd

    folder = save_diffusers_folder(build_tiny_sd(0), tmp_path / "inpaint")
    config = folder / "unet" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text(encoding="utf-8")), "in_channels": 9}), encoding="utf-8")
    with pytest.raises(UnsupportedModel, match="inpainting"):
        load_sd_model(folder)
