"""Generation with SDXL and SD2.x v-prediction on tiny models: our loop against diffusers' own
pipelines (StableDiffusionXLPipeline; StableDiffusionPipeline with a v-prediction scheduler),
a LoRA merged by the renderer (SDXL: lora_unet_ SGM names, lora_te1_/lora_te2_) and taken out
bit-identically, the trainer's sample images, and the weight x epoch grid."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from instant_lora.lora.kohya_file import extract_state_dict, save_lora_file
from instant_lora.lora.layers import inject_lora, lora_layers
from instant_lora.lora.targets import text_encoder_targets, unet_targets
from instant_lora.sample.generate import (DiffusersRenderer, generate_tensor, make_scheduler, place_model, sample_images,
                                          scheduler_config)
from instant_lora.sample.grid import build_grid, run_rows
from instant_lora.sample.infotext import parse_infotext
from instant_lora.sample.settings import SAMPLERS, GenerationSettings
from instant_lora.tiny import build_tiny_sd2, build_tiny_sdxl

PROMPT = "test, red square dress"
FAST = GenerationSettings(steps=3, width=64, height=64, cfg_scale=5.0, sampler="DDIM")
BUILD = {"sdxl": build_tiny_sdxl, "sd2": build_tiny_sd2}
METADATA = {"sdxl": {"ss_base_model_version": "sdxl_base_v1-0"}, "sd2": {"ss_base_model_version": "sd_v2_v", "ss_v2": "True"}}


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def state(model) -> dict:
    nets = {"unet": model.unet, "vae": model.vae, **{f"te{i}": te for i, te in enumerate(model.text_encoders)}}
    return {f"{n}.{k}": v.detach().clone() for n, net in nets.items() for k, v in net.state_dict().items()}


def assert_bit_identical(before: dict, model) -> None:
    after = state(model)
    assert before.keys() == after.keys()
    changed = [k for k in before if before[k].dtype != after[k].dtype or before[k].shape != after[k].shape
               or not torch.equal(before[k].reshape(-1).view(torch.uint8), after[k].reshape(-1).view(torch.uint8))]
    assert not changed, f"{len(changed)} tensors changed, e.g. {changed[:3]}"


def pipeline_image(model, family, prompt, seed, settings, negative):
    """diffusers' own pipeline on the same parts, with our scheduler for the family."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    scheduler = make_scheduler(settings.sampler, model.prediction_type, family)
    if family == "sdxl":
        pipe = StableDiffusionXLPipeline(vae=model.vae, text_encoder=model.text_encoder, text_encoder_2=model.text_encoder_2,
                                         tokenizer=model.tokenizer, tokenizer_2=model.tokenizer_2, unet=model.unet,
                                         scheduler=scheduler, add_watermarker=False)
    else:
        pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
                                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt, negative_prompt=negative, num_inference_steps=settings.steps, guidance_scale=settings.cfg_scale,
                width=settings.width, height=settings.height, generator=torch.Generator().manual_seed(seed),
                output_type="np").images[0]


@pytest.fixture(scope="module")
def sdxl():
    return place_model(build_tiny_sdxl(0))


@pytest.fixture(scope="module")
def sd2v():
    return place_model(build_tiny_sd2(0, prediction="v"))


# ---- the scheduler ----------------------------------------------------------------------------

def test_scheduler_takes_the_prediction_type_and_the_familys_schedule():
    for family in ("sd1", "sd2", "sdxl"):
        config = scheduler_config(family)
        assert (config["beta_schedule"], config["beta_start"], config["beta_end"]) == ("scaled_linear", 0.00085, 0.012)
    assert scheduler_config("sdxl")["steps_offset"] == 1 and scheduler_config("sdxl").get("timestep_spacing", "leading") == "leading"
    for sampler in SAMPLERS:
        assert make_scheduler(sampler, "v_prediction", "sd2").config.prediction_type == "v_prediction"
        assert make_scheduler(sampler, "epsilon", "sd2").config.prediction_type == "epsilon"  # SD2 512-base
        assert make_scheduler(sampler).config.prediction_type == "epsilon"
    assert make_scheduler("DDIM", family=build_tiny_sd2(0).family).config.prediction_type == "v_prediction"
    assert make_scheduler("DPM++ 2M Karras", "epsilon", "sdxl").config.use_karras_sigmas


# ---- our loop gives the pipelines' images -------------------------------------------------------

@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("negative", ["", "blurry"], ids=["empty-negative", "negative"])
def test_sdxl_our_loop_gives_the_pipelines_image(sdxl, sampler, negative):
    # not square: the size ids (height, width, 0, 0, height, width) are in the right order
    settings = GenerationSettings(steps=4, width=64, height=48, cfg_scale=6.0, sampler=sampler, negative_prompt=negative).checked()
    ours = generate_tensor(sdxl, PROMPT, 11, settings).numpy()
    # diffusers zeroes an absent negative prompt for SDXL (force_zeros_for_empty_prompt), as the WebUI zeroes an empty one
    theirs = pipeline_image(sdxl, "sdxl", PROMPT, 11, settings, negative or None)
    assert ours.shape == (48, 64, 3)
    assert np.abs(ours - theirs).max() < 1e-5
    if not negative:  # and zeros are not the encoded empty prompt: the comparison above tells them apart
        encoded_empty = pipeline_image(sdxl, "sdxl", PROMPT, 11, settings, "")
        assert np.abs(ours - encoded_empty).max() > 1e-3


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sd2_v_prediction_our_loop_gives_the_pipelines_image(sd2v, sampler):
    settings = GenerationSettings(steps=4, width=64, height=64, cfg_scale=6.0, sampler=sampler, negative_prompt="blurry").checked()
    assert sd2v.prediction_type == "v_prediction"
    ours = generate_tensor(sd2v, PROMPT, 11, settings).numpy()
    theirs = pipeline_image(sd2v, "sd2", PROMPT, 11, settings, "blurry")
    assert np.abs(ours - theirs).max() < 1e-5
    # the prediction type matters: read as epsilon, the same weights give another image
    from dataclasses import replace

    from instant_lora.models import training_noise_scheduler

    eps_model = replace(sd2v, noise_scheduler=training_noise_scheduler("epsilon"), family=replace(sd2v.family, prediction="epsilon"))
    as_epsilon = generate_tensor(eps_model, PROMPT, 11, settings).numpy()
    assert np.abs(ours - as_epsilon).max() > 0.05


def test_sdxl_clip_skip_does_not_apply(sdxl):
    one = generate_tensor(sdxl, PROMPT, 2, FAST.checked()).numpy()
    two = generate_tensor(sdxl, PROMPT, 2, GenerationSettings(**{**FAST.__dict__, "clip_skip": 2}).checked()).numpy()
    assert np.array_equal(one, two)


def test_a_long_prompt_is_encoded_in_windows_as_the_webui_does(sdxl):
    from instant_lora.sample.generate import encode_prompt

    short = encode_prompt(sdxl, PROMPT)
    assert tuple(short.hidden.shape) == (1, 77, 64) and tuple(short.pooled.shape) == (1, 32)
    long = encode_prompt(sdxl, ", ".join(["red square dress"] * 25))  # 99 tokens: two windows
    assert tuple(long.hidden.shape) == (1, 154, 64)
    # a prompt of two windows against a one-window negative: two UNet passes, a finite image
    image = generate_tensor(sdxl, ", ".join(["red square dress"] * 25), 1, GenerationSettings(**{**FAST.__dict__, "negative_prompt": "x"}).checked())
    assert torch.isfinite(image).all()


# ---- LoRAs: merged for an image and taken out exactly ---------------------------------------------

def lora_model(family, seed=1, strength=0.3):
    """A tiny model of `family` with LoRA layers everywhere the trainer puts them, up weights nonzero."""
    model = BUILD[family](0)
    inject_lora(model.unet, unet_targets(model.unet), rank=4, alpha=2.0, seed=seed, seed_salt="unet")
    for i, te in enumerate(model.text_encoders):
        inject_lora(te, text_encoder_targets(te), rank=4, alpha=2.0, seed=seed, seed_salt=f"te{i}")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for net in (model.unet, *model.text_encoders):
            for _, layer in lora_layers(net):
                up = layer.lora_B["default"].weight
                up.copy_(torch.randn(up.shape, generator=g) * strength)
    return place_model(model)


def write_lora(path, model, family, **metadata):
    encoders = model.text_encoders if family == "sdxl" else model.text_encoder
    sd = extract_state_dict(model.unet, encoders)
    return save_lora_file(path, sd, {"ss_output_name": path.stem, "ss_network_module": "networks.lora", **METADATA[family],
                                     **{k: str(v) for k, v in metadata.items()}}), sd


@pytest.mark.parametrize("family", ["sdxl", "sd2"])
def test_lora_merged_by_the_renderer_changes_the_image_and_restore_gives_the_base_back(family, tmp_path):
    trained = lora_model(family)
    _, sd = write_lora(tmp_path / "style.safetensors", trained, family)
    if family == "sdxl":
        assert any(k.startswith("lora_te1_") for k in sd) and any(k.startswith("lora_te2_") for k in sd)
        assert any(k.startswith("lora_unet_input_blocks_") for k in sd) and not any("down_blocks" in k for k in sd)
    else:
        assert any(k.startswith("lora_te_text_model_") for k in sd)
    base = place_model(BUILD[family](0))
    before = state(base)
    render = DiffusersRenderer(base, tmp_path)
    plain = render(PROMPT, 5, FAST)
    zero = render(f"{PROMPT} <lora:style:0>", 5, FAST)
    one = render(f"{PROMPT} <lora:style:1>", 5, FAST)
    unet_only = render(f"{PROMPT} <lora:style:0:1>", 5, FAST)
    te_only = render(f"{PROMPT} <lora:style:1:0>", 5, FAST)
    again = render(PROMPT, 5, FAST)
    assert plain.tobytes() == zero.tobytes() == again.tobytes()
    assert np.abs(pixels(one) - pixels(plain)).mean() > 1  # the LoRA visibly changes the image
    assert len({plain.tobytes(), te_only.tobytes(), unet_only.tobytes(), one.tobytes()}) == 4  # both parts act
    assert_bit_identical(before, base)
    assert render.merger.applied == []
    _, _, params = parse_infotext(one.info["parameters"])
    assert params["Seed"] == "5" and params["Model"] == base.name
    # merged weights give the image of the live peft layers the file was extracted from
    live = generate_tensor(trained, PROMPT, 5, FAST.checked()).numpy()
    assert np.abs(pixels(one) - np.round(live * 255)).max() <= 2


def test_sdxl_sample_images_with_a_live_lora_restore_every_mode(tmp_path):
    model = lora_model("sdxl")
    model.unet.train()
    model.text_encoder_2.train()
    model.unet.conv_in.eval()  # a mixed state must come back exactly as it was
    modes = {m: m.training for net in (model.unet, *model.text_encoders, model.vae) for m in net.modules()}
    params = {n: (p.dtype, p.data_ptr()) for net in (model.unet, *model.text_encoders) for n, p in net.named_parameters()}
    images = sample_images(model, [f"{PROMPT} <lora:whatever:1>", "test, blue round dress"], 21, FAST)
    assert all(m.training == mode for m, mode in modes.items())
    assert {n: (p.dtype, p.data_ptr()) for net in (model.unet, *model.text_encoders) for n, p in net.named_parameters()} == params
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    assert parse_infotext(images[1].info["parameters"])[2]["Seed"] == "22"
    # the live LoRA gives the image of its extracted file merged into a fresh base model
    write_lora(tmp_path / "live.safetensors", model, "sdxl")
    render = DiffusersRenderer(place_model(build_tiny_sdxl(0)), tmp_path)
    merged = render(f"{PROMPT} <lora:live:1>", 21, FAST)
    assert np.abs(pixels(images[0]) - pixels(merged)).max() <= 2
    assert images[0].tobytes() != render(PROMPT, 21, FAST).tobytes()


# ---- the weight x epoch grid --------------------------------------------------------------------

def test_grid_with_a_tiny_sdxl(tmp_path):
    for stem, steps, seed in [("run-000001", 10, 1), ("run", 20, 2)]:
        write_lora(tmp_path / f"{stem}.safetensors", lora_model("sdxl", seed=seed), "sdxl", ss_steps=steps)
    rows = run_rows(tmp_path, "run")
    assert [r.label for r in rows] == ["epoch 1", "final"]
    base = place_model(build_tiny_sdxl(0))
    before = state(base)
    render = DiffusersRenderer(base, tmp_path)
    result = build_grid(render, "<lora:run:1> test, red square dress", rows, (0, 0.5, 1), seed=7, settings=FAST,
                        model_name=render.model_name)
    assert result.renders == 5  # weight 0 once for both rows
    assert result.image.size == (result.layout.label_width + 3 * 64, result.layout.header_height + 2 * 64)
    cells = [[c.tobytes() for c in row] for row in result.cells]
    assert cells[0][0] == cells[1][0] == render("test, red square dress", 7, FAST).tobytes()  # weight 0 = the base model
    assert len({cells[0][1], cells[0][2], cells[1][1], cells[1][2], cells[0][0]}) == 5
    assert_bit_identical(before, base)
    assert parse_infotext(result.cell_infotext(1, 2))[0] == "test, red square dress <lora:run:1>"
    preview, sidecar = result.choose(1, 2)
    assert Image.open(preview).tobytes() == result.cells[1][2].tobytes()
    assert json.loads(sidecar.read_text())["sd version"] == "SDXL"  # the WebUI card's filter value


def test_generate_command_with_an_sdxl_model(tmp_path, capsys):
    from instant_lora.generate_cli import run_generate
    from instant_lora.tiny import save_diffusers_folder

    folder = save_diffusers_folder(build_tiny_sdxl(0), tmp_path / "tiny-xl")
    write_lora(tmp_path / "Lora" / "xl_style.safetensors", lora_model("sdxl"), "sdxl")
    out = tmp_path / "one.png"
    # --height alone: the width follows it (without either, the family's size: 1024 for SDXL)
    assert run_generate(["--pretrained_model_name_or_path", str(folder), "--lora_dir", str(tmp_path / "Lora"), "--steps", "2",
                         "--height", "64", "--sampler", "ddim", "--seed", "3", "--prompt", "<lora:xl_style:0.8> a cat",
                         "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "SDXL, 64x64" in err
    image = Image.open(out)
    prompt, _, params = parse_infotext(image.info["parameters"])
    assert image.size == (64, 64) and prompt == "<lora:xl_style:0.8> a cat" and params["Model"] == "tiny-xl"
