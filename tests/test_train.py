"""Training on the tiny model: the loss falls, the LoRA changes the output, the saved file
reproduces the trained model, resume continues the same path, cancel keeps the work."""

import importlib.util
import json

import pytest
import torch
from conftest import tiny_config

from instant_lora.cache import encode_text, tokenize
from instant_lora.lora.kohya_file import read_lora_file
from instant_lora.sample.apply import merge_lora
from instant_lora.lora.layers import set_lora_enabled
from instant_lora.tiny import build_tiny_sd
from instant_lora.train.events import Saved, TrainControl
from instant_lora.train.loop import train

PROMPT = "test, red square dress"


def unet_output(model, prompt=PROMPT, seed=7):
    """UNet noise prediction for a fixed latent, timestep and prompt (text encoder included)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        hidden = encode_text(model.text_encoder.float(), tokenize(model.tokenizer, [prompt]))
        return model.unet.float()(x, torch.tensor([400]), hidden).sample


def test_loss_falls_against_frozen_baseline(train_set, tmp_path):
    # Same seed = same images, noise and timesteps at every step; lr 0 keeps the LoRA at zero.
    steps = 40
    base = train(tiny_config(train_set, tmp_path / "a", learning_rate=0.0, max_train_steps=steps), model=build_tiny_sd(0))
    trained = train(tiny_config(train_set, tmp_path / "b", learning_rate=1e-2, max_train_steps=steps), model=build_tiny_sd(0))
    assert base.losses[0] == pytest.approx(trained.losses[0], rel=1e-5)  # identical first step: a paired comparison
    half = steps // 2
    base_late = sum(base.losses[half:]) / half
    trained_late = sum(trained.losses[half:]) / half
    assert trained_late < 0.85 * base_late, (base_late, trained_late)


def test_lora_changes_unet_output_and_round_trips(train_set, tmp_path):
    model = build_tiny_sd(0)
    result = train(tiny_config(train_set, tmp_path, max_train_steps=6, network_dim=8, network_alpha=2.0), model=model)
    trained = unet_output(model)
    set_lora_enabled(model.unet, False)
    set_lora_enabled(model.text_encoder, False)
    base = unet_output(model)
    set_lora_enabled(model.unet, True)
    set_lora_enabled(model.text_encoder, True)
    assert (trained - base).abs().max() > 1e-3 * base.abs().max()

    # The file through the WebUI/ComfyUI loader math, W += up @ down * alpha / rank, on a fresh base.
    sd, md = read_lora_file(result.path)
    fresh = build_tiny_sd(0)
    assert torch.equal(unet_output(fresh), base)
    merge_lora(sd, fresh.unet, fresh.text_encoder)
    assert torch.allclose(unet_output(fresh), trained, atol=1e-5, rtol=1e-4)
    assert md["ss_network_dim"] == "8" and md["ss_network_alpha"] == "2.0"
    assert float(sd["lora_unet_down_blocks_0_attentions_0_proj_in.alpha"]) == 2.0


@pytest.mark.parametrize("rank,alpha", [(4, 1.0), (8, 16.0)])
def test_alpha_differs_from_rank(train_set, tmp_path, rank, alpha):
    model = build_tiny_sd(0)
    result = train(tiny_config(train_set, tmp_path, max_train_steps=3, network_dim=rank, network_alpha=alpha,
                               learning_rate=1e-2), model=model)
    trained = unet_output(model)
    sd, _ = read_lora_file(result.path)
    assert all(float(v) == alpha for k, v in sd.items() if k.endswith(".alpha"))
    fresh = build_tiny_sd(0)
    merge_lora(sd, fresh.unet, fresh.text_encoder)
    assert torch.allclose(unet_output(fresh), trained, atol=1e-5, rtol=1e-4)


def test_diffusers_loads_the_file(train_set, tmp_path):
    """diffusers' own kohya reader (needs its PEFT backend: current libraries only)."""
    from diffusers.utils import USE_PEFT_BACKEND

    if not USE_PEFT_BACKEND:
        pytest.skip("diffusers' PEFT backend is off with the WebUI's transformers 4.30")
    from diffusers import StableDiffusionPipeline

    model = build_tiny_sd(0)
    result = train(tiny_config(train_set, tmp_path, max_train_steps=3, network_dim=4, network_alpha=2.0,
                               network_train_unet_only=True), model=model)
    trained = unet_output(model)
    fresh = build_tiny_sd(0)
    pipe = StableDiffusionPipeline(vae=fresh.vae, text_encoder=fresh.text_encoder, tokenizer=fresh.tokenizer, unet=fresh.unet,
                                   scheduler=fresh.noise_scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.load_lora_weights(str(result.path))
    assert torch.allclose(unet_output(fresh), trained, atol=1e-5, rtol=1e-4)


def test_resume_continues_the_same_run(train_set, tmp_path):
    straight = train(tiny_config(train_set, tmp_path / "straight", max_train_steps=4), model=build_tiny_sd(0))
    first = train(tiny_config(train_set, tmp_path / "split", max_train_steps=2, save_state=True), model=build_tiny_sd(0))
    state = tmp_path / "split" / "tiny_lora-state"
    assert (state / "train_state.json").is_file()
    resumed = train(tiny_config(train_set, tmp_path / "split", max_train_steps=4, resume=str(state)), model=build_tiny_sd(0))
    assert resumed.steps == 4 and len(resumed.losses) == 2
    assert resumed.losses == pytest.approx(straight.losses[2:], rel=1e-4)
    a, _ = read_lora_file(straight.path)
    b, _ = read_lora_file(resumed.path)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=1e-4), k
    assert first.steps == 2


def test_resume_refuses_a_different_network(train_set, tmp_path):
    from instant_lora.errors import InstantLoraError

    train(tiny_config(train_set, tmp_path, max_train_steps=1, save_state=True), model=build_tiny_sd(0))
    with pytest.raises(InstantLoraError, match="network_dim"):
        train(tiny_config(train_set, tmp_path, max_train_steps=2, network_dim=8, resume=str(tmp_path / "tiny_lora-state")),
              model=build_tiny_sd(0))


def test_cached_and_uncached_latents_train_identically(train_set, tmp_path):
    a = train(tiny_config(train_set, tmp_path / "a", max_train_steps=3, cache_latents=True), model=build_tiny_sd(0))
    b = train(tiny_config(train_set, tmp_path / "b", max_train_steps=3, cache_latents=False), model=build_tiny_sd(0))
    assert a.losses == pytest.approx(b.losses, rel=1e-4)


def test_disk_cache_is_reused_and_refreshed_when_the_image_changes(train_set, tmp_path):
    from conftest import make_image

    train(tiny_config(train_set, tmp_path / "a", max_train_steps=1, cache_latents_to_disk=True), model=build_tiny_sd(0))
    npz = train_set / "10_test" / "fashion_001_0064x0064_sd.npz"
    assert npz.is_file()
    first = npz.read_bytes()
    make_image(train_set / "10_test" / "fashion_001.png", (10, 200, 10), shape="circle")  # the user edits the image
    train(tiny_config(train_set, tmp_path / "b", max_train_steps=1, cache_latents_to_disk=True), model=build_tiny_sd(0))
    assert npz.read_bytes() != first


def test_unet_only_caches_text_and_saves_unet_keys_only(train_set, tmp_path):
    result = train(tiny_config(train_set, tmp_path, max_train_steps=2, network_train_unet_only=True), model=build_tiny_sd(0))
    sd, md = read_lora_file(result.path)
    assert sd and all(k.startswith("lora_unet_") for k in sd)
    assert md["ss_network_train_unet_only"] == "True"


def test_attn_only_preset(train_set, tmp_path):
    result = train(tiny_config(train_set, tmp_path, max_train_steps=1, network_args=["preset=attn-only"]), model=build_tiny_sd(0))
    sd, _ = read_lora_file(result.path)
    names = {k.split(".")[0] for k in sd}
    assert len([n for n in names if n.startswith("lora_unet")]) == 4 * 8  # 4 transformers x attn1/attn2 x q,k,v,out
    assert not any("proj_in" in n or "_ff_" in n or "mlp" in n for n in names)


def test_cancel_stops_at_the_next_step_and_keeps_the_work(train_set, tmp_path):
    control = TrainControl()
    events = []

    def sink(event):
        events.append(event)
        if getattr(event, "step", 0) == 2 and not isinstance(event, Saved):
            control.request_stop()

    result = train(tiny_config(train_set, tmp_path, max_train_steps=50), model=build_tiny_sd(0), sinks=[sink], control=control)
    assert result.cancelled and result.steps == 2
    assert result.path.name == "tiny_lora-step00000002.safetensors" and result.path.is_file()
    assert not (tmp_path / "tiny_lora.safetensors").exists()


def test_periodic_saves_use_the_reference_names(train_set, tmp_path):
    # 2 images x 10 repeats = 20 steps per epoch at batch 1
    result = train(tiny_config(train_set, tmp_path, max_train_steps=45, save_every_n_epochs=1, save_every_n_steps=30),
                   model=build_tiny_sd(0))
    names = sorted(p.name for p in result.saved)
    assert names == ["tiny_lora-000001.safetensors", "tiny_lora-000002.safetensors",
                     "tiny_lora-step00000030.safetensors", "tiny_lora.safetensors"]
    _, md = read_lora_file(tmp_path / "tiny_lora-000001.safetensors")
    assert md["ss_epoch"] == "1" and md["ss_steps"] == "20"


def test_diverging_run_stops_without_saving_nan(train_set, tmp_path, monkeypatch):
    from instant_lora.errors import InstantLoraError
    from instant_lora.train.loop import Run

    batch_loss = Run._batch_loss
    monkeypatch.setattr(Run, "_batch_loss", lambda self, items, i: batch_loss(self, items, i) * float("nan"))
    with pytest.raises(InstantLoraError, match="NaN"):
        train(tiny_config(train_set, tmp_path, max_train_steps=30, max_grad_norm=0.0), model=build_tiny_sd(0))
    assert not list(tmp_path.glob("*.safetensors"))
    log = next((tmp_path / "logs").glob("*.jsonl")).read_text().splitlines()
    assert json.loads(log[-1])["event"] == "failed" and "NaN" in json.loads(log[-1])["message"]
    assert json.loads(log[-2])["loss"] is None  # a NaN loss is null in the log, which stays valid JSON


def test_gradient_checkpointing_still_trains_the_text_encoder(train_set, tmp_path):
    # transformers 4.30 checkpoints reentrantly: without enable_input_require_grads the TE LoRA gets no gradient.
    result = train(tiny_config(train_set, tmp_path, max_train_steps=2, gradient_checkpointing=True), model=build_tiny_sd(0))
    sd, _ = read_lora_file(result.path)
    te_up = [v for k, v in sd.items() if k.startswith("lora_te_") and k.endswith("lora_up.weight")]
    unet_up = [v for k, v in sd.items() if k.startswith("lora_unet_") and k.endswith("lora_up.weight")]
    assert te_up and all(v.abs().sum() > 0 for v in te_up)  # up starts at zero: non-zero means it trained
    assert all(v.abs().sum() > 0 for v in unet_up)


def test_network_weights_start_from_a_file(train_set, tmp_path):
    first = train(tiny_config(train_set, tmp_path / "a", max_train_steps=2), model=build_tiny_sd(0))
    model = build_tiny_sd(0)
    second = train(tiny_config(train_set, tmp_path / "b", max_train_steps=1, learning_rate=0.0, network_weights=str(first.path)),
                   model=model)
    a, _ = read_lora_file(first.path)
    b, _ = read_lora_file(second.path)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("overrides", [dict(min_snr_gamma=0.05), dict(noise_offset=0.1), dict(clip_skip=2),
                                       dict(lr_scheduler="cosine", lr_warmup_steps=0.5), dict(train_batch_size=2, gradient_accumulation_steps=2)])
def test_options_change_the_run(train_set, tmp_path, overrides):
    plain = train(tiny_config(train_set, tmp_path / "plain", max_train_steps=3), model=build_tiny_sd(0))
    changed = train(tiny_config(train_set, tmp_path / "changed", max_train_steps=3, **overrides), model=build_tiny_sd(0))
    assert all(x == x for x in changed.losses) and changed.steps == 3
    assert changed.losses != pytest.approx(plain.losses, rel=1e-6), overrides


@pytest.mark.parametrize("optimizer,package", [("Prodigy", "prodigyopt"), ("Lion", "lion_pytorch"), ("AdamW8bit", None)])
def test_optional_optimizers(train_set, tmp_path, optimizer, package):
    if package:
        pytest.importorskip(package)
    lr = 1.0 if optimizer == "Prodigy" else 1e-4
    result = train(tiny_config(train_set, tmp_path, max_train_steps=2, optimizer_type=optimizer, learning_rate=lr),
                   model=build_tiny_sd(0))
    assert result.path.is_file()
    _, md = read_lora_file(result.path)
    used = optimizer
    if optimizer == "AdamW8bit" and not (torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes")):
        used = "AdamW"  # falls back, with a warning, where 8-bit AdamW cannot run
    assert md["ss_optimizer"].split("(")[0].endswith("." + used), md["ss_optimizer"]


def test_samples_during_training_use_the_training_model(train_set, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# comment\ntest, red square dress --n blurry --s 3 --d 5\ntest, blue round dress --s 3\n", encoding="utf-8")
    events = []
    result = train(tiny_config(train_set, tmp_path / "out", max_train_steps=4, sample_prompts=str(prompts), sample_every_n_steps=2,
                               sample_at_first=True, sample_sampler="euler_a"), model=build_tiny_sd(0), sinks=[events.append])
    samples = [e for e in events if type(e).__name__ == "Sample"]
    assert [s.step for s in samples] == [0, 0, 2, 2, 4, 4]
    from PIL import Image

    first, last = Image.open(samples[0].path), Image.open(samples[4].path)
    assert first.size == (64, 64) and "Negative prompt: blurry" in first.info["parameters"]
    assert first.tobytes() != last.tobytes()  # same prompt and seed: the LoRA changed the picture
    assert result.path.is_file()


def test_bad_sample_settings_fail_before_training(train_set, tmp_path):
    from instant_lora.errors import InstantLoraError

    with pytest.raises(InstantLoraError, match="sample_prompts"):
        train(tiny_config(train_set, tmp_path, sample_every_n_steps=2), model=build_tiny_sd(0))
    (tmp_path / "p.txt").write_text("a prompt\n")
    with pytest.raises(InstantLoraError, match="sampler"):
        train(tiny_config(train_set, tmp_path, sample_prompts=str(tmp_path / "p.txt"), sample_every_n_steps=2,
                          sample_sampler="nonsense"), model=build_tiny_sd(0))
