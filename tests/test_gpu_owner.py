"""One owner of the GPU per process: a training, the Test panel's renderer and the captioner never
hold it at the same time (standalone app and WebUI alike)."""

import threading

import pytest

from instant_lora.errors import InstantLoraError
from instant_lora.host import gpu
from instant_lora.train.events import RunStopped


def test_a_second_owner_is_refused_naming_the_first():
    inside, release = threading.Event(), threading.Event()

    def training():
        with gpu.hold("training 'my_lora'"):
            inside.set()
            release.wait(10)

    t = threading.Thread(target=training)
    t.start()
    assert inside.wait(10)
    with pytest.raises(InstantLoraError, match="training 'my_lora'"):
        with gpu.hold("test images"):
            pass
    assert gpu.owner() == "training 'my_lora'"
    release.set()
    t.join(10)
    with gpu.hold("test images"):  # free again
        assert gpu.owner() == "test images"
    assert gpu.owner() is None


def test_the_same_thread_may_nest_and_a_waiting_run_can_be_stopped():
    with gpu.hold("training"):
        with gpu.hold("its own samples"):  # the training's samples render inside it
            assert gpu.owner() == "training"
        stop = threading.Event()
        errors = []

        def waiting_run():
            try:
                with gpu.hold("training 2", wait=60, should_stop=stop.is_set):
                    pass
            except RunStopped as e:
                errors.append(e.stage)

        t = threading.Thread(target=waiting_run)
        t.start()
        stop.set()
        t.join(10)
        assert errors == ["waiting"]  # a cancelled wait is a cancel, not a failure


def test_the_standalone_test_panel_holds_the_gpu(tmp_path, monkeypatch):
    from contextlib import contextmanager

    from instant_lora.host.standalone import StandaloneHost

    seen = []

    @contextmanager
    def fake_renderer(path, lora_dir):
        seen.append(gpu.owner())
        yield lambda *a: None

    monkeypatch.setattr("instant_lora.sample.generate.kept_renderer", fake_renderer)
    host = StandaloneHost(models_dir=tmp_path, lora_dir=tmp_path / "Lora", data_dir=tmp_path / "data")
    with host.test_renderer("base.safetensors"):
        assert gpu.owner() == "test images"
    assert seen == ["test images"] and gpu.owner() is None


def test_checkpoint_list_shows_checkpoints_not_a_diffusers_folders_parts(tmp_path):
    from instant_lora.host.standalone import StandaloneHost

    models = tmp_path / "models"
    (models / "sd15").mkdir(parents=True)
    (models / "sd15" / "dreamy.safetensors").write_bytes(b"\0")
    (models / "v1-5.ckpt").write_bytes(b"\0")
    pipe = models / "my-diffusers-model"
    for part in ("unet", "vae", "text_encoder"):
        (pipe / part).mkdir(parents=True)
        (pipe / part / "diffusion_pytorch_model.safetensors").write_bytes(b"\0")
    (pipe / "model_index.json").write_text("{}")
    (models / ".hidden.safetensors").write_bytes(b"\0")
    host = StandaloneHost(models_dir=models, lora_dir=tmp_path / "Lora", data_dir=tmp_path / "data")
    assert host.list_checkpoints() == ["my-diffusers-model", "sd15/dreamy.safetensors", "v1-5.ckpt"]
    assert host.knows_checkpoint("v1-5.ckpt") and not host.knows_checkpoint("../etc/passwd")
