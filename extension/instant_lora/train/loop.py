"""The training run: dataset -> (captions) -> model + LoRA -> caches -> steps -> saved files.

Randomness is derived from (seed, position) rather than carried in global RNG state: the data
order of epoch e and the noise/timesteps of micro-batch i are pure functions of the seed, so a
resumed run takes exactly the path the uninterrupted run would have taken.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import InstantLoraError
from .events import Emitter, Finished, Sample, Saved, Status, Step, TrainControl, Warn

NAN_PATIENCE = 5  # consecutive non-finite losses before the run stops (fp16 overflow, bad data)


@dataclass
class TrainResult:
    path: Path | None  # final (or cancelled) LoRA file
    saved: list  # every file written
    steps: int
    losses: list  # per optimizer step
    cancelled: bool
    plan: object


def _rng(seed: int, *key: int):
    import torch

    h = seed
    for k in key:
        h = (h * 1_000_003 + k) % (2**63 - 1)
    return torch.Generator().manual_seed(h)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    import torch

    return torch.randperm(n, generator=_rng(seed, 1, epoch)).tolist()


def _min_snr_weights(noise_scheduler, timesteps, gamma: float):
    """min(SNR, gamma) / SNR per sample (Hang et al. 2023, eq. 9; epsilon prediction)."""
    import torch

    alphas = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas / (1 - alphas)
    return torch.minimum(snr, torch.full_like(snr, gamma)) / snr


class Run:
    """One training run's objects, built step by step so each stage reports before it starts."""

    def __init__(self, config, *, explicit=frozenset(), model=None, sinks=(), control: TrainControl | None = None):
        self.config = config
        self.explicit = set(explicit)
        self.model = model
        self.emit = Emitter(list(sinks))
        self.control = control or TrainControl()
        self.saved: list[Path] = []

    # ---- setup ---------------------------------------------------------------------------
    def prepare(self) -> None:
        import torch

        from ..dataset import scan_dataset
        from ..output_paths import resolve_output_dir
        from .plan import make_plan

        cfg = self.config
        cfg.check()
        self.scan = scan_dataset(cfg.train_data_dir, cfg.caption_extension)
        if cfg.auto_caption and any(i.caption_source != "file" for i in self.scan.items):
            self._auto_caption()
            self.scan = scan_dataset(cfg.train_data_dir, cfg.caption_extension)
        for note in self.scan.notes:
            self.emit(Status(note))
        self.emit(Status(self.scan.summary()))
        seed = cfg.seed if cfg.seed is not None else random.randint(0, 2**31 - 1)
        cuda = torch.cuda.is_available()
        self.plan = make_plan(cfg, len(self.scan.items), self.scan.num_train_images, cuda=cuda, explicit=self.explicit, seed=seed)
        for w in self.plan.warnings:
            self.emit(Warn(w))
        p = self.plan
        self.emit(Status(f"plan: {p.num_train_images} images x repeats / batch {p.batch_size} = {p.steps_per_epoch} steps per epoch; "
                         f"{p.max_train_steps} steps = {p.num_epochs} epochs; rank {p.rank}, alpha {p.alpha:g} (scale {p.lora_scale:.3g}); "
                         f"seed {p.seed}; {p.device} {'fp32' if p.precision == 'no' else p.precision}"))
        self.output_dir, why = resolve_output_dir(cfg.output_dir, cfg.lora_dir, cfg.webui_dir)
        self.output_name = cfg.output_name or "last"
        self.emit(Status(f"output: {self.output_dir / (self.output_name + '.safetensors')} ({why})"))
        self.logging_dir = Path(cfg.logging_dir) if cfg.logging_dir else self.output_dir / "logs"
        self.sample_prompts = []
        if cfg.sample_prompts:
            from .sampling import read_prompt_file, sampler_name

            self.sample_prompts = read_prompt_file(cfg.sample_prompts)
            self.sample_sampler = sampler_name(cfg.sample_sampler)  # checked now, not at the first sample
        self._open_logs()

    def _auto_caption(self) -> None:
        from ..captioning import CaptionOptions, caption_folder, free_clip_model

        cfg = self.config
        self.emit(Status("auto-captioning images without a caption file (CLIP interrogation)..."))
        options = CaptionOptions(mode="fill", caption_extension=cfg.caption_extension, prefix=cfg.trigger_words,
                                 clip_model=cfg.caption_clip_model, clip_pretrained=cfg.caption_clip_pretrained)
        try:
            report = caption_folder(cfg.train_data_dir, options)
        finally:
            free_clip_model()  # its VRAM belongs to training now
        self.emit(Status(report.summary()))

    def _open_logs(self) -> None:
        from .events import JsonlSink, TensorBoardSink

        run_name = f"{self.config.log_prefix or ''}{self.output_name}-{time.strftime('%Y%m%d-%H%M%S')}"
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
        self.accelerator = Accelerator(mixed_precision=plan.precision, cpu=plan.device == "cpu")
        self.device = self.accelerator.device
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(plan.precision, torch.float32)
        if self.model is None:
            self.emit(Status(f"loading {cfg.pretrained_model_name_or_path} ..."))
            self.model = load_sd_model(cfg.pretrained_model_name_or_path, config_dir=cfg.model_config_dir)
        m = self.model
        for net in (m.unet, m.vae, m.text_encoder):
            net.requires_grad_(False)
            net.eval()
        self._set_attention()
        # LoRA goes in while the base is fp32; the frozen base is cast down afterwards and the
        # LoRA weights stay fp32 (an fp16 optimizer state underflows).
        unet_names = unet_targets(m.unet, cfg.preset)
        te_names = text_encoder_targets(m.text_encoder, cfg.preset) if plan.train_text_encoder else []
        dropout = cfg.network_dropout or 0.0
        inject_lora(m.unet, unet_names, plan.rank, plan.alpha, dropout)
        inject_lora(m.text_encoder, te_names, plan.rank, plan.alpha, dropout)
        for net in (m.unet, m.text_encoder):
            for n, prm in net.named_parameters():
                if "lora_" not in n:
                    prm.data = prm.data.to(self.weight_dtype)
            for prm in lora_parameters(net):
                prm.data = prm.data.float()
        self.unet_params = lora_parameters(m.unet)
        self.te_params = lora_parameters(m.text_encoder) if te_names else []
        n_train = sum(p.numel() for p in self.unet_params + self.te_params)
        n_base = sum(p.numel() for net in (m.unet, m.text_encoder) for p in net.parameters()) - n_train
        self.emit(Status(f"LoRA: {len(unet_names)} UNet modules + {len(te_names)} text-encoder modules, "
                         f"{n_train:,} trainable parameters ({100 * n_train / max(n_base, 1):.2f}% of {n_base:,})"))
        if cfg.network_weights:
            sd, _ = read_lora_file(Path(cfg.network_weights))
            load_into_layers(sd, m.unet, m.text_encoder if te_names else None, source=cfg.network_weights)
            self.emit(Status(f"started from the weights of {cfg.network_weights}"))
        if cfg.gradient_checkpointing:
            m.unet.enable_gradient_checkpointing()
            if te_names:
                m.text_encoder.gradient_checkpointing_enable()
                # transformers 4.30 uses reentrant checkpointing: without grad-requiring inputs the
                # LoRA inside gets no gradient at all.
                m.text_encoder.enable_input_require_grads()
        m.unet.to(self.device)
        m.text_encoder.to(self.device)
        m.vae.to(self.device, torch.float32)

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

        from ..cache import encode_captions, encode_images

        cfg, plan, m = self.config, self.plan, self.model
        self.latents = None
        paths = list(dict.fromkeys(i.path for i in self.scan.items))
        if cfg.cache_latents or cfg.cache_latents_to_disk:
            self.emit(Status(f"caching latents of {len(paths)} images (VAE runs once per image)..."))
            self.latents = encode_images(m.vae, paths, plan.width, plan.height, device=self.device, to_disk=cfg.cache_latents_to_disk)
            m.vae.to("cpu")  # not needed again this run: free its VRAM
        self.text_cache = None
        if not plan.train_text_encoder:
            self.emit(Status("text encoder frozen: caching its outputs for each caption"))
            self.text_cache = encode_captions(m.text_encoder, m.tokenizer, [i.caption for i in self.scan.items],
                                              clip_skip=cfg.clip_skip, device=self.device, dtype=self.weight_dtype)
            m.text_encoder.to("cpu")
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def build_optimizer(self) -> None:
        from .optim import make_optimizer, make_scheduler

        cfg, plan = self.config, self.plan
        groups = [{"params": self.unet_params, "lr": plan.unet_lr}]
        if self.te_params:
            groups.append({"params": self.te_params, "lr": plan.text_encoder_lr})
        optimizer = make_optimizer(cfg.optimizer_type, groups, cfg.optimizer_kwargs(), cuda=plan.device == "cuda",
                                   warn=lambda msg: self.emit(Warn(msg)))
        kind = type(optimizer)
        self.optimizer_desc = f"{kind.__module__}.{kind.__name__}({','.join(cfg.optimizer_args)})"
        scheduler = make_scheduler(cfg.lr_scheduler, optimizer, warmup_steps=plan.warmup_steps, total_steps=plan.max_train_steps,
                                   num_cycles=cfg.lr_scheduler_num_cycles, power=cfg.lr_scheduler_power)
        m = self.model
        nets = [m.unet] + ([m.text_encoder] if self.te_params else [])
        prepared = self.accelerator.prepare(*nets, optimizer, scheduler)
        self.unet_fwd = prepared[0]
        self.te_fwd = prepared[1] if self.te_params else None
        self.optimizer, self.scheduler = prepared[-2], prepared[-1]

    # ---- one step --------------------------------------------------------------------------
    def _batch_loss(self, items, micro_index: int):
        import torch
        import torch.nn.functional as F

        from ..cache import encode_text, tokenize
        from ..dataset import image_to_tensor, load_image, resize_cover_crop

        cfg, plan, m = self.config, self.plan, self.model
        if self.latents is not None:
            latents = torch.stack([self.latents[i.path] for i in items]).to(self.device)
        else:
            with torch.no_grad():
                px = torch.stack([image_to_tensor(resize_cover_crop(load_image(i.path), plan.width, plan.height)) for i in items])
                latents = m.vae.encode(px.to(self.device, torch.float32)).latent_dist.mean * m.vae.config.scaling_factor
        latents = latents.to(self.weight_dtype)
        if self.text_cache is not None:
            hidden = torch.stack([self.text_cache[i.caption] for i in items])
        else:
            ids = tokenize(m.tokenizer, [i.caption for i in items]).to(self.device)
            hidden = encode_text(self.te_fwd, ids, cfg.clip_skip)
        g = _rng(plan.seed, 2, micro_index)
        bsz = latents.shape[0]
        noise = torch.randn(latents.shape, generator=g)
        if cfg.noise_offset:
            noise = noise + cfg.noise_offset * torch.randn((bsz, latents.shape[1], 1, 1), generator=g)
        timesteps = torch.randint(0, m.noise_scheduler.config.num_train_timesteps, (bsz,), generator=g)
        noise, timesteps = noise.to(self.device, latents.dtype), timesteps.to(self.device)
        noisy = m.noise_scheduler.add_noise(latents, noise, timesteps)
        pred = self.unet_fwd(noisy, timesteps, hidden.to(self.weight_dtype)).sample
        loss = F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
        if cfg.min_snr_gamma:
            loss = loss * _min_snr_weights(m.noise_scheduler, timesteps, cfg.min_snr_gamma)
        return loss.mean()

    # ---- the loop ------------------------------------------------------------------------------
    def run(self) -> TrainResult:
        import torch

        cfg, plan = self.config, self.plan
        items = [it for it in self.scan.items for _ in range(it.repeats)]
        start_step = self._maybe_resume()
        gas, bs = cfg.gradient_accumulation_steps, plan.batch_size
        params = self.unet_params + self.te_params
        losses, bad_streak, cancelled = [], 0, False
        self.started_at = time.time()
        t0 = time.time()
        step = start_step
        self.unet_fwd.train()
        if self.te_fwd is not None:
            self.te_fwd.train()
        self.emit(Status(f"training from step {step} to {plan.max_train_steps}" if step else "training..."))
        if cfg.sample_at_first and step == 0:
            self._sample(0)
        while step < plan.max_train_steps and not cancelled:
            epoch = step // plan.steps_per_epoch
            order = epoch_order(len(items), plan.seed, epoch)
            batches = [order[i:i + bs] for i in range(0, len(order), bs)]
            first = (step - epoch * plan.steps_per_epoch) * gas
            for b in range(first, len(batches), gas):
                group = batches[b:b + gas]
                step_loss = 0.0
                for j, idx in enumerate(group):
                    micro = (epoch * plan.batches_per_epoch) + b + j
                    loss = self._batch_loss([items[i] for i in idx], micro)
                    self.accelerator.backward(loss / len(group))
                    step_loss += float(loss.detach()) / len(group)
                if cfg.max_grad_norm > 0:
                    self.accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                step += 1
                bad_streak = bad_streak + 1 if not torch.isfinite(torch.tensor(step_loss)) else 0
                if bad_streak >= NAN_PATIENCE:
                    raise InstantLoraError(f"the loss was NaN/inf for {NAN_PATIENCE} steps in a row (step {step}); stopped without saving broken weights.",
                                           hint="lower the learning rate, or use --mixed_precision=bf16 (or no) instead of fp16")
                losses.append(step_loss)
                recent = [x for x in losses[-50:] if x == x]
                self.emit(Step(step=step, total=plan.max_train_steps, epoch=epoch + 1, loss=step_loss,
                               avg_loss=sum(recent) / max(len(recent), 1), lr=self.scheduler.get_last_lr()[0],
                               seconds=time.time() - t0))
                epoch_done = b + gas >= len(batches)
                if step >= plan.max_train_steps:
                    break
                if cfg.save_every_n_steps and step % cfg.save_every_n_steps == 0:
                    self.save(f"{self.output_name}-step{step:08d}", step, epoch + (1 if epoch_done else 0), "step")
                if epoch_done and cfg.save_every_n_epochs and (epoch + 1) % cfg.save_every_n_epochs == 0:
                    self.save(f"{self.output_name}-{epoch + 1:06d}", step, epoch + 1, "epoch")
                if (cfg.sample_every_n_steps and step % cfg.sample_every_n_steps == 0) or \
                        (epoch_done and cfg.sample_every_n_epochs and (epoch + 1) % cfg.sample_every_n_epochs == 0):
                    self._sample(step)
                if self.control.stop_requested:
                    cancelled = True
                    break
        epoch = -(-step // plan.steps_per_epoch)
        if self.sample_prompts and not cancelled and (cfg.sample_every_n_steps or cfg.sample_every_n_epochs):
            self._sample(step)  # the final LoRA's look
        if cancelled:
            final = self.save(f"{self.output_name}-step{step:08d}", step, epoch, "cancelled")
        else:
            final = self.save(self.output_name, step, epoch, "final", finished=True)
        seconds = time.time() - t0
        self.emit(Finished(path=str(final), steps=step, seconds=seconds, cancelled=cancelled))
        return TrainResult(path=final, saved=self.saved, steps=step, losses=losses, cancelled=cancelled, plan=plan)

    def _sample(self, step: int) -> None:
        from .sampling import render_samples

        if not self.accelerator.is_main_process:
            return
        cfg, plan = self.config, self.plan
        autocast = getattr(self.accelerator, "autocast", None)  # frozen fp16 weights + fp32 LoRA, as in training
        with autocast() if autocast else contextlib.nullcontext():
            rendered = render_samples(self.model, self.sample_prompts, sampler=self.sample_sampler, width=plan.width,
                                      height=plan.height, seed=plan.seed, clip_skip=cfg.clip_skip,
                                      folder=self.logging_dir / "samples", stem=f"{self.output_name}_step{step:08d}")
        for prompt, path in rendered:
            self.emit(Sample(step=step, caption=prompt, path=str(path)))

    # ---- saving and resuming -------------------------------------------------------------
    def _state_match(self) -> dict:
        return {"network_dim": self.plan.rank, "network_alpha": self.plan.alpha, "preset": self.config.preset,
                "train_text_encoder": self.plan.train_text_encoder}

    def _maybe_resume(self) -> int:
        if not self.config.resume:
            return 0
        from ..lora.kohya_file import load_into_layers
        from .state import load_state, restore_rng

        state = load_state(Path(self.config.resume), self._state_match())
        m = self.model
        load_into_layers(state["lora"], m.unet, m.text_encoder if self.te_params else None, source=self.config.resume)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        restore_rng(state)
        self.emit(Status(f"resumed from {self.config.resume} at step {state['step']} (epoch {state['epoch']})"))
        return int(state["step"])

    def save(self, stem: str, step: int, epoch: int, kind: str, finished: bool = False) -> Path:
        import torch

        from ..lora.kohya_file import extract_state_dict, save_lora_file, write_sidecar
        from ..output_paths import file_in
        from .metadata import build_metadata
        from .state import save_state

        cfg, m = self.config, self.model
        if not self.accelerator.is_main_process:
            return self.output_dir / f"{stem}.safetensors"
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.save_precision or "", torch.float32)
        sd = extract_state_dict(m.unet, m.text_encoder if self.te_params else None, dtype=dtype)
        md = build_metadata(cfg, self.plan, self.scan, m, output_name=cfg.output_name or self.output_name,
                            started_at=getattr(self, "started_at", time.time()), step=step, epoch=epoch, finished=finished,
                            optimizer=self.optimizer_desc)
        path = save_lora_file(file_in(self.output_dir, stem, ".safetensors"), sd, md)
        write_sidecar(path, activation_text=cfg.trigger_words,
                      description=f"Instant LoRA, {step} steps on {self.scan.root.name} ({self.scan.num_train_images} images x repeats)")
        self.saved.append(path)
        self.emit(Saved(path=str(path), step=step, epoch=epoch, kind=kind))
        if cfg.save_state or (finished and cfg.save_state_on_train_end):
            scaler = getattr(self.accelerator, "scaler", None)
            folder = save_state(file_in(self.output_dir, f"{stem}-state", ""), lora_sd=extract_state_dict(m.unet, m.text_encoder if self.te_params else None),
                                optimizer=self.optimizer, scheduler=self.scheduler, scaler=scaler, step=step, epoch=epoch,
                                match=self._state_match())
            self.emit(Saved(path=str(folder), step=step, epoch=epoch, kind="state"))
        return path


def train(config, *, explicit=frozenset(), model=None, sinks=(), control: TrainControl | None = None) -> TrainResult:
    """Run a whole training. Raises InstantLoraError for anything the user can fix."""
    from ..heavy_imports import import_sd_libraries

    import_sd_libraries()
    run = Run(config, explicit=explicit, model=model, sinks=sinks, control=control)
    try:
        run.prepare()
        run.load_model()
        run.build_caches()
        run.build_optimizer()
        return run.run()
    finally:
        run.emit.close()
