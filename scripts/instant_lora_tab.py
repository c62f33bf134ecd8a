"""WebUI entry script (AUTOMATIC1111 WebUI 1.10 / WebUI Forge): registers the Instant LoRA tab, its
Settings section, REST routes, and stops the training worker when the UI reloads. Wiring only: the
logic is in extension/instant_lora/host/webui/.

The WebUI puts the extension's root on sys.path only while it imports this file, so the trainer
package's folder is added here (and again in the callbacks, see _ensure_path). If the package
cannot be imported, the tab still appears and says why, and nothing else in the WebUI is affected.
"""

import os
import sys
import traceback

from modules import script_callbacks

EXTENSION_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "extension")


def _ensure_path():
    """Appended (never shadows another extension's modules). The WebUI imports this file with a
    temporary copy of sys.path and puts the old list back afterwards, so the callbacks add it again
    where it sticks."""
    if EXTENSION_DIR not in sys.path:
        sys.path.append(EXTENSION_DIR)


_ensure_path()

TITLE, TAB_ID = "Instant LoRA", "instant_lora"

try:
    from instant_lora.host import webui as webui_host
    IMPORT_ERROR = None
except Exception as e:  # a missing dependency or a broken install: show it in the tab
    webui_host = None
    IMPORT_ERROR = f"{type(e).__name__}: {e}\n\n{traceback.format_exc(limit=4)}"
    print(f"[Instant LoRA] cannot load the extension: {type(e).__name__}: {e}", file=sys.stderr)


def _error_tab(message):
    import gradio as gr

    with gr.Blocks(analytics_enabled=False) as blocks:
        gr.Markdown("### Instant LoRA could not start\n\nRestart the WebUI so that its `install.py` can add what is "
                    "missing (diffusers, peft), or install them by hand into the WebUI's Python. The error was:")
        gr.Code(value=message, label="Error", elem_id="il_load_error")
    return blocks


def on_ui_tabs():
    _ensure_path()
    if webui_host is not None:
        try:
            return webui_host.ui_tabs()
        except Exception as e:
            traceback.print_exc()
            return [(_error_tab(f"{type(e).__name__}: {e}\n\n{traceback.format_exc(limit=6)}"), TITLE, TAB_ID)]
    return [(_error_tab(IMPORT_ERROR), TITLE, TAB_ID)]


def on_ui_settings():
    _ensure_path()
    if webui_host is not None:
        webui_host.add_settings()


def on_app_started(demo, app):
    _ensure_path()
    if webui_host is not None:
        webui_host.app_started(demo, app)


def on_script_unloaded():
    if webui_host is not None:
        webui_host.shutdown()


script_callbacks.on_ui_tabs(on_ui_tabs)
script_callbacks.on_ui_settings(on_ui_settings)
script_callbacks.on_app_started(on_app_started)
script_callbacks.on_script_unloaded(on_script_unloaded)
