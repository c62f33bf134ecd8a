"""What the browser tests share: Debian's Chromium driven by Playwright (never `playwright
install`), its flags, a free port, and where screenshots go."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def require_browser() -> None:
    """Skip where no browser is installed; in CI a missing browser is a failure (.ci/run installs it)."""
    missing = []
    try:
        import playwright  # noqa: F401
    except ImportError:
        missing.append("the playwright package")
    if not Path(CHROMIUM).exists():
        missing.append(CHROMIUM)
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser test cannot run in CI: missing {', '.join(missing)} (.ci/run installs them)")
        pytest.skip(f"missing {', '.join(missing)}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shots_dir() -> Path:
    """test-output/screenshots/gradio<major>/ (CI keeps them as artifacts)."""
    from importlib.metadata import version

    folder = ROOT / "test-output" / "screenshots" / f"gradio{version('gradio').split('.')[0]}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def app_env(base: Path, **extra) -> dict:
    """The standalone app's environment in a test: offline, its caches and home under `base`."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1",
               INSTANT_LORA_CACHE=str(base / "cache"), INSTANT_LORA_SEARCH_HOME=str(base / "home"))
    env.pop("INSTANT_LORA_WEBUI_DIR", None)
    env.update(extra)
    return env


def start_app(base: Path, env: dict, *extra: str):
    """`standalone_app.py` serving base/models, base/loras and base/data on a free port, its output
    in base/app.log: (process, log file, url) once the page answers; a start that fails fails the test."""
    port = free_port()
    log = open(base / "app.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "standalone_app.py"), "--port", str(port), "--no-browser",
                             "--models-dir", str(base / "models"), "--lora-dir", str(base / "loras"), "--data-dir", str(base / "data"), *extra],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=base)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=1)
            return proc, log, url
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    proc.kill()
    log.close()
    pytest.fail("the app did not start:\n" + (base / "app.log").read_text()[-3000:])
