"""WebUIHost against the WebUI stand-in (tests/webui_stub): the WebUI's checkpoints and Lora folder,
the VRAM hand-off in order and undone after success, failure and cancel (A1111 and Forge), the
queue lock, shared.state progress and the Interrupt button. No Gradio, no model: the trainer is
replaced by a fake that emits the real events."""

import threading
import time
import types
from pathlib import Path

import pytest
from webui_stub.harness import webui

from instant_lora.jobs import TrainingJob

NAME = "my_lora"


@pytest.fixture
def a1111(tmp_path):
    with webui(tmp_path) as w:
        yield w


@pytest.fixture
def forge(tmp_path):
    with webui(tmp_path, forge=True) as w:
        yield w


def make_host(w):
    from instant_lora.host.webui.host import WebUIHost

    return WebUIHost(job=TrainingJob())


class FakeTrain:
    """Stands in for train.loop.train: emits Status/Step/Saved/Finished like the loop, stops at a
    step boundary when asked, and can fail, wait, or press the WebUI's Interrupt mid-run."""

    def __init__(self, w, outcome="ok", steps=5, interrupt_at=None, step_s=0.0):
        self.w, self.outcome, self.steps, self.interrupt_at, self.step_s = w, outcome, steps, interrupt_at, step_s
        self.at_step_2 = threading.Event()
        self.go_on = threading.Event()
        self.go_on.set()
        self.seen_state = None

    def __call__(self, prepared, *, model=None, sinks=(), control=None):
        from instant_lora.train.events import Cancelled, Emitter, Finished, Saved, Status, Step

        config = prepared.config
        emit = Emitter(sinks)
        self.w.calls.append("train")
        emit(Status("loading the model"))
        if self.outcome == "fail":
            raise RuntimeError("CUDA out of memory (fake)")
        cancelled, step = False, 0
        for step in range(1, self.steps + 1):
            time.sleep(self.step_s)
            emit(Step(step=step, total=self.steps, epoch=1, loss=0.1, avg_loss=0.1, lr=1e-4, seconds=float(step)))
            if step == 2:
                self.seen_state = dict(self.w.shared.state.dict(), textinfo=self.w.shared.state.textinfo)
                self.at_step_2.set()
                self.go_on.wait(10)
            if self.interrupt_at == step:
                self.w.shared.state.interrupt()  # the Interrupt button / POST /sdapi/v1/interrupt
                emit(Status("still in this step"))
            if control.stop_requested:
                cancelled = True
                break
        path = Path(config.output_dir) / f"{config.output_name}.safetensors"
        path.write_bytes(b"lora")
        emit(Saved(path=str(path), step=step, epoch=1, kind="cancelled" if cancelled else "final"))
        emit(Cancelled(path=str(path), steps=step, seconds=1.0, stage="training") if cancelled
             else Finished(path=str(path), steps=step, seconds=1.0))
        return types.SimpleNamespace(cancelled=cancelled, path=path)


def start(host, name):
    """What the tab's Start button and the REST route do after the request path: start a PreparedRun."""
    from instant_lora.config import TrainConfig
    from instant_lora.request import PreparedRun

    config = TrainConfig(pretrained_model_name_or_path="x", train_data_dir="d", output_dir=str(host.lora_dir), output_name=name)
    plan = types.SimpleNamespace(output_name=name, max_train_steps=5)
    host.job.start(PreparedRun(config=config, plan=plan, scan=None), host=host)


def run(host, w, monkeypatch, fake, keep_on_gpu=False, before_start=None):
    monkeypatch.setattr("instant_lora.train.loop.run_prepared", fake)
    w.shared.opts.data["instant_lora_keep_model_on_gpu"] = keep_on_gpu
    start(host, NAME)
    if before_start:
        before_start()
    return host.job.wait(20)


A1111_BEFORE = ["queue_lock.acquire", ("state.begin", f"Instant LoRA: {NAME}"), "sd_models.unload_model_weights",
                "sd_models.send_model_to_cpu", ("sd_model.to", "cpu")]
A1111_AFTER = ["devices.torch_gc", "sd_models.send_model_to_device", ("sd_model.to", "cuda"), "state.end", "queue_lock.release"]


# ---- where things are ---------------------------------------------------------------------------

def test_checkpoints_are_the_webuis_with_the_loaded_one_as_default(a1111):
    host = make_host(a1111)
    titles = host.list_checkpoints()
    assert sorted(titles) == ["sd15/dreamy.ckpt", "v1-5-pruned-emaonly.safetensors"]
    assert titles[0] != "sd15/dreamy.ckpt" and host.default_checkpoint() == "sd15/dreamy.ckpt"  # the loaded one
    assert host.checkpoint_path("sd15/dreamy.ckpt") == str(a1111.models / "Stable-diffusion" / "sd15" / "dreamy.ckpt")
    assert host.checkpoint_path("dreamy") == host.checkpoint_path("sd15/dreamy.ckpt")  # WebUI's closest match
    (a1111.models / "Stable-diffusion" / "new.safetensors").write_bytes(b"\0")
    assert "new.safetensors" in host.list_checkpoints()  # the Refresh button rescans like the WebUI's own
    assert "sd_models.load_model" not in a1111.calls


def test_default_checkpoint_without_a_loaded_model_never_loads_one(tmp_path):
    with webui(tmp_path, load_model=False) as w:
        host = make_host(w)
        assert host.default_checkpoint() == host.list_checkpoints()[0]  # first in the list
        w.shared.opts.data["sd_model_checkpoint"] = "v1-5-pruned-emaonly.safetensors"
        assert host.default_checkpoint() == "v1-5-pruned-emaonly.safetensors"  # the selected one
        host.before_training()
        host.after_training()
        assert "sd_models.load_model" not in w.calls  # shared.sd_model would have loaded one
        assert "sd_models.unload_model_weights" not in w.calls  # nothing to move


def test_lora_dir_is_the_lora_extensions_else_models_lora(a1111, tmp_path):
    host = make_host(a1111)
    a1111.shared.cmd_opts.lora_dir = str(tmp_path / "my_loras")
    assert host.lora_dir == tmp_path / "my_loras"
    del a1111.shared.cmd_opts.lora_dir  # a fork without the built-in Lora extension
    assert host.lora_dir == a1111.models / "Lora"
    assert host.data_dir == a1111.root / "instant_lora"


def test_flavor_detection(a1111, tmp_path):
    from instant_lora.host.webui.host import detect_flavor

    assert detect_flavor() == ("a1111", None)
    assert make_host(a1111).name == "webui"


def test_forge_is_detected_by_its_memory_manager(forge):
    from instant_lora.host.webui.host import detect_flavor

    flavor, memory = detect_flavor()
    assert flavor == "forge" and memory.__name__ == "backend.memory_management"
    assert make_host(forge).name == "forge"


# ---- the VRAM hand-off -----------------------------------------------------------------------

def test_a1111_handoff_in_order_and_undone_after_success(a1111, monkeypatch):
    host = make_host(a1111)
    snap = run(host, a1111, monkeypatch, FakeTrain(a1111))
    assert snap.state == "finished", snap.error
    assert a1111.calls == A1111_BEFORE + ["train"] + A1111_AFTER
    assert a1111.sd_models.model_data.sd_model.device == "cuda"
    assert not a1111.shared.state.job and a1111.shared.state.job_count == 0
    assert a1111.sd_models.__dict__["FORGE"] is False


def test_a1111_handoff_undone_after_failure(a1111, monkeypatch):
    host = make_host(a1111)
    snap = run(host, a1111, monkeypatch, FakeTrain(a1111, outcome="fail"))
    assert snap.state == "failed" and "out of memory" in snap.error
    assert a1111.calls == A1111_BEFORE + ["train"] + A1111_AFTER
    assert a1111.sd_models.model_data.sd_model.device == "cuda"


def test_a1111_handoff_undone_after_cancel(a1111, monkeypatch):
    host = make_host(a1111)
    fake = FakeTrain(a1111)
    fake.go_on.clear()

    def cancel_at_step_2():
        assert fake.at_step_2.wait(10)
        assert host.job.cancel()
        fake.go_on.set()

    snap = run(host, a1111, monkeypatch, fake, before_start=cancel_at_step_2)
    assert snap.state == "cancelled" and snap.step == 2
    assert a1111.calls == A1111_BEFORE + ["train"] + A1111_AFTER
    assert a1111.sd_models.model_data.sd_model.device == "cuda"


def test_a1111_handoff_undone_when_unloading_fails(a1111, monkeypatch):
    host = make_host(a1111)

    def broken_unload(*a, **k):
        a1111.calls.append("sd_models.unload_model_weights")
        raise RuntimeError("driver error")

    monkeypatch.setattr(a1111.sd_models, "unload_model_weights", broken_unload)
    snap = run(host, a1111, monkeypatch, FakeTrain(a1111))
    assert snap.state == "failed" and "driver error" in snap.error
    assert "train" not in a1111.calls
    assert a1111.calls[-5:] == A1111_AFTER  # a half-done move is undone; the WebUI can generate again
    assert not a1111.shared.state.job


def test_keep_model_on_gpu_setting_skips_the_move(a1111, monkeypatch):
    host = make_host(a1111)
    snap = run(host, a1111, monkeypatch, FakeTrain(a1111), keep_on_gpu=True)
    assert snap.state == "finished"
    assert a1111.calls == ["queue_lock.acquire", ("state.begin", f"Instant LoRA: {NAME}"), "train", "devices.torch_gc",
                           "state.end", "queue_lock.release"]


FORGE_BEFORE = ["queue_lock.acquire", ("state.begin", f"Instant LoRA: {NAME}"), "memory_management.unload_all_models",
                "memory_management.soft_empty_cache"]
FORGE_AFTER = ["devices.torch_gc", "memory_management.soft_empty_cache", "state.end", "queue_lock.release"]


@pytest.mark.parametrize("outcome", ["ok", "fail", "cancel"])
def test_forge_handoff_uses_its_memory_manager(forge, monkeypatch, outcome):
    host = make_host(forge)
    fake = FakeTrain(forge, outcome="fail" if outcome == "fail" else "ok", interrupt_at=2 if outcome == "cancel" else None)
    snap = run(host, forge, monkeypatch, fake)
    assert snap.state == {"ok": "finished", "fail": "failed", "cancel": "cancelled"}[outcome], snap.error
    assert forge.calls == FORGE_BEFORE + ["train"] + FORGE_AFTER
    assert not any(str(c).startswith("sd_models.send_model") for c in forge.calls)  # pass stubs in Forge


def test_waits_for_a_running_generation_and_can_be_cancelled_meanwhile(a1111, monkeypatch):
    from modules import call_queue

    host = make_host(a1111)
    monkeypatch.setattr("instant_lora.host.webui.host.LOCK_POLL_S", 0.01)
    call_queue.queue_lock.acquire()  # txt2img is generating
    a1111.calls.clear()
    fake = FakeTrain(a1111)
    snap = run(host, a1111, monkeypatch, fake, before_start=lambda: (host.job.wait(0.2), host.job.cancel()))
    assert snap.state == "cancelled" and snap.stage == "waiting" and snap.error is None  # cancelled, not failed
    assert "nothing was saved" in snap.log[-1]
    assert a1111.calls == []  # never touched the model or the state
    call_queue.queue_lock.release()

    a1111.calls.clear()
    call_queue.queue_lock.acquire()
    released = threading.Timer(0.3, call_queue.queue_lock.release)
    released.start()
    snap = run(host, a1111, monkeypatch, FakeTrain(a1111))
    released.join()
    assert snap.state == "finished"
    assert a1111.calls.index("queue_lock.release") < a1111.calls.index(("state.begin", f"Instant LoRA: {NAME}"))
    assert a1111.calls[-1] == "queue_lock.release" and not call_queue.queue_lock.locked()


# ---- progress in the WebUI's own way --------------------------------------------------------------

def test_progress_shows_in_shared_state(a1111, monkeypatch):
    host = make_host(a1111)
    fake = FakeTrain(a1111)
    snap = run(host, a1111, monkeypatch, fake)
    assert snap.state == "finished"
    seen = fake.seen_state
    assert seen["job"] == f"Instant LoRA: {NAME}" and seen["job_count"] == 1
    assert seen["sampling_step"] == 2 and seen["sampling_steps"] == 5
    assert seen["textinfo"].startswith("Instant LoRA: step 2/5")
    assert not a1111.shared.state.interrupted


def test_interrupt_button_cancels_at_the_next_step(a1111, monkeypatch):
    host = make_host(a1111)
    snap = run(host, a1111, monkeypatch, FakeTrain(a1111, interrupt_at=3))
    assert snap.state == "cancelled" and snap.step == 3
    assert (host.lora_dir / f"{NAME}.safetensors").is_file()  # what was learned is saved
    assert a1111.calls[-3:] == [("sd_model.to", "cuda"), "state.end", "queue_lock.release"]


def test_an_old_interrupt_does_not_cancel_a_new_run(a1111, monkeypatch):
    a1111.shared.state.interrupt()  # pressed during an earlier generation
    snap = run(make_host(a1111), a1111, monkeypatch, FakeTrain(a1111))
    assert snap.state == "finished" and snap.step == 5  # state.begin() cleared the flag


def test_last_sample_becomes_the_cards_preview(a1111, tmp_path):
    from conftest import make_image

    from instant_lora.host.webui.progress import WebUIProgressSink
    from instant_lora.train.events import Finished, Sample

    job = TrainingJob()
    sink = WebUIProgressSink(a1111.shared.state, job)
    sample = make_image(tmp_path / "samples" / "s1.png")
    lora = a1111.lora_dir / "x.safetensors"
    lora.write_bytes(b"lora")
    sink(Sample(step=4, caption="a cat", path=str(sample)))
    assert a1111.shared.state.id_live_preview == 1  # shown as the WebUI's live preview too
    sink(Finished(path=str(lora), steps=4, seconds=1.0))
    assert (a1111.lora_dir / "x.preview.png").read_bytes() == sample.read_bytes()
    sample.write_bytes(b"changed")
    sink(Finished(path=str(lora), steps=4, seconds=1.0))
    assert (a1111.lora_dir / "x.preview.png").read_bytes() != b"changed"  # a chosen preview is kept


def test_after_training_without_before_is_harmless(a1111):
    make_host(a1111).after_training()  # e.g. the job failed before before_training ran
    assert a1111.calls == []


def test_reload_ui_stops_the_training(a1111, monkeypatch):
    """on_script_unloaded: cancel, wait briefly, everything handed back; the package may be reloaded."""
    from instant_lora.host import webui as webui_host

    host = webui_host._HOST = make_host(a1111)
    fake = FakeTrain(a1111, steps=10_000, step_s=0.005)
    monkeypatch.setattr("instant_lora.train.loop.run_prepared", fake)
    start(host, NAME)
    assert fake.at_step_2.wait(10)
    assert webui_host.shutdown(timeout=10, purge_modules=False) is True
    snap = host.job.snapshot()
    assert snap.state == "cancelled" and snap.step < 10_000
    assert a1111.calls[-2:] == ["state.end", "queue_lock.release"] and webui_host._HOST is None


def test_reload_ui_leaves_a_training_that_does_not_stop_in_time(a1111, monkeypatch, capsys):
    from instant_lora.host import webui as webui_host

    host = webui_host._HOST = make_host(a1111)
    fake = FakeTrain(a1111)
    fake.go_on.clear()  # stuck inside step 2 (say, a long sample render)
    monkeypatch.setattr("instant_lora.train.loop.run_prepared", fake)
    start(host, NAME)
    assert fake.at_step_2.wait(10)
    assert webui_host.shutdown(timeout=0.2) is False  # keeps its modules: the reloaded tab shows the run
    assert "did not stop in time" in capsys.readouterr().err
    assert "instant_lora.jobs" in __import__("sys").modules
    fake.go_on.set()
    assert host.job.wait(10).state == "cancelled"  # the cancel still lands at the next step
