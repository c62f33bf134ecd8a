"""Build the CLIP model, load its weights, name its weights identity, and free it again.

One model is held at a time (module state), so the UI's "Auto-caption" clicks reuse it when asked
to keep it; free_clip_model() drops it and returns its VRAM before training starts.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

from ..errors import InstantLoraError
from .options import CaptionOptions, Wording
from .weights import WeightsPlan, plan_weights, read_state_dict

# Keys open_clip versions add or drop between releases; harmless when missing or extra.
_TOLERATED_KEYS = ("text.transformer.embeddings.position_ids", "logit_bias", "attn_mask")


@dataclass
class LoadedClip:
    model: Any
    preprocess: Callable            # PIL image -> CHW float tensor
    tokenize: Callable[[List[str]], Any]
    device: Any                     # torch.device
    dtype: Any                      # torch dtype of the weights on that device
    identity: str                   # hash of the weights: the label cache key
    description: str
    key: tuple                      # what was asked for, to reuse the model across calls


_loaded: Optional[LoadedClip] = None
_lock = threading.RLock()


def resolve_device(name: str, words: Optional[Wording] = None):
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        words = words or CaptionOptions().words()
        use = words.set("device", "cpu (slow: about 2 s per image for ViT-L-14) or auto")
        raise InstantLoraError(f"device = {name} but this torch build sees no CUDA GPU.",
                               hint=(use[:1].upper() + use[1:] + ".") if use else None)
    return torch.device(name)


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs 'No pretrained weights loaded' at WARNING when we build before loading ourselves."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def weights_identity(arch: str, quick_gelu: bool, state: dict) -> str:
    """Hash of the architecture and a strided sample (<=1024 values) of every tensor.

    Sampling keeps this to milliseconds for ViT-L-14's 1.7 GB while any retraining or fine-tune,
    which moves every weight, changes the hash.
    """
    import torch

    h = hashlib.sha256(f"{arch}|quick_gelu={quick_gelu}".encode())
    for name in sorted(state):
        t = state[name]
        if not torch.is_tensor(t):
            continue
        flat = t.detach().reshape(-1)
        step = max(1, flat.numel() // 1024)
        sample = flat[::step][:1024].to(device="cpu", dtype=torch.float32)
        h.update(f"{name}{tuple(t.shape)}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:24]


def _load_into(model, sd: dict, plan: WeightsPlan, words: Optional[Wording] = None) -> None:
    own = model.state_dict()
    sd = dict(sd)
    # OpenAI archives store logit_scale as 0-d, some open_clip versions as [1]: same value.
    if "logit_scale" in sd and "logit_scale" in own and sd["logit_scale"].shape != own["logit_scale"].shape:
        sd["logit_scale"] = sd["logit_scale"].reshape(own["logit_scale"].shape)
    bad_shapes = [k for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in sd and not k.endswith(_TOLERATED_KEYS)]
    unexpected = [k for k in sd if k not in own and not k.endswith(_TOLERATED_KEYS)]
    if bad_shapes or missing or unexpected:
        detail = "; ".join(f"{label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                           for label, keys in (("wrong shape", bad_shapes), ("missing", missing),
                                               ("unexpected", unexpected)) if keys)
        words = words or CaptionOptions().words()
        names = "/".join(n for n in (words.name("clip_model"), words.name("clip_arch")) if n)
        raise InstantLoraError(
            f"CLIP weights {plan.source} do not fit architecture {plan.arch} ({detail}).", path=plan.weights,
            hint=f"Pick the matching {names}, or use an open_clip-format checkpoint.")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)


def _build(plan: WeightsPlan, options: CaptionOptions, key: tuple) -> LoadedClip:
    import open_clip
    import torch

    device = resolve_device(options.device, options.words())
    with _quiet_open_clip(), torch.random.fork_rng(devices=[]):
        # Random weights (speed tests) are seeded, so their identity, and so the cache, is stable.
        torch.manual_seed(0)
        model = open_clip.create_model(plan.arch, pretrained=None, precision="fp32", device="cpu",
                                       force_quick_gelu=plan.quick_gelu)
    if plan.weights:
        sd = plan.state_dict if plan.state_dict is not None else read_state_dict(plan.weights)[0]
        plan.state_dict = None  # do not keep a second copy of the weights alive
        _load_into(model, sd, plan, options.words())
        del sd
    model.eval().requires_grad_(False)
    identity = weights_identity(plan.arch, plan.quick_gelu, model.state_dict())

    model.to(device)
    if device.type == "cuda":
        model.half()  # fp16 on GPU: half the VRAM and ~2x the speed; CLIP ranks the same
    dtype = next(model.parameters()).dtype

    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    preprocess = open_clip.image_transform(size, is_train=False, mean=plan.mean or OPENAI_DATASET_MEAN,
                                           std=plan.std or OPENAI_DATASET_STD)
    tokenizer = open_clip.get_tokenizer(plan.arch)
    context = int(getattr(model, "context_length", 77) or 77)

    def tokenize(texts: List[str]):
        # Passing the model's own context length: open_clip 2.20's tokenizer assumes 77.
        return tokenizer(texts, context_length=context)

    weights = plan.weights or "random weights"
    quick = plan.quick_gelu or bool((open_clip.get_model_config(plan.arch) or {}).get("quick_gelu"))
    text = (f"{plan.arch} ({'QuickGELU' if quick else 'GELU'}) from {plan.source}"
            f"{'' if plan.source == weights else ' = ' + weights} on {device.type} "
            f"{'fp16' if dtype == torch.float16 else 'fp32'}")
    return LoadedClip(model, preprocess, tokenize, device, dtype, identity, text, key)


def _stamp(path: str):
    """(size, mtime) of a file, so a file replaced in place is reloaded; None if it is no file."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        return None
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns)


def _request_key(options: CaptionOptions) -> tuple:
    """What the options ask for, comparable without reading any weights file."""
    model = options.clip_model.strip()
    return (model, _stamp(model), options.clip_pretrained.strip(), _stamp(options.clip_pretrained.strip()),
            options.clip_arch, options.quick_gelu, options.device, options.cache_dir)


def load_clip(options: CaptionOptions) -> LoadedClip:
    """The model for these options: the one already held if it matches, else built fresh."""
    global _loaded
    with _lock:
        key = _request_key(options)
        if _loaded is not None and _loaded.key == key:
            return _loaded
        plan = plan_weights(options)
        free_clip_model()
        _loaded = _build(plan, options, key)
        return _loaded


@contextlib.contextmanager
def _short_context(model, length: int):
    """Run encode_text on `length` positions instead of the full 77.

    Labels are a few tokens long; CLIP's text tower is causal and reads its output at the end
    token, so the padding after it never changes the result, yet costs ~10x the compute
    (measured 3 labels/s on 2 CPU cores for ViT-L-14 at 77 positions). We shorten the positional
    embedding and the causal mask for the call and restore them after; encode_text itself is the
    installed open_clip's own, so this works the same on 2.20 and 3.x.
    """
    import torch

    pool = getattr(model, "text_pool_type", "argmax")  # 2.20 always pools at argmax (the EOT id)
    pos, mask = getattr(model, "positional_embedding", None), getattr(model, "attn_mask", None)
    usable = (pool in ("argmax", "eos", "first") and isinstance(pos, torch.nn.Parameter)
              and torch.is_tensor(mask) and mask.dim() == 2 and length < pos.shape[0])
    if not usable:
        yield False
        return
    model.positional_embedding = torch.nn.Parameter(pos[:length], requires_grad=False)
    model.attn_mask = mask[:length, :length]
    try:
        yield True
    finally:
        model.positional_embedding = pos
        model.attn_mask = mask


def encode_texts(clip: LoadedClip, texts: List[str], batch_size: int = 0, on_batch=None):
    """Unit text embeddings [N, D] float32 on CPU, batched, each batch only as long as its longest text."""
    import torch

    batch_size = batch_size or (256 if clip.device.type == "cuda" else 32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
    out = [None] * len(texts)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            tokens = clip.tokenize([texts[i] for i in idx])
            length = int(tokens.argmax(dim=-1).max()) + 1  # the end token has the highest id
            with _short_context(clip.model, length) as short:
                tokens = tokens[:, :length] if short else tokens
                feats = clip.model.encode_text(tokens.to(clip.device)).float()
            feats = torch.nn.functional.normalize(feats, dim=-1).cpu()
            for row, i in enumerate(idx):
                out[i] = feats[row]
            if on_batch is not None:
                on_batch(min(start + batch_size, len(order)), len(order))
    return torch.stack(out).numpy() if out else torch.zeros(0, 0).numpy()


def current_clip() -> Optional[LoadedClip]:
    return _loaded


def free_clip_model() -> bool:
    """Drop the held CLIP model and return its memory (VRAM included). True if one was held.

    Callers must not keep their own references (e.g. a LoadedClip) alive, or the memory stays.
    """
    global _loaded
    with _lock:
        held, _loaded = _loaded, None
    if held is None:
        return False
    device = held.device
    del held
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and getattr(device, "type", "") == "cuda" and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    return True
