"""SDXL-shaped training speed on the CPU, and the activation counts behind the memory estimate.

1. Speed (default). A mid-size SDXL-shaped model, random weights, trained through the real
   `instant_lora.train.loop.train` at 256 px (fp32, rank 16, batch 1, cached latents): SDXL's block
   layout (a first level without attention, two resnets per level, transformer layers increasing
   with depth, linear projections, size/crop `text_time` conditioning fed with the second encoder's
   pooled output, two text encoders whose penultimate layers are concatenated), only narrow. The
   modes alternate over the rounds in one process (A B C D, then D C B A, ...), each round on a
   fresh copy of the same model; per mode the median of the rounds' steps/s, the median of its
   ratios to the UNet-only mode of the same round, and every round:
     - UNet only: text encoders frozen, their outputs cached (they leave the computation);
     - text encoders trained: both encoders run forward and backward every step (no caching);
     - each of those with gradient checkpointing.
   CPU seconds per step (all threads) are printed too: a wall time far above CPU / threads means
   other processes took the cores.

2. `--cuda`: the real SDXL architecture (bundled config, random weights) with the "SDXL 12 GB"
   preset as it is (1024 px, bf16, UNet only, checkpointing, cached latents, Adafactor) through the
   same `train`: s/step, and the GPU memory PyTorch allocated at its peak while loading and caching
   (up to the first step) and while training, beside what the plan's memory estimate says for it.

3. `--activations`: what autograd keeps for the backward pass of the real SD1.5, SD2.x and SDXL
   UNets (bundled configs, random weights) with LoRA on the default targets (rank 16), counted with
   saved-tensor hooks during one forward pass at 256 px (latent 32x32): bf16 weights, fp32 LoRA,
   autocast, with CUDA autocast's fp32 layer/group norms emulated on the CPU; once without and once
   with gradient checkpointing (what stays between the checkpointed blocks, and the largest block,
   which the backward pass recomputes). Also, followed tensor by tensor until each is freed (a
   dispatch mode), the VAE's most live bytes in fp32 while encoding and decoding one 256 px image,
   and one fp32 training step's bytes after the forward pass against the backward pass's peak.
   These are the constants of `instant_lora/train/memory_estimate.py`. bf16 is slow on most CPUs:
   about 20 minutes on 2 cores, 12 GB of RAM (SDXL's UNet in fp32 for the step).

    OMP_NUM_THREADS=2 python benchmarks/sdxl_speed.py                  # about 5 min on 2 idle cores
    OMP_NUM_THREADS=2 python benchmarks/sdxl_speed.py --rounds 2 --steps 3   # a quick look
    OMP_NUM_THREADS=2 python benchmarks/sdxl_speed.py --activations
    python benchmarks/sdxl_speed.py --cuda [--steps 20]               # a GPU, 16 GB of RAM
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "extension"))

# SDXL base: channels (320, 640, 1280), transformer layers (0, 2, 10), heads of 64, context 2048 =
# 768 (CLIP-L, 12 layers) + 1280 (bigG, 32 layers), 6 size numbers x 256 + pooled 1280.
# Here: channels (64, 128, 256), transformer layers (0, 2, 4), heads of 32, context 384 = 128 + 256.
MID_SDXL_UNET = dict(
    sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(64, 128, 256),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=(2, 4, 8), use_linear_projection=True, transformer_layers_per_block=(1, 2, 4),
    addition_embed_type="text_time", addition_time_embed_dim=32,
    projection_class_embeddings_input_dim=6 * 32 + 256,  # 6 size numbers x 32 + the pooled second encoder (256)
    cross_attention_dim=128 + 256, norm_num_groups=32,
)
MID_SDXL_TEXT = dict(vocab_size=49408, hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                     max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=128,
                     bos_token_id=0, eos_token_id=2, pad_token_id=1)
MID_SDXL_TEXT_2 = dict(MID_SDXL_TEXT, hidden_size=256, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=8,
                       hidden_act="gelu", projection_dim=256)

MODES = [
    ("UNet only (text encoders frozen, outputs cached)", dict(network_train_unet_only=True)),
    ("text encoders trained (no caching)", dict(network_train_unet_only=False)),
    ("UNet only + gradient checkpointing", dict(network_train_unet_only=True, gradient_checkpointing=True)),
    ("text encoders trained + gradient checkpointing", dict(network_train_unet_only=False, gradient_checkpointing=True)),
]


from train_speed import make_dataset  # noqa: E402  (the same benchmark images)


def build_model(seed: int = 0):
    from instant_lora.tiny import MID_VAE, build_tiny_sdxl

    return build_tiny_sdxl(seed, unet=MID_SDXL_UNET, text=MID_SDXL_TEXT, text_2=MID_SDXL_TEXT_2, vae=MID_VAE)


def parameter_counts(model) -> dict:
    def n(net):
        return sum(p.numel() for p in net.parameters())

    return {"unet": n(model.unet), "text_encoder": n(model.text_encoder), "text_encoder_2": n(model.text_encoder_2),
            "vae": n(model.vae)}


def train_one(base, options: dict, data: Path, out: Path, size: int, warmup: int, steps: int) -> dict:
    from instant_lora.config import TrainConfig
    from instant_lora.train.events import Step
    from instant_lora.train.loop import train

    wall, cpu = [], []

    def sink(event):
        if isinstance(event, Step):
            wall.append(time.perf_counter())
            cpu.append(time.process_time())

    config = TrainConfig(pretrained_model_name_or_path="random", train_data_dir=str(data), output_dir=str(out),
                         resolution=f"{size},{size}", network_dim=16, network_alpha=8.0, learning_rate=1e-4,
                         max_train_steps=warmup + steps, seed=0, mixed_precision="no", cache_latents=True,
                         output_name="bench", **options)
    train(config, model=copy.deepcopy(base), sinks=[sink])
    # wall[i] closes step i+1: the timed steps are warmup+1 .. warmup+steps
    first, last = warmup - 1, len(wall) - 1
    seconds = wall[last] - wall[first]
    return {"steps_per_s": (last - first) / seconds, "cpu_s_per_step": (cpu[last] - cpu[first]) / (last - first),
            "step_s": [b - a for a, b in zip(wall[first:last], wall[first + 1:last + 1])]}


def speed(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    base = build_model()
    counts = parameter_counts(base)
    rounds: dict = {name: [] for name, _ in MODES}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "data", args.images, args.size)
        order = list(range(len(MODES)))
        for r in range(args.rounds):
            for i in (order if r % 2 == 0 else order[::-1]):
                name, options = MODES[i]
                result = train_one(base, options, data, Path(tmp) / f"out{r}{i}", args.size, args.warmup, args.steps)
                rounds[name].append(result)
                print(f"round {r + 1} {name}: {result['steps_per_s']:.3f} steps/s", file=sys.stderr, flush=True)
    total = time.perf_counter() - t0
    medians = {name: statistics.median(x["steps_per_s"] for x in runs) for name, runs in rounds.items()}
    base_runs = rounds[MODES[0][0]]
    # each round's rate over the UNet-only rate of the same round: steadier than the medians' ratio
    # when other processes slow whole rounds down
    ratios = {name: statistics.median(x["steps_per_s"] / b["steps_per_s"] for x, b in zip(runs, base_runs))
              for name, runs in rounds.items()}
    print(f"SDXL-shaped model, {args.size} px, batch 1, rank 16, fp32, {args.threads} threads; "
          f"{args.rounds} rounds x {args.steps} timed steps after {args.warmup}; parameters: "
          + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in counts.items()) + f"; {total / 60:.1f} min\n")
    print("| mode | steps/s (median) | vs UNet only (median of the rounds' ratios) | s/step | CPU s/step | steps/s, each round |")
    print("|---|---|---|---|---|---|")
    for name, runs in rounds.items():
        rate = medians[name]
        cpu = statistics.median(x["cpu_s_per_step"] for x in runs)
        each = ", ".join(f"{x['steps_per_s']:.2f}" for x in runs)
        print(f"| {name} | {rate:.2f} | {ratios[name]:.2f}x | {1 / rate:.2f} | {cpu:.2f} | {each} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"counts": counts, "rounds": rounds, "total_s": total, "args": vars(args)}, indent=1))


# ---------------------------------------------------------------------------------- CUDA

def sdxl_random_model():
    """SDXL base's real architecture (the bundled configs), random weights."""
    from instant_lora.models import BUNDLED_SDXL_CONFIG
    from instant_lora.tiny import build_tiny_sdxl

    def cfg(sub):
        d = json.loads((BUNDLED_SDXL_CONFIG / sub / "config.json").read_text())
        return {k: v for k, v in d.items() if not k.startswith("_") and k not in ("architectures", "torch_dtype", "model_type")}

    return build_tiny_sdxl(0, unet=cfg("unet"), text=cfg("text_encoder"), text_2=cfg("text_encoder_2"), vae=cfg("vae"))


def cuda(args) -> None:
    import torch

    from instant_lora.presets import BUILTIN_DIR, load_preset
    from instant_lora.request import RunRequest, prepare_run
    from instant_lora.train.events import Step
    from instant_lora.train.loop import _config_values, train
    from instant_lora.train.memory_estimate import FAMILY_SIZES, estimate_memory, gb

    if not torch.cuda.is_available():
        raise SystemExit("--cuda needs a CUDA GPU")
    values = load_preset(BUILTIN_DIR / "SDXL 12 GB.json")[0]
    size = int(str(values["resolution"]).split(",")[0])
    model = sdxl_random_model()
    wall, marks = [], {}

    def sink(event):
        if isinstance(event, Step):
            torch.cuda.synchronize()
            wall.append(time.perf_counter())
            if len(wall) == 1:  # loading, caching and the first step
                marks["caching_peak"] = torch.cuda.max_memory_allocated()
                marks["caching_reserved"] = torch.cuda.max_memory_reserved()
                torch.cuda.reset_peak_memory_stats()

    from instant_lora.config import TrainConfig

    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "data", args.images, size)
        config = TrainConfig(**{**values, "pretrained_model_name_or_path": "random", "train_data_dir": str(data),
                                "output_dir": str(Path(tmp) / "out"), "output_name": "bench", "seed": 0,
                                "max_train_epochs": None, "max_train_steps": args.warmup + args.steps})
        prepared = prepare_run(RunRequest(front="config", values=_config_values(config)), cuda=True)
        estimate = estimate_memory(prepared.plan, optimizer=values["optimizer_type"], family="sdxl",
                                   sizes=FAMILY_SIZES["sdxl"])  # "random" is no file to read
        torch.cuda.reset_peak_memory_stats()
        train(prepared, model=model, sinks=[sink])
    steps = [b - a for a, b in zip(wall[args.warmup - 1:], wall[args.warmup:])]
    total = torch.cuda.mem_get_info()[1]
    print(f"{torch.cuda.get_device_name()} ({total / 2 ** 30:.0f} GB), SDXL architecture, random weights, the SDXL 12 GB preset "
          f"at {size} px, {args.images} images; median of {len(steps)} steps after {args.warmup}\n")
    print("| | measured | the plan's estimate |")
    print("|---|---|---|")
    print(f"| s/step | {statistics.median(steps):.2f} | |")
    print(f"| loading + caching + first step: peak allocated (reserved) GB | {marks['caching_peak'] / 2 ** 30:.1f} "
          f"({marks['caching_reserved'] / 2 ** 30:.1f}) | {gb(estimate.caching)} with the CUDA context |")
    print(f"| training: peak allocated (reserved) GB | {torch.cuda.max_memory_allocated() / 2 ** 30:.1f} "
          f"({torch.cuda.max_memory_reserved() / 2 ** 30:.1f}) | {gb(estimate.training)} with the CUDA context |")


# ---------------------------------------------------------------------------------- activations

class _Saved:
    """Bytes of the distinct storages handed to autograd for the backward pass (parameters excluded)."""

    def __init__(self, params):
        self.params = {p.untyped_storage().data_ptr() for p in params}
        self.seen: dict = {}

    def add(self, t):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr and ptr not in self.params:
            self.seen[ptr] = storage.nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.seen.values())


def _cuda_autocast_norms():
    """CUDA autocast runs group_norm and layer_norm in fp32 (its fp32 list); CPU autocast keeps
    bf16. Patch torch.nn.functional so the CPU count holds what a GPU would keep."""
    import torch
    import torch.nn.functional as F

    def fp32(fn):
        def run(x, *args, **kw):
            with torch.autocast("cpu", enabled=False):
                args = [a.float() if torch.is_tensor(a) else a for a in args]
                kw = {k: (v.float() if torch.is_tensor(v) else v) for k, v in kw.items()}
                return fn(x.float(), *args, **kw)
        return run

    F.group_norm, F.layer_norm = fp32(F.group_norm), fp32(F.layer_norm)


def count_unet(family: str, latent: int, checkpointing: bool) -> dict:
    import torch
    from diffusers import UNet2DConditionModel

    from instant_lora.lora.layers import inject_lora, lora_parameters
    from instant_lora.lora.targets import unet_targets
    from instant_lora.models import BUNDLED_CONFIGS

    _cuda_autocast_norms()
    cfg = UNet2DConditionModel.load_config(str(BUNDLED_CONFIGS[family] / "unet"))
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(cfg)
    unet = unet.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.02)
    unet.requires_grad_(False)
    inject_lora(unet, unet_targets(unet), 16, 8.0)
    for p in lora_parameters(unet):
        p.data = p.data.float()
        p.requires_grad_(True)
    unet.train()
    params = list(unet.parameters())
    kept, block = _Saved(params), [0]
    if checkpointing:
        def checkpoint(module, *args):  # count instead of recomputing: the block's inputs stay, its inside once
            for a in args:
                if torch.is_tensor(a):
                    kept.add(a)
            inner = _Saved(params)
            with torch.autograd.graph.saved_tensors_hooks(inner.add, lambda t: t):
                out = module(*args)
            block[0] = max(block[0], inner.total)
            return out
        unet.enable_gradient_checkpointing(checkpoint)
    c = unet.config
    x = torch.randn(1, 4, latent, latent)
    context = torch.randn(1, 77, c.cross_attention_dim, dtype=torch.bfloat16)
    extra = {}
    if c.addition_embed_type == "text_time":
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 1280, dtype=torch.bfloat16),
                                      "time_ids": torch.randn(1, 6, dtype=torch.bfloat16)}
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(kept.add, lambda t: t):
        out = unet(x, torch.tensor([500]), context, **extra).sample
    kept.add(out)
    tokens = latent * latent
    return {"family": family, "latent": latent, "checkpointing": checkpointing, "kept_MB": kept.total / 2 ** 20,
            "block_MB": block[0] / 2 ** 20, "kept_bytes_per_token": kept.total / tokens,
            "block_bytes_per_token": block[0] / tokens, "seconds": time.perf_counter() - t0}


class _Live:
    """The most bytes of tensors alive at once while it is entered (storages in `skip` not counted):
    a dispatch mode follows every op's output until it is freed."""

    def __new__(cls, skip):
        import weakref

        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        class Live(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.refs, self.sizes, self.now, self.peak = {}, {}, 0, 0

            def _drop(self, ptr):
                self.refs[ptr] -= 1
                if not self.refs[ptr]:
                    self.now -= self.sizes.pop(ptr)
                    del self.refs[ptr]

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in tree_flatten(out)[0]:
                    if isinstance(t, torch.Tensor):
                        ptr = t.untyped_storage().data_ptr()
                        if not ptr or ptr in skip:
                            continue
                        if ptr not in self.refs:
                            self.refs[ptr], self.sizes[ptr] = 0, t.untyped_storage().nbytes()
                            self.now += self.sizes[ptr]
                            self.peak = max(self.peak, self.now)
                        self.refs[ptr] += 1
                        weakref.finalize(t, self._drop, ptr)
                return out

        return Live()


def vae_peak(px: int, decode: bool) -> dict:
    """The most bytes alive at once (parameters and the input excluded) while the fp32 VAE encodes
    or decodes one image, without gradients."""
    import torch
    from diffusers import AutoencoderKL

    from instant_lora.models import BUNDLED_CONFIGS

    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(BUNDLED_CONFIGS["sdxl"] / "vae"))).eval()
    x = torch.randn(1, 4, px // 8, px // 8) if decode else torch.randn(1, 3, px, px)
    live = _Live({p.untyped_storage().data_ptr() for p in vae.parameters()} | {x.untyped_storage().data_ptr()})
    with torch.no_grad(), live:
        (vae.decode(x).sample if decode else vae.encode(x).latent_dist.mean)
    return {"vae": "decode" if decode else "encode", "px": px, "peak_MB": live.peak / 2 ** 20,
            "GiB_per_megapixel": live.peak / 2 ** 30 / (px * px / 2 ** 20)}


def step_peak(family: str, latent: int, checkpointing: bool) -> dict:
    """One training step of the real UNet (fp32, LoRA rank 16): the bytes alive after the forward
    pass (what autograd keeps) and the most alive at once through the backward pass, which includes
    the LoRA's gradients as they are allocated (parameters and inputs excluded)."""
    import torch
    from diffusers import UNet2DConditionModel

    from instant_lora.lora.layers import inject_lora, lora_parameters
    from instant_lora.lora.targets import unet_targets
    from instant_lora.models import BUNDLED_CONFIGS

    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(BUNDLED_CONFIGS[family] / "unet")))
    unet.requires_grad_(False)
    inject_lora(unet, unet_targets(unet), 16, 8.0)
    lora = lora_parameters(unet)
    for p in lora:
        p.requires_grad_(True)
    unet.train()
    if checkpointing:
        unet.enable_gradient_checkpointing()
    c = unet.config
    x, context = torch.randn(1, 4, latent, latent), torch.randn(1, 77, c.cross_attention_dim)
    extra = {}
    if c.addition_embed_type == "text_time":
        extra["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 1280), "time_ids": torch.randn(1, 6)}
    inputs = [x, context, *extra.get("added_cond_kwargs", {}).values()]
    live = _Live({t.untyped_storage().data_ptr() for t in [*unet.parameters(), *inputs]})
    with live:
        out = unet(x, torch.tensor([500]), context, **extra).sample
        after_forward = live.now
        torch.nn.functional.mse_loss(out, torch.randn_like(out)).backward()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in lora)
    return {"step": family, "latent": latent, "checkpointing": checkpointing, "after_forward_MB": after_forward / 2 ** 20,
            "peak_MB": live.peak / 2 ** 20, "lora_grads_MB": grads / 2 ** 20}


def activations(args) -> None:
    """Each count in its own process (the patched norms and the 5 GB SDXL UNet go with it)."""
    rows = []
    jobs = [["--count", f, "0"] for f in ("sd1", "sd2", "sdxl")] + [["--count", f, "1"] for f in ("sd1", "sd2", "sdxl")]
    jobs += [["--vae", "encode"], ["--vae", "decode"]]
    jobs += [["--step", f, gc] for f in ("sd1", "sdxl") for gc in ("0", "1")]
    for job in jobs:
        cmd = [sys.executable, __file__, *job, "--latent", str(args.latent), "--threads", str(args.threads)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(r.stderr[-3000:])
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    px = args.latent * 8
    print(f"Kept for the backward pass, {px} px (latent {args.latent}x{args.latent}), batch 1, LoRA rank 16 on the default "
          "targets, bf16 autocast with fp32 norms:\n")
    print("| family | no checkpointing: MB | bytes / latent token | checkpointing: kept MB | + largest block MB | "
          "bytes / token (kept, block) |")
    print("|---|---|---|---|---|---|")
    by = {(r["family"], r["checkpointing"]): r for r in rows if "family" in r}
    for family in ("sd1", "sd2", "sdxl"):
        a, b = by[(family, False)], by[(family, True)]
        print(f"| {family} | {a['kept_MB']:.0f} | {a['kept_bytes_per_token']:,.0f} | {b['kept_MB']:.0f} | {b['block_MB']:.0f} | "
              f"{b['kept_bytes_per_token']:,.0f}, {b['block_bytes_per_token']:,.0f} |")
    for r in rows:
        if "vae" in r:
            print(f"\nVAE {r['vae']}, fp32, {r['px']} px, one image: peak {r['peak_MB']:.0f} MB = {r['GiB_per_megapixel']:.2f} GiB per megapixel")
    print(f"\nOne training step, fp32, {px} px: MB alive after the forward pass / at the peak of the backward pass "
          "(with the LoRA's gradients, MB):\n")
    print("| family | checkpointing | after forward | peak | LoRA gradients |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "step" in r:
            print(f"| {r['step']} | {'on' if r['checkpointing'] else 'off'} | {r['after_forward_MB']:.0f} | {r['peak_MB']:.0f} | "
                  f"{r['lora_grads_MB']:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="rounds over the modes (the median is reported)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per mode and round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--size", type=int, default=256, help="training resolution (px)")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    ap.add_argument("--json", help="write every round's figures here")
    ap.add_argument("--activations", action="store_true", help="count the real UNets' activations instead")
    ap.add_argument("--cuda", action="store_true", help="the real SDXL architecture with the SDXL 12 GB preset on a GPU")
    ap.add_argument("--latent", type=int, default=32, help="--activations: latent side (32 = 256 px)")
    ap.add_argument("--count", nargs=2, help=argparse.SUPPRESS)  # internal: one count in this process
    ap.add_argument("--vae", help=argparse.SUPPRESS)
    ap.add_argument("--step", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.count or args.vae or args.step:
        import torch

        torch.set_num_threads(args.threads)
        if args.count:
            result = count_unet(args.count[0], args.latent, args.count[1] == "1")
        elif args.step:
            result = step_peak(args.step[0], args.latent, args.step[1] == "1")
        else:
            result = vae_peak(args.latent * 8, args.vae == "decode")
        print(json.dumps(result))
    elif args.activations:
        activations(args)
    elif args.cuda:
        cuda(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
