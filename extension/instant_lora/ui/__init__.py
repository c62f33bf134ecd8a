"""The Gradio UI shared by the standalone app and the WebUI tab. Imports no torch or gradio until
build_ui is called, so the WebUI can import the extension cheaply."""


def build_ui(host, job=None):
    from .blocks import build_ui as _build

    return _build(host, job)
