"""The LoRA file every consumer loads: kohya keys, `ss_*` metadata, sidecars, atomic writes.

Keys are `lora_unet_<diffusers path>` / `lora_te_text_model_<path>` with `.` -> `_`, each with
`.lora_down.weight`, `.lora_up.weight` and an explicit 0-dim `.alpha` (scale = alpha / rank).
SDXL, as the reference trainer writes it: the UNet's modules under their original (SGM) names,
`lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`, and the two text encoders as
`lora_te1_` (CLIP-L) and `lora_te2_` (OpenCLIP bigG) with the same HF-CLIP paths.
The WebUI matches keys by name and only logs misses at debug level, so every name written here
is derived from a real module and checked on load: a miss is an error, never silence.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from pathlib import Path

from ..errors import InstantLoraError
from ..output_paths import write_error, write_synced
from .layers import ADAPTER, layer_tensors, lora_layers

UNET_PREFIX = "lora_unet"
TE_PREFIX = "lora_te"
SUFFIXES = (".lora_down.weight", ".lora_up.weight", ".alpha")


def kohya_name(prefix: str, module_path: str) -> str:
    # transformers >= 5.6 drops `text_model.` from CLIPTextModel paths; the file format must not
    # depend on the installed version, so text-encoder names always carry it.
    if prefix.startswith(TE_PREFIX) and not module_path.startswith("text_model."):
        module_path = "text_model." + module_path
    return f"{prefix}_{module_path.replace('.', '_')}"


_SGM_BLOCK = re.compile(r"(down|up)_blocks\.(\d+)\.attentions\.(\d+)\.(.+)$")
_SGM_MID = re.compile(r"mid_block\.attentions\.0\.(.+)$")


def uses_sgm_names(unet) -> bool:
    """SDXL (a UNet with size/crop conditioning): its LoRA keys name the original model's blocks."""
    return getattr(unet.config, "addition_embed_type", None) == "text_time"


def sgm_unet_path(path: str, layers_per_block: int) -> str | None:
    """A module inside a diffusers SDXL UNet's transformer blocks -> its path in the original
    (SGM) layout: down level i, attention j -> input_blocks.{1 + i(L+1) + j}.1; up level i ->
    output_blocks.{i(L+1) + j}.1; the mid block's -> middle_block.1. Paths inside a transformer
    are the same in both layouts. None for modules outside the transformers (not LoRA targets)."""
    m = _SGM_BLOCK.match(path)
    if m:
        kind, level, j, rest = m.group(1), int(m.group(2)), int(m.group(3)), m.group(4)
        n = level * (layers_per_block + 1) + j + (1 if kind == "down" else 0)
        return f"{'input' if kind == 'down' else 'output'}_blocks.{n}.1.{rest}"
    m = _SGM_MID.match(path)
    return f"middle_block.1.{m.group(1)}" if m else None


def te_prefixes(count: int) -> tuple:
    """lora_te for one text encoder (SD1, SD2); lora_te1 / lora_te2 for SDXL's two."""
    return (TE_PREFIX,) if count == 1 else tuple(f"{TE_PREFIX}{i + 1}" for i in range(count))


def as_list(text_encoders) -> list:
    if text_encoders is None:
        return []
    return [t for t in text_encoders if t is not None] if isinstance(text_encoders, (list, tuple)) else [text_encoders]


def kohya_names(unet, text_encoders, items) -> dict:
    """{kohya name: item} for `items(net)` = (module path, item) pairs of the UNet and each text
    encoder; the one place a module's file name is made (writer, resume, merge all use it).
    `text_encoders`: None, one encoder, or SDXL's [CLIP-L, bigG]; the prefixes follow the count
    given, so pass both of SDXL's even when only one is needed."""
    out = {}
    sgm = uses_sgm_names(unet)
    layers = unet.config.layers_per_block
    layers = layers if isinstance(layers, int) else layers[0]
    for path, item in items(unet):
        if sgm:
            path = sgm_unet_path(path, layers)
            if path is None:
                continue
        out[kohya_name(UNET_PREFIX, path)] = item
    encoders = as_list(text_encoders)
    for prefix, te in zip(te_prefixes(len(encoders)), encoders):
        out.update({kohya_name(prefix, p): item for p, item in items(te)})
    return out


def named_layers(unet, text_encoders=None) -> dict:
    """{kohya name: peft layer} for every LoRA layer in the models."""
    return kohya_names(unet, text_encoders, lora_layers)


def extract_state_dict(unet, text_encoders=None, dtype=None) -> dict:
    """The kohya tensors of the trained layers (contiguous CPU copies, `dtype` or fp32)."""
    import torch

    dtype = dtype or torch.float32
    sd = {}
    for name, layer in named_layers(unet, text_encoders).items():
        down, up, alpha = layer_tensors(layer)
        sd[name + ".lora_down.weight"] = down.detach().to("cpu", dtype).contiguous()
        sd[name + ".lora_up.weight"] = up.detach().to("cpu", dtype).contiguous()
        sd[name + ".alpha"] = torch.tensor(alpha, dtype=dtype)
    return sd


def split_key(key: str) -> tuple[str, str]:
    for suffix in SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], suffix
    raise InstantLoraError(f"unexpected tensor '{key}' in LoRA file", hint="only kohya-format LoRA files are supported")


def load_into_layers(sd: dict, unet, text_encoders=None, source: str = "LoRA file") -> None:
    """Copy a kohya state dict into injected peft layers (resume, `--network_weights`). Strict."""
    import torch

    layers = named_layers(unet, text_encoders)
    seen = set()
    for key, tensor in sd.items():
        name, suffix = split_key(key)
        layer = layers.get(name)
        if layer is None:
            raise InstantLoraError(f"{source}: '{name}' matches no LoRA module of this model/config.",
                                   hint="use the same network preset, rank and text-encoder setting as the run that wrote it")
        seen.add(name)
        down, up, alpha = layer_tensors(layer)
        with torch.no_grad():
            if suffix == ".alpha":
                layer.scaling[ADAPTER] = float(tensor) / layer.r[ADAPTER]
                continue
            target = down if suffix == ".lora_down.weight" else up
            if tuple(target.shape) != tuple(tensor.shape):
                raise InstantLoraError(f"{source}: '{key}' has shape {tuple(tensor.shape)}, the model expects {tuple(target.shape)}.",
                                       hint="the network_dim (rank) differs from the run that wrote this file")
            target.copy_(tensor.to(target.dtype))
    missing = sorted(set(layers) - seen)
    if missing:
        raise InstantLoraError(f"{source}: {len(missing)} LoRA modules have no weights in the file (e.g. {missing[0]}).",
                               hint="use the same network preset and text-encoder setting as the run that wrote it")


# ---- file I/O -------------------------------------------------------------------------------

def tensor_data_hash(sd: dict) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash): sha256 of the safetensors data section (after the
    header), as the reference trainer computes it; independent of the metadata."""
    from safetensors.torch import save

    raw = save(sd)
    header_len = int.from_bytes(raw[:8], "little")
    data = raw[8 + header_len:]
    return hashlib.sha256(data).hexdigest(), hashlib.sha256(raw[0x100000:0x110000]).hexdigest()[:8]


def temp_name(path: Path) -> Path:
    """The hidden name `atomic_write_bytes` writes first (output_paths.clean_leftovers finds
    these; config.WRITTEN_NAME_PATTERNS counts their length)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a hidden temp name that no loader lists, fsync, then rename over the target: the
    Lora folder never holds a half-written file, even if the process dies mid-write. A full disk,
    a denied or read-only folder raise InstantLoraError (the temp file removed, the target as it
    was); other OS errors are raised as they are."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_synced(tmp, data)
        os.replace(tmp, path)
    except OSError as e:
        error = write_error(e, path)
        if error is not None:
            raise error from e
        raise
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                tmp.unlink()


def save_lora_file(path: Path, sd: dict, metadata: dict) -> Path:
    import torch
    from safetensors.torch import save

    bad = [k for k, v in sd.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise InstantLoraError(f"Refusing to save {Path(path).name}: {len(bad)} LoRA tensors contain NaN/inf (e.g. {bad[0]}).",
                               hint="training diverged; lower the learning rate or use --mixed_precision=bf16/no", path=path)
    model_hash, legacy_hash = tensor_data_hash(sd)
    md = {k: str(v) for k, v in metadata.items()}
    md.update(sshs_model_hash=model_hash, sshs_legacy_hash=legacy_hash)
    atomic_write_bytes(Path(path), canonical_header(save(sd, metadata=md)))
    return Path(path)


def canonical_header(data: bytes) -> bytes:
    """The same file with its JSON header's keys sorted: safetensors writes the metadata in hash
    order, which differs between saves, and same seed + same data must give the same bytes.
    The header keeps its length (same content), so the tensor offsets are unchanged."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta is not None else {}) | dict(sorted(header.items()))
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(text) > n:  # never expected; keep the writer's own bytes rather than risk a bad file
        return data
    return n.to_bytes(8, "little") + text + b" " * (n - len(text)) + data[8 + n:]


def read_lora_file(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        sd = {k: f.get_tensor(k) for k in f.keys()}
    return sd, metadata


def write_sidecar(lora_path: Path, activation_text: str = "", preferred_weight: float = 0.0, description: str = "",
                  notes: str = "", sd_version: str = "SD1") -> Path:
    """`<name>.json` that the WebUI's Lora card reads (activation text = trigger words; "sd version"
    SD1 / SD2 / SDXL: the card filter that shows a LoRA with checkpoints of its family)."""
    lora_path = Path(lora_path)
    side = lora_path.with_suffix(".json")
    data = {"description": description, "sd version": sd_version, "activation text": activation_text,
            "preferred weight": preferred_weight, "notes": notes}
    atomic_write_bytes(side, (json.dumps(data, indent=4, ensure_ascii=False) + "\n").encode("utf-8"))
    return side
