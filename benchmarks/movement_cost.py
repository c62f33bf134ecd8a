"""What the live view's per-block movement costs: one report over a full-size model's LoRA.

The trainer reports how far each block's LoRA has moved about 40 times a run. This times one
report for SD1.5's and SDXL's real module shapes (from the bundled configs, as the "What will be
trained" panel lists them) at a chosen rank, with random up/down weights, against forming each
B·A product outright (the direct way), on the CPU or with --cuda.

    python benchmarks/movement_cost.py [--rank 16] [--rounds 5] [--cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "extension"))


def state_dict(family: str, rank: int, device: str) -> dict:
    import torch

    from instant_lora.lora.anatomy import lora_anatomy
    from instant_lora.models import BUNDLED_CONFIGS

    g = torch.Generator().manual_seed(0)
    sd = {}
    for row in lora_anatomy(BUNDLED_CONFIGS[family], rank).rows:
        sd[f"{row.name}.lora_down.weight"] = torch.randn(rank, row.in_features, generator=g).to(device)
        sd[f"{row.name}.lora_up.weight"] = torch.randn(row.out_features, rank, generator=g).to(device) * 1e-3
        sd[f"{row.name}.alpha"] = torch.tensor(float(rank) / 2)
    return sd


def direct(sd: dict) -> float:
    """The same number by forming every scale·B·A (what the r x r identity avoids)."""
    import torch

    total = 0.0
    for key in [k for k in sd if k.endswith(".lora_down.weight")]:
        name = key[: -len(".lora_down.weight")]
        down, up = sd[key], sd[f"{name}.lora_up.weight"]
        scale = float(sd[f"{name}.alpha"]) / down.shape[0]
        total += float(torch.linalg.matrix_norm(scale * (up @ down)) ** 2)
    return total


def timed(fn, rounds: int, cuda: bool) -> float:
    import torch

    best = float("inf")
    for _ in range(rounds):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    import torch

    from instant_lora.lora import movement

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cuda", action="store_true")
    args = p.parse_args(argv)
    device = "cuda" if args.cuda else "cpu"
    print(f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, rank {args.rank}")
    print("| model | modules | movement report (r x r identity) | forming each B·A | ratio |")
    print("|---|---|---|---|---|")
    for family, label in (("sd1", "SD1.5"), ("sdxl", "SDXL")):
        sd = state_dict(family, args.rank, device)
        fast = movement.from_state_dict(sd)
        total = sum(v * v for v in fast.values())
        assert abs(total - direct(sd)) <= 1e-3 * max(total, 1e-12), "the two ways disagree"
        t_fast = timed(lambda: movement.from_state_dict(sd), args.rounds, args.cuda)
        t_direct = timed(lambda: direct(sd), max(1, args.rounds // 2), args.cuda)
        modules = sum(k.endswith(".lora_down.weight") for k in sd)
        print(f"| {label} | {modules} | {t_fast * 1e3:.1f} ms | {t_direct * 1e3:.0f} ms | {t_direct / t_fast:.0f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
