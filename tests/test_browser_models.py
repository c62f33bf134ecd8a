"""The app started with an empty models folder, in a real browser: the sentence under Base model
names the folder the app reads, "Download SD1.5" fetches the model (here a tiny stand-in, served
by tests/fake_hub.py) and selects it, and the list is fresh on every page load. Screenshots go to
test-output/screenshots/ as in test_browser.py."""

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from browser_support import CHROMIUM, FLAGS, free_port, require_browser, shots_dir
from fake_hub import FakeHub, write_registry

ROOT = Path(__file__).resolve().parents[1]
# Gradio 3.41 gives a Markdown's elem_id to its wrapper too: the last element with it is the text.
MESSAGE = "(() => { const all = document.querySelectorAll('#il_models_msg'); return all.length ? all[all.length - 1].innerText : ''; })()"


def _start_app(base: Path, env: dict):
    port = free_port()
    log = open(base / "app.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "standalone_app.py"), "--port", str(port), "--no-browser",
                             "--models-dir", str(base / "models"), "--lora-dir", str(base / "loras"), "--data-dir", str(base / "data")],
                            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=base)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(240):
        try:
            urllib.request.urlopen(url, timeout=1)
            return proc, log, url
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.5)
    proc.kill()
    log.close()
    pytest.fail("the app did not start:\n" + (base / "app.log").read_text()[-3000:])


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
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="0", HF_ENDPOINT=hub.endpoint, GRADIO_ANALYTICS_ENABLED="False",
                   PYTHONUNBUFFERED="1", INSTANT_LORA_CACHE=str(base / "cache"), INSTANT_LORA_SEARCH_HOME=str(base / "home"),
                   **{TEST_REGISTRY_ENV: str(write_registry(tmp_path / "registry.json", {"sd15": entry}))})
        env.pop("INSTANT_LORA_WEBUI_DIR", None)
        proc, log, url = _start_app(base, env)
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
                assert str(base / "models") in text and "the folder this app reads" in text and "also searched" in text, text
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
