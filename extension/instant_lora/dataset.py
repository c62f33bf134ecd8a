"""Training images: find them in the kohya folder layout, read their captions, decode them safely.

Layout (as the reference trainer): ``train_data_dir/<repeats>_<class tokens>/<image>`` with an
optional ``<image stem><caption_extension>`` caption beside each image. Every mistake a user can
make here is reported before training starts, naming the file or folder and what to do.
"""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import InstantLoraError

if TYPE_CHECKING:
    import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Image types users often have but we do not train on: worth a note, unlike .txt or .npz files.
_UNSUPPORTED_IMAGE_EXTENSIONS = (".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl")
# What a caption extension must never be: another image's name, or a model/cache file's.
_NOT_CAPTION_EXTENSIONS = frozenset(IMAGE_EXTENSIONS + _UNSUPPORTED_IMAGE_EXTENSIONS + (
    ".jfif", ".svg", ".ico", ".psd", ".raw", ".dng"))
_MODEL_EXTENSIONS = frozenset((".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".npz", ".npy", ".onnx", ".gguf"))
_MAX_SEARCH_DEPTH = 4  # how deep to look for misplaced images before giving up
MIN_IMAGE_SIDE = 64  # px: smaller images are upscaled so much that they teach blur
MAX_ASPECT_RATIO = 4.0  # longer side / shorter side: beyond it the crop drops most of the image
_LISTED_FILES = 5  # file names shown per warning line; the count says how many in all


@dataclass
class ImageItem:
    path: Path
    caption: str  # caption file's first line, else the folder's class tokens, else ""
    caption_source: str  # "file" | "folder" | "none"
    repeats: int
    subset: str
    size: tuple | None = None  # (width, height) as trained: upright per EXIF; None when the header could not be read


@dataclass
class Subset:
    name: str
    path: Path
    repeats: int
    class_tokens: str
    image_count: int


@dataclass
class SkippedFile:
    path: Path
    reason: str  # what is wrong and what to do, e.g. "GIF is not supported: convert it to PNG or JPEG"
    # unreadable (failed to decode) | unsupported (file type) | broken_link | link_loop | unlistable
    kind: str = "unreadable"


@dataclass
class ScanWarning:
    """Something worth fixing that does not stop training: the files stay in the dataset.

    Iterates as (kind, message, files), so a UI can unpack it directly.
    """

    kind: str  # small_image | extreme_aspect | prompt_tag | too_long
    message: str  # what is wrong and what to do, without the file names
    files: list[Path] = field(default_factory=list)  # every file concerned (caption files for caption rules)

    def __iter__(self):
        return iter((self.kind, self.message, self.files))

    def line(self, root: Path | None = None) -> str:
        """One readable line: the message, then the first file names and how many more."""
        names = [_rel(f, root) if root is not None else str(f) for f in self.files[:_LISTED_FILES]]
        more = f" and {len(self.files) - _LISTED_FILES} more" if len(self.files) > _LISTED_FILES else ""
        return f"{self.message}: {', '.join(names)}{more}" if names else self.message


@dataclass
class DatasetScan:
    root: Path
    items: list[ImageItem] = field(default_factory=list)
    subsets: list[Subset] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    caption_extension: str = ".txt"
    empty_captions: list[Path] = field(default_factory=list)  # caption files that exist but are blank
    # Small or very elongated images, captions with prompt tags or over 75 tokens; each also a line in notes.
    warnings: list[ScanWarning] = field(default_factory=list)

    @property
    def num_train_images(self) -> int:
        return sum(item.repeats for item in self.items)

    def tag_frequency(self) -> dict[str, dict[str, int]]:
        # As kohya's ss_tag_frequency: per image (not per repeat), fallback captions included.
        freq: dict[str, dict[str, int]] = {s.name: {} for s in self.subsets}
        for item in self.items:
            tags = freq.setdefault(item.subset, {})
            for tag in item.caption.split(","):
                tag = tag.strip().lower()
                if tag:
                    tags[tag] = tags.get(tag, 0) + 1
        return freq

    def dataset_dirs(self) -> dict[str, dict[str, int]]:
        return {s.name: {"n_repeats": s.repeats, "img_count": s.image_count} for s in self.subsets}

    def summary(self) -> str:
        lines = [f"Dataset {self.root}: {len(self.subsets)} folder(s), {len(self.items)} images, "
                 f"{self.num_train_images} training images per epoch (images x repeats)"]
        for s in self.subsets:
            tokens = f", class tokens '{s.class_tokens}'" if s.class_tokens else ""
            lines.append(f"  {s.name}: {s.image_count} images x {s.repeats} repeats{tokens}")
        counts = Counter(item.caption_source for item in self.items)
        captions = (f"Captions: {counts['file']} from {self.caption_extension} files, "
                    f"{counts['folder']} from folder names, {counts['none']} without caption")
        if self.empty_captions:
            captions += f" ({len(self.empty_captions)} empty {self.caption_extension} file(s) used the folder name)"
        lines.append(captions)
        if self.skipped:
            lines.append(f"Skipped {len(self.skipped)} file(s):")
            lines += [f"  {_rel(f.path, self.root)}: {f.reason}" for f in self.skipped[:20]]
            if len(self.skipped) > 20:
                lines.append(f"  ... and {len(self.skipped) - 20} more")
        if self.notes:
            lines.append("Notes:")
            lines += [f"  - {note}" for note in self.notes]
        return "\n".join(lines)


class UnreadableImageError(InstantLoraError):
    """An image file that cannot be decoded; ``reason`` is a short phrase for lists of skipped files."""

    def __init__(self, path, reason: str):
        super().__init__(f"Cannot use image {path}: {reason}", path=path,
                         hint="Re-save it as PNG or JPEG in an image editor, or remove it from the folder.")
        self.reason = reason


# ----------------------------------------------------------------------------- captions

def _normalize_extension(ext: str) -> str:
    ext = (ext or ".txt").strip()
    return ext if ext.startswith(".") else "." + ext


def caption_extension_problem(ext: str) -> str | None:
    """Why `ext` cannot be a caption file extension (a message saying what to use), or None if it can.

    Accepted: a plain extension like .txt or .caption (the dot is optional; empty means .txt).
    Refused: path separators, a bare ".", an image's extension (the caption would be read from,
    or written over, an image) and model/cache files' extensions.
    """
    shown = str(ext).strip() if ext is not None else ""
    norm = _normalize_extension(shown)
    parts = norm[1:].split(".")
    use = "use .txt (or .caption)"
    if not all(p and all(c.isalnum() or c in "_-" for c in p) for p in parts):
        return f"Caption extension '{shown}' is not a plain file extension: {use}"
    last = "." + parts[-1].lower()
    if last in _NOT_CAPTION_EXTENSIONS:
        return f"Caption extension '{shown}' is an image file type: captions are text files beside the images; {use}"
    if last in _MODEL_EXTENSIONS:
        return f"Caption extension '{shown}' is a model or cache file type, not a caption: {use}"
    return None


def _checked_caption_extension(ext: str) -> str:
    problem = caption_extension_problem(ext)
    if problem:
        raise InstantLoraError(problem, hint="Set the caption extension to .txt, the usual one, or .caption.")
    return _normalize_extension(ext)


def read_caption(image_path: Path, caption_extension: str) -> str | None:
    """The caption beside an image: None when there is no file, "" when it is blank."""
    image_path = Path(image_path)
    path = image_path.with_name(image_path.stem + _checked_caption_extension(caption_extension))
    try:
        if not path.is_file():
            return None
    except OSError as e:  # e.g. permission denied on the folder
        raise InstantLoraError(f"Cannot read caption file {path}: {e.strerror or e}",
                               hint="Check that the file and its folder are readable.", path=path) from e
    try:
        text = path.read_bytes().decode("utf-8-sig")  # Windows editors often add a BOM
    except UnicodeDecodeError as e:
        raise InstantLoraError(f"Caption file {path} is not UTF-8 text (undecodable byte at position {e.start})",
                               hint="Open it in a text editor and save it with UTF-8 encoding.", path=path) from e
    except OSError as e:
        raise InstantLoraError(f"Cannot read caption file {path}: {e.strerror or e}",
                               hint="Check that the file is readable.", path=path) from e
    # First line only, as the reference trainer; leading blank lines are a typo, not a caption.
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


# ----------------------------------------------------------------------------- images

def _unidentified_reason(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except OSError:
        return "cannot identify image file"
    if head[4:8] == b"ftyp":  # ISO media: phones save HEIC/AVIF, sometimes named .jpg
        return f"{head[8:12].decode('ascii', 'replace')} image, not supported (convert it to JPEG or PNG)"
    text = head.decode("utf-8", "ignore")  # "ignore": the 32 bytes may cut a character in two
    if len(text.encode()) >= len(head) - 3 and all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"not an image (file starts with {text[:24].strip()!r})"
    return f"cannot identify image file (starts with bytes {head[:8].hex(' ')})"


def _open_decoded(path: Path) -> Image.Image:
    """Open and fully decode, so corrupt files fail now; the caller closes the image."""
    try:
        if path.stat().st_size == 0:
            raise UnreadableImageError(path, "empty file (0 bytes)")
        im = Image.open(path)  # sniffs the content: a JPEG named .png still opens
    except UnidentifiedImageError as e:
        raise UnreadableImageError(path, _unidentified_reason(path)) from e
    except UnreadableImageError:
        raise
    except Exception as e:  # permissions, decompression bombs, broken headers
        raise UnreadableImageError(path, f"cannot open ({e})") from e
    kind = im.format or path.suffix.lstrip(".").upper()
    try:
        im.load()  # LOAD_TRUNCATED_IMAGES stays off: a cut-off file must fail, not train as grey
    except Exception as e:
        im.close()
        msg = str(e)
        if isinstance(e, EOFError) or "truncated" in msg or "decoder object" in msg:
            raise UnreadableImageError(path, f"truncated {kind}") from e
        raise UnreadableImageError(path, f"corrupt {kind} ({msg or type(e).__name__})") from e
    return im


def _high_bit_depth_to_l(im: Image.Image) -> Image.Image:
    # Pillow's own convert clips 16-bit values at 255 (white/saturated); scale to 8 bits instead.
    import numpy as np

    a = np.asarray(im).astype(np.float64)
    if im.mode == "F":
        a = a * 255.0 if a.size and a.max() <= 1.0 else a  # float images are usually 0..1
    elif im.mode.startswith("I;16") or (a.size and a.max() > 255):
        a = a / 257.0  # 65535 -> 255; Pillow < 10 opens 16-bit PNGs as mode "I"
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        im = _high_bit_depth_to_l(im)
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        # Transparent pixels hold arbitrary colour (often black); the model should see white.
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")  # also copies an RGB image, detaching it from the file


def load_image(path) -> Image.Image:
    """Decode an image as RGB, upright per its EXIF orientation, transparency on white."""
    path = Path(path)
    with _open_decoded(path) as im:
        try:
            upright = ImageOps.exif_transpose(im)
        except Exception:  # broken EXIF: the pixels are still fine
            upright = im
        try:
            return _to_rgb(upright)
        except (ValueError, OSError) as e:
            raise UnreadableImageError(path, f"unsupported color mode {im.mode} ({e})") from e


def image_to_tensor(img: Image.Image) -> "torch.Tensor":
    """float32 CHW in [-1, 1], the VAE's input range."""
    import numpy as np
    import torch

    arr = np.array(img if img.mode == "RGB" else img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous().float().div_(127.5).sub_(1.0)


# ----------------------------------------------------------------------------- scanning

def _layout_hint(advice: str, root_name: str = "lora_train_set") -> str:
    return (f"{advice}\nExpected layout:\n{root_name}/\n  10_mychar/\n"
            f"    img001.png\n    img001.txt")


def _parse_repeat_name(name: str) -> tuple[int, str] | None:
    """'10_sks dog' -> (10, 'sks dog'); None when the name does not start with digits and '_'."""
    head, sep, rest = name.partition("_")
    if not sep or not (head.isascii() and head.isdigit()):
        return None
    return int(head), rest


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _unsupported_reason(name: str) -> str:
    ext = Path(name).suffix.lower()
    kind = {".tif": "TIFF", ".heif": "HEIC"}.get(ext, ext.lstrip(".").upper())
    to = {".gif": "PNG (its first frame)", ".tif": "PNG", ".tiff": "PNG"}.get(ext, "JPEG or PNG")
    return f"{kind} is not supported: convert it to {to}"


def _link_problem(entry: os.DirEntry, folder: Path) -> SkippedFile | None:
    """A symbolic link that cannot be followed (dangling, a loop) or that points back up the tree."""
    path = Path(entry.path)
    try:
        target = os.readlink(entry.path)
    except OSError:
        target = "?"
    try:
        os.stat(entry.path)  # follows the link
    except FileNotFoundError:
        return SkippedFile(path, f"broken link: points to {target} which does not exist; fix or remove the link",
                           "broken_link")
    except OSError as e:  # ELOOP: links that point at each other
        return SkippedFile(path, f"symbolic link loop ({e.strerror or e}): remove the link", "link_loop")
    if entry.is_dir():
        real, here = Path(os.path.realpath(entry.path)), Path(os.path.realpath(folder))
        if real == here or real in here.parents:
            return SkippedFile(path, f"link to {target}, a folder that contains it (a loop): remove the link",
                               "link_loop")
    return None


def _list_dir(folder: Path, skipped: list[SkippedFile], strict: bool = False) -> tuple[list[Path], list[Path]]:
    """(image files, subfolders); hidden entries ignored, entries that cannot be used go to `skipped`.

    A folder that cannot be listed is an error when strict (the dataset folder itself), else one
    skipped entry, and the scan goes on.
    """
    images, dirs = [], []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        if strict:
            raise InstantLoraError(f"Cannot list folder {folder}: {e.strerror or e}",
                                   hint="Check that the folder is readable.", path=folder) from e
        skipped.append(SkippedFile(folder, f"cannot list folder ({e.strerror or e}): check that it is readable "
                                 f"(permissions) or move its images into a readable folder", "unlistable"))
        return images, dirs
    for entry in entries:
        if entry.name.startswith(".") or entry.name == "__MACOSX":  # OS and zip junk
            continue
        try:
            if entry.is_symlink():
                problem = _link_problem(entry, folder)
                if problem:
                    skipped.append(problem)
                    continue
            if entry.is_dir():
                dirs.append(Path(entry.path))
            elif entry.is_file() and _is_image(entry.name):
                images.append(Path(entry.path))
            elif entry.name.lower().endswith(_UNSUPPORTED_IMAGE_EXTENSIONS):
                skipped.append(SkippedFile(Path(entry.path), _unsupported_reason(entry.name), "unsupported"))
        except OSError as e:  # permission denied, a file removed while listing, ...
            skipped.append(SkippedFile(Path(entry.path), f"cannot read ({e.strerror or e}): check its permissions",
                                     "unlistable"))
    return images, dirs


def _image_problem(path: Path, decode: bool) -> tuple[str | None, tuple[int, int] | None]:
    """(why an image cannot be used or None, its size if known); without decode only cheap checks."""
    try:
        if decode:
            with _open_decoded(path) as im:
                return None, _upright_size(im)
        if path.stat().st_size == 0:
            return "empty file (0 bytes)", None
    except UnreadableImageError as e:
        return e.reason, None
    except OSError as e:
        return f"cannot open ({e.strerror or e})", None
    try:
        with Image.open(path) as im:  # reads the header only
            return None, _upright_size(im)
    except Exception:  # not decoding on request: problems show when training loads the file
        return None, None


def _upright_size(im: Image.Image) -> tuple[int, int]:
    """The size load_image returns: a phone's portrait photo is stored landscape with an EXIF
    rotation (orientations 5-8 swap the sides), and its bucket must be the portrait one."""
    try:
        turned = im.getexif().get(0x0112) in (5, 6, 7, 8)
    except Exception:  # broken EXIF: load_image keeps the pixels as stored
        turned = False
    return (im.size[1], im.size[0]) if turned else im.size


def _deeper_image_folders(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        if depth >= _MAX_SEARCH_DEPTH:
            dirnames[:] = []
        if depth >= 1 and any(_is_image(f) and not f.startswith(".") for f in filenames):
            found.append(Path(dirpath))
    return found


def _no_images_error(scan: DatasetScan, ignored: list[str], unsupported_note: str) -> InstantLoraError:
    root = scan.root
    failed = [f for f in scan.skipped if f.kind == "unreadable"]
    if failed:
        listed = ", ".join(f"{_rel(f.path, root)} ({f.reason})" for f in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        return InstantLoraError(f"All {len(failed)} images in {root} failed to load: {listed}{more}",
                                hint="Re-save them as PNG or JPEG in an image editor, or replace them.", path=root)
    found = _deeper_image_folders(root)
    if found:  # typically the grandparent was passed: data/ instead of data/lora_train_set/
        advice = []
        # Show the layout under the folder we suggest passing, so the hint matches what they see.
        layout_root = found[0].parent.name if _parse_repeat_name(found[0].name) else root.name
        for folder in found[:3]:
            if _parse_repeat_name(folder.name):
                advice.append(f"pass '{folder.parent}' (the folder that holds '{folder.name}')")
            elif folder.parent == root:
                advice.append(f"rename '{folder.name}' to start with a repeat count, e.g. '10_{folder.name}'")
            else:
                advice.append(f"pass '{folder}' (trains it with 1 repeat) or move its images into a 10_name folder")
        where = ", ".join(f"'{_rel(f, root)}'" for f in found[:3]) + (" ..." if len(found) > 3 else "")
        return InstantLoraError(
            f"No images directly in {root} or in its repeat folders; images were found deeper, in {where}",
            hint=_layout_hint("Instead: " + "; or ".join(dict.fromkeys(advice)) + ".", layout_root), path=root)
    extra = f" (ignored folders: {', '.join(ignored)})" if ignored else ""
    extra += f" ({unsupported_note})" if unsupported_note else ""
    others = [f for f in scan.skipped if f.kind != "unsupported"]  # links, unreadable folders
    if others:
        listed = "; ".join(f"{_rel(f.path, root)}: {f.reason}" for f in others[:3])
        extra += f" (skipped {listed}" + (f" and {len(others) - 3} more)" if len(others) > 3 else ")")
    return InstantLoraError(f"No usable images found in {root}{extra}", path=root, hint=_layout_hint(
        "Put images (png, jpg, jpeg, webp, bmp) into folders named <repeats>_<name> inside it.", root.name))


def _checked_root(train_data_dir, role: str = "Training") -> Path:
    advice = "Pass the folder that holds the 10_name folders."
    if train_data_dir is None or not str(train_data_dir).strip():
        raise InstantLoraError("No training folder given", hint=_layout_hint(advice))
    root = Path(train_data_dir).expanduser().absolute()
    if not root.exists():
        if root.is_symlink():  # a dangling link, or a link loop
            try:
                os.stat(root)
                why = "cannot be followed"
            except FileNotFoundError:
                why = f"points to {os.readlink(root)}, which does not exist"
            except OSError as e:
                why = f"cannot be followed ({e.strerror or e})"
            raise InstantLoraError(f"{role} folder {root} is a symbolic link that {why}", path=root,
                                   hint=_layout_hint("Pass the real folder, or fix the link. " + advice))
        raise InstantLoraError(f"{role} folder not found: {root}", path=root,
                               hint=_layout_hint("Check the path. " + advice))
    if not root.is_dir():
        raise InstantLoraError(f"{role} folder {root} is a file, not a folder", hint=_layout_hint(advice), path=root)
    return root.resolve()


def scan_dataset(train_data_dir, caption_extension: str = ".txt", check_images: bool = True,
                 folder_as: tuple[int, str] | None = None, role: str = "Training") -> DatasetScan:
    """Find the training images, their repeats and captions; with check_images, decode every one.

    folder_as=(repeats, class tokens): the folder itself holds the images (a dataset TOML's
    subset), trained with those repeats whatever its name; its subfolders are not searched.
    role names the folder in messages ("Training", "Regularization").

    Files that cannot be used (undecodable, unsupported type, broken or looping links, unreadable
    folders) land in ``skipped`` with a reason; usable images that are tiny or very elongated, and
    captions with prompt tags or over 75 tokens, land in ``warnings`` and in ``notes``.
    """
    ext = _checked_caption_extension(caption_extension)
    root = _checked_root(train_data_dir, role)
    scan = DatasetScan(root=root, caption_extension=ext)
    direct, subdirs = _list_dir(root, scan.skipped, strict=True)

    groups: list[tuple[str, Path, int, str, list[Path]]] = []  # name, folder, repeats, tokens, images
    ignored = []
    if folder_as is not None:
        groups.append((root.name, root, int(folder_as[0]), folder_as[1] or "", direct))
        subdirs = direct = []
    for d in subdirs:
        parsed = _parse_repeat_name(d.name)
        if parsed is None or parsed[0] < 1:
            ignored.append(d.name)
            why = ("its name does not start with a repeat count like 10_" + d.name if parsed is None
                   else "the repeat count must be 1 or more, e.g. 1_" + parsed[1])
            scan.notes.append(f"ignored folder '{d.name}': {why}")
        else:
            images, _ = _list_dir(d, scan.skipped)
            groups.append((d.name, d, parsed[0], parsed[1], images))

    parsed = _parse_repeat_name(root.name)
    if groups and direct:
        scan.notes.append(f"ignored {len(direct)} image(s) directly in '{root.name}': when 10_name subfolders "
                          f"exist only their images are trained; move these into one to train them")
    elif direct and parsed and parsed[0] >= 1:
        # The common slip: passing the image folder itself instead of its parent.
        groups.append((root.name, root, parsed[0], parsed[1], direct))
        scan.notes.append(f"'{root.name}' is itself a repeat folder: training it with {parsed[0]} repeats and class "
                          f"tokens '{parsed[1]}'; pass its parent '{root.parent}' to train all folders beside it")
    elif direct:
        groups.append((root.name, root, 1, "", direct))
        scan.notes.append(f"'{root.name}' has images directly inside: training them with 1 repeat; "
                          f"use subfolders like 10_<name> to set repeats")
    unsupported = [f.path for f in scan.skipped if f.kind == "unsupported"]  # each is listed in skipped
    unsupported_note = ""
    if unsupported:
        kinds = ", ".join(sorted({p.suffix.lower() for p in unsupported}))
        unsupported_note = (f"ignored {len(unsupported)} file(s) of unsupported type ({kinds}): "
                            f"convert them to PNG or JPEG")
    unlistable = {f.path for f in scan.skipped if f.kind == "unlistable"}

    # Decoding is the slow part; Pillow releases the GIL while decoding, so threads help.
    paths = [p for g in groups for p in g[4]]
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1, max(1, len(paths)))) as pool:
        checked = dict(zip(paths, pool.map(lambda p: _image_problem(p, check_images), paths)))

    sizes: dict[Path, tuple[int, int]] = {}
    for name, folder, repeats, tokens, images in groups:
        good = 0
        for path in images:
            problem, size = checked[path]
            if problem is not None:
                scan.skipped.append(SkippedFile(path, problem))
                continue
            caption, source = read_caption(path, ext), "file"
            if not caption:
                if caption == "":
                    scan.empty_captions.append(path.with_name(path.stem + ext))
                caption, source = tokens, ("folder" if tokens else "none")
            scan.items.append(ImageItem(path, caption, source, repeats, name, size))
            if size:
                sizes[path] = size
            good += 1
        if good:
            scan.subsets.append(Subset(name, folder, repeats, tokens, good))
        elif not images and folder not in unlistable:
            scan.notes.append(f"folder '{name}' has no images: skipped")

    if not scan.items:
        raise _no_images_error(scan, ignored, unsupported_note)
    none = sum(item.caption_source == "none" for item in scan.items)
    if none:
        scan.notes.append(f"{none} image(s) have no caption (no {ext} file, no class tokens in the folder name)")
    scan.warnings += _image_warnings(scan.items, sizes)
    scan.warnings += _caption_warnings(scan.items, ext)
    scan.notes += [w.line(root) for w in scan.warnings]
    return scan


def _image_warnings(items: list[ImageItem], sizes: dict[Path, tuple[int, int]]) -> list[ScanWarning]:
    small, elongated = [], []
    for item in items:
        if item.path not in sizes:
            continue
        short, long = sorted(sizes[item.path])
        if short < MIN_IMAGE_SIDE:
            small.append(item.path)
        if long > MAX_ASPECT_RATIO * max(short, 1):
            elongated.append(item.path)
    out = []
    if small:
        out.append(ScanWarning("small_image", f"{len(small)} image(s) smaller than {MIN_IMAGE_SIDE} px on a side: "
                               f"upscaled to the training size they teach blur; use larger images (512 px or more) "
                               f"or remove them", small))
    if elongated:
        out.append(ScanWarning("extreme_aspect", f"{len(elongated)} image(s) with one side over "
                               f"{MAX_ASPECT_RATIO:g}x the other: training crops away most of each; crop them by "
                               f"hand to the part that matters", elongated))
    return out


def _caption_warnings(items: list[ImageItem], ext: str) -> list[ScanWarning]:
    """The per-caption rules of `caption --lint` (prompt tags, over 75 tokens), on the captions trained."""
    from .captioning.lint import caption_rule_issues  # light: no torch unless a caption's length is in doubt

    named: dict[str, Path] = {}  # the file to edit: the caption file, else the image (folder-name caption)
    captions: dict[str, str] = {}
    for item in items:
        if not item.caption:
            continue
        target = item.path.with_name(item.path.stem + ext) if item.caption_source == "file" else item.path
        named[str(target)] = target
        captions[str(target)] = item.caption
    return [ScanWarning(issue.kind, issue.message, [named[p] for p in issue.paths])
            for issue in caption_rule_issues(captions)]
