"""The Dataset section: show a folder (thumbnails with their buckets, counts, the bucket table,
problems, caption checks), edit one caption, add uploads, auto-caption, count the regularization
folder's images. The caption checks are the caption linter's (`caption --lint` runs the same
rules); the scan's own warnings add the image checks; the buckets are `handlers.buckets`."""

from __future__ import annotations

import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from ...config import is_safe_name
from ...dataset import IMAGE_EXTENSIONS, caption_extension_problem, load_image, read_caption, scan_dataset
from ...errors import InstantLoraError
from ...i18n import t
from . import buckets as bucket_view

THUMB_SIDE = 256  # px: the gallery's tiles are smaller
_THUMBS: OrderedDict = OrderedDict()  # (path, mtime_ns, size) -> PIL image
_THUMBS_MAX = 256  # about 50 MB at most
_THUMBS_LOCK = threading.Lock()
CAPTION_WARNINGS = ("prompt_tag", "too_long")  # the scan's warnings that the linter reports too
LISTED = 3  # file names shown per caption check


@dataclass
class DatasetView:
    """What the Dataset section shows for a folder."""

    gallery: list = field(default_factory=list)  # [(thumbnail PIL image, caption)]
    paths: list = field(default_factory=list)  # the images behind the gallery's tiles, in order
    summary: str = ""
    problems: str = ""
    scan: object = None  # dataset.DatasetScan, or None when the folder could not be used
    buckets: str = ""  # the bucket table and the images upscaled too much (or what to fix to see them)


def thumbnail(path: Path):
    """A small copy of the image for the gallery. The gallery gets images, not paths: Gradio then
    serves its own copies, so a dataset folder anywhere on this machine shows without adding it
    to the folders Gradio may serve (which would expose every file in it)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    with _THUMBS_LOCK:
        if key in _THUMBS:
            _THUMBS.move_to_end(key)
            return _THUMBS[key]
    image = load_image(path)
    image.thumbnail((THUMB_SIDE, THUMB_SIDE))
    with _THUMBS_LOCK:
        _THUMBS[key] = image
        while len(_THUMBS) > _THUMBS_MAX:
            _THUMBS.popitem(last=False)
    return image


def dataset_view(folder: str, caption_extension: str = ".txt", trigger: str = "", buckets=None) -> DatasetView:
    """The folder's images with their buckets and captions, a summary, the bucket table, and
    everything worth fixing. `buckets`: the form's (BucketSettings or None, problem), as
    `handlers.buckets.bucket_settings` gives it; None = the app's defaults."""
    if not folder or not str(folder).strip():
        return DatasetView(summary="No dataset yet: enter a folder path or upload images.")
    folder = str(folder).strip()
    try:
        scan = scan_dataset(folder, caption_extension or ".txt")
    except InstantLoraError as e:
        return DatasetView(problems=f"**{e.message}**" + (f"\n\n```\n{e.hint}\n```" if e.hint else ""))
    gallery, paths, bucket_text = bucketed_gallery(scan, buckets)
    warning_lines = {w.line(scan.root) for w in scan.warnings}
    subsets = ", ".join(f"{s.name}: {s.image_count} x {s.repeats}" for s in scan.subsets)
    lines = [f"**{len(scan.items)} images**, {scan.num_train_images} per epoch with repeats ({subsets})"]
    lines += [f"- {n}" for n in scan.notes if n not in warning_lines]
    problems = [f"- skipped `{_rel(s.path, scan.root)}`: {s.reason}" for s in scan.skipped]
    problems += [f"- {w.line(scan.root)}" for w in scan.warnings if w.kind not in CAPTION_WARNINGS]
    problems += [f"- {line}" for line in caption_checks(folder, scan.caption_extension, trigger, scan.root)]
    return DatasetView(gallery, paths, "\n".join(lines), "\n".join(problems) or "No problems found.", scan, bucket_text)


def bucketed_gallery(scan, buckets=None) -> tuple[list, list, str]:
    """(gallery tiles captioned with their bucket, the image behind each tile, the bucket table)
    for a scan under the form's bucket settings ((BucketSettings or None, problem); None = the
    app's defaults). Re-run when Resolution or a bucket field changes: no rescan, sizes cached."""
    settings, problem = buckets if buckets is not None else bucket_view.bucket_settings()
    placed = {p.path: p for p in bucket_view.place_items(scan.items, settings)} if settings is not None else {}
    gallery, paths = [], []
    for item in scan.items:
        try:
            gallery.append((thumbnail(item.path), bucket_view.gallery_caption(placed.get(Path(item.path)), item.caption)))
            paths.append(str(item.path))
        except (OSError, InstantLoraError):  # removed or changed since the scan: left out of the gallery
            continue
    if settings is None:
        return gallery, paths, f"**Buckets cannot be shown:** {problem}"
    shown = [placed[Path(p)] for p in paths if Path(p) in placed]
    return gallery, paths, bucket_view.buckets_markdown(shown, settings, scan.root)


def reg_view(folder: str, caption_extension: str = ".txt") -> str:
    """What the Regularization folder holds, in one line: its images and folders, or what is wrong
    with it. Headers only (no decoding): it runs as the user leaves the box."""
    if not folder or not str(folder).strip():
        return ""
    try:
        scan = scan_dataset(str(folder).strip(), caption_extension or ".txt", check_images=False)
    except InstantLoraError as e:
        return f"Regularization folder: **{e.message}**"
    subsets = ", ".join(f"{s.name}: {s.image_count} x {s.repeats}" for s in scan.subsets)
    skipped = f"; {len(scan.skipped)} file(s) skipped" if scan.skipped else ""
    return (f"Regularization folder: **{len(scan.items)} images** found ({subsets}){skipped}; they are repeated to "
            "match the training images.")


def caption_checks(folder, caption_extension: str, trigger: str = "", root: Path | None = None) -> list[str]:
    """The caption linter's findings as lines (missing, empty, duplicate captions, a missing
    trigger, a tag in nearly every caption, prompt tags, captions over 75 tokens)."""
    from ...captioning.lint import lint_captions

    try:
        report = lint_captions(folder, caption_extension, trigger=(trigger or "").strip() or None)
    except InstantLoraError as e:
        return [f"caption checks could not run: {e.message}"]
    out = []
    for issue in report.issues:
        names = [_rel(Path(p), root) for p in issue.paths[:LISTED]]
        more = f" and {len(issue.paths) - LISTED} more" if len(issue.paths) > LISTED else ""
        # the linter's sentence and the files apart, so each is one catalogue entry
        out.append(t("{message}. Files: {files}", message=issue.message, files=", ".join(names) + more) if names
                   else issue.message)
    return out


def _rel(path: Path, root: Path | None) -> str:
    try:
        return str(Path(path).relative_to(root)) if root is not None else str(path)
    except ValueError:
        return str(path)


def caption_file(image: Path, caption_extension: str) -> Path:
    """Where an image's caption is written; refuses an extension that is not a caption's."""
    problem = caption_extension_problem(caption_extension)
    if problem:
        raise InstantLoraError(problem, hint="Set Caption extension (under Advanced) to .txt, the usual one.")
    ext = (caption_extension or ".txt").strip()
    ext = ext if ext.startswith(".") else "." + ext
    target = image.with_name(image.stem + ext)
    if target == image or target.suffix.lower() in IMAGE_EXTENSIONS:  # never write text over an image
        raise InstantLoraError(f"a caption with extension '{ext}' would overwrite {target.name}",
                               hint="Set Caption extension (under Advanced) to .txt.")
    return target


def save_caption(image_path: str, caption: str, dataset_dir: str, caption_extension: str = ".txt") -> str:
    """Write `<stem><ext>` next to an image of this dataset (never outside it, never over an image)."""
    from ...lora.kohya_file import atomic_write_bytes

    if not image_path:
        raise InstantLoraError("select an image in the gallery first")
    root, image = Path(str(dataset_dir or "").strip()).expanduser().resolve(), Path(image_path).resolve()
    if root not in image.parents or not image.is_file():
        raise InstantLoraError(f"{image.name} is not an image of the dataset {root}",
                               hint="Load the dataset again and pick the image in the gallery.")
    target = caption_file(image, caption_extension)
    atomic_write_bytes(target, (" ".join((caption or "").split()) + "\n").encode("utf-8"))
    return f"saved caption of {image.name} in {target.name}"


def caption_of(image_path: str, caption_extension: str = ".txt") -> str:
    return (read_caption(Path(image_path), caption_extension or ".txt") or "") if image_path else ""


def describe_uploads(files) -> str:
    """What the upload box holds, before anything is copied."""
    paths = [Path(getattr(f, "name", f)) for f in (files or [])]
    if not paths:
        return ""
    images = sum(p.suffix.lower() in IMAGE_EXTENSIONS for p in paths)
    captions = sum(p.suffix.lower() == ".txt" for p in paths)
    other = len(paths) - images - captions
    parts = [f"{images} image(s)", f"{captions} caption file(s)"] + ([f"{other} other file(s), which will be skipped"] if other else [])
    return f"{len(paths)} file(s) ready to add: {', '.join(parts)}. Set the dataset name and repeats, then Add to dataset."


def import_uploads(files, data_dir: str | Path, dataset_name: str, repeats) -> tuple[str, str]:
    """Copy uploaded images (+ same-named .txt captions) into <data_dir>/datasets/<name>/<N>_<name>/.
    Non-images and unreadable images are reported and not copied. Returns (dataset folder, report)."""
    name = (dataset_name or "").strip()
    if not is_safe_name(name):
        raise InstantLoraError(f"dataset name '{dataset_name}' must be a plain name (letters, digits, spaces, _ or -)",
                               hint="e.g. my_character")
    repeats = int(repeats or 1)
    if not 1 <= repeats <= 1000:
        raise InstantLoraError(f"repeats = {repeats} must be between 1 and 1000")
    paths = [Path(getattr(f, "name", f)) for f in (files or [])]  # gradio 3 gives temp-file objects, 4+ paths
    if not paths:
        raise InstantLoraError("no files uploaded", hint="drop images (png, jpg, webp, bmp) and optional .txt captions")
    root = Path(data_dir) / "datasets" / name
    target = root / f"{repeats}_{name}"
    target.mkdir(parents=True, exist_ok=True)
    copied, rejected = 0, []
    for p in paths:
        suffix = p.suffix.lower()
        safe = Path(p.name).name  # the upload's own base name only
        if suffix == ".txt":
            shutil.copyfile(p, target / safe)
        elif suffix in IMAGE_EXTENSIONS:
            try:
                load_image(p)
            except InstantLoraError as e:
                rejected.append(f"{safe}: {getattr(e, 'reason', e.message)}")
                continue
            shutil.copyfile(p, target / safe)
            copied += 1
        else:
            rejected.append(f"{safe}: not an image (png, jpg, jpeg, webp or bmp)")
    report = f"added {copied} image(s) to {target}"
    if rejected:
        report += "\nnot added:\n" + "\n".join(f"- {r}" for r in rejected)
    if copied == 0 and not any(target.iterdir()):
        target.rmdir()
    return str(root), report


# How the Auto-caption section's messages name its controls (ui/sections/dataset.py's labels).
_UI_NAMES = {"clip_model": 'the "CLIP model" field (Auto-caption section)',
             "clip_pretrained": 'the "CLIP weights" field (Auto-caption section)'}
_UI_RETRY = 'click "Auto-caption" again'


def ui_wording():
    from ...captioning.options import Wording

    return Wording(_UI_NAMES, fields=True, retry=_UI_RETRY, line_break="\n\n")


class _Notes:
    """The captioner's notes for the user (e.g. the line before CLIP's first download), passed on
    as they come and kept for the report."""

    def __init__(self, notify=None):
        import logging

        from ...captioning.weights import NOTE, log

        self.lines, self.notify, self.key = [], notify, NOTE
        self.handler = logging.Handler(logging.INFO)
        self.handler.emit = self._emit
        self.logger = log  # the weights logger: its notes also reach the console, as before

    def _emit(self, record) -> None:
        if getattr(record, self.key, False):
            text = record.getMessage()
            self.lines.append(text)
            if self.notify is not None:
                self.notify(text)

    def __enter__(self):
        import logging

        self.saved = self.logger.level
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self.handler)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.saved)


def auto_caption(host, job, folder: str, mode: str, model: str, pretrained: str, trigger: str, caption_extension: str,
                 progress=None, notify=None) -> str:
    """Caption the folder's images with CLIP (the GPU held for it); returns the report's summary.

    `notify(text)` receives notes meant for the user while it runs, such as the size and
    destination of CLIP's download on first use; they also head the returned summary."""
    from ... import captioning

    if not folder or not str(folder).strip():
        raise InstantLoraError("Load a dataset first.")
    if job.snapshot().running:  # CLIP beside a training would fight it for VRAM
        raise InstantLoraError("A training is running: caption when it has finished.")
    options = captioning.CaptionOptions(mode=mode, clip_model=(model or "").strip() or "ViT-L-14",
                                        clip_pretrained=(pretrained or "").strip(), prefix=trigger or "",
                                        caption_extension=caption_extension or ".txt", wording=ui_wording())
    try:
        with host.exclusive("Instant LoRA: captioning"), _Notes(notify) as notes:
            report = captioning.caption_folder(str(folder).strip(), options, progress=progress)
    finally:
        captioning.free_clip_model()
    return "\n".join(notes.lines + [report.summary()])
