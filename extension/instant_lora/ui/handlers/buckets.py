"""The Dataset section's buckets: the size each image trains at, from the form's Resolution and
bucket fields, by the trainer's own arithmetic (`buckets.BucketSettings`); the bucket table; and
the images enlarged so much on the way that they teach blur.

Image sizes come from each file's header (EXIF rotation applied, as training applies it): cheap,
cached by path, modification time and size."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ...buckets import UPSCALE_WARN, BucketSettings, scale_of
from ...errors import InstantLoraError

BUCKET_KEYS = ("resolution", "enable_bucket", "bucket_no_upscale", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps")
LISTED = 8  # upscaled images named in the summary; the count says how many in all
_SIZES: OrderedDict = OrderedDict()  # (path, mtime_ns, size) -> (width, height) upright
_SIZES_MAX = 20_000
_SIZES_LOCK = threading.Lock()
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def image_size(path) -> tuple[int, int] | None:
    """The image's (width, height) as training sees it (EXIF rotation applied), from its header;
    None when it cannot be read."""
    from PIL import Image

    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        return None
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    with _SIZES_LOCK:
        if key in _SIZES:
            return _SIZES[key]
    try:
        with Image.open(path) as im:  # reads the header only
            w, h = im.size
            if "exif" in im.info and im.getexif().get(0x0112) in _ROTATED:
                w, h = h, w
    except Exception:
        return None
    with _SIZES_LOCK:
        _SIZES[key] = (w, h)
        while len(_SIZES) > _SIZES_MAX:
            _SIZES.popitem(last=False)
    return w, h


def bucket_settings(form_values: dict | None = None, preset: dict | None = None) -> tuple[BucketSettings | None, str]:
    """(the settings the run would use, "") or (None, what to fix), from the form's shown values
    of `fields.BUCKET_FIELDS` (missing ones at their starting value) under the preset's values."""
    from ...config import TrainConfig
    from ...request import APP_DEFAULTS
    from ..fields import label_for, user_values

    values = {k: v for k, v in TrainConfig().to_dict().items() if k in BUCKET_KEYS}
    values.update({k: v for k, v in APP_DEFAULTS.items() if k in BUCKET_KEYS})
    values.update({k: v for k, v in (preset or {}).items() if k in BUCKET_KEYS})
    values.update({k: v for k, v in user_values(form_values or {}, preset).items() if k in BUCKET_KEYS})
    try:
        config = TrainConfig(**values)
        problems = [(k, m) for k, m in config.validate() if k in BUCKET_KEYS]
        if not problems:
            settings = BucketSettings.of(config)
            if settings.enabled:
                settings.buckets()  # a range the list cannot be made of raises here, not per image
            return settings, ""
    except (InstantLoraError, TypeError, ValueError) as e:
        problems = [("", str(getattr(e, "message", e)))]
    return None, "; ".join(f"{label_for(k)} {m}" if k else m for k, m in problems)


@dataclass(frozen=True)
class Placed:
    """One image on its way into training."""

    path: Path
    size: tuple | None  # (width, height) upright; None when unreadable
    bucket: tuple | None
    scale: float  # > 1: enlarged
    repeats: int

    @property
    def label(self) -> str:
        if self.size is None or self.bucket is None:
            return "size unknown"
        return f"{_wh(self.size)} → {_wh(self.bucket)}"


def _wh(size) -> str:
    return f"{size[0]}×{size[1]}"


def place_items(items, settings: BucketSettings) -> list[Placed]:
    """Each scanned image (dataset.ImageItem) with its bucket and how much it is enlarged."""
    buckets = settings.buckets() if settings.enabled and not settings.no_upscale else None
    out = []
    for item in items:
        size = image_size(item.path)
        if size is None or min(size) <= 0:
            out.append(Placed(Path(item.path), None, None, 1.0, item.repeats))
            continue
        placement, _ = settings.placement(size, buckets)
        out.append(Placed(Path(item.path), size, tuple(placement.bucket), scale_of(size, placement), item.repeats))
    return out


def _fmt_scale(scale: float) -> str:
    return f"{scale:.1f}×" if scale < 10 else f"{scale:.0f}×"


def buckets_markdown(placed: list[Placed], settings: BucketSettings, root: Path | None = None) -> str:
    """The bucket table (bucket -> images, per epoch with repeats) and the images enlarged more
    than UPSCALE_WARN, by name."""
    if not placed:
        return ""
    res = _wh(settings.resolution)
    if settings.enabled:
        how = ("each image at its own size, shrunk to the training area when larger" if settings.no_upscale
               else f"sides {settings.min_size}-{settings.max_size} px in steps of {settings.step}")
        lines = [f"**Buckets** at {res} ({how}); batches never mix buckets:"]
    else:
        lines = [f"**Buckets off**: every image is resized to cover {res} and centre-cropped:"]
    counts: dict = {}
    for p in placed:
        if p.bucket is not None:
            n, per_epoch = counts.get(p.bucket, (0, 0))
            counts[p.bucket] = (n + 1, per_epoch + p.repeats)
    lines += ["", "| bucket | images | per epoch |", "|---|---|---|"]
    lines += [f"| {_wh(b)} | {n} | {e} |" for b, (n, e) in sorted(counts.items())]
    unknown = sum(p.bucket is None for p in placed)
    if unknown:
        lines.append(f"\n{unknown} image(s) of unknown size (their header could not be read).")
    upscaled = sorted((p for p in placed if p.scale > UPSCALE_WARN), key=lambda p: -p.scale)
    if upscaled:
        names = ", ".join(f"`{_rel(p.path, root)}` {_fmt_scale(p.scale)}" for p in upscaled[:LISTED])
        more = f" and {len(upscaled) - LISTED} more" if len(upscaled) > LISTED else ""
        fix = "use larger images" + ("" if settings.no_upscale else " or turn on Don't upscale small images" if settings.enabled
                                     else " or turn on Aspect-ratio buckets and Don't upscale small images")
        lines.append(f"\n**{len(upscaled)} image(s) upscaled more than {UPSCALE_WARN:g}×** (upscaling teaches blur; {fix}): "
                     f"{names}{more}")
    return "\n".join(lines)


def _rel(path: Path, root: Path | None) -> str:
    try:
        return str(path.relative_to(root)) if root is not None else path.name
    except ValueError:
        return path.name


def gallery_caption(placed: Placed | None, caption: str) -> str:
    """A tile's caption: its bucket, then the image's caption."""
    text = caption or "(no caption)"
    return f"{placed.label} | {text}" if placed is not None else text
