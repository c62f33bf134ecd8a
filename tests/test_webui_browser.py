"""javascript/instant_lora.js in a real browser on a small Gradio page laid out like the WebUI (the
top-level #tabs, #txt2img_prompt, the Lora cards' hidden refresh button, the WebUI's gradioApp() and
updateInput(), its paste of infotext into the txt2img fields) with the real Instant LoRA tab rendered
into it: the settings' defaults reach the tab, a run that ends refreshes the Lora cards by itself,
"Send to txt2img" fills the prompt so that Gradio's backend sees it and switches tabs, and a grid
made through the WebUI's txt2img sends a picked cell's prompt and settings to txt2img, and the
cell made the LoRA's preview refreshes the cards. Runs on the installed Gradio (3.41 in the WebUI env,
4.40 in the Forge env)."""

import types
from pathlib import Path

import pytest
from browser_support import CHROMIUM, FLAGS, free_port, require_browser
from test_webui_host import FakeTrain
from webui_stub.harness import webui

from instant_lora.jobs import TrainingJob

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "test-output" / "screenshots"

# What the WebUI's script.js / ui.js define for every page (same behaviour, written here). Set on window:
# Playwright runs an init script inside a function, where plain declarations would stay local.
WEBUI_PAGE_JS = """
window.gradioApp = function() {
    const elems = document.getElementsByTagName('gradio-app');
    const elem = elems.length == 0 ? document : elems[0];
    if (elem !== document) { elem.getElementById = function(id) { return document.getElementById(id); }; }
    return elem.shadowRoot ? elem.shadowRoot : elem;
};
window.switch_to_txt2img = function() {  // the WebUI clicks button 0; Gradio 5+ puts hidden copies first
    const tabs = gradioApp().querySelector('#tabs');
    (tabs.querySelector('button[role=tab]') || tabs.querySelectorAll('button')[0]).click();
    return Array.from(arguments);
};
window.updateInput = function(target) {
    let e = new Event("input", {bubbles: true});
    Object.defineProperty(e, "target", {value: target});
    target.dispatchEvent(e);
};
"""


def _require_browser():
    gr = pytest.importorskip("gradio")
    require_browser()
    return gr


@pytest.fixture
def webui_page(tmp_path, monkeypatch):
    gr = _require_browser()
    from instant_lora.host import webui as webui_host
    from instant_lora.ui import actions

    actions.lora_parameter_count(16, "default", True)  # cached before build_ui's warm-up thread starts
    with webui(tmp_path) as w:
        monkeypatch.setattr("instant_lora.jobs._JOB", TrainingJob())
        w.shared.opts.data.update(instant_lora_default_preset="Quick test", instant_lora_sample_prompts="a photo of shpz",
                                  instant_lora_sample_every_n_steps=50)  # Settings > Instant LoRA
        (tab, title, elem_id), = webui_host.ui_tabs()
        with gr.Blocks(analytics_enabled=False, title="Stable Diffusion") as demo:
            with gr.Tabs(elem_id="tabs"):
                with gr.TabItem("txt2img", id="txt2img", elem_id="tab_txt2img"):
                    prompt = gr.Textbox(label="Prompt", lines=3, elem_id="txt2img_prompt")
                    negative = gr.Textbox(label="Negative prompt", elem_id="txt2img_neg_prompt")
                    seed = gr.Number(label="Seed", value=-1, elem_id="txt2img_seed")
                    steps = gr.Number(label="Sampling steps", value=20, elem_id="txt2img_steps")
                    echo_btn = gr.Button("Echo", elem_id="echo_btn")
                    echo = gr.Textbox(label="What the server sees", elem_id="echo")
                    # visible=False as in the WebUI (Gradio 3.41 / 4.40 keep it in the page; 5+ needs "hidden")
                    refresh = gr.Button("Refresh", elem_id="txt2img_lora_extra_refresh_internal",
                                        visible=False if int(_gradio_major()) < 5 else "hidden")
                    refreshed = gr.Number(value=0, label="Lora card refreshes", elem_id="refreshed")
                with gr.TabItem(title, id=elem_id, elem_id=f"tab_{elem_id}"):
                    tab.render()
            echo_btn.click(lambda text: text, [prompt], [echo])
            from modules import infotext_utils  # as the WebUI's txt2img tab registers its fields, then connects the buttons

            infotext_utils.add_paste_fields("txt2img", None, [(prompt, "Prompt"), (negative, "Negative prompt"), (seed, "Seed"),
                                                              (steps, "Steps")])
            infotext_utils.connect_paste_params_buttons()
            refresh.click(lambda n: int(n or 0) + 1, [refreshed], [refreshed])
        demo.queue()
        port = free_port()
        demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            yield w, f"http://127.0.0.1:{port}/"
        finally:
            server = getattr(demo, "server", None)
            if server is not None:
                server.force_exit = True  # do not wait for the page's open connections
            demo.close()
            webui_host.get_host().job.wait(10)


def _text(page, elem_id):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()


def test_cards_refresh_send_to_txt2img_and_a_grid_cell_to_txt2img(webui_page, monkeypatch):
    from playwright.sync_api import sync_playwright

    from instant_lora.host import webui as webui_host
    from instant_lora.config import TrainConfig
    from instant_lora.request import PreparedRun

    w, url = webui_page
    host = webui_host.get_host()
    monkeypatch.setattr("instant_lora.train.loop.run_prepared", FakeTrain(w))
    js = (ROOT / "javascript" / "instant_lora.js").read_text(encoding="utf-8")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1400})
            page.set_default_timeout(30_000)
            page.add_init_script(script=WEBUI_PAGE_JS + "\n" + js)  # the WebUI loads javascript/*.js into <head>
            page.goto(url)
            page.wait_for_selector("#txt2img_prompt textarea")
            page.locator("#txt2img_prompt textarea").fill("a photo")
            assert page.evaluate("() => [typeof gradioApp, typeof updateInput, typeof switch_to_txt2img]") == ["function"] * 3
            assert page.evaluate("() => instantLora.switchToTab('Instant LoRA')") == "name"
            page.wait_for_selector("#il_progress .il-progress")
            # the settings' defaults reach the tab: the preset (and through it the form) and the samples
            page.wait_for_function("() => document.querySelector('#il_network_dim input')?.value === '8'")
            assert _text(page, "il_max_train_epochs") in ("", "0")  # the Quick test counts steps, not epochs
            page.wait_for_function("() => document.querySelector('#il_sample_prompts textarea')?.value === 'a photo of shpz'")
            assert _text(page, "il_sample_every") == "50"
            page.wait_for_timeout(1500)  # the page's first polls: an idle job

            config = TrainConfig(pretrained_model_name_or_path="x", train_data_dir="d", output_dir=str(host.lora_dir),
                                 output_name="web_lora", trigger_words="shpz")
            plan = types.SimpleNamespace(output_name="web_lora", max_train_steps=5)
            host.job.start(PreparedRun(config=config, plan=plan, scan=None), host=host)
            assert host.job.wait(20).state == "finished"
            page.wait_for_function("() => (document.querySelector('#il_result')?.innerText || '').includes('web_lora')")
            page.wait_for_function("() => document.querySelector('#refreshed input')?.value === '1'")  # cards refreshed, once
            page.wait_for_timeout(2000)
            assert _text(page, "refreshed") == "1"

            page.locator("#il_send_to_txt2img").click()
            page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea')?.value.includes('lora')")
            assert _text(page, "txt2img_prompt") == "a photo, <lora:web_lora:0.8> shpz"
            assert page.locator("#txt2img_prompt textarea").is_visible()  # the txt2img tab is open
            assert not page.locator("#il_start").is_visible()
            page.locator("#echo_btn").click()  # Gradio's backend got the new prompt, not just the DOM
            page.wait_for_function("() => (document.querySelector('#echo textarea')?.value || '').includes('lora')")
            assert _text(page, "echo") == "a photo, <lora:web_lora:0.8> shpz"
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / f"webui-send-to-txt2img-gradio{_gradio_major()}.png"))

            # The grid through the WebUI's txt2img (its stand-in), then one cell sent to txt2img with its settings.
            from test_webui_grid import _lora_file

            _lora_file(w.lora_dir / "grid_run-000001.safetensors", 10, 1)
            _lora_file(w.lora_dir / "grid_run.safetensors", 20, 2)
            page.evaluate("() => instantLora.switchToTab('Instant LoRA')")
            for attempt in range(3):  # on a loaded machine the first click can land before Gradio wires it
                page.locator("#il_open_test").click()
                try:
                    page.wait_for_selector("#il_grid_btn", state="visible", timeout=30_000)
                    break
                except Exception:
                    if attempt == 2:
                        raise
            for elem, value in (("il_test_prompt", "shpz, red square"), ("il_test_steps", "7"), ("il_test_seed", "3"),
                                ("il_test_width", "64"), ("il_test_height", "64"), ("il_grid_run", "grid_run"),
                                ("il_grid_weights", "0, 1")):
                box = page.locator(f"#{elem} textarea, #{elem} input").first
                box.fill(value)
                box.press("Tab")
            page.locator("#il_grid_btn").click()
            page.wait_for_function("() => (document.querySelector('#il_grid_msg')?.innerText || '').includes('2 x 2 grid')")
            rendered = [c[1] for c in w.calls if isinstance(c, tuple) and c[0] == "processing.process_images"]
            assert rendered == ["shpz, red square", "shpz, red square <lora:grid_run-000001:1>", "shpz, red square <lora:grid_run:1>"]
            page.locator("#il_grid_cell input").first.click()
            page.locator("ul[role=listbox] li, .options li").filter(has_text="final @ w=1").first.click()
            page.wait_for_function("() => (document.querySelector('#il_grid_cell_info textarea')?.value || '').includes('Seed: 3')")
            page.locator("#il_cell_to_txt2img").click()
            page.wait_for_function("() => document.querySelector('#txt2img_prompt textarea')?.value.includes('grid_run')")
            assert _text(page, "txt2img_prompt") == "shpz, red square <lora:grid_run:1>"
            assert page.locator("#txt2img_prompt textarea").is_visible()  # switched to txt2img
            page.wait_for_function("() => document.querySelector('#txt2img_seed input')?.value === '3'")
            assert _text(page, "txt2img_steps") == "7"
            page.locator("#echo_btn").click()
            page.wait_for_function("() => (document.querySelector('#echo textarea')?.value || '').includes('grid_run')")
            page.screenshot(path=str(SHOTS / f"webui-grid-cell-to-txt2img-gradio{_gradio_major()}.png"))

            # The same cell as the card's preview: the Lora cards refresh to show it.
            page.evaluate("() => instantLora.switchToTab('Instant LoRA')")
            page.locator("#il_use_preview").click()
            page.wait_for_function("() => (document.querySelector('#il_grid_msg')?.innerText || '').includes('card preview')")
            assert (w.lora_dir / "grid_run.preview.png").is_file()
            page.wait_for_function("() => document.querySelector('#refreshed input')?.value === '2'")
        finally:
            browser.close()


def _gradio_major() -> str:
    from importlib.metadata import version

    return version("gradio").split(".")[0]
