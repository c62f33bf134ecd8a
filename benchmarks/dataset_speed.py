"""Dataset paths: aspect-ratio buckets, and the uncached path's image memory.

1. Buckets: training steps/s and samples/s with --enable_bucket on and off, on one mixed-aspect
   folder (portraits 768x1152, landscapes 1152x768, squares 1024x1024, a 3:1 strip 1536x512),
   cached latents, batch 1 and batch 2, the same number of steps. Buckets change the pixels of a
   sample (each image trains at about the training area in its own shape) and can leave a batch
   short (a batch never mixes buckets), so the table has samples/s, mean pixels per sample and the
   batches per epoch beside steps/s.
2. Without latent caching every step needs its images again. `train.images.ImageMemory` keeps
   the resized image after its first use; `ImageMemory(0)` keeps nothing (decode + resize every
   step, the behaviour before it). Measured on large photos (6000x4000 JPEGs, quality 90):
   `images.pixels(sample, memory=...)` timed over repeated epochs, centre crop and random crop +
   flip, and a whole uncached training run with each budget (`Run.images` replaced right after
   `Run.build_caches`; ImageMemory's default budget is bound when the class is defined, so
   setting `images.MEMORY_BUDGET` afterwards would not change it).

The model is the mid-size SD-shaped one of `train_speed.py` (`instant_lora.tiny.MID_*`: 3-level
UNet with 128-256 channels, 4-layer text encoder, 4-level VAE with 64-256 channels), random
weights, fp32 on the CPU, rank 16, text encoder trained. Each comparison runs in its own process:
its modes alternate over the rounds (A B, then B A), each on a fresh copy of the same model, and
the best round of each mode is kept (all rounds are printed), so the ratios are comparable on a
noisy shared machine. CPU seconds per step (all threads) are printed beside the wall-clock rates:
a wall time far from CPU / threads means other processes took the cores.

    OMP_NUM_THREADS=2 python benchmarks/dataset_speed.py            # about 7 min on 2 idle cores
    OMP_NUM_THREADS=2 python benchmarks/dataset_speed.py --quick    # about 2 min
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "extension"))

# (kind, (width, height), count) of the mixed-aspect folder
MIXED = [("portrait", (768, 1152), 4), ("landscape", (1152, 768), 4), ("square", (1024, 1024), 3), ("strip 3:1", (1536, 512), 1)]
BUCKET_RANGE = dict(min_bucket_reso=128, max_bucket_reso=512, bucket_reso_steps=64)  # around a 256 px training area


# ---------------------------------------------------------------------------------- images

def _photo(size: tuple, seed: int):
    """Random-ish content: a coarse random colour field smoothly enlarged, with per-pixel grain,
    so a JPEG of it is about the size of a camera photo (6000x4000 at quality 90: ~9 MB)."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    w, h = size
    coarse = Image.fromarray(rng.integers(0, 256, (max(2, h // 100), max(2, w // 100), 3), dtype=np.uint8))
    img = coarse.resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(min(w, h) // 10, min(w, h) // 3))
        draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    arr = np.asarray(img).astype(np.int16)
    arr += rng.integers(-16, 17, (h, w, 1), dtype=np.int16)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def make_mixed(folder: Path) -> Path:
    sub = folder / "1_mixed"
    sub.mkdir(parents=True, exist_ok=True)
    i = 0
    for kind, size, count in MIXED:
        for _ in range(count):
            _photo(size, i).save(sub / f"img{i:02d}.jpg", quality=90)
            (sub / f"img{i:02d}.txt").write_text(f"bench, {kind} picture number {i}", encoding="utf-8")
            i += 1
    return folder


def make_photos(folder: Path, n: int) -> Path:
    """n camera-sized JPEGs: 6000x4000, every fourth one upright 4000x6000."""
    sub = folder / "1_photos"
    sub.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        size = (4000, 6000) if i % 4 == 3 else (6000, 4000)
        _photo(size, 100 + i).save(sub / f"photo{i:02d}.jpg", quality=90)
        (sub / f"photo{i:02d}.txt").write_text(f"bench, photo number {i}", encoding="utf-8")
    return folder


# ---------------------------------------------------------------------------------- one case

def _config(data: Path, out: Path, size: int, steps: int, **kw):
    from instant_lora.config import TrainConfig

    return TrainConfig(pretrained_model_name_or_path="random", train_data_dir=str(data), output_dir=str(out),
                       resolution=f"{size},{size}", network_dim=16, network_alpha=16.0, learning_rate=1e-4,
                       max_train_steps=steps, seed=0, mixed_precision="no", output_name="bench", **kw)


def _prepare(config):
    from instant_lora.request import RunRequest, prepare_run
    from instant_lora.train.loop import _config_values

    return prepare_run(RunRequest(front="config", values=_config_values(config)), cuda=False)


class Recorder:
    """Per step: wall and CPU seconds, the batch's samples and pixels, the seconds spent in
    `images.pixels`; installed once per process around Run._batch_loss, Run.build_caches and
    images.pixels (objective.batch_latents imports `pixels` at each call)."""

    def __init__(self):
        from instant_lora.train import images
        from instant_lora.train.loop import Run

        self.budget = None
        self.reset()
        original_loss, original_caches, original_pixels = Run._batch_loss, Run.build_caches, images.pixels
        rec = self

        def batch_loss(run, samples, micro):
            rec.batches.append((len(samples), sum(s.bucket[0] * s.bucket[1] for s in samples)))
            rec.prep.append(0.0)
            return original_loss(run, samples, micro)

        def build_caches(run):
            original_caches(run)
            if rec.budget is not None:
                run.images = images.ImageMemory(rec.budget)
            rec.memory = run.images

        def pixels(sample, **kw):
            t = time.perf_counter()
            out = original_pixels(sample, **kw)
            if rec.prep:
                rec.prep[-1] += time.perf_counter() - t
            return out

        Run._batch_loss, Run.build_caches, images.pixels = batch_loss, build_caches, pixels

    def reset(self):
        self.wall, self.cpu, self.batches, self.prep, self.memory = [], [], [], [], None

    def sink(self, event):
        from instant_lora.train.events import Step

        if isinstance(event, Step):
            self.wall.append(time.perf_counter())
            self.cpu.append(time.process_time())


def train_one(rec: Recorder, base_model, mode: dict, case: dict, out: Path) -> dict:
    """One training run; rates over the steps after the warm-up, and what those steps trained on."""
    import copy

    from instant_lora.train.loop import train

    warmup, steps = case["warmup"], case["steps"]
    rec.reset()
    rec.budget = mode.get("budget")
    out = out / f"run{len(list(out.glob('run*'))) if out.exists() else 0}"
    config = _config(Path(case["data"]), out, case["size"], warmup + steps + 1, train_batch_size=case["batch"],
                     **mode["options"])
    prepared = _prepare(config)
    data = prepared.data
    t0 = time.perf_counter()
    train(prepared, model=copy.deepcopy(base_model), sinks=[rec.sink])
    total = time.perf_counter() - t0
    # wall[i] closes step i+1: from wall[warmup] to the last, steps warmup+2 .. warmup+steps+1
    first, last = warmup, len(rec.wall) - 1
    seconds = rec.wall[last] - rec.wall[first]
    cpu = rec.cpu[last] - rec.cpu[first]
    window = rec.batches[first + 1:last + 1]
    n_steps = len(window)
    samples = sum(n for n, _ in window)
    px = sum(p for _, p in window)
    return {"name": mode["name"], "steps": n_steps, "seconds": seconds, "steps_per_s": n_steps / seconds,
            "samples_per_s": samples / seconds, "samples_per_step": samples / n_steps, "mean_px": px / samples,
            "cpu_s_per_step": cpu / n_steps, "prep_ms_per_step": 1000 * sum(rec.prep[first + 1:last + 1]) / n_steps,
            "step_s": [b - a for a, b in zip(rec.wall[first:last], rec.wall[first + 1:last + 1])],
            "step_prep_s": rec.prep[first + 1:last + 1],
            "batches_per_epoch": data.batches_per_epoch, "entries_per_epoch": data.num_train_images,
            "buckets": [[list(b), n, k, short] for b, _, n, k, short in data.bucket_rows()],
            "kept_mb": rec.memory.used / 2**20, "kept_images": len(rec.memory.images), "total_s": total}


def train_group(case: dict) -> dict:
    """The modes of one comparison in one process, alternating over the rounds (A B, then B A, ...),
    each on a fresh copy of one randomly initialised model; per mode, every round and the best."""
    from instant_lora.tiny import MID_TEXT, MID_UNET, MID_VAE, build_tiny_sd

    rec = Recorder()
    base = build_tiny_sd(0, unet=MID_UNET, text=MID_TEXT, vae=MID_VAE)
    rounds: dict = {m["name"]: [] for m in case["modes"]}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(case["rounds"]):
            for mode in case["modes"] if r % 2 == 0 else case["modes"][::-1]:
                rounds[mode["name"]].append(train_one(rec, base, mode, case, Path(tmp) / "out"))
    return {"modes": [dict(max(rounds[m["name"]], key=lambda x: x["steps_per_s"]),
                           rounds=[x["steps_per_s"] for x in rounds[m["name"]]]) for m in case["modes"]]}


def prep_case(case: dict) -> dict:
    """`images.pixels` alone over repeated epochs of the photos, with one ImageMemory per mode."""
    from instant_lora.dataset import load_image
    from instant_lora.train import images
    from instant_lora.train.data import training_data

    with tempfile.TemporaryDirectory() as tmp:
        out = []
        for size in case["sizes"]:
            for crop_mode in ("centre", "random crop + flip"):
                moving = crop_mode != "centre"
                config = _config(Path(case["data"]), Path(tmp) / "out", size, 1, cache_latents=False,
                                 random_crop=moving, flip_aug=moving)
                samples = training_data(config, seed=0).samples
                for label, budget in (("ImageMemory(0): decode + resize every step", 0),
                                      ("ImageMemory(): kept after first use", images.MEMORY_BUDGET)):
                    memory = images.ImageMemory(budget)
                    rng = random.Random(0)
                    first, later = [], []
                    for epoch in range(case["epochs"]):
                        for s in samples:
                            crop = images.crop_box(s, rng)
                            flip = moving and rng.random() < 0.5
                            t = time.perf_counter()
                            images.pixels(s, flip=flip, crop=crop, memory=memory)
                            (first if epoch == 0 else later).append(time.perf_counter() - t)
                    every = first + later
                    out.append({"size": size, "crop": crop_mode, "memory": label, "budget": budget,
                                "first_ms": 1000 * statistics.mean(first), "later_ms": 1000 * statistics.mean(later),
                                "mean_ms": 1000 * statistics.mean(every), "epochs": case["epochs"], "images": len(samples),
                                "kept_mb": memory.used / 2**20, "kept_images": len(memory.images),
                                "resized": list(samples[0].placement.resized), "bucket": list(samples[0].bucket)})
        # where a decode-every-step goes: the JPEG decode alone
        paths = sorted((Path(case["data"]) / "1_photos").glob("*.jpg"))
        decode = []
        for _ in range(2):
            for p in paths:
                t = time.perf_counter()
                load_image(p)
                decode.append(time.perf_counter() - t)
    mb = statistics.mean(p.stat().st_size for p in paths) / 1e6
    return {"rows": out, "decode_ms": 1000 * statistics.mean(decode), "jpeg_mb": mb}


# ---------------------------------------------------------------------------------- driver

def _child(case: dict, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, __file__, "--one", json.dumps(case), "--threads", str(threads)]
    r = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        print(r.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"case failed: {case['name']}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps, photos and repeats (about 2 min)")
    ap.add_argument("--size", type=int, default=256, help="training resolution (px, square area)")
    ap.add_argument("--steps", type=int, help="timed steps per bucket case (default 12, quick 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (bucket cases)")
    ap.add_argument("--photos", type=int, help="6000x4000 JPEGs for the uncached cases (default 4, quick 2)")
    ap.add_argument("--uncached-steps", type=int, help="timed steps per uncached training (default 8, quick 4)")
    ap.add_argument("--rounds", type=int, help="alternating rounds per training comparison, best kept (default 3, quick 1)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads, OMP_NUM_THREADS)")
    ap.add_argument("--json", help="also write every figure to this file")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one case in this process
    args = ap.parse_args()
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        case = json.loads(args.one)
        print(json.dumps(prep_case(case) if case["kind"] == "prep" else train_group(case)))
        return

    steps = args.steps or (5 if args.quick else 12)
    photos = args.photos or (2 if args.quick else 4)
    uncached_steps = args.uncached_steps or (4 if args.quick else 8)
    rounds = args.rounds or (1 if args.quick else 3)
    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        mixed = make_mixed(Path(tmp) / "mixed")
        photo_dir = make_photos(Path(tmp) / "photos", photos)
        print(f"images written in {time.perf_counter() - started:.0f} s", file=sys.stderr)

        bucket_results = []
        for batch in (1, 2):
            modes = [dict(name=f"batch {batch}, {'buckets' if bucket else 'no buckets'}",
                          options=dict(cache_latents=True, cache_latents_to_disk=True, enable_bucket=bucket,
                                       **(BUCKET_RANGE if bucket else {})))
                     for bucket in (False, True)]
            case = dict(kind="train", name=f"batch {batch}", data=str(mixed), size=args.size, batch=batch,
                        warmup=args.warmup, steps=steps, modes=modes, rounds=rounds)
            bucket_results += _child(case, args.threads)["modes"]
            for r in bucket_results[-2:]:
                print(f"{r['name']}: {r['steps_per_s']:.2f} steps/s (rounds {r['rounds']})", file=sys.stderr)

        prep = _child(dict(kind="prep", name="pixels", data=str(photo_dir), sizes=[args.size] if args.quick else [args.size, 512],
                           epochs=2 if args.quick else 3), args.threads)
        print("image preparation timed", file=sys.stderr)

        # warm-up = one epoch, so the timed steps are the ones after every image's first use
        modes = [dict(name="ImageMemory(0): decode + resize every step", budget=0, options=dict(cache_latents=False)),
                 dict(name="ImageMemory(): kept after first use", options=dict(cache_latents=False))]
        case = dict(kind="train", name="uncached", data=str(photo_dir), size=args.size, batch=1, warmup=photos,
                    steps=uncached_steps, modes=modes, rounds=rounds)
        uncached_results = _child(case, args.threads)["modes"]
        for r in uncached_results:
            print(f"{r['name']}: {r['steps_per_s']:.2f} steps/s (rounds {r['rounds']})", file=sys.stderr)
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()

    print(f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f}; {elapsed / 60:.1f} min; "
          f"{args.threads} threads; {args.size} px\n")
    print("### 1. Aspect-ratio buckets (cached latents)\n")
    print("| batch | buckets | batches / epoch | steps/s | samples/s | mean px / sample | Mpx/s | samples/s vs no buckets "
          "| median s / step | CPU s / step | steps/s, each round |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(bucket_results):
        base = bucket_results[i - i % 2]
        print(f"| {r['name'].split(',')[0][6:]} | {'on' if 'no buckets' not in r['name'] else 'off'} | {r['batches_per_epoch']} "
              f"({r['entries_per_epoch']} images) | {r['steps_per_s']:.2f} | {r['samples_per_s']:.2f} | {r['mean_px']:,.0f} | "
              f"{r['samples_per_s'] * r['mean_px'] / 1e6:.3f} | {r['samples_per_s'] / base['samples_per_s']:.2f}x | "
              f"{statistics.median(r['step_s']):.2f} | {r['cpu_s_per_step']:.2f} | {', '.join(f'{x:.2f}' for x in r['rounds'])} |")
    for r in bucket_results:
        rows = "; ".join(f"{b[0]}x{b[1]}: {n} in {k} batch(es){' (1 short)' if short else ''}" for b, n, k, short in r["buckets"])
        print(f"- {r['name']}: {rows}; timed {r['steps']} steps, {r['samples_per_step']:.2f} samples/step")

    print(f"\n### 2. Uncached path: preparing the images ({photos} JPEGs 6000x4000 / 4000x6000, quality 90, "
          f"{prep['jpeg_mb']:.1f} MB each; {prep['rows'][0]['epochs']} epochs)\n")
    print("| px | crop | memory | first use ms / image | later uses ms / image | mean ms / step (batch 1) | kept |")
    print("|---|---|---|---|---|---|---|")
    for r in prep["rows"]:
        kept = f"{r['kept_images']} images, {r['kept_mb']:.2f} MB ({r['bucket'][0]}x{r['bucket'][1]} crop)" if r["kept_images"] else "nothing"
        if r["kept_images"] and r["crop"] != "centre":
            kept = f"{r['kept_images']} images, {r['kept_mb']:.2f} MB (whole {r['resized'][0]}x{r['resized'][1]})"
        print(f"| {r['size']} | {r['crop']} | {r['memory']} | {r['first_ms']:.0f} | {r['later_ms']:.1f} | {r['mean_ms']:.0f} | {kept} |")
    print(f"- JPEG decode alone (`dataset.load_image`): {prep['decode_ms']:.0f} ms per photo")

    print(f"\n### 2b. Uncached training run ({photos} photos, batch 1, {args.size} px, {uncached_steps} timed steps "
          f"after one epoch of warm-up)\n")
    print("| memory | steps/s | vs ImageMemory(0) | median s / step | image preparation ms / step | CPU s / step "
          "| steps/s, each round | kept |")
    print("|---|---|---|---|---|---|---|---|")
    base = uncached_results[0]["steps_per_s"]
    for r in uncached_results:
        print(f"| {r['name']} | {r['steps_per_s']:.2f} | {r['steps_per_s'] / base:.2f}x | {statistics.median(r['step_s']):.2f} | "
              f"{r['prep_ms_per_step']:.0f} | "
              f"{r['cpu_s_per_step']:.2f} | {', '.join(f'{x:.2f}' for x in r['rounds'])} | "
              f"{r['kept_images']} images, {r['kept_mb']:.2f} MB |")
    report = {"buckets": bucket_results, "prep": prep, "uncached": uncached_results, "load_before": load_before,
              "load_after": load_after, "seconds": elapsed, "threads": args.threads, "size": args.size}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(json.dumps(report), file=sys.stderr)


if __name__ == "__main__":
    main()
