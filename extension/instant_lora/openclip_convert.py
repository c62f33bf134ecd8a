"""Text encoders of single-file checkpoints -> transformers' CLIP models, strictly.

Two layouts occur. OpenAI's CLIP ViT-L (SD1, SDXL's first encoder) is stored in transformers'
own layout, so only the `text_model.` prefix needs care: transformers >= 5.6 drops it from
CLIPTextModel (not from CLIPTextModelWithProjection), and a model that loads with missing keys
keeps random weights with only a warning. OpenCLIP's encoders (SD2's ViT-H, SDXL's bigG) are stored
in open_clip's layout: one fused q/k/v projection per block and a [width, proj] projection matrix
that transformers' Linear holds transposed. SD2 uses ViT-H's penultimate block as its last, so
transformers' config has 23 of the 24 blocks and the 24th is dropped here.

All keys are first put in one canonical form (`text_model.…` and `text_projection.weight`); a
missing tensor is an InstantLoraError naming the file and the tensor.
"""

from __future__ import annotations

from pathlib import Path

from .errors import InstantLoraError

_TEXT_MODEL = "text_model."
_PROJECTION = "text_projection.weight"
_BLOCK = "transformer.resblocks."
# open_clip name inside a block -> transformers name inside encoder.layers.N
_BLOCK_RENAME = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "attn.out_proj": "self_attn.out_proj",
                 "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2"}


def canonical_key(key: str) -> str:
    """One name for a CLIP text tensor whatever transformers version wrote or reads it."""
    if key.startswith(_TEXT_MODEL) or key == _PROJECTION:
        return key
    return _TEXT_MODEL + key


def hf_clip_tensors(sd: dict, prefix: str) -> dict:
    """The tensors under `prefix` (a checkpoint in transformers' CLIP layout), canonically named."""
    return {canonical_key(k[len(prefix):]): v for k, v in sd.items() if k.startswith(prefix)}


def openclip_tensors(sd: dict, prefix: str, num_layers: int) -> dict:
    """The OpenCLIP text transformer under `prefix`, renamed to transformers' canonical names;
    blocks from `num_layers` on are dropped. Absent tensors stay absent (the fill reports them)."""
    out = {}
    te = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    for name, new in (("token_embedding.weight", "embeddings.token_embedding.weight"),
                      ("positional_embedding", "embeddings.position_embedding.weight"),
                      ("ln_final.weight", "final_layer_norm.weight"), ("ln_final.bias", "final_layer_norm.bias")):
        if name in te:
            out[_TEXT_MODEL + new] = te[name]
    if "text_projection" in te:  # open_clip computes x @ P; Linear computes x @ W.T
        out[_PROJECTION] = te["text_projection"].T.contiguous()
    elif "text_projection.weight" in te:  # some tools already store it as a Linear
        out[_PROJECTION] = te["text_projection.weight"]
    for key, v in te.items():
        if not key.startswith(_BLOCK):
            continue
        index, rest = key[len(_BLOCK):].split(".", 1)
        if int(index) >= num_layers:
            continue
        layer = f"{_TEXT_MODEL}encoder.layers.{index}."
        if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
            for part, chunk in zip(("q_proj", "k_proj", "v_proj"), v.chunk(3, dim=0)):
                out[f"{layer}self_attn.{part}.{rest.rsplit('_', 1)[1]}"] = chunk.contiguous()
            continue
        module, param = rest.rsplit(".", 1)
        if module in _BLOCK_RENAME:
            out[f"{layer}{_BLOCK_RENAME[module]}.{param}"] = v
    return out


def fill_text_encoder(model, tensors: dict, path: Path, what: str):
    """Load canonically named `tensors` into a CLIPTextModel(WithProjection), all or nothing.
    what: which encoder, for the message ("the text encoder", "the second text encoder (OpenCLIP bigG)")."""
    wanted = model.state_dict()
    missing = [k for k in wanted if canonical_key(k) not in tensors and not k.endswith("position_ids")]
    if missing:
        raise InstantLoraError(
            f"{path.name}: {what} is incomplete ({len(missing)} tensors missing, e.g. {canonical_key(missing[0])}).",
            hint="the checkpoint is damaged or of another model family; try another file", path=path)
    # position_ids is 0..76: the model's own, as some merged checkpoints hold it damaged (as floats)
    filled = {k: (v if k.endswith("position_ids") else tensors[canonical_key(k)]) for k, v in wanted.items()}
    bad = [k for k, v in filled.items() if tuple(v.shape) != tuple(wanted[k].shape)]
    if bad:
        raise InstantLoraError(
            f"{path.name}: {what} has tensors of the wrong size (e.g. {canonical_key(bad[0])}: "
            f"{tuple(filled[bad[0]].shape)}, expected {tuple(wanted[bad[0]].shape)}).",
            hint="the checkpoint does not match its family's configuration; pass model_config_dir for an unusual model",
            path=path)
    model.load_state_dict(filled, strict=True)
    return model
