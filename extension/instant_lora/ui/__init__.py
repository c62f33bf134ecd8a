"""The Gradio UI shared by the standalone app and the WebUI tab. Imports no torch or gradio until
build_ui is called, so the WebUI can import the extension cheaply.

    fields.py      the form's settings: which config fields, where they start, what the user set
    handlers/      what the controls do, as plain functions (dataset, buckets, run, progress)
    testing.py     the Test panel's work (also used by the WebUI's REST grid route)
    actions.py     every handler in one import
    sections/      the page's sections, each a builder returning its components
    wiring.py      build_ui: the sections, then every event wired last
    compat.py      what differs between Gradio 3.41, 4.40 and current releases
"""


def build_ui(host, job=None, lang=None):
    from .wiring import build_ui as _build

    return _build(host, job, lang)
