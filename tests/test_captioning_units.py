"""Captioning without a model: label banks, options, caption assembly, lint, CLI parsing."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from instant_lora.captioning import CaptionOptions, add_caption_subcommand, lint_captions
from instant_lora.captioning.banks import (BUILTIN_DIR, DEFAULT_ORDER, builtin_bank_sizes, load_banks, parse_bank,
                                          read_bank_file)
from instant_lora.captioning.compose import (Candidate, assemble, count_tokens, has_phrase, pick_labels,
                                             split_tags, truncate_tags)
from instant_lora.captioning.options import option_fields
from instant_lora.errors import InstantLoraError

EXTENSION_DIR = Path(__file__).resolve().parents[1] / "extension"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("INSTANT_LORA_CACHE", str(tmp_path / "cache"))


def test_import_loads_neither_torch_nor_open_clip():
    code = ("import sys, instant_lora.captioning; "
            "print([m for m in ('torch', 'open_clip') if m in sys.modules])")
    env = dict(os.environ, PYTHONPATH=str(EXTENSION_DIR))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- banks

def test_builtin_banks_cover_every_category_with_thousands_of_plain_phrases():
    sizes = builtin_bank_sizes()
    assert set(DEFAULT_ORDER) <= set(sizes)
    assert sum(sizes.values()) >= 2000
    banks = {b.category: b for b in load_banks()}
    assert [b.category for b in banks.values()][: len(DEFAULT_ORDER)] == list(DEFAULT_ORDER)
    everything = [p.lower() for b in banks.values() for p in b.phrases]
    spam = ("trending", "artstation", "masterpiece", "best quality", "8k", "4k", "unreal engine",
            "highly detailed", "award winning", "inspired by", "in the style of")
    assert not [p for p in everything if any(s in p for s in spam) or p.startswith("by ")]
    # The fashion case: many dress types, the usual fabrics, colour names.
    dresses = [label for label in banks["garment"].labels if "dress" in label or "gown" in label]
    assert len(dresses) >= 50
    for fabric in ("silk", "satin", "chiffon", "lace", "denim", "velvet", "tulle", "linen", "tweed"):
        assert fabric in banks["material"].labels
    assert len(banks["colour"]) >= 120
    assert banks["garment"].default_top_k == 2


def test_bank_file_format_synonyms_top_k_and_duplicates():
    bank = parse_bank("colour", ["# a comment", "# top_k: 3", "", "grey | gray", "red", "Red", "gray", "navy"])
    assert bank.default_top_k == 3
    assert bank.labels == ["grey", "red", "navy"]  # 'Red' and the second 'gray' are repeats
    assert bank.phrases == ["grey", "gray", "red", "navy"]
    assert bank.phrase_label == [0, 0, 1, 2]
    with pytest.raises(InstantLoraError, match="no labels"):
        parse_bank("empty", ["# nothing"])


def test_bank_folder_overrides_and_adds_and_categories_pick(tmp_path):
    (tmp_path / "colour.txt").write_text("teal\nochre\n")
    (tmp_path / "mood.txt").write_text("# top_k: 2\ncalm\ncheerful\n")
    banks = load_banks(label_banks=str(tmp_path))
    names = [b.category for b in banks]
    assert names[-1] == "mood" and names[: len(DEFAULT_ORDER)] == list(DEFAULT_ORDER)
    assert next(b for b in banks if b.category == "colour").labels == ["teal", "ochre"]
    picked = load_banks(label_banks=str(tmp_path), categories=["mood", "colour"])
    assert [b.category for b in picked] == ["mood", "colour"]
    with pytest.raises(InstantLoraError, match="Unknown label categories: nope"):
        load_banks(categories=["nope"])
    memory = load_banks(banks={"b": ["x"], "a": ["y"]})
    assert [b.category for b in memory] == ["b", "a"]  # in-memory banks replace the built-ins, in order


def test_every_builtin_bank_file_parses_and_has_a_top_k_line():
    paths = sorted(BUILTIN_DIR.glob("*.txt"))
    assert {p.stem for p in paths} >= set(DEFAULT_ORDER)  # an empty or moved folder must not pass
    for path in paths:
        assert "# top_k:" in path.read_text(encoding="utf-8"), path.name
        assert len(read_bank_file(path)) > 20, path.name


# ----------------------------------------------------------------------------- options

def test_every_option_has_a_one_line_help():
    for f, help_text, _ in option_fields():
        assert help_text and "\n" not in help_text, f.name
    assert "caption_prefix" in [flag for _, _, flag in option_fields()]


def test_options_validation_names_every_problem():
    opts = CaptionOptions(mode="replace", caption_extension="txt", max_tokens=100, device="tpu")
    with pytest.raises(InstantLoraError) as err:
        opts.validate()
    for word in ("mode", "caption_extension", "max_tokens", "device"):
        assert word in str(err.value)
    CaptionOptions().validate()


def test_per_category_top_k_and_threshold():
    opts = CaptionOptions(top_k={"*": 2, "colour": 3}, threshold={"*": 0.2, "setting": 0.1})
    assert opts.top_k_for("colour", 1) == 3 and opts.top_k_for("garment", 1) == 2
    assert CaptionOptions().top_k_for("garment", 2) == 2  # bank default
    assert CaptionOptions(top_k=4).top_k_for("garment", 2) == 4
    assert opts.threshold_for("setting") == 0.1 and opts.threshold_for("colour") == 0.2


# ----------------------------------------------------------------------------- composing captions

def _cands(category, labels, start=0):
    return [Candidate(category, label, 0.5 - 0.01 * i, start + i) for i, label in enumerate(labels)]


def test_pick_labels_top_k_overlap_duplicates_and_priority():
    ranked = {
        "garment": _cands("garment", ["dress", "wrap dress", "coat", "blazer"]),
        "colour": _cands("colour", ["red", "crimson", "blue"], start=10),
        "setting": _cands("setting", ["coat", "white background"], start=20),
    }
    similar = {(11, 10): 0.97}  # crimson ~ red

    def sim(a, b):
        return similar.get((a, b), similar.get((b, a), 0.1))

    picked = pick_labels(ranked, ["garment", "colour", "setting"], {"garment": 2, "colour": 2, "setting": 1},
                         sim, dedup_threshold=0.9)
    # 'wrap dress' repeats 'dress'; 'crimson' is a near-synonym of 'red'; 'coat' is taken already.
    assert [c.label for c in picked] == ["dress", "red", "white background", "coat", "blue"]
    assert [c.rank for c in picked] == [0, 0, 0, 1, 1]
    kept = pick_labels(ranked, ["colour"], {"colour": 2}, sim, dedup_threshold=1.0)
    assert [c.label for c in kept] == ["red", "crimson"]  # de-duplication off
    excluded = pick_labels(ranked, ["colour"], {"colour": 2}, exclude=["Red dress"])
    assert [c.label for c in excluded] == ["crimson"]  # 'red' is already in the caption and fills a slot
    assert pick_labels(ranked, ["colour"], {"colour": 1}, exclude=["red"]) == []


def test_assemble_orders_by_category_caps_tokens_and_keeps_prefix():
    order = ["garment", "colour", "setting"]
    picked = [Candidate("setting", "white background", 0.3, 0), Candidate("garment", "dress", 0.3, 1),
              Candidate("colour", "red", 0.3, 2), Candidate("garment", "long evening coat", 0.2, 3, rank=1)]
    assert assemble("sks", picked, order) == "sks, dress, long evening coat, red, white background"
    words = lambda text: len(text.replace(",", " ").split())  # noqa: E731 (a stand-in token counter)
    capped = assemble("sks", picked, order, max_tokens=5, count=words)
    assert capped == "sks, dress, red, white background" and words(capped) <= 5
    assert assemble("", [], order) == ""


def test_assemble_append_keeps_existing_text_and_adds_missing_trigger():
    picked = [Candidate("colour", "red", 0.3, 0)]
    assert assemble("sks", picked, ["colour"], existing="a woman, smiling") == "sks, a woman, smiling, red"
    assert assemble("sks", picked, ["colour"], existing="sks woman, smiling") == "sks woman, smiling, red"


def test_token_counting_matches_clip_bpe():
    assert count_tokens("a photo of a cat") == 5
    assert count_tokens("") == 0
    long = ", ".join(f"tag number {i}" for i in range(40))
    assert count_tokens(long) > 75
    cut = truncate_tags(long, 75)
    assert count_tokens(cut) <= 75 and long.startswith(cut)
    assert split_tags(" a, ,b ,") == ["a", "b"]
    assert has_phrase("sks woman, red", "SKS") and not has_phrase("sksx, red", "sks")


# ----------------------------------------------------------------------------- lint

def _folder(tmp_path, captions):
    from PIL import Image

    folder = tmp_path / "10_sks"
    folder.mkdir(parents=True)
    for name, caption in captions.items():
        Image.new("RGB", (8, 8)).save(folder / f"{name}.png")
        if caption is not None:
            (folder / f"{name}.txt").write_text(caption, encoding="utf-8")
    return folder


def test_lint_reports_each_problem_and_fixes_the_fixable(tmp_path):
    long = "sks, " + ", ".join(f"detail {i}" for i in range(40)) + ", photo"
    folder = _folder(tmp_path, {
        "a": "sks, red dress, photo", "b": "blue coat, photo", "c": "sks, green hat, photo, photo",
        "d": "sks, red dress, photo", "e": "", "f": None, "g": long,
    })
    report = lint_captions(tmp_path, trigger="sks")
    kinds = {i.kind for i in report.issues}
    assert kinds == {"missing", "empty", "duplicate", "no_trigger", "common_tag", "too_long", "repeated_tag"}
    assert not report.ok and report.images == 7
    common = next(i for i in report.issues if i.kind == "common_tag")
    assert "'photo'" in common.message
    assert "[fixable with --fix]" in report.summary()

    fixed = lint_captions(folder.parent, trigger="sks", fix=True)
    assert len(fixed.files_changed) == 5
    assert (folder / "b.txt").read_text() == "sks, blue coat"
    assert (folder / "c.txt").read_text() == "sks, green hat"
    assert count_tokens((folder / "g.txt").read_text()) <= 75
    assert (folder / "g.txt").read_text().startswith("sks, detail 0")
    again = lint_captions(folder.parent, trigger="sks")
    assert {i.kind for i in again.issues} == {"missing", "empty", "duplicate"}  # need new captions


def test_lint_without_trigger_and_few_captions_has_no_false_alarms(tmp_path):
    _folder(tmp_path, {"a": "red dress", "b": "blue coat"})
    report = lint_captions(tmp_path)
    assert report.issues == [] and report.ok


# ----------------------------------------------------------------------------- CLI parsing

def _parser():
    parser = argparse.ArgumentParser(prog="standalone_app.py")
    add_caption_subcommand(parser.add_subparsers(dest="command"))
    return parser


def test_cli_flags_map_onto_options():
    from instant_lora.captioning.cli import options_from_args

    args = _parser().parse_args([
        "caption", "data", "--clip_model", "w.safetensors", "--caption_prefix", "sks", "--overwrite",
        "--top_k", "2,garment=3", "--threshold", "0.2", "--categories", "garment,colour",
        "--clip_search_dir", "/a", "--clip_search_dir", "/b", "--offline", "--max_tokens", "60"])
    opts = options_from_args(args)
    assert (opts.clip_model, opts.prefix, opts.mode) == ("w.safetensors", "sks", "overwrite")
    assert opts.top_k == {"*": 2, "garment": 3} and opts.threshold == 0.2
    assert opts.categories == ["garment", "colour"] and opts.search_dirs == ["/a", "/b"]
    assert opts.offline and opts.max_tokens == 60 and args.func.__name__ == "run_caption_command"
    defaults = options_from_args(_parser().parse_args(["caption", "data"]))
    assert defaults == CaptionOptions()
    with pytest.raises(SystemExit):
        _parser().parse_args(["caption", "data", "--top_k", "garment=many"])


def test_cli_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["caption", "--help"])
    text = capsys.readouterr().out
    for _, _, flag in option_fields():
        assert f"--{flag}" in text
    for flag in ("--overwrite", "--append", "--lint", "--fix", "--trigger"):
        assert flag in text


def test_cli_lint_exit_codes(tmp_path, capsys):
    from instant_lora.captioning import run_caption_command

    folder = _folder(tmp_path, {"a": "red dress", "b": "blue coat"})
    assert run_caption_command(_parser().parse_args(["caption", str(folder.parent), "--lint"])) == 0
    args = ["caption", str(folder.parent), "--lint", "--trigger", "sks"]
    assert run_caption_command(_parser().parse_args(args)) == 1
    assert run_caption_command(_parser().parse_args(args + ["--fix"])) == 0
    assert run_caption_command(_parser().parse_args(args)) == 0
    assert "lack the trigger 'sks'" in capsys.readouterr().out
    assert run_caption_command(_parser().parse_args(["caption", str(tmp_path / "none"), "--lint"])) == 2
