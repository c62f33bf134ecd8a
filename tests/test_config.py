"""Config, the reference trainer's flags, the run plan and where files go."""

from pathlib import Path

import pytest

from instant_lora.config import FIELD_NAMES, TrainConfig, is_safe_name
from instant_lora.errors import InstantLoraError
from instant_lora.kohya_flags import build_parser, parse_train_args
from instant_lora.output_paths import file_in, resolve_output_dir
from instant_lora.train.plan import make_plan


def test_every_field_with_a_group_is_a_flag_with_help():
    parser = build_parser()
    flags = {a.dest: a for a in parser._actions}
    for name in FIELD_NAMES:
        if name in ("config_version", "sample_prompt_text"):  # the app's and REST's prompt text
            continue
        assert name in flags, name
        assert flags[name].help and len(flags[name].help) > 15, name


def test_reference_defaults_are_kept():
    c, explicit = parse_train_args(["--pretrained_model_name_or_path=m.safetensors", "--train_data_dir=d"])
    assert (c.rank, c.network_alpha, c.learning_rate, c.max_train_steps, c.optimizer_type, c.lr_scheduler) == \
        (4, 1.0, 2e-6, 1600, "AdamW", "constant")
    assert c.mixed_precision == "no" and c.max_grad_norm == 1.0 and c.caption_extension == ".txt"
    assert explicit == {"pretrained_model_name_or_path", "train_data_dir"}


def test_flag_values_and_types():
    c, _ = parse_train_args("--pretrained_model_name_or_path=m --train_data_dir=d --network_dim=32 --network_alpha=16 "
                            "--learning_rate=5e-5 --unet_lr=1e-4 --text_encoder_lr=5e-5 --network_train_unet_only "
                            "--optimizer_type=Prodigy --optimizer_args weight_decay=0.01 betas=(0.9,0.99) --lr_scheduler=cosine "
                            "--lr_warmup_steps=0.1 --max_train_epochs=10 --min_snr_gamma=5 --noise_offset=0.05 --clip_skip=2 "
                            "--caption_extension=.caption --seed=42 --save_every_n_steps=100 --save_precision=fp16 "
                            "--output_name=my_style --gradient_checkpointing --sdpa --xformers --max_grad_norm=0 "
                            "--cache_latents_to_disk --resume=s --network_args preset=attn-only".split())
    assert c.rank == 32 and c.network_alpha == 16.0 and c.unet_lr == 1e-4 and c.network_train_unet_only
    assert c.optimizer_kwargs() == {"weight_decay": 0.01, "betas": (0.9, 0.99)}
    assert c.lr_warmup_steps == 0.1 and c.max_train_epochs == 10 and c.clip_skip == 2 and c.preset == "attn-only"
    assert c.save_precision == "fp16" and c.resume == "s" and c.max_grad_norm == 0.0


def test_bad_choice_names_the_flag():
    with pytest.raises(InstantLoraError, match="mixed_precision"):
        parse_train_args(["--mixed_precision=fp8"])


def test_json_preset_round_trip_holds_only_changes(tmp_path):
    c = TrainConfig(network_dim=16, network_alpha=8.0, learning_rate=1e-4, network_args=["preset=attn-only"])
    c.to_json(tmp_path / "p.json")
    text = (tmp_path / "p.json").read_text()
    assert "max_train_steps" not in text and '"network_dim": 16' in text
    assert TrainConfig.from_json(tmp_path / "p.json") == c
    (tmp_path / "bad.json").write_text('{"netwrk_dim": 3}')
    with pytest.raises(InstantLoraError, match="did you mean --network_dim"):
        TrainConfig.from_json(tmp_path / "bad.json")


def test_plan_numbers_and_warnings():
    c = TrainConfig(pretrained_model_name_or_path="m", train_data_dir="d", network_dim=32, mixed_precision="fp16",
                    train_batch_size=2, gradient_accumulation_steps=2, max_train_epochs=3, lr_warmup_steps=0.1)
    p = make_plan(c, num_images=5, num_train_images=50, cuda=False, explicit={"network_dim", "learning_rate"})
    assert (p.batches_per_epoch, p.steps_per_epoch, p.max_train_steps, p.num_epochs, p.warmup_steps) == (25, 13, 39, 3, 4)
    assert p.precision == "no" and p.lora_scale == pytest.approx(1 / 32)
    text = " ".join(p.warnings)
    assert "needs a CUDA GPU" in text and "1/32" in text and "learning_rate not set" not in text
    quiet = make_plan(TrainConfig(network_dim=32, network_alpha=32.0, learning_rate=1e-4), 1, 10, cuda=True,
                      explicit={"network_dim", "network_alpha", "learning_rate"})
    assert quiet.warnings == () and quiet.precision == "no"


def test_validation_reports_every_problem():
    c = TrainConfig(network_dim=0, resolution="500,500", optimizer_type="SGD", output_name="../x", network_args=["foo"])
    fields = {f for f, _ in c.validate()}
    assert {"pretrained_model_name_or_path", "train_data_dir", "network_dim", "resolution", "optimizer_type",
            "output_name", "network_args"} <= fields


@pytest.mark.parametrize("name,ok", [("my_style", True), ("Style v2", True), ("../x", False), ("a/b", False),
                                     ("a\\b", False), (".hidden", False), ("", False), ("con:x", False)])
def test_safe_names(name, ok):
    assert is_safe_name(name) is ok


def test_output_dir_resolution(tmp_path, monkeypatch):
    webui = tmp_path / "webui"
    (webui / "modules").mkdir(parents=True)
    (webui / "webui.py").write_text("")
    assert resolve_output_dir("out", "lora", str(webui))[0] == Path("out")
    assert resolve_output_dir(None, "lora", str(webui))[0] == Path("lora")
    assert resolve_output_dir(None, None, str(webui))[0] == webui / "models" / "Lora"
    monkeypatch.setenv("INSTANT_LORA_WEBUI_DIR", str(webui))
    assert resolve_output_dir(None, None, None)[0] == webui / "models" / "Lora"
    monkeypatch.delenv("INSTANT_LORA_WEBUI_DIR")
    assert resolve_output_dir(None, None, None)[0] == Path("output")
    with pytest.raises(InstantLoraError, match="not a Stable Diffusion WebUI"):
        resolve_output_dir(None, None, str(tmp_path))
    with pytest.raises(InstantLoraError, match="outside"):
        file_in(tmp_path, "../evil", ".safetensors")
