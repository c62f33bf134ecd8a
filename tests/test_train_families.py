"""SDXL- and SD2-shaped training on tiny models: the loss falls, the file carries each family's
keys and metadata, and merged with the loaders' formula it reproduces the trained model."""

import pytest
import torch
from conftest import make_image, tiny_config

from instant_lora import conditioning
from instant_lora.lora.kohya_file import read_lora_file
from instant_lora.lora.layers import set_lora_enabled
from instant_lora.sample.apply import merge_lora
from instant_lora.tiny import build_tiny_sd2, build_tiny_sdxl
from instant_lora.train.loop import train

BUILD = {"sdxl": build_tiny_sdxl, "sd2": build_tiny_sd2}


def model_output(model, prompt="test, red square dress", size=(64, 48)):
    """The UNet's prediction for fixed noise, timestep, prompt and (SDXL) size conditioning."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        for net in (model.unet, *model.text_encoders):
            net.float()
        cond = conditioning.encode(model, conditioning.window_ids(model, [prompt], 1))
        extra = conditioning.unet_kwargs(cond, [size[1], size[0], 0, 0, 64, 64])
        return model.unet(x, torch.tensor([400]), cond.hidden, **extra).sample


def lora_enabled(model, on: bool):
    for net in (model.unet, *model.text_encoders):
        set_lora_enabled(net, on)


# The tiny SDXL has attention only on its 4x4 level (as SDXL has none on its first): its LoRA
# learns slower than the tiny SD1/SD2 ones (measured: 0.91 and 0.74 of the frozen loss).
@pytest.mark.parametrize("family, lr, ratio", [("sdxl", 3e-2, 0.95), ("sd2", 1e-2, 0.85)])
def test_loss_falls_and_the_file_reproduces_the_model(train_set, tmp_path, family, lr, ratio):
    steps = 40
    base = train(tiny_config(train_set, tmp_path / "a", learning_rate=0.0, max_train_steps=steps), model=BUILD[family](0))
    model = BUILD[family](0)
    trained = train(tiny_config(train_set, tmp_path / "b", learning_rate=lr, max_train_steps=steps), model=model)
    assert base.losses[0] == pytest.approx(trained.losses[0], rel=1e-5)  # paired: same noise, timesteps, data
    half = steps // 2
    assert sum(trained.losses[half:]) < ratio * sum(base.losses[half:]), (base.losses, trained.losses)

    after = model_output(model)
    lora_enabled(model, False)
    before = model_output(model)
    lora_enabled(model, True)
    assert (after - before).abs().max() > 1e-3 * before.abs().max()
    sd, md = read_lora_file(trained.path)
    fresh = BUILD[family](0)
    assert torch.equal(model_output(fresh), before)
    merge_lora(sd, fresh.unet, fresh.text_encoders if len(fresh.text_encoders) > 1 else fresh.text_encoder)
    assert torch.allclose(model_output(fresh), after, atol=1e-5, rtol=1e-4)
    if family == "sdxl":
        assert md["ss_base_model_version"] == "sdxl_base_v1-0" and md["ss_v2"] == "False"
        assert md["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
        assert md["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
        assert any(k.startswith("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q") for k in sd)
        assert any(k.startswith("lora_te1_text_model_encoder_layers_") for k in sd)
        assert any(k.startswith("lora_te2_text_model_encoder_layers_") for k in sd)
        assert not any(k.startswith(("lora_unet_down_blocks", "lora_te_")) for k in sd)
        side = trained.path.with_suffix(".json").read_text()
        assert '"sd version": "SDXL"' in side
    else:
        assert md["ss_base_model_version"] == "sd_v2_v" and md["ss_v2"] == "True"
        assert md["modelspec.prediction_type"] == "v"
        assert md["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
        assert any(k.startswith("lora_te_text_model_") for k in sd)
        assert '"sd version": "SD2"' in trained.path.with_suffix(".json").read_text()


def test_sdxl_size_conditioning_follows_each_image(tmp_path):
    """Two images of other sizes in one bucket give other size numbers: the UNet sees them."""
    from instant_lora.train.objective import size_ids

    root = tmp_path / "data"
    make_image(root / "1_x" / "wide.png", size=(96, 64))
    make_image(root / "1_x" / "square.png", size=(64, 64))
    from instant_lora.request import RunRequest, prepare_run

    prepared = prepare_run(RunRequest(front="cli", values={"train_data_dir": str(root), "output_dir": str(tmp_path / "o"),
                                                           "resolution": "64,64", "enable_bucket": False,
                                                           "pretrained_model_name_or_path": "unused"}))
    samples = sorted(prepared.data.samples, key=lambda s: s.path.name)
    ids = size_ids(samples, [False, False], [s.placement.crop for s in samples])
    square, wide = ids
    assert square == [64, 64, 0, 0, 64, 64]
    assert wide[:2] == [64, 96] and wide[4:] == [64, 64] and wide[3] == 16  # centre crop: 16 px cut on the left
    flipped = size_ids([samples[1]], [True], [samples[1].placement.crop])[0]
    assert flipped[3] == 16  # a centred crop is symmetric


def test_sdxl_text_encoders_train_with_their_own_rates(train_set, tmp_path):
    model = build_tiny_sdxl(0)
    result = train(tiny_config(train_set, tmp_path, max_train_steps=2, text_encoder_lr=1e-3, text_encoder_lr2=0.0), model=model)
    sd, _ = read_lora_file(result.path)
    te1 = [v for k, v in sd.items() if k.startswith("lora_te1_") and k.endswith("lora_up.weight")]
    te2 = [v for k, v in sd.items() if k.startswith("lora_te2_") and k.endswith("lora_up.weight")]
    assert te1 and te2
    assert any(v.abs().sum() > 0 for v in te1)
    assert all(v.abs().sum() == 0 for v in te2)  # learning rate 0: still at its zero start


def test_v_prediction_min_snr_weight():
    from instant_lora.models import training_noise_scheduler
    from instant_lora.train.objective import min_snr_weights

    t = torch.tensor([10, 500, 990])
    eps = min_snr_weights(training_noise_scheduler("epsilon"), t, 5.0)
    v = min_snr_weights(training_noise_scheduler("v_prediction"), t, 5.0)
    alphas = training_noise_scheduler().alphas_cumprod[t]
    snr = alphas / (1 - alphas)
    assert torch.allclose(eps, torch.minimum(snr, torch.tensor(5.0)) / snr)
    assert torch.allclose(v, torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))


def _header_only_checkpoint(path, names_shapes):
    """A .safetensors file with these tensor names and shapes (zeros): enough for family detection."""
    import numpy as np
    from safetensors.numpy import save_file

    save_file({n: np.zeros(shape, dtype=np.float16) for n, shape in names_shapes.items()}, str(path))
    return path


SDXL_KEYS = {"model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": (1, 2048),
             "model.diffusion_model.label_emb.0.0.weight": (1, 2816),
             "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (768,),
             "conditioner.embedders.1.model.ln_final.weight": (1280,)}


def test_the_plan_reads_the_family_from_the_checkpoint(train_set, tmp_path):
    from instant_lora.request import RunRequest, prepare_run
    from instant_lora.train.plan import describe

    ckpt = _header_only_checkpoint(tmp_path / "xl.safetensors", SDXL_KEYS)
    values = {"train_data_dir": str(train_set), "output_dir": str(tmp_path / "o"), "pretrained_model_name_or_path": str(ckpt)}
    prepared = prepare_run(RunRequest(front="cli", values=values))
    assert prepared.plan.family.name == "sdxl"
    assert (prepared.plan.width, prepared.plan.height) == (1024, 1024)  # SDXL's size unless the user sets one
    assert prepared.config.max_bucket_reso == 2048
    assert prepared.config.network_train_unet_only and not prepared.plan.train_text_encoder  # the reference's SDXL advice
    lines = "\n".join(describe(prepared.plan))
    assert "model: SDXL" in lines and "clip skip does not apply" in lines
    chosen = prepare_run(RunRequest(front="cli", values={**values, "resolution": "768,768", "clip_skip": 2}))
    assert chosen.plan.width == 768 and chosen.config.max_bucket_reso == 1024
    with_te = prepare_run(RunRequest(front="cli", values={**values, "text_encoder_lr": 1e-5}))
    assert with_te.plan.train_text_encoder  # a text-encoder rate means training them
    assert any("--clip_skip 2 does not apply to SDXL" in w for w in chosen.plan.warnings)


def test_a_refiner_is_refused_before_anything_loads(train_set, tmp_path):
    from instant_lora.request import RequestError, RunRequest, prepare_run

    keys = {k: v for k, v in SDXL_KEYS.items() if not k.startswith("conditioner.embedders.1")}
    keys = {**keys, "conditioner.embedders.0.model.ln_final.weight": (1280,)}
    keys.pop("conditioner.embedders.0.transformer.text_model.final_layer_norm.weight")
    ckpt = _header_only_checkpoint(tmp_path / "refiner.safetensors", keys)
    with pytest.raises(RequestError) as e:
        prepare_run(RunRequest(front="cli", values={"train_data_dir": str(train_set), "output_dir": str(tmp_path / "o"),
                                                    "pretrained_model_name_or_path": str(ckpt)}))
    assert "refiner" in str(e.value.problems)


def test_sdxl_lora_with_diffusers_style_unet_keys_merges_like_ours():
    """Other trainers write SDXL UNet keys with diffusers paths (lora_unet_down_blocks_1_...); the
    loaders accept both, so the Test panel's merge does too, to the same weights."""
    import re

    from instant_lora.lora.kohya_file import extract_state_dict
    from instant_lora.lora.layers import inject_lora
    from instant_lora.lora.targets import unet_targets

    model = build_tiny_sdxl(0)
    inject_lora(model.unet, unet_targets(model.unet), 4, 4.0, seed=1)
    for name, p in model.unet.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    ours = extract_state_dict(model.unet)
    L = 2  # tiny SDXL's layers per block: input_blocks.{1 + 3i + j}, output_blocks.{3i + j}

    def to_diffusers(key):
        m = re.match(r"lora_unet_input_blocks_(\d+)_1_(.+)", key)
        if m:
            n = int(m[1]) - 1
            return f"lora_unet_down_blocks_{n // (L + 1)}_attentions_{n % (L + 1)}_{m[2]}"
        m = re.match(r"lora_unet_output_blocks_(\d+)_1_(.+)", key)
        if m:
            n = int(m[1])
            return f"lora_unet_up_blocks_{n // (L + 1)}_attentions_{n % (L + 1)}_{m[2]}"
        return key.replace("lora_unet_middle_block_1_", "lora_unet_mid_block_attentions_0_")

    theirs = {to_diffusers(k): v for k, v in ours.items()}
    assert set(theirs) != set(ours)
    a, b = build_tiny_sdxl(0), build_tiny_sdxl(0)
    merge_lora(ours, a.unet)
    merge_lora(theirs, b.unet)
    for (name, pa), pb in zip(a.unet.named_parameters(), b.unet.parameters()):
        assert torch.equal(pa, pb), name


def test_the_test_panel_size_follows_the_checkpoint_family(tmp_path):
    from instant_lora.host.standalone import StandaloneHost
    from instant_lora.ui.handlers.models import native_size

    models = tmp_path / "models"
    models.mkdir()
    _header_only_checkpoint(models / "xl.safetensors", SDXL_KEYS)
    (models / "broken.safetensors").write_bytes(b"")
    host = StandaloneHost(models_dir=models, lora_dir=tmp_path / "loras", data_dir=tmp_path / "data")
    labels = host.list_checkpoints()
    xl = next(label for label in labels if "xl" in label)
    broken = next(label for label in labels if "broken" in label)
    assert native_size(host, xl) == 1024
    assert native_size(host, broken) is None and native_size(host, None) is None


def test_an_sdxl_preset_on_an_sd1_checkpoint_is_warned_about(train_set, tmp_path, tiny_model_dir):
    from instant_lora.request import RunRequest, prepare_run

    values = {"train_data_dir": str(train_set), "output_dir": str(tmp_path / "o"),
              "pretrained_model_name_or_path": str(tiny_model_dir)}
    prepared = prepare_run(RunRequest(front="cli", values=values, preset="SDXL 12 GB"))
    assert any("made for SDXL checkpoints and this one is SD1.x" in w for w in prepared.plan.warnings)
    plain = prepare_run(RunRequest(front="cli", values=values, preset="Balanced"))
    assert not any("made for" in w for w in plain.plan.warnings)
