"""How much GPU memory a run needs, said before it starts, with what makes up the figure.

A run has three phases on the GPU, and the largest is what the card must hold:

- caching: right after loading, every part is on the GPU (UNet and text encoder(s) in the weight
  dtype, the VAE in fp32, the LoRA in fp32) while the VAE encodes the images (its activations, in
  fp32, grow with the pixels of one encoding batch: `latent_cache_batch` images); then the trainer
  moves the VAE to the CPU, and a frozen text encoder with fixed captions too once its outputs are
  cached;
- training: the UNet (+ the text encoder(s) when trained, or when captions change every step and
  must be encoded each step) + the LoRA's fp32 weights, gradients and optimizer state + the
  activations autograd keeps for the backward pass (latent tokens x batch, per family, much fewer
  with gradient checkpointing);
- samples: the training's weights + the VAE back on the GPU to decode (fp32, by the sample's pixels).

Part sizes (parameter counts) are read from the checkpoint's safetensors header when it can be read
(UNet, text encoder(s), VAE), else they are the family's known sizes. Activations per latent token
were counted on the real architectures (`python benchmarks/sdxl_speed.py --activations`); the
totals were checked against the public figures cited beside the constants. Approximate: attention
kernels, drivers and PyTorch's allocator change it by some tenths of a GB either way.

No torch at import: the plan and the UI call this where torch must not be imported.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

GiB = float(2 ** 30)

# ---- part sizes -------------------------------------------------------------------------------

@dataclass(frozen=True)
class PartSizes:
    unet: int
    text_encoders: tuple  # parameter counts, in the family's order (SDXL: CLIP-L, bigG)
    vae: int
    source: str  # where the counts come from, for the plan's text

    @property
    def text_encoder_total(self) -> int:
        return sum(self.text_encoders)


# Counted from the bundled configs (sd15_config, sd21_config, sdxl_config) with
# accelerate.init_empty_weights; tests/test_memory_estimate.py counts them again.
FAMILY_SIZES = {
    "sd1": PartSizes(859_520_964, (123_060_480,), 83_653_863, "SD1.5's known sizes"),
    # OpenCLIP ViT-H as SD2 loads it: 23 of its 24 layers (the file's 24th is dropped), 340.4 M
    "sd2": PartSizes(865_910_724, (340_387_840,), 83_653_863, "SD2.x's known sizes"),
    "sdxl": PartSizes(2_567_463_684, (123_060_480, 694_659_840), 83_653_863, "SDXL's known sizes"),
}
FAMILY_LABELS = {"sd1": "SD1.5", "sd2": "SD2.x", "sdxl": "SDXL"}
# LoRA parameters per unit of rank (down [r, in] + up [out, r] per target), default targets and
# attention only (lora/targets.py): (UNet, (text encoder, ...)). Counted from the bundled configs.
LORA_PER_RANK = {
    "default": {"sd1": (423_936, (165_888,)), "sd2": (432_128, (423_936,)), "sdxl": (2_659_840, (165_888, 737_280))},
    "attn-only": {"sd1": (199_296, (73_728,)), "sd2": (207_488, (188_416,)), "sdxl": (1_451_520, (73_728, 327_680))},
}

# Single-file (LDM / SGM layout) prefixes of each part, and what the loader leaves out.
_SINGLE_FILE_PARTS = {
    "unet": ("model.diffusion_model.",),
    "vae": ("first_stage_model.",),
    "te": ("cond_stage_model.", "conditioner.embedders.0."),
    "te2": ("conditioner.embedders.1.",),
}
_NOT_LOADED = ("position_ids", "logit_scale", "transformer.resblocks.23.")  # buffers; SD2's unused 24th layer
_FOLDER_PARTS = {"unet": "unet", "vae": "vae", "te": "text_encoder", "te2": "text_encoder_2"}


def _part_files(folder: Path, sub: str) -> list[Path]:
    """A diffusers folder's weight files of one part (sharded or not, fp16 variant or not)."""
    part = folder / sub
    if not part.is_dir():
        return []
    for stem in ("diffusion_pytorch_model", "model", "diffusion_pytorch_model.fp16", "model.fp16"):
        index = part / f"{stem}.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
            return [part / name for name in sorted(set(weight_map.values()))]
        single = part / f"{stem}.safetensors"
        if single.is_file():
            return [single]
    return []


def _count(shapes: dict, prefixes: tuple) -> int:
    return sum(math.prod(shape) for name, shape in shapes.items()
               if name.startswith(prefixes) and not any(skip in name for skip in _NOT_LOADED))


def read_part_sizes(path) -> PartSizes | None:
    """The parameter counts of a checkpoint's parts from its safetensors header(s) alone (a
    single .safetensors file or a diffusers folder); None when they cannot be read (a .ckpt, a hub
    id, a file without a UNet)."""
    try:
        p = Path(str(path)).expanduser()
        stat = p.stat()
    except (OSError, ValueError):
        return None
    return _read_part_sizes(str(p), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _read_part_sizes(path: str, size: int, mtime_ns: int) -> PartSizes | None:
    from .estimate import safetensors_shapes

    p = Path(path)
    try:
        if p.is_file():
            if p.suffix.lower() != ".safetensors":
                return None
            shapes = safetensors_shapes(p)
            counts = {part: _count(shapes, prefixes) for part, prefixes in _SINGLE_FILE_PARTS.items()}
            # SD1/SD2 keep their one text encoder under cond_stage_model; SDXL's first is embedders.0
        elif p.is_dir():
            counts = {}
            for part, sub in _FOLDER_PARTS.items():
                counts[part] = sum(_count(safetensors_shapes(f), ("",)) for f in _part_files(p, sub))
        else:
            return None
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if not counts["unet"]:
        return None
    encoders = tuple(n for n in (counts["te"], counts["te2"]) if n)
    return PartSizes(counts["unet"], encoders, counts["vae"], "the checkpoint's header")


def part_sizes(plan) -> tuple[PartSizes, str]:
    """(sizes, family name) for a plan: counts from the file where it can be read, the family's
    known sizes (scaled like the UNet) for what is missing from it; an unknown family is taken as
    SD1.x, or SDXL when the file holds two text encoders."""
    family = getattr(getattr(plan, "family", None), "name", None)
    path = getattr(plan, "model_path", "") or ""
    read = read_part_sizes(path) if path else None
    if family not in FAMILY_SIZES:
        family = "sdxl" if read is not None and len(read.text_encoders) == 2 else "sd1"
    known = FAMILY_SIZES[family]
    if read is None:
        return known, family
    # a part the header does not show (a UNet-only export; a text encoder saved as .bin): the
    # family's, scaled like the UNet (a small test model's parts are small too)
    ratio = min(1.0, read.unet / known.unet)
    encoders = read.text_encoders or tuple(int(n * ratio) for n in known.text_encoders)
    return PartSizes(read.unet, encoders, read.vae or int(known.vae * ratio), read.source), family


# ---- the figures ------------------------------------------------------------------------------
#
# Checked against public reports (reported -> what estimate_memory says for the same settings,
# batch 1 unless said; "training" is the training phase, "peak" includes this trainer's caching):
#  - kohya-ss/sd-scripts docs/train_SDXL-en.md: SDXL LoRA at 1024, UNet only, gradient
#    checkpointing, cached text-encoder outputs and latents, 8-bit AdamW or Adafactor, dim 4-8:
#    "8 GB possible, 10 GB recommended" -> training 7.1 GB (peak 10.7 GB: this trainer caches
#    latents with the UNet already on the GPU, the reference before moving it there).
#  - huggingface/diffusers#4470: SDXL LoRA at 1024 (UNet; text encoders and VAE on the GPU, no
#    cached latents, 8-bit Adam, xformers): under 16 GB only with gradient checkpointing ->
#    11.1 GB with it, 20.2 GB without.
#  - kohya-ss/sd-scripts#661: SDXL LoRA at 1024 with both text encoders, dim 32, Adafactor, bf16
#    (and checkpointing): fits a 12 GB RTX 3080 Ti -> training 9.5 GB, peak 11.1 GB.
#  - bmaltais/kohya_ss#2315: SDXL LoRA at 1280x1280, batch 3: "around 13GB" -> training 10.9 GB
#    with checkpointing, UNet only and Adafactor (the report's optimizer is not given).
#  - bmaltais/kohya_ss#1730: "11GB can handle SD1.5 512x512 with batch size 4 and dim 64" -> 9.4 GB.
#  - bmaltais/kohya_ss#2474: an SD1.5 LoRA with gradient checkpointing "only takes up about 4 Gigs"
#    -> training 2.9 GB (UNet only) to 3.2 GB (text encoder too).
#  - huggingface.co/docs/diffusers/training/lora: SD1.5 LoRA at 512 runs on an 11 GB RTX 2080 Ti
#    (text encoder and VAE on the GPU) -> 4.6 GB.

# UNet activations autograd keeps for the backward pass, in bytes per latent token ((W/8) x (H/8))
# and image, LoRA (rank 16) on the default targets, the frozen UNet in fp16/bf16 under autocast (its
# norms in fp32, as CUDA autocast runs them), SDPA attention (memory linear in tokens). Counted on
# the real architectures with saved-tensor hooks during one forward pass, at 256 px, by
# `python benchmarks/sdxl_speed.py --activations`: (no checkpointing; with checkpointing: what stays
# between checkpointed blocks, and one block recomputed during the backward pass).
UNET_ACTIVATIONS = {
    "sd1": (339_087, 55_530, 23_364),  # 331 MB; 54 + 23 MB at 256 px
    "sd2": (329_600, 45_719, 23_417),  # 322 MB; 45 + 23 MB (linear projections)
    "sdxl": (681_166, 40_857, 14_726),  # 665 MB; 40 + 14 MB (no attention at its first level)
}
# At 1024 px that is 10.4 GB kept for SDXL without checkpointing and 0.9 GB with it (with the
# recomputed block); at 512 px 1.3 GB for SD1.5 without. Larger images keep a little less per token
# (the 77-token context's share shrinks: SDXL at 384 px kept 3 % less per token, in fp32).
FP32_ACTIVATIONS = 1.35  # --mixed_precision=no: the fp32 count over the autocast one (SD1.5 1.35, SDXL 1.28)
# The backward pass's peak over the kept activations, measured on the CPU in fp32 at 256 px with a
# dispatch mode that follows every tensor until it is freed (benchmarks/sdxl_speed.py --activations):
# SD1.5 without checkpointing 457 MB at the peak against 447 kept (1.02; a little more is allowed
# for the GPU's kernel workspaces); with checkpointing 116 MB = 72 kept + 1.24 x the largest block
# (36 MB), which is recomputed and then differentiated. These peaks include the LoRA's gradients as
# the backward pass allocates them, which are counted with the LoRA below (SDXL with checkpointing:
# 189 MB = 66 kept + its 162 MB of fp32 gradients, filled in by the end): the sum errs on the high
# side by at most those gradients.
BACKWARD_PEAK = 1.05
CHECKPOINTED_BLOCK_PEAK = 1.25
# A trained text encoder's activations per 75-token window and image, as a share of its weights in
# half precision: per layer and token autograd keeps the norms' fp32 inputs, the half-precision
# inputs of every Linear and of its LoRA, the attention's q, k, v and output and the MLP's
# activation (~36 x width + 8 x MLP width bytes): CLIP-L ~50 MB (0.2 of 246 MB), bigG ~215 MB (0.15
# of 1.39 GB). Checkpointing keeps about a sixth (a layer's input per layer, one layer recomputed).
TEXT_ACTIVATIONS_SHARE = 0.2
TEXT_CHECKPOINTED = 1 / 6
# VAE in fp32, no gradients: the most bytes alive at once per image and megapixel (its largest
# level's tensors, input and output of a convolution and a skip, at full resolution), measured with
# the same tool: encoding (caching latents) and decoding (rendering a sample).
VAE_ENCODE_PER_MPIX = 2.5 * GiB  # 160 MB at 256 px, 640 MB at 512: five 128-channel tensors
VAE_DECODE_PER_MPIX = 3.0 * GiB  # 192 MB at 256 px, 768 MB at 512
# What the GPU holds besides PyTorch's tensors: the CUDA context and the cuBLAS/cuDNN workspaces
# (~0.5-0.9 GB in nvidia-smi before the first tensor), and what the caching allocator reserves
# beyond what is allocated (fragmentation: blocks of other sizes).
CUDA_CONTEXT = 0.75 * GiB
ALLOCATOR_RESERVE = 0.08
# Bytes per LoRA parameter beside its fp32 weight (4) and gradient (4): the optimizer's state.
OPTIMIZER_STATE = {
    "adamw": 8.0,  # two fp32 moments
    "adamw8bit": 2.0,  # two 8-bit moments (+ block statistics, a few %)
    "adafactor": 0.1,  # factored second moment: a row + a column per matrix, no first moment (beta1=None)
    "prodigy": 16.0,  # moments, the start point and its own estimate, fp32
    "lion": 4.0,  # one fp32 moment
}
# The most pixels the VAE encodes at once when caching latents: two 512x512 images, more below, one
# above, so its fp32 activations stay at 1.25 GB up to 512 px (one 1024x1024 image: 2.5 GB).
VAE_CACHE_PIXELS = 2 * 512 * 512
VAE_CACHE_BATCH = 4
# train/loop.py moves the UNet (with its LoRA) and the text encoders to the GPU before caching, so
# they sit beside the VAE while it encodes. (Caching first, as the reference trainer does, would
# take the UNet's weights out of the caching phase: SDXL's 4.8 GB.)
UNET_ON_GPU_WHILE_CACHING = True
CARD_SIZES_GB = (4, 6, 8, 10, 11, 12, 16, 20, 24, 32, 40, 48, 80, 96, 141)
CARD_USABLE = 0.95  # of a card's memory: the display and the driver keep some


def latent_cache_batch(width: int, height: int, default: int = VAE_CACHE_BATCH) -> int:
    """How many images (mirrored copies count) the VAE should encode at once when caching latents
    at this size: `default` (4) up to 362x362, 2 at 512x512, 1 above (SDXL at 1024x1024: 1)."""
    return max(1, min(int(default), VAE_CACHE_PIXELS // max(1, int(width) * int(height))))


def _size_scale(actual: int, known: int) -> float:
    """Activations and LoRA sizes grow with a model's width, its parameters with the square."""
    return math.sqrt(actual / known) if actual and known else 1.0


@dataclass(frozen=True)
class MemoryEstimate:
    peak: float  # bytes the card must hold: the largest phase
    phase: str  # "training" | "caching latents" | "rendering samples"
    weights: float  # frozen weights on the GPU while training
    lora: float  # LoRA weights + gradients + optimizer state
    activations: float  # kept for the backward pass (+ its peak)
    overhead: float  # CUDA context + allocator reserve, in the training phase
    training: float  # the training phase's total
    caching: float  # the caching phase's total (0: no latents cached)
    sampling: float  # the sample-rendering phase's total (0: no samples)
    sizes: PartSizes
    family: str

    def fits(self, card_gb: float) -> bool:
        return self.peak <= card_gb * GiB * CARD_USABLE

    def smallest_card(self) -> float | None:
        return next((gb for gb in CARD_SIZES_GB if self.fits(gb)), None)

    def line(self, gpu_bytes: int = 0, markdown: bool = False) -> str:
        """'GPU memory: about 9.4 GB at its peak (caching latents); ... fits a 12 GB card'."""
        b = "**" if markdown else ""
        parts = (f"weights {gb(self.weights)}, LoRA + optimizer {gb(self.lora)}, activations {gb(self.activations)}, "
                 f"CUDA context + reserve {gb(self.overhead)}")
        where = "" if self.phase == "training" else f" while {self.phase}"
        line = f"GPU memory: {b}about {gb(self.peak)} GB{b} at its peak{where}; training {gb(self.training)} GB ({parts})"
        if gpu_bytes:
            card = gpu_bytes / GiB
            line += (f"; fits this GPU's {card:.0f} GB" if self.peak <= gpu_bytes * CARD_USABLE
                     else f"; {b}more than this GPU's {card:.0f} GB{b}")
        else:
            smallest = self.smallest_card()
            line += f"; fits a {smallest:g} GB card" if smallest else "; more than any single card here"
        return line

    def advice(self, settings: dict) -> str:
        """What to change to need less, in the order that saves most for the least cost."""
        out = []
        if not settings.get("gradient_checkpointing"):
            out.append("Gradient checkpointing (the largest saving, ~25 % slower)")
        if settings.get("train_text_encoder"):
            out.append("UNet only (the text encoders stay frozen and their outputs cached)")
        if settings.get("optimizer", "adamw") in ("adamw", "prodigy", "lion"):
            out.append("the Adafactor or AdamW8bit optimizer")
        if settings.get("batch_size", 1) > 1:
            out.append("batch 1 with gradient accumulation")
        if settings.get("captions_vary"):
            out.append("captions without shuffling or dropout (then the text encoders leave the GPU)")
        out.append("a lower resolution")
        text = "To need less: " + "; ".join(out) + "."
        if self.phase == "caching latents" and self.training < self.caching:
            text = (f"The peak is while caching latents (the UNet and text encoders already on the GPU beside the VAE, "
                    f"which encodes in fp32); the training itself needs about {gb(self.training)} GB. " + text)
        return text


def gb(n: float) -> str:
    return f"{n / GiB:.1f}"


def estimate_memory(plan, *, optimizer: str | None = None, captions_vary: bool | None = None,
                    lora_preset: str | None = None, max_token_length: int | None = None,
                    sizes: PartSizes | None = None, family: str | None = None) -> MemoryEstimate:
    """The GPU memory a plan (train.plan.TrainPlan) needs on a CUDA GPU. The settings the plan does
    not hold are taken from the arguments, else from the plan's attributes of the same name
    (optimizer_type, captions_vary, lora_preset, max_token_length), else the trainer's defaults
    (AdamW, fixed captions, the default targets, 75 tokens)."""
    if sizes is None or family is None:
        read, fam = part_sizes(plan)
        sizes, family = sizes or read, family or fam
    known = FAMILY_SIZES[family]
    optimizer = str(optimizer or getattr(plan, "optimizer_type", None) or "AdamW").lower()
    captions_vary = bool(getattr(plan, "captions_vary", False) if captions_vary is None else captions_vary)
    lora_preset = lora_preset or getattr(plan, "lora_preset", None) or "default"
    windows = max(1, int(max_token_length or getattr(plan, "max_token_length", None) or 75) // 75)
    half = getattr(plan, "precision", "fp16") in ("fp16", "bf16")
    weight_bytes = 2 if half else 4
    train_te = bool(plan.train_text_encoder)
    gc = bool(getattr(plan, "gradient_checkpointing", False))
    batches = tuple(getattr(plan, "batch_sizes", ()) or ()) or (plan.batch_size,)
    batch = max(batches)
    tokens = (plan.width // 8) * (plan.height // 8)
    unet_scale = _size_scale(sizes.unet, known.unet)

    # LoRA: fp32 weight + fp32 gradient + optimizer state per parameter
    per_rank_unet, per_rank_te = LORA_PER_RANK.get(lora_preset, LORA_PER_RANK["default"])[family]
    lora_unet = plan.rank * per_rank_unet * unet_scale
    lora_te = sum(plan.rank * n * _size_scale(actual, k) for n, actual, k in
                  zip(per_rank_te, sizes.text_encoders, known.text_encoders))
    state = OPTIMIZER_STATE.get(optimizer, OPTIMIZER_STATE["adamw"])
    lora_weights = 4.0 * (lora_unet + lora_te)  # on the GPU in every phase (in the modules)
    trained = lora_unet + (lora_te if train_te else 0.0)
    lora = lora_weights + trained * (4.0 + state)

    te_on_gpu = train_te or captions_vary
    unet_w = sizes.unet * weight_bytes
    te_w = sizes.text_encoder_total * weight_bytes
    weights = unet_w + (te_w if te_on_gpu else 0.0)

    no_gc, kept, block = UNET_ACTIVATIONS[family]
    per_token = (kept + CHECKPOINTED_BLOCK_PEAK * block) if gc else no_gc * BACKWARD_PEAK
    activations = per_token * tokens * batch * unet_scale * (1.0 if half else FP32_ACTIVATIONS)
    if train_te:
        te_act = TEXT_ACTIVATIONS_SHARE * sizes.text_encoder_total * 2 * windows * batch
        activations += te_act * (TEXT_CHECKPOINTED if gc else 1.0) * (1.0 if half else FP32_ACTIVATIONS)

    def total(allocated: float) -> float:
        return allocated * (1 + ALLOCATOR_RESERVE) + CUDA_CONTEXT

    vae_w = sizes.vae * 4.0  # always fp32 here (SDXL's VAE overflows in fp16)
    vae_scale = _size_scale(sizes.vae, known.vae)
    megapixels = plan.width * plan.height / 2 ** 20
    caching = 0.0
    vae_in_weights = not getattr(plan, "cache_latents", True)
    if not vae_in_weights:
        views = max(1, min(latent_cache_batch(plan.width, plan.height), plan.num_images or VAE_CACHE_BATCH))
        encode = VAE_ENCODE_PER_MPIX * views * megapixels * vae_scale
        resident = unet_w + te_w + lora_weights if UNET_ON_GPU_WHILE_CACHING else 0.0
        caching = total(resident + vae_w + encode)
        training_alloc = weights + lora + activations
    else:  # the VAE stays on the GPU and encodes each batch (without gradients) before the UNet runs
        weights += vae_w
        encode = VAE_ENCODE_PER_MPIX * batch * megapixels * vae_scale
        training_alloc = weights + lora + max(activations, encode)
    training = total(training_alloc)
    sampling = 0.0
    prompts = tuple(getattr(plan, "sample_prompts", ()) or ())
    if prompts and getattr(plan, "sample_steps", ()):
        pixels = max((p.width or plan.width) * (p.height or plan.height) for p in prompts)
        decode = VAE_DECODE_PER_MPIX * pixels / 2 ** 20 * vae_scale
        sampling = total(weights + lora + (0.0 if vae_in_weights else vae_w) + decode)
    phases = [("training", training), ("caching latents", caching), ("rendering samples", sampling)]
    phase, peak = max(phases, key=lambda p: p[1])
    return MemoryEstimate(peak=peak, phase=phase, weights=weights, lora=lora, activations=activations,
                          overhead=training - training_alloc, training=training, caching=caching, sampling=sampling,
                          sizes=sizes, family=family)


def memory_settings(plan, **given) -> dict:
    """The settings `MemoryEstimate.advice` looks at."""
    return {"gradient_checkpointing": bool(getattr(plan, "gradient_checkpointing", False)),
            "train_text_encoder": bool(plan.train_text_encoder),
            "optimizer": str(given.get("optimizer") or getattr(plan, "optimizer_type", None) or "AdamW").lower(),
            "batch_size": plan.batch_size,
            "captions_vary": bool(given.get("captions_vary", getattr(plan, "captions_vary", False)))}
