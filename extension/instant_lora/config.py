"""One typed config for a training run. Field names are the reference trainer's flag names
(`train_network.py`), so its command lines, TOML config files and our JSON presets all map 1:1.
Each field's `help` is the single source for `--help` and the UI's one-line explanations.
The config never changes once a run starts: derived numbers live in `train.plan`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import InstantLoraError

CONFIG_VERSION = 1


def opt(default, help: str, *, choices=None, group: str = "", kohya: bool = True, nargs=None):
    meta = {"help": help, "choices": choices, "group": group, "kohya": kohya, "nargs": nargs}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


OPTIMIZERS = ("AdamW", "AdamW8bit", "Adafactor", "Prodigy", "Lion")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
PRECISIONS = ("no", "fp16", "bf16")


@dataclass
class TrainConfig:
    # --- model
    pretrained_model_name_or_path: str = opt("", "Base model (SD1.x, SD2.x or SDXL, told from the file): a .safetensors/.ckpt file, a diffusers folder, or a hub id (online only).", group="model")
    model_config_dir: Optional[str] = opt(None, "Diffusers config folder for a checkpoint shaped unlike SD1.5, SD2.1 or SDXL base (default: the bundled configs of its family).", group="model", kohya=False)
    clip_skip: Optional[int] = opt(None, "Use the text encoder's n-th last layer (2 for anime-style models); default 1 = last layer. Not for SDXL (always the penultimate layers, as the WebUI).", group="model")
    v2: bool = opt(False, "An SD2.x checkpoint. Read from the file itself; accepted for the reference's command lines.", group="model")
    v_parameterization: bool = opt(False, "Train with v-prediction (SD2.x 768-v, v-pred SDXL finetunes). Read from the file (v_pred key, its .yaml, a weight statistic) when not given.", group="model")
    # --- data
    train_data_dir: str = opt("", "Folder holding N_name subfolders (N = repeats) of images with .txt captions, or a flat folder of images.", group="data")
    resolution: str = opt("512,512", "Training size 'W,H' or one number; images are resized to cover it and center-cropped.", group="data")
    caption_extension: str = opt(".txt", "Caption file extension next to each image (.txt or .caption).", group="data")
    train_batch_size: int = opt(1, "Images per step; more needs more VRAM.", group="data")
    cache_latents: bool = opt(False, "Encode every image with the VAE once before training (faster, less VRAM).", group="data")
    cache_latents_to_disk: bool = opt(False, "Also keep the encoded latents in .npz files beside the images for the next run.", group="data")
    auto_caption: bool = opt(False, "Caption images that have no caption file with CLIP interrogation before training.", group="data", kohya=False)
    caption_clip_model: str = opt("ViT-L-14", "CLIP model for --auto_caption: open_clip name, weights file, or local-dir:PATH.", group="data", kohya=False)
    caption_clip_pretrained: str = opt("openai", "open_clip pretrained tag for --auto_caption (openai = SD's own CLIP).", group="data", kohya=False)
    enable_bucket: bool = opt(False, "Aspect-ratio buckets: each image trains at the size of about the training area closest to its own shape (portraits stay portrait).", group="data")
    min_bucket_reso: int = opt(256, "Smallest bucket side in px (with --enable_bucket).", group="data")
    max_bucket_reso: int = opt(1024, "Largest bucket side in px (with --enable_bucket).", group="data")
    bucket_reso_steps: int = opt(64, "Bucket sides are multiples of this (64 suits SD; a multiple of 8).", group="data")
    bucket_no_upscale: bool = opt(False, "Buckets from each image's own size: small images are not enlarged (larger ones are shrunk to the training area).", group="data")
    reg_data_dir: Optional[str] = opt(None, "Regularization images (N_name folders, as the training folder): keep the class looking like itself; repeated to match the training images.", group="data")
    prior_loss_weight: float = opt(1.0, "Loss weight of the regularization images (1 = as much as a training image).", group="data")
    dataset_config: Optional[str] = opt(None, "A dataset TOML in the reference's layout ([general], [[datasets]], [[datasets.subsets]]): several folders, resolutions, batch sizes.", group="data")
    shuffle_caption: bool = opt(False, "Shuffle the caption's comma-separated tags every step (the first --keep_tokens stay first).", group="data")
    keep_tokens: int = opt(0, "How many tags at the start of a caption stay in place when shuffling or dropping tags (cover your trigger words).", group="data")
    keep_tokens_separator: str = opt("", "A marker such as ||| : the caption's text before it stays fixed (instead of --keep_tokens).", group="data")
    caption_separator: str = opt(",", "What separates the tags of a caption for shuffling and tag dropout.", group="data")
    caption_prefix: Optional[str] = opt(None, "Text put before every caption (e.g. a trigger word).", group="data")
    caption_suffix: Optional[str] = opt(None, "Text put after every caption.", group="data")
    caption_dropout_rate: float = opt(0.0, "Chance that a step trains an image with an empty caption (0-1; helps the LoRA work without its words).", group="data")
    caption_dropout_every_n_epochs: int = opt(0, "Train every N-th epoch with empty captions (0 = never).", group="data")
    caption_tag_dropout_rate: float = opt(0.0, "Chance that each tag (except the kept ones) is left out of a step's caption (0-1).", group="data")
    max_token_length: Optional[int] = opt(None, "Caption length in CLIP tokens: 75 (default), 150 or 225; longer captions are encoded in 75-token windows as the WebUI encodes long prompts.", group="data", choices=(75, 150, 225))
    flip_aug: bool = opt(False, "Also train on each image mirrored left-right (not for asymmetric subjects: text, a parting, a logo).", group="data")
    random_crop: bool = opt(False, "Crop each step at a random place instead of the centre (not with latent caching).", group="data")
    validation_split: float = opt(0.0, "Fraction of the images held out to measure a validation loss (0 = none; 0.1 holds out one in ten).", group="data")
    validation_seed: Optional[int] = opt(None, "Seed that picks the held-out images and the validation noise (default: the run's seed).", group="data")
    validate_every_n_steps: Optional[int] = opt(None, "Compute the validation loss every N steps (default: once per epoch when --validation_split is set).", group="data")
    validate_every_n_epochs: Optional[int] = opt(None, "Compute the validation loss every N epochs.", group="data")
    max_data_loader_n_workers: Optional[int] = opt(None, "Accepted for compatibility; images are loaded in the main process.", group="data")
    persistent_data_loader_workers: bool = opt(False, "Accepted for compatibility; has no effect.", group="data")
    # --- network
    network_module: str = opt("networks.lora", "LoRA implementation; only networks.lora (standard LoRA, kohya file format).", group="network")
    network_dim: Optional[int] = opt(None, "LoRA rank: capacity of the adapter (reference default 4; 16-32 suits most subjects).", group="network")
    network_alpha: float = opt(1.0, "LoRA alpha; the LoRA output is scaled by alpha/rank (reference default 1).", group="network")
    network_dropout: Optional[float] = opt(None, "Dropout on the LoRA input during training (0-0.5); none by default.", group="network")
    network_args: list = opt([], "Extra network options as key=value; preset=attn-only trains attention layers only.", group="network", nargs="*")
    network_train_unet_only: bool = opt(False, "Train the UNet only; the text encoder stays frozen and its outputs are cached.", group="network")
    network_weights: Optional[str] = opt(None, "Start from the weights of an existing LoRA file of the same rank and targets.", group="network")
    # --- optimization
    optimizer_type: str = opt("AdamW", "Optimizer: AdamW, AdamW8bit (bitsandbytes + CUDA), Adafactor (least optimizer memory), Prodigy, Lion.", group="optim")
    optimizer_args: list = opt([], "Extra optimizer arguments as key=value (e.g. weight_decay=0.01).", group="optim", nargs="*")
    learning_rate: float = opt(2e-6, "Base learning rate (reference default 2e-6; LoRA usually wants 1e-4).", group="optim")
    unet_lr: Optional[float] = opt(None, "Learning rate for the UNet's LoRA (default: learning_rate).", group="optim")
    text_encoder_lr: Optional[float] = opt(None, "Learning rate for the text encoder's LoRA (default: learning_rate); SDXL: both encoders, or two values for CLIP-L and bigG.", group="optim")
    text_encoder_lr2: Optional[float] = opt(None, "SDXL: learning rate for the second text encoder (OpenCLIP bigG); default text_encoder_lr.", group="optim", kohya=False)
    lr_scheduler: str = opt("constant", "How the learning rate changes over the run.", group="optim", choices=SCHEDULERS)
    lr_warmup_steps: float = opt(0, "Warm-up steps (a number < 1 is a fraction of all steps).", group="optim")
    lr_scheduler_num_cycles: int = opt(1, "Restarts for cosine_with_restarts.", group="optim")
    lr_scheduler_power: float = opt(1.0, "Power for the polynomial scheduler.", group="optim")
    max_train_steps: int = opt(1600, "Total optimizer steps (reference default 1600); max_train_epochs overrides it.", group="optim")
    max_train_epochs: Optional[int] = opt(None, "Train this many passes over the data instead of max_train_steps.", group="optim")
    gradient_accumulation_steps: int = opt(1, "Add up gradients of this many batches per optimizer step (a bigger batch in less VRAM).", group="optim")
    max_grad_norm: float = opt(1.0, "Clip the gradient norm to this (0 = no clipping).", group="optim")
    min_snr_gamma: Optional[float] = opt(None, "Min-SNR loss weighting gamma (5 is the paper's value); faster convergence.", group="optim")
    noise_offset: Optional[float] = opt(None, "Noise offset (about 0.05-0.1) lets the LoRA learn very dark/bright images.", group="optim")
    seed: Optional[int] = opt(None, "Random seed; same seed + same data = same LoRA. Random when not set.", group="optim")
    # --- precision and memory
    mixed_precision: str = opt("no", "fp16/bf16 on CUDA: frozen model in half precision, LoRA in fp32 (falls back to fp32 on CPU).", group="memory", choices=PRECISIONS)
    full_fp16: bool = opt(False, "Not supported (LoRA weights always train in fp32); accepted with a warning.", group="memory")
    full_bf16: bool = opt(False, "Not supported (LoRA weights always train in fp32); accepted with a warning.", group="memory")
    no_half_vae: bool = opt(False, "Accepted for compatibility: the VAE always encodes in fp32 here (SDXL's VAE overflows in fp16).", group="memory")
    ddp_timeout: Optional[int] = opt(None, "Minutes a process waits for the others (several GPUs) before the run stops with an error; default: torch's 30.", group="memory")
    cache_text_encoder_outputs: bool = opt(False, "Accepted for compatibility: a frozen text encoder's outputs are always cached (captions that change every step are encoded each step).", group="memory")
    gradient_checkpointing: bool = opt(False, "Recompute activations in the backward pass: much less VRAM, ~25% slower.", group="memory")
    sdpa: bool = opt(False, "Use PyTorch scaled-dot-product attention (the default in diffusers on torch 2).", group="memory")
    xformers: bool = opt(False, "Use xformers memory-efficient attention when installed.", group="memory")
    mem_eff_attn: bool = opt(False, "Accepted for compatibility; same as --sdpa.", group="memory")
    # --- output
    output_dir: Optional[str] = opt(None, "Where LoRA files go (default: the WebUI's models/Lora when found, else ./output).", group="output")
    output_name: Optional[str] = opt(None, "File name without extension (reference default 'last').", group="output")
    lora_dir: Optional[str] = opt(None, "The WebUI's Lora folder, used when --output_dir is not given.", group="output", kohya=False)
    webui_dir: Optional[str] = opt(None, "A WebUI install whose models/Lora receives the file (also $INSTANT_LORA_WEBUI_DIR).", group="output", kohya=False)
    save_model_as: str = opt("safetensors", "File format; only safetensors (pickle formats are unsafe to share).", group="output", choices=("safetensors",))
    save_precision: Optional[str] = opt(None, "Precision of the saved file: float (fp32), fp16 (half the size) or bf16; float when not set.", group="output", choices=("float", "fp16", "bf16"))
    save_every_n_epochs: Optional[int] = opt(None, "Also save name-EEEEEE.safetensors every N epochs.", group="output")
    save_every_n_steps: Optional[int] = opt(None, "Also save name-stepSSSSSSSS.safetensors every N steps.", group="output")
    save_state: bool = opt(False, "Write a resumable training state (LoRA, optimizer, scheduler, RNG, step) with each save.", group="output")
    save_state_on_train_end: bool = opt(False, "Write the resumable state at the end of training.", group="output")
    resume: Optional[str] = opt(None, "Continue from a state folder written by --save_state.", group="output")
    trigger_words: str = opt("", "Words that call up the LoRA; written as the WebUI card's activation text.", group="output", kohya=False)
    training_comment: Optional[str] = opt(None, "A comment stored in the file's metadata.", group="output")
    no_metadata: bool = opt(False, "Store only the minimal metadata loaders need (no dataset tags or hyper-parameters).", group="output")
    # --- samples during training
    sample_prompts: Optional[str] = opt(None, "A .txt file, one prompt per line (options: --n negative --w --h --d seed --l cfg --s steps).", group="sample")
    sample_prompt_text: Optional[str] = opt(None, "Sample prompts as text, one per line (the app and REST; same options as the file).", group="sample", kohya=False)
    sample_every_n_steps: Optional[int] = opt(None, "Render the sample prompts every N steps with the LoRA being trained.", group="sample")
    sample_every_n_epochs: Optional[int] = opt(None, "Render the sample prompts every N epochs.", group="sample")
    sample_sampler: str = opt("ddim", "Sampler for the samples: ddim, euler_a, dpmsolver++ (or Euler a, DPM++ 2M Karras, DDIM).", group="sample")
    sample_at_first: bool = opt(False, "Also render the samples before the first step (the base model's look).", group="sample")
    # --- logging
    logging_dir: Optional[str] = opt(None, "Folder for the per-step JSONL log and TensorBoard events (default: <output_dir>/logs).", group="logging")
    log_with: Optional[str] = opt(None, "Also log to tensorboard.", group="logging", choices=("tensorboard", "all"))
    log_prefix: Optional[str] = opt(None, "Prefix of the log run's name.", group="logging")
    config_version: int = opt(CONFIG_VERSION, "Version of this config's layout (for presets).", group="meta", kohya=False)

    # ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, path: Path | str, only_changes: bool = True) -> None:
        """Presets hold only what differs from the defaults, plus the layout version."""
        d = self.to_dict()
        if only_changes:
            default = TrainConfig().to_dict()
            d = {k: v for k, v in d.items() if v != default[k]}
        d["config_version"] = CONFIG_VERSION
        Path(path).write_text(json.dumps(d, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "TrainConfig":
        unknown = [k for k in d if k not in FIELD_NAMES]
        if unknown:
            raise InstantLoraError(f"{source}: unknown key(s) {', '.join(unknown)}{_did_you_mean(unknown[0])}")
        return cls(**{k: _coerce(k, v, source) for k, v in d.items()})

    @classmethod
    def from_json(cls, path: Path | str) -> "TrainConfig":
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InstantLoraError(f"cannot read preset {path}: {e}", path=path) from e
        return cls.from_dict(d, source=str(path))

    # ---------------------------------------------------------------------------------------
    def network_arg_dict(self) -> dict:
        out = {}
        for item in self.network_args:
            key, sep, value = str(item).partition("=")
            if not sep:
                raise InstantLoraError(f"--network_args '{item}' must be key=value (e.g. preset=attn-only)")
            out[key.strip()] = value.strip()
        return out

    def optimizer_kwargs(self) -> dict:
        import ast

        out = {}
        for item in self.optimizer_args:
            key, sep, value = str(item).partition("=")
            if not sep:
                raise InstantLoraError(f"--optimizer_args '{item}' must be key=value (e.g. weight_decay=0.01)")
            try:
                out[key.strip()] = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                out[key.strip()] = value.strip()
        return out

    def resolution_wh(self) -> tuple[int, int]:
        parts = [p.strip() for p in str(self.resolution).replace("x", ",").split(",") if p.strip()]
        try:
            nums = [int(p) for p in parts]
        except ValueError:
            raise InstantLoraError(f"--resolution '{self.resolution}' must be a number or 'W,H' like 512,512") from None
        if len(nums) == 1:
            nums = nums * 2
        if len(nums) != 2:
            raise InstantLoraError(f"--resolution '{self.resolution}' must be a number or 'W,H' like 512,512")
        return nums[0], nums[1]

    @property
    def rank(self) -> int:
        return self.network_dim if self.network_dim is not None else 4  # the reference's default

    @property
    def preset(self) -> str:
        return self.network_arg_dict().get("preset", "default")

    def validate(self) -> list[tuple[str, str]]:
        """Every problem at once, as (field, message) pairs."""
        problems = []
        if not self.pretrained_model_name_or_path:
            problems.append(("pretrained_model_name_or_path", "is required: the checkpoint to train on (SD1.x, SD2.x or SDXL)"))
        if not self.train_data_dir and not self.dataset_config:
            problems.append(("train_data_dir", "is required: the folder with your training images"))
        try:
            w, h = self.resolution_wh()
            if w % 64 or h % 64 or not (64 <= w <= 2048 and 64 <= h <= 2048):
                problems.append(("resolution", f"{w}x{h} must be multiples of 64 between 64 and 2048 (512,512 for SD1.5, 1024,1024 for SDXL)"))
        except InstantLoraError as e:
            problems.append(("resolution", e.message))
        # Types and ranges: one table (config_values.LIMITS) for every front end and for this check.
        from .config_values import coerce_value

        for name in FIELDS:
            _, problem = coerce_value(name, getattr(self, name))
            if problem:
                problems.append((name, problem))
        if self.network_module not in ("networks.lora", "lora"):
            problems.append(("network_module", f"'{self.network_module}' is not supported; use networks.lora"))
        try:
            preset = self.preset
            if preset not in ("default", "attn-only"):
                problems.append(("network_args", f"preset '{preset}' is unknown; use preset=attn-only or leave it out"))
            extra = set(self.network_arg_dict()) - {"preset"}
            if extra:
                problems.append(("network_args", f"{', '.join(sorted(extra))} not supported (only preset=attn-only)"))
        except InstantLoraError as e:
            problems.append(("network_args", e.message))
        if self.optimizer_type.lower() not in {o.lower() for o in OPTIMIZERS}:
            problems.append(("optimizer_type", f"'{self.optimizer_type}' is not supported; choose one of {', '.join(OPTIMIZERS)}"))
        for name, choices in (("mixed_precision", PRECISIONS), ("lr_scheduler", SCHEDULERS)):
            if getattr(self, name) not in choices:
                problems.append((name, f"'{getattr(self, name)}' must be one of {', '.join(choices)}"))
        from .dataset import caption_extension_problem

        ext_problem = caption_extension_problem(self.caption_extension)
        if ext_problem:
            problems.append(("caption_extension", ext_problem))
        if (self.sample_every_n_steps or self.sample_every_n_epochs or self.sample_at_first) and not (
                self.sample_prompts or self.sample_prompt_text):
            problems.append(("sample_prompts", "are needed to render samples (one prompt per line)"))
        problems += self._data_problems()
        if self.output_name is not None:
            name_issue = name_problem(self.output_name)
            if name_issue:
                problems.append(("output_name", f"'{self.output_name:.60}' {name_issue}"))
        return problems

    def _data_problems(self) -> list[tuple[str, str]]:
        """Buckets, long captions, augmentation and validation: combinations that cannot work."""
        problems = []
        if self.max_token_length not in (None, 75, 150, 225):
            problems.append(("max_token_length", f"= {self.max_token_length} must be 75, 150 or 225 (CLIP reads 75 tokens per window)"))
        steps = self.bucket_reso_steps
        if isinstance(steps, int) and steps > 0:
            if steps % 8:
                problems.append(("bucket_reso_steps", f"= {steps} must be a multiple of 8 (the VAE shrinks images 8x); 64 suits SD"))
            for name in ("min_bucket_reso", "max_bucket_reso"):
                value = getattr(self, name)
                if isinstance(value, int) and value % steps:
                    problems.append((name, f"= {value} must be a multiple of --bucket_reso_steps ({steps})"))
        if isinstance(self.min_bucket_reso, int) and isinstance(self.max_bucket_reso, int) and self.min_bucket_reso > self.max_bucket_reso:
            problems.append(("min_bucket_reso", f"= {self.min_bucket_reso} is above --max_bucket_reso ({self.max_bucket_reso})"))
        if self.random_crop and (self.cache_latents or self.cache_latents_to_disk):
            problems.append(("random_crop", "needs each step's own crop of the image, which cached latents cannot give: "
                             "turn off --cache_latents / --cache_latents_to_disk, or --random_crop"))
        if (self.validate_every_n_steps or self.validate_every_n_epochs) and not self.validation_split:
            problems.append(("validation_split", "is needed for --validate_every_n_steps/--validate_every_n_epochs: "
                             "the fraction of images to hold out, e.g. 0.1"))
        if self.keep_tokens_separator and self.keep_tokens_separator == self.caption_separator:
            problems.append(("keep_tokens_separator", f"'{self.keep_tokens_separator}' is also the caption separator: use another marker such as |||"))
        if not self.caption_separator:
            problems.append(("caption_separator", "must not be empty (',' separates tags)"))
        return problems

    def check(self) -> None:
        problems = self.validate()
        if problems:
            lines = "\n".join(f"  --{k} {m}" for k, m in problems)
            raise InstantLoraError(f"Invalid training settings:\n{lines}")


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
FIELD_NAMES = tuple(FIELDS)


def is_safe_name(name: str, max_bytes: int | None = None) -> bool:
    """A file stem that cannot leave its folder or hide, and whose every file fits on disk: see
    `name_problem` (max_bytes: the longest name in UTF-8 bytes, default NAME_MAX_BYTES)."""
    return name_problem(name, max_bytes) is None


def _did_you_mean(key: str) -> str:
    import difflib

    close = difflib.get_close_matches(key.lstrip("-").replace("-", "_"), FIELD_NAMES, n=1, cutoff=0.6)
    return f" (did you mean --{close[0]}?)" if close else ""


def field_type(name: str) -> type:
    """The field's base type from its annotation ("Optional[int]" -> int)."""
    ann = str(FIELDS[name].type).replace("Optional[", "").rstrip("]")
    return {"int": int, "float": float, "str": str, "bool": bool, "list": list}[ann]


def _coerce(name: str, value: Any, source: str):
    """TOML/JSON values into the field's type, with a message naming the key on mismatch."""
    kind = field_type(name)
    if value is None:
        return None
    try:
        if kind is bool:
            return value.strip().lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value)
        if kind is list:
            return [str(v) for v in value] if isinstance(value, (list, tuple)) else str(value).split()
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError("not a whole number")
            return int(value)
        return kind(value)
    except (TypeError, ValueError) as e:
        raise InstantLoraError(f"{source}: '{name}' = {value!r} is not valid ({e})") from e


# ---- output names -----------------------------------------------------------------------------
# File systems limit one file name to 255 bytes (ext4, btrfs, APFS: UTF-8 bytes; NTFS: 255 UTF-16
# units, never more than the UTF-8 byte count). Every name a run writes is the output name plus a
# suffix; the longest of them decides how long the output name may be. `.{file}.{pid}.tmp` is the
# hidden temp name of atomic writes (lora/kohya_file.py); a pid has at most 10 digits (Windows).
FILE_NAME_MAX_BYTES = 255
WRITTEN_NAME_PATTERNS = (
    "{}.safetensors", "{}-step00000000.safetensors", "{}-000000.safetensors",  # final, step, epoch saves
    "{}-step00000000.json", "{}-step00000000.preview.png",  # sidecar, card preview
    ".{}-step00000000.safetensors.4294967295.tmp", ".{}-step00000000.preview.png.4294967295.tmp",
    "{}-step00000000-state", "{}-step00000000-state.tmp", "{}-step00000000-state.old",  # train/state.py
    ".{}_step00000000_00.png.4294967295.tmp",  # sample images (train/sampling.py)
    "{}-20000101-000000.jsonl",  # the run log
    ".{}.lock",  # output_paths.claim_output
)
NAME_SUFFIX_BYTES = max(len(p.format("").encode("utf-8")) for p in WRITTEN_NAME_PATTERNS)
NAME_MAX_BYTES = FILE_NAME_MAX_BYTES - NAME_SUFFIX_BYTES
NAME_FORBIDDEN = '/\\:*?"<>|'
WINDOWS_RESERVED = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)), *(f"LPT{i}" for i in range(1, 10))})


def name_problem(name: str, max_bytes: int | None = None) -> str | None:
    """What is wrong with `name` as an output (file) name, as a phrase to follow it; None if fine."""
    name = str(name)
    max_bytes = NAME_MAX_BYTES if max_bytes is None else int(max_bytes)
    if not name.strip():
        return "is empty: give a plain name like my_style"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "must not contain control characters (line breaks, tabs)"
    bad = sorted(set(name) & set(NAME_FORBIDDEN), key=NAME_FORBIDDEN.index)
    if bad:
        return f"must not contain {' '.join(NAME_FORBIDDEN)} (it has {' '.join(bad)}): use a plain name like my_style"
    if name != name.strip():
        return "must not start or end with a space"
    if name.startswith("."):
        return "must not start with a dot (such files are hidden)"
    if name.split(".")[0].strip().upper() in WINDOWS_RESERVED:
        return f"is a reserved device name on Windows ({name.split('.')[0]}): use another name"
    size = len(name.encode("utf-8"))
    if size > max_bytes:
        return (f"is {size} bytes in UTF-8; at most {max_bytes} fit (file names are limited to {FILE_NAME_MAX_BYTES} "
                f"bytes and saves add up to {FILE_NAME_MAX_BYTES - max_bytes}): use a shorter name")
    return None
