"""Training speed and peak memory, with and without latent / text-encoder caching.

CPU (default): a mid-size SD-shaped model (3-level UNet, 128-256 channels, 4-layer text encoder,
4-level VAE with 64-256 channels)
at 256 px, each mode in its own process so peak RSS is per mode. Modes run back to back in one
invocation, so their ratios are comparable even on a noisy shared machine.

CUDA (--cuda): the real SD1.5 architecture (random weights) at 512 px, batch 1, fp16, reporting
it/s and peak VRAM (torch.cuda.max_memory_allocated).

    python benchmarks/train_speed.py                 # CPU, all modes
    python benchmarks/train_speed.py --cuda          # GPU, SD1.5 shape
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "extension"))

MODES = {
    "no caching (VAE + text encoder every step, TE trained)": dict(cache_latents=False, network_train_unet_only=False),
    "cached latents, TE trained": dict(cache_latents=True, network_train_unet_only=False),
    "cached latents + cached text (UNet only)": dict(cache_latents=True, network_train_unet_only=True),
    "cached latents + cached text + gradient checkpointing": dict(cache_latents=True, network_train_unet_only=True,
                                                                  gradient_checkpointing=True),
}


def make_dataset(folder: Path, n: int, size: int) -> Path:
    from PIL import Image, ImageDraw

    sub = folder / "1_bench"
    sub.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = Image.new("RGB", (size, size), (20 * i % 255, 100, 200))
        ImageDraw.Draw(img).ellipse([size // 5, size // 5, 4 * size // 5, 4 * size // 5], fill=(200, 30 * i % 255, 40))
        img.save(sub / f"img{i:03d}.png")
        (sub / f"img{i:03d}.txt").write_text(f"bench, picture number {i}, a colourful circle", encoding="utf-8")
    return folder


def sd15_random_model():
    from instant_lora.models import BUNDLED_SD15_CONFIG
    from instant_lora.tiny import build_tiny_sd

    def cfg(sub, name="config.json"):
        d = json.loads((BUNDLED_SD15_CONFIG / sub / name).read_text())
        return {k: v for k, v in d.items() if not k.startswith("_") and k != "architectures" and k != "torch_dtype"
                and k != "model_type"}

    return build_tiny_sd(0, unet=cfg("unet"), text=cfg("text_encoder"), vae=cfg("vae"))


def run_mode(name: str, cuda: bool, steps: int, warmup: int) -> dict:
    import torch

    from instant_lora.config import TrainConfig
    from instant_lora.tiny import MID_TEXT, MID_UNET, MID_VAE, build_tiny_sd
    from instant_lora.train.events import Step
    from instant_lora.train.loop import train

    size = 512 if cuda else 256
    times = []

    def sink(event):
        if isinstance(event, Step):
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "data", 8, size)
        model = sd15_random_model() if cuda else build_tiny_sd(0, unet=MID_UNET, text=MID_TEXT, vae=MID_VAE)
        config = TrainConfig(pretrained_model_name_or_path="random", train_data_dir=str(data), output_dir=str(Path(tmp) / "out"),
                             resolution=f"{size},{size}", network_dim=16, network_alpha=16.0, learning_rate=1e-4,
                             max_train_steps=steps + warmup, seed=0, mixed_precision="fp16" if cuda else "no",
                             output_name="bench", **MODES[name])
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        train(config, model=model, sinks=[sink])
        total = time.perf_counter() - t0
    timed = times[warmup:]
    rate = (len(timed) - 1) / (timed[-1] - timed[0]) if len(timed) > 1 else float("nan")
    out = {"mode": name, "steps_per_s": rate, "total_s": total, "size": size,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if cuda:
        out["peak_vram_mb"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuda", action="store_true", help="SD1.5 architecture at 512 px, fp16, on the GPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per mode (default 20 CPU, 50 CUDA)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one mode in this process
    args = ap.parse_args()
    steps = args.steps or (50 if args.cuda else 20)
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_mode(args.one, args.cuda, steps, args.warmup)))
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    results = []
    for name in MODES:
        cmd = [sys.executable, __file__, "--one", name, "--steps", str(steps), "--warmup", str(args.warmup),
               "--threads", str(args.threads)] + (["--cuda"] if args.cuda else [])
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            print(r.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"mode failed: {name}")
        results.append(json.loads(r.stdout.strip().splitlines()[-1]))
    base = results[0]["steps_per_s"]
    print(f"| mode | {'steps/s' if not args.cuda else 'it/s'} | vs no caching | peak {'VRAM' if args.cuda else 'RSS'} MB |")
    print("|---|---|---|---|")
    for r in results:
        mem = r.get("peak_vram_mb", r["peak_rss_mb"])
        print(f"| {r['mode']} | {r['steps_per_s']:.2f} | {r['steps_per_s'] / base:.2f}x | {mem:.0f} |")
    print(json.dumps(results), file=sys.stderr)


if __name__ == "__main__":
    main()
