"""Base-model loading: SD1.x single files offline, .ckpt safely, diffusers folders, clear errors."""

import socket

import pytest
import torch

from instant_lora.errors import InstantLoraError
from instant_lora.models import load_sd_model
from instant_lora.tiny import build_tiny_sd, save_diffusers_folder
from instant_lora.tokenizer import load_sd_tokenizer


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def test_tokenizer_has_sd15_ids_offline(no_network):
    tok = load_sd_tokenizer()
    ids = tok("a photo of a cat", padding="max_length", max_length=77, truncation=True).input_ids
    # The ids SD1.5's tokenizer (openai/clip-vit-large-patch14) gives for this prompt.
    assert ids[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(ids) == 77 and ids[-1] == 49407 and tok.pad_token_id == 49407
    assert len(tok) == 49408


@pytest.fixture
def tiny_ldm_file(tmp_path):
    """The tiny model in the original single-file layout, plus its diffusers config folder."""
    from ldm_layout import to_ldm_checkpoint
    from safetensors.torch import save_file

    model = build_tiny_sd(5)
    save_diffusers_folder(model, tmp_path / "config")
    path = tmp_path / "tiny-v1.safetensors"
    save_file(to_ldm_checkpoint(model), str(path))
    return model, path, tmp_path / "config"


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_single_file_loads_with_network_disabled(tiny_ldm_file, no_network):
    original, path, config = tiny_ldm_file
    loaded = load_sd_model(path, config_dir=config)
    assert_same_weights(original.unet, loaded.unet)
    assert_same_weights(original.vae, loaded.vae)
    assert_same_weights(original.text_encoder, loaded.text_encoder)
    assert loaded.name == "tiny-v1.safetensors" and loaded.legacy_hash


def test_ckpt_loads_tensors_only(tiny_ldm_file, tmp_path, no_network):
    original, path, config = tiny_ldm_file
    from safetensors.torch import load_file

    ckpt = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(str(path))}, ckpt)
    loaded = load_sd_model(ckpt, config_dir=config)
    assert_same_weights(original.unet, loaded.unet)


class Payload:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def test_ckpt_with_pickled_code_is_refused(tmp_path, capsys):
    bad = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": Payload()}, bad)
    with pytest.raises(InstantLoraError, match="pickled Python objects") as e:
        load_sd_model(bad)
    assert ".safetensors" in e.value.hint
    assert "pickled code ran" not in capsys.readouterr().out


def test_text_encoder_with_missing_weights_is_an_error_not_random_weights(tiny_ldm_file, tmp_path):
    from safetensors.torch import load_file, save_file

    _, path, config = tiny_ldm_file
    sd = load_file(str(path))
    sd = {k: v for k, v in sd.items() if "encoder.layers.1." not in k}
    broken = tmp_path / "broken.safetensors"
    save_file(sd, str(broken))
    with pytest.raises(InstantLoraError, match="text encoder is incomplete"):
        load_sd_model(broken, config_dir=config)


def test_non_sd1_files_get_a_clear_message(tmp_path):
    from safetensors.torch import save_file

    xl = tmp_path / "sdxl.safetensors"
    save_file({"conditioner.embedders.0.x": torch.zeros(1), "model.diffusion_model.x": torch.zeros(1)}, str(xl))
    with pytest.raises(InstantLoraError, match="SDXL"):
        load_sd_model(xl)
    lora = tmp_path / "some_lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(1)}, str(lora))
    with pytest.raises(InstantLoraError, match="not a Stable Diffusion checkpoint"):
        load_sd_model(lora)


def test_diffusers_folder(tmp_path, no_network):
    model = build_tiny_sd(2)
    save_diffusers_folder(model, tmp_path / "m")
    loaded = load_sd_model(tmp_path / "m")
    assert_same_weights(model.unet, loaded.unet)
    assert_same_weights(model.text_encoder, loaded.text_encoder)


def test_missing_path_and_offline_hub_id(tmp_path, monkeypatch, no_network):
    with pytest.raises(InstantLoraError, match="not found") as e:
        load_sd_model("../models/Stable-diffusion/nothing-here.safetensors")
    assert ".safetensors" in e.value.hint
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(InstantLoraError, match="hub id") as e:
        load_sd_model("someone/some-sd15-model")
    assert "local file" in e.value.hint
