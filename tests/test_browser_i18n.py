"""The standalone app in zh-TW in a real browser: with --lang zh-TW no English label is left on the
page (and the plan and the "What will be trained" panel are in Chinese); without --lang, on a
Gradio that can follow the browser (5.30+), a zh-TW browser gets the same page. Takes the
screenshots of the panel in both languages (docs/ when INSTANT_LORA_DOCS_SHOTS=1)."""

import contextlib
import os
import re
from pathlib import Path

import pytest
from browser_support import CHROMIUM, FLAGS, app_env, require_browser, shots_dir, start_app
from conftest import make_image
from test_i18n import CJK, english_left

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "screenshots"

# Every text node the user reads in the app (not inside textareas, inputs, scripts or styles; not
# Gradio's footer), with the element ids it sits in.
PAGE_TEXTS = """() => {
  const root = document.querySelector('gradio-app') || document.body;
  const out = [];
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const node = walker.currentNode, el = node.parentElement;
    const text = node.textContent.trim();
    if (!text || !el || el.closest('script,style,textarea,footer,svg title')) continue;
    const box = el.getBoundingClientRect();
    if (box.width === 0 && box.height === 0) continue;  // hidden
    const owner = el.closest('[id^=il_]');
    out.push([owner ? owner.id : '', text]);
  }
  return out;
}"""

# What the user's own data and choices put on the page: names of files, folders and presets,
# dropdown values. Not labels.
USER_CONTENT = re.compile(r"^(il_dataset_dir|il_checkpoint|il_preset|il_log|il_samples|il_gallery|il_sampler|"
                          r"il_optimizer_type|il_lr_scheduler|il_caption_mode|il_clip_model|il_clip_pretrained|"
                          r"il_mixed_precision|il_save_precision|il_max_token_length|il_gpus)")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """An SD1.5-shaped checkpoint (its header only: the panel reads no weights, so the page shows
    SD1.5's real modules and shapes) and a folder of two image shapes (two buckets)."""
    require_browser()
    from test_estimate import write_header_only_safetensors

    base = tmp_path_factory.mktemp("i18n")
    write_header_only_safetensors(base / "models" / "v1-5-pruned-emaonly.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3],
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": [320, 768],
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": [49408, 768]})
    (base / "loras").mkdir()
    data = base / "photos" / "10_cat"
    data.mkdir(parents=True)
    for i, size in enumerate(((768, 512), (512, 768))):
        make_image(data / f"cat{i}.png", (200, 40 + 80 * i, 40), size=size)
        (data / f"cat{i}.txt").write_text("a photo of a cat", encoding="utf-8")
    return base


@contextlib.contextmanager
def app_page(base, locale, *flags):
    """The app started with `flags`, and a page of a browser whose language is `locale`:
    (url, browser, page); both stopped afterwards."""
    from playwright.sync_api import sync_playwright

    proc, log, url = start_app(base, app_env(base), *flags)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1800}, locale=locale)
            page.set_default_timeout(120_000)
            try:
                yield url, browser, page
            finally:
                browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def _open_with_dataset(page, url, folder):
    try:
        _load(page, url, folder)
    except Exception as e:  # say what the page showed instead
        page.screenshot(path=str(shots_dir() / "failed-i18n.png"), full_page=True)
        texts = {i: page.locator(f"#{i}").last.inner_text()[:600] for i in ("il_plan", "il_anatomy", "il_dataset_summary")}
        raise AssertionError(f"the page did not show the plan and the panel: {texts}") from e


def _load(page, url, folder):
    page.goto(url)
    page.wait_for_selector("#il_start")
    page.wait_for_function("() => /\\d+/.test((document.querySelector('#il_plan') || {}).innerText || '')")
    box = page.locator("#il_dataset_dir textarea, #il_dataset_dir input").first
    box.fill(str(folder))
    page.locator("#il_load_dataset").click()
    page.wait_for_function("() => document.querySelector('#il_plan') && "
                           "/\\d+\\s*(steps|步)/.test(document.querySelector('#il_plan').innerText)")
    page.locator("#il_section_anatomy .label-wrap, #il_section_anatomy > button").first.click()
    page.wait_for_selector("#il_anatomy .il-anatomy")
    page.wait_for_function("() => document.querySelector('#il_anatomy .il-anatomy') && "
                           "document.querySelector('#il_anatomy .il-anatomy').dataset.modules > 0 && "
                           "document.querySelector('#il_anatomy .il-anatomy').dataset.buckets == 2")


def _shoot(page, name):
    summary = page.locator("#il_anatomy details summary").first
    if page.locator("#il_anatomy details[open]").count() == 0:
        summary.click()  # one block opened: its modules with their layer, A and B shapes
    page.wait_for_timeout(300)
    for folder in ([DOCS] if os.environ.get("INSTANT_LORA_DOCS_SHOTS") else []) + [shots_dir()]:
        folder.mkdir(parents=True, exist_ok=True)
        page.locator("#il_section_anatomy").first.screenshot(path=str(folder / name))


def _english_labels(page):
    left = []
    for owner, text in page.evaluate(PAGE_TEXTS):
        if USER_CONTENT.match(owner) or CJK.search(text):
            continue
        word = english_left(text)
        if word:
            left.append((owner, text[:80], word))
    return left


def test_lang_zh_tw_leaves_no_english_label(base):
    with app_page(base, "zh-TW", "--lang", "zh-TW") as (url, _, page):
        _open_with_dataset(page, url, base / "photos")
        left = _english_labels(page)
        assert not left, f"English left on the zh-TW page: {left[:8]}"
        plan = page.locator("#il_plan").last.inner_text()
        model_line = next(line for line in plan.splitlines() if line.startswith("模型："))
        assert "每輪" in plan and "交叉注意力寬度" in model_line and "text encoder" not in model_line, plan[:600]
        anatomy = page.locator("#il_anatomy").last.inner_text()
        assert "潛空間" in anatomy and "→ 4×" in anatomy and "77×768" in anatomy, anatomy[:300]
        assert page.locator("#il_anatomy .il-anatomy").first.get_attribute("data-modules") == "264"  # SD1.5: 192 + 72
        _shoot(page, "what-will-be-trained-zh-TW.png")


def test_the_english_page_and_its_panel(base):
    with app_page(base, "en-US", "--lang", "en") as (url, _, page):
        _open_with_dataset(page, url, base / "photos")
        anatomy = page.locator("#il_anatomy").last.inner_text()
        assert "latent" in anatomy and "×" in anatomy and not CJK.search(anatomy)
        _shoot(page, "what-will-be-trained-en.png")


def test_without_lang_the_page_follows_a_zh_tw_browser(base):
    import gradio

    if not hasattr(gradio, "I18n"):
        pytest.skip(f"Gradio {gradio.__version__} cannot follow the browser's language (5.30+ can); --lang zh-TW works")
    with app_page(base, "zh-TW") as (url, browser, page):
        _open_with_dataset(page, url, base / "photos")
        assert page.locator("#il_start").last.inner_text().strip() == "開始訓練"
        left = _english_labels(page)
        assert not left, f"English left on the page a zh-TW browser got: {left[:8]}"
        assert CJK.search(page.locator("#il_plan").last.inner_text())  # the handlers' answers too
        en = browser.new_page(locale="en-US")
        en.goto(url)
        en.wait_for_selector("#il_start")
        assert en.locator("#il_start").last.inner_text().strip() == "Start training"
