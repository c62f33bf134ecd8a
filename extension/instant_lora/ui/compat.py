"""The few places where Gradio 3.41 (the WebUI), 4.40 (Forge) and current releases differ."""

from __future__ import annotations

import inspect


def _accepts(component_cls, name: str) -> bool:
    try:
        return name in inspect.signature(component_cls.__init__).parameters
    except (TypeError, ValueError):
        return False


def copyable_textbox(gr, **kw):
    """A Textbox with a copy button where the installed Gradio has one."""
    if _accepts(gr.Textbox, "show_copy_button"):
        kw["show_copy_button"] = True
    elif _accepts(gr.Textbox, "buttons"):
        kw["buttons"] = ["copy"]
    return gr.Textbox(**kw)


def every(gr, demo, fn, outputs, seconds: float):
    """Call fn every `seconds` while the page is open: gr.Timer (4.40+) or load(every=) (3.x)."""
    if hasattr(gr, "Timer"):
        timer = gr.Timer(seconds)
        timer.tick(fn, inputs=None, outputs=outputs, show_progress="hidden" if gradio_major(gr) >= 4 else False)
        return timer
    return demo.load(fn, inputs=None, outputs=outputs, every=seconds)


def gradio_major(gr) -> int:
    try:
        return int(str(gr.__version__).split(".")[0])
    except ValueError:
        return 3


def js_kwargs(gr, code: str) -> dict:
    """Client-side JS for an event: `_js=` in Gradio 3, `js=` from 4 on."""
    return {"_js": code} if gradio_major(gr) < 4 else {"js": code}


def upload_paths(files) -> list[str]:
    """Gradio 3 hands uploads over as temp-file objects, 4+ as paths."""
    if files is None:
        return []
    if not isinstance(files, (list, tuple)):
        files = [files]
    return [getattr(f, "name", f) for f in files]
