"""An image as one training step sees it: resized to cover its bucket, cropped (centre, or a
random place with --random_crop), maybe mirrored (--flip_aug). The cached and the uncached path
both come through here, so they train on the same pixels.

Without latent caching every step needs its images again. Decoding a 6000x4000 JPEG and
resizing it costs about 0.6 s on one core, so the resized image is kept in memory (up to a
budget) and later steps only crop and convert it.
"""

from __future__ import annotations

import random

from PIL import Image

MEMORY_BUDGET = 2 << 30  # bytes of resized images kept for the uncached path (512x512 RGB: 0.75 MB each)


def _resized(path, placement) -> Image.Image:
    """The upright image scaled to placement.resized in one resampling step."""
    from ..dataset import load_image

    img = load_image(path)
    rw, rh = placement.resized
    # reducing_gap shrinks large downscales cheaply first; the result is indistinguishable.
    return img.resize((rw, rh), Image.Resampling.LANCZOS, reducing_gap=3.0)


def centre_crop(img: Image.Image, placement) -> Image.Image:
    """Resize and centre-crop in one resampling step (the crop box in source pixels: no double
    rounding, no edge of a neighbouring region bleeding in)."""
    w, h = img.size
    rw, rh = placement.resized
    left, top, right, bottom = placement.crop
    box = (left * w / rw, top * h / rh, right * w / rw, bottom * h / rh)
    # reducing_gap shrinks large downscales cheaply first; the result is indistinguishable.
    return img.resize(placement.bucket, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)


def _centre(path, placement) -> Image.Image:
    from ..dataset import load_image

    return centre_crop(load_image(path), placement)


def crop_box(sample, rng: random.Random | None) -> tuple:
    """The crop of this step: the planned centre crop, or a random one inside the resized image."""
    if rng is None or not sample.random_crop:
        return sample.placement.crop
    rw, rh = sample.placement.resized
    bw, bh = sample.placement.bucket
    left, top = rng.randint(0, rw - bw), rng.randint(0, rh - bh)
    return (left, top, left + bw, top + bh)


class ImageMemory:
    """Resized images by (file, size): the bucket-sized centre crop, or the whole resized image
    when the crop moves every step. Stops adding once the budget is used (later images are
    decoded each time, as before)."""

    def __init__(self, budget: int | None = None):
        self.budget = MEMORY_BUDGET if budget is None else budget  # read now: the module's value is a setting
        self.used = 0
        self.images: dict = {}

    def image(self, sample, crop: tuple | None = None) -> Image.Image:
        whole = sample.random_crop
        key = (sample.path, sample.placement.resized, None if whole else sample.placement.crop)
        img = self.images.get(key)
        if img is None:
            img = _resized(sample.path, sample.placement) if whole else _centre(sample.path, sample.placement)
            size = img.width * img.height * 3
            if self.used + size <= self.budget:
                self.images[key] = img
                self.used += size
        if whole:
            return img.crop(crop or sample.placement.crop)
        return img


def pixels(sample, *, flip: bool = False, crop: tuple | None = None, memory: ImageMemory | None = None):
    """float32 CHW in [-1, 1] of the bucket's size."""
    from ..dataset import image_to_tensor

    img = (memory or ImageMemory(0)).image(sample, crop)
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image_to_tensor(img)
