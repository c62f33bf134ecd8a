"""A tiny CLIP that really ranks: trained in a few seconds on synthetic shapes, for captioning tests.

A random CLIP ranks labels randomly, so it cannot show that interrogation puts the right words
first. This one is trained on 32 px images of a coloured shape on a plain background, with one
softmax per category (colour, shape, background) over the label phrases, so each category's
right label scores highest. It is built inside the running environment (open_clip 2.20 or 3.x),
never loaded from a file made elsewhere.
"""

from __future__ import annotations

import json
import random
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

from PIL import Image, ImageDraw

TINY_ARCH = "instant-lora-tiny-clip"
TINY_CONFIG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    # 16 positions are plenty for 1-3 word labels and keep training fast.
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (235, 220, 40)}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "grey": (128, 128, 128)}
BANKS: Dict[str, List[str]] = {
    "colour": list(COLOURS),
    "shape": list(SHAPES),
    "background": [f"{b} background" for b in BACKGROUNDS],
}


def draw(colour: str, shape: str, background: str, rng: random.Random, size: int = 64) -> Image.Image:
    """A shape that nearly fills the frame: its corners tell square/circle/triangle apart at 32 px."""
    im = Image.new("RGB", (size, size), BACKGROUNDS[background])
    d = ImageDraw.Draw(im)
    half = size // 2
    r = int(size * rng.uniform(0.42, 0.47))
    cx, cy = half + rng.randint(-1, 1), half + rng.randint(-1, 1)
    fill = COLOURS[colour]
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return im


def register_tiny_arch(folder: Path) -> str:
    import open_clip

    if TINY_ARCH not in open_clip.list_models():
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{TINY_ARCH}.json"
        path.write_text(json.dumps(TINY_CONFIG))
        open_clip.add_model_config(path)
    return TINY_ARCH


def train_tiny_clip(seed: int = 1, max_steps: int = 600):
    """Train until every training image ranks its colour, shape and background first."""
    import open_clip
    import torch

    torch.manual_seed(seed)
    model = open_clip.create_model(TINY_ARCH)
    model.train()
    preprocess = open_clip.image_transform(32, is_train=False)
    tokenizer = open_clip.get_tokenizer(TINY_ARCH)
    phrases = [p for labels in BANKS.values() for p in labels]
    spans, start = [], 0
    for labels in BANKS.values():
        spans.append((start, start + len(labels)))
        start += len(labels)
    tokens = tokenizer(phrases, context_length=TINY_CONFIG["text_cfg"]["context_length"])

    rng = random.Random(seed)
    images, targets = [], []
    for _ in range(4):
        for c in COLOURS:
            for s in SHAPES:
                for b in BACKGROUNDS:
                    images.append(preprocess(draw(c, s, b, rng)))
                    targets.append([list(COLOURS).index(c), SHAPES.index(s), list(BACKGROUNDS).index(b)])
    x_all, y_all = torch.stack(images), torch.tensor(targets)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    began = time.perf_counter()
    threads = torch.get_num_threads()
    # Such small ops are dispatch-bound: one thread is faster, much faster on a busy machine.
    torch.set_num_threads(1)
    try:
        steps = _fit(model, opt, gen, x_all, y_all, tokens, spans, max_steps)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.train_seconds = time.perf_counter() - began
    model.train_steps = steps
    return model


def _fit(model, opt, gen, x_all, y_all, tokens, spans, max_steps) -> int:
    import torch
    import torch.nn.functional as F

    for step in range(max_steps):
        idx = torch.randint(0, len(x_all), (64,), generator=gen)
        img = model.encode_image(x_all[idx], normalize=True)
        txt = model.encode_text(tokens, normalize=True)
        logits = img @ txt.T * 10.0
        loss = sum(F.cross_entropy(logits[:, a:b], y_all[idx, k]) for k, (a, b) in enumerate(spans))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 19:
            with torch.no_grad():
                sims = model.encode_image(x_all, normalize=True) @ model.encode_text(tokens, normalize=True).T
                ok = all(bool((sims[:, a:b].argmax(1) == y_all[:, k]).all()) for k, (a, b) in enumerate(spans))
            if ok:
                return step + 1
    raise RuntimeError(f"tiny CLIP did not learn the shapes in {max_steps} steps")


@dataclass
class TinyClip:
    arch: str
    safetensors: Path     # open_clip state dict, safetensors
    pt: Path              # same weights, torch pickle
    local_dir: Path       # open_clip_config.json + open_clip_model.safetensors
    other_weights: Path   # same architecture, perturbed weights (a "different model")
    torchscript: Path     # a TorchScript archive, the format of OpenAI's own ViT-L-14.pt
    train_seconds: float


_cached: Dict[str, TinyClip] = {}


def tiny_clip(root: Path) -> TinyClip:
    """Train once per test session (module cache), save it in every format the loader reads."""
    if "tiny" in _cached:
        return _cached["tiny"]
    import open_clip
    import torch
    from safetensors.torch import save_file

    register_tiny_arch(root / "configs")
    model = train_tiny_clip()
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    out = root / "weights"
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "tiny.safetensors"))
    torch.save(state, out / "tiny.pt")
    local = root / "tiny-local"
    local.mkdir(exist_ok=True)
    (local / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": TINY_CONFIG, "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                                       "std": [0.26862954, 0.26130258, 0.27577711]}}))
    save_file(state, str(local / "open_clip_model.safetensors"))
    gen = torch.Generator().manual_seed(1)
    other = {k: (v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v)
             for k, v in state.items()}
    save_file(other, str(out / "tiny-other.safetensors"))
    tokens = open_clip.get_tokenizer(TINY_ARCH)(["red"], context_length=TINY_CONFIG["text_cfg"]["context_length"])
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # only the weights matter here
        traced = torch.jit.trace(model, (torch.zeros(1, 3, 32, 32), tokens), strict=False, check_trace=False)
    torch.jit.save(traced, str(out / "tiny-torchscript.pt"))
    _cached["tiny"] = TinyClip(TINY_ARCH, out / "tiny.safetensors", out / "tiny.pt", local,
                               out / "tiny-other.safetensors", out / "tiny-torchscript.pt", model.train_seconds)
    return _cached["tiny"]


def write_shapes(folder: Path, specs, size: int = 64, seed: int = 1) -> Dict[str, tuple]:
    """Write PNGs named like 'red_circle_black.png'; returns {stem: (colour, shape, background)}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    written = {}
    for colour, shape, background in specs:
        stem = f"{colour}_{shape}_{background}"
        draw(colour, shape, background, rng, size).save(folder / f"{stem}.png")
        written[stem] = (colour, shape, background)
    return written
