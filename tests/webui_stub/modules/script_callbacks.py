"""modules.script_callbacks: how extensions hook into the WebUI. Each runner calls every registered
callback and reports (not raises) an exception, as the WebUI does, so one broken extension does not
stop the others."""

import inspect
import traceback
from collections import namedtuple

ScriptCallback = namedtuple("ScriptCallback", ["script", "callback", "name"])

callback_map = dict(
    callbacks_app_started=[],
    callbacks_model_loaded=[],
    callbacks_ui_tabs=[],
    callbacks_ui_train_tabs=[],
    callbacks_ui_settings=[],
    callbacks_before_ui=[],
    callbacks_script_unloaded=[],
    callbacks_before_reload=[],
)

# Test instrumentation: (callback, where) for every reported exception.
reported_exceptions = []


def report_exception(c, job):
    reported_exceptions.append((c, job, traceback.format_exc()))
    print(f"Error executing callback {job} for {c.script}\n{traceback.format_exc()}")


def clear_callbacks():
    for callback_list in callback_map.values():
        callback_list.clear()


def _script_of(fun):
    try:
        return inspect.getfile(fun)
    except TypeError:
        return "unknown"


def add_callback(callbacks, fun, *, name=None, category="unknown", filename=None):
    callbacks.append(ScriptCallback(filename or _script_of(fun), fun, name or getattr(fun, "__name__", "unknown")))


def _run(category: str, where: str, *args, reverse: bool = False) -> list:
    """Call every callback of a category as the WebUI does: one failing is reported, the rest run."""
    results = []
    callbacks = callback_map[f"callbacks_{category}"]
    for c in reversed(callbacks) if reverse else callbacks:
        try:
            results.append(c.callback(*args))
        except Exception:
            report_exception(c, where)
    return results


def app_started_callback(demo, app):
    _run("app_started", "app_started_callback", demo, app)


def model_loaded_callback(sd_model):
    _run("model_loaded", "model_loaded_callback", sd_model)


def ui_tabs_callback():
    return [tab for tabs in _run("ui_tabs", "ui_tabs_callback") for tab in (tabs or [])]


def ui_settings_callback():
    _run("ui_settings", "ui_settings_callback")


def before_ui_callback():
    _run("before_ui", "before_ui")


def script_unloaded_callback():
    _run("script_unloaded", "script_unloaded", reverse=True)


def before_reload_callback():
    _run("before_reload", "before_reload")


def on_app_started(callback, *, name=None):
    """callback(demo: gr.Blocks, app: FastAPI) after the app started: add REST routes here."""
    add_callback(callback_map["callbacks_app_started"], callback, name=name, category="app_started")


def on_model_loaded(callback, *, name=None):
    add_callback(callback_map["callbacks_model_loaded"], callback, name=name, category="model_loaded")


def on_ui_tabs(callback, *, name=None):
    """callback() returns a list of (gr.Blocks, title, elem_id); each becomes a top-level tab."""
    add_callback(callback_map["callbacks_ui_tabs"], callback, name=name, category="ui_tabs")


def on_ui_train_tabs(callback, *, name=None):
    add_callback(callback_map["callbacks_ui_train_tabs"], callback, name=name, category="ui_train_tabs")


def on_ui_settings(callback, *, name=None):
    """callback() adds options with shared.opts.add_option(key, shared.OptionInfo(...))."""
    add_callback(callback_map["callbacks_ui_settings"], callback, name=name, category="ui_settings")


def on_before_ui(callback, *, name=None):
    add_callback(callback_map["callbacks_before_ui"], callback, name=name, category="before_ui")


def on_script_unloaded(callback, *, name=None):
    """callback() before the scripts are reloaded ("Apply and restart UI"): stop threads here."""
    add_callback(callback_map["callbacks_script_unloaded"], callback, name=name, category="script_unloaded")


def on_before_reload(callback, *, name=None):
    add_callback(callback_map["callbacks_before_reload"], callback, name=name, category="before_reload")
