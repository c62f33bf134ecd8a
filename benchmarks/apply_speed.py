"""Putting a LoRA into a loaded model: merge + exact restore, against peft adapters.

The real SD1.5 UNet architecture (from the bundled config, random weights: timing needs real
tensors, so no empty-weight tricks) and a rank-32 LoRA over the default 192 modules. Measured:

  merge     LoraMerger.apply: back up the touched weights, W += up @ down * alpha/r * w
  restore   LoraMerger.restore: copy the backups back (bit-identical; checked)
  inject    peft adapters into the 192 modules + the file's tensors copied in
  swap      adapters already in place: copy another file's tensors in (switching epochs)
  remove    adapters taken out again (wrappers replaced by their base layers)
  forward   one UNet call, batch 2 (CFG), plain (= merged) and with the adapters, interleaved

    python benchmarks/apply_speed.py                   # CPU (1 thread), fp32, 256 px forward
    python benchmarks/apply_speed.py --device cuda --dtype fp16 --latent 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "extension"))


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, reps: int) -> float:
    """Median seconds of `reps` calls."""
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def build_unet(device, dtype):
    import torch
    from diffusers import UNet2DConditionModel

    from instant_lora.models import BUNDLED_SD15_CONFIG

    config = UNet2DConditionModel.load_config(str(BUNDLED_SD15_CONFIG / "unet"))
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config).eval().requires_grad_(False)
    if device.type != "cpu" or dtype != torch.float32:
        unet.to(device, dtype)
    return unet


def random_lora(unet, names, rank: int, alpha: float, seed: int) -> dict:
    import torch

    from instant_lora.lora.kohya_file import UNET_PREFIX, kohya_name

    g = torch.Generator().manual_seed(seed)
    modules = dict(unet.named_modules())
    sd = {}
    for path in names:
        w = modules[path].weight
        kernel = tuple(w.shape[2:])
        name = kohya_name(UNET_PREFIX, path)
        sd[name + ".lora_down.weight"] = torch.randn((rank, w.shape[1], *kernel), generator=g).half() * 0.01
        sd[name + ".lora_up.weight"] = torch.randn((w.shape[0], rank, *(1,) * len(kernel)), generator=g).half() * 0.01
        sd[name + ".alpha"] = torch.tensor(alpha)
    return sd  # fp16 on the CPU, like a file just read


def remove_adapters(model) -> None:
    from peft.tuners.lora import LoraLayer

    for path, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            parent_path, _, child = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            setattr(parent, child, module.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config  # or the next injection warns about a second adapter


def main(argv=None) -> int:
    import torch

    from instant_lora.lora.kohya_file import load_into_layers
    from instant_lora.lora.layers import inject_lora
    from instant_lora.lora.targets import unet_targets
    from instant_lora.sample.apply import LoraMerger

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"))
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--latent", type=int, default=32, help="latent side for the forward timing (64 = 512 px)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--forward_reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (0 = torch's default); 1 gives stable figures on a shared machine")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    r = {"device": str(device), "dtype": args.dtype, "rank": args.rank, "threads": torch.get_num_threads(),
         "torch": torch.__version__}

    t0 = time.perf_counter()
    unet = build_unet(device, dtype)
    r["build_s"] = time.perf_counter() - t0
    names = unet_targets(unet)
    r["modules"] = len(names)
    r["unet_params_M"] = sum(p.numel() for p in unet.parameters()) / 1e6
    modules = dict(unet.named_modules())
    touched = sum(modules[n].weight.numel() for n in names)
    r["touched_params_M"] = touched / 1e6
    r["backup_MB"] = touched * unet.conv_in.weight.element_size() / 2**20
    lora_a = random_lora(unet, names, args.rank, args.rank / 2, 1)
    lora_b = random_lora(unet, names, args.rank, args.rank / 2, 2)
    r["lora_file_MB"] = sum(v.numel() * v.element_size() for v in lora_a.values()) / 2**20
    print(json.dumps(r), flush=True)

    # --- merge / restore ------------------------------------------------------------------
    reference = {n: modules[n].weight.detach().clone() for n in names[:: max(1, len(names) // 24)]}
    merger = LoraMerger(unet)
    merges, restores = [], []
    for _ in range(args.reps):
        merges.append(timed(lambda: merger.apply(lora_a, 0.8), device, 1))
        restores.append(timed(merger.restore, device, 1))
    r["merge_s"], r["restore_s"] = statistics.median(merges), statistics.median(restores)
    r["merge_min_s"], r["restore_min_s"] = min(merges), min(restores)
    r["restore_exact"] = all(torch.equal(modules[n].weight, w) for n, w in reference.items())
    print(f"merge {r['merge_s']:.3f}s  restore {r['restore_s']:.3f}s  exact {r['restore_exact']}", flush=True)

    # --- peft adapters, and the forward pass with and without them ------------------------------
    # Interleaved (plain, inject, adapters, remove) so that load from other processes hits both
    # sides alike; the minimum is the least disturbed figure, the median the typical one.
    x = torch.randn(2, 4, args.latent, args.latent).to(device, dtype)
    t = torch.tensor([500, 500], device=device)
    ctx = torch.randn(2, 77, 768).to(device, dtype)

    def forward():
        with torch.no_grad():
            unet(x, t, ctx)

    def inject():
        inject_lora(unet, names, rank=args.rank, alpha=args.rank / 2)
        load_into_layers(lora_a, unet)
        if device.type != "cpu" or dtype != torch.float32:
            unet.to(device, dtype)

    plain, peft, injects, removes, swaps = [], [], [], [], []
    for _ in range(args.forward_reps):
        forward()  # warm-up without the adapters
        plain.append(timed(forward, device, 1))
        injects.append(timed(inject, device, 1))
        forward()  # warm-up with the adapters
        peft.append(timed(forward, device, 1))
        swaps.append(timed(lambda: load_into_layers(lora_b, unet), device, 1))
        removes.append(timed(lambda: remove_adapters(unet), device, 1))
    r["forward_plain_s"], r["forward_plain_min_s"] = statistics.median(plain), min(plain)
    r["forward_peft_s"], r["forward_peft_min_s"] = statistics.median(peft), min(peft)
    r["forward_overhead_pct"] = 100 * (r["forward_peft_min_s"] / r["forward_plain_min_s"] - 1)
    r["inject_s"], r["swap_s"], r["remove_s"] = statistics.median(injects), statistics.median(swaps), statistics.median(removes)
    print(f"forward plain {r['forward_plain_min_s']:.3f}s  with adapters {r['forward_peft_min_s']:.3f}s "
          f"({r['forward_overhead_pct']:+.1f}%, min of {args.forward_reps})", flush=True)
    print(f"inject {r['inject_s']:.3f}s  swap {r['swap_s']:.3f}s  remove {r['remove_s']:.3f}s", flush=True)
    print(json.dumps(r, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
