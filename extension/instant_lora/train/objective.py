"""The training objective and its randomness.

Randomness is derived from (seed, position) rather than carried in global RNG state: the data
order of epoch e and the noise/timesteps of micro-batch i are pure functions of the seed, so a
resumed run takes exactly the path the uninterrupted run would have taken.
"""

from __future__ import annotations


def rng(seed: int, *key: int):
    import torch

    h = seed
    for k in key:
        h = (h * 1_000_003 + k) % (2**63 - 1)
    return torch.Generator().manual_seed(h)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    import torch

    return torch.randperm(n, generator=rng(seed, 1, epoch)).tolist()


def min_snr_weights(noise_scheduler, timesteps, gamma: float):
    """Min-SNR-gamma loss weights per sample (Hang et al. 2023, eq. 9): min(SNR, gamma) / SNR for
    epsilon prediction; min(SNR, gamma) / (SNR + 1) for v-prediction, whose target already carries
    a factor SNR + 1 relative to the noise's (the reference trainer's apply_snr_weight)."""
    import torch

    alphas = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas / (1 - alphas)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    if noise_scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


def step_rng(seed: int, kind: str, micro_index: int, position: int):
    """Python randomness of one sample in one micro-batch (caption, flip, crop): a pure function
    of (seed, kind, position), like the noise."""
    import random

    return random.Random(f"{kind}-{seed}-{micro_index}-{position}")


def sample_views(run, samples, micro_index: int) -> tuple[list, list]:
    """This step's (flips, crops) of the samples: drawn per (seed, micro-batch, position); the
    crop is the bucket's centre crop unless random_crop draws another (never with cached latents)."""
    from .images import crop_box

    seed = run.plan.seed
    flips = [s.flip_aug and step_rng(seed, "flip", micro_index, j).random() < 0.5 for j, s in enumerate(samples)]
    if run.latents is not None:
        return flips, [s.placement.crop for s in samples]
    return flips, [crop_box(s, step_rng(seed, "crop", micro_index, j)) for j, s in enumerate(samples)]


def batch_latents(run, samples, flips, crops):
    """Latents of the batch: cached (both orientations when flipping), or encoded now from the
    images kept in memory, each sample flipped and cropped as this step draws it."""
    import torch

    from ..cache import latent_key
    from .images import pixels

    if run.latents is not None:
        return torch.stack([run.latents[latent_key(s, f)] for s, f in zip(samples, flips)]).to(run.device)
    with torch.no_grad():
        px = torch.stack([pixels(s, flip=f, crop=c, memory=run.images) for s, f, c in zip(samples, flips, crops)])
        vae = run.model.vae
        return vae.encode(px.to(run.device, torch.float32)).latent_dist.mean * vae.config.scaling_factor


def size_ids(samples, flips, crops) -> list | None:
    """SDXL's size conditioning per sample (original size, crop, target), from its bucket placement."""
    from ..conditioning import time_ids

    return [time_ids(s.size, c, s.placement.resized, f) for s, f, c in zip(samples, flips, crops)]


def step_captions(run, samples, micro_index: int, epoch: int) -> list[str]:
    """Each sample's caption for this step: shuffled / dropped per its rules (seeded), else as written."""
    from ..captions import process_caption

    seed = run.plan.seed
    return [process_caption(s.caption, s.rules, step_rng(seed, "caption", micro_index, j), epoch + 1)
            if s.rules.varies else s.rules.fixed(s.caption) for j, s in enumerate(samples)]


def text_states(run, captions: list[str]):
    """The batch's TextConditioning (hidden [b, 77 * windows, dim], SDXL's pooled [b, dim]): from
    the cache when every caption is in it (padded to the batch's window count with the empty
    window, as the WebUI pads a batch), else encoded now."""
    import torch

    from .. import conditioning

    cache = run.text_cache
    if cache is not None and all(c in cache for c in captions):
        return conditioning.stack([cache[c] for c in captions], run.empty_window)
    ids = conditioning.window_ids(run.model, captions, run.max_windows)
    if run.te_fwd is None:  # frozen: captions that change every step are encoded without gradients
        with torch.no_grad():
            return conditioning.encode(run.model, ids, run.config.clip_skip)
    return conditioning.encode(run.model, ids, run.config.clip_skip, nets=run.te_fwd)


def diffusion_loss(run, latents, cond, g, weights=None, timesteps=None, sizes=None):
    """Per-sample MSE between the UNet's prediction and its target (the noise drawn from `g`, or
    for v-prediction the velocity), at random timesteps unless given; weights multiply each
    sample's loss (regularization images). `sizes`: SDXL's size conditioning per sample."""
    import torch
    import torch.nn.functional as F

    from ..conditioning import unet_kwargs

    cfg, m = run.config, run.model
    latents = latents.to(run.weight_dtype)
    bsz = latents.shape[0]
    noise = torch.randn(latents.shape, generator=g)
    if cfg.noise_offset and timesteps is None:
        noise = noise + cfg.noise_offset * torch.randn((bsz, latents.shape[1], 1, 1), generator=g)
    if timesteps is None:
        timesteps = torch.randint(0, m.noise_scheduler.config.num_train_timesteps, (bsz,), generator=g)
    noise, timesteps = noise.to(run.device, latents.dtype), timesteps.to(run.device)
    noisy = m.noise_scheduler.add_noise(latents, noise, timesteps)
    cond = cond.to(run.device, run.weight_dtype)
    pred = run.unet_fwd(noisy, timesteps, cond.hidden, **unet_kwargs(cond, sizes)).sample
    if m.noise_scheduler.config.prediction_type == "v_prediction":
        target = m.noise_scheduler.get_velocity(latents.float(), noise.float(), timesteps)
    else:
        target = noise
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if weights is not None:
        loss = loss * weights.to(loss.device)
    return loss, timesteps


def batch_loss(run, samples, micro_index: int, epoch: int = 0, record: list | None = None):
    """Mean diffusion loss of one micro-batch: latents (cached or encoded now), the step's
    captions, noise and timesteps drawn from (seed, micro-batch index), the UNet's noise
    prediction, MSE per image, regularization images weighted by --prior_loss_weight,
    optionally min-SNR weighted. `record` (a list) gets one (timestep, plain MSE) pair per image:
    its own loss before any weighting, what the live view plots against the timestep."""
    import torch

    cfg, plan = run.config, run.plan
    flips, crops = sample_views(run, samples, micro_index)
    latents = batch_latents(run, samples, flips, crops)
    cond = text_states(run, step_captions(run, samples, micro_index, epoch))
    weights = None
    if any(s.is_reg for s in samples):
        weights = torch.tensor([cfg.prior_loss_weight if s.is_reg else 1.0 for s in samples])
    plain, timesteps = diffusion_loss(run, latents, cond, rng(plan.seed, 2, micro_index),
                                      sizes=size_ids(samples, flips, crops))
    loss = plain if weights is None else plain * weights.to(plain.device)  # the same product diffusion_loss makes
    if cfg.min_snr_gamma:
        loss = loss * min_snr_weights(run.model.noise_scheduler, timesteps, cfg.min_snr_gamma)
    if record is not None:
        record.extend(zip(timesteps.detach().cpu().tolist(), plain.detach().float().cpu().tolist()))
    return loss.mean()


VALIDATION_TIMESTEPS = (200, 400, 600, 800)  # the reference's: linspace(0, 1000, 6)[1:-1]


def validation_loss(run) -> float:
    """Mean plain MSE over the held-out images, each at the same fixed timesteps with the same
    noise every time (drawn from the validation seed and the image's position): the number moves
    only when the LoRA does, so evaluations compare along a run and between runs. LoRA dropout
    is off while it runs; no Min-SNR or prior weighting, so runs with other weightings compare too."""
    import torch

    data, plan = run.data, run.plan
    seed = run.config.validation_seed if run.config.validation_seed is not None else plan.seed
    total, count = 0.0, 0
    nets = [run.unet_fwd] + list(run.te_fwd or [])
    modes = [n.training for n in nets]
    for n in nets:
        n.eval()
    try:
        with torch.no_grad():
            for index, s in enumerate(data.validation):
                latents = run.latents_of_validation(s)
                cond = text_states(run, [s.rules.fixed(s.caption)])
                sizes = size_ids([s], [False], [s.placement.crop])
                for t in VALIDATION_TIMESTEPS:
                    steps = torch.tensor([min(t, run.model.noise_scheduler.config.num_train_timesteps - 1)])
                    loss, _ = diffusion_loss(run, latents[None], cond, rng(seed, 4, index, t), timesteps=steps, sizes=sizes)
                    total += float(loss.sum())
                    count += 1
    finally:
        for n, mode in zip(nets, modes):
            n.train(mode)
    return total / max(count, 1)
