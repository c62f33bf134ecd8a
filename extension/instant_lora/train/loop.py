"""The training run: dataset -> (captions) -> model + LoRA -> caches -> steps -> saved files.

It walks a PreparedRun's plan (the one request path made it): the steps, the saves and the
samples are the plan's, never recomputed here. A stop request is obeyed at every stage boundary
and between steps; the run ends with exactly one of Finished, Cancelled or Failed.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InstantLoraError
from . import distributed
from .events import (Cancelled, Emitter, Failed, Finished, Movement, RunStopped, Sample, Status, Step, TrainControl, Validation,
                     Warn)

NAN_PATIENCE = 5  # consecutive non-finite losses before the run stops (fp16 overflow, bad data)
MOVEMENT_REPORTS = 40  # about this many Movement events a run (plus the one before the first step)


def movement_every(total_steps: int) -> int:
    """Steps between two reports of how far each block's LoRA has moved (the last step always reports)."""
    return max(1, int(total_steps) // MOVEMENT_REPORTS)


@dataclass
class TrainResult:
    path: Path | None  # final (or cancelled) LoRA file
    saved: list  # every file written
    steps: int
    losses: list  # per optimizer step
    cancelled: bool
    plan: object


class Run:
    """One training run's objects, built stage by stage; each stage reports before it starts and
    a stop request is obeyed at every boundary between them."""

    def __init__(self, prepared, *, model=None, sinks=(), control: TrainControl | None = None):
        self.prepared = prepared
        self.config, self.plan, self.scan = prepared.config, prepared.plan, prepared.scan
        self.data = prepared.data
        self.model = model
        self.processes = getattr(self.plan, "processes", 1)
        # One log, one progress, one set of files: the other processes train and stay silent.
        self.emit = Emitter(list(sinks) if distributed.is_main() else [])
        self.control = control or TrainControl()
        self.saved: list[Path] = []
        self.stage = "dataset"
        self.step = 0
        self.epoch = 0  # 0-based, the one being trained
        self.start_step = 0
        self.t0 = time.time()
        self.output_dir = Path(self.plan.output_dir)
        self.output_name = self.plan.output_name
        self.logging_dir = Path(self.plan.logging_dir)
        self.draws: list = []  # (timestep, plain loss) of each image of the micro-batch just run
        self._movement_layers: dict | None = None
        self._movement_step: int | None = None

    def enter(self, stage: str) -> None:
        self.control.check(self.stage)
        self.stage = stage

    # ---- setup ---------------------------------------------------------------------------
    def prepare(self) -> None:
        from ..output_paths import clean_leftovers
        from .plan import describe

        cfg, plan = self.config, self.plan
        if not distributed.is_main():
            if cfg.auto_caption and any(i.caption_source != "file" for i in self.scan.items):
                distributed.barrier()  # the main process writes the captions
                self._rescan(plan)
            return
        self._open_logs()
        removed = clean_leftovers(self.output_dir, self.output_name)
        if removed:
            self.emit(Status(f"removed {len(removed)} leftover temp file(s) of an interrupted run: "
                             f"{', '.join(p.name for p in removed[:4])}{' ...' if len(removed) > 4 else ''}"))
        for leftover, state in getattr(removed, "restored", ()):
            self.emit(Status(f"restored {Path(state).name} from {Path(leftover).name} (a save was interrupted)"))
        if cfg.auto_caption and any(i.caption_source != "file" for i in self.scan.items):
            self.enter("captioning")
            self._auto_caption()
            distributed.barrier()
            self._rescan(plan)
        for note in self.scan.notes:
            self.emit(Status(note))
        self.emit(Status(self.scan.summary()))
        if self.data is None:  # a PreparedRun made by hand (tests, hosts): the same data the request path makes
            from .data import training_data

            self.data = training_data(cfg, seed=plan.seed, scan=self.scan)
            for line in self.data.lines():  # not in this plan's lines
                self.emit(Status(line))
        for w in plan.warnings:
            self.emit(Warn(w))
        from .estimate import run_estimate

        for line in describe(plan, estimate=run_estimate(plan, self.model)):  # torch tells the device now
            self.emit(Status(f"plan: {line}"))
        self.emit(Status(f"output: {plan.final_path()}"))

    def _rescan(self, plan) -> None:
        """The captions just written are the ones to train on: the same images, read again."""
        from ..request import dataset_specs_of
        from .data import merge_scans, scan_parts, train_scans, training_data

        parts = scan_parts(dataset_specs_of(self.config))
        self.scan = merge_scans(train_scans(parts))
        data = training_data(self.config, seed=plan.seed, parts=parts)
        if self.data is not None and data.num_train_images != self.data.num_train_images:
            raise InstantLoraError(f"the dataset changed while captioning ({self.data.num_train_images} images planned, "
                                   f"{data.num_train_images} now)", hint="start the training again")
        self.data = data

    def _auto_caption(self) -> None:
        from ..captioning import CaptionOptions, caption_folder, free_clip_model
        from ..captioning.options import TRAIN_CLI_WORDING

        cfg = self.config
        self.emit(Status("auto-captioning images without a caption file (CLIP interrogation)..."))
        options = CaptionOptions(mode="fill", caption_extension=cfg.caption_extension, prefix=cfg.trigger_words,
                                 clip_model=cfg.caption_clip_model, clip_pretrained=cfg.caption_clip_pretrained,
                                 wording=TRAIN_CLI_WORDING)  # only the command line and REST turn auto_caption on
        try:
            report = caption_folder(cfg.train_data_dir, options,
                                    progress=lambda done, total, rate=0.0: self.control.check("captioning"))
        finally:
            free_clip_model()  # its VRAM belongs to training now
        self.emit(Status(report.summary()))

    def _open_logs(self) -> None:
        from .events import JsonlSink, TensorBoardSink

        run_name = self.plan.run_name or f"{self.output_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        self.emit.sinks.append(JsonlSink(self.logging_dir / f"{run_name}.jsonl"))
        if self.config.log_with in ("tensorboard", "all"):
            try:
                self.emit.sinks.append(TensorBoardSink(self.logging_dir / run_name))
            except ImportError:
                self.emit(Warn("--log_with=tensorboard: the tensorboard package is not installed (pip install tensorboard); "
                               "the JSONL log is still written."))

    def load_model(self) -> None:
        import torch
        from accelerate import Accelerator

        from ..lora.kohya_file import load_into_layers, read_lora_file
        from ..lora.layers import inject_lora, lora_parameters
        from ..lora.targets import text_encoder_targets, unet_targets
        from ..models import load_sd_model

        cfg, plan = self.config, self.plan
        self._reset_accelerate()
        distributed.init(cfg.ddp_timeout, cuda=plan.device == "cuda")  # the launcher's process group, if any
        self.accelerator = Accelerator(mixed_precision=plan.precision, cpu=plan.device == "cpu")
        self.device = self.accelerator.device
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(plan.precision, torch.float32)
        if self.model is None:
            self.emit(Status(f"loading {cfg.pretrained_model_name_or_path} ..."))
            self.model = load_sd_model(cfg.pretrained_model_name_or_path, config_dir=cfg.model_config_dir)
        m = self.model
        if cfg.v_parameterization and m.prediction_type != "v_prediction":  # the user knows better than the file
            from dataclasses import replace

            from ..models import training_noise_scheduler

            m.noise_scheduler = training_noise_scheduler("v_prediction")
            m.family = replace(m.family, prediction="v", why=m.family.why + "; v-prediction by --v_parameterization")
        encoders = m.text_encoders
        for net in (m.unet, m.vae, *encoders):
            net.requires_grad_(False)
            net.eval()
        self._set_attention()
        self.emit(Status(f"model family: {m.family.label} ({m.family.why}); text encoder(s): "
                         f"{', '.join(m.family.text_encoders)}"))
        # LoRA goes in while the base is fp32; the frozen base is cast down afterwards and the
        # LoRA weights stay fp32 (an fp16 optimizer state underflows).
        unet_names = unet_targets(m.unet, cfg.preset)
        te_names = [text_encoder_targets(te, cfg.preset) if plan.train_text_encoder else [] for te in encoders]
        dropout = cfg.network_dropout or 0.0
        # Seeded from the run's seed: same seed + same data = the same file, bit for bit.
        inject_lora(m.unet, unet_names, plan.rank, plan.alpha, dropout, seed=plan.seed, seed_salt="unet")
        for i, (te, names) in enumerate(zip(encoders, te_names)):
            inject_lora(te, names, plan.rank, plan.alpha, dropout, seed=plan.seed,
                        seed_salt="text_encoder" if i == 0 else f"text_encoder_{i + 1}")
        for net in (m.unet, *encoders):
            for n, prm in net.named_parameters():
                if "lora_" not in n:
                    prm.data = prm.data.to(self.weight_dtype)
            for prm in lora_parameters(net):
                prm.data = prm.data.float()
        self.unet_params = lora_parameters(m.unet)
        self.te_param_groups = [lora_parameters(te) for te in encoders] if plan.train_text_encoder else []
        self.te_params = [p for group in self.te_param_groups for p in group]
        n_train = sum(p.numel() for p in self.unet_params + self.te_params)
        n_base = sum(p.numel() for net in (m.unet, *encoders) for p in net.parameters()) - n_train
        te_count = " + ".join(str(len(n)) for n in te_names)
        self.emit(Status(f"LoRA: {len(unet_names)} UNet modules + {te_count} text-encoder modules, "
                         f"{n_train:,} trainable parameters ({100 * n_train / max(n_base, 1):.2f}% of {n_base:,})"))
        if cfg.network_weights:
            sd, _ = read_lora_file(Path(cfg.network_weights))
            load_into_layers(sd, m.unet, self.trained_encoders(), source=cfg.network_weights)
            self.emit(Status(f"started from the weights of {cfg.network_weights}"))
        if cfg.gradient_checkpointing:
            m.unet.enable_gradient_checkpointing()
            for te in (encoders if self.te_params else []):
                te.gradient_checkpointing_enable()
                # transformers 4.30 uses reentrant checkpointing: without grad-requiring inputs the
                # LoRA inside gets no gradient at all.
                te.enable_input_require_grads()
        m.unet.to(self.device)
        for te in encoders:
            te.to(self.device)
        m.vae.to(self.device, torch.float32)

    def trained_encoders(self):
        """The text encoders whose LoRA is trained (and saved), or None: all of them or none."""
        return self.model.text_encoders if self.te_params else None

    @staticmethod
    def _reset_accelerate() -> None:
        # accelerate keeps one process-wide state; a second run in the same process (UI, tests)
        # with other precision settings must start from a clean one.
        try:
            from accelerate.state import AcceleratorState

            AcceleratorState._reset_state(True)
        except (ImportError, AttributeError, TypeError):
            pass

    def _set_attention(self) -> None:
        cfg = self.config
        if cfg.xformers:
            try:
                self.model.unet.enable_xformers_memory_efficient_attention()
                self.emit(Status("attention: xformers"))
                return
            except Exception as e:
                self.emit(Warn(f"--xformers unavailable ({type(e).__name__}); using PyTorch SDPA attention instead."))
        # diffusers uses SDPA by default on torch >= 2 (also what --sdpa / --mem_eff_attn ask for).

    def build_caches(self) -> None:
        import torch

        from .. import cache, conditioning
        from ..text_windows import MAX_WINDOWS, count_cut
        from .images import ImageMemory

        cfg, plan, m, data = self.config, self.plan, self.model, self.data
        self.latents = None
        self.images = ImageMemory()  # the uncached path's resized images
        self.max_windows = MAX_WINDOWS[cfg.max_token_length]
        samples = data.samples + data.validation
        if cfg.cache_latents or cfg.cache_latents_to_disk:
            flipped = sum(s.flip_aug for s in samples)
            self.emit(Status(f"caching latents of {len(samples)} images in {len(data.bucket_rows())} bucket(s) "
                             f"(VAE runs once per image{', twice for the mirrored copy' if flipped else ''})..."))
            # each process encodes its share of the images, then all hold all of them
            mine = distributed.share(samples)
            from .memory_estimate import latent_cache_batch

            latents = cache.encode_images(m.vae, mine, device=self.device, to_disk=cfg.cache_latents_to_disk,
                                          # SDXL's VAE at 1024 px: one image at a time (mirrored copies count)
                                          batch_size=max(1, latent_cache_batch(plan.width, plan.height) // (2 if flipped else 1)),
                                          progress=lambda done, total: self.control.check("caching"),
                                          family="sdxl" if m.family.name == "sdxl" else "sd")
            self.latents = distributed.gather_dicts(latents)
            m.vae.to("cpu")  # not needed again this run (held-out images are cached too): free its VRAM
        fixed = [s.rules.fixed(s.caption) for s in samples]
        cut = count_cut(m.tokenizer, fixed, self.max_windows)  # SDXL's two tokenizers cut alike  # per image, as the user counts them
        if cut:
            self.emit(Warn(f"{cut} image(s)' captions are longer than --max_token_length {cfg.max_token_length or 75} tokens and are cut "
                           f"there (the words after it are not learned): shorten them, or use --max_token_length=150 or 225"))
        self.text_cache = None
        self.empty_window = None
        varies = any(s.rules.varies for s in data.samples)
        if not plan.train_text_encoder:
            self.emit(Status("text encoder frozen: caching its outputs for each caption"
                             + (" (captions that change every step, by shuffling or dropout, are encoded at each step)" if varies else "")))
            self.text_cache = conditioning.encode_captions(m, fixed, clip_skip=cfg.clip_skip, device=self.device,
                                                           dtype=self.weight_dtype, max_windows=self.max_windows)
            self.empty_window = conditioning.encode_captions(m, [""], clip_skip=cfg.clip_skip, device=self.device,
                                                             dtype=self.weight_dtype)[""]
            if not varies:
                for te in m.text_encoders:
                    te.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def build_optimizer(self) -> None:
        from .optim import make_optimizer, make_scheduler

        cfg, plan = self.config, self.plan
        groups = [{"params": self.unet_params, "lr": plan.unet_lr}]
        for i, params in enumerate(self.te_param_groups):
            groups.append({"params": params, "lr": plan.text_encoder_lrs[min(i, len(plan.text_encoder_lrs) - 1)]})
        optimizer = make_optimizer(cfg.optimizer_type, groups, cfg.optimizer_kwargs(), cuda=plan.device == "cuda",
                                   warn=lambda msg: self.emit(Warn(msg)))
        kind = type(optimizer)
        self.optimizer_desc = f"{kind.__module__}.{kind.__name__}({','.join(cfg.optimizer_args)})"
        scheduler = make_scheduler(cfg.lr_scheduler, optimizer, warmup_steps=plan.warmup_steps, total_steps=plan.max_train_steps,
                                   num_cycles=cfg.lr_scheduler_num_cycles, power=cfg.lr_scheduler_power)
        m = self.model
        encoders = m.text_encoders if self.te_params else []
        if self.processes > 1:
            # No DDP wrapper (see train/distributed.py): accelerate's mixed-precision forward only,
            # gradients summed by hand; one scheduler step per optimizer step, as with one process.
            acc = self.accelerator
            self.unet_fwd = acc.prepare_model(m.unet, evaluation_mode=True)
            self.te_fwd = [acc.prepare_model(te, evaluation_mode=True) for te in encoders] or None
            self.optimizer, self.scheduler = acc.prepare(optimizer), scheduler
            return
        prepared = self.accelerator.prepare(m.unet, *encoders, optimizer, scheduler)
        self.unet_fwd = prepared[0]
        self.te_fwd = list(prepared[1:1 + len(encoders)]) or None  # one per text encoder, when trained
        self.optimizer, self.scheduler = prepared[-2], prepared[-1]

    # ---- one step --------------------------------------------------------------------------
    def _batch_loss(self, samples, micro_index: int):
        from .objective import batch_loss

        return batch_loss(self, samples, micro_index, self.epoch, record=self.draws)

    def report_movement(self, step: int) -> None:
        """A Movement event for the weights as they are after `step` (the main process; once a step)."""
        if not distributed.is_main() or self._movement_step == step:
            return
        from ..lora import movement

        if self._movement_layers is None:
            from ..lora.kohya_file import named_layers

            self._movement_layers = named_layers(self.model.unet, self.trained_encoders())  # the saved file's modules
        blocks = movement.from_named_layers(self._movement_layers, movement.layers_per_block(self.model.unet))
        self._movement_step = step
        self.emit(Movement(step=step, blocks=blocks))

    def latents_of_validation(self, sample):
        """A held-out image's latents: cached with the rest, else encoded now (centre crop, not mirrored)."""
        import torch

        from ..cache import latent_key
        from .images import pixels

        if self.latents is not None:
            return self.latents[latent_key(sample)].to(self.device)
        with torch.no_grad():
            vae = self.model.vae
            px = pixels(sample, memory=self.images)[None].to(self.device, torch.float32)
            return (vae.encode(px).latent_dist.mean * vae.config.scaling_factor)[0]

    def _validate(self, step: int, epoch: int, losses: list) -> None:
        from .objective import validation_loss

        if not distributed.is_main():
            distributed.barrier()  # the main process measures it
            return
        recent = [x for x in losses[-50:] if x == x]
        loss = validation_loss(self)
        self.emit(Validation(step=step, epoch=epoch, loss=loss, images=len(self.data.validation),
                             train_avg_loss=sum(recent) / len(recent) if recent else None))
        distributed.barrier()

    def run(self) -> TrainResult:
        import torch

        cfg, plan, data = self.config, self.plan, self.data
        self.start_step = step = self._maybe_resume()
        gas, procs, me = plan.accumulation, self.processes, distributed.rank()
        per_step = gas * procs  # micro-batches per optimizer step, over all processes
        params = self.unet_params + self.te_params
        losses, bad_streak, cancelled = [], 0, False
        from .metadata import run_clock

        self.started_at = run_clock()
        self.t0 = time.time()
        self.unet_fwd.train()
        for te in self.te_fwd or []:
            te.train()
        self.enter("training")
        self.emit(Status(f"training from step {step} to {plan.max_train_steps}" if step else "training..."))
        self.report_movement(step)  # zero before the first step (up starts at zero); a resumed run's own
        every = movement_every(plan.max_train_steps)
        if plan.samples_at(0) and step == 0:
            self._sample(0)
        while step < plan.max_train_steps and not cancelled:
            self.epoch = epoch = step // plan.steps_per_epoch
            batches = data.epoch_batches(plan.seed, epoch)
            first = (step - epoch * plan.steps_per_epoch) * per_step
            for b in range(first, len(batches), per_step):
                group = batches[b:b + per_step]
                step_loss, draws = 0.0, []
                for j, idx in enumerate(group):
                    if j % procs != me:  # another process's micro-batch (the same index = the same noise)
                        continue
                    micro = (epoch * plan.batches_per_epoch) + b + j
                    self.draws = []
                    loss = self._batch_loss([data.samples[i] for i in idx], micro)
                    self.accelerator.backward(loss / len(group))
                    step_loss += float(loss.detach()) / len(group)
                    draws.extend((j, t, x) for t, x in self.draws)
                if procs > 1:
                    distributed.sum_gradients(params)
                    step_loss = distributed.sum_value(step_loss)
                    draws = distributed.gather_lists(draws)  # every process's images, for the main one's Step
                draws.sort(key=lambda d: d[0])  # in micro-batch order, as one process would have run them
                if cfg.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                self.optimizer.step()
                if not getattr(self.optimizer, "step_was_skipped", False):  # fp16: an overflowing step is skipped
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.step = step = step + 1
                if procs > 1 and not distributed.weights_in_sync(params):
                    raise InstantLoraError(f"the processes' LoRA weights differ after step {step}: a rank drifted",
                                           hint="report this as a bug, with the command line; train with one process meanwhile")
                bad_streak = bad_streak + 1 if not torch.isfinite(torch.tensor(step_loss)) else 0
                if bad_streak >= NAN_PATIENCE:
                    raise InstantLoraError(f"the loss was NaN/inf for {NAN_PATIENCE} steps in a row (step {step}); stopped without saving broken weights.",
                                           hint="lower the learning rate, or use --mixed_precision=bf16 (or no) instead of fp16")
                losses.append(step_loss)
                recent = [x for x in losses[-50:] if x == x]
                lrs = self.scheduler.get_last_lr()
                self.emit(Step(step=step, total=plan.max_train_steps, epoch=epoch + 1, loss=step_loss,
                               avg_loss=sum(recent) / max(len(recent), 1), lr=lrs[0], seconds=time.time() - self.t0,
                               timesteps=[int(t) for _, t, _ in draws], sample_losses=[float(x) for _, _, x in draws],
                               text_encoder_lr=lrs[1] if len(lrs) > 1 else None))
                # not while the loss is NaN/inf (the weights' numbers say nothing then; the run stops if it lasts)
                if (step % every == 0 and not bad_streak) or step >= plan.max_train_steps:
                    self.report_movement(step)
                if plan.validates_at(step):
                    self._validate(step, epoch + 1, losses)
                if step >= plan.max_train_steps:
                    break
                for planned in plan.saves_at(step):  # the plan's schedule, nothing computed here
                    self.save(planned.stem, step, planned.epoch, planned.kind)
                if plan.samples_at(step):
                    self._sample(step)
                if distributed.any_rank(self.control.stop_requested):  # every process stops after this same step
                    cancelled = True
                    break
        if cancelled:
            return self._finish_cancelled(losses)
        if procs > 1:
            self.emit(Status(f"{procs} processes held identical LoRA weights after each of the {step - self.start_step} steps"))
        if plan.samples_at(plan.max_train_steps):
            self._sample(step)  # the final LoRA's look
        final = plan.saves[-1]
        path = self.save(final.stem, step, final.epoch, "final", finished=True)
        self.emit(Finished(path=str(path), steps=step, seconds=time.time() - self.t0))
        return TrainResult(path=path, saved=self.saved, steps=step, losses=losses, cancelled=False, plan=plan)

    def _finish_cancelled(self, losses) -> TrainResult:
        """Save what was learned since this process started; a stop before the first step
        writes nothing into the Lora folder."""
        step, path = self.step, None
        if step > self.start_step:
            self.report_movement(step)  # the numbers of the file saved now
            path = self.save(f"{self.output_name}-step{step:08d}", step, step // self.plan.steps_per_epoch, "cancelled")
        self.emit(Cancelled(path=str(path) if path else None, steps=step, seconds=time.time() - self.t0, stage=self.stage))
        return TrainResult(path=path, saved=self.saved, steps=step, losses=losses, cancelled=True, plan=self.plan)

    def _sample(self, step: int) -> None:
        from .sampling import render_samples, sampler_name

        if not self.accelerator.is_main_process:
            distributed.barrier()  # no process may run ahead into the next step while samples render
            return
        cfg, plan = self.config, self.plan
        autocast = getattr(self.accelerator, "autocast", None)  # frozen fp16 weights + fp32 LoRA, as in training
        with autocast() if autocast else contextlib.nullcontext():
            rendered = render_samples(self.model, list(plan.sample_prompts), sampler=sampler_name(cfg.sample_sampler), width=plan.width,
                                      height=plan.height, seed=plan.seed, clip_skip=cfg.clip_skip,
                                      folder=self.logging_dir / "samples", stem=f"{self.output_name}_step{step:08d}")
        for prompt, path in rendered:
            self.emit(Sample(step=step, caption=prompt, path=str(path)))
        distributed.barrier()

    # ---- saving and resuming -------------------------------------------------------------
    def _maybe_resume(self) -> int:
        from .saving import maybe_resume

        return maybe_resume(self)

    def save(self, stem: str, step: int, epoch: int, kind: str, finished: bool = False) -> Path:
        if not distributed.is_main():  # the main process writes; the others wait until it has
            distributed.barrier()
            return self.output_dir / f"{stem}.safetensors"
        try:
            return self._save_main(stem, step, epoch, kind, finished)
        finally:
            distributed.barrier()

    def _save_main(self, stem: str, step: int, epoch: int, kind: str, finished: bool) -> Path:
        from ..output_paths import remove_stale_state
        from .saving import save

        path = save(self, stem, step, epoch, kind, finished)
        cfg = self.config
        old_preview = path.with_name(f"{stem}.preview.png")
        if old_preview.is_file():  # an earlier file's card picture; this run's is written after training
            try:
                old_preview.unlink()
            except OSError as e:
                self.emit(Warn(f"{old_preview.name} is an earlier file's card picture and could not be removed "
                               f"({e.strerror or e}): delete it"))
            else:
                self.emit(Status(f"removed {old_preview.name}: the card picture of the file this run replaced"))
        if not (cfg.save_state or (finished and cfg.save_state_on_train_end)):
            # A `stem-state` beside the new file is an earlier run's: resuming from it would mix
            # that run's optimizer with this file. Kept only when this run resumed from it.
            try:
                stale = remove_stale_state(self.output_dir, stem, keep=cfg.resume)
            except OSError as e:
                self.emit(Warn(f"{stem}-state beside {path.name} is an earlier run's training state and could not be "
                               f"removed ({e.strerror or e}): delete it, do not resume from it"))
            else:
                if stale is not None:
                    self.emit(Status(f"removed {stale.name}: an earlier run's training state, not this {path.name}'s"))
        return path


def train(request, *, explicit=frozenset(), model=None, sinks=(), control: TrainControl | None = None) -> TrainResult:
    """Run a whole training from a PreparedRun (the one request path), or from a TrainConfig, which
    goes through that path first. Raises InstantLoraError for anything the user can fix; a stop
    request ends it as Cancelled (a TrainResult with cancelled=True)."""
    from ..request import PreparedRun, RunRequest, prepare_run

    if not isinstance(request, PreparedRun):
        request = prepare_run(RunRequest(front="cli", values=_config_values(request), explicit=frozenset(explicit)))
    return run_prepared(request, model=model, sinks=sinks, control=control)


def _config_values(config) -> dict:
    from ..config import TrainConfig

    default = TrainConfig().to_dict()
    return {k: v for k, v in config.to_dict().items() if v != default[k]}


def run_prepared(prepared, *, model=None, sinks=(), control: TrainControl | None = None) -> TrainResult:
    from ..heavy_imports import import_sd_libraries
    from ..output_paths import claim_output

    run = Run(prepared, model=model, sinks=sinks, control=control)
    try:
        # the main process holds the output's lock for all of them
        with claim_output(run.output_dir, run.output_name) if distributed.is_main() else contextlib.nullcontext():
            run.prepare()
            run.enter("loading")
            import_sd_libraries()
            run.load_model()
            run.enter("caching")
            run.build_caches()
            run.build_optimizer()
            return run.run()
    except RunStopped as stop:
        run.emit(Cancelled(path=None, steps=run.step, seconds=time.time() - run.t0, stage=stop.stage))
        return TrainResult(path=None, saved=run.saved, steps=run.step, losses=[], cancelled=True, plan=run.plan)
    except BaseException as e:
        message = str(e) if isinstance(e, InstantLoraError) else f"{type(e).__name__}: {e}"
        run.emit(Failed(message=message, stage=run.stage, steps=run.step))
        raise
    finally:
        run.emit.close()
