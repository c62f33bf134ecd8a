"""Instant LoRA inside the AUTOMATIC1111 WebUI or WebUI Forge: what the entry script registers.

    host.py      WebUIHost: the WebUI's folders, checkpoints, queue lock, VRAM hand-off
    progress.py  the run mirrored into shared.state (progress API, console, preview)
    settings.py  the Settings section
    routes.py    REST routes under /instant-lora/v1
    render.py    the Test panel through the WebUI's own txt2img processing

Imports of the WebUI's `modules` happen inside the calls, never at import.
"""

from __future__ import annotations

import sys
import threading

from .host import WebUIHost
from .settings import add_settings  # noqa: F401 -- on_ui_settings

TAB_TITLE = "Instant LoRA"
TAB_ID = "instant_lora"  # the WebUI makes it elem_id "tab_instant_lora"

_HOST: WebUIHost | None = None
_HOST_LOCK = threading.Lock()


def get_host() -> WebUIHost:
    global _HOST
    with _HOST_LOCK:
        if _HOST is None:
            _HOST = WebUIHost()
        return _HOST


def ui_tabs() -> list:
    """on_ui_tabs: [(Blocks, title, elem_id)]."""
    from ...ui import build_ui

    host = get_host()
    return [(build_ui(host, host.job), TAB_TITLE, TAB_ID)]


def app_started(demo, app) -> None:
    """on_app_started: the REST routes."""
    from .routes import register

    host = get_host()
    register(app, host, host.job)


def shutdown(timeout: float = 5.0, purge_modules: bool = True) -> bool:
    """on_script_unloaded (Reload UI): cancel a running training and wait briefly for its thread.
    When it has stopped, forget this package's modules so the reload imports the current code.
    Returns whether no training is left running."""
    global _HOST
    job = _HOST.job if _HOST is not None else None
    if job is None:
        from ...jobs import current_job

        job = current_job()
    if job.snapshot().running:
        job.cancel()
        job.wait(timeout)
    stopped = not job.snapshot().running
    if not stopped:
        print("[Instant LoRA] the training did not stop in time; it goes on and the reloaded tab shows it.",
              file=sys.stderr)
        return False
    _HOST = None
    if purge_modules:
        for name in [n for n in sys.modules if n == "instant_lora" or n.startswith("instant_lora.")]:
            del sys.modules[name]
    return True
