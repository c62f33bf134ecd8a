"""One process against two (torchrun, gloo on the CPU; nccl with --cuda), at the same global batch.

A mid-size SD-shaped model (benchmarks/train_speed.py's) saved as a diffusers folder trains through
the real command line: one process with batch 2 and all the cores, against two processes with
batch 1 each and half the cores each (global batch 2 both). The steps/s come from the run's own
JSONL log (after the first steps, so loading and caching do not count). Variants alternate in
each round, so the ratio is measured side by side even on a noisy shared machine.

    python benchmarks/multi_process.py                 # CPU: 2 rounds, 20 steps at 128 px
    python benchmarks/multi_process.py --cuda          # GPUs: one against all visible
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "extension"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def steps_per_second(log_dir: Path, skip: int) -> float:
    events = [json.loads(line) for p in log_dir.glob("*.jsonl") for line in p.read_text().splitlines()]
    steps = [e for e in events if e["event"] == "step"]
    a, b = steps[skip], steps[-1]
    return (b["step"] - a["step"]) / (b["time"] - a["time"])


def run(model: Path, data: Path, out: Path, processes: int, batch: int, steps: int, threads: int, cuda: bool) -> float:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS=str(threads))
    head = [sys.executable]
    if processes > 1:
        head += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_port", "29581"]
    args = [f"--pretrained_model_name_or_path={model}", f"--train_data_dir={data}", f"--output_dir={out}",
            "--resolution=128,128", "--network_dim=16", "--network_alpha=8", "--learning_rate=1e-4",
            f"--max_train_steps={steps}", f"--train_batch_size={batch}", "--seed=1", "--cache_latents",
            "--network_train_unet_only", "--output_name=bench"] + (["--mixed_precision=fp16"] if cuda else [])
    subprocess.run([*head, str(ROOT / "standalone_app.py"), "train", *args], check=True, env=env, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return steps_per_second(out / "logs", skip=min(5, steps // 3))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cuda", action="store_true")
    args = p.parse_args()
    from train_speed import make_dataset

    from instant_lora.tiny import MID_TEXT, MID_UNET, MID_VAE, build_tiny_sd, save_diffusers_folder

    import torch

    gpus = torch.cuda.device_count() if args.cuda else 0
    many = max(2, gpus)
    cores = os.cpu_count() or 2
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = save_diffusers_folder(build_tiny_sd(0, unet=MID_UNET, text=MID_TEXT, vae=MID_VAE), tmp / "model")
        data = make_dataset(tmp / "data", 8, 128)
        results: dict = {1: [], many: []}
        for r in range(args.rounds):
            for procs in (1, many):
                batch = many // procs  # the same global batch
                threads = max(1, cores // procs)
                results[procs].append(run(model, data, tmp / f"out-{r}-{procs}", procs, batch, args.steps, threads,
                                          args.cuda))
                print(f"round {r + 1}: {procs} process(es) x batch {batch}: {results[procs][-1]:.3f} steps/s", flush=True)
    print(f"\n| processes | batch per process | global batch | steps/s (median of {args.rounds}) | samples/s |")
    print("|---|---|---|---|---|")
    for procs, values in results.items():
        sps = statistics.median(values)
        print(f"| {procs} | {many // procs} | {many} | {sps:.3f} | {sps * many:.3f} |")
    one, two = statistics.median(results[1]), statistics.median(results[many])
    print(f"\n{many} processes / 1 process: {two / one:.2f}x")


if __name__ == "__main__":
    main()
