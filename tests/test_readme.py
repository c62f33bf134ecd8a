"""Every command in the README is run here, as written but for what a test must stand in for: the
base model is the tests' tiny one, the dataset a tiny one, sizes and step counts small, the hub a
local server, the network absent (pip runs with --dry-run --no-index). A command the README
gains without a runner here fails `test_every_readme_command_has_a_runner`."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser_support import free_port
from conftest import make_image

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


# ---- the README's commands ---------------------------------------------------------------------

def readme_commands(text: str | None = None) -> list[str]:
    """Commands of the ```bash blocks (continuation lines joined, comments dropped), then inline
    `python ...` / `curl ...` spans of the prose, in README order, each once."""
    text = README.read_text(encoding="utf-8") if text is None else text
    found: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words:
                found.append(shlex.join(words))
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    for span in re.findall(r"`((?:python3?|curl|git|bash|node|pip) [^`]+)`", prose):
        found.append(shlex.join(shlex.split(span)))
    return list(dict.fromkeys(found))


# ---- a workspace where the commands run ----------------------------------------------------------

class Workspace:
    def __init__(self, root: Path, tiny_model: Path):
        self.root = root
        self.tiny_model = tiny_model
        import shutil

        # The README names the base model by file name; here that name is the tiny model.
        shutil.copytree(tiny_model, root / "models" / "v1-5-pruned-emaonly")
        from instant_lora.tiny import build_tiny_sdxl, save_diffusers_folder

        save_diffusers_folder(build_tiny_sdxl(0), root / "models" / "sd_xl_base_1.0")  # the SDXL section's base
        make_image(root / "lora_train_set" / "10_test" / "fashion_001.png", (200, 30, 30))
        (root / "lora_train_set" / "10_test" / "fashion_001.txt").write_text("test, red square dress", encoding="utf-8")
        make_image(root / "lora_train_set" / "10_test" / "fashion_002.png", (30, 30, 200), shape="circle")

    def env(self, **extra) -> dict:
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HOME=str(self.root / "home"),
                   GRADIO_ANALYTICS_ENABLED="False")
        env.pop("VIRTUAL_ENV", None)
        env.update(extra)
        return env

    def app(self, args: list[str], timeout: float = 300, **env) -> subprocess.CompletedProcess:
        r = subprocess.run([sys.executable, str(ROOT / "standalone_app.py"), *args], cwd=self.root, env=self.env(**env),
                           capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"{args}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        return r


def small(args: list[str], ws: Workspace) -> list[str]:
    """The README's flags with the sizes and step counts a test can afford."""
    out = []
    for a in args:
        name, eq, value = a.partition("=")
        if name == "--resolution" and eq:
            a = f"{name}=64,64"
        elif name in ("--max_train_steps", "--max_train_epochs", "--save_every_n_epochs") and eq:
            a = f"{name}={min(int(value), 2 if 'epoch' in name else 6)}"
        out.append(a)
    return out




# ---- one runner per kind of command --------------------------------------------------------------

def run_venv(words, ws):
    target = ws.root / words[-1]
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True, timeout=120)
    assert (target / "bin" / "python").exists()


def run_activate(words, ws):
    assert (ws.root / words[1]).is_file(), f"{words[1]} missing: the README's venv line did not make it"


def run_pip(words, ws):
    if not _standalone_env():
        pytest.skip("requirements.txt is the standalone install; this environment holds the WebUI's pins")
    r = subprocess.run([sys.executable, "-m", "pip", *words[1:], "--dry-run", "--no-index", "-q"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
    assert r.returncode == 0, f"{shlex.join(words)} would not be satisfied:\n{r.stderr[-2000:]}"


def run_app_server(words, ws):
    import threading

    port = free_port()
    args = [*words[2:], "--no-browser", "--port", str(port)]
    proc = subprocess.Popen([sys.executable, str(ROOT / "standalone_app.py"), *args], cwd=ws.root, env=ws.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    banner = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Instant LoRA is running at"):
                banner.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert banner.wait(180), f"the app did not start: {''.join(lines)[-3000:]}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as r:
            assert r.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        reader.join(timeout=10)
    out = "".join(lines)
    assert f"http://127.0.0.1:{port}/" in out and "--share" in out and "share=True" not in out, out


def run_selftest(words, ws):
    r = ws.app(words[2:])
    assert r.stdout.strip().splitlines()[-1].startswith("PASS")


def run_models(words, ws):
    (ws.root / "home" / "stable-diffusion-webui" / "models" / "Stable-diffusion").mkdir(parents=True, exist_ok=True)
    (ws.root / "home" / "stable-diffusion-webui" / "models" / "Stable-diffusion" / "found.safetensors").write_bytes(b"x")
    r = ws.app(words[2:])
    assert "found.safetensors" in r.stdout


def run_download(words, ws):
    from fake_hub import serve_file

    payload = os.urandom(4096)
    with serve_file(payload) as (endpoint, registry_env):
        r = ws.app(words[2:], **registry_env(words[3], payload))
    assert any(p.read_bytes() == payload for p in (ws.root / "models").rglob("*") if p.is_file()), r.stdout + r.stderr


def run_train(words, ws):
    args = small(words[2:], ws)
    if "--help" in args:
        r = ws.app(args)
        assert "--network_dim" in r.stdout
        return
    r = ws.app(args)
    out = next(a.split("=", 1)[1] for a in args if a.startswith("--output_dir="))
    assert list((ws.root / out).glob("*.safetensors")), r.stderr[-2000:]
    if "--pretrained_model_name_or_path=sd_xl_base_1.0" in args:
        from instant_lora.lora.kohya_file import read_lora_file

        name = next(a.split("=", 1)[1] for a in args if a.startswith("--output_name="))
        sd, md = read_lora_file(ws.root / out / f"{name}.safetensors")
        assert md["ss_base_model_version"] == "sdxl_base_v1-0" and "model: SDXL" in r.stdout + r.stderr
        assert any(k.startswith("lora_unet_input_blocks_") for k in sd)


def run_torchrun(words, ws):
    """Two processes on the CPU (gloo), as the README's command starts them on two GPUs."""
    n = words[words.index("--nproc_per_node") + 1]
    args = small(words[words.index("train") + 1:], ws)
    env = {k: v for k, v in ws.env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", n, "--master_port",
                        str(free_port()), str(ROOT / "standalone_app.py"), "train", *args], cwd=ws.root, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = next(a.split("=", 1)[1] for a in args if a.startswith("--output_dir="))
    from instant_lora.lora.kohya_file import read_lora_file

    _, md = read_lora_file(ws.root / out / "my_lora_2gpu.safetensors")
    assert md["ss_num_processes"] == n


def run_caption(words, ws):
    from captioning_fixtures import BANKS, tiny_clip

    args = words[3:]
    if "--lint" not in args:
        tiny = tiny_clip(ws.root / "clip")
        banks = ws.root / "banks"
        banks.mkdir(exist_ok=True)
        for name, labels in BANKS.items():
            (banks / f"{name}.txt").write_text("# top_k: 1\n" + "\n".join(labels) + "\n")
        args = [*args, "--clip_model", str(tiny.safetensors), "--label_banks", str(banks), "--device", "cpu", "--offline",
                "--threshold", "-1"]
    from instant_lora.cli import main

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ws.root)
        assert main(["caption", *args]) == 0
    if "--lint" not in args:
        assert (ws.root / "lora_train_set" / "10_test" / "fashion_002.txt").read_text().startswith("mytrigger")


def run_generate(words, ws):
    args = words[2:]
    if "--help" not in args:
        args = [*small(args, ws), "--steps", "2", "--width", "64", "--height", "64"]
    r = ws.app(args)
    if "--out" in args:
        assert (ws.root / args[args.index("--out") + 1]).is_file(), r.stderr[-2000:]


def run_install_py(words, ws):
    r = subprocess.run([sys.executable, str(ROOT / "install.py"), *words[2:]], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def run_curl(words, ws):
    """The REST example, sent to the WebUI stand-in's routes (the training itself stands in: the
    answer is the plan, which is what the example shows)."""
    pytest.importorskip("fastapi")
    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from test_webui_host import FakeTrain
    from webui_stub.harness import webui

    from instant_lora import jobs
    from instant_lora.host import webui as webui_host
    from instant_lora.host.webui import routes

    method = words[words.index("-X") + 1]
    url = next(w for w in words if "/instant-lora/" in w)
    body = json.loads(words[words.index("-d") + 1])
    body["train_data_dir"] = str(ws.root / "lora_train_set")  # the example's /data/my_cat
    with webui(ws.root / "stub") as w, pytest.MonkeyPatch.context() as mp:
        mp.setattr(jobs, "_JOB", jobs.TrainingJob())
        mp.setattr("instant_lora.train.loop.run_prepared", FakeTrain(w))
        app = FastAPI()
        host = webui_host.get_host()
        routes.register(app, host, host.job)
        client = TestClient(app)
        r = client.request(method, "/" + url.split("/", 1)[1], json=body)
        assert r.status_code == 200, r.text
        assert r.json()["started"] == body["output_name"] and r.json()["steps"] > 0
        deadline = time.time() + 60
        while client.get("/instant-lora/v1/progress").json()["state"] == "running" and time.time() < deadline:
            time.sleep(0.1)
        assert client.get("/instant-lora/v1/progress").json()["state"] == "finished"


def run_git_clone(words, ws):
    """Installing by hand: this repository cloned into a WebUI's extensions/ folder has what the
    WebUI loads (install.py, scripts/, javascript/, the package)."""
    target = ws.root / "webui" / words[-1]
    subprocess.run(["git", "clone", "-q", str(ROOT), str(target)], check=True, timeout=120, capture_output=True)
    for part in ("install.py", "scripts/instant_lora_tab.py", "javascript/instant_lora.js", "extension/instant_lora/__init__.py"):
        assert (target / part).is_file(), part


def run_by_ci(words, ws):
    """.ci/run is what CI runs; these are the commands inside it."""
    ci = (ROOT / ".ci" / "run").read_text()
    command = shlex.join(words)
    assert command == "bash .ci/run" or ("-m pytest" in ci if "pytest" in command else command in ci), command


def run_messages(words, ws):
    """The catalogue's maintenance command: it lists no missing message (the catalogue is complete)."""
    r = subprocess.run([sys.executable, str(ROOT / words[1]), *words[2:]], cwd=ws.root, env=ws.env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout) == {} and re.search(r"\b0 of \d+ messages have no zh-TW entry", r.stderr), r.stderr[-500:]


RUNNERS = [
    (r"python localizations/messages\.py zh-TW$", run_messages),
    (r"python3? -m venv \S+$", run_venv),
    (r"source \S+/activate$", run_activate),
    (r"pip install ", run_pip),
    (r"python standalone_app\.py$", run_app_server),
    (r"python standalone_app\.py selftest$", run_selftest),
    (r"python standalone_app\.py models$", run_models),
    (r"python standalone_app\.py download-model \w+$", run_download),
    (r"python standalone_app\.py train ", run_train),
    (r"torchrun --nproc_per_node \d+ standalone_app\.py train ", run_torchrun),
    (r"python standalone_app\.py caption ", run_caption),
    (r"python standalone_app\.py generate ", run_generate),
    (r"python install\.py", run_install_py),
    (r"git clone '?<url>'? extensions/[\w-]+$", run_git_clone),
    (r"curl -X POST localhost:7860/instant-lora/v1/", run_curl),
    (r"(bash \.ci/run|python -m pytest tests.*|node --test tests/js)$", run_by_ci),
]


def runner_for(command: str):
    matches = [fn for pattern, fn in RUNNERS if re.match(pattern, command)]
    return matches[0] if matches else None


def _standalone_env() -> bool:
    from importlib.metadata import version

    return int(version("gradio").split(".")[0]) >= 5


# ---- the tests -----------------------------------------------------------------------------------

def test_every_readme_command_has_a_runner():
    commands = readme_commands()
    assert len(commands) >= 10
    missing = [c for c in commands if runner_for(c) is None]
    assert not missing, f"README commands no test runs (add a runner in tests/test_readme.py): {missing}"


def test_the_parser_finds_blocks_continuations_and_inline_commands():
    text = ("intro `python standalone_app.py train --help` and `pip` alone\n```bash\npython a.py \\\n  --x=1   # why\n"
            "# only a comment\n```\n```\nnot bash\n```\n")
    assert readme_commands(text) == ["python a.py --x=1", "python standalone_app.py train --help"]


@pytest.mark.parametrize("command", readme_commands(), ids=lambda c: re.sub(r"\W+", "_", c)[:70])
def test_readme_command_runs(command, workspace):
    runner = runner_for(command)
    assert runner is not None
    runner(shlex.split(command), workspace)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("readme")
    (root / "home").mkdir()
    return Workspace(root, tiny_model_dir)


def test_readme_names_the_files_the_app_creates():
    text = README.read_text(encoding="utf-8")
    ignored = (ROOT / ".gitignore").read_text()
    for folder in ("models/", "output/", "instant_lora_data/"):
        assert f"`{folder}`" in text and f"/{folder}" in ignored, folder
