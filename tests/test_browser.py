"""The standalone app in a real browser (Chromium driven by Playwright) against a tiny model:
upload, edit a caption, train to the end, cancel another run, and bad input. Screenshots of each
section land in test-output/screenshots/ (kept as CI artifacts)."""

from pathlib import Path

import pytest
from browser_support import CHROMIUM, FLAGS, app_env, require_browser, shots_dir, start_app
from conftest import make_image

ROOT = Path(__file__).resolve().parents[1]

SHOTS = shots_dir()


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    require_browser()
    from instant_lora.tiny import save_tiny_model

    base = tmp_path_factory.mktemp("app")
    save_tiny_model(base / "models" / "tiny-sd")
    (base / "loras").mkdir()
    proc, log, url = start_app(base, app_env(base))
    APP_LOG[:] = [base / "app.log"]
    yield {"url": url, "base": base}
    proc.terminate()
    proc.wait(timeout=20)
    log.close()


@pytest.fixture(scope="module")
def page(app):
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        pg = browser.new_page(viewport={"width": 1280, "height": 1600})
        pg.set_default_timeout(180_000)
        pg.add_init_script(RECORD_RECEIVED)
        pg.goto(app["url"])
        pg.wait_for_selector("#il_start")
        yield pg
        browser.close()


def fill(page, elem_id: str, value: str):
    """Type into a field; retyped when a component that was still mounting (a just-opened accordion)
    put its initial value back."""
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.wait_for(state="visible")
    for _ in range(5):
        box.fill(str(value))
        box.press("Tab")
        page.wait_for_timeout(200)
        if box.input_value() == str(value):
            return
    raise AssertionError(f"#{elem_id} keeps showing {box.input_value()!r} instead of {value!r}")


def open_accordion(page, elem_id: str):
    page.locator(f"#{elem_id} .label-wrap, #{elem_id} > button").first.click()
    page.locator(f"#{elem_id} input:not([type=file]), #{elem_id} textarea").first.wait_for(state="visible")
    page.wait_for_timeout(1000)  # newer Gradio mounts an accordion's fields on first open; typing earlier can be lost


CLEAR_UPLOADS = "#il_uploads button[aria-label=Clear], #il_uploads button[title=Clear]"


def upload(page, files, tries: int = 3):
    """Drop files on the upload box and wait until the app says what arrived (only then does "Add to
    dataset" see them). Gradio 3.x can leave an upload at "Uploading..." for good when it meets
    another event (gradio-app/gradio#5517; the page polls every second): a user presses x and drops
    the files again, and so does this."""
    for attempt in range(tries):
        try:
            page.set_input_files("#il_uploads input[type=file]", files, timeout=20_000)
            wait_text(page, "il_dataset_msg", f"{len(files)} file(s) ready to add", timeout=40)
            return
        except Exception:
            if attempt == tries - 1:
                raise
            clear = page.locator(CLEAR_UPLOADS)
            if clear.count():
                clear.first.click()
            page.wait_for_timeout(500)


def fill_until(page, elem_id: str, value: str, shown_in: str, text: str, tries: int = 3):
    """Fill a field until the server has it, as seen in what it computes from it (`text` in
    #shown_in): a field typed into while it was being mounted shows the value but never sends it."""
    for attempt in range(tries):
        if attempt:
            fill(page, elem_id, "0")  # a different value first, so the retyped one is a change
        fill(page, elem_id, value)
        try:
            wait_text(page, shown_in, text, timeout=15)
            return
        except AssertionError:
            if attempt == tries - 1:
                raise


APP_LOG: list[Path] = []  # the running app's log, quoted when a wait fails


def wait_text(page, elem_id: str, text: str, timeout: float = 240):
    try:
        page.wait_for_function(f"() => (document.querySelector('#{elem_id}')?.innerText || '').includes({text!r})",
                               timeout=timeout * 1000)
    except Exception as e:  # say what the page showed instead, with a screenshot and the app's log
        shown = page.evaluate(f"() => document.querySelector('#{elem_id}')?.innerText ?? '(no such element)'")
        page.screenshot(path=str(SHOTS / f"failed-{elem_id}.png"), full_page=True)
        log = APP_LOG[0].read_text(errors="replace")[-4000:] if APP_LOG else ""
        raise AssertionError(f"#{elem_id} never showed {text!r} within {timeout:.0f} s; it shows:\n{shown[-1500:]}\n"
                             f"screenshot: {SHOTS / f'failed-{elem_id}.png'}\napp log:\n{log}") from e


# Polled outputs that show a progress indicator (Gradio's status tracker) that can be seen: not
# hidden, not transparent (on 3.41 a tracker's pulse animation outdoes its "hide" class's opacity 0).
BUSY_POLLED_OUTPUTS = """() => ['il_progress', 'il_loss_chart', 'il_samples', 'il_log', 'il_result', 'il_result_tag',
                                   'il_mechanism'].filter(id => {
    const box = document.querySelector('#' + id);
    if (!box) return false;
    return [...box.querySelectorAll('.generating, .pending, .eta-bar, .progress-text')].some(el => {
        if (!el.getClientRects().length) return false;
        for (let node = el; node && node !== box.parentElement; node = node.parentElement) {
            const style = getComputedStyle(node);
            if (style.display === 'none' || style.visibility === 'hidden' || Number(style.opacity) === 0) return false;
        }
        return true;
    });
})"""


# Recorded in the page, before Gradio's own scripts run: the text of what the server streams to it
# (Gradio 4+: the queue's event stream, read through fetch or EventSource; Gradio 3: a websocket).
RECORD_RECEIVED = """(() => {
    window.__ilReceived = [];
    const record = (text) => { if (window.__ilRecording) window.__ilReceived.push(String(text)); };
    const fetch0 = window.fetch;
    window.fetch = async function (...args) {
        const res = await fetch0.apply(this, args);
        const url = String((args[0] && args[0].url) || args[0]);
        if (!url.includes('queue/data') || !res.body) return res;
        const [mine, theirs] = res.body.tee();
        (async () => {
            const reader = theirs.getReader(), text = new TextDecoder();
            for (;;) { const {done, value} = await reader.read(); if (done) break; record(text.decode(value, {stream: true})); }
        })();
        return new Response(mine, {status: res.status, statusText: res.statusText, headers: res.headers});
    };
    if (window.EventSource) window.EventSource = class extends window.EventSource {
        constructor(...a) { super(...a); this.addEventListener('message', (e) => record(e.data)); }
    };
    window.WebSocket = class extends window.WebSocket {
        constructor(...a) { super(...a); this.addEventListener('message', (e) => record(e.data)); }
    };
})()"""


def received_for(page, seconds: float) -> list[str]:
    """What the server streamed to the page in the next `seconds`."""
    page.evaluate("() => { window.__ilReceived = []; window.__ilRecording = true; }")
    page.wait_for_timeout(seconds * 1000)
    return page.evaluate("() => { window.__ilRecording = false; return window.__ilReceived; }")


def wait_done(page, timeout_s: float = 300):
    page.wait_for_selector("#il_progress [data-state=finished], #il_progress [data-state=failed], "
                           "#il_progress [data-state=cancelled]", timeout=timeout_s * 1000)


def test_upload_caption_train_and_result(app, page, tmp_path):
    imgs = tmp_path / "imgs"
    make_image(imgs / "red.png", (200, 30, 30))
    make_image(imgs / "blue.png", (30, 30, 200), shape="circle")
    (imgs / "red.txt").write_text("red square", encoding="utf-8")
    (imgs / "notes.pdf").write_text("not an image")

    open_accordion(page, "il_upload_section")
    page.wait_for_selector("#il_uploads", state="visible")
    files = [str(imgs / n) for n in ("red.png", "blue.png", "red.txt", "notes.pdf")]
    upload(page, files)
    assert page.locator(CLEAR_UPLOADS).count() >= 1  # the x that upload() presses when an upload stalls
    fill(page, "il_upload_name", "shapes")
    page.locator("#il_upload_btn").click()
    wait_text(page, "il_dataset_msg", "added 2 image(s)")
    assert "notes.pdf: not an image" in page.inner_text("#il_dataset_msg")
    wait_text(page, "il_dataset_summary", "2 images")
    dataset = app["base"] / "data" / "datasets" / "shapes" / "10_shapes"
    assert sorted(p.name for p in dataset.iterdir()) == ["blue.png", "red.png", "red.txt"]  # the pdf went nowhere

    # Edit a caption in place: select the image, type, save -> the .txt on disk changes.
    page.locator("#il_gallery img").first.click()
    page.wait_for_function("() => (document.querySelector('#il_selected_image textarea, #il_selected_image input')?.value || '') !== ''")
    selected = page.locator("#il_selected_image textarea, #il_selected_image input").first.input_value()
    fill(page, "il_caption", "shapes, a bold test caption")
    page.locator("#il_save_caption").click()
    wait_text(page, "il_dataset_msg", "saved caption")
    assert (dataset / Path(selected).with_suffix(".txt").name).read_text(encoding="utf-8").strip() == "shapes, a bold test caption"
    # Auto-caption fills the image that has no caption (a tiny CLIP trained for the tests), keeps the other.
    from captioning_fixtures import tiny_clip

    clip = tiny_clip(tmp_path / "clip")
    (dataset / "blue.txt").unlink(missing_ok=True)  # the edit above may have given blue.png one
    before = (dataset / "red.txt").read_bytes()
    open_accordion(page, "il_autocaption_section")
    fill(page, "il_clip_model", f"local-dir:{clip.local_dir}")
    fill(page, "il_clip_pretrained", "")
    page.locator("#il_autocaption_btn").click()
    wait_text(page, "il_caption_status", "1 written", timeout=300)
    assert (dataset / "blue.txt").read_text(encoding="utf-8").strip()  # CLIP's caption
    assert (dataset / "red.txt").read_bytes() == before  # fill mode leaves an existing caption alone
    page.locator("#il_section_dataset").screenshot(path=str(SHOTS / "1-dataset.png"))

    fill(page, "il_output_name", "ui_lora")
    fill(page, "il_trigger_words", "shpz")
    fill(page, "il_max_train_epochs", "2")
    open_accordion(page, "il_advanced")
    fill(page, "il_resolution", "64,64")
    fill_until(page, "il_save_every_n_epochs", "1", "il_plan", "final file + 1 intermediate (epoch saves")  # 2 grid rows
    wait_text(page, "il_plan", "20 steps per epoch; 40 steps = 2 epoch(s)", timeout=60)
    fill(page, "il_sample_prompts", "shpz, red square --s 2")
    fill(page, "il_sample_every", "10")
    page.locator("#il_section_model").screenshot(path=str(SHOTS / "2-model.png"))

    page.locator("#il_start").click()
    wait_text(page, "il_train_msg", "Started")
    wait_done(page)
    assert page.get_attribute("#il_progress [data-state]", "data-state") == "finished", page.inner_text("#il_result")
    assert "step 40 / 40" in page.inner_text("#il_progress").replace("\n", " ")
    page.wait_for_selector("#il_loss_chart svg")
    # the mechanism: 40 steps x 1 image, loss against timestep, and the last step's movement per block
    page.wait_for_selector("#il_mechanism svg.il-scatter[data-points='40']")
    assert page.get_attribute("#il_mechanism .il-mechanism", "data-movement-step") == "40"
    assert page.locator("#il_mechanism rect.il-bar").count() >= 2
    page.wait_for_function("() => document.querySelectorAll('#il_samples img').length >= 4")  # steps 10, 20, 30, 40
    page.locator("#il_section_train").screenshot(path=str(SHOTS / "3-train.png"))
    # The page polls every second but is sent only what changed: the chart and the samples stay as they are,
    # and no polled box wears a progress indicator (on Gradio 3.41: an orange "pending" border).
    received = received_for(page, seconds=3.5)
    assert received, "the page did not poll"
    assert not [m for m in received if "il-loss" in m or "il-mechanism" in m or "ui_lora_step" in m], received[:3]
    assert page.evaluate(BUSY_POLLED_OUTPUTS) == []
    context = page.context.browser.new_context(viewport={"width": 1280, "height": 1600})
    later = context.new_page()  # a page opened after the run still gets all of it
    try:
        later.goto(app["url"])
        later.wait_for_selector("#il_progress [data-state=finished]", timeout=60_000)
        later.wait_for_selector("#il_loss_chart svg", timeout=60_000)
        later.wait_for_function("() => document.querySelectorAll('#il_samples img').length >= 4", timeout=60_000)
        wait_text(later, "il_result", "ui_lora.safetensors", timeout=60)
    finally:
        context.close()
    wait_text(page, "il_result", "ui_lora.safetensors")
    assert "Changed most: " in page.inner_text("#il_result")
    tag = page.locator("#il_result_tag textarea, #il_result_tag input").first.input_value()
    assert tag == "<lora:ui_lora:0.8> shpz"
    page.locator("#il_section_result").screenshot(path=str(SHOTS / "4-result.png"))
    page.screenshot(path=str(SHOTS / "app-full.png"), full_page=True)
    assert (app["base"] / "loras" / "ui_lora.safetensors").is_file()
    assert (app["base"] / "loras" / "ui_lora.json").is_file()
    assert not list((app["base"] / "loras").glob("*.txt"))  # no caption files in the Lora folder


def test_test_panel_grid_and_preview(app, page):
    """A 2 x 2 grid (rows: epoch 1 and final; columns: weights 0 and 1) and a picked cell as preview."""
    page.locator("#il_open_test").click()
    page.wait_for_selector("#il_grid_btn", state="visible")
    assert page.locator("#il_grid_run textarea, #il_grid_run input").first.input_value() == "ui_lora"
    assert page.locator("#il_test_prompt textarea").first.input_value().startswith("<lora:ui_lora:0.8>")
    for elem, value in (("il_test_steps", "2"), ("il_test_width", "64"), ("il_test_height", "64"), ("il_test_seed", "3"),
                        ("il_grid_weights", "0, 1")):
        fill(page, elem, value)
    page.locator("#il_generate").click()
    wait_text(page, "il_test_msg", "seed 3")
    page.locator("#il_grid_btn").click()
    wait_text(page, "il_grid_msg", "2 x 2 grid")
    page.wait_for_selector("#il_grid_image img")
    grids = list((app["base"] / "data" / "grids").glob("ui_lora-grid-*.png"))
    assert len(grids) == 1
    from PIL import Image

    info = Image.open(grids[0]).info["parameters"]
    assert "ui_lora" in info and "Seed: 3" in info and "Grid weights: \"0, 1\"" in info
    dropdown = page.locator("#il_grid_cell input").first
    dropdown.click()
    page.locator("ul[role=listbox] li, .options li").filter(has_text="final @ w=1").first.click()
    page.wait_for_function("() => (document.querySelector('#il_grid_cell_info textarea')?.value || '').includes('<lora:ui_lora:1>')")
    assert "Seed: 3" in page.locator("#il_grid_cell_info textarea").input_value()  # the cell's settings, to paste anywhere
    page.locator("#il_use_preview").click()
    wait_text(page, "il_grid_msg", "preview")
    loras = app["base"] / "loras"
    assert (loras / "ui_lora.preview.png").is_file()
    import json

    assert json.loads((loras / "ui_lora.json").read_text())["preferred weight"] == 1.0
    page.locator("#il_test_panel").screenshot(path=str(SHOTS / "5-test.png"))


def test_existing_name_and_bad_names_are_refused(app, page):
    fill(page, "il_output_name", "ui_lora")  # exists from the previous test
    page.locator("#il_start").click()
    wait_text(page, "il_train_msg", "already exists")
    fill(page, "il_output_name", "../escape")
    page.locator("#il_start").click()
    wait_text(page, "il_train_msg", "must not contain")
    assert "Output name (output_name)" in page.inner_text("#il_train_msg")  # the field's label, with what is wrong
    assert not list(app["base"].rglob("escape*"))


def test_empty_dataset_folder_gives_a_visible_message(app, page):
    empty = app["base"] / "empty_dataset"
    empty.mkdir()
    fill(page, "il_dataset_dir", str(empty))
    page.locator("#il_load_dataset").click()
    wait_text(page, "il_dataset_problems", "10_")  # names the expected layout


def test_a_dataset_folder_anywhere_on_the_machine_opens(app, page):
    """Outside the app's working folder, the temp folder and its data folder (Gradio serves none of
    it): the gallery still shows the images, and a folder that is not there says so."""
    import shutil

    outside = ROOT / "test-output" / f"outside-dataset-{SHOTS.name}"
    shutil.rmtree(outside, ignore_errors=True)
    make_image(outside / "3_far" / "a.png", (20, 160, 20))
    make_image(outside / "3_far" / "b.png", (160, 20, 160), shape="circle")
    try:
        fill(page, "il_dataset_dir", str(outside))
        page.locator("#il_load_dataset").click()
        wait_text(page, "il_dataset_summary", "2 images")
        page.wait_for_function("() => document.querySelectorAll('#il_gallery img').length >= 2", timeout=30_000)
        page.wait_for_function("() => [...document.querySelectorAll('#il_gallery img')].every(i => i.complete && i.naturalWidth > 0)",
                               timeout=30_000)
        fill(page, "il_dataset_dir", str(outside / "not_there"))
        page.locator("#il_load_dataset").click()
        wait_text(page, "il_dataset_problems", "Training folder not found")
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def test_cancel_keeps_the_work(app, page):
    fill(page, "il_dataset_dir", str(app["base"] / "data" / "datasets" / "shapes"))
    page.locator("#il_load_dataset").click()
    wait_text(page, "il_dataset_summary", "2 images")
    fill(page, "il_output_name", "cancel_me")
    fill(page, "il_max_train_epochs", "200")
    page.locator("#il_start").click()
    wait_text(page, "il_train_msg", "Started")
    page.wait_for_selector("#il_progress [data-state=running]")  # the page now shows this run, not the last one
    page.wait_for_function("() => /step [1-9]/.test(document.querySelector('#il_progress')?.innerText || '')", timeout=120_000)
    page.locator("#il_start").click()  # a second start while one runs says what is running
    wait_text(page, "il_train_msg", "already running")
    page.locator("#il_cancel").click()
    wait_done(page)
    assert page.get_attribute("#il_progress [data-state]", "data-state") == "cancelled", page.inner_text("#il_log")
    saved = list((app["base"] / "loras").glob("cancel_me-step*.safetensors"))
    assert len(saved) == 1
    wait_text(page, "il_result", "Cancelled")
