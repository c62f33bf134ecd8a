"""Seconds per training step of the real SD1.5 architecture on this machine's CPU.

The full-size SD1.5 UNet (the bundled config, 859.5M parameters) and text encoder (123M), random
weights (timing needs real tensors, not empty ones), the LoRA put in as the trainer does
(`lora.layers.inject_lora` over `lora.targets`' default modules, rank 16, alpha 8: the app's
defaults), fp32 (the trainer's CPU precision). One step = what the loop does per optimizer step
with cached latents: text encoder forward (with its LoRA, or cached when the UNet trains alone),
noise, UNet forward, MSE loss, backward, AdamW step, zero_grad. The VAE is not in the step
(latents are cached before the first step), so it is not built.

Each case: one warm-up step, then `--steps` timed steps; the figure is the median. The cases:

  unet+te   UNet + text-encoder LoRA (the estimate table's reference setting) at 256, 384, 512 px
  unet      UNet LoRA only (text encoder frozen and cached), 256 px
  unet+te+gc  as unet+te with gradient checkpointing, 256 px
  vae       one image through the VAE encoder (what caching latents costs per image), 256 and 512 px

Runs on the CPU, threads = cores (OMP_NUM_THREADS and torch.set_num_threads), and writes a JSON
report. The CPU row of `train/estimate.py`'s table comes from these figures.

    python benchmarks/step_time.py                         # ~3 minutes on an idle 2-core VM
    python benchmarks/step_time.py --json step_time.json --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "extension"))

CASES = [  # (name, resolution, train the text encoder, gradient checkpointing)
    ("unet+te", 256, True, False),
    ("unet+te", 384, True, False),
    ("unet+te", 512, True, False),
    ("unet", 256, False, False),
    ("unet+te+gc", 256, True, True),
    ("vae", 256, False, False),
    ("vae", 512, False, False),
]


def build(train_te: bool, checkpointing: bool, rank: int, alpha: float):
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from instant_lora.lora.layers import inject_lora, lora_parameters
    from instant_lora.lora.targets import text_encoder_targets, unet_targets
    from instant_lora.models import BUNDLED_SD15_CONFIG

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(BUNDLED_SD15_CONFIG / "unet")))
    te = CLIPTextModel(CLIPTextConfig.from_pretrained(str(BUNDLED_SD15_CONFIG / "text_encoder")))
    for net in (unet, te):
        net.requires_grad_(False)
    inject_lora(unet, unet_targets(unet), rank, alpha, seed=0, seed_salt="unet")
    params = lora_parameters(unet)
    if train_te:
        inject_lora(te, text_encoder_targets(te), rank, alpha, seed=0, seed_salt="text_encoder")
        params += lora_parameters(te)
    if checkpointing:
        unet.enable_gradient_checkpointing()
        if train_te:
            te.gradient_checkpointing_enable()
            te.enable_input_require_grads()
    unet.train()
    te.train(train_te)
    return unet, te, params


def time_case(name: str, size: int, train_te: bool, checkpointing: bool, steps: int, rank: int, alpha: float) -> dict:
    import torch
    import torch.nn.functional as F

    t0 = time.perf_counter()
    unet, te, params = build(train_te, checkpointing, rank, alpha)
    build_s = time.perf_counter() - t0
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn((1, 4, size // 8, size // 8), generator=g)
    ids = torch.randint(0, 49407, (1, 77), generator=g)
    cached_text = None
    if not train_te:
        with torch.no_grad():
            cached_text = te(ids).last_hidden_state

    def step():
        hidden = te(ids).last_hidden_state if train_te else cached_text
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, 1000, (1,), generator=g)
        noisy = latents + noise * 0.5  # the scheduler's add_noise is negligible next to the UNet
        pred = unet(noisy, t, hidden).sample
        loss = F.mse_loss(pred, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times, cpu = [], []
    for i in range(steps + 1):  # the first is the warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        if i:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        print(f"  {name} {size}px step {i}{' (warm-up)' if not i else ''}: {time.perf_counter() - t0:.1f} s "
              f"(CPU time {time.process_time() - c0:.1f} s)", flush=True)
    # CPU time / threads: close to the wall time on an idle machine, and far less changed by other
    # processes sharing the cores (wall time under contention can be several times longer).
    return {"case": name, "resolution": size, "train_text_encoder": train_te, "gradient_checkpointing": checkpointing,
            "s_per_step": statistics.median(times), "steps": [round(t, 2) for t in times],
            "cpu_s_per_step": statistics.median(cpu), "load_average": _load(), "build_s": round(build_s, 1)}


def time_vae(size: int, steps: int) -> dict:
    """Seconds to encode one image with the SD1.5 VAE (the latent cache's cost per image)."""
    import torch
    from diffusers import AutoencoderKL

    from instant_lora.models import BUNDLED_SD15_CONFIG

    t0 = time.perf_counter()
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(BUNDLED_SD15_CONFIG / "vae"))).eval().requires_grad_(False)
    build_s = time.perf_counter() - t0
    px = torch.rand((1, 3, size, size)) * 2 - 1
    times, cpu = [], []
    for i in range(steps + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        with torch.no_grad():
            vae.encode(px).latent_dist.mean
        if i:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        print(f"  vae {size}px encode {i}{' (warm-up)' if not i else ''}: {time.perf_counter() - t0:.1f} s", flush=True)
    return {"case": "vae", "resolution": size, "s_per_image": statistics.median(times), "steps": [round(t, 2) for t in times],
            "cpu_s_per_step": statistics.median(cpu), "load_average": _load(), "build_s": round(build_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per case after one warm-up (default 2)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: the cores)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=float, default=8.0)
    ap.add_argument("--only", help="run only the cases of this name, e.g. unet+te")
    ap.add_argument("--sizes", type=int, nargs="*", help="run only these resolutions, e.g. --sizes 512")
    ap.add_argument("--json", help="also write the report here")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import diffusers
    import torch

    torch.set_num_threads(args.threads)
    report = {
        "benchmark": "step_time", "device": "cpu", "threads": args.threads, "cores": os.cpu_count(),
        "cpu": _cpu_name(), "torch": torch.__version__, "diffusers": diffusers.__version__, "precision": "fp32",
        "batch_size": 1, "rank": args.rank, "alpha": args.alpha, "optimizer": "AdamW",
        "date": time.strftime("%Y-%m-%d"), "load_average_before": _load(), "cases": [],
    }
    t_all = time.perf_counter()
    for name, size, train_te, gc in CASES:
        if (args.only and args.only != name) or (args.sizes and size not in args.sizes):
            continue
        if name == "vae":
            r = time_vae(size, args.steps)
        else:
            r = time_case(name, size, train_te, gc, args.steps, args.rank, args.alpha)
        print(json.dumps(r), flush=True)
        report["cases"].append(r)
    report["total_s"] = round(time.perf_counter() - t_all, 1)
    report["load_average_after"] = _load()
    print("| case | px | s per step (vae: per image), median | steps | CPU time / threads | load |")
    print("|---|---|---|---|---|---|")
    for r in report["cases"]:
        seconds = r.get("s_per_step", r.get("s_per_image"))
        print(f"| {r['case']} | {r['resolution']} | {seconds:.1f} | {', '.join(str(s) for s in r['steps'])} | "
              f"{r['cpu_s_per_step'] / args.threads:.1f} | {r['load_average'][0] if r['load_average'] else ''} |")
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


if __name__ == "__main__":
    main()
