"""What the UI's buttons do, as plain functions (no Gradio here, no torch at import time): the
Blocks module only wires components to these, so they are tested without a browser."""

from __future__ import annotations

import html
import shutil
from functools import lru_cache
from pathlib import Path

from ..config import FIELDS, OPTIMIZERS, TrainConfig, field_type, is_safe_name
from ..dataset import IMAGE_EXTENSIONS, load_image, read_caption, scan_dataset
from ..errors import InstantLoraError

# Fields the form shows, in order: (field, label). Help text comes from the config's metadata.
BASIC_FIELDS = [
    ("output_name", "Output name"), ("trigger_words", "Trigger words"), ("network_dim", "Rank"), ("network_alpha", "Alpha"),
    ("network_train_unet_only", "UNet only (freeze the text encoder)"), ("learning_rate", "Learning rate"),
    ("max_train_epochs", "Epochs"), ("train_batch_size", "Batch size"), ("resolution", "Resolution"),
]
ADVANCED_FIELDS = [
    ("unet_lr", "UNet learning rate"), ("text_encoder_lr", "Text encoder learning rate"), ("optimizer_type", "Optimizer"),
    ("lr_scheduler", "LR schedule"), ("lr_warmup_steps", "Warm-up steps"), ("min_snr_gamma", "Min-SNR gamma"),
    ("noise_offset", "Noise offset"), ("clip_skip", "CLIP skip"), ("mixed_precision", "Mixed precision"),
    ("gradient_checkpointing", "Gradient checkpointing"), ("cache_latents", "Cache latents"),
    ("cache_latents_to_disk", "Cache latents to disk"), ("seed", "Seed"), ("save_every_n_epochs", "Save every N epochs"),
    ("save_every_n_steps", "Save every N steps"), ("save_precision", "Save precision"), ("network_args", "Network args"),
    ("caption_extension", "Caption extension"), ("max_grad_norm", "Max grad norm"),
    ("gradient_accumulation_steps", "Gradient accumulation"), ("save_state", "Save resumable state"),
]
FORM_FIELDS = [name for name, _ in BASIC_FIELDS + ADVANCED_FIELDS]
UI_DEFAULTS = {  # where the reference's defaults are a trap for a first-time user, the form starts sane
    "network_dim": 16, "network_alpha": 8.0, "learning_rate": 1e-4, "max_train_epochs": 10, "cache_latents": True,
    "mixed_precision": "fp16", "save_every_n_epochs": 2, "output_name": "my_lora",
}
CHOICES = {"optimizer_type": list(OPTIMIZERS)}


def help_for(name: str) -> str:
    return FIELDS[name].metadata["help"]


def choices_for(name: str):
    return CHOICES.get(name) or FIELDS[name].metadata["choices"]


def initial_values() -> dict:
    base = TrainConfig().to_dict()
    return {name: UI_DEFAULTS.get(name, base[name]) for name in FORM_FIELDS}


def _form_value(name: str, value):
    """Form value -> config value: empty / 0 in an optional number means 'not set'."""
    kind = field_type(name)
    default = TrainConfig().to_dict()[name]
    if kind is list:
        return [v for v in str(value or "").replace(",", " ").split() if v]
    if kind in (int, float):
        if value in (None, ""):
            return default
        if default is None and float(value) == 0:
            return None
        if name == "seed" and float(value) < 0:
            return None
        return int(value) if kind is int else float(value)
    if kind is bool:
        return bool(value)
    text = "" if value is None else str(value).strip()
    return text or (default if default is not None else None)


def config_from_form(values: dict, *, checkpoint: str, dataset_dir: str, output_dir: str) -> TrainConfig:
    data = {name: _form_value(name, values[name]) for name in FORM_FIELDS if name in values}
    data.update(pretrained_model_name_or_path=checkpoint, train_data_dir=dataset_dir, output_dir=output_dir)
    config = TrainConfig(**data)
    config.check()
    return config


# ---- dataset -------------------------------------------------------------------------------------

def dataset_view(folder: str, caption_extension: str = ".txt"):
    """(gallery items [(image path, caption)], summary markdown, problems markdown, scan or None)."""
    if not folder or not str(folder).strip():
        return [], "No dataset yet: enter a folder path or upload images.", "", None
    try:
        scan = scan_dataset(folder, caption_extension)
    except InstantLoraError as e:
        return [], "", f"**{html.escape(e.message)}**\n\n```\n{e.hint or ''}\n```", None
    items = [(str(i.path), i.caption or "(no caption)") for i in scan.items]
    lines = [f"**{len(scan.items)} images**, {scan.num_train_images} per epoch with repeats "
             f"({', '.join(f'{s.name}: {s.image_count} x {s.repeats}' for s in scan.subsets)})"]
    lines += [f"- {n}" for n in scan.notes]
    problems = [f"- skipped `{Path(s.path).name}`: {s.reason}" for s in scan.skipped]
    missing = [i for i in scan.items if i.caption_source != "file"]
    if missing:
        problems.append(f"- {len(missing)} image(s) have no caption file (their folder name is used): use Auto-caption or edit them")
    problems += [f"- {p}" for p in caption_lint_lines(scan)]
    return items, "\n".join(lines), "\n".join(problems) or "No problems found.", scan


def caption_lint_lines(scan) -> list[str]:
    """Short caption checks that need no model: empty and duplicate captions, a tag in nearly all."""
    out = []
    captions = [i.caption for i in scan.items if i.caption_source == "file"]
    if not captions:
        return out
    dupes = len(captions) - len(set(captions))
    if dupes:
        out.append(f"{dupes} caption(s) are exact duplicates of another: the LoRA cannot tell those images apart")
    counts: dict[str, int] = {}
    for c in captions:
        for tag in {t.strip().lower() for t in c.split(",") if t.strip()}:
            counts[tag] = counts.get(tag, 0) + 1
    if len(captions) >= 4:
        common = [t for t, n in counts.items() if n >= 0.9 * len(captions)]
        if common:
            out.append(f"in nearly every caption: {', '.join(sorted(common)[:5])} -- such tags bind to the word, not to your trigger "
                       "(fine if it is the trigger itself)")
    return out


def save_caption(image_path: str, caption: str, dataset_dir: str, caption_extension: str = ".txt") -> str:
    """Write `<stem><ext>` next to an image of this dataset (never outside it)."""
    from ..lora.kohya_file import atomic_write_bytes

    if not image_path:
        raise InstantLoraError("select an image in the gallery first")
    root, image = Path(dataset_dir).resolve(), Path(image_path).resolve()
    if root not in image.parents or not image.is_file():
        raise InstantLoraError(f"{image.name} is not an image of the dataset {root}")
    ext = caption_extension if caption_extension.startswith(".") else "." + caption_extension
    target = image.with_suffix(ext)
    atomic_write_bytes(target, (caption.strip().replace("\n", " ") + "\n").encode("utf-8"))
    return f"saved caption of {image.name}"


def caption_of(image_path: str, caption_extension: str = ".txt") -> str:
    return (read_caption(Path(image_path), caption_extension) or "") if image_path else ""


def describe_uploads(files) -> str:
    """What the upload box holds, before anything is copied."""
    paths = [Path(getattr(f, "name", f)) for f in (files or [])]
    if not paths:
        return ""
    images = sum(p.suffix.lower() in IMAGE_EXTENSIONS for p in paths)
    captions = sum(p.suffix.lower() == ".txt" for p in paths)
    other = len(paths) - images - captions
    parts = [f"{images} image(s)", f"{captions} caption file(s)"] + ([f"{other} other file(s), which will be skipped"] if other else [])
    return f"{len(paths)} file(s) ready to add: {', '.join(parts)}. Set the dataset name and repeats, then Add to dataset."


def import_uploads(files, data_dir: str | Path, dataset_name: str, repeats: int) -> tuple[str, str]:
    """Copy uploaded images (+ same-named .txt captions) into <data_dir>/datasets/<name>/<N>_<name>/.
    Non-images and unreadable images are reported and not copied. Returns (dataset folder, report)."""
    name = (dataset_name or "").strip()
    if not is_safe_name(name):
        raise InstantLoraError(f"dataset name '{dataset_name}' must be a plain name (letters, digits, spaces, _ or -)",
                               hint="e.g. my_character")
    repeats = int(repeats or 1)
    if not 1 <= repeats <= 1000:
        raise InstantLoraError(f"repeats = {repeats} must be between 1 and 1000")
    paths = [Path(getattr(f, "name", f)) for f in (files or [])]  # gradio 3 gives temp-file objects, 4+ paths
    if not paths:
        raise InstantLoraError("no files uploaded", hint="drop images (png, jpg, webp, bmp) and optional .txt captions")
    root = Path(data_dir) / "datasets" / name
    target = root / f"{repeats}_{name}"
    target.mkdir(parents=True, exist_ok=True)
    copied, rejected = 0, []
    for p in paths:
        suffix = p.suffix.lower()
        safe = Path(p.name).name  # the upload's own base name only
        if suffix == ".txt":
            shutil.copyfile(p, target / safe)
        elif suffix in IMAGE_EXTENSIONS:
            try:
                load_image(p)
            except InstantLoraError as e:
                rejected.append(f"{safe}: {getattr(e, 'reason', e.message)}")
                continue
            shutil.copyfile(p, target / safe)
            copied += 1
        else:
            rejected.append(f"{safe}: not an image (png, jpg, jpeg, webp or bmp)")
    report = f"added {copied} image(s) to {target}"
    if rejected:
        report += "\nnot added:\n" + "\n".join(f"- {r}" for r in rejected)
    if copied == 0 and not any(target.iterdir()):
        target.rmdir()
    return str(root), report


# ---- model & plan ------------------------------------------------------------------------------

@lru_cache(maxsize=32)
def lora_parameter_count(rank: int, preset: str, train_text_encoder: bool) -> tuple[int, int]:
    """(trainable, base) parameters for SD1.5 at this rank, from its config without loading weights."""
    from ..heavy_imports import import_sd_libraries

    import_sd_libraries()
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..lora.targets import text_encoder_targets, unet_targets
    from ..models import BUNDLED_SD15_CONFIG

    # torch.device("meta") is thread-local; accelerate's init_empty_weights patches torch for every
    # thread and would put a concurrently training run's new LoRA layers on the meta device.
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(BUNDLED_SD15_CONFIG / "unet")))
        te = CLIPTextModel(CLIPTextConfig.from_pretrained(str(BUNDLED_SD15_CONFIG / "text_encoder")))
    modules = dict(unet.named_modules())
    count = 0
    for name in unet_targets(unet, preset):
        w = modules[name].weight
        count += rank * (w.shape[0] + w.shape[1])
    te_modules = dict(te.named_modules())
    if train_text_encoder:
        for name in text_encoder_targets(te, preset):
            w = te_modules[name].weight
            count += rank * (w.shape[0] + w.shape[1])
    base = sum(p.numel() for p in unet.parameters()) + sum(p.numel() for p in te.parameters())
    return count, base


def plan_markdown(values: dict, scan) -> str:
    """Live arithmetic: images x repeats x epochs / batch = steps; trainable share of the model."""
    import math

    try:
        cfg = TrainConfig(**{k: _form_value(k, values[k]) for k in FORM_FIELDS if k in values})
    except (TypeError, ValueError) as e:
        return f"check the settings: {e}"
    lines = []
    if scan is not None:
        per_epoch = scan.num_train_images
        batches = math.ceil(per_epoch / cfg.train_batch_size)
        steps_epoch = math.ceil(batches / cfg.gradient_accumulation_steps)
        epochs = cfg.max_train_epochs or math.ceil(cfg.max_train_steps / steps_epoch)
        lines.append(f"{len(scan.items)} images x repeats = {per_epoch} per epoch; x {epochs} epochs / batch {cfg.train_batch_size}"
                     f"{' x accumulation ' + str(cfg.gradient_accumulation_steps) if cfg.gradient_accumulation_steps > 1 else ''}"
                     f" = **{steps_epoch * epochs} steps**")
        lines.append(_saves_line(cfg, epochs, steps_epoch))
    try:
        trainable, base = lora_parameter_count(cfg.rank, cfg.preset, not cfg.network_train_unet_only)
        lines.append(f"trainable: **{trainable / 1e6:.2f} M** parameters = {100 * trainable / base:.2f}% of SD1.5's "
                     f"{base / 1e6:.0f} M (UNet + text encoder); LoRA scale alpha/rank = {cfg.network_alpha / cfg.rank:.3g}")
    except InstantLoraError as e:
        lines.append(e.message)
    problems = [f"--{k} {m}" for k, m in cfg.validate() if k not in ("pretrained_model_name_or_path", "train_data_dir")]
    if problems:
        lines.append("**fix:** " + "; ".join(problems))
    return "\n\n".join(lines)


def _saves_line(cfg: TrainConfig, epochs: int, steps_epoch: int) -> str:
    """How many files the run leaves in the Lora folder: each is a row of the test grid."""
    steps = epochs * steps_epoch
    at, every = set(), []
    if cfg.save_every_n_epochs:
        every.append(f"every {cfg.save_every_n_epochs} epoch(s)")
        at |= {e * steps_epoch for e in range(cfg.save_every_n_epochs, epochs, cfg.save_every_n_epochs)}
    if cfg.save_every_n_steps:
        every.append(f"every {cfg.save_every_n_steps} steps")
        at |= set(range(cfg.save_every_n_steps, steps, cfg.save_every_n_steps))
    if not every:
        return "saves: the final file only"
    return f"saves: the final file + {len(at)} intermediate ({' and '.join(every)}), each a row in the test grid"


def sample_prompt_file(text: str, every_n, data_dir: Path, name: str) -> tuple[str | None, int | None]:
    """(prompt file, every N steps) for the trainer, or (None, None) when sampling is off."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    every = int(every_n or 0)
    if not lines or every <= 0:
        return None, None
    from ..lora.kohya_file import atomic_write_bytes

    path = Path(data_dir) / "prompts" / f"{name}.txt"
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return str(path), every


def output_name_problem(name: str, lora_dir: Path, overwrite: bool) -> str | None:
    if not name or not is_safe_name(name):
        return f"Output name '{name}' must be a plain file name without folders, e.g. my_style."
    if (Path(lora_dir) / f"{name}.safetensors").exists() and not overwrite:
        return f"{name}.safetensors already exists in {lora_dir}: pick another name or tick 'Replace existing file'."
    return None


# ---- progress ------------------------------------------------------------------------------------

def _fmt_time(seconds) -> str:
    if seconds is None:
        return "--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def progress_html(snap) -> str:
    if snap.state == "idle":
        return "<div class='il-progress'>Not started.</div>"
    pct = 100.0 * snap.step / snap.total if snap.total else 0.0
    loss = f"{snap.loss:.4f} (avg {snap.avg_loss:.4f})" if snap.loss is not None else "--"
    return (f"<div class='il-progress' data-state='{snap.state}'>"
            f"<div style='background:#ddd;border-radius:4px;height:14px'><div style='width:{pct:.1f}%;height:14px;border-radius:4px;"
            f"background:#3b82f6'></div></div>"
            f"<div>{html.escape(snap.state)}: step <b>{snap.step}</b> / {snap.total} ({pct:.0f}%) | epoch {snap.epoch} | "
            f"loss {loss} | {snap.it_per_s:.2f} it/s | elapsed {_fmt_time(snap.seconds)} | ETA {_fmt_time(snap.eta_s)}</div></div>")


def loss_chart_svg(losses: list, width: int = 640, height: int = 200) -> str:
    """Raw loss (light) and its moving average (dark) as inline SVG: works in every Gradio."""
    if len(losses) < 2:
        return "<div class='il-loss'>The loss chart appears after the first steps.</div>"
    steps = [s for s, _ in losses]
    vals = [v if v == v else 0.0 for _, v in losses]
    smooth, ema = [], 0.0
    for i, v in enumerate(vals):  # TensorBoard-style smoothing (0.9), bias-corrected at the start
        ema = 0.9 * ema + 0.1 * v
        smooth.append(ema / (1 - 0.9 ** (i + 1)))
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    x0, x1 = steps[0], steps[-1]

    def pts(series):
        return " ".join(f"{40 + (s - x0) / max(x1 - x0, 1) * (width - 50):.1f},{10 + (hi - v) / span * (height - 30):.1f}"
                        for s, v in zip(steps, series))

    return (f"<svg class='il-loss' viewBox='0 0 {width} {height}' width='100%' xmlns='http://www.w3.org/2000/svg'>"
            f"<polyline fill='none' stroke='#93c5fd' stroke-width='1' points='{pts(vals)}'/>"
            f"<polyline fill='none' stroke='#1d4ed8' stroke-width='2' points='{pts(smooth)}'/>"
            f"<text x='2' y='14' font-size='11'>{hi:.3f}</text><text x='2' y='{height - 18}' font-size='11'>{lo:.3f}</text>"
            f"<text x='40' y='{height - 4}' font-size='11'>step {x0}</text>"
            f"<text x='{width - 80}' y='{height - 4}' font-size='11'>step {x1}</text></svg>")


def result_markdown(snap, trigger_words: str = "") -> tuple[str, str]:
    """(markdown about the saved file, the prompt tag to copy)."""
    if snap.state == "failed":
        return f"**Training failed:** {html.escape(snap.error or 'unknown error')}", ""
    if not snap.result_path:
        return "", ""
    path = Path(snap.result_path)
    size = path.stat().st_size / 2**20 if path.exists() else 0.0
    tag = f"<lora:{path.stem}:0.8>" + (f" {trigger_words}" if trigger_words else "")
    what = "Cancelled; saved what was learned so far" if snap.state == "cancelled" else "Saved"
    return f"{what}: `{path}` ({size:.1f} MB)", tag
