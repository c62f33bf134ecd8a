"""The one request path (request.prepare_run) and what the run does with its plan: layering order,
validation before any heavy import, the plan as the loop's schedule, stops obeyed at every stage
(cancelled is not failed), same seed = same file, one run per output name, leftovers cleaned."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import make_image, tiny_config

from instant_lora.request import APP_DEFAULTS, PreparedRun, RequestError, RunRequest, prepare_run, preview_plan
from instant_lora.tiny import build_tiny_sd
from instant_lora.train.events import TrainControl
from instant_lora.train.loop import train

ROOT = Path(__file__).resolve().parents[1]


class FakeHost:
    """The host interface's folders and checkpoints, nothing else."""

    def __init__(self, root: Path):
        self.lora_dir, self.data_dir, self.models_dir = root / "Lora", root / "data", root / "models"
        self.models_dir.mkdir(parents=True)
        (self.models_dir / "base.safetensors").write_bytes(b"\0")

    def request_defaults(self):
        return {}

    def default_checkpoint(self):
        return "base.safetensors"

    def knows_checkpoint(self, label):
        return label == "base.safetensors"

    def checkpoint_path(self, label):
        return str(self.models_dir / label)


def _log_events(folder: Path) -> list:
    (log,) = Path(folder).glob("*.jsonl")
    return [json.loads(line) for line in log.read_text().splitlines()]


# ---- layering and validation -------------------------------------------------------------------

def test_layers_in_one_order_front_defaults_preset_user_host(tmp_path, train_set):
    host = FakeHost(tmp_path)
    app = prepare_run(RunRequest(front="app", values={"train_data_dir": str(train_set), "output_name": "a"}), host)
    assert {k: getattr(app.config, k) for k in APP_DEFAULTS} == APP_DEFAULTS
    assert app.config.output_dir == str(host.lora_dir) and app.config.logging_dir == str(host.data_dir / "logs")
    assert app.config.pretrained_model_name_or_path == str(host.models_dir / "base.safetensors")
    # preset over the front end's defaults, the user's values over the preset
    quick = prepare_run(RunRequest(front="app", preset="Quick test", values={"train_data_dir": str(train_set),
                                                                            "output_name": "q", "network_alpha": 3.0}), host)
    assert quick.config.network_dim == 8 and quick.config.network_alpha == 3.0
    # the command line keeps the reference's defaults and says what they mean
    cli = prepare_run(RunRequest(front="cli", values={"train_data_dir": str(train_set), "pretrained_model_name_or_path": "m",
                                                      "output_dir": str(tmp_path / "o")}), cuda=False)
    assert (cli.config.network_dim, cli.config.network_alpha, cli.config.learning_rate) == (None, 1.0, 2e-6)
    assert cli.plan.rank == 4 and any("reference" in w for w in cli.plan.warnings)
    assert cli.plan.output_name == "last" and cli.plan.final_path() == tmp_path / "o" / "last.safetensors"


def test_every_problem_at_once_and_nothing_heavy_imported():
    code = ("import sys; sys.path.insert(0, 'extension')\n"
            "from instant_lora.request import RunRequest, RequestError, validate_request\n"
            "try:\n"
            "    validate_request(RunRequest(front='api', values={'train_data_dir': '/nope', 'output_name': 'a/b', "
            "'learning_rate': float('nan'), 'seed': 2**80, 'overwrite_me': 1}))\n"
            "except RequestError as e:\n"
            "    print(sorted(set(e.fields)))\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'peft', 'gradio') if m in sys.modules))\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    fields, heavy = r.stdout.strip().splitlines()
    assert fields == str(sorted({"train_data_dir", "output_name", "learning_rate", "seed", "overwrite_me", "pretrained_model_name_or_path"}))
    assert heavy == "[]"  # a bad value costs a fraction of a second, not a model import


def test_cli_refuses_a_bad_value_before_loading_anything(tmp_path, train_set):
    code = ("import sys; sys.path.insert(0, 'extension')\n"
            "from instant_lora.cli import main\n"
            f"rc = main(['train', '--pretrained_model_name_or_path=m', '--train_data_dir={train_set}', '--max_train_steps=1e30', "
            f"'--output_dir={tmp_path / 'o'}'])\n"
            "print(rc, 'torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.stdout.split() == ["2", "False"], r.stdout + r.stderr
    assert "--max_train_steps" in r.stderr and "out of range" in r.stderr
    assert not (tmp_path / "o").exists()


# ---- the plan is the schedule ------------------------------------------------------------------

def test_live_plan_equals_the_run_plan(tmp_path):
    """3 images x 10 repeats with Epochs cleared: the reference's 1600 steps, in the form and in the run."""
    root = tmp_path / "set"
    for i in range(3):
        make_image(root / "10_x" / f"{i}.png")
    host = FakeHost(tmp_path)
    values = {"train_data_dir": str(root), "output_name": "p", "max_train_epochs": None, "save_every_n_steps": 100}
    from instant_lora.dataset import scan_dataset

    live, problems = preview_plan(RunRequest(front="app", values=values), host, scan_dataset(root))
    run = prepare_run(RunRequest(front="app", values=values), host).plan
    assert problems == [] and live.max_train_steps == run.max_train_steps == 1600
    assert live.saves == run.saves and live.num_epochs == run.num_epochs == 54
    # epoch saves every 2 (the app's default) and step saves every 100 meet at step 600 (epoch 20): one file
    steps = [s.step for s in run.intermediate_saves]
    assert len(steps) == len(set(steps)) and 600 in steps
    assert [s.stem for s in run.saves if s.step == 600] == ["p-000020"]


def test_the_loop_writes_exactly_the_planned_files(train_set, tmp_path):
    # 2 images x 10 repeats = 20 steps per epoch; epoch saves and step saves meet at step 20 and 40
    config = tiny_config(train_set, tmp_path, max_train_steps=45, save_every_n_epochs=1, save_every_n_steps=20)
    prepared = prepare_run(RunRequest(front="config", values={k: v for k, v in config.to_dict().items() if v is not None}), cuda=False)
    assert [s.stem for s in prepared.plan.saves] == ["tiny_lora-000001", "tiny_lora-000002", "tiny_lora"]
    result = train(prepared, model=build_tiny_sd(0))
    assert [p.stem for p in result.saved] == [s.stem for s in prepared.plan.saves]


# ---- stops, cancel and failure ----------------------------------------------------------------

@pytest.mark.parametrize("stage", ["dataset", "loading"])
def test_a_stop_before_the_first_step_writes_nothing(train_set, tmp_path, stage, monkeypatch):
    import instant_lora.train.loop as loop

    control = TrainControl()
    load_model = loop.Run.load_model
    if stage == "dataset":
        control.request_stop()  # before the run starts: the model is never loaded
        monkeypatch.setattr(loop.Run, "load_model", lambda self: pytest.fail("loaded the model after a stop"))
    else:  # pressed while the model loads: obeyed before caching
        monkeypatch.setattr(loop.Run, "load_model", lambda self: (load_model(self), control.request_stop()))
    out = tmp_path / "out"
    result = train(tiny_config(train_set, out), model=build_tiny_sd(0), control=control)
    assert result.cancelled and result.path is None and result.steps == 0
    assert not list(out.glob("*.safetensors")) and not list(out.glob("*.json"))
    end = _log_events(out / "logs")[-1]
    assert end["event"] == "cancelled" and end["path"] is None and end["stage"] == stage


def test_a_stop_inside_caching_stops_there(train_set, tmp_path, monkeypatch):
    import instant_lora.cache as cache

    control = TrainControl()
    batches = []
    encode_images = cache.encode_images

    def pressed_during_the_first_batch(*a, progress=None, **k):
        def after_batch(done, total):
            batches.append(done)
            control.request_stop()
            progress(done, total)
        return encode_images(*a, progress=after_batch, **k)

    monkeypatch.setattr(cache, "encode_images", pressed_during_the_first_batch)
    for i in range(6):  # more than one VAE batch
        make_image(train_set / "10_test" / f"extra_{i}.png")
    result = train(tiny_config(train_set, tmp_path), model=build_tiny_sd(0), control=control)
    assert result.cancelled and result.path is None
    assert batches == [4]  # the second batch never ran
    assert _log_events(tmp_path / "logs")[-1]["stage"] == "caching"


def test_a_stop_inside_auto_captioning_stops_there(train_set, tmp_path, monkeypatch):
    (train_set / "10_test" / "fashion_001.txt").unlink()
    control = TrainControl()

    def fake_caption_folder(folder, options, progress=None):
        control.request_stop()  # the user presses Cancel while CLIP runs
        progress(1, 2, 1.0)
        raise AssertionError("captioning went on after a stop")

    monkeypatch.setattr("instant_lora.captioning.caption_folder", fake_caption_folder)
    result = train(tiny_config(train_set, tmp_path, auto_caption=True), model=build_tiny_sd(0), control=control)
    assert result.cancelled and _log_events(tmp_path / "logs")[-1]["stage"] == "captioning"


def test_job_states_cancelled_and_failed_are_distinct(train_set, tmp_path, monkeypatch):
    from instant_lora.jobs import TrainingJob

    job = TrainingJob()
    prepared = prepare_run(RunRequest(front="config", values=tiny_config(train_set, tmp_path / "a", max_train_steps=400).to_dict()), cuda=False)
    started = threading.Event()
    job.start(prepared, model=build_tiny_sd(0), extra_sinks=[lambda e: started.set() if type(e).__name__ == "Step" else None])
    assert started.wait(120)
    assert job.cancel()
    snap = job.wait(120)
    assert snap.state == "cancelled" and snap.error is None and snap.result_path and Path(snap.result_path).is_file()

    broken = TrainingJob()
    prepared = prepare_run(RunRequest(front="config", values=tiny_config(train_set, tmp_path / "b").to_dict()), cuda=False)
    monkeypatch.setattr("instant_lora.train.loop.Run.build_caches", lambda self: 1 / 0)
    broken.start(prepared, model=build_tiny_sd(0))
    snap = broken.wait(120)
    assert snap.state == "failed" and "ZeroDivisionError" in snap.error and snap.stage == "caching"
    assert not (tmp_path / "b" / "logs").exists()  # failed before its first step: its message is the job's, no empty log


# ---- files ---------------------------------------------------------------------------------------

def test_same_seed_same_data_same_file(train_set, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    a = train(tiny_config(train_set, tmp_path / "a", seed=7), model=build_tiny_sd(0))
    torch.rand(1000)  # other code drawing from the global RNG in between changes nothing
    b = train(tiny_config(train_set, tmp_path / "b", seed=7), model=build_tiny_sd(0))
    assert a.path.read_bytes() == b.path.read_bytes()  # bit-identical, header included
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    c = train(tiny_config(train_set, tmp_path / "c", seed=8), model=build_tiny_sd(0))
    ta, tc = load_file(str(a.path)), load_file(str(c.path))
    assert any(not torch.equal(ta[k], tc[k]) for k in ta if k.endswith("lora_down.weight"))


def test_a_second_run_into_the_same_name_is_refused_naming_the_first(train_set, tmp_path):
    import os

    from instant_lora.errors import InstantLoraError
    from instant_lora.output_paths import claim_output

    with claim_output(tmp_path, "tiny_lora"):  # the first run
        with pytest.raises(InstantLoraError, match=f"pid {os.getpid()}"):
            train(tiny_config(train_set, tmp_path), model=build_tiny_sd(0))
    assert not list(tmp_path.glob("*.safetensors"))
    assert train(tiny_config(train_set, tmp_path), model=build_tiny_sd(0)).path.is_file()  # released


def test_leftovers_of_a_killed_run_are_cleaned_at_the_next_run(train_set, tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / ".tiny_lora.safetensors.4242.tmp").write_bytes(b"half")
    (tmp_path / "tiny_lora-step00000002-state.tmp").mkdir()
    (tmp_path / "other.safetensors").write_bytes(b"someone else's")
    train(tiny_config(train_set, tmp_path), model=build_tiny_sd(0))
    assert not (tmp_path / ".tiny_lora.safetensors.4242.tmp").exists()
    assert not (tmp_path / "tiny_lora-step00000002-state.tmp").exists()
    assert (tmp_path / "other.safetensors").read_bytes() == b"someone else's"


def test_seed_minus_one_is_random_other_negatives_are_refused(tmp_path, train_set):
    host = FakeHost(tmp_path)
    with pytest.raises(RequestError) as e:
        prepare_run(RunRequest(front="app", values={"train_data_dir": str(train_set), "output_name": "n", "seed": -5}), host)
    assert e.value.fields == ["seed"] and e.value.status == 422
    ok = prepare_run(RunRequest(front="app", values={"train_data_dir": str(train_set), "output_name": "n", "seed": -1}), host)
    assert isinstance(ok, PreparedRun) and ok.config.seed is None and 0 <= ok.plan.seed < 2**31  # -1 = random, drawn once
