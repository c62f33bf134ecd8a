"""Memory of one long-lived process through a training and a Test panel grid, and what
`instant_lora.memory.release_memory()` gives back.

The WebUI runs the trainer inside its own process, which lives for days: what a training or a grid
leaves resident stays there. This runs the same sequence in one process and reads the resident
set size (RSS) after each stage, the peak during training and during the grid (sampled every
10 ms in a thread), and on CUDA the allocator's allocated / reserved / peak bytes:

  1. libraries imported; a random SD-shaped model built, written to a temp folder as a diffusers
     model (what `load_sd_model` reads) and dropped again ("idle"),
  2. a LoRA trained from that folder through `instant_lora.train.loop.train` (one intermediate
     save, so the grid has two rows),
  3. after the training: `gc.collect()` alone, then `release_memory()` (gc + CUDA cache +
     glibc malloc_trim),
  4. the Test panel's weight x epoch grid through the standalone renderer (`kept_renderer` +
     `build_grid`), the base model kept loaded as the panel keeps it,
  5. `release_kept_renderer()` (drops the model and calls `release_memory()`).

With --rounds N, stages 2-5 run N times (a new LoRA each time): what stays after a round that
does not come back in the next one is a one-off (imported code, caches), what grows is a leak.

CPU (default): the mid-size model of train_speed.py (3-level UNet 128-256 channels, 4-layer text
encoder, 4-level VAE 64-256 channels). CUDA (--cuda): the SD1.5 architecture, random weights, fp16.

    python benchmarks/memory_use.py                        # CPU, 1-2 minutes on 2 cores
    python benchmarks/memory_use.py --cuda --size 512 --grid-size 512 --grid-steps 20
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "extension"))
sys.path.insert(0, str(ROOT / "benchmarks"))

MB = 2**20


class PeakSampler:
    """RSS sampled in a thread; `phase()` returns the peak since the last call and starts anew."""

    def __init__(self, every_s: float = 0.01):
        from instant_lora.memory import rss_bytes

        self._rss, self._every = rss_bytes, every_s
        self._peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self._every):
            self._peak = max(self._peak, self._rss())

    def phase(self) -> int:
        peak, self._peak = max(self._peak, self._rss()), self._rss()
        return peak

    def close(self):
        self._stop.set()
        self._thread.join()


def run(args) -> tuple[list[dict], dict]:
    import torch

    from instant_lora.config import TrainConfig
    from instant_lora.memory import release_memory, rss_bytes
    from instant_lora.sample.generate import kept_renderer, release_kept_renderer
    from instant_lora.sample.grid import build_grid, run_rows
    from instant_lora.sample.settings import GenerationSettings
    from instant_lora.tiny import MID_TEXT, MID_UNET, MID_VAE, build_tiny_sd, save_diffusers_folder
    from instant_lora.train.loop import train
    from train_speed import make_dataset, sd15_random_model

    cuda = args.cuda
    rows: list[dict] = []

    def record(stage: str, peak: int | None = None):
        row = {"stage": stage, "rss_mb": rss_bytes() / MB, "peak_rss_mb": None if peak is None else peak / MB}
        if cuda:
            row.update(cuda_allocated_mb=torch.cuda.memory_allocated() / MB, cuda_reserved_mb=torch.cuda.memory_reserved() / MB,
                       cuda_max_allocated_mb=torch.cuda.max_memory_allocated() / MB)
            torch.cuda.reset_peak_memory_stats()
        rows.append(row)
        print(f"  {stage}: RSS {row['rss_mb']:.0f} MB" + (f" (peak {row['peak_rss_mb']:.0f})" if peak else ""),
              file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        record("libraries imported")
        model = sd15_random_model() if cuda else build_tiny_sd(0, unet=MID_UNET, text=MID_TEXT, vae=MID_VAE)
        base = save_diffusers_folder(model, tmp / "base")
        del model
        data = make_dataset(tmp / "data", args.images, args.size)
        release_memory()
        record("idle (model written to disk and dropped)")

        sampler = PeakSampler()
        settings = GenerationSettings(negative_prompt="blurry", steps=args.grid_steps, cfg_scale=7, sampler="Euler a",
                                      width=args.grid_size, height=args.grid_size)
        meta = {"rounds": []}
        for k in range(1, args.rounds + 1):
            tag = f"round {k}: " if args.rounds > 1 else ""
            lora_dir = tmp / f"lora{k}"
            config = TrainConfig(pretrained_model_name_or_path=str(base), train_data_dir=str(data), output_dir=str(lora_dir),
                                 resolution=f"{args.size},{args.size}", network_dim=16, network_alpha=16.0, learning_rate=1e-4,
                                 max_train_steps=args.steps, save_every_n_steps=max(1, args.steps // 2), seed=k,
                                 mixed_precision="fp16" if cuda else "no", cache_latents=True, output_name="bench")
            sampler.phase()  # the training's peak starts here
            t0 = time.perf_counter()
            result = train(config)
            train_s = time.perf_counter() - t0
            record(f"{tag}after training", sampler.phase())
            gc.collect()
            record("  + gc.collect()")
            release_memory()
            record("  + release_memory()")

            sampler.phase()  # the grid's peak starts here
            t0 = time.perf_counter()
            with kept_renderer(str(base), lora_dir) as render:
                grid = build_grid(render, "bench, a colourful circle", run_rows(lora_dir, "bench"), weights=(0, 0.5, 1),
                                  seed=1, settings=settings)
            grid_s = time.perf_counter() - t0
            cells = grid.renders
            del grid, render
            record(f"{tag}after grid (base model kept loaded)", sampler.phase())
            release_kept_renderer()
            record("  + release_kept_renderer()")
            meta["rounds"].append({"train_steps": result.steps, "train_s": round(train_s, 1), "grid_cells": cells,
                                   "grid_s": round(grid_s, 1)})
            del result
        sampler.close()
    meta.update(size=args.size, grid_size=args.grid_size, threads=torch.get_num_threads(),
                device=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__)
    return rows, meta


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuda", action="store_true", help="SD1.5 architecture (random weights), fp16, on the GPU")
    ap.add_argument("--steps", type=int, default=6, help="training steps (one intermediate save at half)")
    ap.add_argument("--size", type=int, default=256, help="training resolution")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--grid-size", type=int, default=96, help="grid cell size in px")
    ap.add_argument("--grid-steps", type=int, default=6, help="denoising steps per grid cell")
    ap.add_argument("--rounds", type=int, default=1, help="training + grid this many times in the one process")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    rows, meta = run(args)
    idle = rows[1]["rss_mb"]
    cols = "| stage | RSS MB | vs idle | peak RSS MB |" + (" CUDA alloc MB | CUDA reserved MB | CUDA peak MB |" if args.cuda else "")
    print(cols)
    print("|" + "---|" * (cols.count("|") - 1))
    for r in rows:
        peak = "" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:.0f}"
        line = f"| {r['stage']} | {r['rss_mb']:.0f} | {r['rss_mb'] - idle:+.0f} | {peak} |"
        if args.cuda:
            line += f" {r['cuda_allocated_mb']:.0f} | {r['cuda_reserved_mb']:.0f} | {r['cuda_max_allocated_mb']:.0f} |"
        print(line)
    print(json.dumps({"meta": meta, "stages": rows}))


if __name__ == "__main__":
    main()
