"""What the UNet is conditioned on, per model family: text features (and SDXL's pooled text and
size/crop numbers), from captions tokenized into the WebUI's 75-token windows.

- SD1.x / SD2.x: one text encoder; the last layer (or the n-th last with clip skip) after the
  final layer norm. SD2's encoder is loaded with 23 layers, so its "last" is OpenCLIP's
  penultimate layer, as SD2 was trained.
- SDXL: CLIP-L and OpenCLIP bigG, each its penultimate layer without the final layer norm,
  concatenated to 768 + 1280 = 2048 features; the pooled vector is bigG's final (normed) state at
  the first end token, projected (the reference trainer's pooling, which does not depend on the
  token ids' order as transformers' argmax pooling does). Clip skip does not apply (the WebUI,
  ComfyUI and the reference all use the penultimate layers). The pooled vector of a long caption
  is its first window's, as the WebUI takes it.
- SDXL's size conditioning ("time ids", Podell et al. 2023 §2.2): the image's original height
  and width, the top-left of the crop taken from the resized image, and the target (bucket)
  height and width. A mirrored sample's crop is measured from the other side.
"""

from __future__ import annotations

from dataclasses import dataclass

from .text_windows import batch_window_ids


@dataclass
class TextConditioning:
    hidden: object  # [b, 77 * windows, dim]
    pooled: object = None  # [b, dim_pooled] (SDXL) or None

    def to(self, device, dtype=None):
        move = (lambda t: t.to(device, dtype)) if dtype is not None else (lambda t: t.to(device))
        return TextConditioning(move(self.hidden), None if self.pooled is None else move(self.pooled))

    def row(self, i: int) -> "TextConditioning":
        return TextConditioning(self.hidden[i], None if self.pooled is None else self.pooled[i])


def is_sdxl(model) -> bool:
    return getattr(model, "text_encoder_2", None) is not None


def window_ids(model, captions: list[str], max_windows: int) -> list:
    """Per tokenizer: ids [b, k, 77]. SDXL's two tokenizers cut the same windows (one vocabulary);
    only the padding after the end token differs."""
    return [batch_window_ids(tok, captions, max_windows)[0] for tok in model.tokenizers]


def _first_end(ids, eos_id: int):
    import torch

    hit = (ids == eos_id).int()
    return torch.where(hit.any(-1), hit.argmax(-1), torch.full_like(hit[:, 0], ids.shape[-1] - 1))


def _penultimate(net, ids, pooled_from=None):
    """(penultimate hidden states, pooled projection or None) of one encoder for ids [n, 77]."""
    import torch

    out = net(ids, output_hidden_states=True, return_dict=True)
    hidden = out.hidden_states[-2]
    if pooled_from is None:
        return hidden, None
    last = out.last_hidden_state  # after the final layer norm
    pooled = last[torch.arange(ids.shape[0], device=last.device), _first_end(ids, pooled_from).to(last.device)]
    projection = getattr(net, "text_projection", None)
    if projection is None:  # a wrapper (accelerate, DDP): the module is inside
        projection = net.module.text_projection
    return hidden, projection(pooled)


def encode(model, ids_list: list, clip_skip: int | None = None, nets: list | None = None) -> TextConditioning:
    """Conditioning for ids (one [b, k, 77] tensor per tokenizer, from `window_ids`). `nets`: the
    encoders to run (e.g. accelerate-prepared ones that carry the LoRA's gradients); default the
    model's. Runs where the encoders are."""
    import torch

    from .text_windows import encode_windows

    nets = nets or model.text_encoders
    if not is_sdxl(model):
        return TextConditioning(encode_windows(nets[0], ids_list[0].to(next(nets[0].parameters()).device), clip_skip))
    b, k, length = ids_list[0].shape
    parts, pooled = [], None
    for index, (net, ids, tok) in enumerate(zip(nets, ids_list, model.tokenizers)):
        device = next(net.parameters()).device
        flat = ids.reshape(b * k, length).to(device)
        hidden, p = _penultimate(net, flat, tok.eos_token_id if index == 1 else None)
        parts.append(hidden.reshape(b, k * length, hidden.shape[-1]))
        if p is not None:
            pooled = p.reshape(b, k, -1)[:, 0]
    device = parts[0].device
    return TextConditioning(torch.cat([p.to(device) for p in parts], dim=-1), pooled.to(device))


def encode_captions(model, captions: list[str], *, clip_skip, device, dtype, max_windows: int = 1,
                    batch_size: int = 16) -> dict:
    """{caption: TextConditioning of one caption (hidden [77 * windows, dim], pooled [dim] or None)}
    for each distinct caption, on `device` in `dtype`. Captions are encoded in groups of equal
    window count: the WebUI never pads a prompt with empty windows."""
    import torch

    unique = list(dict.fromkeys(captions))
    out = {}
    with torch.no_grad():
        by_count: dict = {}
        for caption in unique:
            ids = window_ids(model, [caption], max_windows)
            by_count.setdefault(ids[0].shape[1], []).append((caption, [i[0] for i in ids]))
        for group in by_count.values():
            for start in range(0, len(group), batch_size):
                chunk = group[start:start + batch_size]
                ids = [torch.stack([c[1][t] for c in chunk]) for t in range(len(chunk[0][1]))]
                cond = encode(model, ids, clip_skip).to(device, dtype)
                out.update((c[0], cond.row(i)) for i, c in enumerate(chunk))
    return out


def stack(conds: list[TextConditioning], empty: TextConditioning | None = None) -> TextConditioning:
    """One batch from per-caption conditionings, shorter ones padded with the empty window (as the
    WebUI pads a batch); the pooled vectors are each caption's own."""
    import torch

    longest = max(c.hidden.shape[0] for c in conds)
    hidden = []
    for c in conds:
        h = c.hidden
        if h.shape[0] < longest:
            h = torch.cat([h] + [empty.hidden] * ((longest - h.shape[0]) // empty.hidden.shape[0]))
        hidden.append(h)
    pooled = None if conds[0].pooled is None else torch.stack([c.pooled for c in conds])
    return TextConditioning(torch.stack(hidden), pooled)


def time_ids(original_size, crop: tuple, resized, flipped: bool = False) -> list[int]:
    """SDXL's six size numbers for one sample: original (h, w), crop top-left (top, left) in the
    resized image, target (h, w). original_size/resized are (w, h); crop is (left, top, right, bottom)."""
    ow, oh = original_size
    left, top, right, bottom = crop
    if flipped:
        left = resized[0] - right
    return [oh, ow, top, left, bottom - top, right - left]


def unet_kwargs(cond: TextConditioning, size_ids=None) -> dict:
    """Extra keyword arguments of the UNet call: SDXL's added conditioning, nothing otherwise."""
    if cond.pooled is None:
        return {}
    import torch

    ids = torch.as_tensor(size_ids, dtype=cond.pooled.dtype, device=cond.pooled.device)
    if ids.dim() == 1:
        ids = ids[None].expand(cond.pooled.shape[0], -1)
    return {"added_cond_kwargs": {"text_embeds": cond.pooled, "time_ids": ids}}
