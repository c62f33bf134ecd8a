"""Messages that say what to do, through the real entry point (`instant_lora.cli.main`, what
`python standalone_app.py ...` runs): help, mistyped flags, every problem at once before torch
loads, no empty logs after a failure, a taken port, the start-up banner, the exit status of a
cancelled run, and never replacing a LoRA in the WebUI's Lora folder silently."""

import os
import signal
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest
from browser_support import free_port

from instant_lora.cli import EXIT_CANCELLED, main

ROOT = Path(__file__).resolve().parents[1]


def train(*flags, capsys=None):
    rc = main(["train", *map(str, flags)])
    out = capsys.readouterr() if capsys is not None else None
    return rc, out


def fake_webui(root: Path) -> Path:
    """A folder the trainer takes for a WebUI install: webui.py, modules/, models/Lora/."""
    (root / "modules").mkdir(parents=True)
    (root / "webui.py").write_text("")
    (root / "models" / "Lora").mkdir(parents=True)
    return root


def tiny_run_flags(model, data, out, name="tiny", steps=2):
    return [f"--pretrained_model_name_or_path={model}", f"--train_data_dir={data}", f"--output_dir={out}",
            "--resolution=64,64", "--network_dim=4", "--network_alpha=4", "--learning_rate=1e-3", f"--max_train_steps={steps}",
            "--seed=1", "--cache_latents", f"--output_name={name}"]


# ---- 1. --help ---------------------------------------------------------------------------------

def test_train_help_prints_every_flag_and_a_literal_percent(capsys):
    from instant_lora.config import FIELDS
    from instant_lora.kohya_flags import GROUP_TITLES, NOT_FLAGS

    rc, out = train("--help", capsys=capsys)
    assert rc == 0 and out.err == ""
    text = out.out
    assert "option_strings" not in text and "%%" not in text  # argparse's internals / an escape left over
    flat = "".join(text.split())  # help wraps lines (and at hyphens)
    assert "~25%slower" in flat  # --gradient_checkpointing's own text, percent sign and all
    flags = [n for n, f in FIELDS.items() if f.metadata["group"] in GROUP_TITLES and n not in NOT_FLAGS]
    for name in flags:
        assert f"--{name}" in text, name
        assert "".join(FIELDS[name].metadata["help"].split()) in flat, name
    assert "--overwrite" in text and "--config_file" in text
    assert "130cancelled" in flat  # the exit statuses


# ---- 2. mistyped flags -----------------------------------------------------------------------

def test_every_unknown_train_flag_is_named_with_its_closest_match(capsys):
    rc, out = train("--netwrk_dim=8", "--learning_rat", "1e-4", "--network-alpha=4", capsys=capsys)
    assert rc == 2 and "Traceback" not in out.err
    assert "unknown flag --netwrk_dim: did you mean --network_dim?" in out.err
    assert "unknown flag --learning_rat: did you mean --learning_rate?" in out.err
    assert "unknown flag --network-alpha: did you mean --network_alpha?" in out.err
    assert "1e-4" not in out.err  # the mistyped flag's value is not a second complaint
    assert "--pretrained_model_name_or_path is required" in out.err  # with the other problems, at once


def test_a_mistyped_app_flag_is_one_line_with_a_suggestion(capsys):
    rc = main(["--prot", "7870"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip() == "error: unknown flag --prot: did you mean --port?"
    rc = main(["--models_dir", "m", "--port", "x"])
    err = capsys.readouterr().err
    assert rc == 2 and "usage:" not in err and "Traceback" not in err
    assert "unknown flag --models_dir: did you mean --models-dir?" in err and "--port must be a number" in err


# ---- 3. every problem before torch -----------------------------------------------------------

def test_missing_flags_and_bad_values_all_at_once_before_torch(tmp_path):
    code = ("import sys; sys.path.insert(0, 'extension')\n"
            "from instant_lora.cli import main\n"
            "rc = main(['train', '--network_dim=abc', '--mixed_precision=fp8', '--learning_rate=-1', '--resolution=500',"
            " '--cache_latents=yes', '--max_train_steps'])\n"
            "print(rc, 'torch' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=""))
    assert r.stdout.split() == ["2", "False"], r.stdout + r.stderr
    err = r.stderr
    for expected in ("--pretrained_model_name_or_path is required", "--train_data_dir is required",
                     "--network_dim must be a whole number (got 'abc')", "--mixed_precision must be one of no, fp16, bf16",
                     "--learning_rate = -1 is out of range", "--resolution 500x500 must be multiples of 64",
                     "--cache_latents is a switch and takes no value", "--max_train_steps needs a value"):
        assert expected in err, (expected, err)
    assert err.count("error:") == 1 and "Traceback" not in err


# ---- 4. no empty logs after a failure ----------------------------------------------------------

def test_a_run_that_fails_before_its_first_step_leaves_no_logs(tmp_path, train_set, capsys):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    rc, cap = train(f"--pretrained_model_name_or_path={bad}", f"--train_data_dir={train_set}", f"--output_dir={out}",
                    "--resolution=64", "--log_with=tensorboard", f"--logging_dir={tmp_path / 'runs' / 'logs'}", capsys=capsys)
    assert rc == 2 and "broken.safetensors" in cap.err and "Traceback" not in cap.err
    assert not (tmp_path / "runs").exists()  # no JSONL, no TensorBoard folder, no empty folders made for them
    assert not list(out.rglob("*"))
    # (a run that logged steps keeps its log: test_cli's seed command, test_train's NaN run)


# ---- 5. the app's port and banner --------------------------------------------------------------

def test_a_taken_port_says_pass_port_and_fails_fast():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = ("import sys; sys.path.insert(0, 'extension')\n"
                "from instant_lora.cli import main\n"
                f"rc = main(['--port', '{port}', '--no-browser'])\n"
                "print(rc, 'gradio' in sys.modules, 'torch' in sys.modules)\n")
        r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.stdout.split() == ["2", "False", "False"], r.stdout + r.stderr  # refused before the UI is built
    assert f"port {port} is already in use" in r.stderr and "pass --port N" in r.stderr
    assert "Traceback" not in r.stderr


class FakeDemo:
    """What run_app needs of a Gradio Blocks; `launch` prints what Gradio prints even when quiet."""

    def __init__(self, error=None):
        self.error, self.launched, self.closed = error, None, False
        self.local_url = self.share_url = None

    def queue(self):
        return self

    def launch(self, **kw):
        if self.error:
            raise self.error
        self.launched = kw
        print(f"Running on local URL:  http://127.0.0.1:{kw['server_port']}")
        print("* To create a public link, set `share=True` in `launch()`.")
        self.local_url = f"http://127.0.0.1:{kw['server_port']}/"

    def block_thread(self):
        pass

    def close(self):
        self.closed = True




@pytest.fixture
def fake_ui(monkeypatch):
    demos = []
    module = types.ModuleType("instant_lora.ui")
    module.build_ui = lambda host: demos[-1]
    monkeypatch.setitem(sys.modules, "instant_lora.ui", module)
    return demos


def test_gradios_own_port_error_becomes_the_same_message(fake_ui, tmp_path, capsys):
    port = free_port()  # free for our check; Gradio then finds it taken (a race, or its own check)
    demo = FakeDemo(OSError(f"Cannot find empty port in range: {port}-{port}. You can specify a different port by "
                            "setting the GRADIO_SERVER_PORT environment variable or passing the `server_port` parameter to `launch()`."))
    fake_ui.append(demo)
    rc = main(["--port", str(port), "--no-browser", "--data-dir", str(tmp_path / "d"), "--lora-dir", str(tmp_path / "l"),
               "--models-dir", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert rc == 2 and f"port {port} is already in use" in err and "pass --port N" in err
    assert "server_port" not in err and "Traceback" not in err and demo.closed


def test_the_banner_names_our_flags_not_gradios_launch_arguments(fake_ui, tmp_path, capsys):
    port = free_port()
    demo = FakeDemo()
    fake_ui.append(demo)
    rc = main(["--port", str(port), "--no-browser", "--data-dir", str(tmp_path / "d"), "--lora-dir", str(tmp_path / "l"),
               "--models-dir", str(tmp_path / "m")])
    out = capsys.readouterr().out
    assert rc == 0 and demo.launched["quiet"] is True and demo.launched["server_port"] == port
    assert f"Instant LoRA is running at http://127.0.0.1:{port}/" in out
    assert "--share" in out and "--listen" in out
    assert "share=True" not in out and "launch()" not in out and "Running on local URL" not in out


def test_real_gradio_launches_quietly_with_our_banner(tmp_path, capsys):
    """The Gradio of this environment (3.41, 4.40 or 6): nothing of its start-up text but ours."""
    gr = pytest.importorskip("gradio")
    from instant_lora.app import parse_app_args, serve

    with gr.Blocks() as demo:
        gr.Markdown("x")
    demo.block_thread = lambda: None
    args = parse_app_args(["--port", str(free_port()), "--no-browser"])
    try:
        serve(demo, args, None, [str(tmp_path)])
    finally:
        demo.close()
    out = capsys.readouterr().out
    assert f"Instant LoRA is running at http://127.0.0.1:{args.port}/" in out and "--share" in out
    assert "share=True" not in out and "Running on local URL" not in out


# ---- 6. a cancelled run's exit status ----------------------------------------------------------

def _ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)  # what the terminal sends; cmd_train's handler asks the run to stop


def test_ctrl_c_before_the_first_step_exits_cancelled_and_saves_nothing(tmp_path, train_set, monkeypatch, capsys):
    import instant_lora.train.loop as loop

    prepare = loop.Run.prepare
    monkeypatch.setattr(loop.Run, "prepare", lambda self: (prepare(self), _ctrl_c()))
    monkeypatch.setattr(loop.Run, "load_model", lambda self: pytest.fail("loaded the model after Ctrl-C"))
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"\0")
    rc, out = train(*tiny_run_flags(model, train_set, tmp_path / "out"), capsys=capsys)
    assert rc == EXIT_CANCELLED == 130
    assert "cancelled during dataset after 0 steps: nothing was saved" in out.err
    assert not list((tmp_path / "out").glob("*.safetensors")) and out.out == ""


def test_ctrl_c_during_training_saves_and_exits_cancelled(tmp_path, train_set, tiny_model_dir, monkeypatch, capsys):
    from instant_lora.train.events import ConsoleSink, Step

    console = ConsoleSink.__call__

    def on_event(self, event):
        console(self, event)
        if isinstance(event, Step) and event.step == 1:
            _ctrl_c()

    monkeypatch.setattr(ConsoleSink, "__call__", on_event)
    out_dir = tmp_path / "out"
    rc, out = train(*tiny_run_flags(tiny_model_dir, train_set, out_dir, steps=50), capsys=capsys)
    assert rc == EXIT_CANCELLED, out.err[-2000:]
    saved = out_dir / "tiny-step00000001.safetensors"
    assert saved.is_file() and out.out.strip() == str(saved) and not (out_dir / "tiny.safetensors").exists()
    assert "cancelled during training after 1 steps" in out.err


# ---- 7. never replacing a LoRA in the WebUI's Lora folder silently -----------------------------

@pytest.mark.parametrize("how", ["--webui_dir", "env", "--lora_dir", "--output_dir"])
def test_an_existing_lora_in_the_webui_folder_is_refused_before_loading(tmp_path, train_set, monkeypatch, capsys, how):
    import instant_lora.train.loop as loop

    webui = fake_webui(tmp_path / "webui")
    lora = webui / "models" / "Lora"
    (lora / "last.safetensors").write_bytes(b"the user's LoRA")
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"\0")
    where = {"--webui_dir": [f"--webui_dir={webui}"], "env": [], "--lora_dir": [f"--lora_dir={lora}"],
             "--output_dir": [f"--output_dir={lora}"]}[how]
    if how == "env":
        monkeypatch.setenv("INSTANT_LORA_WEBUI_DIR", str(webui))
    monkeypatch.setattr(loop, "run_prepared", lambda *a, **k: pytest.fail("started a run"))
    rc, out = train(f"--pretrained_model_name_or_path={model}", f"--train_data_dir={train_set}", *where, capsys=capsys)
    assert rc == 2 and "Traceback" not in out.err
    assert "last.safetensors already exists" in out.err and "the WebUI's Lora folder" in out.err
    assert "--output_name" in out.err and "--overwrite" in out.err
    assert (lora / "last.safetensors").read_bytes() == b"the user's LoRA"
    # --overwrite lets the same command through
    ran = []
    monkeypatch.setattr(loop, "run_prepared", lambda prepared, **k: ran.append(prepared) or loop.TrainResult(
        path=None, saved=[], steps=0, losses=[], cancelled=False, plan=prepared.plan))
    rc, out = train(f"--pretrained_model_name_or_path={model}", f"--train_data_dir={train_set}", *where, "--overwrite",
                    capsys=capsys)
    assert rc == 0 and ran and ran[0].plan.final_path().resolve() == (lora / "last.safetensors").resolve()
    assert not any("will be replaced" in w for w in ran[0].plan.warnings)


def test_own_output_dir_replaces_with_one_warning_and_drops_the_stale_state(tmp_path, train_set, tiny_model_dir, capsys):
    out_dir = tmp_path / "mine"
    out_dir.mkdir()
    (out_dir / "tiny.safetensors").write_bytes(b"an earlier run's file")
    stale = out_dir / "tiny-state"
    stale.mkdir()
    (stale / "train_state.json").write_text('{"current_step": 999}')
    (out_dir / "tiny.preview.png").write_bytes(b"the earlier file's card picture")
    rc, out = train(*tiny_run_flags(tiny_model_dir, train_set, out_dir), capsys=capsys)
    assert rc == 0, out.err[-2000:]
    assert out.err.count(f"{out_dir / 'tiny.safetensors'} exists and will be replaced") == 1
    assert (out_dir / "tiny.safetensors").read_bytes() != b"an earlier run's file"
    assert not stale.exists() and "removed tiny-state" in out.err  # never an earlier run's state beside the new file
    assert not (out_dir / "tiny.preview.png").exists()  # nor its card picture on the new file's card


def test_the_state_a_run_resumes_from_is_kept(tmp_path):
    from instant_lora.output_paths import remove_stale_state

    state = tmp_path / "tiny-state"
    state.mkdir()
    assert remove_stale_state(tmp_path, "tiny", keep=str(state)) is None and state.is_dir()
    assert remove_stale_state(tmp_path, "tiny") == state and not state.exists()
    assert remove_stale_state(tmp_path, "tiny") is None
