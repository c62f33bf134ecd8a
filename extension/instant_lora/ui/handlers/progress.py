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


def loss_chart_svg(losses: list, width: int = 640, height: int = 200) -> str:
    """Raw loss (light) and its moving average (dark) as inline SVG: works in every Gradio."""
    if len(losses) < 2:
        return "<div class='il-loss'>The loss chart appears after the first steps.</div>"
    steps = [s for s, _ in losses]
    vals = [v if v is not None and math.isfinite(v) else 0.0 for _, v in losses]
    smooth, ema = [], 0.0
    for i, v in enumerate(vals):  # TensorBoard-style smoothing (0.9), bias-corrected at the start
        ema = 0.9 * ema + 0.1 * v
        smooth.append(ema / (1 - 0.9 ** (i + 1)))
    lo, hi = min(vals), max(vals)
    span = (hi - lo) or 1.0
    x0, x1 = steps[0], steps[-1]

    def pts(series):
        return " ".join(f"{40 + (s - x0) / max(x1 - x0, 1) * (width - 50):.1f},{10 + (hi - v) / span * (height - 30):.1f}"
                        for s, v in zip(steps, series))

    return (f"<svg class='il-loss' viewBox='0 0 {width} {height}' width='100%' xmlns='http://www.w3.org/2000/svg'>"
            f"<polyline fill='none' stroke='#93c5fd' stroke-width='1' points='{pts(vals)}'/>"
            f"<polyline fill='none' stroke='#1d4ed8' stroke-width='2' points='{pts(smooth)}'/>"
            f"<text x='2' y='14' font-size='11'>{hi:.3f}</text><text x='2' y='{height - 18}' font-size='11'>{lo:.3f}</text>"
            f"<text x='40' y='{height - 4}' font-size='11'>step {x0}</text>"
            f"<text x='{width - 80}' y='{height - 4}' font-size='11'>step {x1}</text></svg>")


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
        "loss_chart": (run, len(snap.losses), snap.losses[-1] if snap.losses else None),
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
        out["loss_chart"] = loss_chart_svg(snap.losses)
    if "samples" in changed:
        out["samples"] = [(path, caption) for caption, path in snap.samples]
    if "log" in changed:
        out["log"] = keys["log"]
    if "result" in changed:
        out["result"], out["result_tag"] = result_markdown(snap)
    return out, {"version": snap.version, "keys": keys}
