"""Captioning speed: images/s and label-bank encoding time, cold and warm cache.

Runs the real caption_folder() on synthetic images with the ViT-L-14 architecture. Weights are
random (same compute as OpenAI's; no download needed), so the captions are meaningless but the
timings are the real ones.

    python benchmarks/caption_speed.py                      # CPU: 8 images, 64 labels
    python benchmarks/caption_speed.py --device cuda        # GPU fp16: 256 images, all built-in labels
    python benchmarks/caption_speed.py --json out.json      # also write the numbers

Cold = empty label cache (every label encoded); warm = second run, labels read from the cache.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "extension"))

from instant_lora.captioning import CaptionOptions, caption_folder, free_clip_model  # noqa: E402
from instant_lora.captioning.banks import load_banks  # noqa: E402


def make_images(folder: Path, n: int, size: int = 512) -> None:
    from PIL import Image, ImageDraw

    rng = random.Random(0)
    folder.mkdir(parents=True)
    for i in range(n):
        im = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
        d = ImageDraw.Draw(im)
        for _ in range(6):
            x, y = rng.randrange(size), rng.randrange(size)
            d.ellipse([x, y, x + rng.randrange(40, 200), y + rng.randrange(40, 200)],
                      fill=tuple(rng.randrange(256) for _ in range(3)))
        im.save(folder / f"img_{i:04d}.jpg", quality=90)


def label_subset(n: int):
    """The first labels of every built-in bank, round-robin, n in all (None: every label)."""
    banks = load_banks()
    if n <= 0 or n >= sum(len(b.labels) for b in banks):
        return None
    picked = {b.category: [] for b in banks}
    i = 0
    while sum(map(len, picked.values())) < n:
        for b in banks:
            if i < len(b.labels) and sum(map(len, picked.values())) < n:
                picked[b.category].append(b.labels[i])
        i += 1
    return {k: v for k, v in picked.items() if v}


def full_context_rate(arch_options: CaptionOptions, n: int) -> float:
    """Labels/s with open_clip's own encode_text at all 77 positions (what the short context saves)."""
    import torch

    from instant_lora.captioning.clip_model import load_clip

    clip = load_clip(arch_options)
    texts = [label for labels in label_subset(n).values() for label in labels]
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), 32):
            clip.model.encode_text(clip.tokenize(texts[i:i + 32]).to(clip.device))
    if clip.device.type == "cuda":
        torch.cuda.synchronize()
    return len(texts) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--arch", default="ViT-L-14")
    parser.add_argument("--images", type=int, default=0, help="images to caption (0: 8 on CPU, 256 on GPU)")
    parser.add_argument("--labels", type=int, default=-1, help="labels to encode (-1: 64 on CPU, all on GPU)")
    parser.add_argument("--batch_size", type=int, default=0)
    parser.add_argument("--full_context", type=int, default=32,
                        help="also time this many labels at the full 77-token context (0: skip)")
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()

    import torch

    gpu = args.device.startswith("cuda") or (args.device == "auto" and torch.cuda.is_available())
    n_images = args.images or (256 if gpu else 8)
    n_labels = args.labels if args.labels >= 0 else (0 if gpu else 64)
    banks = label_subset(n_labels)
    work = Path(tempfile.mkdtemp(prefix="caption-bench-"))
    make_images(work / "images", n_images)
    common = dict(clip_model=args.arch, clip_pretrained="random", device=args.device, mode="overwrite",
                  cache_dir=str(work / "cache"), banks=banks, batch_size=args.batch_size, prefix="sks")

    results = {"arch": args.arch, "device": args.device, "threads": torch.get_num_threads(),
               "cpu_count": os.cpu_count(), "images": n_images, "torch": torch.__version__}
    if gpu:
        results["gpu"] = torch.cuda.get_device_name(0)
        torch.cuda.reset_peak_memory_stats()
    for phase, keep in (("cold", True), ("warm", False)):
        report = caption_folder(work / "images", CaptionOptions(keep_model_loaded=keep, **common))
        results[phase] = {
            "model_load_s": round(report.model_seconds, 2),
            "labels": report.labels, "labels_encoded": report.labels_encoded,
            "label_s": round(report.label_seconds, 3),
            "labels_per_s": round(report.labels_encoded / report.label_seconds, 1) if report.labels_encoded else None,
            "images_per_s": round(report.images_per_s, 3),
            "total_s": round(report.seconds, 2),
        }
        print(f"{phase}: {json.dumps(results[phase])}", flush=True)
    if gpu:
        results["peak_vram_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
        results["vram_after_free_mib"] = round(torch.cuda.memory_allocated() / 2 ** 20, 1)
    if args.full_context:
        results["full_context_labels_per_s"] = round(
            full_context_rate(CaptionOptions(**{**common, "banks": None}), args.full_context), 1)
        free_clip_model()

    print(json.dumps(results, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
