"""The Train and Result sections' view of the job: progress bar, loss chart, samples, log, result;
and the poller, which sends a page only what changed since that page's last poll."""

from __future__ import annotations

import html
import math
from pathlib import Path

POLLED = ("progress", "loss_chart", "samples", "log", "result", "result_tag")  # the outputs, in order
LOG_SHOWN = 40  # last lines in the log box
STAGES = {"waiting": "waiting for the GPU", "dataset": "reading the dataset", "captioning": "captioning",
          "loading": "loading the model", "caching": "caching", "training": "training"}


def stage_words(stage: str) -> str:
    return STAGES.get(stage, stage or "starting")


def _fmt_time(seconds) -> str:
    if seconds is None:
        return "--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def progress_html(snap) -> str:
    """The bar and its line; `data-state` (idle/running/finished/cancelled/failed) is what the
    WebUI's script and the tests watch."""
    if snap.state == "idle":
        return "<div class='il-progress' data-state='idle'>Not started.</div>"
    pct = 100.0 * snap.step / snap.total if snap.total else 0.0
    loss = f"{snap.loss:.4f} (avg {snap.avg_loss:.4f})" if snap.loss is not None else "--"
    state = snap.state
    if snap.state == "running" and snap.stage != "training":
        state = f"running ({stage_words(snap.stage)})"
    elif snap.state in ("cancelled", "failed") and snap.stage and snap.stage != "training":
        state = f"{snap.state} while {stage_words(snap.stage)}"
    color = {"failed": "#dc2626", "cancelled": "#d97706"}.get(snap.state, "#3b82f6")
    return (f"<div class='il-progress' data-state='{html.escape(snap.state)}'>"
            f"<div style='background:#ddd;border-radius:4px;height:14px'><div style='width:{pct:.1f}%;height:14px;border-radius:4px;"
            f"background:{color}'></div></div>"
            f"<div>{html.escape(state)}: step <b>{snap.step}</b> / {snap.total} ({pct:.0f}%) | epoch {snap.epoch} | "
            f"loss {loss} | {snap.it_per_s:.2f} it/s | elapsed {_fmt_time(snap.seconds)} | ETA {_fmt_time(snap.eta_s)}</div></div>")


COLORS = {"raw": "#93c5fd", "smooth": "#1d4ed8", "validation": "#ea580c"}
OVERFIT_NOTE = "Validation loss rising while training loss falls = overfitting: an earlier save is then likely better."
NO_VALIDATION_NOTE = ("Set Validation split (Dataset options) to also draw a validation loss: "
                      "it rising while the training loss falls is how you see overfitting.")
RISE = 1.02  # a validation loss this much above its best counts as rising


def _smoothed(vals: list) -> list:
    """TensorBoard-style smoothing (0.9), bias-corrected at the start."""
    out, ema = [], 0.0
    for i, v in enumerate(vals):
        ema = 0.9 * ema + 0.1 * v
        out.append(ema / (1 - 0.9 ** (i + 1)))
    return out


def overfitting(steps: list, smooth: list, validation: list) -> tuple | None:
    """(best validation step, its loss, last validation loss) when the validation loss has risen
    above its best while the smoothed training loss kept falling since; else None."""
    points = [(s, v) for s, v in validation if v is not None]
    if len(points) < 2:
        return None
    best_step, best = min(points, key=lambda p: (p[1], p[0]))
    last_step, last = points[-1]
    if last_step <= best_step or last <= best * RISE:
        return None

    def train_at(step):
        before = [t for s, t in zip(steps, smooth) if s <= step]
        return before[-1] if before else smooth[0]

    return (best_step, best, last) if train_at(last_step) < train_at(best_step) else None


def loss_chart_svg(losses: list, validation: list | None = None, width: int = 640, height: int = 220) -> str:
    """Raw training loss (light), its moving average (dark) and the validation loss (orange points,
    from Validation events) as inline SVG with a legend, and a line on reading them: works in every
    Gradio. `validation`: (step, loss, ...) tuples, as JobSnapshot.validation holds them."""
    if len(losses) < 2:
        return "<div class='il-loss'>The loss chart appears after the first steps.</div>"
    steps = [s for s, _ in losses]
    vals = [v if v is not None and math.isfinite(v) else 0.0 for _, v in losses]
    smooth = _smoothed(vals)
    val = [(v[0], v[1]) for v in (validation or []) if v[1] is not None and math.isfinite(v[1])]
    lo, hi = min(vals + [v for _, v in val]), max(vals + [v for _, v in val])
    span = (hi - lo) or 1.0
    x0, x1 = min([steps[0]] + [s for s, _ in val]), max([steps[-1]] + [s for s, _ in val])
    top, bottom = 24, height - 22

    def xy(s, v):
        return f"{40 + (s - x0) / max(x1 - x0, 1) * (width - 50):.1f},{top + (hi - v) / span * (bottom - top):.1f}"

    def pts(series):
        return " ".join(xy(s, v) for s, v in series)

    legend = [("raw", "training loss"), ("smooth", "smoothed")] + ([("validation", "validation loss")] if val else [])
    parts = [f"<svg class='il-loss' viewBox='0 0 {width} {height}' width='100%' xmlns='http://www.w3.org/2000/svg' "
             f"data-validation-points='{len(val)}'>"]
    x = 40
    for key, label in legend:
        parts.append(f"<line x1='{x}' y1='9' x2='{x + 18}' y2='9' stroke='{COLORS[key]}' stroke-width='3'/>"
                     f"<text x='{x + 22}' y='13' font-size='11' fill='currentColor'>{label}</text>")
        x += 40 + 7 * len(label)
    parts.append(f"<polyline fill='none' stroke='{COLORS['raw']}' stroke-width='1' points='{pts(zip(steps, vals))}'/>")
    parts.append(f"<polyline fill='none' stroke='{COLORS['smooth']}' stroke-width='2' points='{pts(zip(steps, smooth))}'/>")
    if val:
        if len(val) > 1:
            parts.append(f"<polyline class='il-validation' fill='none' stroke='{COLORS['validation']}' stroke-width='2' "
                         f"stroke-dasharray='5,3' points='{pts(val)}'/>")
        for s, v in val:
            cx, cy = xy(s, v).split(",")
            parts.append(f"<circle class='il-validation' cx='{cx}' cy='{cy}' r='3.5' fill='{COLORS['validation']}'>"
                         f"<title>step {s}: validation loss {v:.4f}</title></circle>")
    for tx, ty, text in ((2, top + 4, f"{hi:.3f}"), (2, bottom, f"{lo:.3f}"), (40, height - 4, f"step {x0}"),
                         (width - 80, height - 4, f"step {x1}")):
        parts.append(f"<text x='{tx}' y='{ty}' font-size='11' fill='currentColor'>{text}</text>")
    parts.append("</svg>")
    if not val:
        note = NO_VALIDATION_NOTE
    else:
        found = overfitting(steps, smooth, val)
        note = OVERFIT_NOTE if found is None else (
            f"<b>Overfitting:</b> the validation loss rose from {found[1]:.4f} (step {found[0]}) to {found[2]:.4f} while the "
            f"training loss kept falling; the save nearest step {found[0]} is likely the best.")
    return "".join(parts) + f"<div class='il-loss-note' style='font-size:12px;opacity:0.8'>{note}</div>"


def result_markdown(snap) -> tuple[str, str]:
    """(markdown about how the run ended and its file, the prompt to copy). A cancel is not a
    failure: it says where the run stopped and what was kept."""
    if snap.state == "failed":
        return f"**Training failed** while {stage_words(snap.stage)}: {html.escape(snap.error or 'unknown error')}", ""
    if snap.state == "cancelled" and not snap.result_path:
        return f"**Cancelled** while {stage_words(snap.stage)}: nothing was saved.", ""
    if snap.state not in ("finished", "cancelled") or not snap.result_path:
        return "", ""
    path = Path(snap.result_path)
    size = path.stat().st_size / 2**20 if path.exists() else 0.0
    from ...sample.tags import result_prompt

    tag = result_prompt(path, snap.trigger_words)
    if snap.state == "cancelled":
        return f"**Cancelled** while {stage_words(snap.stage)}; saved what was learned so far: `{path}` ({size:.1f} MB)", tag
    return f"Saved: `{path}` ({size:.1f} MB)", tag


def _fingerprints(snap) -> dict:
    """Cheap stand-ins for each output: equal fingerprints = the same value on the page."""
    run = (snap.started_at, snap.name)
    return {
        "progress": progress_html(snap),
        "loss_chart": (run, len(snap.losses), snap.losses[-1] if snap.losses else None, len(snap.validation)),
        "samples": (run, len(snap.samples), snap.samples[-1] if snap.samples else None),
        "log": "\n".join(snap.log[-LOG_SHOWN:]),
        "result": (run, snap.state, snap.stage, snap.result_path, snap.error),
    }


def poll(job, seen: dict | None = None) -> tuple[dict, dict]:
    """({output: new value} for the outputs of POLLED that changed since `seen`, the new `seen`).

    `seen` is what this page last got (None for a page that just opened: it gets everything). An
    unchanged job (same `version`) costs one locked read and sends nothing; otherwise the loss
    chart and the samples are rebuilt only when their steps or images changed.
    """
    if seen is not None and seen.get("version") == job.version:
        return {}, seen
    snap = job.snapshot()
    keys = _fingerprints(snap)
    old = (seen or {}).get("keys", {})
    changed = {name for name, key in keys.items() if name not in old or old[name] != key}
    out: dict = {}
    if "progress" in changed:
        out["progress"] = keys["progress"]
    if "loss_chart" in changed:
        out["loss_chart"] = loss_chart_svg(snap.losses, snap.validation)
    if "samples" in changed:
        out["samples"] = [(path, caption) for caption, path in snap.samples]
    if "log" in changed:
        out["log"] = keys["log"]
    if "result" in changed:
        out["result"], out["result_tag"] = result_markdown(snap)
    return out, {"version": snap.version, "keys": keys}
