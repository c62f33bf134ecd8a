"""Merging LoRAs into a loaded model and restoring it exactly; finding LoRA files by name/alias."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_sample_support import assert_bit_identical, model_state, random_lora_state_dict, write_lora

from instant_lora.errors import InstantLoraError
from instant_lora.lora.kohya_file import TE_PREFIX, kohya_name
from instant_lora.sample.apply import LoraMerger
from instant_lora.sample.lora_files import LoraLibrary
from instant_lora.tiny import build_tiny_sd

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    return build_tiny_sd(0)


def test_100_apply_restore_cycles_leave_the_base_bit_identical(model):
    before = model_state(model)
    loras = [random_lora_state_dict(model, seed=s, rank=r, alpha=a) for s, r, a in [(1, 4, 2.0), (2, 8, 8.0), (3, 2, 1.0)]]
    merger = LoraMerger(model.unet, model.text_encoder)
    for i in range(100):
        w = [1.0, -0.7, 0.4, 2.5][i % 4]
        assert merger.apply(loras[i % 3], unet_weight=w, te_weight=w / 2) > 0
        if i % 2:
            merger.apply(loras[(i + 1) % 3], unet_weight=0.3)  # two LoRAs at once
        merger.restore()
    assert_bit_identical(before, model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_cycles_on_cuda_are_exact():
    m = build_tiny_sd(0)
    for net in (m.unet, m.text_encoder, m.vae):
        net.to("cuda", torch.float16)
    before = model_state(m)
    sd = random_lora_state_dict(m, seed=1)
    for backup in (None, "cpu"):
        merger = LoraMerger(m.unet, m.text_encoder, backup_device=backup)
        for _ in range(100):
            merger.apply(sd, 0.8)
            merger.restore()
    assert_bit_identical(before, m)


def test_merge_is_the_loaders_formula_module_by_module(model):
    """W + up @ down * alpha / rank * weight, written out here per module (UNet at 0.6, text
    encoder at 0.2), against what the merger leaves in the model."""
    sd = random_lora_state_dict(model, seed=4, rank=4, alpha=3.0)
    before = {n: m.weight.detach().clone() for prefix, net in (("lora_unet", model.unet), (TE_PREFIX, model.text_encoder))
              for path, m in net.named_modules() if path and (n := kohya_name(prefix, path)) + ".alpha" in sd}
    assert len(before) == len({k.split(".")[0] for k in sd})
    with LoraMerger(model.unet, model.text_encoder) as merger:
        merger.apply(sd, unet_weight=0.6, te_weight=0.2)
        after = {n: m.weight for prefix, net in (("lora_unet", model.unet), (TE_PREFIX, model.text_encoder))
                 for path, m in net.named_modules() if path and (n := kohya_name(prefix, path)) in before}
        for name, w0 in before.items():
            down, up, alpha = sd[name + ".lora_down.weight"], sd[name + ".lora_up.weight"], float(sd[name + ".alpha"])
            weight = 0.2 if name.startswith(TE_PREFIX) else 0.6
            expected = w0 + (up.flatten(1) @ down.flatten(1)).reshape(w0.shape) * alpha / down.shape[0] * weight
            assert torch.allclose(after[name], expected, rtol=0, atol=1e-6), name


def test_weight_zero_touches_nothing_and_split_weights_touch_one_side(model):
    sd = random_lora_state_dict(model, seed=5)
    before = model_state(model)
    merger = LoraMerger(model.unet, model.text_encoder)
    assert merger.apply(sd, unet_weight=0.0, te_weight=0.0) == 0
    assert not merger.active
    assert_bit_identical(before, model)
    n_unet = sum(1 for k in sd if k.startswith("lora_unet_") and k.endswith(".alpha"))
    assert merger.apply(sd, unet_weight=1.0, te_weight=0.0) == n_unet
    te_after = {k: v.clone() for k, v in model.text_encoder.state_dict().items()}
    assert all(torch.equal(te_after[k], before["te." + k]) for k in te_after)
    merger.restore()
    assert_bit_identical(before, model)


def test_a_lora_for_another_model_is_refused_before_any_change(model):
    before = model_state(model)
    sd = random_lora_state_dict(model, seed=6)
    sd["lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight"] = torch.zeros(4, 32)
    sd["lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight"] = torch.zeros(32, 4)
    merger = LoraMerger(model.unet, model.text_encoder)
    with pytest.raises(InstantLoraError, match="match nothing"):
        merger.apply(sd, 1.0, source="foreign.safetensors")
    wrong = random_lora_state_dict(model, seed=7)
    key = next(k for k in wrong if k.endswith("attn2_to_k.lora_down.weight"))
    wrong[key] = torch.zeros(4, 768)  # SD1.5's cross-attention width on the tiny model
    with pytest.raises(InstantLoraError, match="does not fit"):
        merger.apply(wrong, 1.0)
    assert not merger.active
    assert_bit_identical(before, model)


def test_library_finds_stems_and_aliases(model, tmp_path):
    lib_dir = tmp_path / "Lora"
    for stem, alias in [("run", "run"), ("run-000001", "run"), ("run-000002", "run"), ("renamed_file", "nice_alias"),
                        ("sub/deep", "deep")]:
        write_lora(lib_dir / f"{stem}.safetensors", model, output_name=alias, rank=2)
    (lib_dir / ".run.12.tmp.safetensors").write_bytes(b"partial")  # an atomic write in progress: never listed
    (lib_dir / "broken.safetensors").write_bytes(b"not a safetensors file")
    lib = LoraLibrary(lib_dir)
    assert lib.find("run").path.name == "run.safetensors"  # the stem wins over the epoch files' shared alias
    assert lib.find("run-000002").path.name == "run-000002.safetensors"
    assert lib.find("nice_alias").path.name == "renamed_file.safetensors"
    assert lib.find("renamed_file").name == "renamed_file"
    assert lib.find("deep").path.parent.name == "sub"
    assert lib.find("NICE_ALIAS").name == "renamed_file"  # case-insensitive when unique
    assert [p.name for p in lib.unreadable] == ["broken.safetensors"]
    with pytest.raises(InstantLoraError, match="did you mean 'run-000001'"):
        lib.find("run-00001")
    with pytest.raises(InstantLoraError, match="did you mean 'nice_alias'"):
        lib.find("nice_alais")
    # A file saved after the library was built is found without a manual refresh (as in the WebUI).
    write_lora(lib_dir / "new_one.safetensors", model, rank=2)
    assert lib.find("new_one").name == "new_one"


def test_library_reloads_a_rewritten_file(model, tmp_path):
    path = write_lora(tmp_path / "x.safetensors", model, rank=2, seed=1)
    lib = LoraLibrary(tmp_path)
    first = lib.load(lib.find("x"))
    assert lib.load(lib.find("x")) is first  # cached
    import os

    write_lora(path, model, rank=2, seed=2)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = lib.load(lib.find("x"))
    key = next(k for k in first if k.endswith("lora_down.weight"))
    assert second is not first and not torch.equal(second[key], first[key])


def test_library_errors(tmp_path):
    with pytest.raises(InstantLoraError, match="LoRA folder not found"):
        LoraLibrary(tmp_path / "missing")
    with pytest.raises(InstantLoraError, match="no .safetensors"):
        LoraLibrary(tmp_path).find("anything")


def test_light_modules_do_not_import_torch():
    code = ("import sys; sys.path.insert(0, 'extension'); import instant_lora.sample, instant_lora.sample.grid, "
            "instant_lora.sample.infotext, instant_lora.sample.lora_files, instant_lora.sample.generate, "
            "instant_lora.sample.apply, instant_lora.generate_cli; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
