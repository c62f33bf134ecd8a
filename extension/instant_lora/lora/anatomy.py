"""What a LoRA run adapts, as plain data: one row per adapted module (its name in the file, its
block, its role, the layer's shape and the shapes of its A (down) and B (up) matrices at the
chosen rank), the totals against the base model, and the shapes the model computes with (latent
channels and downscale, text tokens and features) read from the config files.

The "What will be trained" panel draws it and the plan's parameter line counts from it: one count.
No weights are loaded: the module tree is built on the meta device from the diffusers config folder
the run loads with (the family's bundled configs for a single-file checkpoint, the checkpoint's own
folder, or --model_config_dir), once per folder. torch is imported inside functions only (the UI
imports this module).
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .blocks import block_of, block_order, part_of

PRESETS = ("default", "attn-only")  # lora.targets' choices; both are read from one build


@dataclass(frozen=True)
class ModuleRow:
    name: str  # the kohya name, as in the saved file
    block: str  # blocks.block_of: IN01, MID, OUT03, TE, TE1, TE2
    role: str  # its place inside a transformer / encoder layer: attn1.to_q, ff.net.2, mlp.fc1, proj_in
    kind: str  # "linear" | "conv1x1"
    out_features: int
    in_features: int
    rank: int

    @property
    def part(self) -> str:
        return part_of(self.block)

    @property
    def _tail(self) -> tuple:
        return (1, 1) if self.kind == "conv1x1" else ()

    @property
    def weight_shape(self) -> tuple:
        return (self.out_features, self.in_features, *self._tail)

    @property
    def down_shape(self) -> tuple:
        """A: in -> r."""
        return (self.rank, self.in_features, *self._tail)

    @property
    def up_shape(self) -> tuple:
        """B: r -> out (zeros at the start, so training starts from the base model)."""
        return (self.out_features, self.rank, *self._tail)

    @property
    def params(self) -> int:
        return self.rank * (self.in_features + self.out_features)


@dataclass(frozen=True)
class Anatomy:
    rows: tuple  # ModuleRow: the UNet's, then the text encoder(s)' (when trained), in model order
    rank: int
    alpha: float
    preset: str
    train_text_encoder: bool
    base: int  # parameters of the UNet + text encoder(s), as loaded (the VAE is never adapted)

    @property
    def trainable(self) -> int:
        return sum(r.params for r in self.rows)

    @property
    def share(self) -> float:
        return self.trainable / self.base if self.base else 0.0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    @property
    def unet_modules(self) -> int:
        return sum(r.part != "text encoder" for r in self.rows)

    @property
    def text_encoder_modules(self) -> int:
        return sum(r.part == "text encoder" for r in self.rows)

    def blocks(self) -> list[tuple[str, list]]:
        """[(block, its rows)] in the order data flows: down, mid, up, then the text encoder(s)."""
        grouped: dict = {}
        for row in self.rows:
            grouped.setdefault(row.block, []).append(row)
        return sorted(grouped.items(), key=lambda item: block_order(item[0]))


def lora_anatomy(config_dir, rank: int, preset: str = "default", train_text_encoder: bool = True,
                 alpha: float | None = None) -> Anatomy:
    """The modules a run with these settings adapts in the model of `config_dir`."""
    targets, base = module_targets(config_dir, preset)
    rank = int(rank)
    rows = tuple(ModuleRow(name, block, role, kind, out, inp, rank) for name, block, role, kind, out, inp in targets
                 if train_text_encoder or part_of(block) != "text encoder")
    return Anatomy(rows=rows, rank=rank, alpha=float(rank if alpha is None else alpha), preset=str(preset),
                   train_text_encoder=bool(train_text_encoder), base=base)


def config_folder(model_path: str | None, family: str = "sd1", model_config_dir: str | None = None) -> Path:
    """The diffusers config folder the run builds its model from (models.load_sd_model's choice):
    --model_config_dir, else a diffusers folder's own configs, else the family's bundled ones."""
    from ..models import BUNDLED_CONFIGS

    if model_config_dir:
        return Path(model_config_dir)
    path = Path(model_path) if model_path else None
    if path is not None and (path / "unet" / "config.json").is_file():
        return path
    return BUNDLED_CONFIGS.get(family, BUNDLED_CONFIGS["sd1"])


# ---- the module tree, once per folder --------------------------------------------------------------

_LOCK = threading.Lock()  # one build at a time: diffusers' lazy imports are not thread-safe


def module_targets(config_dir, preset: str = "default") -> tuple[tuple, int]:
    """((kohya name, block, role, kind, out, in) per target, base parameters) for a preset."""
    folder = Path(config_dir)
    stamp = (folder / "unet" / "config.json").stat().st_mtime_ns  # a folder rewritten in place is read again
    with _LOCK:
        by_preset, base = _skeleton(str(folder.resolve()), stamp)
    if preset not in by_preset:
        raise ValueError(f"unknown LoRA preset {preset!r}; use one of {', '.join(PRESETS)}")
    return by_preset[preset], base


_ROLE = re.compile(r"(?:transformer_blocks\.\d+\.|encoder\.layers\.\d+\.)(.+)$")


def role_of(module_path: str) -> str:
    """'attn1.to_q', 'ff.net.0.proj', 'self_attn.q_proj', 'mlp.fc1', or 'proj_in' / 'proj_out'."""
    m = _ROLE.search(module_path)
    return m.group(1) if m else module_path.rsplit(".", 1)[-1]


@lru_cache(maxsize=8)
def _skeleton(folder: str, stamp: int) -> tuple[dict, int]:
    """Build the UNet and text encoder(s) without weights and read every preset's targets off them."""
    from ..heavy_imports import import_sd_libraries

    import_sd_libraries()
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from .kohya_file import kohya_names
    from .targets import text_encoder_targets, unet_targets

    root = Path(folder)
    # torch.device("meta") is thread-local; accelerate's init_empty_weights patches torch for every
    # thread and would put a concurrently training run's new LoRA layers on the meta device.
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(root / "unet")))
        encoders = [CLIPTextModel(CLIPTextConfig.from_pretrained(str(root / "text_encoder")))]
        if (root / "text_encoder_2").is_dir():
            encoders.append(CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(str(root / "text_encoder_2"))))
    layers = unet.config.layers_per_block
    layers = layers if isinstance(layers, int) else layers[0]
    base = sum(p.numel() for net in (unet, *encoders) for p in net.parameters())
    by_preset = {}
    for preset in PRESETS:
        chosen = {id(unet): unet_targets(unet, preset), **{id(te): text_encoder_targets(te, preset) for te in encoders}}

        def items(net, chosen=chosen):
            modules = dict(net.named_modules())
            return [(path, (role_of(path), modules[path])) for path in chosen[id(net)]]

        rows = []
        for name, (role, module) in kohya_names(unet, encoders, items).items():
            shape = tuple(module.weight.shape)
            kind = "conv1x1" if len(shape) == 4 else "linear"
            rows.append((name, block_of(name, layers), role, kind, int(shape[0]), int(shape[1])))
        by_preset[preset] = tuple(rows)
    return by_preset, int(base)


# ---- the shapes the model computes with, from its config files (no torch) ----------------------------

TRAIN_TIMESTEPS = 1000  # models.training_noise_scheduler: DDPM with 1000 steps for every family


@dataclass(frozen=True)
class ModelShapes:
    latent_channels: int  # the UNet's input channels (4)
    downscale: int  # pixels per latent cell: 2 ** (VAE levels - 1) = 8
    encoder_widths: tuple  # features per token of each text encoder (768; 1024; 768 + 1280)
    window_tokens: int  # tokens per text window: 75 + start and end = 77
    pooled: int | None  # SDXL: the second encoder's pooled (projected) vector
    size_ids: int | None  # SDXL: the size/crop numbers (original size, crop, target size)

    @property
    def text_width(self) -> int:
        return sum(self.encoder_widths)

    def latent_shape(self, width: int, height: int) -> tuple:
        """(channels, height, width) of the latent of a width x height image."""
        return (self.latent_channels, height // self.downscale, width // self.downscale)


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@lru_cache(maxsize=16)
def _model_shapes(folder: str) -> ModelShapes:
    root = Path(folder)
    unet = _read(root / "unet" / "config.json")
    vae_file = root / "vae" / "config.json"
    levels = len(_read(vae_file).get("block_out_channels", (0,) * 4)) if vae_file.is_file() else 4
    encoders = [_read(root / name / "config.json") for name in ("text_encoder", "text_encoder_2")
                if (root / name / "config.json").is_file()]
    widths = tuple(int(e.get("hidden_size", 768)) for e in encoders)
    pooled = size_ids = None
    if unet.get("addition_embed_type") == "text_time" and len(encoders) > 1:
        pooled = int(encoders[-1].get("projection_dim") or widths[-1])
        # The added embedding takes the pooled vector and each size number embedded at this width.
        per_id = int(unet.get("addition_time_embed_dim") or 256)
        size_ids = (int(unet.get("projection_class_embeddings_input_dim") or pooled + 6 * per_id) - pooled) // per_id
    tokens = int(encoders[0].get("max_position_embeddings", 77)) if encoders else 77
    return ModelShapes(latent_channels=int(unet.get("in_channels", 4)), downscale=2 ** max(levels - 1, 0),
                       encoder_widths=widths, window_tokens=tokens, pooled=pooled, size_ids=size_ids)


def model_shapes(config_dir) -> ModelShapes:
    return _model_shapes(str(Path(config_dir).resolve()))
