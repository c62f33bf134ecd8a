"""The "What will be trained" panel: its module table is the injected model's (names, A and B
shapes, counts) on SD1.5's real architecture and on tiny models, its trainable count is the
optimizer's, it follows rank, preset and the text-encoder switch, and it says the latent and text
shapes of the run (SD1 at 512 px, SDXL at 1024 px with its two encoders)."""

import re

import pytest
import torch
from conftest import make_image, tiny_config
from test_estimate import write_header_only_safetensors

from instant_lora.lora.anatomy import config_folder, lora_anatomy, model_shapes
from instant_lora.lora.kohya_file import named_layers
from instant_lora.lora.layers import inject_lora, layer_tensors, lora_parameters
from instant_lora.lora.targets import text_encoder_targets, unet_targets
from instant_lora.models import BUNDLED_CONFIGS
from instant_lora.ui import actions
from instant_lora.ui.handlers.anatomy import anatomy_html

SDXL_HEADER = {  # what family detection reads from an SDXL checkpoint's header (no weights)
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": [640, 2048],
    "model.diffusion_model.label_emb.0.0.weight": [1280, 2816],
    "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": [768],
    "conditioner.embedders.1.model.ln_final.weight": [1280]}


def injected(unet, encoders, rank, preset, train_text_encoder):
    """Inject LoRA as the trainer does; {kohya name: (A shape, B shape)} and the LoRA parameters."""
    inject_lora(unet, unet_targets(unet, preset), rank, rank)
    for te in encoders if train_text_encoder else []:
        inject_lora(te, text_encoder_targets(te, preset), rank, rank)
    layers = named_layers(unet, encoders if train_text_encoder else None)
    shapes = {name: tuple(tuple(t.shape) for t in layer_tensors(layer)[:2]) for name, layer in layers.items()}
    params = [p for net in (unet, *encoders) for p in lora_parameters(net)]
    return shapes, params


def assert_rows_match(anatomy, shapes, params):
    assert {r.name: (r.down_shape, r.up_shape) for r in anatomy.rows} == shapes
    assert anatomy.trainable == sum(p.numel() for p in params)


def data(html: str, key: str) -> str:
    return re.search(rf"class='il-anatomy'[^>]* data-{key}='([^']*)'", html).group(1)


# ---- SD1.5's real architecture, built without weights ---------------------------------------------------

@pytest.mark.parametrize("preset, unet_n, te_n", [("default", 192, 72), ("attn-only", 128, 48)])
def test_sd15_rows_are_the_injected_layers(preset, unet_n, te_n):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = BUNDLED_CONFIGS["sd1"]
    anatomy = lora_anatomy(folder, 8, preset, True)
    assert (anatomy.unet_modules, anatomy.text_encoder_modules) == (unet_n, te_n)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(folder / "unet")))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(str(folder / "text_encoder")))
        assert len(unet_targets(unet, preset)) == unet_n and len(text_encoder_targets(te, preset)) == te_n
        shapes, params = injected(unet, [te], 8, preset, True)
    assert_rows_match(anatomy, shapes, params)
    assert anatomy.trainable == actions.lora_parameter_count(8, preset, True)[0]
    assert anatomy.base == actions.lora_parameter_count(8, preset, True)[1] == 859_520_964 + 123_060_480
    rows = {r.name: r for r in anatomy.rows}
    q = rows["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"]
    assert (q.block, q.role, q.kind, q.weight_shape, q.down_shape, q.up_shape) == (
        "IN01", "attn2.to_k", "linear", (320, 768), (8, 768), (320, 8))
    if preset == "default":  # SD1's proj_in is a 1x1 conv: its A and B are too
        p = rows["lora_unet_down_blocks_0_attentions_0_proj_in"]
        assert (p.block, p.role, p.kind, p.weight_shape, p.down_shape, p.up_shape) == (
            "IN01", "proj_in", "conv1x1", (320, 320, 1, 1), (8, 320, 1, 1), (320, 8, 1, 1))
    blocks = [b for b, _ in anatomy.blocks()]
    assert blocks[:2] == ["IN01", "IN02"] and blocks[6] == "MID" and blocks[-2:] == ["OUT11", "TE"]


# ---- tiny models: the panel's count is the optimizer's ------------------------------------------------------

@pytest.mark.parametrize("preset, text_encoder", [("default", True), ("attn-only", False)])
def test_tiny_training_optimizes_what_the_panel_counts(train_set, tmp_path, tiny_model_dir, monkeypatch, preset, text_encoder):
    from instant_lora.models import load_sd_model
    from instant_lora.train import optim
    from instant_lora.train.loop import train

    groups = []
    real = optim.make_optimizer

    def recording(name, param_groups, *args, **kwargs):
        groups.extend(param_groups)
        return real(name, param_groups, *args, **kwargs)

    monkeypatch.setattr(optim, "make_optimizer", recording)
    model = load_sd_model(str(tiny_model_dir))
    config = tiny_config(train_set, tmp_path, pretrained_model_name_or_path=str(tiny_model_dir), max_train_steps=1,
                         network_dim=3, network_alpha=1.5, network_train_unet_only=not text_encoder,
                         network_args=["preset=attn-only"] if preset == "attn-only" else [])
    train(config, model=model)

    anatomy = lora_anatomy(config_folder(str(tiny_model_dir)), 3, preset, text_encoder, alpha=1.5)
    optimized = sum(p.numel() for g in groups for p in g["params"])
    assert anatomy.trainable == optimized > 0
    layers = named_layers(model.unet, [model.text_encoder] if text_encoder else None)
    assert {r.name: (r.down_shape, r.up_shape) for r in anatomy.rows} == {
        name: tuple(tuple(t.shape) for t in layer_tensors(layer)[:2]) for name, layer in layers.items()}
    assert (anatomy.text_encoder_modules > 0) == text_encoder
    assert anatomy.base == sum(p.numel() for net in (model.unet, model.text_encoder)
                               for name, p in net.named_parameters() if "lora_" not in name)
    other = lora_anatomy(tiny_model_dir, 3, "default" if preset == "attn-only" else "attn-only", text_encoder)
    assert other.trainable != anatomy.trainable and {r.role for r in other.rows} != {r.role for r in anatomy.rows}


def test_tiny_sdxl_rows_are_the_injected_layers(tmp_path):
    """SDXL: the UNet under its original block names (IN04 ...), two text encoders as TE1 / TE2."""
    from instant_lora.models import load_sd_model
    from instant_lora.tiny import build_tiny_sdxl, save_diffusers_folder

    folder = save_diffusers_folder(build_tiny_sdxl(0), tmp_path / "xl")
    model = load_sd_model(str(folder))
    anatomy = lora_anatomy(folder, 2, "default", True)
    shapes, params = injected(model.unet, model.text_encoders, 2, "default", True)
    assert_rows_match(anatomy, shapes, params)
    assert {r.block for r in anatomy.rows} >= {"TE1", "TE2", "MID"}
    assert all(r.name.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_",
                                  "lora_te1_", "lora_te2_")) for r in anatomy.rows)
    shapes = model_shapes(folder)
    assert shapes.encoder_widths == (32, 32) and shapes.pooled == 32 and shapes.size_ids == 6


# ---- the panel follows the form ----------------------------------------------------------------------------

def form(host, **fields):
    return actions.RunForm(fields={**actions.initial_values(), **fields}, checkpoint=host.default_checkpoint())


def test_the_panel_follows_rank_preset_and_text_encoder(host):
    base = anatomy_html(host, form(host, network_dim=16), None)
    assert (data(base, "family"), data(base, "modules"), data(base, "te-modules")) == ("sd1", "264", "72")
    assert int(data(base, "trainable")) == actions.lora_parameter_count(16, "default", True)[0]
    assert "512×512 → 4×64×64" in base and "77×768" in base and "0–999" in base and "Load a dataset" in base
    assert "noise that was added" in base and "alpha/rank" in base
    half = anatomy_html(host, form(host, network_dim=8), None)
    assert int(data(half, "trainable")) * 2 == int(data(base, "trainable"))
    attn = anatomy_html(host, form(host, network_dim=16, network_args="preset=attn-only"), None)
    assert data(attn, "modules") == "176" and "ff.net.2" in base and "ff.net.2" not in attn
    unet_only = anatomy_html(host, form(host, network_dim=16, network_train_unet_only=True), None)
    assert (data(unet_only, "modules"), data(unet_only, "te-modules")) == ("192", "0")
    assert "data-block='TE'" in base and "data-block='TE'" not in unet_only
    bad = anatomy_html(host, form(host, network_args="preset=bogus"), None)  # no table, the rest still shown
    assert "il-anatomy" in bad and "data-modules" not in bad and "512×512 → 4×64×64" in bad and "need fixing" in bad
    too_big = anatomy_html(host, form(host, network_dim=5000), None)
    assert "data-modules" not in too_big and "77×768" in too_big


def test_the_panel_says_the_loss_and_long_caption_windows(host):
    html = anatomy_html(host, form(host, min_snr_gamma=5, noise_offset=0.1, max_token_length=225), None)
    assert "Min-SNR weighting, γ = 5" in html and "noise offset 0.1" in html
    assert "3 windows of 75 tokens" in html and "231×768" in html


def test_sdxl_is_shown_at_1024_with_two_encoders(tmp_path):
    from instant_lora.host.standalone import StandaloneHost

    write_header_only_safetensors(tmp_path / "models" / "xl.safetensors", SDXL_HEADER)
    host = StandaloneHost(models_dir=tmp_path / "models", lora_dir=tmp_path / "loras", data_dir=tmp_path / "data")
    html = anatomy_html(host, form(host, network_dim=4), None)
    assert data(html, "family") == "sdxl" and "1024×1024 → 4×128×128" in html
    assert "two encoders" in html and "77×2048" in html and "pooled 1280" in html and "6 size/crop" in html
    assert data(html, "te-modules") == "0"  # SDXL trains the UNet only unless told otherwise
    assert "data-block='IN04'" in html and "data-block='MID'" in html


def test_buckets_each_get_their_latent_shape(host, tmp_path):
    from instant_lora.dataset import scan_dataset
    from instant_lora.request import preview_plan

    make_image(tmp_path / "ds" / "5_x" / "tall.png", size=(64, 96))
    make_image(tmp_path / "ds" / "5_x" / "wide.png", size=(96, 64))
    scan = scan_dataset(tmp_path / "ds")
    run = actions.RunForm(fields={**actions.initial_values(), "enable_bucket": True}, dataset_dir=str(tmp_path / "ds"),
                          checkpoint=host.default_checkpoint())
    plan, _ = preview_plan(actions.run_request(run, host), host, scan)
    assert len(plan.buckets) == 2
    html = anatomy_html(host, run, scan)
    assert "latents per bucket" in html and "Load a dataset" not in html
    for w, h in plan.buckets:
        assert f"{w}×{h} → 4×{h // 8}×{w // 8}" in html


# ---- the page ---------------------------------------------------------------------------------------------

def test_the_page_has_the_panel_and_updates_it_with_the_plan(tmp_path):
    import gradio as gr

    from instant_lora.host.standalone import StandaloneHost
    from instant_lora.ui import build_ui

    actions.lora_parameter_count(16, "default", True)  # cached before build_ui's warm-up thread starts
    demo = build_ui(StandaloneHost(models_dir=tmp_path / "m", lora_dir=tmp_path / "l", data_dir=tmp_path / "d"))
    by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    assert isinstance(by_id["il_anatomy"], gr.HTML) and "il_section_anatomy" in by_id
    fns = list(demo.fns.values()) if isinstance(demo.fns, dict) else list(demo.fns)
    found = []
    for i, bf in enumerate(fns):
        outputs = getattr(bf, "outputs", None)
        if outputs is None:
            outputs = [demo.blocks[o] for o in demo.dependencies[i]["outputs"]]
        if getattr(bf, "fn", None) is not None and any(o is by_id["il_anatomy"] for o in outputs):
            inputs = getattr(bf, "inputs", None)
            if inputs is None:
                inputs = [demo.blocks[o] for o in demo.dependencies[i]["inputs"]]
            found.append((bf.fn, list(inputs)))
    plan_events = [bf for bf in fns if getattr(getattr(bf, "fn", None), "__name__", "") == "update_plan"]
    assert len(found) == len(plan_events) > 5  # every event that redraws the plan redraws the panel
    fn, inputs = found[0]
    plan, html = fn(*[getattr(c, "value", None) for c in inputs])  # one preview, both outputs
    assert "trainable: **" in plan
    assert "class='il-anatomy'" in html and data(html, "rank") == str(actions.initial_values()["network_dim"])
    assert int(data(html, "modules")) > 0 and "data-block='IN01'" in html
