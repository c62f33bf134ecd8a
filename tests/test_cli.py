"""The headless command line, run as a user runs it: `python standalone_app.py train ...`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_app(*args, cwd=None, timeout=300):
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    import os

    env["INSTANT_LORA_CACHE"] = os.environ["INSTANT_LORA_CACHE"]
    return subprocess.run([sys.executable, str(ROOT / "standalone_app.py"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def seed_command(model, data="lora_train_set", resolution="64,64"):
    """The reference trainer's command from the issue, verbatim but for the model path and size."""
    return ["train", f"--pretrained_model_name_or_path={model}", f"--train_data_dir={data}", "--output_dir=lora_output",
            "--logging_dir=training_logs/logs", f"--resolution={resolution}", "--network_module=networks.lora",
            "--network_dim=32", "--train_batch_size=1", "--max_train_steps=200", "--mixed_precision=fp16", "--cache_latents",
            "--learning_rate=5e-5", "--save_every_n_epochs=50", "--save_model_as=safetensors", "--save_state",
            "--log_with=tensorboard", "--gradient_accumulation_steps=1"]


def test_seed_command_runs_on_a_tiny_model(train_set, tiny_model_dir):
    cwd = train_set.parent
    r = run_app(*seed_command(tiny_model_dir), cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    out = cwd / "lora_output"
    assert (out / "last.safetensors").is_file() and (out / "last.json").is_file()
    assert (out / "last-state" / "train_state.json").is_file()
    state = json.loads((out / "last-state" / "train_state.json").read_text())
    assert state["current_step"] == 200
    # fp16 on a CPU-only machine: one warning, then fp32.
    assert r.stderr.count("--mixed_precision=fp16 needs a CUDA GPU") == 1
    assert "network_alpha is 1" in r.stderr
    logs = list((cwd / "training_logs" / "logs").glob("*.jsonl"))
    assert len(logs) == 1
    steps = [json.loads(line) for line in logs[0].read_text().splitlines() if '"event": "step"' in line]
    assert len(steps) == 200 and {"loss", "avg_loss", "lr"} <= set(steps[0])
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        assert "tensorboard package is not installed" in r.stderr
    else:
        assert list((cwd / "training_logs" / "logs").rglob("events.out.tfevents.*"))
    from safetensors import safe_open

    with safe_open(str(out / "last.safetensors"), "pt") as f:
        md = f.metadata()
        assert md["ss_network_dim"] == "32" and md["ss_network_alpha"] == "1.0" and md["ss_steps"] == "200"
        assert md["ss_output_name"] == "last" and md["modelspec.architecture"] == "stable-diffusion-v1/lora"
        assert json.loads(md["ss_tag_frequency"]) == {"10_test": {"test": 2, "red square dress": 1, "blue round dress": 1}}
        assert json.loads(md["ss_dataset_dirs"]) == {"10_test": {"n_repeats": 10, "img_count": 2}}
        assert f.get_tensor("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight").shape == (32, 32)


def test_config_file_and_flags_override(train_set, tiny_model_dir, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(f'[model]\npretrained_model_name_or_path = "{tiny_model_dir}"\n[data]\ntrain_data_dir = "{train_set}"\n'
                    f'resolution = "64,64"\nmax_train_steps = 50\nnetwork_dim = 4\nnetwork_alpha = 4\nlearning_rate = 1e-4\n'
                    f'output_name = "from_toml"\n')
    r = run_app("train", f"--config_file={toml}", "--max_train_steps=3", f"--output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "out" / "from_toml.safetensors"), "pt") as f:
        assert f.metadata()["ss_steps"] == "3"  # the flag beat the file's 50


@pytest.mark.parametrize("flag,suggestion", [("--netowrk_dim=8", "--network_dim"), ("--learningrate=1e-4", "--learning_rate"),
                                             ("--save_every_n_epoch=5", "--save_every_n_epochs")])
def test_unknown_flag_names_the_closest(flag, suggestion, tmp_path):
    r = run_app("train", "--pretrained_model_name_or_path=x.safetensors", flag, cwd=tmp_path)
    assert r.returncode == 2
    assert f"unknown flag {flag.split('=')[0]}" in r.stderr and suggestion in r.stderr
    assert "Traceback" not in r.stderr


def test_user_errors_are_one_message_not_a_traceback(tmp_path, tiny_model_dir):
    (tmp_path / "empty").mkdir()
    r = run_app("train", f"--pretrained_model_name_or_path={tiny_model_dir}", f"--train_data_dir={tmp_path / 'empty'}",
                "--resolution=64", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "empty" in r.stderr and "10_" in r.stderr  # names the folder and shows the expected layout
    r = run_app("train", "--pretrained_model_name_or_path=missing.safetensors", f"--train_data_dir={tmp_path}",
                "--network_dim=0", "--resolution=500", cwd=tmp_path)
    assert r.returncode == 2 and "--network_dim" in r.stderr and "--resolution" in r.stderr  # every problem at once
    r = run_app("train", "--pretrained_model_name_or_path=missing.safetensors", f"--train_data_dir={tmp_path}",
                "--output_name=../escape", cwd=tmp_path)
    assert r.returncode == 2 and "--output_name" in r.stderr


def test_help_lists_the_commands():
    r = run_app("--help")
    assert r.returncode == 0 and "train" in r.stdout and "selftest" in r.stdout


def test_listen_without_auth_warns():
    from instant_lora.app import exposure_warning, parse_app_args

    assert "--listen without --auth" in exposure_warning(parse_app_args(["--listen"]))
    assert "--share without --auth" in exposure_warning(parse_app_args(["--share"]))
    assert exposure_warning(parse_app_args(["--listen", "--auth", "me:pw"])) is None
    assert exposure_warning(parse_app_args([])) is None  # 127.0.0.1 only
