"""What one epoch trains on: every image's bucket and crop, the regularization balance, the
held-out validation images, and the batches (never mixing buckets). Planned once, before any
model loads, from the dataset scans and the config; the loop, the caches, the plan and the UI
all read this one table, so what the plan shows is what the run does.

No torch and no image decoding here: sizes come from the scan.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..buckets import BucketSettings, Placement, bucket_info, scale_of
from ..errors import InstantLoraError


@dataclass(frozen=True)
class Sample:
    """One distinct image as it trains."""

    path: Path
    size: tuple  # (width, height), upright
    caption: str  # as read (file, else folder tokens); caption rules apply per step
    subset: str
    is_reg: bool
    dataset: int  # index into TrainingData.batch_sizes
    placement: Placement
    ar_error: float
    rules: object  # captions.CaptionRules
    flip_aug: bool = False
    random_crop: bool = False

    @property
    def bucket(self) -> tuple:
        return self.placement.bucket

    @property
    def cache_key(self) -> tuple:
        """What its latents depend on besides the file: the bucket and the crop."""
        return (self.path, self.placement.resized, self.placement.crop)


@dataclass
class TrainingData:
    samples: list  # Sample: the training images, then the regularization images used
    entries: list  # one epoch: a sample index per entry (repeats and reg balance included)
    batch_sizes: list  # per dataset
    seed_salt: int = 0
    validation: list = field(default_factory=list)  # Sample: held out, never trained on
    notes: list = field(default_factory=list)  # one line each, for the log and the plan
    warnings: list = field(default_factory=list)
    reg_dirs: dict = field(default_factory=dict)  # ss_reg_dataset_dirs
    num_reg_images: int = 0  # distinct reg images used
    enable_bucket: bool = False

    # ---- sizes -----------------------------------------------------------------------------
    @property
    def num_train_images(self) -> int:
        return len(self.entries)

    @property
    def num_images(self) -> int:
        return sum(not s.is_reg for s in self.samples)

    @property
    def reg_per_epoch(self) -> int:
        return sum(self.samples[i].is_reg for i in self.entries)

    def _groups(self) -> dict:
        """{(dataset, bucket): [entry positions]} in a fixed order."""
        groups: dict = {}
        for position, index in enumerate(self.entries):
            s = self.samples[index]
            groups.setdefault((s.dataset, s.bucket), []).append(position)
        return dict(sorted(groups.items()))

    @property
    def batches_per_epoch(self) -> int:
        return sum(math.ceil(len(v) / self.batch_sizes[d]) for (d, _), v in self._groups().items())

    # ---- one epoch -------------------------------------------------------------------------
    def epoch_batches(self, seed: int, epoch: int) -> list[list[int]]:
        """The epoch's batches as lists of sample indices: grouped by (dataset, bucket), shuffled
        within each group and in batch order by seed + epoch (a pure function of both, so a
        resumed run takes the path of the uninterrupted one)."""
        rng = random.Random(f"{seed}-{epoch}")  # str seeds hash deterministically (sha512)
        out = []
        for (d, _), positions in self._groups().items():
            members = list(positions)
            rng.shuffle(members)
            bs = self.batch_sizes[d]
            out += [[self.entries[p] for p in members[i:i + bs]] for i in range(0, len(members), bs)]
        rng.shuffle(out)
        return out

    # ---- what the plan and the metadata show -------------------------------------------------
    def bucket_rows(self) -> list[tuple]:
        """[(bucket, distinct images, entries per epoch, batches per epoch, short batches)]."""
        rows = []
        for (d, bucket), positions in self._groups().items():
            bs = self.batch_sizes[d]
            distinct = len({self.entries[p] for p in positions})
            n = len(positions)
            rows.append((bucket, distinct, n, math.ceil(n / bs), int(n % bs != 0 and bs > 1)))
        return rows

    def bucket_info(self) -> dict:
        bucket_of = [self.samples[i].bucket for i in self.entries]
        errors = [s.ar_error for s in self.samples if not s.is_reg]
        return bucket_info(bucket_of, errors)

    @property
    def mean_ar_error(self) -> float:
        errors = [s.ar_error for s in self.samples if not s.is_reg]
        return sum(errors) / len(errors) if errors else 0.0

    def lines(self) -> list[str]:
        """The bucket table, the reg balance and the validation split, for the plan and the log."""
        rows = self.bucket_rows()
        out = []
        if self.enable_bucket or len(rows) > 1:
            shown = "; ".join(f"{b[0]}x{b[1]}: {distinct} image(s), {n} per epoch in {batches} batch(es)"
                              for b, distinct, n, batches, _ in rows[:12])
            more = f"; ... {len(rows) - 12} more" if len(rows) > 12 else ""
            out.append(f"buckets ({len(rows)}, mean aspect error {self.mean_ar_error:.3f}): {shown}{more}")
        else:
            b = rows[0][0] if rows else None
            out.append(f"every image resized and centre-cropped to {b[0]}x{b[1]}" if b else "no images")
        out += self.notes
        return out


def _check_val_split(n: int, split: float) -> int:
    if not split:
        return 0
    held = max(1, n - math.ceil(n * (1 - split)))
    if n - held < 1:
        raise InstantLoraError(f"--validation_split {split:g} leaves no image to train on ({n} image(s))",
                               hint="add images, or lower --validation_split (0.1 holds out one in ten)")
    return held


def balance_reg(train_count: int, reg: list[tuple[int, int]]) -> tuple[dict, int]:
    """The reference's balance: reg images with their folder repeats are taken in order until
    they reach the training count, then each gets one more repeat in turn until the counts match.
    reg: [(sample index, folder repeats)] -> ({sample index: repeats used}, images left unused)."""
    used: dict = {}
    n = 0
    if not reg or train_count <= 0:
        return used, len(reg)
    for index, repeats in reg:
        used[index] = repeats
        n += repeats
        if n >= train_count:
            break
    while n < train_count:
        for index, _ in reg:
            used[index] += 1
            n += 1
            if n >= train_count:
                break
    return used, len(reg) - len(used)


def build_training_data(parts, *, seed: int, validation_split: float = 0.0, validation_seed: int | None = None,
                        dirs_of=None) -> TrainingData:
    """parts: [(DatasetSpec-like: batch_size, buckets(), subsets), [(SubsetSpec, DatasetScan)]].
    Every image gets its placement; the validation images are drawn from the training images
    (not the reg ones) by validation_seed (default: seed)."""
    from ..captions import CaptionRules

    samples: list = []
    entries: list = []
    batch_sizes: list = []
    reg_pool: list = []  # (sample index, repeats)
    reg_dirs: dict = {}
    notes: list = []
    enable_bucket = False
    train_repeats: dict = {}
    for d, (spec, scans) in enumerate(parts):
        batch_sizes.append(int(spec.batch_size))
        settings: BucketSettings = spec.buckets()
        enable_bucket = enable_bucket or settings.enabled
        bucket_list = settings.buckets() if settings.enabled and not settings.no_upscale else None
        for subset, scan in scans:
            rules = CaptionRules.of(subset)
            for item in scan.items:
                size = tuple(item.size) if item.size else tuple(settings.resolution)
                placement, error = settings.placement(size, bucket_list)
                sample = Sample(path=item.path, size=size, caption=item.caption, subset=item.subset,
                                is_reg=bool(subset.is_reg), dataset=d, placement=placement, ar_error=error, rules=rules,
                                flip_aug=bool(getattr(subset, "flip_aug", False)),
                                random_crop=bool(getattr(subset, "random_crop", False)))
                samples.append(sample)
                if subset.is_reg:
                    reg_pool.append((len(samples) - 1, item.repeats))
                else:
                    train_repeats[len(samples) - 1] = item.repeats
            if subset.is_reg:
                reg_dirs.update(scan.dataset_dirs())

    # the held-out images: drawn from the training images, never trained on
    train_indices = sorted(train_repeats)
    held = _check_val_split(len(train_indices), validation_split)
    validation_set: set = set()
    if held:
        order = list(train_indices)
        random.Random(f"validation-{seed if validation_seed is None else validation_seed}").shuffle(order)
        validation_set = set(order[len(order) - held:])
        notes.append(f"validation: {held} image(s) held out ({validation_split:g} of {len(train_indices)}), "
                     f"never trained on; their loss is measured at fixed timesteps and noise")
    for index in train_indices:
        if index not in validation_set:
            entries += [index] * train_repeats[index]
    train_count = len(entries)
    used, unused = balance_reg(train_count, reg_pool)
    for index, repeats in used.items():
        entries += [index] * repeats
    num_reg = len(used)
    if reg_pool:
        notes.append(f"regularization: {num_reg} image(s) x repeats = {sum(used.values())} per epoch, "
                     f"balanced to the {train_count} training images"
                     + (f"; {unused} reg image(s) not used (more than needed)" if unused else ""))
    keep = sorted(set(entries))
    remap = {old: new for new, old in enumerate(keep)}
    kept_samples = [samples[i] for i in keep]
    data = TrainingData(samples=kept_samples, entries=[remap[i] for i in entries], batch_sizes=batch_sizes,
                        validation=[samples[i] for i in sorted(validation_set)], notes=notes, reg_dirs=reg_dirs,
                        num_reg_images=num_reg, enable_bucket=enable_bucket)
    data.warnings += _short_batch_warnings(data)
    data.warnings += _upscale_warnings(kept_samples)
    return data


def _short_batch_warnings(data: TrainingData) -> list[str]:
    """A bucket whose entries do not fill its last batch trains it smaller: said, not hidden."""
    rows = data.bucket_rows()
    short = [(b, n) for b, _, n, _, s in rows if s]
    if not short:
        return []
    listed = ", ".join(f"{b[0]}x{b[1]} ({n})" for b, n in short[:6]) + (" ..." if len(short) > 6 else "")
    return [f"batch size {max(data.batch_sizes)}: {len(short)} batch(es) per epoch are smaller, because each batch holds one "
            f"bucket's images only and these buckets' entries per epoch do not fill their last batch: {listed}. "
            f"Fine as it is; to fill them, add images of those shapes or lower the batch size"]


def _upscale_warnings(samples: list) -> list[str]:
    from ..buckets import UPSCALE_WARN

    enlarged = [(s, scale_of(s.size, s.placement)) for s in samples if scale_of(s.size, s.placement) > UPSCALE_WARN]
    if not enlarged:
        return []
    names = ", ".join(f"{s.path.name} ({x:.1f}x)" for s, x in enlarged[:5]) + (f" and {len(enlarged) - 5} more" if len(enlarged) > 5 else "")
    return [f"{len(enlarged)} image(s) enlarged more than {UPSCALE_WARN:g}x to fit their bucket (upscaled images teach blur): "
            f"{names}; use larger images or --bucket_no_upscale"]


def scan_parts(specs, *, check_images: bool = True, scan=None):
    """[(spec, [(subset, DatasetScan)])] for dataset specs; `scan` is reused for the first
    training subset (the request path scanned it already)."""
    from ..dataset import scan_dataset

    parts = []
    for spec in specs:
        scans = []
        for subset in spec.subsets:
            if scan is not None and not subset.is_reg and subset.layout == "folders" and not scans and not parts:
                scans.append((subset, scan))
                continue
            folder_as = None if subset.layout == "folders" else (subset.num_repeats, subset.class_tokens)
            found = scan_dataset(subset.image_dir, subset.caption_extension, check_images=check_images, folder_as=folder_as,
                                 role="Regularization" if subset.is_reg else "Training")
            scans.append((subset, found))
        parts.append((spec, scans))
    return parts


def training_data(config, *, seed: int, scan=None, check_images: bool = True, parts=None) -> TrainingData:
    """The run's TrainingData from a TrainConfig (its flags, or its --dataset_config)."""
    from ..dataset_config import dataset_specs

    if parts is None:
        parts = scan_parts(dataset_specs(config), check_images=check_images, scan=scan)
    return build_training_data(parts, seed=seed, validation_split=config.validation_split or 0.0,
                               validation_seed=config.validation_seed)


def train_scans(parts) -> list:
    """The scans of the training (not reg) subsets, in order."""
    return [scan for _, scans in parts for subset, scan in scans if not subset.is_reg]


def merge_scans(scans: list):
    """One DatasetScan over several training folders (a dataset TOML's subsets): for the summary,
    the tag frequency and the metadata's dataset dirs."""
    from ..dataset import DatasetScan

    if len(scans) == 1:
        return scans[0]
    first = scans[0]
    merged = DatasetScan(root=first.root, caption_extension=first.caption_extension)
    for scan in scans:
        merged.items += scan.items
        merged.subsets += scan.subsets
        merged.skipped += scan.skipped
        merged.notes += scan.notes
        merged.empty_captions += scan.empty_captions
        merged.warnings += scan.warnings
    return merged
