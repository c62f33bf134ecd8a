"""The standalone app in a real browser (Chromium driven by Playwright): a folder with a portrait,
a landscape, a square and a small image shows each image's bucket in the dataset view, the bucket
table and the small one flagged as upscaled; changing Resolution or turning buckets off (in the
Dataset options) changes the buckets without reloading the folder; a regularization folder says
how many images it holds. A screenshot of the dataset
section goes to test-output/screenshots/ as in test_browser.py."""


import pytest
from browser_support import CHROMIUM, FLAGS, app_env, require_browser, shots_dir, start_app
from conftest import make_image



@pytest.fixture(scope="module")
def app(tmp_path_factory):
    require_browser()
    base = tmp_path_factory.mktemp("app")
    (base / "models").mkdir()
    proc, log, url = start_app(base, app_env(base))
    yield {"url": url, "base": base}
    proc.terminate()
    proc.wait(timeout=20)
    log.close()
    log.close()


def _fill(page, elem_id: str, value: str):
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.wait_for(state="visible")
    for _ in range(5):
        box.fill(value)
        box.press("Tab")
        page.wait_for_timeout(200)
        if box.input_value() == value:
            return
    raise AssertionError(f"#{elem_id} keeps showing {box.input_value()!r} instead of {value!r}")


def _wait_text(page, elem_id: str, text: str, timeout: float = 60, app=None):
    script = f"() => [...document.querySelectorAll('#{elem_id}')].some(e => (e.innerText || '').includes({text!r}))"
    try:
        page.wait_for_function(script, timeout=timeout * 1000)
    except Exception as e:
        shots = shots_dir()
        page.screenshot(path=str(shots / f"failed-buckets-{elem_id}.png"), full_page=True)
        shown = page.evaluate(f"() => [...document.querySelectorAll('#{elem_id}')].map(e => e.innerText).join('\\n')")
        log = (app["base"] / "app.log").read_text(errors="replace")[-3000:] if app else ""
        raise AssertionError(f"#{elem_id} never showed {text!r}; it shows:\n{shown[-1500:]}\napp log:\n{log}") from e


IMAGES_SHOWN = ("() => { const imgs = [...document.querySelectorAll('#il_gallery img')];"
               " return imgs.length >= 4 && imgs.every(i => i.complete && i.naturalWidth > 0); }")


def test_the_dataset_view_shows_each_images_bucket_and_follows_the_resolution(app, tmp_path):
    from playwright.sync_api import sync_playwright

    folder = tmp_path / "ds" / "5_mix"
    make_image(folder / "portrait.png", (200, 40, 40), size=(832, 1216))
    make_image(folder / "landscape.png", (40, 40, 200), size=(1216, 832), shape="circle")
    make_image(folder / "square.png", (40, 160, 40), size=(1024, 1024))
    make_image(folder / "small.png", (160, 40, 160), size=(200, 300), shape="circle")  # enlarged 2.1x: flagged
    (folder / "portrait.txt").write_text("mix, a red square", encoding="utf-8")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.set_default_timeout(120_000)
            page.goto(app["url"])
            page.wait_for_selector("#il_start")
            _fill(page, "il_dataset_dir", str(tmp_path / "ds"))
            page.locator("#il_load_dataset").click()
            _wait_text(page, "il_dataset_summary", "4 images", app=app)
            # at the default 512 px: the portrait goes portrait, the landscape landscape
            _wait_text(page, "il_gallery", "832×1216 → 384×640", app=app)
            _wait_text(page, "il_gallery", "1216×832 → 576×448", app=app)
            _wait_text(page, "il_dataset_buckets", "384×640", app=app)
            _wait_text(page, "il_dataset_buckets", "576×448", app=app)
            _wait_text(page, "il_dataset_buckets", "1 image(s) upscaled more than 1.5×", app=app)
            page.wait_for_function(IMAGES_SHOWN, timeout=30_000)
            page.locator("#il_section_dataset").screenshot(path=str(shots_dir() / "1-dataset-buckets.png"))

            _fill(page, "il_resolution", "768,768")  # in section 2: the dataset view follows it
            _wait_text(page, "il_gallery", "832×1216 → 640×896", app=app)
            _wait_text(page, "il_gallery", "1216×832 → 896×640", app=app)
            _wait_text(page, "il_dataset_buckets", "Buckets** at 768×768".replace("**", ""), app=app)
            gallery = page.evaluate("() => [...document.querySelectorAll('#il_gallery')].map(e => e.innerText).join(' ')")
            assert "384×640" not in gallery and "576×448" not in gallery
            page.wait_for_function(IMAGES_SHOWN, timeout=30_000)
            page.locator("#il_section_dataset").screenshot(path=str(shots_dir() / "1-dataset-buckets-768.png"))

            # a field inside the (lazily mounted) Dataset options: buckets off = every image at the resolution
            page.locator("#il_dataset_options .label-wrap, #il_dataset_options > button").first.click()
            box = page.locator("#il_enable_bucket input[type=checkbox]").first
            box.wait_for(state="visible")
            page.wait_for_timeout(500)
            box.click()
            _wait_text(page, "il_gallery", "832×1216 → 768×768", app=app)
            _wait_text(page, "il_dataset_buckets", "Buckets off", app=app)
            # the regularization folder says what it holds when the box is left
            reg = tmp_path / "reg" / "1_person"
            for i in range(3):
                make_image(reg / f"r{i}.png", size=(96, 96))
            _fill(page, "il_reg_data_dir", str(tmp_path / "reg"))
            _wait_text(page, "il_reg_summary", "3 images", app=app)
            page.wait_for_function(IMAGES_SHOWN, timeout=30_000)
            page.locator("#il_section_dataset").screenshot(path=str(shots_dir() / "1-dataset-options.png"))
        finally:
            browser.close()
