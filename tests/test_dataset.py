"""Dataset scanning, captions and image decoding, on tiny images written by Pillow."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from instant_lora.dataset import (
    IMAGE_EXTENSIONS,
    DatasetScan,
    UnreadableImageError,
    image_to_tensor,
    load_image,
    read_caption,
    scan_dataset,
)
from instant_lora.errors import InstantLoraError


# ----------------------------------------------------------------------------- helpers

def make_image(path: Path, size=(8, 8), color=(200, 30, 30), mode="RGB", **save_args) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save_args)
    return path


def noisy_bytes(fmt: str, size=(64, 64)) -> bytes:
    """An image that compresses poorly, so cutting it in half really truncates pixel data."""
    arr = np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def write(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def by_name(scan: DatasetScan) -> dict:
    return {item.path.name: item for item in scan.items}


# ----------------------------------------------------------------------------- repeat folders

@pytest.fixture
def two_subsets(tmp_path: Path) -> Path:
    root = tmp_path / "lora_train_set"
    dog = root / "10_sks dog"
    ok = (64, 64)  # the smallest size the scan does not warn about
    make_image(dog / "b.png", ok)
    write(dog / "b.txt", "sks dog, Red Collar\nsecond line is ignored\n")
    make_image(dog / "a.JPG", ok, fmt="JPEG")  # no caption file: class tokens
    make_image(dog / "c.PNG", ok)
    write(dog / "c.txt", "")  # empty caption file: class tokens too
    style = root / "3_my_style"
    make_image(style / "x.jpeg", ok, fmt="JPEG")
    write(style / "x.txt", b"\xef\xbb\xbfSTYLE,  painting ,")  # BOM, odd spacing, trailing comma
    make_image(style / "y.webp", ok, fmt="WEBP")
    # Ignored silently: hidden files and folders, caches, caption of a missing image.
    make_image(dog / ".hidden.png")
    make_image(root / ".cache" / "z.png")
    write(dog / "b_0512x0512_sd.npz", b"\x00")
    write(dog / "orphan.txt", "no image")
    write(root / ".DS_Store", b"\x00\x01")
    return root


def test_repeat_folders_subsets_and_captions(two_subsets: Path):
    scan = scan_dataset(two_subsets)
    assert [(s.name, s.repeats, s.class_tokens, s.image_count) for s in scan.subsets] == [
        ("10_sks dog", 10, "sks dog", 3),
        ("3_my_style", 3, "my_style", 2),  # the rest of the name is kept verbatim
    ]
    assert [i.path.name for i in scan.items] == ["a.JPG", "b.png", "c.PNG", "x.jpeg", "y.webp"]
    items = by_name(scan)
    assert (items["b.png"].caption, items["b.png"].caption_source) == ("sks dog, Red Collar", "file")
    assert (items["a.JPG"].caption, items["a.JPG"].caption_source) == ("sks dog", "folder")
    assert (items["c.PNG"].caption, items["c.PNG"].caption_source) == ("sks dog", "folder")
    assert (items["x.jpeg"].caption, items["x.jpeg"].caption_source) == ("STYLE,  painting ,", "file")
    assert items["y.webp"].caption == "my_style"
    assert {i.subset for i in scan.items} == {"10_sks dog", "3_my_style"}
    assert [i.repeats for i in scan.items] == [10, 10, 10, 3, 3]
    assert scan.skipped == []
    assert scan.notes == []
    assert scan.warnings == []
    assert [p.name for p in scan.empty_captions] == ["c.txt"]
    assert scan.caption_extension == ".txt"


def test_kohya_statistics(two_subsets: Path):
    scan = scan_dataset(two_subsets)
    assert scan.num_train_images == 3 * 10 + 2 * 3
    assert scan.tag_frequency() == {
        "10_sks dog": {"sks dog": 3, "red collar": 1},
        "3_my_style": {"style": 1, "painting": 1, "my_style": 1},
    }
    assert scan.dataset_dirs() == {
        "10_sks dog": {"n_repeats": 10, "img_count": 3},
        "3_my_style": {"n_repeats": 3, "img_count": 2},
    }


def test_summary_counts(two_subsets: Path):
    text = scan_dataset(two_subsets).summary()
    assert "10_sks dog: 3 images x 10 repeats" in text
    assert "3_my_style: 2 images x 3 repeats" in text
    assert "36 training images" in text
    assert "2 from .txt files, 3 from folder names, 0 without caption" in text
    assert "1 empty .txt file" in text


@pytest.mark.parametrize("ext", [".caption", "caption"])
def test_caption_extension_with_or_without_dot(tmp_path: Path, ext: str):
    sub = tmp_path / "data" / "2_cat"
    make_image(sub / "a.png")
    write(sub / "a.caption", "from caption file")
    write(sub / "a.txt", "from txt file")
    scan = scan_dataset(tmp_path / "data", caption_extension=ext)
    assert scan.items[0].caption == "from caption file"
    assert scan.caption_extension == ".caption"


def test_read_caption_variants(tmp_path: Path):
    img = make_image(tmp_path / "a.png")
    assert read_caption(img, ".txt") is None
    write(tmp_path / "a.txt", "\ufeff  first line \r\nsecond line")
    assert read_caption(img, ".txt") == "first line"
    write(tmp_path / "a.txt", "\n\n  real caption\nmore")
    assert read_caption(img, "txt") == "real caption"
    write(tmp_path / "a.txt", "  \n")
    assert read_caption(img, ".txt") == ""


def test_read_caption_not_utf8(tmp_path: Path):
    img = make_image(tmp_path / "a.png")
    write(tmp_path / "a.txt", "café, crème".encode("latin-1"))
    with pytest.raises(InstantLoraError) as info:
        read_caption(img, ".txt")
    assert "a.txt" in info.value.message
    assert "UTF-8" in info.value.hint
    # The scan stops on it too, naming the file.
    sub = make_image(tmp_path / "d" / "1_x" / "a.png").parent
    write(sub / "a.txt", b"\xff\xfeh\x00i\x00")
    with pytest.raises(InstantLoraError, match="a.txt"):
        scan_dataset(tmp_path / "d")


def test_images_sorted_regardless_of_creation_order(tmp_path: Path):
    sub = tmp_path / "d" / "1_x"
    for name in ["c.png", "a.png", "b.png"]:
        make_image(sub / name)
    for name in ["5_b", "10_a"]:
        make_image(tmp_path / "d" / name / "z.png")
    scan = scan_dataset(tmp_path / "d")
    assert [s.name for s in scan.subsets] == ["10_a", "1_x", "5_b"]
    assert [f"{i.subset}/{i.path.name}" for i in scan.items] == [
        "10_a/z.png", "1_x/a.png", "1_x/b.png", "1_x/c.png", "5_b/z.png"]


def test_extensions_constant():
    assert IMAGE_EXTENSIONS == (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# ----------------------------------------------------------------------------- layouts

def test_flat_folder(tmp_path: Path):
    root = tmp_path / "my_photos"
    make_image(root / "a.png")
    make_image(root / "b.bmp", fmt="BMP")
    write(root / "a.txt", "a photo")
    scan = scan_dataset(root)
    assert [(s.name, s.repeats, s.class_tokens, s.image_count) for s in scan.subsets] == [("my_photos", 1, "", 2)]
    assert by_name(scan)["a.png"].caption_source == "file"
    assert by_name(scan)["b.bmp"].caption_source == "none"
    assert any("'my_photos' has images directly inside" in n and "1 repeat" in n for n in scan.notes)
    assert any("no caption" in n for n in scan.notes)


def test_image_folder_passed_instead_of_parent(tmp_path: Path):
    folder = tmp_path / "lora_train_set" / "10_test"
    make_image(folder / "a.png")
    scan = scan_dataset(folder)
    assert [(s.name, s.repeats, s.class_tokens) for s in scan.subsets] == [("10_test", 10, "test")]
    assert scan.items[0].caption == "test"
    assert scan.num_train_images == 10
    note = " ".join(scan.notes)
    assert "10 repeats" in note and str(folder.parent.resolve()) in note


def test_direct_images_beside_repeat_folders_are_ignored(tmp_path: Path):
    root = tmp_path / "d"
    make_image(root / "stray1.png")
    make_image(root / "stray2.png")
    make_image(root / "4_cat" / "a.png")
    scan = scan_dataset(root)
    assert [i.path.name for i in scan.items] == ["a.png"]
    assert any("ignored 2 image(s) directly in 'd'" in n for n in scan.notes)


def test_non_numeric_and_zero_folders_are_ignored_with_a_note(tmp_path: Path):
    root = tmp_path / "d"
    make_image(root / "misc" / "m.png")
    make_image(root / "0_zero" / "z.png")
    make_image(root / "5_cat" / "a.png")
    scan = scan_dataset(root)
    assert [i.path.name for i in scan.items] == ["a.png"]
    assert any("ignored folder 'misc'" in n and "10_misc" in n for n in scan.notes)
    assert any("ignored folder '0_zero'" in n for n in scan.notes)


def test_grandparent_passed_names_the_right_folder(tmp_path: Path):
    data = tmp_path / "data"
    make_image(data / "lora_train_set" / "10_test" / "a.png")
    with pytest.raises(InstantLoraError) as info:
        scan_dataset(data)
    err = info.value
    assert "10_test" in err.message
    assert f"'{(data / 'lora_train_set').resolve()}'" in err.hint
    assert "\nlora_train_set/\n  10_mychar/" in err.hint  # the layout is drawn under the suggested folder


def test_images_in_misnamed_folder_suggest_renaming(tmp_path: Path):
    make_image(tmp_path / "d" / "photos" / "a.png")
    with pytest.raises(InstantLoraError) as info:
        scan_dataset(tmp_path / "d")
    assert "10_photos" in info.value.hint


def test_empty_folder_error_shows_layout(tmp_path: Path):
    root = tmp_path / "empty"
    root.mkdir()
    write(root / "notes.txt", "not an image")
    write(root / "pic.heic", b"\x00")
    with pytest.raises(InstantLoraError) as info:
        scan_dataset(root)
    err = info.value
    assert str(root.resolve()) in err.message
    assert ".heic" in err.message
    assert "10_mychar/" in err.hint and "img001.txt" in err.hint


def test_missing_folder_and_file_instead_of_folder(tmp_path: Path):
    with pytest.raises(InstantLoraError, match="not found") as info:
        scan_dataset(tmp_path / "nope")
    assert "10_mychar/" in info.value.hint
    f = write(tmp_path / "file.png", b"x")
    with pytest.raises(InstantLoraError, match="not a folder"):
        scan_dataset(f)
    with pytest.raises(InstantLoraError):
        scan_dataset("")


# ----------------------------------------------------------------------------- bad images

@pytest.fixture
def bad_images(tmp_path: Path) -> Path:
    sub = tmp_path / "d" / "5_x"
    make_image(sub / "good.png")
    jpg = noisy_bytes("JPEG")
    write(sub / "cut.jpg", jpg[: len(jpg) // 2])
    png = noisy_bytes("PNG")
    write(sub / "cut.png", png[: int(len(png) * 0.6)])
    write(sub / "zero.png", b"")
    write(sub / "text.jpg", "hello, this is not a picture")
    write(sub / "garbage.webp", bytes(range(250, 256)) + bytes(100))
    write(sub / "jpeg_inside.png", noisy_bytes("JPEG", (16, 16)))  # mislabeled but valid
    return tmp_path / "d"


def test_bad_images_are_skipped_with_reasons(bad_images: Path):
    scan = scan_dataset(bad_images)
    assert [i.path.name for i in scan.items] == ["good.png", "jpeg_inside.png"]
    reasons = {f.path.name: f.reason for f in scan.skipped}
    assert reasons["cut.jpg"] == "truncated JPEG"
    assert reasons["cut.png"] == "truncated PNG"
    assert reasons["zero.png"] == "empty file (0 bytes)"
    assert reasons["text.jpg"].startswith("not an image (file starts with 'hello, this")
    assert reasons["garbage.webp"].startswith("cannot identify image file")
    summary = scan.summary()
    assert "Skipped 5 file(s)" in summary
    assert "5_x/cut.jpg: truncated JPEG" in summary
    assert scan.subsets[0].image_count == 2
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_check_images_false_does_not_decode(bad_images: Path):
    scan = scan_dataset(bad_images, check_images=False)
    names = [i.path.name for i in scan.items]
    assert "cut.jpg" in names and "text.jpg" in names
    assert [f.path.name for f in scan.skipped] == ["zero.png"]  # size is checked without decoding


def test_all_images_bad_is_an_error(tmp_path: Path):
    sub = tmp_path / "d" / "5_x"
    write(sub / "a.png", b"")
    write(sub / "b.jpg", "text")
    with pytest.raises(InstantLoraError) as info:
        scan_dataset(tmp_path / "d")
    msg = info.value.message
    assert "All 2 images" in msg and "a.png" in msg and "b.jpg" in msg


def test_load_image_raises_unreadable_with_reason(tmp_path: Path):
    png = noisy_bytes("PNG")
    path = write(tmp_path / "cut.png", png[: len(png) // 2])
    with pytest.raises(UnreadableImageError) as info:
        load_image(path)
    assert isinstance(info.value, InstantLoraError)
    assert info.value.reason == "truncated PNG"
    assert "cut.png" in info.value.message


# ----------------------------------------------------------------------------- conversions

def test_rgba_transparent_pixels_on_white(tmp_path: Path):
    im = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # transparent black
    im.putpixel((0, 0), (255, 0, 0, 255))
    im.putpixel((1, 0), (0, 0, 0, 128))
    im.save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.mode == "RGB"
    assert out.getpixel((3, 3)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (255, 0, 0)
    assert all(120 <= c <= 135 for c in out.getpixel((1, 0)))  # half-transparent black -> grey


def test_la_and_palette_transparency_on_white(tmp_path: Path):
    la = Image.new("LA", (2, 2), (0, 0))
    la.putpixel((0, 0), (50, 255))
    la.save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png")
    assert out.getpixel((1, 1)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (50, 50, 50)

    p = Image.new("P", (2, 2), 0)
    p.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    p.putpixel((0, 0), 1)
    p.save(tmp_path / "p.png", transparency=0)
    out = load_image(tmp_path / "p.png")
    assert out.getpixel((1, 1)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (0, 0, 255)


def test_grayscale_and_cmyk(tmp_path: Path):
    make_image(tmp_path / "l.png", mode="L", color=77)
    assert load_image(tmp_path / "l.png").getpixel((0, 0)) == (77, 77, 77)
    make_image(tmp_path / "c.jpg", mode="CMYK", color=(255, 0, 0, 0), fmt="JPEG", quality=95)
    r, g, b = load_image(tmp_path / "c.jpg").getpixel((0, 0))
    assert r < 40 and g > 215 and b > 215  # cyan


def test_16bit_grayscale_scaled_not_saturated(tmp_path: Path):
    arr = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    out = load_image(tmp_path / "g16.png")
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (0, 0, 0)
    assert all(abs(c - 128) <= 1 for c in out.getpixel((1, 0)))
    assert out.getpixel((0, 1)) == (255, 255, 255)
    assert all(abs(c - 4) <= 1 for c in out.getpixel((1, 1)))


def test_exif_orientation_applied(tmp_path: Path):
    im = Image.new("RGB", (4, 2), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert Image.open(tmp_path / "rot.jpg").size == (4, 2)
    assert load_image(tmp_path / "rot.jpg").size == (2, 4)


def test_png_that_is_really_jpeg_loads(tmp_path: Path):
    path = write(tmp_path / "really_jpeg.png", noisy_bytes("JPEG", (12, 10)))
    out = load_image(path)
    assert out.size == (12, 10) and out.mode == "RGB"


# ----------------------------------------------------------------------------- resize and tensor

def thirds(width: int, height: int, vertical=False) -> Image.Image:
    im = Image.new("RGB", (width, height))
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for i, c in enumerate(colors):
        if vertical:
            im.paste(c, (0, i * height // 3, width, (i + 1) * height // 3))
        else:
            im.paste(c, (i * width // 3, 0, (i + 1) * width // 3, height))
    return im


@pytest.mark.parametrize("src,dst", [
    ((300, 100), (64, 64)),   # wide
    ((100, 300), (64, 96)),   # tall
    ((10, 5), (64, 64)),      # small: upscaled
    ((640, 480), (512, 384)),  # same aspect
    ((2000, 1000), (64, 48)),  # big downscale
])
def test_resize_cover_crop_sizes(src, dst):
    out = resize_cover_crop(Image.new("RGB", src, (9, 9, 9)), *dst)
    assert out.size == dst


def resize_cover_crop(img, width, height):
    """What a training step does to an image bound for a width x height bucket."""
    from instant_lora.buckets import place
    from instant_lora.train.images import centre_crop

    return centre_crop(img, place(img.size, (width, height)))


def test_resize_cover_crop_centre_crops():
    out = resize_cover_crop(thirds(300, 100), 32, 32)
    assert out.getpixel((16, 16)) == (0, 255, 0)
    for x in (0, 31):  # the crop is exactly the green third: no red or blue edges
        r, g, b = out.getpixel((x, 16))
        assert g > 200 and r < 60 and b < 60
    tall = resize_cover_crop(thirds(90, 300, vertical=True), 30, 30)
    assert tall.getpixel((15, 15)) == (0, 255, 0)
    r, g, b = tall.getpixel((15, 0))
    assert g > 200 and r < 60


def test_image_to_tensor_range_and_shape():
    import torch

    im = Image.new("RGB", (5, 3), (0, 0, 0))
    im.putpixel((4, 2), (255, 255, 255))
    im.putpixel((0, 0), (255, 0, 0))
    t = image_to_tensor(im)
    assert t.shape == (3, 3, 5) and t.dtype == torch.float32 and t.is_contiguous()
    assert t.min().item() == -1.0 and t.max().item() == 1.0
    assert t[:, 2, 4].tolist() == [1.0, 1.0, 1.0]
    assert t[:, 0, 0].tolist() == [1.0, -1.0, -1.0]
    assert image_to_tensor(Image.new("L", (2, 2), 255)).shape == (3, 2, 2)


def test_import_does_not_import_torch():
    ext_dir = Path(__file__).resolve().parents[1] / "extension"
    env = dict(os.environ, PYTHONPATH=str(ext_dir))
    code = "import sys, instant_lora.dataset; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
