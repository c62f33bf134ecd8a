"""The Test panel's work: images with `<lora:name:w>` tags, the weight x epoch grid of a run,
and making a cell the LoRA's preview. The host renders: diffusers on a base model kept in memory
in the standalone app, the WebUI's own txt2img inside the WebUI."""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import InstantLoraError


def settings_from(negative: str, sampler: str, steps, cfg, width, height):
    from ..sample.settings import GenerationSettings

    return GenerationSettings(negative_prompt=negative or "", steps=int(steps or 20), cfg_scale=float(cfg or 7),
                              sampler=sampler, width=int(width or 512), height=int(height or 512)).checked()


def _seed(seed) -> int:
    s = int(seed if seed not in (None, "") else -1)
    return s if s >= 0 else int(time.time() * 1000) % 2**31


def generate_image(job, host, checkpoint: str, prompt: str, seed, settings):
    """(PIL image with its infotext, seed used)."""
    if job.snapshot().running:
        raise InstantLoraError("a training is running: test when it has finished (its samples show progress meanwhile)")
    seed = _seed(seed)
    with host.test_renderer(checkpoint) as render:
        return render(prompt, seed, settings), seed


def parse_weights(text) -> list[float]:
    """"0, 0.4 0.7;1" or [0, 0.4, 0.7, 1] -> floats."""
    items = text if isinstance(text, (list, tuple)) else str(text).replace(",", " ").replace(";", " ").split()
    try:
        weights = [float(w) for w in items if not isinstance(w, bool)]
    except (TypeError, ValueError):
        raise InstantLoraError(f"weights '{str(text):.80}' must be numbers like 0, 0.4, 0.7, 1") from None
    if not weights:
        raise InstantLoraError("no weights given", hint="e.g. 0, 0.4, 0.7, 1")
    if len(weights) > 32 or not all(-10 <= w <= 10 for w in weights):  # NaN fails this too
        raise InstantLoraError("weights must be at most 32 numbers from -10 to 10", hint="e.g. 0, 0.4, 0.7, 1")
    return weights


def generate_grid(job, host, checkpoint: str, run_name: str, prompt: str, weights_text: str, seed, settings):
    """GridResult of run `run_name` (rows: its saved files; columns: weights), saved as PNG into
    the host's grids folder."""
    from ..sample.grid import build_grid, run_rows
    from ..sample.tags import format_tag

    if job.snapshot().running:
        raise InstantLoraError("a training is running: test when it has finished")
    weights = parse_weights(weights_text)
    if not run_name:
        raise InstantLoraError("no run to test yet: train one, or type its output name")
    rows = run_rows(host.lora_dir, run_name)
    if "<lora:" not in prompt:
        prompt = f"{format_tag(run_name, 1.0)} {prompt}".strip()
    with host.test_renderer(checkpoint) as render:
        grid = build_grid(render, prompt, rows, weights, seed=_seed(seed), settings=settings,
                          model_name=getattr(render, "model_name", ""), model_hash=getattr(render, "model_hash", None),
                          replace={run_name})
    grid.save(Path(host.grids_dir) / f"{run_name}-grid-{time.strftime('%Y%m%d-%H%M%S')}.png")
    return grid


def panel_defaults(job, result_tag: str) -> tuple[str, str]:
    """(prompt, run name) the panel opens with: the result's tag, and the run whose saved files
    form the grid's rows (none before a run saved anything)."""
    snap = job.snapshot()
    return result_tag or "", snap.name if snap.result_path else ""


def cell_at(grid, x: int, y: int) -> str | None:
    """The label of the grid cell at pixel (x, y) of the grid image, or None (a margin, no grid)."""
    if grid is None:
        return None
    hit = grid.layout.cell_at(int(x), int(y))
    return cell_labels(grid)[hit[0] * len(grid.weights) + hit[1]] if hit else None


def cell_labels(grid) -> list[str]:
    return [f"{row.label} @ w={w:g}" for row in grid.rows for w in grid.weights]


def cell_index(grid, label: str) -> tuple[int, int]:
    labels = cell_labels(grid) if grid is not None else []
    if label not in labels:
        raise InstantLoraError("pick a cell of the grid (click it or choose it in the list)")
    return divmod(labels.index(label), len(grid.weights))


def cell_infotext(grid, label: str) -> str:
    """The picked cell's prompt and settings, as the WebUI pastes them ("" before a pick)."""
    if grid is None or label not in cell_labels(grid):
        return ""
    return grid.cell_infotext(*cell_index(grid, label))


def choose_cell(grid, label: str) -> str:
    """Make the chosen cell its file's card preview and its weight the sidecar's preferred weight."""
    if grid is None:
        raise InstantLoraError("generate a grid first")
    row, col = cell_index(grid, label)
    preview, sidecar = grid.choose(row, col)
    return f"`{Path(preview).name}` is now the card preview, preferred weight {grid.weights[col]:g} (in `{Path(sidecar).name}`)"
