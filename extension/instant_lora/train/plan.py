"""Every number derived from the config and the dataset, computed once before a run: steps, epochs,
the learning-rate warm-up, the schedule of saves and samples, and where the files go. The UI's live
plan renders it and the loop walks it, so what the form promises is what the run does. The config
itself is never changed; warnings about surprising values are collected here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PlannedSave:
    step: int  # after this optimizer step
    epoch: int  # epochs completed (the final file: epochs started)
    stem: str  # file name without .safetensors
    kind: str  # "epoch" | "step" | "final"


@dataclass(frozen=True)
class TrainPlan:
    width: int
    height: int
    num_images: int  # distinct images
    num_train_images: int  # with repeats (one epoch)
    batch_size: int  # per micro-batch
    batches_per_epoch: int
    steps_per_epoch: int  # optimizer steps
    max_train_steps: int
    num_epochs: int
    warmup_steps: int
    rank: int
    alpha: float
    train_text_encoder: bool
    unet_lr: float
    text_encoder_lr: float
    precision: str  # effective: "no" | "fp16" | "bf16"
    device: str
    seed: int | None  # None only in a preview: the run draws one when the user set none
    warnings: tuple = field(default_factory=tuple)
    output_name: str = "last"
    output_dir: str = "output"
    logging_dir: str = "output/logs"
    run_name: str = ""  # the log's file name without .jsonl
    saves: tuple = ()  # PlannedSave, in step order; the last one is the final file
    sample_steps: tuple = ()  # steps after which the sample prompts render (0 = before the first)
    sample_prompts: tuple = ()  # SamplePrompt
    accumulation: int = 1  # micro-batches per optimizer step
    gradient_checkpointing: bool = False  # for the time estimate (train/estimate.py)
    cache_latents: bool = True
    model_path: str = ""  # the base model as the config names it (its size scales the estimate)
    data_lines: tuple = ()  # the bucket table, the reg balance, the validation split (train.data)
    buckets: tuple = ()  # (width, height) of each bucket trained (over all datasets), in the bucket table's order
    validation_steps: tuple = ()  # steps after which the validation loss is measured
    reg_per_epoch: int = 0  # regularization entries among num_train_images
    batch_sizes: tuple = ()  # per dataset of a dataset TOML, when they differ
    family: object = None  # model_family.ModelFamily read from the checkpoint; None = told when it loads
    text_encoder_lr2: float | None = None  # SDXL's second text encoder; None = text_encoder_lr
    processes: int = 1  # data-parallel processes (GPUs); each takes its share of every step's micro-batches
    # what the GPU memory estimate needs besides the sizes (train/memory_estimate.py)
    optimizer_type: str = "AdamW"
    captions_vary: bool = False  # shuffled / dropped captions: a frozen text encoder stays on the GPU
    lora_preset: str = "default"
    max_token_length: int | None = None

    @property
    def total_batch_size(self) -> int:
        """Samples per optimizer step over all processes (the reference's ss_total_batch_size)."""
        return self.batch_size * self.accumulation * self.processes

    @property
    def text_encoder_lrs(self) -> tuple:
        """Per text encoder (SDXL: CLIP-L, bigG)."""
        return (self.text_encoder_lr, self.text_encoder_lr if self.text_encoder_lr2 is None else self.text_encoder_lr2)

    def validates_at(self, step: int) -> bool:
        return step in self.validation_steps

    @property
    def lora_scale(self) -> float:
        return self.alpha / self.rank

    @property
    def intermediate_saves(self) -> tuple:
        return tuple(s for s in self.saves if s.kind != "final")

    def saves_at(self, step: int) -> list:
        return [s for s in self.saves if s.step == step and s.kind != "final"]

    def samples_at(self, step: int) -> bool:
        return step in self.sample_steps

    def final_path(self):
        from pathlib import Path

        return Path(self.output_dir) / f"{self.output_name}.safetensors"


def save_schedule(max_steps: int, steps_per_epoch: int, name: str, every_epochs: int | None,
                  every_steps: int | None) -> tuple:
    """The files a run writes, as the reference names them. A step save and an epoch save that
    fall on the same step write one file (the epoch's); nothing is saved twice at the last step."""
    by_step: dict[int, PlannedSave] = {}
    if every_steps:
        for s in range(every_steps, max_steps, every_steps):
            by_step[s] = PlannedSave(s, s // steps_per_epoch, f"{name}-step{s:08d}", "step")
    if every_epochs:
        for e in range(every_epochs, -(-max_steps // steps_per_epoch), every_epochs):
            s = e * steps_per_epoch
            by_step[s] = PlannedSave(s, e, f"{name}-{e:06d}", "epoch")
    saves = [by_step[s] for s in sorted(by_step)]
    saves.append(PlannedSave(max_steps, -(-max_steps // steps_per_epoch), name, "final"))
    return tuple(saves)


def sample_schedule(max_steps: int, steps_per_epoch: int, every_steps: int | None, every_epochs: int | None,
                    at_first: bool) -> tuple:
    steps = set()
    if at_first:
        steps.add(0)
    if every_steps:
        steps.update(range(every_steps, max_steps, every_steps))
    if every_epochs:
        steps.update(e * steps_per_epoch for e in range(every_epochs, -(-max_steps // steps_per_epoch), every_epochs))
    if every_steps or every_epochs:
        steps.add(max_steps)  # the final LoRA's look
    return tuple(sorted(steps))


def validation_schedule(max_steps: int, steps_per_epoch: int, every_steps: int | None, every_epochs: int | None) -> tuple:
    """Once per epoch unless told otherwise (the reference's default), and always at the end."""
    steps = set()
    if every_steps:
        steps.update(range(every_steps, max_steps, every_steps))
    if every_epochs or not every_steps:
        n = every_epochs or 1
        steps.update(e * steps_per_epoch for e in range(n, -(-max_steps // steps_per_epoch), n))
    steps.add(max_steps)
    return tuple(sorted(steps))


def make_plan(config, num_images: int = 0, num_train_images: int = 0, *, cuda: bool, explicit: frozenset | set = frozenset(),
              seed: int | None = None, reference_warnings: bool = True, output_dir: str | None = None,
              logging_dir: str | None = None, run_name: str = "", sample_prompts: tuple = (), data=None,
              family=None, processes: int = 1) -> TrainPlan:
    """`data` (train.data.TrainingData) gives the image counts and the batches per epoch (its
    buckets never mix, so a bucket's last batch may be short); without it one square size.
    `family` (model_family.ModelFamily) as read from the checkpoint, when it could be."""
    warnings = []
    if family is not None and config.v_parameterization and family.prediction != "v":
        from dataclasses import replace

        family = replace(family, prediction="v", why=family.why + "; v-prediction by --v_parameterization")
    warnings += family_warnings(config, family)
    w, h = config.resolution_wh()
    bs = config.train_batch_size
    if data is not None:
        num_images, num_train_images = data.num_images, data.num_train_images
        batches = max(1, data.batches_per_epoch)
        warnings += data.warnings
    else:
        batches = max(1, math.ceil(num_train_images / bs))
    steps_per_epoch = max(1, math.ceil(batches / (config.gradient_accumulation_steps * processes)))
    if config.max_train_epochs:
        max_steps = config.max_train_epochs * steps_per_epoch
    else:
        max_steps = config.max_train_steps
    epochs = math.ceil(max_steps / steps_per_epoch)
    warmup = config.lr_warmup_steps
    warmup = int(round(warmup * max_steps)) if 0 < warmup < 1 else int(warmup)

    precision = config.mixed_precision
    if precision != "no" and not cuda:
        warnings.append(f"--mixed_precision={precision} needs a CUDA GPU; none found, training in fp32 on the CPU (slow).")
        precision = "no"
    rank, alpha = config.rank, config.network_alpha
    if reference_warnings:  # the command line keeps the reference's defaults: say once what they mean
        if "network_alpha" not in explicit and rank > 1:
            warnings.append(
                f"network_alpha is 1 (the reference trainer's default): with network_dim {rank} the LoRA's output is scaled by "
                f"1/{rank} = {1 / rank:.3g}, so it learns slowly unless the learning rate is high. "
                f"Set --network_alpha={rank} (or {max(1, rank // 2)}) for a full-strength LoRA.")
        if "network_dim" not in explicit:
            warnings.append("network_dim not set: using rank 4 (the reference default); 16-32 suits most subjects.")
        if "learning_rate" not in explicit and config.unet_lr is None:
            warnings.append("learning_rate not set: using 2e-6 (the reference default), which barely moves a LoRA; try --learning_rate=1e-4.")
    if config.full_fp16 or config.full_bf16:
        warnings.append("--full_fp16/--full_bf16 ignored: LoRA weights always train in fp32 (the frozen model still uses --mixed_precision).")
    if (config.keep_tokens or config.keep_tokens_separator) and not (config.shuffle_caption or config.caption_tag_dropout_rate):
        warnings.append("--keep_tokens / --keep_tokens_separator only matter with --shuffle_caption or "
                        "--caption_tag_dropout_rate: captions are used as written.")
    if max_steps < warmup:
        warnings.append(f"lr_warmup_steps {warmup} is more than the run's {max_steps} steps: the learning rate never reaches its value.")
    lr = config.learning_rate
    name = config.output_name or "last"
    out = output_dir or config.output_dir or "output"
    return TrainPlan(
        width=w, height=h, num_images=num_images, num_train_images=num_train_images, batch_size=bs,
        batches_per_epoch=batches, steps_per_epoch=steps_per_epoch, max_train_steps=max_steps, num_epochs=epochs,
        warmup_steps=warmup, rank=rank, alpha=alpha, train_text_encoder=not config.network_train_unet_only,
        unet_lr=config.unet_lr if config.unet_lr is not None else lr,
        text_encoder_lr=config.text_encoder_lr if config.text_encoder_lr is not None else lr,
        precision=precision, device="cuda" if cuda else "cpu", seed=seed,
        warnings=tuple(warnings), output_name=name, output_dir=str(out),
        logging_dir=str(logging_dir or config.logging_dir or f"{out}/logs"), run_name=run_name,
        saves=save_schedule(max_steps, steps_per_epoch, name, config.save_every_n_epochs, config.save_every_n_steps),
        sample_steps=sample_schedule(max_steps, steps_per_epoch, config.sample_every_n_steps, config.sample_every_n_epochs,
                                     config.sample_at_first) if sample_prompts else (),
        sample_prompts=tuple(sample_prompts), accumulation=config.gradient_accumulation_steps,
        gradient_checkpointing=bool(config.gradient_checkpointing),
        cache_latents=bool(config.cache_latents or config.cache_latents_to_disk),
        model_path=str(config.pretrained_model_name_or_path or ""),
        data_lines=tuple(data.lines()) if data is not None else (),
        buckets=tuple(dict.fromkeys(tuple(row[0]) for row in data.bucket_rows())) if data is not None else (),  # once each
        reg_per_epoch=data.reg_per_epoch if data is not None else 0,
        batch_sizes=tuple(data.batch_sizes) if data is not None and len(set(data.batch_sizes)) > 1 else (),
        family=family, text_encoder_lr2=config.text_encoder_lr2, processes=processes,
        optimizer_type=config.optimizer_type, lora_preset=config.preset, max_token_length=config.max_token_length,
        captions_vary=any(s.rules.varies for s in data.samples) if data is not None else False,
        validation_steps=validation_schedule(max_steps, steps_per_epoch, config.validate_every_n_steps,
                                             config.validate_every_n_epochs) if data is not None and data.validation else (),
    )


def family_line(plan: TrainPlan) -> str:
    """Which family the checkpoint is and what that means for this run, in one line."""
    f = plan.family
    encoders = " + ".join(f.text_encoders)
    if f.name == "sdxl":
        cond = (f"text: {encoders} (penultimate layers, 2048 features + pooled bigG)"
                + ("" if plan.train_text_encoder else ", frozen with outputs cached (the reference's advice for SDXL; "
                   "--text_encoder_lr trains them)")
                + "; size/crop conditioning per image; clip skip does not apply")
    else:
        cond = (f"text encoder: {encoders}" if f.name == "sd1"
                else f"text encoder: {encoders} (its penultimate layer, as SD2 uses it)")
    target = "v-prediction target" if f.prediction == "v" else "noise (epsilon) target"
    return f"model: {f.label} ({f.why}); {cond}; {target}; native size {f.default_resolution}x{f.default_resolution}"


def family_warnings(config, family) -> list[str]:
    """What a setting means (or does not) for this model family."""
    if family is None:
        return []
    out = []
    w, h = config.resolution_wh()
    if family.name == "sdxl":
        if config.clip_skip and config.clip_skip > 1:
            out.append(f"--clip_skip {config.clip_skip} does not apply to SDXL: both text encoders' penultimate layers are "
                       "used, as the WebUI and the reference trainer do")
        if w * h < 768 * 768:
            out.append(f"SDXL at {w}x{h}: SDXL was trained at 1024x1024 and a LoRA trained much smaller tends to look "
                       "soft at 1024; use 1024 (or at least 768) unless this is a quick test")
    elif family.name != "sd2" and config.v2:
        out.append(f"--v2 is ignored: the checkpoint is {family.label} ({family.why})")
    if family.name == "sd2" and family.prediction == "v" and w * h < 768 * 768:
        out.append(f"SD2.x 768-v at {w}x{h}: the model was trained at 768x768; smaller images learn a blurrier LoRA")
    if config.text_encoder_lr2 is not None and family.name != "sdxl":
        out.append(f"--text_encoder_lr's second value is for SDXL's second text encoder; {family.label} has one")
    return out


def describe(plan: TrainPlan, estimate=None, markdown: bool = False) -> list[str]:
    """The plan in a few lines, as the log and the UI show it; with an `estimate`
    (train.estimate.Estimate) also how long it will take and where that figure comes from."""
    acc = plan.accumulation
    reg = f" + {plan.reg_per_epoch} regularization" if plan.reg_per_epoch else ""
    lines = [f"{plan.num_images} images x repeats{reg} = {plan.num_train_images} per epoch / "
             + (f"batch sizes {', '.join(map(str, plan.batch_sizes))} (one per dataset)" if plan.batch_sizes else f"batch {plan.batch_size}")
             + (f" x accumulation {acc}" if acc > 1 else "")
             + (f" x {plan.processes} processes (a global batch of {plan.total_batch_size})" if plan.processes > 1 else "")
             + f" = {plan.steps_per_epoch} steps per epoch; {plan.max_train_steps} steps = {plan.num_epochs} epoch(s)"]
    if plan.family is not None:
        lines.append(family_line(plan))
    lines += list(plan.data_lines)
    if plan.validation_steps:
        lines.append(f"validation loss at {len(plan.validation_steps)} point(s) of the run (a validation loss that rises "
                     f"while the training loss falls means overfitting: use an earlier save)")
    inter = plan.intermediate_saves
    if inter:
        kinds = sorted({s.kind for s in inter})
        lines.append(f"saves: the final file + {len(inter)} intermediate ({' and '.join(kinds)} saves, at steps "
                     f"{', '.join(str(s.step) for s in inter[:6])}{', ...' if len(inter) > 6 else ''}), each a row in the test grid")
    else:
        lines.append("saves: the final file only")
    if plan.sample_steps:
        lines.append(f"samples: {len(plan.sample_prompts)} prompt(s) at {len(plan.sample_steps)} point(s) of the run")
    seed = "a random seed" if plan.seed is None else f"seed {plan.seed}"
    lines.append(f"rank {plan.rank}, alpha {plan.alpha:g} (scale {plan.lora_scale:.3g}); {seed}; "
                 f"{plan.device} {'fp32' if plan.precision == 'no' else plan.precision}")
    if estimate is not None:
        lines += estimate.lines(markdown)
    return lines
