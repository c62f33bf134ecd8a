"""Which family a checkpoint is, from its header (and one tensor for SD2's v-prediction), with
files shaped like SD1.5, SD2.x (epsilon and v), SDXL base and refiner, and the tests' tiny model."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from instant_lora.errors import InstantLoraError
from instant_lora.model_family import UNET, detect_family

ATTN = UNET + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
XL_ATTN = UNET + "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
PROBE = UNET + "output_blocks.11.1.transformer_blocks.0.norm1.bias"


def checkpoint(path, tensors):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def sd1(path):
    return checkpoint(path, {ATTN: torch.zeros(320, 768), UNET + "input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
                             "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(768)})


def sd2(path, spread=0.01, extra=None, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return checkpoint(path, {ATTN: torch.zeros(320, 1024), UNET + "input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
                             "cond_stage_model.model.ln_final.weight": torch.zeros(1024),
                             PROBE: (torch.randn(320, generator=g) * spread).to(dtype), **(extra or {})})


def test_sd1_sd2_and_sdxl_are_told_apart(tmp_path):
    one = detect_family(sd1(tmp_path / "sd15.safetensors"))
    assert (one.name, one.prediction, one.label, one.default_resolution) == ("sd1", "epsilon", "SD1.x", 512)
    two = detect_family(sd2(tmp_path / "sd21-base.safetensors"))
    assert (two.name, two.prediction, two.default_resolution) == ("sd2", "epsilon", 512)
    xl = detect_family(checkpoint(tmp_path / "xl.safetensors", {
        XL_ATTN: torch.zeros(640, 2048), UNET + "label_emb.0.0.weight": torch.zeros(1280, 2816),
        "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.zeros(768),
        "conditioner.embedders.1.model.ln_final.weight": torch.zeros(1280)}))
    assert (xl.name, xl.label, xl.default_resolution, len(xl.text_encoders)) == ("sdxl", "SDXL", 1024, 2)


@pytest.mark.parametrize("how", ["statistic", "yaml", "key"])
def test_sd2_v_prediction_is_read_as_the_webui_and_comfyui_read_it(tmp_path, how):
    path = tmp_path / "sd21.safetensors"
    if how == "statistic":
        sd2(path, spread=0.2)  # v models' probe bias spreads wider than 0.09
    elif how == "yaml":
        sd2(path)
        path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n', encoding="utf-8")
    else:
        sd2(path, extra={"v_pred": torch.zeros(1)})
    family = detect_family(path)
    assert (family.prediction, family.label, family.default_resolution) == ("v", "SD2.x (v-prediction)", 768)


def test_an_sdxl_refiner_and_a_non_sd_file_say_what_they_are(tmp_path):
    refiner = checkpoint(tmp_path / "refiner.safetensors", {XL_ATTN: torch.zeros(640, 1280),
                                                           "conditioner.embedders.0.model.ln_final.weight": torch.zeros(1280)})
    with pytest.raises(InstantLoraError, match="SDXL refiner"):
        detect_family(refiner)
    with pytest.raises(InstantLoraError, match="not a Stable Diffusion checkpoint"):
        detect_family(checkpoint(tmp_path / "lora.safetensors", {"lora_unet_x.lora_down.weight": torch.zeros(4, 8)}))
    (tmp_path / "model.ckpt").write_bytes(b"\x80")
    with pytest.raises(InstantLoraError, match="convert the checkpoint"):
        detect_family(tmp_path / "model.ckpt")


def test_the_tiny_model_and_diffusers_folders(tmp_path, tiny_model_dir):
    from ldm_layout import to_ldm_checkpoint

    from instant_lora.tiny import build_tiny_sd

    assert detect_family(tiny_model_dir).name == "sd1"
    single = checkpoint(tmp_path / "tiny.safetensors", to_ldm_checkpoint(build_tiny_sd(0)))
    assert detect_family(single).name == "sd1"  # HF CLIP text encoder, whatever its small width
    folder = tmp_path / "xl-folder"
    for part, name, config in (("unet", "config.json", {"cross_attention_dim": 2048, "addition_embed_type": "text_time"}),
                               ("scheduler", "scheduler_config.json", {"prediction_type": "v_prediction"})):
        (folder / part).mkdir(parents=True)
        (folder / part / name).write_text(json.dumps(config), encoding="utf-8")
    assert (detect_family(folder).name, detect_family(folder).prediction) == ("sdxl", "v")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_the_v_statistic_is_read_from_the_file_bytes_in_any_float_type(tmp_path, dtype):
    from safetensors.torch import load_file

    from instant_lora.model_family import _spread, safetensors_header

    for spread, prediction in ((0.2, "v"), (0.01, "epsilon")):
        path = sd2(tmp_path / f"sd21-{spread}.safetensors", spread=spread, dtype=dtype)
        assert detect_family(path).prediction == prediction
        header, start = safetensors_header(path)
        expected = float(load_file(str(path))[PROBE].float().std(unbiased=False))
        assert _spread(path, header, start)() == pytest.approx(expected, rel=1e-6)


def test_detection_imports_no_torch(tmp_path):
    """The request path reads the family before anything heavy is imported."""
    path = sd2(tmp_path / "sd21.safetensors", spread=0.2, dtype=torch.bfloat16)
    code = ("import sys; from instant_lora.model_family import detect_family; f = detect_family(sys.argv[1]); "
            "assert 'torch' not in sys.modules, 'torch was imported'; print(f.prediction)")
    extension = Path(__file__).resolve().parents[1] / "extension"
    out = subprocess.run([sys.executable, "-c", code, str(path)], cwd=str(extension), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "v"
