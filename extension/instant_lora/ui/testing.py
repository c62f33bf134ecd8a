"""The standalone Test panel's work: one base model kept loaded between tests, images with
`<lora:name:w>` tags, the weight x epoch grid of a run, and making a cell the LoRA's preview."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ..errors import InstantLoraError

_lock = threading.Lock()
_loaded: dict = {}  # {"path": checkpoint path, "renderer": DiffusersRenderer}


def renderer_for(checkpoint_path: str, lora_dir: Path):
    """The renderer for this checkpoint, loading the model only when the checkpoint changes."""
    from ..models import load_sd_model
    from ..sample.generate import DiffusersRenderer, pick_device, place_model

    if _loaded.get("path") != checkpoint_path:
        _loaded.clear()
        device, dtype = pick_device()
        model = place_model(load_sd_model(checkpoint_path), device, dtype)
        _loaded.update(path=checkpoint_path, renderer=DiffusersRenderer(model, lora_dir))
    return _loaded["renderer"]


def settings_from(negative: str, sampler: str, steps, cfg, width, height):
    from ..sample.settings import GenerationSettings

    return GenerationSettings(negative_prompt=negative or "", steps=int(steps or 20), cfg_scale=float(cfg or 7),
                              sampler=sampler, width=int(width or 512), height=int(height or 512)).checked()


def _seed(seed) -> int:
    s = int(seed if seed not in (None, "") else -1)
    return s if s >= 0 else int(time.time() * 1000) % 2**31


def generate_image(job, checkpoint_path: str, lora_dir: Path, prompt: str, seed, settings):
    """(PIL image with its infotext, seed used)."""
    if job.snapshot().running:
        raise InstantLoraError("a training is running: test when it has finished (its samples show progress meanwhile)")
    with _lock:
        renderer = renderer_for(checkpoint_path, lora_dir)
        seed = _seed(seed)
        return renderer(prompt, seed, settings), seed


def generate_grid(job, checkpoint_path: str, lora_dir: Path, run_name: str, prompt: str, weights_text: str, seed, settings,
                  out_dir: Path):
    """GridResult of run `run_name` (rows: its saved files; columns: weights), saved as PNG."""
    from ..sample.grid import build_grid, run_rows
    from ..sample.tags import format_tag

    if job.snapshot().running:
        raise InstantLoraError("a training is running: test when it has finished")
    try:
        weights = [float(w) for w in str(weights_text).replace(",", " ").split()]
    except ValueError:
        raise InstantLoraError(f"weights '{weights_text}' must be numbers like 0, 0.4, 0.7, 1") from None
    if not run_name:
        raise InstantLoraError("no run to test yet: train one, or type its output name")
    rows = run_rows(lora_dir, run_name)
    if "<lora:" not in prompt:
        prompt = f"{format_tag(run_name, 1.0)} {prompt}".strip()
    with _lock:
        renderer = renderer_for(checkpoint_path, lora_dir)
        grid = build_grid(renderer, prompt, rows, weights, seed=_seed(seed), settings=settings,
                          model_name=Path(checkpoint_path).stem, replace={run_name})
    grid.save(Path(out_dir) / f"{run_name}-grid-{time.strftime('%Y%m%d-%H%M%S')}.png")
    return grid


def cell_labels(grid) -> list[str]:
    return [f"{row.label} @ w={w:g}" for row in grid.rows for w in grid.weights]


def choose_cell(grid, label: str) -> str:
    """Make the chosen cell its file's card preview and its weight the sidecar's preferred weight."""
    if grid is None:
        raise InstantLoraError("generate a grid first")
    labels = cell_labels(grid)
    if label not in labels:
        raise InstantLoraError("pick a cell of the grid (click it or choose it in the list)")
    index = labels.index(label)
    row, col = divmod(index, len(grid.weights))
    preview, sidecar = grid.choose(row, col)
    return f"`{Path(preview).name}` is now the card preview, preferred weight {grid.weights[col]:g} (in `{Path(sidecar).name}`)"
