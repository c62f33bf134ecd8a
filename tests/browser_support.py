"""What the browser tests share: Debian's Chromium driven by Playwright (never `playwright
install`), its flags, a free port, and where screenshots go."""

import os
import socket
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
