"""Captioning with a tiny CLIP trained in the test: ranking, modes, cache, weights sources, CLI.

No network: HF_HUB_OFFLINE=1, HOME and every cache point into tmp folders.
"""

from __future__ import annotations

import argparse
import gc
import types
import weakref
from pathlib import Path

import pytest

import captioning_fixtures as cf
from instant_lora.captioning import (CaptionOptions, add_caption_subcommand, caption_folder, free_clip_model,
                                     run_caption_command)
from instant_lora.captioning.clip_model import current_clip
from instant_lora.captioning.compose import count_tokens
from instant_lora.captioning.weights import plan_weights
from instant_lora.errors import InstantLoraError

ALL = [(c, s, b) for c in cf.COLOURS for s in cf.SHAPES for b in cf.BACKGROUNDS]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return cf.tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home" / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("INSTANT_LORA_CACHE", str(tmp_path / "cache"))
    yield
    free_clip_model()


def _options(tiny, tmp_path, **kw):
    values = dict(clip_model=tiny.arch, clip_pretrained=str(tiny.safetensors), banks=cf.BANKS, top_k=1,
                  threshold=-1.0, device="cpu", cache_dir=str(tmp_path / "label-cache"))
    values.update(kw)
    return CaptionOptions(**values)


def _expected(spec, prefix="sks"):
    colour, shape, background = spec
    return f"{prefix}, {colour}, {shape}, {background} background"


def _accuracy(report, images, prefix="sks"):
    right = sum(w.caption == _expected(images[Path(w.image).stem], prefix) for w in report.written)
    return right / len(images)


def test_trained_model_puts_the_right_colour_shape_and_background_first(tiny, tmp_path):
    images = cf.write_shapes(tmp_path / "data", ALL, seed=7)  # drawn anew: not the training images
    seen = []
    report = caption_folder(tmp_path / "data", _options(tiny, tmp_path, prefix="sks"),
                            progress=lambda *a: seen.append(a))
    assert len(report.written) == len(images) == 36
    wrong = [(w.image, w.caption) for w in report.written if w.caption != _expected(images[Path(w.image).stem])]
    assert not wrong
    assert Path(report.written[0].caption_file).suffix == ".txt"
    assert seen[0] == (0, 36, 0.0) and seen[-1][:2] == (36, 36) and seen[-1][2] > 0
    # The control: the same pipeline with untrained weights gets most captions wrong.
    random = caption_folder(tmp_path / "data", _options(tiny, tmp_path, prefix="sks", clip_pretrained="random",
                                                        mode="overwrite"))
    assert _accuracy(random, images) < 0.5


def test_threshold_drops_labels_and_top_k_adds_them(tiny, tmp_path):
    cf.write_shapes(tmp_path / "data", [("red", "circle", "black")])
    strict = caption_folder(tmp_path / "data", _options(tiny, tmp_path, threshold=1.01))
    assert strict.written == [] and len(strict.no_labels) == 1  # nothing similar enough: nothing written
    assert not (tmp_path / "data" / "red_circle_black.txt").exists()
    more = caption_folder(tmp_path / "data", _options(tiny, tmp_path, mode="overwrite", top_k={"*": 1, "colour": 2}))
    colours = [t for t in more.written[0].caption.split(", ") if t in cf.COLOURS]
    assert colours[0] == "red" and len(colours) == 2


def test_modes_fill_overwrite_append_and_existing_captions_untouched(tiny, tmp_path):
    folder = tmp_path / "data" / "5_sks"
    cf.write_shapes(folder, [("red", "circle", "black"), ("blue", "square", "white"), ("green", "triangle", "grey")])
    mine = folder / "red_circle_black.txt"
    mine.write_bytes("my own words, smiling".encode())
    (folder / "blue_square_white.txt").write_text("  \n")  # blank counts as missing
    report = caption_folder(tmp_path / "data", _options(tiny, tmp_path, prefix="sks"))
    assert mine.read_bytes() == b"my own words, smiling"
    assert report.skipped == [str(folder / "red_circle_black.png")]
    assert {Path(w.image).stem: w.action for w in report.written} == {"blue_square_white": "new",
                                                                    "green_triangle_grey": "new"}
    assert (folder / "blue_square_white.txt").read_text() == "sks, blue, square, white background"

    appended = caption_folder(tmp_path / "data", _options(tiny, tmp_path, prefix="sks", mode="append"))
    assert mine.read_text() == "sks, my own words, smiling, red, circle, black background"
    assert [Path(w.image).stem for w in appended.written] == ["red_circle_black"]  # others had all tags
    assert len(appended.skipped) == 2

    caption_folder(tmp_path / "data", _options(tiny, tmp_path, prefix="ohwx", mode="overwrite"))
    assert mine.read_text() == "ohwx, red, circle, black background"
    assert (folder / "green_triangle_grey.txt").read_text() == "ohwx, green, triangle, grey background"


def test_caption_extension_and_token_cap(tiny, tmp_path):
    cf.write_shapes(tmp_path / "data", [("yellow", "square", "grey")])
    banks = {k: [f"{label} with a very long descriptive phrase about it" for label in v] for k, v in cf.BANKS.items()}
    opts = _options(tiny, tmp_path, banks=banks, prefix="sks", max_tokens=14, caption_extension=".caption")
    report = caption_folder(tmp_path / "data", opts)
    text = (tmp_path / "data" / "yellow_square_grey.caption").read_text()
    assert text == report.written[0].caption and text.startswith("sks, yellow with")
    assert count_tokens(text) <= 14
    assert not (tmp_path / "data" / "yellow_square_grey.txt").exists()


def test_label_cache_skips_text_encoding_and_follows_labels_and_weights(tiny, tmp_path, monkeypatch):
    import open_clip

    calls = []
    original = open_clip.model.CLIP.encode_text

    def counting(self, text, *args, **kwargs):
        calls.append(int(text.shape[0]))
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(open_clip.model.CLIP, "encode_text", counting)
    cf.write_shapes(tmp_path / "data", [("red", "circle", "black"), ("blue", "square", "white")])
    first = caption_folder(tmp_path / "data", _options(tiny, tmp_path))
    assert first.labels == 10 and first.labels_encoded == 10 and sum(calls) == 10

    calls.clear()
    warm = caption_folder(tmp_path / "data", _options(tiny, tmp_path, mode="overwrite"))
    assert warm.labels_encoded == 0 and calls == []  # no text encoded at all
    assert [w.caption for w in warm.written] == [w.caption for w in first.written]

    edited = dict(cf.BANKS, colour=["red", "green", "blue", "gold"])
    one = caption_folder(tmp_path / "data", _options(tiny, tmp_path, mode="overwrite", banks=edited))
    assert one.labels_encoded == 1 and calls == [1]  # only the changed label

    calls.clear()
    other = caption_folder(tmp_path / "data", _options(tiny, tmp_path, mode="overwrite",
                                                       clip_pretrained=str(tiny.other_weights)))
    assert other.labels_encoded == 10 and sum(calls) == 10  # same name, other weights: cache not reused
    files = list((tmp_path / "label-cache" / "label_embeddings").glob("*.npz"))
    assert len(files) == 2


def test_unreadable_images_are_reported_and_the_rest_captioned(tiny, tmp_path):
    cf.write_shapes(tmp_path / "data", [("red", "circle", "black"), ("blue", "square", "white")])
    (tmp_path / "data" / "broken.png").write_bytes(b"not an image at all")
    (tmp_path / "data" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 20)
    (tmp_path / "data" / "empty.webp").write_bytes(b"")
    report = caption_folder(tmp_path / "data", _options(tiny, tmp_path))
    assert len(report.written) == 2
    assert sorted(Path(p).name for p, _ in report.unreadable) == ["broken.png", "empty.webp", "truncated.jpg"]
    assert all(why for _, why in report.unreadable)
    assert "3 unreadable" in report.summary() and "broken.png" in report.summary()
    assert not (tmp_path / "data" / "broken.txt").exists()


def test_weights_from_file_pickle_local_dir_and_hub_cache_give_the_same_captions(tiny, tmp_path):
    import shutil

    images = cf.write_shapes(tmp_path / "data", ALL[::5], seed=3)
    snapshot = Path.home() / "hf" / "hub" / "models--someone--tiny-clip" / "snapshots" / "0123abc"
    shutil.copytree(tiny.local_dir, snapshot)
    forms = [dict(clip_model=str(tiny.safetensors)),                       # arch inferred from shapes
             dict(clip_model=str(tiny.pt), clip_arch=tiny.arch),
             dict(clip_model=f"local-dir:{tiny.local_dir}"),
             dict(clip_model="hf-hub:someone/tiny-clip", offline=True),   # found in the HF cache
             dict(clip_model=str(tiny.torchscript)),                      # OpenAI's archive format
             dict(clip_model=tiny.arch, clip_pretrained=str(tiny.pt))]
    for form in forms:
        report = caption_folder(tmp_path / "data", _options(tiny, tmp_path, mode="overwrite", prefix="sks", **form))
        assert _accuracy(report, images) == 1.0, form
        assert "QuickGELU" in report.model


def test_mismatched_weights_and_unknown_names_fail_clearly(tiny, tmp_path):
    with pytest.raises(InstantLoraError, match="Unknown CLIP architecture"):
        plan_weights(CaptionOptions(clip_model="ViT-L-41"))
    with pytest.raises(InstantLoraError, match="neither a pretrained tag"):
        plan_weights(CaptionOptions(clip_model="ViT-L-14", clip_pretrained="nonsense"))
    with pytest.raises(InstantLoraError, match="not in the local HF cache"):
        plan_weights(CaptionOptions(clip_model="hf-hub:nobody/nothing", offline=True))
    with pytest.raises(InstantLoraError, match="does not exist"):
        plan_weights(CaptionOptions(clip_model=str(tmp_path / "missing.safetensors")))
    (tmp_path / "junk.bin").write_bytes(b"junk")
    with pytest.raises(InstantLoraError, match="Can't read CLIP weights"):
        plan_weights(CaptionOptions(clip_model=str(tmp_path / "junk.bin")))
    cf.write_shapes(tmp_path / "data", [("red", "circle", "black")])
    with pytest.raises(InstantLoraError, match="do not fit architecture"):
        caption_folder(tmp_path / "data", _options(tiny, tmp_path, clip_model="ViT-B-32",
                                                   clip_pretrained=str(tiny.safetensors)))


def test_missing_weights_offline_say_which_file_to_put_where(tmp_path):
    with pytest.raises(InstantLoraError) as err:
        plan_weights(CaptionOptions(offline=True))
    text = str(err.value)
    assert "ViT-L-14/openai" in text and "offline" in text
    assert "ViT-L-14.pt from https://" in text and "into ~/.cache/clip/" in text and "--clip_model" in text
    assert str(Path.home() / ".cache" / "clip") in text  # where it looked


def test_default_model_found_in_local_caches_with_quick_gelu(tmp_path, monkeypatch):
    import open_clip

    clip_dir = Path.home() / ".cache" / "clip"
    clip_dir.mkdir(parents=True)
    (clip_dir / "ViT-L-14.pt").write_bytes(b"stand-in")  # only located here, never read
    plan = plan_weights(CaptionOptions(offline=True))
    assert (plan.arch, plan.weights, plan.quick_gelu) == ("ViT-L-14", str(clip_dir / "ViT-L-14.pt"), True)
    assert plan_weights(CaptionOptions(clip_model="ViT-L-14-quickgelu", offline=True)).quick_gelu
    assert not plan_weights(CaptionOptions(quick_gelu="off", offline=True)).quick_gelu

    # The WebUI's models folder, when running inside it, is searched too (and first).
    webui = tmp_path / "webui-models"
    (webui / "clip").mkdir(parents=True)
    (webui / "clip" / "ViT-L-14.pt").write_bytes(b"stand-in")
    monkeypatch.setitem(__import__("sys").modules, "modules.paths_internal",
                        types.SimpleNamespace(models_path=str(webui)))
    assert plan_weights(CaptionOptions(offline=True)).weights == str(webui / "clip" / "ViT-L-14.pt")

    # A tag published on the HF hub: found in the HF cache layout.
    cfg = open_clip.get_pretrained_cfg("ViT-L-14", "laion2b_s32b_b82k")
    repo = cfg["hf_hub"].strip("/")
    snap = Path.home() / "hf" / "hub" / ("models--" + repo.replace("/", "--")) / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "open_clip_pytorch_model.bin").write_bytes(b"stand-in")
    plan = plan_weights(CaptionOptions(clip_pretrained="laion2b_s32b_b82k", offline=True))
    assert plan.weights == str(snap / "open_clip_pytorch_model.bin") and not plan.quick_gelu
    assert plan.mean == (0.5, 0.5, 0.5)


def test_model_is_freed_after_captioning_unless_kept(tiny, tmp_path):
    cf.write_shapes(tmp_path / "data", [("red", "circle", "black")])
    caption_folder(tmp_path / "data", _options(tiny, tmp_path))
    assert current_clip() is None
    caption_folder(tmp_path / "data", _options(tiny, tmp_path, keep_model_loaded=True, mode="overwrite"))
    held = current_clip()
    assert held is not None
    caption_folder(tmp_path / "data", _options(tiny, tmp_path, keep_model_loaded=True, mode="overwrite"))
    assert current_clip() is held  # reused, not rebuilt
    ref = weakref.ref(held.model)
    del held
    assert free_clip_model() is True and current_clip() is None
    gc.collect()
    assert ref() is None  # nothing else keeps the weights alive
    assert free_clip_model() is False


def test_short_context_label_encoding_equals_open_clip_encode_text(tiny, tmp_path):
    import torch

    from instant_lora.captioning.clip_model import encode_texts, load_clip

    clip = load_clip(_options(tiny, tmp_path))
    texts = ["red", "grey background", "a much longer label with several words in it", "circle"]
    fast = encode_texts(clip, texts, batch_size=3)
    with torch.inference_mode():
        full = clip.model.encode_text(clip.tokenize(texts), normalize=True).numpy()
    assert abs(fast - full).max() < 1e-5
    assert clip.model.positional_embedding.shape[0] == cf.TINY_CONFIG["text_cfg"]["context_length"]


def test_cli_captions_a_folder_end_to_end(tiny, tmp_path, capsys):
    banks = tmp_path / "banks"
    banks.mkdir()
    for name, labels in cf.BANKS.items():
        (banks / f"{name}.txt").write_text("# top_k: 1\n" + "\n".join(labels) + "\n")
    images = cf.write_shapes(tmp_path / "data" / "10_sks", ALL[::7])  # varied: no constant tag
    parser = argparse.ArgumentParser()
    add_caption_subcommand(parser.add_subparsers(dest="command"))
    args = parser.parse_args([
        "caption", str(tmp_path / "data"), "--clip_model", str(tiny.safetensors), "--label_banks", str(banks),
        "--categories", "colour,shape,background", "--threshold", "-1", "--caption_prefix", "sks",
        "--device", "cpu", "--cache_dir", str(tmp_path / "c"), "--batch_size", "4", "--offline"])
    assert args.func(args) == 0
    out = capsys.readouterr()
    assert "6 written" in out.out and "captioned 6/6 images" in out.err
    for stem, spec in images.items():
        assert (tmp_path / "data" / "10_sks" / f"{stem}.txt").read_text() == _expected(spec)
    lint = parser.parse_args(["caption", str(tmp_path / "data"), "--lint", "--trigger", "sks"])
    assert run_caption_command(lint) == 0
    bad = parser.parse_args(["caption", str(tmp_path / "data"), "--clip_model", "ViT-L-14", "--offline",
                             "--overwrite"])
    assert run_caption_command(bad) == 2 and "ViT-L-14.pt" in capsys.readouterr().err


def test_train_auto_caption_fills_missing_captions_first(tmp_path):
    """`train --auto_caption` captions images without a caption file before training."""
    from captioning_fixtures import tiny_clip
    from conftest import make_image, tiny_config

    from instant_lora.tiny import build_tiny_sd
    from instant_lora.train.loop import train

    clip = tiny_clip(tmp_path / "clip")
    data = tmp_path / "data"
    make_image(data / "5_thing" / "a.png")
    make_image(data / "5_thing" / "b.png", (20, 20, 200), shape="circle")
    (data / "5_thing" / "b.txt").write_text("my own caption", encoding="utf-8")
    events = []
    train(tiny_config(data, tmp_path / "out", max_train_steps=1, auto_caption=True, trigger_words="thng",
                      caption_clip_model=f"local-dir:{clip.local_dir}", caption_clip_pretrained=""),
          model=build_tiny_sd(0), sinks=[events.append])
    assert (data / "5_thing" / "a.txt").read_text(encoding="utf-8").startswith("thng, ")
    assert (data / "5_thing" / "b.txt").read_text(encoding="utf-8") == "my own caption"
