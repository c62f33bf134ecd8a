"""How long a run will take, said before it starts: the GPU table, the scaling by the run's
settings, the CPU's honest "hours" with the Quick test alternative, the model's size read from a
file header alone, and the plan's text. No torch needed except for the tiny model's fixture."""

import json
import struct

import pytest

from instant_lora.config import TrainConfig
from instant_lora.train import estimate as est
from instant_lora.train.estimate import Device, estimate_plan, gpu_entry, step_time, unet_parameter_count
from instant_lora.train.plan import describe, make_plan

CPU2 = Device("cpu", "test CPU", threads=2)
RTX3090 = Device("cuda", "NVIDIA GeForce RTX 3090")


def plan_for(num_images=20, repeats=10, cuda=False, **values):
    base = dict(pretrained_model_name_or_path="", train_data_dir="x", network_dim=16, network_alpha=8.0,
                learning_rate=1e-4, max_train_epochs=10, cache_latents=True, mixed_precision="fp16")
    base.update(values)
    return make_plan(TrainConfig(**base), num_images, num_images * repeats, cuda=cuda, seed=1, reference_warnings=False)


def write_header_only_safetensors(path, tensors: dict):
    """A .safetensors file with a header that declares `tensors` ({name: shape}, fp16) and no
    tensor data at all: anything that read a weight would fail."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in tensors.items():
        size = 2
        for d in shape:
            size *= d
        header[name] = {"dtype": "F16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


# ---- the table ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, label", [
    ("NVIDIA GeForce RTX 4090", "RTX 4090"), ("NVIDIA GeForce RTX 3060", "RTX 3060"),
    ("NVIDIA GeForce RTX 3060 Ti", "RTX 3060 Ti"), ("NVIDIA GeForce RTX 4060 Ti", "RTX 4060 Ti"),
    ("NVIDIA A100-SXM4-80GB", "A100"), ("NVIDIA A10G", "A10G"), ("Tesla T4", "T4"), ("NVIDIA H100 80GB HBM3", "H100"),
    ("NVIDIA GeForce RTX 2080 Ti", "RTX 2080 (Ti)"), ("NVIDIA L4", "L4"), ("NVIDIA L40S", "L40/L40S"),
])
def test_gpu_names_find_their_row(name, label):
    assert gpu_entry(name)[0] == label


def test_an_unknown_gpu_is_said_to_be_assumed_and_the_table_is_ordered():
    assert gpu_entry("Matrox Millennium") is None
    t = step_time(Device("cuda", "Matrox Millennium"))
    assert "not in the table" in t.source and t.seconds == pytest.approx(est.UNKNOWN_GPU[1] + est.FLOOR_S)
    keys = [k for k, _, _ in est.GPU_TABLE]
    for longer, shorter in (("a100", "a10"), ("4060 ti", "4060"), ("3060 ti", "3060"), ("5070 ti", "5070")):
        assert keys.index(longer) < keys.index(shorter)
    assert all(0.05 < s < 5 for _, _, s in est.GPU_TABLE)
    # a faster card has a smaller figure where the sources rank them
    assert gpu_entry("RTX 4090")[1] < gpu_entry("RTX 3090")[1] < gpu_entry("RTX 3060")[1]


# ---- scaling ----------------------------------------------------------------------------------------

def test_the_step_scales_with_the_runs_settings():
    base = step_time(RTX3090).seconds
    assert base == pytest.approx(0.55 + est.FLOOR_S)
    assert "table: RTX 3090" in step_time(RTX3090).source and "512x512, batch 1" in step_time(RTX3090).source
    assert step_time(RTX3090, width=1024, height=1024).seconds == pytest.approx(base * 3.7, rel=0.05)  # 4x the UNet's pixels
    assert base < step_time(RTX3090, batch_size=2).seconds < 2 * base
    assert step_time(RTX3090, accumulation=3).seconds == pytest.approx(3 * (base - est.FLOOR_S) + est.FLOOR_S)
    assert step_time(RTX3090, gradient_checkpointing=True).seconds == pytest.approx(base * 1.25, rel=0.02)
    assert step_time(RTX3090, train_text_encoder=False).seconds < base
    assert step_time(RTX3090, precision="no").seconds == pytest.approx(2 * base, rel=0.05)
    assert step_time(RTX3090, cache_latents=False).seconds > base
    assert step_time(RTX3090, model_scale=0.5).seconds == pytest.approx(base / 2, rel=0.05)


def test_the_cpu_figure_is_the_measurement_scaled_by_threads():
    measured = est.CPU_MEASURED["unet_te"][512]
    t = step_time(CPU2)
    assert t.seconds == pytest.approx(measured + est.FLOOR_S)
    assert "measured" in t.source and "2 threads" in t.source and "scaled to" not in t.source.split(";")[0]
    four = step_time(Device("cpu", threads=4))
    assert four.seconds == pytest.approx(measured / 2 ** 0.9 + est.FLOOR_S) and "this machine's 4 threads" in four.source
    one = step_time(Device("cpu", threads=1), width=256, height=256)
    assert one.seconds == pytest.approx(9.3, rel=0.05)  # measured: 9.3 s at 1 thread
    assert "this machine's 1 thread;" in one.source
    assert step_time(CPU2, width=256, height=256).seconds == pytest.approx(est.CPU_MEASURED["unet_te"][256] + est.FLOOR_S)
    assert step_time(CPU2, batch_size=2).seconds == pytest.approx(2 * measured + est.FLOOR_S)
    assert t.vae_image_s == pytest.approx(est.CPU_MEASURED["vae"][512] + est.FLOOR_S)  # caching one latent
    assert step_time(CPU2, cache_latents=False).seconds == pytest.approx(t.seconds + est.CPU_MEASURED["vae"][512])


def test_durations_read_plainly():
    assert [est.format_duration(s) for s in (0.2, 42, 300, 4000, 6000, 19700, 50 * 3600)] == \
        ["1 s", "42 s", "5 min", "1 h 10 min", "1 h 40 min", "5 h 30 min", "50 h"]


# ---- a whole run ------------------------------------------------------------------------------------

def test_a_full_size_run_on_a_cpu_says_hours_and_offers_the_quick_test():
    plan = plan_for(num_images=20, repeats=10)  # 2000 steps at 512, UNet + text encoder
    e = estimate_plan(plan, CPU2)
    assert e.takes_hours and e.total_s > 2000 * est.CPU_MEASURED["unet_te"][512]
    text = "\n".join(e.lines())
    assert "On this CPU this run will take hours" in text, text
    assert '"Quick test" preset (200 steps) with Resolution 256' in text
    what, seconds = e.alternative
    assert seconds < e.total_s / 10
    assert f"about {est.format_duration(seconds)} here" in text
    assert "assumed SD1.5's UNet" in text  # no model file to read
    # the same run on a GPU: no warning, no alternative
    g = estimate_plan(plan_for(num_images=20, repeats=10, cuda=True), RTX3090)
    assert not g.takes_hours and g.alternative is None and "hours" not in "\n".join(g.lines())


def test_a_run_that_is_already_short_gets_no_alternative():
    plan = plan_for(num_images=5, repeats=1, max_train_epochs=None, max_train_steps=200, resolution="256,256",
                    network_train_unet_only=True)
    e = estimate_plan(plan, CPU2)
    assert e.alternative is None and not e.takes_hours


def test_the_tiny_model_estimates_seconds(tiny_model_dir):
    from diffusers import UNet2DConditionModel

    from instant_lora.tiny import TINY_UNET

    params = unet_parameter_count(tiny_model_dir)
    assert params == sum(p.numel() for p in UNet2DConditionModel(**TINY_UNET).parameters())
    plan = plan_for(num_images=2, repeats=10, pretrained_model_name_or_path=str(tiny_model_dir), resolution="64,64",
                    max_train_epochs=None, max_train_steps=40)
    e = estimate_plan(plan, CPU2)
    assert e.total_s < 60 and not e.takes_hours and e.alternative is None
    assert "UNet" in e.model_note and "x SD1.5's" in e.model_note


def test_the_unet_size_comes_from_the_header_alone(tmp_path):
    single = write_header_only_safetensors(tmp_path / "model.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3],
        "model.diffusion_model.out.2.weight": [4, 320, 3, 3],
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": [49408, 768],
        "first_stage_model.encoder.conv_in.weight": [128, 3, 3, 3],
    })
    assert single.stat().st_size < 2000  # the header only: the 75 MB of declared tensors are not there
    assert unet_parameter_count(single) == 2 * 320 * 4 * 9
    big = write_header_only_safetensors(tmp_path / "sd15.safetensors", {"model.diffusion_model.x": [est.SD15_UNET_PARAMS]})
    assert unet_parameter_count(big) == est.SD15_UNET_PARAMS
    folder = tmp_path / "diffusers"
    write_header_only_safetensors(folder / "unet" / "diffusion_pytorch_model.safetensors", {"conv_in.weight": [320, 4, 3, 3]})
    assert unet_parameter_count(folder) == 320 * 4 * 9
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "old.ckpt").write_bytes(b"not read")
    (tmp_path / "junk.safetensors").write_bytes(struct.pack("<Q", 10 ** 12) + b"{}")
    for name in ("empty.safetensors", "old.ckpt", "junk.safetensors", "missing.safetensors"):
        assert unet_parameter_count(tmp_path / name) is None
    assert unet_parameter_count("runwayml/stable-diffusion-v1-5") is None


def test_the_plan_text_says_how_long_and_where_the_figure_comes_from():
    from instant_lora.train.sampling import parse_prompt_text

    plan = make_plan(TrainConfig(pretrained_model_name_or_path="", train_data_dir="x", network_dim=16, network_alpha=8.0,
                                 learning_rate=1e-4, max_train_epochs=10, cache_latents=True, mixed_precision="fp16",
                                 sample_every_n_steps=500, sample_prompt_text="a cat"),
                     20, 200, cuda=True, seed=1, reference_warnings=False, sample_prompts=tuple(parse_prompt_text("a cat")))
    e = estimate_plan(plan, RTX3090)
    lines = describe(plan, estimate=e)
    text = "\n".join(lines)
    assert lines[:len(describe(plan))] == describe(plan)  # the estimate is added, nothing else changes
    assert f"2,000 steps x ~{est.format_seconds(e.step.seconds)}/step" in text
    assert "caching 20 latents" in text and "samples ~" in text and "loading ~" in text
    assert "s/step: table: RTX 3090 (public user reports, approximate)" in text and "Approximate" in text
    assert "**" not in text and "**" in "\n".join(describe(plan, estimate=e, markdown=True))
    assert e.total_s == pytest.approx(2000 * e.step.seconds + e.load_s + e.cache_s + e.sample_s)
    assert 15 * 60 < e.total_s < 30 * 60  # 2000 steps of about 0.57 s


def test_the_quick_test_preset_keeps_its_promise():
    from instant_lora.presets import BUILTIN_DIR, load_preset

    values, description = load_preset(BUILTIN_DIR / "Quick test.json")
    assert values["max_train_steps"] == 200 and values["max_train_epochs"] is None
    assert "200 steps" in description and "CPU" in description and "estimate" in description
    for images in (3, 300):  # a fixed number of steps whatever the dataset
        config = TrainConfig(**{**{"network_dim": 16, "max_train_epochs": 10, "save_every_n_epochs": 2}, **values,
                                "train_data_dir": "x"})
        plan = make_plan(config, images, images * 10, cuda=True, seed=1, reference_warnings=False)
        assert plan.max_train_steps == 200 and not plan.intermediate_saves
        assert estimate_plan(plan, RTX3090).total_s < 5 * 60  # "a few minutes on a CUDA GPU"
    for name in ("Balanced", "Low VRAM (6 GB)"):
        values, description = load_preset(BUILTIN_DIR / f"{name}.json")
        assert values["network_alpha"] <= values["network_dim"] and values["learning_rate"] >= 5e-5
        assert f"rank {values['network_dim']}" in description.lower() and f"alpha {values['network_alpha']:g}" in description


def test_the_estimate_never_needs_torch_at_import():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    code = ("import sys; sys.path.insert(0, 'extension'); import instant_lora.train.estimate as e, instant_lora.train.plan; "
            "print('torch' in sys.modules, e.estimate_plan is not None)")
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert out.stdout.strip() == "False True", out.stderr
