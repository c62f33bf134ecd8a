"""About how long a run will take, said before it starts, with where the figure comes from.

One figure per device: seconds per optimizer step of SD1.5 at 512x512, batch 1, fp16, LoRA on the
UNet and the text encoder (the app's usual run). A CUDA GPU is looked up by name in a table read
from public user reports (approximate: the same card differs 2x between drivers, attention
kernels and settings); a CPU uses the figures `benchmarks/step_time.py` measured here, scaled by
the number of threads. That figure is then scaled for the run: pixels, batch, gradient
accumulation, gradient checkpointing, text-encoder training, fp32, latents not cached, the model
family (SD2.x costs what SD1.5 does per pixel, with a larger text encoder; SDXL is scaled from the
SD1.5 figures by public SDXL reports on a GPU and by its UNet's FLOPs per pixel on the CPU) and the
size of the model's UNet against its family's (its parameter count, read from the checkpoint's
safetensors header without loading a weight). Loading the model, caching latents and rendering
samples are added. On a CUDA GPU the plan also says how much GPU memory the run needs
(train/memory_estimate.py).

No torch at import: `estimate_plan` takes the device as a `Device`; `detect_device` (which asks
torch) sits beside it for the loop and the UI.
"""

from __future__ import annotations

from ..i18n import t  # marks the words the UI translates; the text stays English here

import json
import math
import os
import struct
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

SD15_UNET_PARAMS = 859_520_964  # the bundled SD1.5 UNet config, counted (benchmarks/apply_speed.py)
SD15_CHECKPOINT_BYTES = 2.1e9  # a pruned fp16 SD1.5 checkpoint, for a model whose size is unknown
# A family's usual checkpoint file (fp16 pruned SD1.5 and SD2.1, sd_xl_base_1.0.safetensors).
FAMILY_CHECKPOINT_BYTES = {"sd1": SD15_CHECKPOINT_BYTES, "sd2": 2.6e9, "sdxl": 6.9e9}

# Seconds per step, SD1.5, 512x512, batch 1, fp16, UNet + text-encoder LoRA (rank 16-32), latents
# cached. Substrings of torch.cuda.get_device_name(), lower case, first match wins (so "a100"
# comes before "a10", "4060 ti" before "4060"). All figures are approximate. Sources:
#  [1] bmaltais/kohya_ss#1847 (2024-01): the maintainer gets ~1.7 it/s on an RTX 3090 with an
#      SD1.5 LoRA config -> 0.55-0.6 s/step.
#  [2] kohya-ss/sd-scripts#326 (2023-03): ~3 it/s on an RTX 3070 Ti (AdamW8bit, torch 2.0; batch
#      size not given).
#  [3] bmaltais/kohya_ss#1288 (2023-08): one tester, same SDXL config: RTX 3060 2.4 s/it, RTX 3090
#      1.23 s/it -> a 3060 takes about twice a 3090's time per step.
#  [4] bmaltais/kohya_ss#961 (2023-08): a working 4090 is reported 35-57 % faster than a 3090.
#  [5] huggingface.co/docs/diffusers/en/training/lora: "A full training run takes ~5 hours on a
#      2080 Ti" = 15,000 steps x 4 accumulated images at 512 -> ~0.3 s per image (UNet attention
#      LoRA only, VAE encoding every image).
#  [6] TheLastBen/fast-stable-diffusion#2330 (2023-07): SD1.5 DreamBooth at 640 px: A5000 2.45 it/s
#      with the text encoder, Colab T4 0.85 it/s (UNet) -> at 512 px (x 0.64 pixels): A5000
#      ~0.26 s, T4 ~0.75 s (full fine-tuning: at least the work of a LoRA step).
#  [7] bmaltais/kohya_ss#1837 (2024-01): RTX 2070 8 GB, 1.90 s/it (settings not given).
# Where reports disagree the table takes a middle value. Rows marked "placed" have no report
# found: they sit between the sourced cards by their speed class, rounded towards slower.
GPU_TABLE: tuple[tuple[str, str, float], ...] = (
    # (substring, label, s/step)
    ("h200", "H200", 0.15),  # placed: faster than an A100, though batch-1 steps are launch-overhead bound
    ("h100", "H100", 0.15),  # placed
    ("a100", "A100", 0.25),  # placed: at least [6]'s A5000
    ("l40", "L40/L40S", 0.3),  # placed: Ada, like a 4090
    ("a6000", "RTX A6000", 0.3),  # [6]'s A5000 class
    ("a5000", "RTX A5000", 0.3),  # [6]
    ("a4000", "RTX A4000", 0.55),  # placed: 3070 class
    ("a10g", "A10G", 0.55),  # placed: 3080/3090 class
    ("a10", "A10", 0.55),  # placed
    ("l4", "L4", 0.75),  # placed: near a T4 to 3060
    ("t4", "T4", 0.8),  # [6]
    ("v100", "V100", 0.5),  # placed: 2080 Ti to 3090 class
    ("5090", "RTX 5090", 0.25),  # placed: faster than a 4090 [4]
    ("5080", "RTX 5080", 0.35),  # placed
    ("5070 ti", "RTX 5070 Ti", 0.4),  # placed
    ("5070", "RTX 5070", 0.5),  # placed
    ("5060", "RTX 5060", 0.7),  # placed
    ("4090", "RTX 4090", 0.35),  # [1] x 1/1.5 [4]
    ("4080", "RTX 4080", 0.45),  # placed
    ("4070 ti", "RTX 4070 Ti", 0.5),  # placed
    ("4070", "RTX 4070", 0.6),  # placed
    ("4060 ti", "RTX 4060 Ti", 0.75),  # placed
    ("4060", "RTX 4060", 0.9),  # placed
    ("4050", "RTX 4050", 1.1),  # placed
    ("3090", "RTX 3090", 0.55),  # [1]
    ("3080", "RTX 3080", 0.6),  # placed just under the 3090
    ("3070", "RTX 3070 (Ti)", 0.5),  # [2] (0.33 s reported; rounded towards the 3090's 0.55)
    ("3060 ti", "RTX 3060 Ti", 0.8),  # placed
    ("3060", "RTX 3060", 1.1),  # [3]: twice [1]
    ("3050", "RTX 3050", 1.6),  # placed
    ("2080", "RTX 2080 (Ti)", 0.45),  # [5] + text encoder and all 192 UNet modules
    ("2070", "RTX 2070", 0.8),  # between [5] scaled (~0.6) and [7] (1.9 s/it, settings unknown)
    ("2060", "RTX 2060", 1.0),  # placed
    ("titan rtx", "Titan RTX", 0.45),  # placed: 2080 Ti class
    ("1660", "GTX 1660", 2.5),  # placed: no tensor cores; fp16 NaNs reported (sd-scripts#293)
    ("1080", "GTX 1080", 2.0),  # placed: no tensor cores
    ("1070", "GTX 1070", 2.5),  # placed
)
UNKNOWN_GPU = ("assumed RTX 3060 class", 1.1)
GPU_TE_SHARE = 0.1  # of a table step: the text encoder's forward + backward (77 tokens)
GPU_MIN_PIXELS = 0.35  # below ~300x300 a GPU step stops getting faster (launch overhead)
GPU_BATCH_EXTRA = 0.8  # each image after the first in a batch costs this much of the first
GPU_FP32 = 2.0  # --mixed_precision=no on a GPU
# SDXL on a GPU, scaled from the SD1.5 figures above: one tester's same-config runs put an SDXL
# LoRA step at 1024x1024 at 2.2x the SD1.5 step at 512 on the same card (bmaltais/kohya_ss#1288:
# RTX 3060 2.4 s/it, RTX 3090 1.23 s/it, against [1] and [3]); another RTX 3090 at 1.2 s/it
# (bmaltais/kohya_ss#1730, once the run fit in VRAM). Settings beyond batch 1 were not given.
# By FLOPs alone it would be 8.4x (6.76 against 0.80 TFLOP per UNet forward, counted below): the
# SD1.5 step at 512 px is far from using a GPU's arithmetic, SDXL's at 1024 px much less so.
SDXL_GPU_AT_1024 = 2.2
# Below ~720x720 an SDXL step stops getting faster on a GPU: 70 transformer blocks (SD1.5: 16)
# are that many more kernels whatever the pixels.
SDXL_GPU_MIN_PIXELS = 0.5  # of 1024x1024
# The CPU is compute-bound: SDXL's UNet forward FLOPs over SD1.5's at the same size, counted with
# torch.utils.flop_counter on the real architectures (meta device): 428 / 180 GFLOP at 256 px,
# 1589 / 803 at 512, 3641 / 2148 at 768, 6761 / 4674 at 1024. SD2.x: 181 / 180 at 256 and
# 804 / 803 at 512, so SD1.5's figures as they are.
FAMILY_FLOPS_RATIO = {
    "sdxl": {256 * 256: 2.38, 512 * 512: 1.98, 768 * 768: 1.70, 1024 * 1024: 1.45},
}

# CPU, fp32, measured by `python benchmarks/step_time.py` (see benchmarks/RESULTS.md): the real
# SD1.5 UNet + text encoder, random weights, LoRA rank 16 injected as the trainer does, batch 1,
# 2 threads on an idle 2-core VM. Other processes on the same cores made the same steps 2-8x
# slower there; the figures are the idle machine's.
CPU_MEASURED = {
    "threads": 2, "machine": "a 2-core AMD EPYC VM",
    "unet_te": {256: 4.9, 384: 8.9, 512: 15.8},  # s/step, UNet + text-encoder LoRA
    "te": 1.3,  # s/step of it for the text encoder (unet+te minus UNet only, at 256 px)
    "checkpointing": 1.37,  # unet+te with gradient checkpointing / without, at 256 px
    "vae": {256: 1.7, 512: 7.1},  # s to encode one image (caching its latent)
}
# Time ~ threads^-0.9: 1 thread took 9.3 s where 2 took 4.9 s (unet+te, 256 px, measured the same
# way); more threads than measured are assumed to help a little less than linearly.
CPU_THREAD_EXPONENT = 0.9
CHECKPOINTING = 1.25  # gradient checkpointing recomputes activations: ~25 % slower
VAE_SHARE = 0.25  # GPU: encoding one image with the (fp32) VAE, as a share of a batch-1 UNet step
# One denoising step (2 UNet forwards for CFG) as a share of a training step's UNet forward +
# backward: ~8 s against ~14.5 s at 512 px on the CPU measured (benchmarks/apply_speed.py, step_time.py).
SAMPLE_STEP_SHARE = 0.5
DEFAULT_SAMPLE_STEPS = 20
LOAD_BASE_S = 10.0  # libraries, configs, moving to the device
LOAD_PER_GB_S = 8.0  # reading and converting the checkpoint
FLOOR_S = 0.02  # the least a step costs whatever the model (a tiny test model)
HOURS = 3600.0
QUICK_TEST = "Quick test"
QUICK_TEST_CPU_RESOLUTION = 256


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" | "cpu"
    name: str = ""  # the GPU's name (torch.cuda.get_device_name) or the CPU's
    threads: int = 1  # CPU threads torch uses
    memory: int = 0  # the GPU's memory in bytes (0: not known)


@dataclass(frozen=True)
class StepTime:
    seconds: float  # per optimizer step with this run's settings
    unet_image_s: float  # one image through the UNet (forward + backward), batch 1: for samples
    vae_image_s: float  # one image through the VAE encoder: caching a latent
    source: str  # where the base figure comes from


@dataclass(frozen=True)
class Estimate:
    total_s: float
    steps: int
    step: StepTime
    load_s: float
    cache_s: float
    sample_s: float
    num_latents: int
    model_note: str
    device: Device
    alternative: tuple | None = None  # (what to change, its total seconds)
    memory: object = None  # memory_estimate.MemoryEstimate on a CUDA GPU; None on the CPU
    memory_advice: str = ""  # what to change when the run needs more than the GPU has
    family_label: str = "SD1.5"  # the model family's name, for the text

    @property
    def takes_hours(self) -> bool:
        return self.total_s >= HOURS

    def short(self) -> str:
        return f"about {format_duration(self.total_s)} (a rough estimate)"

    def lines(self, markdown: bool = False) -> list[str]:
        b = "**" if markdown else ""
        parts = [f"{self.steps:,} steps x ~{format_seconds(self.step.seconds)}/step"]
        parts.append(t("loading ~{duration}", duration=format_duration(self.load_s)))
        if self.num_latents:
            parts.append(t("caching {count} latents ~{duration}", count=self.num_latents, duration=format_duration(self.cache_s)))
        if self.sample_s:
            parts.append(t("samples ~{duration}", duration=format_duration(self.sample_s)))
        short = f"**{self.short()}**" if markdown else self.short()
        lines = [f"estimated time: {short} = {' + '.join(parts)}",
                 f"s/step: {self.step.source}; {self.model_note}. Approximate: drivers, attention kernels "
                 f"and other programs change it; the log shows the real speed after the first steps."]
        if self.device.kind == "cpu" and self.takes_hours:
            line = (f"{b}On this CPU this run will take hours (about {format_duration(self.total_s)}).{b} "
                    f"{self.family_label} trains at a practical speed on a CUDA GPU only.")
            if self.alternative:
                what, seconds = self.alternative
                line += f" To check the data first: {what}, about {format_duration(seconds)} here."
            lines.append(line)
        if self.device.kind == "cuda" and self.memory is not None:
            lines.append(self.memory.line(self.device.memory, markdown))
            if self.memory_advice:
                lines.append(self.memory_advice)
        return lines


def format_duration(seconds: float) -> str:
    s = max(0.0, float(seconds))
    if s < 90:
        return f"{max(1, round(s))} s"
    if s < 60 * 60:
        return f"{round(s / 60)} min"
    if s < 10 * HOURS:
        h, m = divmod(round(s / 600) * 10, 60)
        return f"{h} h" + (f" {m} min" if m else "")
    return f"{round(s / HOURS)} h"


def format_seconds(seconds: float) -> str:
    return f"{seconds:.2g} s" if seconds < 10 else f"{seconds:.0f} s"


# ---- the base figure ------------------------------------------------------------------------------

def gpu_entry(name: str) -> tuple[str, float] | None:
    """(label, s/step) of the table's first row whose substring is in the GPU's name."""
    low = " ".join(str(name or "").lower().replace("-", " ").split())
    for key, label, seconds in GPU_TABLE:
        if key in low:
            return label, seconds
    return None


def _interpolate(points: dict, x: float) -> float:
    """Piecewise linear in x through (key, value) points; beyond the ends, proportional to x."""
    xs = sorted(points)
    if x <= xs[0]:
        return points[xs[0]] * x / xs[0]
    if x >= xs[-1]:
        return points[xs[-1]] * x / xs[-1]
    for a, b in zip(xs, xs[1:]):
        if a <= x <= b:
            return points[a] + (points[b] - points[a]) * (x - a) / (b - a)
    return points[xs[-1]]


def _ratio_at(points: dict, pixels: float) -> float:
    """Piecewise linear in pixels through (pixels, ratio) points; flat beyond the ends."""
    xs = sorted(points)
    if pixels <= xs[0]:
        return points[xs[0]]
    if pixels >= xs[-1]:
        return points[xs[-1]]
    for a, b in zip(xs, xs[1:]):
        if a <= pixels <= b:
            return points[a] + (points[b] - points[a]) * (pixels - a) / (b - a)
    return points[xs[-1]]


def step_time(device: Device, *, width: int = 512, height: int = 512, batch_size: int = 1, accumulation: int = 1,
              train_text_encoder: bool = True, gradient_checkpointing: bool = False, precision: str = "fp16",
              cache_latents: bool = True, model_scale: float = 1.0, family: str | None = None, te_scale: float = 1.0,
              vae_scale: float | None = None) -> StepTime:
    """Seconds per optimizer step for these settings on `device`. `family` ("sd1" | "sd2" |
    "sdxl"; None = SD1.x) picks how the SD1.5 figures scale; `model_scale` is the UNet's size
    against its family's, `te_scale` the text encoder(s)' against SD1.5's, `vae_scale` the VAE's
    (default: model_scale)."""
    pixels = width * height
    sdxl = family == "sdxl"
    if device.kind == "cuda":
        entry = gpu_entry(device.name)
        label, base = entry or UNKNOWN_GPU
        source = (f"table: {label} (public user reports, approximate)" if entry
                  else f"'{device.name}' is not in the table: {label}")
        te = base * GPU_TE_SHARE
        vae = VAE_SHARE * (base - te) * max(pixels / 512 ** 2, GPU_MIN_PIXELS)  # the VAE is the same in every family
        if sdxl:
            unet = (base - te) * SDXL_GPU_AT_1024 * max(pixels / 1024 ** 2, SDXL_GPU_MIN_PIXELS)
        else:
            unet = (base - te) * max(pixels / 512 ** 2, GPU_MIN_PIXELS)
        if precision == "no":
            unet, te = unet * GPU_FP32, te * GPU_FP32
        batch = 1 + GPU_BATCH_EXTRA * (batch_size - 1)
        checkpointing = CHECKPOINTING
    else:
        threads = max(1, int(device.threads or 1))
        scale = (CPU_MEASURED["threads"] / threads) ** CPU_THREAD_EXPONENT
        te = CPU_MEASURED["te"] * scale
        # The measured points, by pixels (of a square side); UNet only = total minus the text encoder.
        unet_points = {size * size: seconds - CPU_MEASURED["te"] for size, seconds in CPU_MEASURED["unet_te"].items()}
        unet = _interpolate(unet_points, pixels) * scale
        if family in FAMILY_FLOPS_RATIO:
            unet *= _ratio_at(FAMILY_FLOPS_RATIO[family], pixels)
        vae = _interpolate({size * size: seconds for size, seconds in CPU_MEASURED["vae"].items()}, pixels) * scale
        batch = batch_size
        checkpointing = CPU_MEASURED["checkpointing"]
        source = (f"CPU, measured on {CPU_MEASURED['machine']} at {CPU_MEASURED['threads']} threads (benchmarks/step_time.py)"
                  + (f", scaled to this machine's {threads} thread{'s' if threads > 1 else ''}" if threads != CPU_MEASURED["threads"] else ""))
    unet, te = unet * model_scale, te * model_scale * te_scale
    vae = vae * (model_scale if vae_scale is None else vae_scale)
    plain_unet = unet
    if gradient_checkpointing:
        unet, te = unet * checkpointing, te * (checkpointing if train_text_encoder else 1.0)
    encode = 0.0 if cache_latents else vae
    micro = (unet + encode) * batch + (te * batch_size if train_text_encoder else 0.0)
    seconds = micro * max(1, accumulation) + FLOOR_S
    source += (f"; scaled to {width}x{height}, batch {batch_size}" + (f" x {accumulation} accumulated" if accumulation > 1 else "")
               + (", UNet + text encoder" if train_text_encoder else ", UNet only")
               + (", gradient checkpointing" if gradient_checkpointing else "") + (", fp32" if precision == "no" else "")
               + ("" if cache_latents else ", latents encoded every step"))
    if sdxl:
        source += ("; SDXL scaled from these SD1.5 figures: " + (
            f"an SDXL step at 1024 px is ~{SDXL_GPU_AT_1024:g}x an SD1.5 step at 512 px on the same card (public reports)"
            if device.kind == "cuda" else
            f"x {_ratio_at(FAMILY_FLOPS_RATIO['sdxl'], pixels):.2g} for its UNet's FLOPs per pixel"))
    return StepTime(seconds=seconds, unet_image_s=plain_unet + FLOOR_S, vae_image_s=vae + FLOOR_S, source=source)


# ---- the model's size, from a file header ------------------------------------------------------

MAX_HEADER_BYTES = 100 * 2 ** 20


def safetensors_shapes(path: Path) -> dict:
    """{tensor name: shape} from a .safetensors file's JSON header; reads no tensor data."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ValueError("too short for a safetensors file")
        (size,) = struct.unpack("<Q", raw)
        if size > MAX_HEADER_BYTES or size > os.path.getsize(path) - 8:
            raise ValueError("not a safetensors header")
        header = json.loads(f.read(size))
    return {k: v.get("shape", []) for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)}


def _count(shapes: dict, prefix: str = "") -> int:
    return sum(math.prod(shape) for name, shape in shapes.items() if name.startswith(prefix))


def _diffusers_unet_files(folder: Path) -> list[Path]:
    unet = folder / "unet"
    for stem in ("diffusion_pytorch_model", "diffusion_pytorch_model.fp16"):
        index = unet / f"{stem}.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
            return [unet / name for name in sorted(set(weight_map.values()))]
        single = unet / f"{stem}.safetensors"
        if single.is_file():
            return [single]
    return []


def unet_parameter_count(path: str | Path) -> int | None:
    """The UNet's parameter count of a single-file .safetensors checkpoint (its
    model.diffusion_model.* tensors) or a diffusers folder (unet/*.safetensors), from the
    headers alone; None when it cannot be told (a .ckpt, a hub id, an unreadable file)."""
    try:
        p = Path(str(path)).expanduser()
        stat = p.stat()
    except (OSError, ValueError):
        return None
    return _unet_parameter_count(str(p), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _unet_parameter_count(path: str, size: int, mtime_ns: int) -> int | None:
    p = Path(path)
    try:
        if p.is_file():
            if p.suffix.lower() != ".safetensors":
                return None
            return _count(safetensors_shapes(p), "model.diffusion_model.") or None
        if p.is_dir():
            return sum(_count(safetensors_shapes(f)) for f in _diffusers_unet_files(p)) or None
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    return None


def model_bytes(path: str | Path) -> int | None:
    """What loading reads: the file, or a diffusers folder's weights."""
    try:
        p = Path(str(path)).expanduser()
        if p.is_file():
            return p.stat().st_size
        if p.is_dir():
            return sum(f.stat().st_size for sub in ("unet", "vae", "text_encoder", "text_encoder_2") for f in (p / sub).glob("*")
                       if f.suffix in (".safetensors", ".bin"))
    except OSError:
        return None
    return None


# ---- a whole run -----------------------------------------------------------------------------------

def estimate_plan(plan, device: Device, *, unet_params: int | None = None, alternative: bool = True,
                  sizes=None, **memory_settings) -> Estimate:
    """The run's time on `device`: steps x s/step + loading + latent caching + samples; on a CUDA
    GPU also its memory (memory_estimate.estimate_memory; `memory_settings` are its keywords:
    optimizer, captions_vary, lora_preset, max_token_length). `sizes` (memory_estimate.PartSizes)
    of a model already in memory replace what the file's header says."""
    from .memory_estimate import FAMILY_LABELS, FAMILY_SIZES, PartSizes, part_sizes

    model_path = getattr(plan, "model_path", "") or ""
    read, family = part_sizes(plan)
    known_family = getattr(getattr(plan, "family", None), "name", None) in FAMILY_SIZES or (
        read.source == "the checkpoint's header" and family == "sdxl")
    if sizes is None:
        sizes = read if read.source == "the checkpoint's header" else None
    if unet_params is not None:
        sizes = PartSizes(unet_params, (sizes or FAMILY_SIZES[family]).text_encoders, (sizes or FAMILY_SIZES[family]).vae,
                          "the model in memory")
    params = sizes.unet if sizes is not None else None
    known = FAMILY_SIZES[family if known_family else "sd1"]
    label = FAMILY_LABELS[family] if known_family else "SD1.5"
    if params:
        scale = params / known.unet
        note = (f"UNet {params / 1e6:,.0f} M parameters ({label} size)" if 0.9 < scale < 1.1
                else f"UNet {params / 1e6:,.3g} M parameters = {scale:.3g} x {label}'s, scaled so")
        te_scale = (sizes.text_encoder_total / FAMILY_SIZES["sd1"].text_encoder_total / scale) if sizes.text_encoders else (
            known.text_encoder_total / FAMILY_SIZES["sd1"].text_encoder_total)
        vae_scale = sizes.vae / known.vae if sizes.vae else 1.0
    else:
        scale = 1.0
        note = (f"the model's size could not be read from its file: assumed {label}'s parts" if known_family
                else "the model's size could not be read from its file: assumed SD1.5's UNet")
        te_scale, vae_scale = known.text_encoder_total / FAMILY_SIZES["sd1"].text_encoder_total, 1.0
    fam = family if known_family else None
    step = step_time(device, width=plan.width, height=plan.height, batch_size=plan.batch_size, accumulation=plan.accumulation,
                     train_text_encoder=plan.train_text_encoder,
                     gradient_checkpointing=bool(getattr(plan, "gradient_checkpointing", False)),
                     precision=plan.precision, cache_latents=bool(getattr(plan, "cache_latents", True)), model_scale=scale,
                     family=fam, te_scale=te_scale, vae_scale=vae_scale)
    size = model_bytes(model_path) if model_path else None
    default_bytes = FAMILY_CHECKPOINT_BYTES.get(fam or "sd1", SD15_CHECKPOINT_BYTES)
    load = LOAD_BASE_S + LOAD_PER_GB_S * (size if size else default_bytes * scale) / 1e9
    latents = plan.num_images if getattr(plan, "cache_latents", True) else 0
    cache = latents * step.vae_image_s
    renders = len(plan.sample_prompts) * len(plan.sample_steps)
    steps_each = [getattr(p, "steps", DEFAULT_SAMPLE_STEPS) or DEFAULT_SAMPLE_STEPS for p in plan.sample_prompts]
    per_render = (sum(steps_each) / len(steps_each) if steps_each else DEFAULT_SAMPLE_STEPS) * SAMPLE_STEP_SHARE * step.unet_image_s
    samples = renders * per_render
    total = plan.max_train_steps * step.seconds + load + cache + samples
    alt = None
    if alternative and device.kind == "cpu" and total >= HOURS:
        alt = _quick_test_alternative(plan, device, scale, load, total, fam, te_scale, vae_scale)
    memory, advice = None, ""
    if device.kind == "cuda":
        memory, advice = _memory(plan, device, sizes or FAMILY_SIZES[family], family, memory_settings)
    return Estimate(total_s=total, steps=plan.max_train_steps, step=step, load_s=load, cache_s=cache, sample_s=samples,
                    num_latents=latents, model_note=note, device=device, alternative=alt, memory=memory, memory_advice=advice,
                    family_label=label)


def _memory(plan, device: Device, sizes, family: str, settings: dict) -> tuple:
    """(MemoryEstimate, advice when it is more than the GPU has); (None, "") if it cannot be told."""
    from .memory_estimate import estimate_memory, memory_settings

    try:
        memory = estimate_memory(plan, sizes=sizes, family=family, **settings)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None, ""
    advice = ""
    if device.memory and memory.peak > device.memory * 0.95:
        advice = memory.advice(memory_settings(plan, **settings))
    return memory, advice


def _quick_test_alternative(plan, device: Device, scale: float, load: float, total: float, family: str | None = None,
                            te_scale: float = 1.0, vae_scale: float | None = None) -> tuple | None:
    """('the "Quick test" preset at 256 px', seconds) when that is much shorter than `total`."""
    from ..presets import BUILTIN_DIR, load_preset

    try:
        values, _ = load_preset(BUILTIN_DIR / f"{QUICK_TEST}.json")
    except Exception:
        return None
    steps = values.get("max_train_steps")
    if not steps or values.get("max_train_epochs"):
        return None
    size = min(QUICK_TEST_CPU_RESOLUTION, plan.width, plan.height)
    step = step_time(device, width=size, height=size, batch_size=int(values.get("train_batch_size", 1)),
                     train_text_encoder=not values.get("network_train_unet_only", False),
                     gradient_checkpointing=bool(values.get("gradient_checkpointing", False)), precision="no",
                     model_scale=scale, family=family, te_scale=te_scale, vae_scale=vae_scale)
    seconds = steps * step.seconds + load + plan.num_images * step.vae_image_s
    if seconds > total / 2:
        return None
    return f'the "{QUICK_TEST}" preset ({steps} steps) with Resolution {size}', seconds


def detect_device(kind: str = "cuda") -> Device:
    """The device a run of this kind ("cuda" | "cpu") trains on, as torch sees it."""
    import torch

    if kind == "cuda" and torch.cuda.is_available():
        return Device("cuda", torch.cuda.get_device_name(0), memory=int(torch.cuda.get_device_properties(0).total_memory))
    return Device("cpu", _cpu_name(), torch.get_num_threads())


@lru_cache(maxsize=1)
def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def run_estimate(plan, model=None, **memory_settings) -> Estimate | None:
    """The estimate for a plan on the device it will train on (a model already in memory is
    counted instead of the file); None if anything goes wrong: an estimate never stops a run.
    `memory_settings`: see estimate_plan (optimizer, captions_vary, lora_preset, max_token_length)."""
    try:
        sizes = model_part_sizes(model) if model is not None else None
        return estimate_plan(plan, detect_device(plan.device), sizes=sizes, **memory_settings)
    except Exception:
        return None


def model_part_sizes(model):
    """memory_estimate.PartSizes of a loaded SDModel (its UNet, text encoder(s) and VAE)."""
    from .memory_estimate import PartSizes

    def count(net) -> int:
        return sum(p.numel() for p in net.parameters())

    encoders = [te for te in (getattr(model, "text_encoder", None), getattr(model, "text_encoder_2", None)) if te is not None]
    vae = getattr(model, "vae", None)
    return PartSizes(count(model.unet), tuple(count(te) for te in encoders), count(vae) if vae is not None else 0,
                     "the model in memory")
