"""Several processes (torchrun, gloo on the CPU) train one LoRA: the same file as one process with
the same global batch, one set of files and one log line per step, a dead rank ends the run
instead of hanging it, and a multi-process state resumes in a run with as many processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from browser_support import free_port
from conftest import make_image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def launch(args: list[str], processes: int, **popen):
    """`python -m torch.distributed.run --nproc_per_node N standalone_app.py train ...` (one plain
    process for N = 1), as a user launches it."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    head = [sys.executable]
    if processes > 1:
        head += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", str(free_port())]
    return subprocess.Popen([*head, str(ROOT / "standalone_app.py"), "train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def finish(proc, timeout=300) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model_dir):
    """A two-process run (saving its state halfway) and a one-process run with the same global batch."""
    root = tmp_path_factory.mktemp("ddp")
    data = root / "data"
    for i, color in enumerate([(200, 30, 30), (30, 30, 200), (30, 200, 30), (200, 200, 30)]):
        make_image(data / "2_test" / f"img{i}.png", color, shape="square" if i % 2 else "circle")
        (data / "2_test" / f"img{i}.txt").write_text(f"test, thing {i}", encoding="utf-8")
    common = [f"--pretrained_model_name_or_path={tiny_model_dir}", f"--train_data_dir={data}", "--resolution=64,64",
              "--network_dim=4", "--network_alpha=4", "--learning_rate=1e-3", "--max_train_steps=4", "--seed=1234",
              "--cache_latents", "--output_name=l"]
    two = launch([*common, f"--output_dir={root / 'two'}", "--save_every_n_steps=2", "--save_state"], 2)
    out_two = finish(two)
    out_one = finish(launch([*common, f"--output_dir={root / 'one'}", "--gradient_accumulation_steps=2"], 1))
    return {"root": root, "common": common, "two": out_two, "one": out_one}


def test_two_processes_train_the_file_one_process_trains(runs):
    root = runs["root"]
    one, two = load_file(str(root / "one" / "l.safetensors")), load_file(str(root / "two" / "l.safetensors"))
    assert one.keys() == two.keys()
    for key in one:
        assert torch.allclose(one[key], two[key], atol=2e-5), key
    assert any(v.abs().max() > 1e-4 for k, v in two.items() if "lora_up" in k)  # it learned something
    assert "2 processes held identical LoRA weights after each of the 4 steps" in runs["two"]


def test_one_set_of_files_and_one_log_line_per_step(runs):
    folder = runs["root"] / "two"
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["l-state", "l-step00000002-state", "l-step00000002.json", "l-step00000002.safetensors", "l.json",
                     "l.safetensors", "logs"], files
    logs = list((folder / "logs").glob("*.jsonl"))
    assert len(logs) == 1
    events = [json.loads(line) for line in logs[0].read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4]
    assert sum(e["event"] == "finished" for e in events) == 1
    assert runs["two"].splitlines().count(str(folder / "l.safetensors")) == 1  # the result line, from one process
    from instant_lora.lora.kohya_file import read_lora_file

    _, md = read_lora_file(folder / "l.safetensors")
    assert md["ss_num_processes"] == "2" and md["ss_total_batch_size"] == "2"
    assert "x 2 processes (a global batch of 2)" in runs["two"]


def test_the_main_process_logs_every_processs_timesteps_and_the_movement(runs):
    """Each step's images come from both processes: the log holds all of them, in the order one
    process accumulating the same micro-batches draws them, and one Movement per report."""
    def records(folder):
        log = next((runs["root"] / folder / "logs").glob("*.jsonl"))
        return [json.loads(line) for line in log.read_text().splitlines()]

    two, one = records("two"), records("one")
    steps_two, steps_one = [r for r in two if r["event"] == "step"], [r for r in one if r["event"] == "step"]
    assert [len(r["timesteps"]) for r in steps_two] == [2, 2, 2, 2]
    assert [r["timesteps"] for r in steps_two] == [r["timesteps"] for r in steps_one]
    for a, b in zip(steps_two, steps_one):
        assert a["sample_losses"] == pytest.approx(b["sample_losses"], rel=1e-4, abs=1e-6)
    moves = [r for r in two if r["event"] == "movement"]
    assert [m["step"] for m in moves] == [0, 1, 2, 3, 4]
    last = [m for m in one if m["event"] == "movement"][-1]
    assert moves[-1]["blocks"] == pytest.approx(last["blocks"], rel=1e-3)


def test_a_two_process_state_resumes_in_two_processes_only(runs):
    root, common = runs["root"], runs["common"]
    state = root / "two" / "l-step00000002-state"
    resumed = root / "resumed"
    finish(launch([*common, f"--output_dir={resumed}", f"--resume={state}"], 2))
    straight, again = load_file(str(root / "two" / "l.safetensors")), load_file(str(resumed / "l.safetensors"))
    for key in straight:
        assert torch.allclose(straight[key], again[key], atol=1e-6), key
    proc = launch([*common, f"--output_dir={root / 'single'}", f"--resume={state}"], 1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "num_processes: state has 2, this run 1" in out, out[-2000:]


def test_a_killed_rank_ends_the_run_without_hanging(runs, tmp_path):
    import psutil

    common = [a for a in runs["common"] if not a.startswith("--max_train_steps")]
    proc = launch([*common, f"--output_dir={tmp_path}", "--max_train_steps=100000", "--ddp_timeout=5"], 2)
    _wait_for_steps(proc, tmp_path / "logs")
    workers = [c for c in psutil.Process(proc.pid).children(recursive=True) if c.environ().get("RANK") == "1"]
    assert workers, "rank 1 not found"
    killed_at = time.time()
    workers[0].kill()
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the run hung after a rank died")
    assert proc.returncode != 0 and time.time() - killed_at < 120
    assert not (tmp_path / "l.safetensors").exists()  # no final file from a broken run


def _wait_for_steps(proc, log_dir: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and not any('"event": "step"' in p.read_text() for p in log_dir.glob("*.jsonl")):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.5)


def test_ctrl_c_stops_every_process_after_the_same_step_and_saves_once(runs, tmp_path):
    import signal

    common = [a for a in runs["common"] if not a.startswith("--max_train_steps")]
    proc = launch([*common, f"--output_dir={tmp_path}", "--max_train_steps=100000"], 2, start_new_session=True)
    _wait_for_steps(proc, tmp_path / "logs")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: every process of the group gets it
    out, _ = proc.communicate(timeout=120)
    saved = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(saved) == 1 and saved[0].startswith("l-step"), (saved, out[-3000:])
    events = [json.loads(line) for p in (tmp_path / "logs").glob("*.jsonl") for line in p.read_text().splitlines()]
    cancelled = [e for e in events if e["event"] == "cancelled"]
    assert len(cancelled) == 1 and cancelled[0]["path"].endswith(saved[0])
    assert out.count("stopping after this step") == 1  # said once, by the main process


def _app_run(runs, tmp_path, steps: int):
    from instant_lora.request import RunRequest, prepare_run

    values = {a[2:].split("=", 1)[0]: a.split("=", 1)[1] for a in runs["common"] if "=" in a}
    values.update(max_train_steps=steps, output_dir=str(tmp_path / "out"), cache_latents=True, network_dim=4,
                  network_alpha=4.0, learning_rate=1e-3, seed=1234)
    return prepare_run(RunRequest(front="cli", values=values))


def test_the_app_starts_several_processes_and_shows_one_progress(runs, tmp_path, monkeypatch):
    """What the app's GPUs field does with two GPUs chosen, on two CPU processes: torchrun under
    the hood, the main process's log followed as events, the same file as the command line's."""
    from instant_lora.train import events as ev
    from instant_lora.train.launch import run_processes

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    seen = []
    run_processes(_app_run(runs, tmp_path, 4), 2, sinks=[seen.append])
    assert [e.step for e in seen if isinstance(e, ev.Step)] == [1, 2, 3, 4]
    assert any(isinstance(e, ev.Status) and "starting 2 training processes" in e.message for e in seen)
    finished = [e for e in seen if isinstance(e, ev.Finished)]
    assert len(finished) == 1 and Path(finished[0].path).is_file()
    two = load_file(str(runs["root"] / "two" / "l.safetensors"))
    here = load_file(finished[0].path)
    for key in two:
        assert torch.allclose(two[key], here[key], atol=1e-6), key  # the command line's two-process file


def test_the_app_cancels_a_multi_process_run(runs, tmp_path, monkeypatch):
    from instant_lora.train import events as ev
    from instant_lora.train.events import TrainControl
    from instant_lora.train.launch import run_processes

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    control = TrainControl()
    seen = []

    def sink(event):
        seen.append(event)
        if isinstance(event, ev.Step) and event.step >= 2:
            control.request_stop()

    run_processes(_app_run(runs, tmp_path, 100000), 2, sinks=[sink], control=control)
    cancelled = [e for e in seen if isinstance(e, ev.Cancelled)]
    assert len(cancelled) == 1 and Path(cancelled[0].path).is_file(), seen[-5:]
    assert len(list((tmp_path / "out").glob("*.safetensors"))) == 1


def test_the_gpus_field_plans_and_starts_several_processes(tmp_path, monkeypatch, train_set):
    """The app's form with two GPUs chosen: the live plan counts two processes and the job starts
    them through run_processes (which the tests above run on the CPU); one GPU changes nothing."""
    from instant_lora.host.standalone import StandaloneHost
    from instant_lora.jobs import TrainingJob
    from instant_lora.ui.handlers import run as run_handlers

    monkeypatch.setattr(StandaloneHost, "gpu_choices", lambda self: ["0: GPU A (24576 MiB)", "1: GPU B (24576 MiB)"])
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "base.safetensors").write_bytes(b"")
    host = StandaloneHost(models_dir=tmp_path / "models", lora_dir=tmp_path / "loras", data_dir=tmp_path / "data")
    started = []
    monkeypatch.setattr("instant_lora.train.launch.run_processes",
                        lambda prepared, n, devices=None, sinks=(), control=None: started.append((n, devices)))
    form = run_handlers.RunForm(dataset_dir=str(train_set), checkpoint=host.list_checkpoints()[0],
                                fields={"output_name": "two_gpus", "max_train_steps": 4},
                                gpus=["0: GPU A (24576 MiB)", "1: GPU B (24576 MiB)"])
    from instant_lora.request import prepare_run, preview_plan

    request = run_handlers.run_request(form, host)
    assert request.processes == 2
    plan, _ = preview_plan(request, host, None)
    prepared = prepare_run(request, host, cuda=True, check_output=False)
    assert prepared.plan.processes == 2 and prepared.plan.total_batch_size == 2
    job = TrainingJob()
    job.start(prepared, host=None, devices=[0, 1])
    job.wait(30)
    assert started == [(2, [0, 1])]
    assert run_handlers.run_request(run_handlers.RunForm(gpus=["0: GPU A (24576 MiB)"]), host).processes == 1
