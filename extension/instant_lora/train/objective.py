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
    """min(SNR, gamma) / SNR per sample (Hang et al. 2023, eq. 9; epsilon prediction)."""
    import torch

    alphas = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas / (1 - alphas)
    return torch.minimum(snr, torch.full_like(snr, gamma)) / snr


def batch_loss(run, items, micro_index: int):
    """Mean diffusion loss of one micro-batch: latents (cached or encoded now), text features,
    noise and timesteps drawn from (seed, micro-batch index), the UNet's noise prediction, MSE
    per image, optionally min-SNR weighted."""
    import torch
    import torch.nn.functional as F

    from ..cache import encode_text, tokenize
    from ..dataset import image_to_tensor, load_image, resize_cover_crop

    cfg, plan, m = run.config, run.plan, run.model
    if run.latents is not None:
        latents = torch.stack([run.latents[i.path] for i in items]).to(run.device)
    else:
        with torch.no_grad():
            px = torch.stack([image_to_tensor(resize_cover_crop(load_image(i.path), plan.width, plan.height)) for i in items])
            latents = m.vae.encode(px.to(run.device, torch.float32)).latent_dist.mean * m.vae.config.scaling_factor
    latents = latents.to(run.weight_dtype)
    if run.text_cache is not None:
        hidden = torch.stack([run.text_cache[i.caption] for i in items])
    else:
        ids = tokenize(m.tokenizer, [i.caption for i in items]).to(run.device)
        hidden = encode_text(run.te_fwd, ids, cfg.clip_skip)
    g = rng(plan.seed, 2, micro_index)
    bsz = latents.shape[0]
    noise = torch.randn(latents.shape, generator=g)
    if cfg.noise_offset:
        noise = noise + cfg.noise_offset * torch.randn((bsz, latents.shape[1], 1, 1), generator=g)
    timesteps = torch.randint(0, m.noise_scheduler.config.num_train_timesteps, (bsz,), generator=g)
    noise, timesteps = noise.to(run.device, latents.dtype), timesteps.to(run.device)
    noisy = m.noise_scheduler.add_noise(latents, noise, timesteps)
    pred = run.unet_fwd(noisy, timesteps, hidden.to(run.weight_dtype)).sample
    loss = F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
    if cfg.min_snr_gamma:
        loss = loss * min_snr_weights(m.noise_scheduler, timesteps, cfg.min_snr_gamma)
    return loss.mean()
