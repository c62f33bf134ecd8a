"""The app started with an empty models folder, in a real browser: the sentence under Base model
names the folder the app reads, "Download SD1.5" fetches the model (here a tiny stand-in, served
by tests/fake_hub.py) and selects it, and the list is fresh on every page load. Screenshots go to
test-output/screenshots/ as in test_browser.py."""

import os

from browser_support import CHROMIUM, FLAGS, app_env, require_browser, shots_dir, start_app
from fake_hub import FakeHub, write_registry

# Gradio 3.41 gives a Markdown's elem_id to its wrapper too: the last element with it is the text.
MESSAGE = "(() => { const all = document.querySelectorAll('#il_models_msg'); return all.length ? all[all.length - 1].innerText : ''; })()"


def test_empty_models_folder_download_and_fresh_list(tmp_path):
    require_browser()
    from playwright.sync_api import sync_playwright

    from instant_lora.model_download import TEST_REGISTRY_ENV

    base = tmp_path / "app"
    (base / "home").mkdir(parents=True)
    shots = shots_dir()
    shots.mkdir(parents=True, exist_ok=True)
    with FakeHub() as hub:
        data = os.urandom(3 << 20)
        entry = hub.add("test-org/tiny-base", "tiny-base.safetensors", data)
        # the registry's sd15 replaced by a tiny file: TEST_REGISTRY_ENV exists for the tests only
        env = app_env(base, HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.endpoint,
                      **{TEST_REGISTRY_ENV: str(write_registry(tmp_path / "registry.json", {"sd15": entry}))})
        proc, log, url = start_app(base, env)
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                page = browser.new_page(viewport={"width": 1280, "height": 1200})
                page.set_default_timeout(60_000)
                page.goto(url)
                page.wait_for_selector("#il_start")
                page.wait_for_function(f"() => {MESSAGE}.includes('No checkpoint found')")
                text = page.evaluate(f"() => {MESSAGE}")
                page.wait_for_function("() => !document.querySelector('#il_models_msg .progress-text')")  # the page-load refresh ran
                assert str(base / "models") in text and "the folder this app reads" in text and "Also searched" in text, text
                button = page.locator("#il_download_model")
                assert button.is_visible() and "Download SD1.5" in button.inner_text()
                page.locator("#il_section_model").screenshot(path=str(shots / "models-empty.png"))

                button.click()
                page.wait_for_function(f"() => {MESSAGE}.includes('Downloaded')")
                page.wait_for_function("() => document.querySelector('#il_checkpoint input')?.value === 'tiny-base.safetensors'")
                assert (base / "models" / "tiny-base.safetensors").read_bytes() == data
                assert not list((base / "models").glob("*.part"))
                page.wait_for_selector("#il_download_model", state="hidden")
                page.locator("#il_section_model").screenshot(path=str(shots / "models-downloaded.png"))

                # a checkpoint put into the folder shows after a reload, without pressing Refresh
                (base / "models" / "a-dropped-in.safetensors").write_bytes(b"x")
                page.reload()
                page.wait_for_selector("#il_start")
                page.wait_for_function("() => document.querySelector('#il_checkpoint input')?.value === 'a-dropped-in.safetensors'")
                assert page.evaluate(f"() => {MESSAGE}").strip() == ""
                browser.close()
        finally:
            proc.terminate()
            proc.wait(timeout=20)
            log.close()
