"""The few places where Gradio 3.41 (the WebUI), 4.40 (Forge) and current releases differ, and the
one helper that turns a handler's plain result into component updates."""

from __future__ import annotations

import inspect


def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def copyable_textbox(gr, **kw):
    """A Textbox with a copy button where the installed Gradio has one."""
    if _accepts(gr.Textbox.__init__, "show_copy_button"):
        kw["show_copy_button"] = True
    elif _accepts(gr.Textbox.__init__, "buttons"):
        kw["buttons"] = ["copy"]
    return gr.Textbox(**kw)


def every(gr, demo, fn, inputs, outputs, seconds: float):
    """Call fn every `seconds` while the page is open: gr.Timer (4.40+) or load(every=) (3.x),
    never with a progress indicator on the outputs.

    Gradio 3 runs `every` as one endless generator, so its outputs' status trackers stay in the
    "generating" state for as long as the page is open; that state's pulse animation outdoes the
    opacity 0 of show_progress="hidden", and every polled box wears an orange border. A style
    rule for these outputs' trackers stops the animation, so the hidden tracker stays hidden."""
    if hasattr(gr, "Timer"):
        timer = gr.Timer(seconds)
        timer.tick(fn, inputs=inputs, outputs=outputs, show_progress="hidden")
        return timer
    ids = [o.elem_id for o in outputs if getattr(o, "elem_id", None)]
    if ids:
        trackers = ", ".join(f"#{i} .wrap.hide" for i in ids)
        gr.HTML(f"<style>{trackers} {{animation: none !important; border-color: transparent !important;}}</style>",
                elem_id="il_poll_style")
    return demo.load(fn, inputs=inputs, outputs=outputs, every=seconds, show_progress="hidden")


def quiet(gr) -> dict:
    """Event options for an output that updates as the user types (the live plan): no progress
    indicator, and on 4.x+ only the last of a burst of changes runs."""
    kw = {"show_progress": "hidden"}
    if gradio_major(gr) >= 4:
        kw["trigger_mode"] = "always_last"
    return kw


def in_order(gr, group: str) -> dict:
    """Event options that run every event of `group` one at a time, in the order they came (4.x+;
    Gradio 3's queue already does). The page-load plan may still be building a model skeleton when
    a dataset loads: the later answer must land last, not the slower one."""
    return {"concurrency_id": group, "concurrency_limit": 1} if gradio_major(gr) >= 4 else {}


def updates(gr, values: dict, names) -> tuple:
    """One update per output name, in order: the new value where `values` has one, else "leave
    it as it is" (nothing sent for it)."""
    return tuple(values[n] if n in values else gr.update() for n in names)


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
