"""The REST routes under /instant-lora/v1 against the WebUI stand-in, through FastAPI's test client:
one real tiny training, cancel, auth, and every bad input a script can send getting a 4xx that
names the field (never a 500, never a file read or written outside the host's folders)."""

import json
import math
import time
from pathlib import Path

import pytest
from test_webui_host import FakeTrain
from webui_stub.harness import webui

from instant_lora.jobs import TrainingJob

pytest.importorskip("fastapi")


@pytest.fixture
def w(tmp_path, monkeypatch):
    with webui(tmp_path) as stub:
        monkeypatch.setattr("instant_lora.jobs._JOB", TrainingJob())  # this test's own job
        yield stub


@pytest.fixture
def api(w):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from instant_lora.host import webui as webui_host
    from instant_lora.host.webui import routes

    app = FastAPI()
    host = webui_host.get_host()
    assert routes.register(app, host, host.job)
    assert not routes.register(app, host, host.job)  # once per app
    return TestClient(app), host


def _wait_done(client, seconds=180):
    deadline = time.time() + seconds
    while time.time() < deadline:
        p = client.get("/instant-lora/v1/progress").json()
        if p["state"] != "running":
            return p
        time.sleep(0.2)
    raise AssertionError("training did not finish")


def _tiny_checkpoint(tiny_model_dir) -> str:
    """The tiny model as one of the WebUI's checkpoints (a request names checkpoints, not paths)."""
    from modules import sd_models

    info = sd_models.CheckpointInfo(str(tiny_model_dir))
    info.register()
    return info.title


def test_rest_training_with_a_tiny_model_lands_in_the_lora_folder(api, w, tiny_model_dir, train_set):
    client, host = api
    body = {"checkpoint": _tiny_checkpoint(tiny_model_dir), "train_data_dir": str(train_set), "output_name": "api_lora",
            "trigger_words": "shpz", "resolution": "64,64", "network_dim": 4, "network_alpha": 4, "learning_rate": 1e-3,
            "max_train_steps": 3, "max_train_epochs": None, "save_every_n_epochs": None, "seed": 1,
            "mixed_precision": "no"}
    r = client.post("/instant-lora/v1/train", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["started"] == "api_lora" and r.json()["output"] == str(w.lora_dir / "api_lora.safetensors")
    assert r.json()["steps"] == 3 and r.json()["saves"] == ["api_lora"] and r.json()["seed"] == 1  # the plan
    p = _wait_done(client)
    assert p["state"] == "finished", p["error"]
    assert p["step"] == p["total"] == 3 and p["prompt"] == "<lora:api_lora:0.8> shpz"
    assert ("state.begin", "Instant LoRA: api_lora") in w.calls and w.calls[-2:] == ["state.end", "queue_lock.release"]
    assert w.sd_models.model_data.sd_model.device == "cuda"  # back on the GPU

    loras = client.get("/instant-lora/v1/loras").json()["loras"]
    (card,) = [x for x in loras if x["name"] == "api_lora"]
    assert card["trained_here"] and card["base_model"] == "sd_v1" and card["sd_version"] == "SD1"
    assert card["activation_text"] == "shpz" and card["prompt"] == "<lora:api_lora:0.8> shpz"
    sidecar = json.loads((w.lora_dir / "api_lora.json").read_text())
    assert sidecar["activation text"] == "shpz" and sidecar["sd version"] == "SD1"
    assert not list(w.lora_dir.glob("*.txt"))  # a .txt there would become the card's description

    again = client.post("/instant-lora/v1/train", json=body)
    assert again.status_code == 409 and "already exists" in again.json()["error"]


def test_rest_defaults_are_the_apps(api, w, train_set):
    """A body with only a folder and a name trains with the app's defaults, not the reference's."""
    from instant_lora.host.webui import routes
    from instant_lora.request import APP_DEFAULTS

    _, host = api
    prepared = routes.prepare(host, {"train_data_dir": str(train_set), "output_name": "plain"})
    config = prepared.config
    assert {k: getattr(config, k) for k in APP_DEFAULTS} == APP_DEFAULTS
    assert (config.network_dim, config.network_alpha, config.learning_rate, config.cache_latents) == (16, 8.0, 1e-4, True)
    assert config.pretrained_model_name_or_path == str(w.models / "Stable-diffusion" / "sd15" / "dreamy.ckpt")  # loaded one
    assert config.output_dir == str(w.lora_dir)
    assert not [x for x in prepared.plan.warnings if "reference" in x]  # no reference-default warnings here


def test_rest_runs_get_the_settings_sample_prompts_and_a_preset(api, w, train_set):
    from instant_lora.host.webui import routes

    _, host = api
    w.shared.opts.data.update(instant_lora_sample_prompts="a photo of shpz\nshpz on a beach", instant_lora_sample_every_n_steps=20)
    prepared = routes.prepare(host, {"train_data_dir": str(train_set), "output_name": "s", "preset": "Quick test"})
    assert [p.prompt for p in prepared.plan.sample_prompts] == ["a photo of shpz", "shpz on a beach"]
    assert prepared.config.sample_every_n_steps == 20 and prepared.config.network_dim == 8  # from the preset
    assert 20 in prepared.plan.sample_steps
    own = routes.prepare(host, {"train_data_dir": str(train_set), "output_name": "t", "sample_every_n_steps": 5,
                                "sample_prompts": "my own prompt"})
    assert own.config.sample_every_n_steps == 5 and [p.prompt for p in own.plan.sample_prompts] == ["my own prompt"]


def test_rest_sample_prompts_are_text_never_a_file_the_server_reads(api, w, train_set, tmp_path, monkeypatch):
    client, host = api
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-LINE-1\nSECRET-LINE-2\n")
    fake = FakeTrain(w)
    monkeypatch.setattr("instant_lora.train.loop.run_prepared", fake)
    r = client.post("/instant-lora/v1/train", json={"train_data_dir": str(train_set), "output_name": "leak",
                                                     "sample_prompts": str(secret), "sample_every_n_steps": 1})
    assert r.status_code == 200, r.text
    p = _wait_done(client)
    assert "SECRET" not in json.dumps(p)
    from instant_lora.host.webui import routes

    prepared = routes.prepare(host, {"train_data_dir": str(train_set), "output_name": "leak2", "sample_prompts": str(secret),
                                     "sample_every_n_steps": 1})
    assert [s.prompt for s in prepared.plan.sample_prompts] == [str(secret)]  # the text itself is the prompt


BASE = {"output_name": "x"}
BAD_BODIES = [  # (body, status, the field or words the message must name)
    ({"output_dir": "/tmp/elsewhere"}, 422, "output_dir"),
    ({"logging_dir": "/tmp/elsewhere"}, 422, "logging_dir"),
    ({"netwrok_dim": 4}, 422, "did you mean network_dim"),
    ({"network_dim": 0}, 422, "network_dim"),
    ({"output_name": "../up"}, 422, "output_name"),
    ({"output_name": "é" * 115}, 422, "bytes"),
    ({"log_prefix": "../../escape/"}, 422, "log_prefix"),
    ({"preset": "Nope"}, 422, "unknown"),
    ({"preset": []}, 422, "preset"),
    ({"checkpoint": {}}, 422, "checkpoint"),
    ({"checkpoint": "no-such-model.safetensors"}, 422, "not a checkpoint of this server"),
    ({"overwrite": "false"}, 422, "overwrite"),
    ({"cache_latents": "false"}, 422, "cache_latents"),
    ({"learning_rate": "1e-4"}, 422, "learning_rate"),
    ({"learning_rate": math.inf}, 422, "learning_rate"),
    ({"network_alpha": -math.inf}, 422, "network_alpha"),
    ({"max_train_steps": 10**30}, 422, "max_train_steps"),
    ({"max_train_steps": 1e30}, 422, "max_train_steps"),
    ({"train_batch_size": 10**12}, 422, "train_batch_size"),
    ({"seed": 2**80}, 422, "seed"),
    ({"min_snr_gamma": -1}, 422, "min_snr_gamma"),
    ({"max_grad_norm": -0.5}, 422, "max_grad_norm"),
    ({"noise_offset": 1e9}, 422, "noise_offset"),
    ({"resolution": {"w": 512}}, 422, "resolution"),
    ({"network_args": [{}]}, 422, "network_args"),
    ({"caption_extension": ".png"}, 422, "caption_extension"),
    ({"pretrained_model_name_or_path": "/etc/passwd"}, 422, "pretrained_model_name_or_path"),
    ({"network_weights": "/etc/passwd"}, 422, "network_weights"),
    ({"resume": "../../somewhere"}, 422, "resume"),
    ({"caption_clip_model": "local-dir:/etc"}, 422, "caption_clip_model"),
    ({"train_data_dir": "/no/such/folder"}, 422, "/no/such/folder is not a folder"),
    ({"train_data_dir": None}, 422, "train_data_dir"),
    ({"output_name": None}, 422, "output_name is required"),
]


@pytest.mark.parametrize("changes,status,says", BAD_BODIES, ids=[next(iter(b)) + "-" + str(i) for i, (b, _, _) in enumerate(BAD_BODIES)])
def test_rest_train_refuses_bad_input_with_a_4xx_naming_the_field(api, w, train_set, changes, status, says):
    client, host = api
    body = {"train_data_dir": str(train_set), **BASE, **changes}
    r = client.post("/instant-lora/v1/train", content=json.dumps(body).encode(), headers={"content-type": "application/json"})
    assert r.status_code == status, (body, r.text)
    assert says in r.json()["error"], r.text
    if "train_data_dir" in changes and changes["train_data_dir"]:  # names the folder, lists nothing else of the server
        assert str(Path(train_set).parent) not in r.json()["error"]
    assert host.job.snapshot().state == "idle"  # nothing started
    assert not list(w.lora_dir.glob("*")) and not (host.data_dir / "prompts").exists()  # nothing written


def test_rest_refuses_nan_and_malformed_bodies(api, train_set):
    client, _ = api
    nan = b'{"train_data_dir": "%s", "output_name": "x", "learning_rate": NaN}' % str(train_set).encode()
    r = client.post("/instant-lora/v1/train", content=nan, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "learning_rate" in r.json()["error"] and "finite" in r.json()["error"]
    for raw in (b"{nope", b"[1, 2]", b'"text"', b"null"):
        r = client.post("/instant-lora/v1/train", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400, raw
    assert client.post("/instant-lora/v1/cancel").json() == {"cancelled": False}


def test_rest_cancel_and_a_second_start_while_running(api, w, monkeypatch, train_set):
    client, host = api
    fake = FakeTrain(w)
    fake.go_on.clear()
    monkeypatch.setattr("instant_lora.train.loop.run_prepared", fake)
    body = {"train_data_dir": str(train_set), "output_name": "slow", "checkpoint": "v1-5-pruned-emaonly.safetensors",
            "preset": "Quick test"}
    assert client.post("/instant-lora/v1/train", json=body).status_code == 200
    assert fake.at_step_2.wait(10)
    busy = client.post("/instant-lora/v1/train", json=dict(body, output_name="other"))
    assert busy.status_code == 409 and "already running" in busy.json()["error"]
    assert client.post("/instant-lora/v1/cancel").json() == {"cancelled": True}
    fake.go_on.set()
    p = _wait_done(client)
    assert p["state"] == "cancelled" and p["step"] == 2 and p["error"] is None
    assert w.calls[-2:] == ["state.end", "queue_lock.release"]


def test_rest_progress_never_fails_on_a_nan_loss_and_reports_the_failure(api, w, monkeypatch, train_set):
    from instant_lora.train.events import Emitter, Failed, Step

    client, host = api

    def nan_then_fail(prepared, *, model=None, sinks=(), control=None):
        emit = Emitter(list(sinks))
        emit(Step(step=1, total=3, epoch=1, loss=float("nan"), avg_loss=float("inf"), lr=1e-4, seconds=0.1))
        emit(Failed(message="CUDA out of memory (fake): lower the batch size", stage="training", steps=1))
        raise RuntimeError("CUDA out of memory (fake)")

    monkeypatch.setattr("instant_lora.train.loop.run_prepared", nan_then_fail)
    assert client.post("/instant-lora/v1/train", json={"train_data_dir": str(train_set), "output_name": "nan"}).status_code == 200
    p = _wait_done(client)
    r = client.get("/instant-lora/v1/progress")
    assert r.status_code == 200 and p["state"] == "failed"
    assert p["loss"] is None and p["avg_loss"] is None and "out of memory" in p["error"]


def test_rest_uses_the_webuis_api_auth(api, w):
    client, _ = api
    w.shared.cmd_opts.api_auth = "alice:secret,bob:pw"
    assert client.get("/instant-lora/v1/progress").status_code == 401
    assert client.get("/instant-lora/v1/progress", auth=("alice", "wrong")).status_code == 401
    assert client.get("/instant-lora/v1/progress", auth=("bob", "pw")).status_code == 200


@pytest.mark.parametrize("changes,says", [
    ({"width": 10**6}, "width"), ({"height": 0}, "height"), ({"steps": 1e30}, "steps"), ({"seed": 2**80}, "seed"),
    ({"cfg_scale": "7"}, "cfg_scale"), ({"weights": [{}]}, "weights"), ({"weights": "nan"}, "weights"),
    ({"run": []}, "run"), ({"checkpoint": "nope.safetensors"}, "not a checkpoint"), ({"prompt": {}}, "prompt"),
])
def test_rest_grid_refuses_bad_numbers_and_values(api, changes, says):
    client, _ = api
    r = client.post("/instant-lora/v1/grid", json={"run": "my_style", "prompt": "a cat", **changes})
    assert r.status_code == 422, r.text
    assert says in r.json()["error"]
