"""The UI in Traditional Chinese: one catalogue (localizations/zh_TW.json, English as the key, the
WebUI's own format), which covers every text of the built page and every message the trainer and
the handlers make; the WebUI's Localization setting and the app's --lang choose it."""

from __future__ import annotations

import contextlib
import json
import re
import string
import sys
from pathlib import Path

import pytest

from instant_lora import i18n
from instant_lora.host.standalone import StandaloneHost

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = ROOT / "localizations" / "zh_TW.json"
sys.path.insert(0, str(ROOT / "localizations"))
import messages  # noqa: E402  (localizations/messages.py: the message keys found in the source)

CJK = re.compile(r"[\u4e00-\u9fff]")
# What stays as it is in a zh-TW page: names of models, libraries, formats and options, and values
# a user types or picks (choices are the values the handlers get).
KEPT = re.compile(r"`[^`]*`|<[^>]*>|--[\w-]+|\{[^}]*\}|\b[\w.-]*[_\d][\w.-]*\b|\b\w+(?:[.-]\w+)+\b|'[^']*'|/\S*|\b(" + "|".join((
    "LoRA", "LoRAs", "UNet", "VAE", "CLIP", "CLIP-L", "bigG", "SDXL", "SD", "Stable Diffusion", "Gradio", "WebUI", "Forge",
    "ComfyUI", "kohya", "JSON", "JSONL", "GPU", "GPUs", "CPU", "CUDA", "AdamW", "Adafactor", "Prodigy", "Lion", "bf16",
    "fp16", "fp32", "float", "lora", "name", "txt2img", "TensorBoard", "Min-SNR", "SNR", "gamma", "torchrun", "CFG",
    "ViT", "openai", "open_clip", "Alpha", "alpha", "Balanced", "fill", "overwrite", "append", "token", "tokens",
    "key", "value", "preset", "attn-only", "bitsandbytes", "Euler", "Karras", "DPM", "PATH", "local-dir", "caption",
    "safetensors", "txt", "npz", "TOML", "toml", "Instant", "EMA", "MSE", "DDPM", "A1111", "NaN", "inf", "SGM",
    "IN", "MID", "OUT", "TE", "TE1", "TE2", "URL", "API", "REST", "png", "PNG", "zh-TW", "Hugging", "Face", "hub",
    "epsilon", "v-prediction", "bucket", "max", "min", "models", "Lora", "RNG", "Uploading",
)) + r")\b")


def english_left(text: str) -> str | None:
    """The first English word of `text` that a zh-TW page should not show, or None."""
    rest = KEPT.sub(" ", text)
    m = re.search(r"[A-Za-z]{3,}", rest)
    return m.group(0) if m else None


@pytest.fixture(scope="module")
def zh():
    return json.loads(CATALOGUE.read_text(encoding="utf-8"))


def _placeholders(text: str) -> list:
    # names and format specs: t() formats the translation, so `{loss:.4f}` must stay `{loss:.4f}`
    return sorted((name, spec) for _, name, spec, _ in string.Formatter().parse(text) if name is not None)


def _host(tmp_path, lang=None):
    return StandaloneHost(models_dir=tmp_path / "models", lora_dir=tmp_path / "loras", data_dir=tmp_path / "data",
                          search_home=tmp_path, search_near=[], lang=lang)


def _texts(demo) -> dict:
    """{elem (type, elem_id, what): text} of every label, help line and text on the page."""
    out = {}
    for i, block in enumerate(demo.blocks.values()):
        kind = type(block).__name__
        for attr in ("label", "info", "placeholder", "value"):
            if attr == "value" and kind not in ("Markdown", "Button"):
                continue
            value = getattr(block, attr, None)
            if isinstance(value, str) and value.strip():
                out[(kind, getattr(block, "elem_id", None) or i, attr)] = value
    return out


# ---- the file ---------------------------------------------------------------------------------------

def test_the_catalogue_is_the_webuis_localization_format(zh):
    """A flat {English: zh-TW} object of strings, named zh_TW.json in the extension's localizations/
    folder: where A1111 and Forge look for it and merge it with the user's zh_TW pack."""
    assert CATALOGUE.name == "zh_TW.json" and CATALOGUE.parent.name == "localizations"
    assert isinstance(zh, dict) and len(zh) > 500
    for key, value in zh.items():
        assert isinstance(key, str) and isinstance(value, str) and value.strip(), key
        assert _placeholders(key) == _placeholders(value), f"placeholders differ in the translation of {key!r}"
        assert key.count("**") == value.count("**") and key.count("`") == value.count("`"), key
        assert CJK.search(value) or not english_left(key), f"not translated: {key!r}"


def test_the_webui_merges_it_with_a_users_zh_tw_pack(tmp_path, zh):
    """A1111 1.10's modules/localization.py: every localizations/*.json of the WebUI and its
    extensions, same stems merged in order (later wins); ours adds our keys and keeps theirs."""
    pack = tmp_path / "webui" / "localizations"
    pack.mkdir(parents=True)
    (pack / "zh_TW.json").write_text(json.dumps({"Generate": "生成", "Instant LoRA": "their name"}), encoding="utf-8")
    merged: dict = {}
    for f in (pack / "zh_TW.json", CATALOGUE):  # the WebUI's own folder first, then extensions'
        merged.update(json.loads(f.read_text(encoding="utf-8")))
    assert merged["Generate"] == "生成"
    assert merged["Start training"] == zh["Start training"]
    assert i18n.normalize("zh_TW") == "zh-TW" and i18n.normalize("None") == "en"


# ---- the page -------------------------------------------------------------------------------------

def test_every_text_of_the_page_has_a_zh_tw_entry(tmp_path, zh):
    """Walk the built page: each English label, help line, button and text is in the catalogue
    (or, for a message with a value in it such as a folder, matches one of its patterns)."""
    from instant_lora.ui import build_ui

    demo = build_ui(_host(tmp_path), lang="en")
    texts = demo.instant_lora_texts
    assert len(texts) > 150
    missing = [t for t in dict.fromkeys(texts) if t not in zh and i18n.translate(t, "zh-TW") == t]
    assert not missing, f"{len(missing)} page texts have no zh-TW entry, e.g. {missing[:5]}"


def test_the_page_built_in_zh_tw_shows_no_english_label(tmp_path):
    from instant_lora.ui import build_ui

    demo = build_ui(_host(tmp_path, lang="zh-TW"))
    assert demo.instant_lora_lang == "zh-TW"
    texts = _texts(demo)
    left = {where: text for where, text in texts.items() if english_left(text)}
    assert not left, f"English left on the zh-TW page: {list(left.items())[:5]}"
    assert texts[("Button", "il_start", "value")] == "開始訓練"


def test_every_message_the_source_makes_has_a_zh_tw_entry(zh):
    """The keys localizations/messages.py finds (errors and their hints, problems, warnings, plan
    lines, what handlers return, every t() template): a new English message without a
    translation fails here; `python localizations/messages.py zh-TW` lists what to add."""
    found = messages.all_messages()
    assert len(found) > 300
    missing = [m for m in found if m not in zh]
    assert not missing, f"{len(missing)} messages have no zh-TW entry, e.g. {missing[:5]}"


def test_no_key_is_left_over(tmp_path, monkeypatch, zh):
    """Every key is a text of the page (standalone or WebUI tab) or a message of the source: an
    entry whose English is gone from the code is removed, not kept."""
    from instant_lora.ui import build_ui

    page = set(build_ui(_host(tmp_path), lang="en").instant_lora_texts)
    with _webui_tab(tmp_path, monkeypatch) as tab:
        page |= set(tab().instant_lora_texts)
    found = set(messages.all_messages())
    # texts only another Gradio's page shows (3.41's upload hint) are still written in the source
    source = "".join(p.read_text(encoding="utf-8") for p in messages.PACKAGE.rglob("*.py"))
    stale = [k for k in zh if k not in page and k not in found and json.dumps(k)[1:-1] not in source]
    assert not stale, f"{len(stale)} catalogue keys are in neither the page nor the source, e.g. {stale[:5]}"


# ---- messages made in English -------------------------------------------------------------------------

def test_a_message_is_translated_by_its_pattern_and_its_parts_in_turn():
    lang = "zh-TW"
    assert i18n.translate("Start training", lang) == "開始訓練"
    # a pattern key with a value in it: the value kept, the words translated
    out = i18n.translate("cannot read /data/x.png: broken", lang)
    assert "/data/x.png" in out and CJK.search(out)
    # nothing known: English, unchanged (never an empty line)
    assert i18n.translate("zzz qqq unknown words", lang) == "zzz qqq unknown words"
    assert i18n.translate("Start training", "en") == "Start training"


def test_the_plan_box_is_translated_line_by_line(tmp_path, train_set):
    """The live plan as the zh-TW page shows it: every line has Chinese in it."""
    from instant_lora.ui.handlers import run as run_handlers

    host = _host(tmp_path)
    form = run_handlers.RunForm(fields={}, dataset_dir=str(train_set))
    from instant_lora.ui.handlers.dataset import dataset_view

    scan = dataset_view(str(train_set), ".txt", "").scan
    plan = run_handlers.live_plan(host, form, scan)
    assert "steps per epoch" in plan
    shown = i18n.translate(plan, "zh-TW")
    untranslated = [line for line in shown.split("\n") if line.strip() and not CJK.search(line)]
    assert not untranslated, untranslated


def test_the_app_takes_lang_and_refuses_an_unknown_one():
    from instant_lora.app import parse_app_args
    from instant_lora.errors import InstantLoraError

    assert parse_app_args(["--lang", "zh-TW"]).lang == "zh-TW"
    assert parse_app_args(["--lang", "zh_tw"]).lang == "zh-TW"
    assert parse_app_args([]).lang is None
    with pytest.raises(InstantLoraError, match="--lang must be one of en, zh-TW"):
        parse_app_args(["--lang", "klingon"])


def test_the_browsers_language_is_read_from_accept_language():
    assert i18n.from_accept_language("zh-TW,zh;q=0.9,en-US;q=0.8") == "zh-TW"
    assert i18n.from_accept_language("en-US,en;q=0.9,zh-TW;q=0.5") == "en"
    assert i18n.from_accept_language("zh-Hant-TW") == "zh-TW"
    assert i18n.from_accept_language("fr-FR") == "en" and i18n.from_accept_language(None) == "en"


def test_handlers_answers_reach_a_zh_tw_page_translated(tmp_path):
    """What an event sends to a Markdown (here: Cancel with nothing running) is translated on its
    way out, in a page built for zh-TW; an English page gets the English."""
    from instant_lora.ui import build_ui

    def cancel_fn(demo):
        fns = list(demo.fns.values()) if isinstance(demo.fns, dict) else list(demo.fns)
        return next(bf.fn for bf in fns if getattr(bf.fn, "__name__", "") == "cancel")

    assert cancel_fn(build_ui(_host(tmp_path), lang="en"))() == "Nothing is running."
    assert cancel_fn(build_ui(_host(tmp_path), lang="zh-TW"))() == i18n.translate("Nothing is running.", "zh-TW") != \
        "Nothing is running."


# ---- inside the WebUI -------------------------------------------------------------------------------

@contextlib.contextmanager
def _webui_tab(tmp_path, monkeypatch):
    """The WebUI stand-in; yields a function that builds the tab as on_ui_tabs does (Reload UI)."""
    from webui_stub.harness import webui

    from instant_lora.jobs import TrainingJob

    with webui(tmp_path) as w:
        monkeypatch.setattr("instant_lora.jobs._JOB", TrainingJob())
        from instant_lora.host import webui as webui_host

        def tab():
            webui_host._HOST = None
            (demo, _, _), = webui_host.ui_tabs()
            return demo

        tab.stub = w
        yield tab


def test_the_webuis_localization_setting_builds_the_tab_in_zh_tw(tmp_path, monkeypatch, zh):
    with _webui_tab(tmp_path, monkeypatch) as tab:
        demo = tab()
        assert demo.instant_lora_lang == "en"
        english = set(demo.instant_lora_texts)
        missing = [t for t in english if t not in zh and i18n.translate(t, "zh-TW") == t]
        assert not missing, f"the WebUI tab's texts without a zh-TW entry: {missing[:5]}"

        tab.stub.shared.opts.localization = "zh_TW"  # Settings > User interface > Localization, then Reload UI
        demo = tab()
        assert demo.instant_lora_lang == "zh-TW"
        left = {k: v for k, v in _texts(demo).items() if english_left(v)}
        assert not left, f"English left in the zh-TW tab: {list(left.items())[:5]}"
