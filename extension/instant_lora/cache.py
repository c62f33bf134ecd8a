"""What the frozen parts compute once: VAE latents per image and text-encoder outputs per caption.

Latents are encoded in fp32 (SD VAEs overflow in fp16) as the distribution's mean, so a cached
run and an uncached run train on the same numbers. Disk caches (`<stem>_<W>x<H>_sd.npz`, the
reference trainer's name) carry a fingerprint of the image file and the VAE, so an edited image
or another model is re-encoded instead of silently reusing a stale latent.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .errors import InstantLoraError


def tokenize(tokenizer, captions: list[str]):
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def encode_text(text_encoder, input_ids, clip_skip: int | None = None):
    """Hidden states SD conditions on; clip_skip n = the n-th last layer, then the final layer norm."""
    if not clip_skip or clip_skip <= 1:
        return text_encoder(input_ids, return_dict=True).last_hidden_state
    out = text_encoder(input_ids, output_hidden_states=True, return_dict=True)
    # transformers >= 5.6 flattened CLIPTextModel (no .text_model); older versions nest it.
    final_norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
    return final_norm(out.hidden_states[-clip_skip])


def encode_captions(text_encoder, tokenizer, captions: list[str], *, clip_skip, device, dtype, batch_size: int = 16,
                    max_windows: int = 1) -> dict:
    """{caption: hidden states [77 * windows, dim]} for each distinct caption, kept on `device` in
    `dtype`; long captions in 75-token windows as the WebUI encodes them (text_windows)."""
    import torch

    from .text_windows import batch_window_ids, encode_windows

    unique = list(dict.fromkeys(captions))
    out = {}
    with torch.no_grad():
        # captions of one window count encode together; the WebUI never pads a prompt with empty windows
        by_count: dict = {}
        for caption in unique:
            ids, _ = batch_window_ids(tokenizer, [caption], max_windows)
            by_count.setdefault(ids.shape[1], []).append((caption, ids[0]))
        for group in by_count.values():
            for i in range(0, len(group), batch_size):
                chunk = group[i:i + batch_size]
                ids = torch.stack([c[1] for c in chunk]).to(device)
                hidden = encode_windows(text_encoder, ids, clip_skip).to(dtype)
                out.update(zip([c[0] for c in chunk], hidden))
    return out


def module_fingerprint(module) -> str:
    """Cheap identity of a model's weights: hash of a few tensors' bytes (not only its name)."""
    import torch

    h = hashlib.sha256()
    params = list(module.parameters())
    for p in params[:2] + params[-2:]:
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()[:65536])
    return h.hexdigest()[:16]


def disk_cache_path(image: Path, width: int, height: int, family: str = "sd") -> Path:
    """The reference trainer's name: the bucket's size in it, so each bucket has its own file, and
    `_sd` or `_sdxl` for the VAE family (SDXL's VAE gives other latents for the same image)."""
    return image.with_name(f"{image.stem}_{width:04d}x{height:04d}_{family}.npz")


def _file_fingerprint(image: Path, vae_id: str, placement) -> str:
    """The file's size and time, the VAE and where the image sits in its bucket: a changed image,
    model, resolution or crop never reuses a stale latent."""
    st = image.stat()
    rw, rh = placement.resized
    crop = "-".join(str(c) for c in placement.crop)
    return f"{st.st_size}-{st.st_mtime_ns}-{vae_id}-{rw}x{rh}-{crop}"


def _read_disk_cache(path: Path, fingerprint: str, flip: bool):
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            if "instant_lora_source" not in z.files or str(z["instant_lora_source"]) != fingerprint:
                return None
            if flip and "latents_flipped" not in z.files:
                return None
            return z["latents"], (z["latents_flipped"] if flip else None)
    except (OSError, ValueError, KeyError):
        return None  # unreadable or foreign cache: re-encode


def _write_disk_cache(path: Path, latents, flipped, fingerprint: str, sample) -> None:
    import io

    import numpy as np

    from .lora.kohya_file import atomic_write_bytes

    # the reference's keys (original_size, crop_ltrb, latents_flipped), so its tools can read it
    arrays = {"latents": latents, "original_size": np.array(sample.size), "crop_ltrb": np.array(sample.placement.crop),
              "instant_lora_source": np.array(fingerprint)}
    if flipped is not None:
        arrays["latents_flipped"] = flipped
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def latent_key(sample, flipped: bool = False) -> tuple:
    return (*sample.cache_key, bool(flipped))


def encode_images(vae, samples: list, *, device, to_disk: bool = False, batch_size: int = 4, progress=None,
                  family: str = "sd") -> dict:
    """{latent_key(sample, flipped): latents [4, H/8, W/8] fp32 on CPU} for each sample in its
    bucket (and mirrored too for a sample with flip_aug) -- VAE in fp32, NaN checked per image. Samples of one
    bucket are encoded together."""
    import numpy as np
    import torch

    from .train.images import pixels

    scale = vae.config.scaling_factor
    vae_id = module_fingerprint(vae) if to_disk else ""
    out, todo = {}, []
    seen = set()
    for s in samples:
        if s.cache_key in seen:
            continue
        seen.add(s.cache_key)
        flips = s.flip_aug
        if to_disk:
            bw, bh = s.placement.bucket
            cached = _read_disk_cache(disk_cache_path(s.path, bw, bh, family), _file_fingerprint(s.path, vae_id, s.placement), flips)
            if cached is not None:
                out[latent_key(s)] = torch.from_numpy(np.asarray(cached[0], dtype=np.float32))
                if flips:
                    out[latent_key(s, True)] = torch.from_numpy(np.asarray(cached[1], dtype=np.float32))
                continue
        todo.append(s)
    todo.sort(key=lambda s: s.placement.bucket)  # one bucket per VAE batch
    groups = [[s for s in todo if s.placement.bucket == b] for b in dict.fromkeys(s.placement.bucket for s in todo)]
    chunks = [g[i:i + batch_size] for g in groups for i in range(0, len(g), batch_size)]
    done = 0
    with torch.no_grad():
        for chunk in chunks:
            views = [(s, False) for s in chunk] + [(s, True) for s in chunk if s.flip_aug]
            px = torch.stack([pixels(s, flip=f) for s, f in views])
            latents = (vae.encode(px.to(device, torch.float32)).latent_dist.mean * scale).float().cpu()
            for (s, f), lat in zip(views, latents):
                if not torch.isfinite(lat).all():
                    raise InstantLoraError(f"the VAE produced NaN/inf latents for {s.path}.",
                                           hint="check the image opens correctly; remove it or re-save it as PNG", path=s.path)
                out[latent_key(s, f)] = lat
            if to_disk:
                for s in chunk:
                    bw, bh = s.placement.bucket
                    flipped = out.get(latent_key(s, True)) if s.flip_aug else None
                    _write_disk_cache(disk_cache_path(s.path, bw, bh, family), out[latent_key(s)].numpy(),
                                      None if flipped is None else flipped.numpy(),
                                      _file_fingerprint(s.path, vae_id, s.placement), s)
            done += len(chunk)
            if progress:
                progress(done, len(todo))
    return out
