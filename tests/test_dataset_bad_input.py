"""The dataset scan on bad input: link loops, unreadable folders, unsupported files, broken links,
tiny or elongated images, captions with prompt tags or over 75 tokens, wrong caption extensions.

Each case goes through `scan_dataset`: the scan finishes and its notes or skipped list name the file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from instant_lora.dataset import (
    DatasetScan,
    ScanWarning,
    SkippedFile,
    caption_extension_problem,
    read_caption,
    scan_dataset,
)
from instant_lora.errors import InstantLoraError

OK = (64, 64)


def make_image(path: Path, size=OK, fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path, fmt)
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def symlink(link: Path, target: str) -> None:
    try:
        os.symlink(target, link)
    except (OSError, NotImplementedError) as e:  # Windows without the privilege
        pytest.skip(f"cannot create symbolic links here: {e}")


def skipped_by_name(scan: DatasetScan) -> dict[str, SkippedFile]:
    return {f.path.name: f for f in scan.skipped}


def warning(scan: DatasetScan, kind: str) -> ScanWarning:
    found = [w for w in scan.warnings if w.kind == kind]
    assert len(found) == 1, f"expected one {kind} warning, got {scan.warnings}"
    return found[0]


# ----------------------------------------------------------------------------- links and folders

def test_symlink_loops_are_skipped_with_a_note(tmp_path: Path):
    root = tmp_path / "d"
    sub = root / "5_x"
    make_image(sub / "good.png")
    symlink(root / "loop", ".")            # ln -s . loop, in the dataset folder
    symlink(sub / "loop", ".")             # and in a repeat folder
    symlink(root / "10_up", "..")          # a repeat-named link to an ancestor
    symlink(sub / "a.png", "b.png")        # two links pointing at each other
    symlink(sub / "b.png", "a.png")
    symlink(root / "p", "q")
    symlink(root / "q", "p")

    scan = scan_dataset(root)

    assert [i.path.name for i in scan.items] == ["good.png"]
    assert [s.name for s in scan.subsets] == ["5_x"]
    skipped = skipped_by_name(scan)
    assert set(skipped) == {"loop", "10_up", "a.png", "b.png", "p", "q"}
    assert all(f.kind == "link_loop" for f in scan.skipped)
    assert all("remove the link" in f.reason for f in scan.skipped)
    assert "loop" in skipped["a.png"].reason
    assert "a folder that contains it" in skipped["10_up"].reason
    summary = scan.summary()
    assert "5_x/a.png: symbolic link loop" in summary
    assert "5_x/loop: link to ., a folder that contains it" in summary
    assert scan.notes == []  # the loops are not mistaken for misnamed folders


def test_only_link_loops_is_a_clear_error_not_an_oserror(tmp_path: Path):
    root = tmp_path / "d"
    root.mkdir()
    symlink(root / "loop", ".")
    symlink(root / "a", "b")
    symlink(root / "b", "a")
    with pytest.raises(InstantLoraError) as info:
        scan_dataset(root)
    assert "No usable images" in info.value.message
    assert "symbolic link loop" in info.value.message and "a:" in info.value.message


def test_dataset_folder_that_is_a_link_loop(tmp_path: Path):
    symlink(tmp_path / "self", "self")
    with pytest.raises(InstantLoraError, match="symbolic link") as info:
        scan_dataset(tmp_path / "self")
    assert str(tmp_path / "self") in info.value.message


def _fake_scandir(monkeypatch, fail_folder: Path = None, fail_entry: str = None):
    real = os.scandir

    class Entry:  # a DirEntry whose type checks fail, as on a file we may not stat
        def __init__(self, entry):
            self._entry, self.name, self.path = entry, entry.name, entry.path

        def _fail(self, *args, **kwargs):
            raise PermissionError(13, "Permission denied", self.path)

        is_symlink = is_dir = is_file = _fail

    class Listing(list):  # os.scandir's result is also a context manager
        def __enter__(self):
            return iter(self)

        def __exit__(self, *exc):
            return False

        def close(self):
            pass

    def scandir(path="."):
        if fail_folder is not None and Path(path) == fail_folder:
            raise PermissionError(13, "Permission denied", str(path))
        with real(path) as it:
            return Listing(Entry(e) if e.name == fail_entry else e for e in it)

    monkeypatch.setattr(os, "scandir", scandir)


def test_unlistable_folder_is_skipped_and_named(tmp_path: Path, monkeypatch):
    root = tmp_path / "d"
    make_image(root / "5_open" / "a.png")
    make_image(root / "3_locked" / "b.png")
    _fake_scandir(monkeypatch, fail_folder=(root / "3_locked").resolve())
    scan = scan_dataset(root)
    assert [i.path.name for i in scan.items] == ["a.png"]
    [locked] = scan.skipped
    assert (locked.path.name, locked.kind) == ("3_locked", "unlistable")
    assert "Permission denied" in locked.reason and "readable" in locked.reason
    assert "3_locked: cannot list folder (Permission denied)" in scan.summary()
    assert not any("has no images" in n for n in scan.notes)


def test_entry_that_cannot_be_statted_is_skipped_and_named(tmp_path: Path, monkeypatch):
    root = tmp_path / "d"
    make_image(root / "5_x" / "a.png")
    make_image(root / "5_x" / "secret.png")
    _fake_scandir(monkeypatch, fail_entry="secret.png")
    scan = scan_dataset(root)
    assert [i.path.name for i in scan.items] == ["a.png"]
    assert skipped_by_name(scan)["secret.png"].reason.startswith("cannot read (Permission denied)")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any folder")
def test_folder_without_read_permission(tmp_path: Path):
    root = tmp_path / "d"
    make_image(root / "5_open" / "a.png")
    locked = make_image(root / "3_locked" / "b.png").parent
    locked.chmod(0)
    try:
        scan = scan_dataset(root)
    finally:
        locked.chmod(0o755)
    assert skipped_by_name(scan)["3_locked"].kind == "unlistable"


# ----------------------------------------------------------------------------- skipped files

def test_unsupported_types_are_named_with_what_to_do(tmp_path: Path):
    sub = tmp_path / "d" / "5_x"
    make_image(sub / "good.png")
    make_image(sub / "anim.gif", fmt="GIF")
    make_image(sub / "scan.tiff", fmt="TIFF")
    (sub / "phone.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(20))
    scan = scan_dataset(tmp_path / "d")
    assert [i.path.name for i in scan.items] == ["good.png"]
    skipped = skipped_by_name(scan)
    assert skipped["anim.gif"].reason == "GIF is not supported: convert it to PNG (its first frame)"
    assert skipped["scan.tiff"].reason == "TIFF is not supported: convert it to PNG"
    assert skipped["phone.HEIC"].reason == "HEIC is not supported: convert it to JPEG or PNG"
    assert {f.kind for f in scan.skipped} == {"unsupported"}
    assert "5_x/anim.gif: GIF is not supported" in scan.summary()


def test_broken_links_are_named_with_their_target(tmp_path: Path):
    root = tmp_path / "d"
    make_image(root / "5_x" / "good.png")
    symlink(root / "5_x" / "gone.png", "missing.png")
    symlink(root / "10_gone", str(tmp_path / "nowhere"))
    scan = scan_dataset(root)
    assert [i.path.name for i in scan.items] == ["good.png"]
    skipped = skipped_by_name(scan)
    assert skipped["gone.png"].reason == ("broken link: points to missing.png which does not exist; "
                                         "fix or remove the link")
    assert skipped["10_gone"].kind == "broken_link"
    assert str(tmp_path / "nowhere") in skipped["10_gone"].reason
    assert "5_x/gone.png: broken link" in scan.summary()


def test_only_unsupported_files_keeps_the_layout_error(tmp_path: Path):
    make_image(tmp_path / "d" / "5_x" / "anim.gif", fmt="GIF")
    with pytest.raises(InstantLoraError) as info:
        scan_dataset(tmp_path / "d")
    assert "No usable images" in info.value.message and ".gif" in info.value.message
    assert "failed to load" not in info.value.message  # a GIF is not a corrupt image


# ----------------------------------------------------------------------------- image warnings

@pytest.mark.parametrize("check_images", [True, False])
def test_small_and_elongated_images_warn_but_stay(tmp_path: Path, check_images: bool):
    sub = tmp_path / "d" / "5_x"
    make_image(sub / "fine.png", (64, 256))  # exactly 4:1 and 64 px: no warning
    make_image(sub / "tiny.png", (32, 80))
    make_image(sub / "strip.jpg", (300, 64), fmt="JPEG")
    make_image(sub / "both.png", (10, 50))
    scan = scan_dataset(tmp_path / "d", check_images=check_images)
    assert [i.path.name for i in scan.items] == ["both.png", "fine.png", "strip.jpg", "tiny.png"]
    small = warning(scan, "small_image")
    assert [p.name for p in small.files] == ["both.png", "tiny.png"]
    assert "smaller than 64 px" in small.message
    elongated = warning(scan, "extreme_aspect")
    assert [p.name for p in elongated.files] == ["both.png", "strip.jpg"]
    kind, message, files = elongated  # unpacks for a UI
    assert kind == "extreme_aspect" and files == elongated.files
    assert any(n.startswith("2 image(s) smaller than 64 px") and n.endswith(": 5_x/both.png, 5_x/tiny.png")
               for n in scan.notes)
    assert any("5_x/strip.jpg" in n and "over 4x" in n for n in scan.notes)
    assert "5_x/tiny.png" in scan.summary()


def test_warning_lines_cap_the_file_list(tmp_path: Path):
    sub = tmp_path / "d" / "5_x"
    for i in range(8):
        make_image(sub / f"s{i}.png", (16, 16))
    scan = scan_dataset(tmp_path / "d")
    small = warning(scan, "small_image")
    assert len(small.files) == 8
    line = next(n for n in scan.notes if "smaller than" in n)
    assert line.startswith("8 image(s)") and "5_x/s4.png" in line and "5_x/s5.png" not in line
    assert line.endswith(" and 3 more")


# ----------------------------------------------------------------------------- caption warnings

def test_prompt_tags_in_captions_are_flagged(tmp_path: Path):
    sub = tmp_path / "d" / "5_x"
    for name, caption in {"a": "sks, <lora:old_style:0.8>, red dress", "b": "plain caption",
                          "c": "sks <LyCO:thing:1>", "d": "<hypernet:h:1> photo"}.items():
        make_image(sub / f"{name}.png")
        write(sub / f"{name}.txt", caption)
    scan = scan_dataset(tmp_path / "d")
    assert len(scan.items) == 4  # flagged, not skipped
    tagged = warning(scan, "prompt_tag")
    assert [p.name for p in tagged.files] == ["a.txt", "c.txt", "d.txt"]
    assert "3 caption(s)" in tagged.message and "<lora:old_style:0.8>" in tagged.message
    assert any("prompt tag" in n and "5_x/a.txt, 5_x/c.txt, 5_x/d.txt" in n for n in scan.notes)
    assert not [w for w in scan.warnings if w.kind == "too_long"]


def test_captions_over_75_tokens_are_flagged(tmp_path: Path):
    sub = tmp_path / "d" / "5_x"
    make_image(sub / "long.png")
    write(sub / "long.txt", ", ".join(f"detail {i}" for i in range(40)))  # about 120 tokens
    make_image(sub / "short.png")
    write(sub / "short.txt", "a photo of sks dog")
    scan = scan_dataset(tmp_path / "d")
    too_long = warning(scan, "too_long")
    assert [p.name for p in too_long.files] == ["long.txt"]
    assert "exceed 75 CLIP tokens" in too_long.message
    assert any("75 CLIP tokens" in n and n.endswith("5_x/long.txt") for n in scan.notes)


def test_folder_name_captions_are_checked_too(tmp_path: Path):
    make_image(tmp_path / "d" / "5_sks <lora:x:1>" / "a.png")
    scan = scan_dataset(tmp_path / "d")
    assert [p.name for p in warning(scan, "prompt_tag").files] == ["a.png"]  # no caption file: the image


def test_scan_with_short_captions_loads_neither_torch_nor_open_clip(tmp_path: Path):
    sub = tmp_path / "d" / "5_x"
    make_image(sub / "a.png", (8, 8))
    write(sub / "a.txt", "sks, <lora:x:1>, " + ", ".join(f"tag{i}" for i in range(60)))  # long for sure
    ext_dir = Path(__file__).resolve().parents[1] / "extension"
    code = ("import sys; from instant_lora.dataset import scan_dataset; s = scan_dataset(sys.argv[1]); "
            "assert {w.kind for w in s.warnings} == {'small_image', 'prompt_tag', 'too_long'}, s.warnings; "
            "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "d")], check=True,
                   env=dict(os.environ, PYTHONPATH=str(ext_dir)))


def test_token_limit_rule_agrees_with_the_clip_tokenizer():
    pytest.importorskip("open_clip")
    from instant_lora.captioning.compose import count_tokens
    from instant_lora.captioning.lint import caption_over_limit, count_caption_tokens

    texts = [
        "a photo of sks dog",
        ", ".join(f"detail {i}" for i in range(40)),
        ", ".join(["masterpiece", "best quality", "1girl", "solo", "long hair"] * 4),  # in doubt: exact count
        " ".join(["photograph"] * 74), " ".join(["photograph"] * 76),
        "it's a dog's life, they're here, I'll go, we'd've " * 6,
        "naïve café, crème brûlée, " * 8,  # not ASCII: always the exact count
        "fish &amp; chips, " * 20,
    ]
    for text in texts:
        assert count_caption_tokens(text) == count_tokens(text)
        for limit in (5, 20, 75, 150):
            assert caption_over_limit(text, limit) == (count_tokens(text) > limit), (text, limit)


def test_lint_uses_the_same_prompt_tag_rule_and_fixes_it(tmp_path: Path):
    from instant_lora.captioning import lint_captions

    sub = tmp_path / "5_x"
    make_image(sub / "a.png")
    write(sub / "a.txt", "sks, <lora:old:0.8>, red dress")
    make_image(sub / "b.png")
    write(sub / "b.txt", "a photo of <hypernet:h:1> a cat")
    report = lint_captions(tmp_path)
    [issue] = [i for i in report.issues if i.kind == "prompt_tag"]
    assert issue.message == warning(scan_dataset(tmp_path), "prompt_tag").message
    lint_captions(tmp_path, fix=True)
    assert (sub / "a.txt").read_text() == "sks, red dress"
    assert (sub / "b.txt").read_text() == "a photo of a cat"
    assert not [w for w in scan_dataset(tmp_path).warnings if w.kind == "prompt_tag"]


# ----------------------------------------------------------------------------- caption extension

@pytest.mark.parametrize("ext,expected", [
    (".png", "image file type"),
    ("png", "image file type"),
    (".JPG", "image file type"),
    (".gif", "image file type"),
    ("../x", "not a plain file extension"),
    ("sub/x", "not a plain file extension"),
    (".", "not a plain file extension"),
    (". txt", "not a plain file extension"),
    (".safetensors", "model or cache file"),
    ("npz", "model or cache file"),
    (".txt", None),
    ("caption", None),
    (".caption", None),
    (".en.txt", None),
    ("", None),  # empty means the default, .txt
])
def test_caption_extension_problem(ext: str, expected):
    problem = caption_extension_problem(ext)
    if expected is None:
        assert problem is None
    else:
        assert expected in problem and f"'{ext}'" in problem and ".txt" in problem


def test_read_caption_and_scan_refuse_a_bad_caption_extension(tmp_path: Path):
    img = make_image(tmp_path / "d" / "5_x" / "a.png")
    with pytest.raises(InstantLoraError, match=r"'\.png'"):
        read_caption(img, ".png")
    with pytest.raises(InstantLoraError, match=r"'\.\./x'"):
        read_caption(img, "../x")
    with pytest.raises(InstantLoraError, match="'png'") as info:
        scan_dataset(tmp_path / "d", caption_extension="png")
    assert ".txt" in info.value.hint
    assert scan_dataset(tmp_path / "d", caption_extension="caption").caption_extension == ".caption"
