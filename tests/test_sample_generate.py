"""Generation on the tiny model: our loop against diffusers' pipeline, LoRA weights 0 and 1, the
trainer's sample images, and the `generate` command."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image
from test_sample_support import FAST, assert_bit_identical, model_state, write_lora

from instant_lora.errors import InstantLoraError
from instant_lora.generate_cli import run_generate
from instant_lora.sample.generate import DiffusersRenderer, generate_tensor, make_scheduler, place_model, sample_images
from instant_lora.sample.infotext import parse_infotext
from instant_lora.sample.lora_files import LoraLibrary
from instant_lora.sample.settings import SAMPLERS, GenerationSettings
from instant_lora.tiny import build_tiny_sd

PROMPT = "test, red square dress"


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def pipeline_image(model, prompt, seed, settings):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
                                   scheduler=make_scheduler(settings.sampler), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe(prompt, negative_prompt=settings.negative_prompt or None, num_inference_steps=settings.steps,
                guidance_scale=settings.cfg_scale, width=settings.width, height=settings.height,
                generator=torch.Generator().manual_seed(seed), output_type="np").images[0]


@pytest.fixture(scope="module")
def base():
    return place_model(build_tiny_sd(0))


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_our_loop_gives_the_pipelines_image(base, sampler):
    settings = GenerationSettings(steps=4, width=64, height=64, cfg_scale=6.0, sampler=sampler, negative_prompt="blurry")
    ours = generate_tensor(base, PROMPT, 11, settings).numpy()
    theirs = pipeline_image(base, PROMPT, 11, settings)
    assert np.abs(ours - theirs).max() < 1e-5


@pytest.fixture(scope="module")
def lora_dir(base, tmp_path_factory):
    folder = tmp_path_factory.mktemp("Lora")
    write_lora(folder / "style.safetensors", base, rank=4, alpha=4.0, seed=1)
    write_lora(folder / "unet_only.safetensors", base, rank=4, alpha=2.0, seed=2, text_encoder=False)
    return folder


def test_weight_zero_is_the_base_image_and_the_model_is_restored(base, lora_dir):
    before = model_state(base)
    render = DiffusersRenderer(base, lora_dir)
    plain = render(PROMPT, 5, FAST)
    zero = render(f"{PROMPT} <lora:style:0>", 5, FAST)
    one = render(f"{PROMPT} <lora:style:1>", 5, FAST)
    again = render(PROMPT, 5, FAST)
    assert plain.tobytes() == zero.tobytes() == again.tobytes()
    assert np.abs(pixels(one) - pixels(plain)).mean() > 2  # the LoRA visibly changes the image
    te_only = render(f"{PROMPT} <lora:style:1:0>", 5, FAST)
    unet_only = render(f"{PROMPT} <lora:style:0:1>", 5, FAST)
    assert len({plain.tobytes(), te_only.tobytes(), unet_only.tobytes(), one.tobytes()}) == 4
    assert_bit_identical(before, base)
    _, _, params = parse_infotext(one.info["parameters"])
    assert params["Seed"] == "5" and params["Sampler"] == "DDIM" and params["Model"] == "tiny-sd"


def test_two_loras_in_one_prompt_add_up(base, lora_dir):
    render = DiffusersRenderer(base, lora_dir)
    both = render(f"<lora:style:0.5> {PROMPT} <lora:unet_only:0.7>", 3, FAST)
    # The same sum, merged by hand.
    lib = LoraLibrary(lora_dir)
    with render.merger as merger:
        merger.apply(lib.load(lib.find("style")), 0.5)
        merger.apply(lib.load(lib.find("unet_only")), 0.7)
        by_hand = generate_tensor(base, PROMPT, 3, FAST.checked())
    assert np.abs(pixels(both) - np.round(by_hand.numpy() * 255)).max() <= 1


def _merged_image(lora_dir, name, seed, settings):
    model = build_tiny_sd(0)
    render = DiffusersRenderer(model, lora_dir)
    text, loras = render.resolve(f"{PROMPT} <lora:{name}:1>")
    with render.merger as merger:
        merger.apply(render.loras.load(loras[0][0]), 1.0)
        return generate_tensor(model, text, seed, settings).numpy()


# The text encoder's LoRA passes through a random tiny model that amplifies 6e-6 differences in
# its hidden states to about 1e-3 in pixels; the UNet-only file agrees much more tightly.
@pytest.mark.parametrize("name,tolerance", [("unet_only", 1e-4), ("style", 5e-3)])
def test_weight_one_matches_diffusers_own_lora_loading(lora_dir, name, tolerance):
    from diffusers.utils import USE_PEFT_BACKEND

    if not USE_PEFT_BACKEND:
        pytest.skip("diffusers' LoRA loading needs its PEFT backend, which the WebUI's transformers 4.30 turns off")
    from diffusers import StableDiffusionPipeline

    settings = FAST.checked()
    mine = _merged_image(lora_dir, name, 9, settings)
    ref = build_tiny_sd(0)
    pipe = StableDiffusionPipeline(vae=ref.vae, text_encoder=ref.text_encoder, tokenizer=ref.tokenizer, unet=ref.unet,
                                   scheduler=make_scheduler("DDIM"), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.load_lora_weights(str(lora_dir / f"{name}.safetensors"))
    base_img = pipeline_image(build_tiny_sd(0), PROMPT, 9, settings)
    theirs = pipeline_image(ref, PROMPT, 9, settings)
    assert np.abs(theirs - base_img).max() > 0.05  # diffusers applied it too
    assert np.abs(mine - theirs).max() < tolerance


def test_weight_one_matches_peft_adapters(lora_dir):
    """Merged weights against the same file loaded into peft adapters (runs under the WebUI's pins too)."""
    from instant_lora.lora.kohya_file import load_into_layers, read_lora_file
    from instant_lora.lora.layers import inject_lora
    from instant_lora.lora.targets import text_encoder_targets, unet_targets

    settings = FAST.checked()
    mine = _merged_image(lora_dir, "style", 4, settings)
    peft_model = build_tiny_sd(0)
    inject_lora(peft_model.unet, unet_targets(peft_model.unet), rank=4, alpha=1.0)
    inject_lora(peft_model.text_encoder, text_encoder_targets(peft_model.text_encoder), rank=4, alpha=1.0)
    sd, _ = read_lora_file(lora_dir / "style.safetensors")
    load_into_layers(sd, peft_model.unet, peft_model.text_encoder)
    theirs = generate_tensor(place_model(peft_model), PROMPT, 4, settings).numpy()
    base_img = generate_tensor(place_model(build_tiny_sd(0)), PROMPT, 4, settings).numpy()
    assert np.abs(theirs - base_img).max() > 0.05
    assert np.abs(mine - theirs).max() < 5e-3


def test_prompt_errors_are_visible(base, lora_dir):
    render = DiffusersRenderer(base, lora_dir)
    before = model_state(base)
    with pytest.raises(InstantLoraError, match="did you mean 'style'"):
        render(f"{PROMPT} <lora:styel:1>", 1, FAST)
    with pytest.raises(InstantLoraError, match="only <lora:...> tags"):
        render(f"{PROMPT} <hypernet:h:1>", 1, FAST)
    with pytest.raises(InstantLoraError, match="no LoRA folder"):
        DiffusersRenderer(base)(f"{PROMPT} <lora:style:1>", 1, FAST)
    with pytest.raises(InstantLoraError, match="multiple of 8"):
        render(PROMPT, 1, GenerationSettings(width=60, height=64))
    assert_bit_identical(before, base)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-step run saving every step: (the training model with its live LoRA, the output folder)."""
    from conftest import make_image

    from instant_lora.train.loop import train

    root = tmp_path_factory.mktemp("run")
    data = root / "lora_train_set"
    make_image(data / "10_test" / "fashion_001.png", (200, 30, 30))
    (data / "10_test" / "fashion_001.txt").write_text("test, red square dress", encoding="utf-8")
    make_image(data / "10_test" / "fashion_002.png", (30, 30, 200), shape="circle")
    (data / "10_test" / "fashion_002.txt").write_text("test, blue round dress", encoding="utf-8")
    model = build_tiny_sd(0)
    train(tiny_config(data, root / "out", max_train_steps=3, save_every_n_steps=1, learning_rate=3e-2, network_alpha=8.0),
          model=model)
    return model, root / "out"


def test_sample_images_with_the_training_model(trained):
    model, out = trained
    model.unet.train()
    model.text_encoder.train()
    model.unet.conv_in.eval()  # a mixed state must come back exactly as it was
    modes = {m: m.training for net in (model.unet, model.text_encoder, model.vae) for m in net.modules()}
    params = {n: (p.dtype, p.requires_grad, p.data_ptr()) for net in (model.unet, model.text_encoder)
              for n, p in net.named_parameters()}
    prompts = ["test, red square dress <lora:tiny_lora:1>", "test, blue round dress"]
    images = sample_images(model, prompts, 21, FAST)
    assert all(m.training == mode for m, mode in modes.items())
    assert {n: (p.dtype, p.requires_grad, p.data_ptr()) for net in (model.unet, model.text_encoder)
            for n, p in net.named_parameters()} == params  # same tensors: nothing copied or cast
    assert all(p.grad is None for p in model.unet.parameters())
    assert [im.size for im in images] == [(64, 64), (64, 64)]
    assert parse_infotext(images[1].info["parameters"])[2]["Seed"] == "22"
    # The live LoRA gives the image of the saved final file merged into a fresh base model.
    fresh = place_model(build_tiny_sd(0))
    render = DiffusersRenderer(fresh, out)
    for i, text in enumerate(["test, red square dress", "test, blue round dress"]):
        merged = render(f"{text} <lora:tiny_lora:1>", 21 + i, FAST)
        base = render(text, 21 + i, FAST)
        assert np.abs(pixels(images[i]) - pixels(merged)).max() <= 1
        assert images[i].tobytes() != base.tobytes()


def test_generate_command_image_grid_and_preview(trained, tiny_model_dir, tmp_path, capsys):
    _, out = trained
    common = ["--pretrained_model_name_or_path", str(tiny_model_dir), "--lora_dir", str(out), "--steps", "3",
              "--width", "64", "--height", "64", "--sampler", "ddim", "--seed", "5"]
    img = tmp_path / "one.png"
    assert run_generate([*common, "--prompt", "<lora:tiny_lora:0.8> test, red square dress", "--negative_prompt", "blurry",
                         "--out", str(img), "--save_preview"]) == 0
    assert capsys.readouterr().out.strip() == str(img)
    prompt, negative, params = parse_infotext(Image.open(img).info["parameters"])
    assert (prompt, negative) == ("<lora:tiny_lora:0.8> test, red square dress", "blurry")
    assert (params["Seed"], params["Size"], params["Sampler"], params["Steps"], params["Model"]) == ("5", "64x64", "DDIM", "3", "tiny")
    preview = out / "tiny_lora.preview.png"
    assert Image.open(preview).tobytes() == Image.open(img).tobytes()
    sidecar = json.loads((out / "tiny_lora.json").read_text())
    assert sidecar["preferred weight"] == 0.8 and sidecar["sd version"] == "SD1" and "description" in sidecar

    grid = tmp_path / "grid.png"
    assert run_generate([*common, "--prompt", "<lora:tiny_lora:1> test, red square dress", "--grid", "--grid_weights", "0,1",
                         "--out", str(grid)]) == 0
    err = capsys.readouterr().err
    assert "3 rows (step 1, step 2, final) x 2 weights = 4 images" in err
    g = Image.open(grid)
    _, _, params = parse_infotext(g.info["parameters"])
    assert params["Grid rows"] == "step 1, step 2, final" and params["Grid weights"] == "0, 1"
    assert params["Grid LoRAs"] == "tiny_lora-step00000001, tiny_lora-step00000002, tiny_lora"
    assert g.size[0] > 2 * 64 and g.size[1] > 3 * 64

    assert run_generate([*common, "--prompt", "<lora:tiny_lor:1> x", "--out", str(tmp_path / "x.png")]) == 2
    assert "did you mean 'tiny_lora'" in capsys.readouterr().err
    assert run_generate([*common, "--prompt", "x", "--sampler", "heun", "--out", str(tmp_path / "x.png")]) == 2
    assert run_generate(["--prompt", "x"]) == 2  # usage error: argparse names the missing flags
    assert "required" in capsys.readouterr().err
