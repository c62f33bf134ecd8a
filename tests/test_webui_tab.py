"""The WebUI tab on the installed Gradio (3.41 in the WebUI env, 4.40 in the Forge env) against the
WebUI stand-in: the entry script loaded the way the WebUI loads it, the tab's Blocks rendered into
the WebUI's tabs, its handlers, the settings section, and the REST routes (one real tiny training)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_webui_host import FakeTrain
from webui_stub.harness import STUB, webui

from instant_lora.jobs import TrainingJob

ROOT = Path(__file__).resolve().parents[1]
gr = pytest.importorskip("gradio")


@pytest.fixture(scope="module", autouse=True)
def _warm_parameter_count():
    """build_ui warms this up in a thread; done here first, so that thread finds it cached and no two
    threads import diffusers at once (its lazy imports are not thread-safe in recent releases)."""
    from instant_lora.ui import actions

    actions.lora_parameter_count(16, "default", True)


@pytest.fixture
def w(tmp_path, monkeypatch):
    with webui(tmp_path) as stub:
        monkeypatch.setattr("instant_lora.jobs._JOB", TrainingJob())  # this test's own job
        yield stub


def _handlers(demo) -> dict:
    """{function name: [(fn, input components)]} across Gradio 3.41 / 4.x / 5+."""
    fns = list(demo.fns.values()) if isinstance(demo.fns, dict) else list(demo.fns)
    out = {}
    for i, bf in enumerate(fns):
        fn = getattr(bf, "fn", None)
        if fn is None:
            continue
        inputs = getattr(bf, "inputs", None)
        if inputs is None:
            inputs = [demo.blocks[i_] for i_ in demo.dependencies[i]["inputs"]]
        out.setdefault(fn.__name__, []).append((fn, list(inputs)))
    return out


def _value(update):
    return update.get("value") if isinstance(update, dict) else getattr(update, "value", update)


def _visible(update):
    return update.get("visible") if isinstance(update, dict) else getattr(update, "visible", None)


def _tab():
    from instant_lora.host import webui as webui_host

    (demo, title, elem_id), = webui_host.ui_tabs()
    assert (title, elem_id) == ("Instant LoRA", "instant_lora")
    return demo, {getattr(b, "elem_id", None): b for b in demo.blocks.values()}


# ---- the entry script as the WebUI loads it ---------------------------------------------------

def _start_webui(tmp_path, *flags):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, str(STUB / "webui_start.py"), str(ROOT), str(tmp_path / "webui"), *flags],
                          capture_output=True, text=True, env=dict(env, GRADIO_ANALYTICS_ENABLED="False"), timeout=240,
                          cwd=tmp_path)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("REPORT ")), None)
    assert line, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(line[len("REPORT "):])


def test_the_webui_loads_the_entry_script(tmp_path):
    r = _start_webui(tmp_path)
    assert r["errors"] == [] and r["reported_exceptions"] == []
    assert r["sys_path_added_by_import"] == []  # the WebUI puts its own sys.path back after the import ...
    assert str(ROOT / "extension") in r["sys_path_added"]  # ... so the callbacks add the package folder ...
    assert r["sys_path_prefix_unchanged"]  # ... after everything else: shadows no one
    assert r["tabs"] == [["Instant LoRA", "instant_lora"]]
    assert {"tab_instant_lora", "il_start", "il_send_to_txt2img", "txt2img_prompt", "il_cell_to_txt2img"} <= set(r["elem_ids"])
    assert r["paste_buttons"] == [["txt2img", "il_cell_to_txt2img", "il_grid_cell_info"]]  # the WebUI's paste, connected
    assert r["settings"]["instant_lora_keep_model_on_gpu"] == ["('instant_lora', 'Instant LoRA')", False]
    assert {"instant_lora_default_preset", "instant_lora_sample_prompts", "instant_lora_sample_every_n_steps"} <= set(r["settings"])
    assert r["routes"] == [f"/instant-lora/v1/{p}" for p in ("cancel", "checkpoints", "grid", "loras", "progress", "train")]
    assert r["progress"]["state"] == "idle"
    assert r["checkpoints"] == {"checkpoints": ["v1-5.safetensors"], "default": "v1-5.safetensors"}
    assert r["modules_after_unload"] == []  # Reload UI imports the extension afresh


def test_a_broken_install_shows_the_error_in_the_tab_and_nothing_else_breaks(tmp_path):
    r = _start_webui(tmp_path, "--break-import")
    assert r["errors"] == [] and r["reported_exceptions"] == []
    assert r["tabs"] == [["Instant LoRA", "instant_lora"]] and "il_load_error" in r["elem_ids"]
    assert r["routes"] == []


# ---- the tab ------------------------------------------------------------------------------------

def test_tab_uses_the_webuis_checkpoints_and_adds_send_to_txt2img(w):
    demo, ids = _tab()
    assert isinstance(demo, gr.Blocks)
    ckpt = ids["il_checkpoint"]
    assert sorted(ckpt.choices if isinstance(ckpt.choices[0], str) else [c[0] for c in ckpt.choices]) == \
        ["sd15/dreamy.ckpt", "v1-5-pruned-emaonly.safetensors"]
    assert ckpt.value == "sd15/dreamy.ckpt"  # the loaded one
    ancestors, node = [], ids["il_send_to_txt2img"]
    while node is not None:
        ancestors.append(node)
        node = getattr(node, "parent", None)
    assert ids["il_section_result"] in ancestors  # shown with the result ...
    assert all(getattr(a, "visible", True) is not False for a in ancestors)  # ... and not inside a hidden panel
    deps = demo.get_config_file()["dependencies"]
    send = [d for d in deps if d.get("js") and "instantLoraSendToTxt2img" in d["js"]]
    assert len(send) == 1 and send[0]["inputs"] == [ids["il_result_tag"]._id]
    assert "sd_models.load_model" not in w.calls


def test_tab_renders_inside_the_webuis_tabs(w):
    demo, _ = _tab()
    with gr.Blocks() as page:
        with gr.Tabs(elem_id="tabs"):
            with gr.TabItem("txt2img", id="txt2img", elem_id="tab_txt2img"):
                gr.Textbox(elem_id="txt2img_prompt")
            with gr.TabItem("Instant LoRA", id="instant_lora", elem_id="tab_instant_lora"):
                demo.render()
    assert len(page.get_config_file()["dependencies"]) >= len(demo.get_config_file()["dependencies"])


def test_refresh_lists_a_new_checkpoint(w):
    demo, _ = _tab()
    (refresh, _), (on_load, _) = _handlers(demo)["refresh_models"]  # Refresh, and every page load
    assert refresh is on_load
    (w.models / "Stable-diffusion" / "fresh.safetensors").write_bytes(b"\0")
    update, message, download = refresh("sd15/dreamy.ckpt")
    assert "fresh.safetensors" in str(update["choices"] if isinstance(update, dict) else update.choices)
    assert _value(update) == "sd15/dreamy.ckpt"
    assert message == "" and _visible(download) is False  # the WebUI lists its own checkpoints: nothing to download


def test_settings_section_and_its_defaults_on_the_tab(w):
    from instant_lora.host import webui as webui_host

    webui_host.add_settings()
    labels = w.shared.opts.data_labels
    assert all(labels[k].section == ("instant_lora", "Instant LoRA") for k in labels if k.startswith("instant_lora_"))
    assert {"Balanced", "Quick test"} <= set(labels["instant_lora_default_preset"].component_args()["choices"])
    w.shared.opts.set("instant_lora_default_preset", "Quick test")
    w.shared.opts.set("instant_lora_sample_prompts", "a photo of shpz")
    w.shared.opts.set("instant_lora_sample_every_n_steps", 50)
    demo, _ = _tab()
    h = _handlers(demo)
    (default_preset, _), = h["default_preset"]
    assert _value(default_preset()) == "Quick test"
    (sample_defaults, _), = h["sample_defaults"]  # the Train section's sample fields take the settings
    assert [_value(u) for u in sample_defaults()] == ["a photo of shpz", 50]


def test_start_and_cancel_run_through_the_webui_host(w, monkeypatch, train_set):
    demo, ids = _tab()
    h = _handlers(demo)
    fake = FakeTrain(w)
    seen = {}

    def spy(prepared, **kw):
        seen["config"] = prepared.config
        return fake(prepared, **kw)

    monkeypatch.setattr("instant_lora.train.loop.run_prepared", spy)
    (start, inputs), = h["start"]
    by_id = {"il_dataset_dir": str(train_set), "il_checkpoint": "sd15/dreamy.ckpt", "il_output_name": "tab_lora"}
    args = [by_id.get(getattr(c, "elem_id", None), getattr(c, "value", None)) for c in inputs]
    assert "Started" in start(*args)
    from instant_lora.jobs import current_job

    snap = current_job().wait(20)
    assert snap.state == "finished", snap.error
    assert seen["config"].pretrained_model_name_or_path == str(w.models / "Stable-diffusion" / "sd15" / "dreamy.ckpt")
    assert seen["config"].output_dir == str(w.lora_dir)
    assert w.calls[:3] == ["queue_lock.acquire", ("state.begin", "Instant LoRA: tab_lora"), "sd_models.unload_model_weights"]
    assert w.calls[-2:] == ["state.end", "queue_lock.release"]
    assert (w.lora_dir / "tab_lora.safetensors").is_file()
    poll = h["poll"][0][0]  # on a timer and on page load
    progress_html = poll()[0]
    assert "data-state='finished'" in progress_html  # what javascript/instant_lora.js watches
    (cancel, _), = h["cancel"]
    assert "Nothing is running" in cancel()


# ---- REST routes: tests/test_webui_rest.py ------------------------------------------------------


def test_captioning_in_the_tab_waits_for_the_webui_and_holds_its_queue(w, monkeypatch, train_set):
    from modules import call_queue

    from instant_lora.captioning import CaptionReport

    seen = []

    def fake_caption_folder(folder, options, progress=None):
        seen.append((call_queue.queue_lock.locked(), w.shared.state.job))
        return CaptionReport(folder=str(folder), mode=options.mode)

    monkeypatch.setattr("instant_lora.captioning.caption_folder", fake_caption_folder)
    demo, ids = _tab()
    (do_caption, inputs), = _handlers(demo)["do_caption"]
    out = do_caption(str(train_set), "fill", "ViT-L-14", "", "", ".txt", progress_bar=lambda *a, **k: None)
    assert "0 written" in out  # the report; the dataset view follows in a chained event
    assert seen == [(True, "Instant LoRA: captioning")]  # txt2img waits while CLIP runs
    assert w.calls.count("queue_lock.acquire") == w.calls.count("queue_lock.release") == 1
    assert not call_queue.queue_lock.locked()
    from instant_lora.jobs import current_job

    monkeypatch.setattr(current_job(), "snapshot", lambda: type("Snap", (), {"running": True})())
    out = do_caption(str(train_set), "fill", "ViT-L-14", "", "", ".txt", progress_bar=lambda *a, **k: None)
    assert "training is running" in out and len(seen) == 1  # CLIP does not join a running training
