"""Aspect-ratio buckets: which training size each image gets, how it is cropped, and batches that
never mix sizes. Pure arithmetic (no torch, no PIL) so the plan can show the bucket table before
anything loads.

The bucket list and the choice of bucket follow the reference trainer (kohya's
`make_bucket_resolutions` / `select_bucket`), so a LoRA trained here sees the same sizes as one
trained there; the metadata (`ss_bucket_info`) has the reference's shape.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

Size = tuple  # (width, height) in pixels


def bucket_resolutions(resolution: Size, min_size: int = 256, max_size: int = 1024, step: int = 64) -> list[Size]:
    """Every bucket of about the training area: the square one, then for each width from min_size
    to max_size (in steps) the tallest height that keeps the area, both orientations."""
    if step <= 0 or min_size <= 0 or max_size < min_size:
        raise ValueError(f"bad bucket range: min {min_size}, max {max_size}, step {step}")
    area = resolution[0] * resolution[1]
    square = max(step, int(math.sqrt(area)) // step * step)
    found = {(square, square)}
    for width in range(min_size, max_size + 1, step):
        height = min(max_size, area // width // step * step)
        if height >= min_size:
            found.add((width, height))
            found.add((height, width))
    return sorted(found)


def aspect(size: Size) -> float:
    return size[0] / size[1]


def select_bucket(image: Size, buckets: list[Size]) -> tuple[Size, float]:
    """(the bucket of nearest aspect ratio, its aspect error); ties go to the first (smallest
    width), so the choice never depends on dict or set order."""
    ratio = aspect(image)
    best = min(buckets, key=lambda b: (abs(aspect(b) - ratio), b))
    return best, abs(aspect(best) - ratio)


def no_upscale_bucket(image: Size, max_area: int, step: int = 64) -> Size:
    """--bucket_no_upscale: the image's own size, shrunk (aspect kept) only when larger than the
    training area, each side floored to the step (at least one step)."""
    w, h = image
    if w * h > max_area:
        scale = math.sqrt(max_area / (w * h))
        w, h = w * scale, h * scale
    return max(step, int(w) // step * step), max(step, int(h) // step * step)


@dataclass(frozen=True)
class Placement:
    """How one image becomes a training sample: resized to `resized` (covering the bucket, aspect
    kept), then `crop` = (left, top, right, bottom) cut out of it, the bucket's size."""

    bucket: Size
    resized: Size
    crop: tuple


def place(image: Size, bucket: Size) -> Placement:
    """Resize to cover the bucket (match the height when the image is wider than the bucket, else
    the width), then centre-crop to it."""
    iw, ih = image
    bw, bh = bucket
    scale = bh / ih if aspect(image) > aspect(bucket) else bw / iw
    rw, rh = max(bw, round(iw * scale)), max(bh, round(ih * scale))
    left, top = (rw - bw) // 2, (rh - bh) // 2
    return Placement(bucket, (rw, rh), (left, top, left + bw, top + bh))


def scale_of(image: Size, placement: Placement) -> float:
    """How much the image is enlarged (> 1) or shrunk (< 1) on its way into its bucket."""
    return placement.resized[0] / image[0]


def batches(bucket_of: list[Size], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches of sample indices: grouped by bucket (never mixed), shuffled within
    each bucket and in batch order by seed + epoch; a bucket's last batch may be short."""
    rng = random.Random(seed + epoch)
    groups: dict = {}
    for index, bucket in enumerate(bucket_of):
        groups.setdefault(tuple(bucket), []).append(index)
    out = []
    for bucket in sorted(groups):
        members = groups[bucket]
        rng.shuffle(members)
        out += [members[i:i + batch_size] for i in range(0, len(members), batch_size)]
    rng.shuffle(out)
    return out


def bucket_info(bucket_of: list[Size], errors: list[float]) -> dict:
    """`ss_bucket_info` as the reference writes it: {"buckets": {i: {"resolution": [w, h],
    "count": n}}, "mean_img_ar_error": x}, counts with repeats, buckets in size order."""
    counts: dict = {}
    for bucket in bucket_of:
        counts[tuple(bucket)] = counts.get(tuple(bucket), 0) + 1
    return {"buckets": {i: {"resolution": list(b), "count": counts[b]} for i, b in enumerate(sorted(counts))},
            "mean_img_ar_error": sum(errors) / len(errors) if errors else 0.0}


@dataclass(frozen=True)
class BucketSettings:
    """What decides an image's training size: the config's resolution and bucket flags."""

    resolution: Size
    enabled: bool = True
    min_size: int = 256
    max_size: int = 1024
    step: int = 64
    no_upscale: bool = False

    @classmethod
    def of(cls, config, resolution: Size | None = None) -> "BucketSettings":
        """From a TrainConfig (or anything with its field names); `resolution` overrides its own."""
        return cls(resolution=tuple(resolution or config.resolution_wh()), enabled=bool(config.enable_bucket),
                   min_size=config.min_bucket_reso, max_size=config.max_bucket_reso, step=config.bucket_reso_steps,
                   no_upscale=bool(config.bucket_no_upscale))

    def buckets(self) -> list[Size]:
        return bucket_resolutions(self.resolution, self.min_size, self.max_size, self.step)

    def placement(self, image: Size, buckets: list[Size] | None = None) -> tuple[Placement, float]:
        """(where the image goes, its aspect error). Without buckets every image goes to the
        resolution itself (cover and centre-crop); `buckets` saves recomputing the list per image."""
        if not self.enabled:
            target = tuple(self.resolution)
        elif self.no_upscale:
            target = no_upscale_bucket(image, self.resolution[0] * self.resolution[1], self.step)
        else:
            target, _ = select_bucket(image, buckets or self.buckets())
        return place(image, target), abs(aspect(target) - aspect(image))


UPSCALE_WARN = 1.5  # an image enlarged more than this on its way into its bucket is flagged (it teaches blur)
