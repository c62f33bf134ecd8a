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


def encode_captions(text_encoder, tokenizer, captions: list[str], *, clip_skip, device, dtype, batch_size: int = 16) -> dict:
    """{caption: hidden states [77, dim]} for each distinct caption, kept on `device` in `dtype`."""
    import torch

    unique = list(dict.fromkeys(captions))
    out = {}
    with torch.no_grad():
        for i in range(0, len(unique), batch_size):
            chunk = unique[i:i + batch_size]
            ids = tokenize(tokenizer, chunk).to(device)
            hidden = encode_text(text_encoder, ids, clip_skip).to(dtype)
            out.update(zip(chunk, hidden))
    return out


def module_fingerprint(module) -> str:
    """Cheap identity of a model's weights: hash of a few tensors' bytes (not only its name)."""
    import torch

    h = hashlib.sha256()
    params = list(module.parameters())
    for p in params[:2] + params[-2:]:
        h.update(p.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()[:65536])
    return h.hexdigest()[:16]


def disk_cache_path(image: Path, width: int, height: int) -> Path:
    return image.with_name(f"{image.stem}_{width:04d}x{height:04d}_sd.npz")


def _file_fingerprint(image: Path, vae_id: str) -> str:
    st = image.stat()
    return f"{st.st_size}-{st.st_mtime_ns}-{vae_id}"


def _read_disk_cache(path: Path, fingerprint: str):
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            if "instant_lora_source" not in z.files or str(z["instant_lora_source"]) != fingerprint:
                return None
            return z["latents"]
    except (OSError, ValueError, KeyError):
        return None  # unreadable or foreign cache: re-encode


def _write_disk_cache(path: Path, latents, fingerprint: str, width: int, height: int) -> None:
    import io

    import numpy as np

    from .lora.kohya_file import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, latents=latents, original_size=np.array([width, height]), crop_ltrb=np.array([0, 0, width, height]),
             instant_lora_source=np.array(fingerprint))
    atomic_write_bytes(path, buf.getvalue())


def encode_images(vae, paths: list[Path], width: int, height: int, *, device, to_disk: bool = False,
                  batch_size: int = 4, progress=None) -> dict:
    """{path: latents [4, H/8, W/8] fp32 on CPU} -- VAE in fp32, NaN checked per image."""
    import numpy as np
    import torch

    from .dataset import image_to_tensor, load_image, resize_cover_crop

    scale = vae.config.scaling_factor
    vae_id = module_fingerprint(vae) if to_disk else ""
    out, todo = {}, []
    for p in paths:
        if to_disk:
            cached = _read_disk_cache(disk_cache_path(p, width, height), _file_fingerprint(p, vae_id))
            if cached is not None:
                out[p] = torch.from_numpy(np.asarray(cached, dtype=np.float32))
                continue
        todo.append(p)
    with torch.no_grad():
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            pixels = torch.stack([image_to_tensor(resize_cover_crop(load_image(p), width, height)) for p in chunk])
            latents = vae.encode(pixels.to(device, torch.float32)).latent_dist.mean * scale
            latents = latents.float().cpu()
            for p, lat in zip(chunk, latents):
                if not torch.isfinite(lat).all():
                    raise InstantLoraError(f"the VAE produced NaN/inf latents for {p}.",
                                           hint="check the image opens correctly; remove it or re-save it as PNG", path=p)
                out[p] = lat
                if to_disk:
                    _write_disk_cache(disk_cache_path(p, width, height), lat.numpy(), _file_fingerprint(p, vae_id), width, height)
            if progress:
                progress(min(i + batch_size, len(todo)), len(todo))
    return out
