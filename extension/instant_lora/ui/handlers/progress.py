"""The Train and Result sections' view of the job: progress bar, loss chart, the training's
mechanism (loss against timestep, how far each block has moved), samples, log, result; and the
poller, which sends a page only what changed since that page's last poll."""

from __future__ import annotations

import html
import math
from pathlib import Path

from ...i18n import t

POLLED = ("progress", "loss_chart", "samples", "log", "result", "result_tag", "mechanism")  # the outputs, in order
LOG_SHOWN = 40  # last lines in the log box
STATES = {"running": "running", "finished": "finished", "cancelled": "cancelled", "failed": "failed"}
STAGES = {"waiting": "waiting for the GPU", "dataset": "reading the dataset", "captioning": "captioning",
          "loading": "loading the model", "caching": "caching", "training": "training"}


def stage_words(stage: str) -> str:
    return STAGES.get(stage, stage or t("starting"))


def _fmt_time(seconds) -> str:
    if seconds is None:
        return "--"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def progress_html(snap) -> str:
    """The bar and its line; `data-state` (idle/running/finished/cancelled/failed) is what the
    WebUI's script and the tests watch."""
    if snap.state == "idle":
        return f"<div class='il-progress' data-state='idle'>{t('Not started.')}</div>"
    pct = 100.0 * snap.step / snap.total if snap.total else 0.0
    loss = t("{loss:.4f} (avg {avg:.4f})", loss=snap.loss, avg=snap.avg_loss) if snap.loss is not None else "--"
    state = STATES.get(snap.state, snap.state)
    if snap.state == "running" and snap.stage != "training":
        state = t("running ({stage})", stage=stage_words(snap.stage))
    elif snap.state in ("cancelled", "failed") and snap.stage and snap.stage != "training":
        state = t("{state} while {stage}", state=state, stage=stage_words(snap.stage))
    color = {"failed": "#dc2626", "cancelled": "#d97706"}.get(snap.state, "#3b82f6")
    return (f"<div class='il-progress' data-state='{html.escape(snap.state)}'>"
            f"<div style='background:#ddd;border-radius:4px;height:14px'><div style='width:{pct:.1f}%;height:14px;border-radius:4px;"
            f"background:{color}'></div></div>"
            # one text node, one catalogue entry: the page translates it whole
            "<div>" + html.escape(t("{state}: step {step} / {total} ({pct:.0f}%) | epoch {epoch} | loss {loss} | "
                                    "{rate:.2f} it/s | elapsed {elapsed} | ETA {eta}", state=state, step=snap.step,
                                    total=snap.total, pct=pct, epoch=snap.epoch, loss=loss, rate=snap.it_per_s,
                                    elapsed=_fmt_time(snap.seconds), eta=_fmt_time(snap.eta_s))) + "</div></div>")


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
        return f"<div class='il-loss'>{t('The loss chart appears after the first steps.')}</div>"
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

    legend = [("raw", t("training loss")), ("smooth", t("smoothed"))] + ([("validation", t("validation loss"))] if val else [])
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
                         f"<title>{t('step {step}: validation loss {loss:.4f}', step=s, loss=v)}</title></circle>")
    for tx, ty, text in ((2, top + 4, f"{hi:.3f}"), (2, bottom, f"{lo:.3f}"), (40, height - 4, t("step {step}", step=x0)),
                         (width - 80, height - 4, t("step {step}", step=x1))):
        parts.append(f"<text x='{tx}' y='{ty}' font-size='11' fill='currentColor'>{text}</text>")
    parts.append("</svg>")
    if not val:
        note = NO_VALIDATION_NOTE
    else:
        found = overfitting(steps, smooth, val)
        note = OVERFIT_NOTE if found is None else (
            f"<b>{t('Overfitting:')}</b> " + t("the validation loss rose from {best:.4f} (step {step}) to {last:.4f} while the "
                                              "training loss kept falling; the save nearest step {step} is likely the best.",
                                              best=found[1], step=found[0], last=found[2]))
    return "".join(parts) + f"<div class='il-loss-note' style='font-size:12px;opacity:0.8'>{note}</div>"


# ---- the mechanism: loss against timestep, movement per block -------------------------------------

DOT_SHADES = (0.12, 0.25, 0.45, 0.8)  # oldest quarter of the points to newest: recent points darker
DOT_COLOR, NOW_COLOR = "#2563eb", "#ea580c"
BAR_COLORS = {"unet": "#2563eb", "text": "#16a34a"}


def _num(x: float) -> str:
    return f"{x:.1f}"


def scatter_svg(points: list, current_step: int | None, lang=None, width: int = 640, height: int = 210) -> str:
    """Inline SVG: one dot per (step, timestep, loss), x the timestep (0-999), y the loss; the
    dots of `current_step` drawn larger in orange."""
    left, right, top, bottom = 46, 12, 12, height - 34
    tmax = max([999] + [p[1] for p in points])
    losses = sorted(p[2] for p in points)
    hi = losses[int(0.99 * (len(losses) - 1))] if len(losses) >= 100 else (losses[-1] if losses else 1.0)
    hi = hi if hi > 0 else 1.0  # the top 1% (a few outliers) sit on the top edge rather than squash the rest

    def x(tstep):
        return left + tstep / tmax * (width - left - right)

    def y(loss):
        return top + (1 - min(loss, hi) / hi) * (bottom - top)

    parts = [f"<svg class='il-scatter' viewBox='0 0 {width} {height}' width='100%' xmlns='http://www.w3.org/2000/svg' "
             f"data-points='{len(points)}' data-current='{sum(1 for p in points if p[0] == current_step)}'>",
             f"<line x1='{left}' y1='{bottom}' x2='{width - right}' y2='{bottom}' stroke='currentColor' stroke-opacity='0.4'/>",
             f"<line x1='{left}' y1='{top}' x2='{left}' y2='{bottom}' stroke='currentColor' stroke-opacity='0.4'/>"]
    n = len(points)
    for shade, quarter in enumerate(DOT_SHADES):
        group = points[n * shade // 4: n * (shade + 1) // 4]
        if group:  # a zero-length line with round caps per point: a dot, a dozen bytes each
            d = "".join(f"M{_num(x(tt))} {_num(y(loss))}h0" for _, tt, loss in group)
            parts.append(f"<path class='il-dots' d='{d}' fill='none' stroke='{DOT_COLOR}' stroke-opacity='{quarter}' "
                         f"stroke-width='4' stroke-linecap='round'/>")
    for s, tt, loss in points:
        if s == current_step:
            title = html.escape(t("step {step}: timestep {timestep}, loss {loss:.4f}", lang, step=s, timestep=tt, loss=loss))
            parts.append(f"<circle class='il-now' cx='{_num(x(tt))}' cy='{_num(y(loss))}' r='4.5' fill='{NOW_COLOR}'>"
                         f"<title>{title}</title></circle>")
    label = html.escape(t("timestep: 0 = almost clean image, {top} = pure noise", lang, top=tmax))
    loss_label = html.escape(t("loss", lang))
    parts += [f"<text x='{left}' y='{height - 16}' font-size='11' fill='currentColor'>0</text>",
              f"<text x='{width - right - 24}' y='{height - 16}' font-size='11' fill='currentColor'>{tmax}</text>",
              f"<text x='{(left + width) // 2 - 120}' y='{height - 3}' font-size='11' fill='currentColor'>{label}</text>",
              f"<text x='2' y='{top + 8}' font-size='11' fill='currentColor'>{hi:.3g}</text>",
              f"<text x='2' y='{bottom}' font-size='11' fill='currentColor'>0</text>",
              f"<text x='2' y='{(top + bottom) // 2}' font-size='11' fill='currentColor'>{loss_label}</text>",
              "</svg>"]
    return "".join(parts)


def movement_svg(movement: dict, lang=None, width: int = 640) -> str:
    """Inline SVG: one horizontal bar per block (IN01 ... OUT11, TE), scaled to the largest."""
    from ...lora.blocks import block_order

    blocks = sorted(movement, key=block_order)
    values = {b: (v if isinstance(v, (int, float)) and math.isfinite(v) else 0.0) for b, v in movement.items()}
    top = max(values.values(), default=0.0)
    row, label_w, value_w = 16, 52, 72
    height = row * len(blocks) + 6
    parts = [f"<svg class='il-movement' viewBox='0 0 {width} {height}' width='100%' xmlns='http://www.w3.org/2000/svg' "
             f"data-blocks='{html.escape(','.join(blocks))}'>"]
    for i, b in enumerate(blocks):
        v = values[b]
        w = (width - label_w - value_w) * v / top if top > 0 else 0.0
        yy = 3 + i * row
        color = BAR_COLORS["text" if b.startswith("TE") else "unet"]
        parts.append(f"<text x='2' y='{yy + 11}' font-size='11' fill='currentColor'>{html.escape(b)}</text>"
                     f"<rect class='il-bar' data-block='{html.escape(b)}' data-value='{v:.6g}' x='{label_w}' y='{yy + 2}' "
                     f"width='{w:.1f}' height='{row - 4}' fill='{color}'/>"
                     f"<text x='{label_w + w + 4:.1f}' y='{yy + 11}' font-size='11' fill='currentColor'>{v:.3g}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _step_line(snap, points: list, lang=None) -> str:
    """What the last step drew: its timestep(s), loss and learning rate."""
    step = points[-1][0]
    now = [p for p in points if p[0] == step]
    lr = snap.lr if snap.lr is not None else 0.0
    if len(now) == 1:
        line = t("Step {step}: timestep {timestep}, loss {loss:.4f}, learning rate {lr:.2e}", lang,
                 step=step, timestep=now[0][1], loss=now[0][2], lr=lr)
    else:
        line = t("Step {step}: {count} images at timesteps {timesteps}, mean loss {loss:.4f}, learning rate {lr:.2e}", lang,
                 step=step, count=len(now), timesteps=", ".join(str(p[1]) for p in now),
                 loss=sum(p[2] for p in now) / len(now), lr=lr)
    if snap.text_encoder_lr is not None:
        line += "; " + t("text encoder {lr:.2e}", lang, lr=snap.text_encoder_lr)
    return line


def mechanism_html(snap, lang=None) -> str:
    """The training's mechanism, live: this step's timestep, loss and learning rate; every image's
    loss against its timestep over the run; and how far each block's LoRA has moved. The
    elements carry data-points / data-blocks for scripts and tests."""
    points = [p for p in snap.points if p[2] is not None and math.isfinite(p[2])]
    movement = dict(snap.movement or {})
    blocks = ",".join(movement)
    head = (f"<div class='il-mechanism' data-points='{len(points)}' data-blocks='{html.escape(blocks)}' "
            f"data-movement-step='{'' if snap.movement_step is None else snap.movement_step}'>")
    if not points and not movement:
        return head + html.escape(t("The timestep and loss of every image appear here once training starts.", lang)) + "</div>"
    parts = [head]

    def note(*sentences):
        parts.append("<div class='il-mechanism-note' style='font-size:12px;opacity:0.8'>"
                     + html.escape(" ".join(sentences)) + "</div>")

    if points:
        parts.append(f"<div class='il-step-now'>{html.escape(_step_line(snap, points, lang))}</div>")
        parts.append(scatter_svg(points, points[-1][0], lang))
        note(t("Each dot is one image at one step: the timestep (noise level) drawn for it and its loss; darker dots are more recent.", lang),
             t("With the noise target, small timesteps (little noise) lose more: that is normal, not a problem, and why the loss curve above jumps from step to step.", lang))
    if movement:
        head_text = t("How far each block's LoRA has moved, at step {step}", lang, step=snap.movement_step)
        parts.append(f"<div class='il-movement-head'>{html.escape(head_text)}</div>")
        parts.append(movement_svg(movement, lang))
        if not snap.movement_step and not any(isinstance(v, (int, float)) and v > 0 for v in movement.values()):
            note(t("All zero before the first step: the LoRA's up weights start at zero, so training starts from the base model itself.", lang))
        note(t("Each bar is the size of what the LoRA adds to that block's weights (the norm of up x down x scale), scaled to the largest.", lang),
             t("The blocks whose bars grow are the ones learning your subject.", lang),
             t("IN = the UNet's down blocks, MID = its middle, OUT = its up blocks, TE = the text encoder.", lang))
    parts.append("</div>")
    return "".join(parts)


def result_summary(snap, path: Path, lang=None) -> list[str]:
    """The result card's lines on what the run changed: the blocks that moved most, and the file's
    size against the base model's."""
    from ...lora.movement import largest

    lines = []
    top = largest(snap.movement or {})
    if top:
        lines.append(t("Changed most: {blocks} (the blocks whose LoRA moved furthest)", lang, blocks=", ".join(top)))
    size = snap.result_bytes
    if size is None and path.is_file():
        size = path.stat().st_size
    if size is not None:
        if snap.base_model_bytes:
            lines.append(t("File {size_mb:.1f} MB = {percent:.3g}% of the base model's {base_gb:.2f} GB", lang,
                           size_mb=size / 2**20, percent=100 * size / snap.base_model_bytes,
                           base_gb=snap.base_model_bytes / 2**30))
        else:
            lines.append(t("File {size_mb:.1f} MB", lang, size_mb=size / 2**20))
    return lines


def result_markdown(snap, lang=None) -> tuple[str, str]:
    """(markdown about how the run ended and its file, the prompt to copy). A cancel is not a
    failure: it says where the run stopped and what was kept; a saved file adds the blocks that
    changed most and its size against the base model's."""
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
    summary = "".join("\n\n" + line for line in result_summary(snap, path, lang))
    if snap.state == "cancelled":
        return (f"**Cancelled** while {stage_words(snap.stage)}; saved what was learned so far: `{path}` ({size:.1f} MB)"
                + summary), tag
    return f"Saved: `{path}` ({size:.1f} MB)" + summary, tag


def _fingerprints(snap) -> dict:
    """Cheap stand-ins for each output: equal fingerprints = the same value on the page."""
    run = (snap.started_at, snap.name)
    return {
        "progress": progress_html(snap),
        "loss_chart": (run, len(snap.losses), snap.losses[-1] if snap.losses else None, len(snap.validation)),
        "samples": (run, len(snap.samples), snap.samples[-1] if snap.samples else None),
        "log": "\n".join(snap.log[-LOG_SHOWN:]),
        "result": (run, snap.state, snap.stage, snap.result_path, snap.error, snap.movement_step, snap.result_bytes),
        "mechanism": (run, len(snap.points), snap.points[-1] if snap.points else None, snap.movement_step,
                      len(snap.movement or ())),
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
    if "mechanism" in changed:
        out["mechanism"] = mechanism_html(snap)
    return out, {"version": snap.version, "keys": keys}
