"""How much GPU memory a run needs: the part sizes (known per family, or read from a checkpoint's
header), the SDXL 12 GB preset that must fit its card, the settings that move the figure, the
plan's line (CUDA only), a preset made for another family, and the trainable-parameter count the
UI shows for the chosen checkpoint's family. No weights are allocated anywhere here."""

import json

import pytest

from instant_lora.config import TrainConfig
from test_estimate import write_header_only_safetensors
from instant_lora.model_family import ModelFamily
from instant_lora.train import memory_estimate as mem
from instant_lora.train.estimate import Device, estimate_plan, step_time
from instant_lora.train.plan import describe, make_plan

GiB = 2 ** 30
SD1, SD2, SDXL = ModelFamily("sd1"), ModelFamily("sd2", "v"), ModelFamily("sdxl")
RTX3060 = Device("cuda", "NVIDIA GeForce RTX 3060")
CPU2 = Device("cpu", "test CPU", threads=2)


def preset(name):
    from instant_lora.presets import BUILTIN_DIR, load_preset

    return load_preset(BUILTIN_DIR / f"{name}.json")[0]


def plan_with(values=None, family=SD1, images=20, repeats=10, **overrides):
    base = dict(pretrained_model_name_or_path="", train_data_dir="x", network_dim=16, network_alpha=8.0,
                learning_rate=1e-4, max_train_epochs=10, cache_latents=True, mixed_precision="fp16")
    base.update(values or {})
    base.update(overrides)
    return make_plan(TrainConfig(**base), images, images * repeats, cuda=True, seed=1, reference_warnings=False, family=family)


def memory(values=None, family=SD1, **overrides):
    values = {**(values or {}), **overrides}
    return mem.estimate_memory(plan_with(values, family), optimizer=values.get("optimizer_type"))


header_only = write_header_only_safetensors  # the estimate tests' header-only file


# ---- the part sizes are the bundled configs' ------------------------------------------------------

def test_the_known_sizes_are_the_bundled_configs_counted():
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from instant_lora.lora.targets import text_encoder_targets, unet_targets
    from instant_lora.models import BUNDLED_CONFIGS

    def count(model):
        return sum(p.numel() for p in model.parameters())

    def per_rank(model, names):
        modules = dict(model.named_modules())
        return sum(modules[n].weight.shape[0] + modules[n].weight.shape[1] for n in names)

    for family, folder in BUNDLED_CONFIGS.items():
        with init_empty_weights():
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(folder / "unet")))
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(folder / "vae")))
            encoders = [CLIPTextModel(CLIPTextConfig.from_pretrained(str(folder / "text_encoder")))]
            if (folder / "text_encoder_2").is_dir():
                encoders.append(CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(str(folder / "text_encoder_2"))))
        known = mem.FAMILY_SIZES[family]
        assert (count(unet), tuple(count(te) for te in encoders), count(vae)) == (known.unet, known.text_encoders, known.vae)
        for targets in ("default", "attn-only"):
            unet_n, te_n = mem.LORA_PER_RANK[targets][family]
            assert per_rank(unet, unet_targets(unet, targets)) == unet_n
            assert tuple(per_rank(te, text_encoder_targets(te, targets)) for te in encoders) == te_n
    # the public figures the brief names: SD1.5 859.5 M, SD2 865.9 M, SDXL 2567.5 M; CLIP-L 123 M,
    # OpenCLIP-H as SD2 loads it (23 layers) 340 M, bigG 695 M
    assert [round(mem.FAMILY_SIZES[f].unet / 1e5) / 10 for f in ("sd1", "sd2", "sdxl")] == [859.5, 865.9, 2567.5]
    assert [round(n / 1e6) for n in mem.FAMILY_SIZES["sdxl"].text_encoders + mem.FAMILY_SIZES["sd2"].text_encoders] == [123, 695, 340]


# ---- the figures ---------------------------------------------------------------------------------

def test_the_sdxl_12_gb_preset_fits_a_12_gb_card_at_1024():
    values = preset("SDXL 12 GB")
    assert values["resolution"] == "1024,1024" and values["network_train_unet_only"] and values["gradient_checkpointing"]
    m = memory(values, SDXL)
    # kohya's SDXL docs: UNet only, checkpointing, cached TE outputs and latents, Adafactor: 8 GB
    # possible, 10 GB recommended
    assert 6 * GiB < m.peak and m.fits(12), m
    assert m.smallest_card() in (10, 11, 12)
    assert m.peak < 11 * GiB and 7 * GiB < m.training < 8 * GiB  # what its description says
    assert m.weights == pytest.approx(mem.FAMILY_SIZES["sdxl"].unet * 2)  # the text encoders left the GPU
    assert m.lora < 0.5 * GiB and m.activations < 2 * GiB
    # the caching phase holds every part, the VAE in fp32 and one 1024x1024 image's VAE activations
    assert mem.latent_cache_batch(1024, 1024) == 1 and m.caching > m.training


def test_sdxl_without_the_memory_settings_is_far_over_16_gb():
    # diffusers#4470: SDXL's UNet at 1024 needs gradient checkpointing to get under 16 GB
    full = memory({"resolution": "1024,1024", "optimizer_type": "AdamW"}, SDXL)
    assert full.peak > 20 * GiB and not full.fits(16)
    assert full.weights == pytest.approx(mem.FAMILY_SIZES["sdxl"].unet * 2 + sum(mem.FAMILY_SIZES["sdxl"].text_encoders) * 2)
    unet_only_gc = memory({"resolution": "1024,1024", "gradient_checkpointing": True, "network_train_unet_only": True}, SDXL)
    assert unet_only_gc.peak < 12 * GiB < full.peak
    # sd-scripts#661: text encoders trained too, rank 32, Adafactor, checkpointing: a 12 GB card
    both = memory({"resolution": "1024,1024", "gradient_checkpointing": True, "network_dim": 32, "optimizer_type": "Adafactor"},
                  SDXL, mixed_precision="bf16")
    assert both.fits(12) and both.training > unet_only_gc.training


def test_sd15_balanced_fits_easily_and_each_setting_moves_the_figure():
    balanced = preset("Balanced")
    m = memory(balanced, SD1)
    assert 3 * GiB < m.peak < 6 * GiB and m.fits(6) and m.fits(12)  # SD1.5 LoRA at 512 fits 6-8 GB
    gc = memory(balanced, SD1, gradient_checkpointing=True)
    assert gc.activations < m.activations / 3 and gc.training < m.training - GiB and gc.peak <= m.peak
    # caching two 512 px images at once (the VAE in fp32) now needs about what the training does
    assert mem.latent_cache_batch(512, 512) == 2 and gc.peak == gc.caching
    assert memory(balanced, SD1, train_batch_size=2).activations == pytest.approx(2 * m.activations, rel=0.05)
    assert memory(balanced, SD1, resolution="768,768").activations == pytest.approx(2.25 * m.activations, rel=0.05)
    eightbit = memory(balanced, SD1, optimizer_type="AdamW8bit")
    assert eightbit.lora < m.lora and memory(balanced, SD1, optimizer_type="Adafactor").lora < eightbit.lora
    assert memory(balanced, SD1, network_dim=64).lora == pytest.approx(4 * m.lora, rel=0.01)
    assert memory(balanced, SD1, mixed_precision="no").weights == pytest.approx(2 * m.weights)
    low = memory(preset("Low VRAM (6 GB)"), SD1)
    assert low.fits(6) and low.training < gc.training < m.training


def test_a_frozen_text_encoder_stays_on_the_gpu_only_when_captions_change():
    values = {"resolution": "1024,1024", "gradient_checkpointing": True, "network_train_unet_only": True}
    fixed = mem.estimate_memory(plan_with(values, SDXL))
    varying = mem.estimate_memory(plan_with(values, SDXL), captions_vary=True)
    assert varying.weights - fixed.weights == pytest.approx(sum(mem.FAMILY_SIZES["sdxl"].text_encoders) * 2)
    assert varying.lora == fixed.lora  # no text-encoder LoRA is trained either way


def test_no_cached_latents_keeps_the_vae_on_the_gpu():
    cached = memory(preset("Balanced"), SD1)
    uncached = memory(preset("Balanced"), SD1, cache_latents=False)
    assert uncached.caching == 0 and uncached.training > cached.training + mem.FAMILY_SIZES["sd1"].vae * 4


# ---- the plan's text ----------------------------------------------------------------------------------

def test_the_plan_says_the_memory_on_cuda_and_nothing_on_the_cpu():
    plan = plan_with(preset("SDXL 12 GB"), SDXL)
    e = estimate_plan(plan, RTX3060, optimizer="Adafactor")
    text = "\n".join(describe(plan, estimate=e))
    assert "GPU memory: about" in text and "fits a 1" in text, text
    assert "while caching latents" in text and "weights 4.8" in text  # 2.57 B parameters in bf16 = 4.8 GiB
    known = estimate_plan(plan, Device("cuda", "NVIDIA GeForce RTX 3060", memory=12 * GiB), optimizer="Adafactor")
    assert "fits this GPU's 12 GB" in "\n".join(known.lines()) and not known.memory_advice
    small = estimate_plan(plan_with({"resolution": "1024,1024"}, SDXL), Device("cuda", "RTX 4060", memory=8 * GiB))
    text = "\n".join(small.lines(markdown=True))
    assert "more than this GPU's 8 GB" in text and "Gradient checkpointing" in small.memory_advice
    assert "UNet only" in small.memory_advice and "Adafactor" in small.memory_advice
    cpu_plan = make_plan(TrainConfig(train_data_dir="x", resolution="1024,1024", network_dim=16), 20, 200, cuda=False, family=SDXL)
    cpu = estimate_plan(cpu_plan, CPU2)
    assert cpu.memory is None and not any("GPU memory" in line or "VRAM" in line for line in cpu.lines())


def test_the_sdxl_step_is_scaled_from_the_sd15_figures():
    sd15 = step_time(RTX3060, width=512, height=512, train_text_encoder=False)
    xl = step_time(RTX3060, width=1024, height=1024, train_text_encoder=False, family="sdxl")
    assert "SDXL scaled from these SD1.5 figures" in xl.source and "public reports" in xl.source
    assert xl.seconds == pytest.approx(2.2 * (sd15.seconds - 0.02) + 0.02, rel=0.01)
    assert step_time(RTX3060, width=512, height=512, family="sdxl").seconds > step_time(RTX3060).seconds
    cpu = step_time(CPU2, width=512, height=512, family="sdxl", train_text_encoder=False)
    assert "FLOPs per pixel" in cpu.source
    assert cpu.seconds > 1.9 * step_time(CPU2, width=512, height=512, train_text_encoder=False).seconds
    # the plan: SDXL's known sizes when no file can be read, its second text encoder trained too
    e = estimate_plan(plan_with({"resolution": "1024,1024"}, SDXL), RTX3060)
    assert "assumed SDXL's parts" in e.model_note and "SDXL scaled" in e.step.source


# ---- the sizes from a checkpoint's header -----------------------------------------------------------------

def test_the_part_sizes_come_from_the_header(tmp_path):
    single = header_only(tmp_path / "tiny.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": [32, 4, 3, 3],
        "model.diffusion_model.out.2.weight": [4, 32, 3, 3],
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": [1000, 32],
        "cond_stage_model.transformer.text_model.embeddings.position_ids": [1, 77],  # a buffer, not loaded
        "first_stage_model.encoder.conv_in.weight": [32, 3, 3, 3],
    })
    sizes = mem.read_part_sizes(single)
    assert sizes == mem.PartSizes(2 * 32 * 4 * 9, (32_000,), 32 * 27, "the checkpoint's header")
    plan = plan_with({"pretrained_model_name_or_path": str(single), "resolution": "64,64"}, None)
    m = mem.estimate_memory(plan)
    assert m.sizes == sizes and m.family == "sd1" and m.peak < 1.0 * GiB  # the CUDA context, a little more
    assert m.weights == pytest.approx((sizes.unet + sizes.text_encoder_total) * 2)
    # an SDXL file: two text encoders, SD2's OpenCLIP 24th layer not counted, a diffusers folder too
    xl = header_only(tmp_path / "xl.safetensors", {
        "model.diffusion_model.x": [2_567_463_684], "conditioner.embedders.0.transformer.x": [123_060_480],
        "conditioner.embedders.1.model.x": [694_659_840], "first_stage_model.x": [83_653_863]})
    known = mem.FAMILY_SIZES["sdxl"]
    assert mem.read_part_sizes(xl) == mem.PartSizes(known.unet, known.text_encoders, known.vae, "the checkpoint's header")
    assert mem.part_sizes(plan_with({"pretrained_model_name_or_path": str(xl)}, None))[1] == "sdxl"
    two = header_only(tmp_path / "sd2.safetensors", {
        "model.diffusion_model.x": [100], "cond_stage_model.model.transformer.resblocks.22.attn.in_proj_weight": [30, 10],
        "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight": [30, 10]})
    assert mem.read_part_sizes(two).text_encoders == (300,) and mem.read_part_sizes(two).vae == 0
    folder = tmp_path / "diffusers"
    for sub, n in (("unet", 1000), ("text_encoder", 200), ("text_encoder_2", 300), ("vae", 50)):
        header_only(folder / sub / ("model.safetensors" if sub.startswith("text") else "diffusion_pytorch_model.safetensors"),
                    {"w": [n]})
    assert mem.read_part_sizes(folder) == mem.PartSizes(1000, (200, 300), 50, "the checkpoint's header")
    for bad in ("missing.safetensors", "old.ckpt"):
        (tmp_path / "old.ckpt").write_bytes(b"x")
        assert mem.read_part_sizes(tmp_path / bad) is None


def test_the_tiny_models_header_gives_its_own_sizes(tiny_model_dir):
    from diffusers import UNet2DConditionModel

    from instant_lora.tiny import TINY_UNET

    sizes = mem.read_part_sizes(tiny_model_dir)
    assert sizes.unet == sum(p.numel() for p in UNet2DConditionModel(**TINY_UNET).parameters())
    plan = plan_with({"pretrained_model_name_or_path": str(tiny_model_dir), "resolution": "64,64"}, SD1)
    e = estimate_plan(plan, RTX3060)
    assert e.memory.sizes.unet == sizes.unet and e.memory.peak < 1.0 * GiB
    # transformers 4.30 saves the text encoder as .bin (no header to read): SD1.5's, scaled like the UNet
    assert e.memory.sizes.text_encoder_total < 5e6  # read: 1.6 M (its 49408-token embedding)


# ---- presets made for one family ------------------------------------------------------------------

def test_a_preset_made_for_sdxl_warns_with_another_family(tmp_path):
    from instant_lora.errors import InstantLoraError
    from instant_lora.presets import BUILTIN_DIR, family_mismatch, load_preset, preset_family

    values, description = load_preset(BUILTIN_DIR / "SDXL 12 GB.json")
    assert "for_family" not in values and TrainConfig(**values)  # a meta key, not a setting
    for word in ("12 GB", "UNet only", "checkpointing", "cached", "Adafactor", "bf16", "Batch 1", "rank 16", "alpha 8"):
        assert word.lower() in description.lower(), word
    assert preset_family("SDXL 12 GB") == "sdxl" and preset_family(BUILTIN_DIR / "SDXL 12 GB.json") == "sdxl"
    assert preset_family("Balanced") is None and preset_family("no such preset") is None and preset_family(None) is None
    assert preset_family({"for_family": "sd2"}) == "sd2"
    warning = family_mismatch("SDXL 12 GB", SD1)
    assert 'preset "SDXL 12 GB" is made for SDXL checkpoints and this one is SD1.x' in warning and "Balanced" in warning
    assert family_mismatch("SDXL 12 GB", "sd2") and family_mismatch("SDXL 12 GB", SDXL) is None
    assert family_mismatch("SDXL 12 GB", None) is None and family_mismatch("Balanced", SD1) is None
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"description": "x", "for_family": "sd3", "network_dim": 8}))
    with pytest.raises(InstantLoraError, match="for_family 'sd3'"):
        load_preset(bad)
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"description": "x", "for_family": "sd1", "network_dim": 8}))
    assert preset_family("mine", user_dir=tmp_path) == "sd1" and family_mismatch("mine", SDXL, user_dir=tmp_path)


# ---- the UI's trainable-parameter line follows the checkpoint ------------------------------------------------

def test_the_trainable_parameters_are_counted_for_the_checkpoints_family(tmp_path):
    from instant_lora.host.standalone import StandaloneHost
    from instant_lora.ui.handlers.run import RunForm, live_plan, lora_parameter_count

    sdxl = mem.FAMILY_SIZES["sdxl"]
    unet_n, te_n = mem.LORA_PER_RANK["default"]["sdxl"]
    assert lora_parameter_count(16, "default", True, "sdxl") == (16 * (unet_n + sum(te_n)), sdxl.unet + sdxl.text_encoder_total)
    assert lora_parameter_count(8, "default", False, "sdxl")[0] == 8 * unet_n
    sd2_unet, sd2_te = mem.LORA_PER_RANK["attn-only"]["sd2"]
    assert lora_parameter_count(4, "attn-only", True, "sd2")[0] == 4 * (sd2_unet + sum(sd2_te))
    assert lora_parameter_count(16, "default", True)[1] == mem.FAMILY_SIZES["sd1"].unet + 123_060_480
    models = tmp_path / "models"
    header_only(models / "xl.safetensors", {
        "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight": [640, 2048],
        "model.diffusion_model.label_emb.0.0.weight": [1280, 2816],
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": [768],
        "conditioner.embedders.1.model.ln_final.weight": [1280]})
    (models / "empty.safetensors").write_bytes(b"")
    host = StandaloneHost(models_dir=models, lora_dir=tmp_path / "loras", data_dir=tmp_path / "data")
    # read from the file's header; SDXL trains its UNet only by default
    line = next(ln for ln in live_plan(host, RunForm(checkpoint="xl.safetensors"), None).split("\n\n")
                if ln.startswith("trainable"))
    assert f"**{16 * unet_n / 1e6:.2f} M** parameters" in line and "of SDXL's" in line, line
