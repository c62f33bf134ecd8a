"""The "What will be trained" panel: what the run computes (latent and text shapes per bucket, the
timesteps, the loss) and what it tunes (the adapted modules by block, with the shapes of their
A and B matrices at the chosen rank, the parameter count against the base model, the alpha/rank
scale), drawn from the same preview the live plan is made from. No model is loaded to draw it:
the shapes come from the config files of the model the run would load (`lora.anatomy`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from html import escape as _escape
from pathlib import Path

from ...errors import InstantLoraError
from ...i18n import t

_MAX_BUCKETS_SHOWN = 8
# Inline styles that read in light and dark themes (the text's own colour, a grey rule), kept on
# tables and rows: a cell style repeated over SDXL's hundreds of cells would make the page heavy.
_RULE = "border-bottom:1px solid rgba(128,128,128,.35)"
_TABLE = "border-collapse:collapse;color:inherit;text-align:left;vertical-align:top;font-variant-numeric:tabular-nums"
_MONO = "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace"


@dataclass(frozen=True)
class PanelSettings:
    """What the panel is drawn from: the run's settings as the preview makes them. A value the
    form holds wrongly is None (the plan's problems say why); the panel leaves out what needs it."""

    family: str  # "sd1" | "sd2" | "sdxl"
    folder: Path  # the diffusers config folder the run builds its model from
    prediction: str = "epsilon"  # "epsilon" | "v"
    rank: int | None = None
    alpha: float | None = None
    preset: str | None = None
    train_text_encoder: bool = True
    buckets: tuple = ()  # (width, height) per bucket; the training resolution before a dataset loads
    max_token_length: int | None = None
    min_snr_gamma: float | None = None
    noise_offset: float | None = None
    prior_loss_weight: float = 1.0
    with_reg: bool = False  # regularization images train (their loss weighted prior_loss_weight)
    from_dataset: bool = False  # buckets from the loaded dataset (else the resolution alone)
    problems: bool = False  # the form has settings to fix


def panel_settings(made) -> PanelSettings | None:
    """The settings of the run a request.Preview stands for, with its dataset's buckets when the
    preview has a plan."""
    from ...lora.anatomy import config_folder

    config, family, problems = made.config, made.family, made.problems
    if config is None:
        return None
    name = family.name if family is not None else "sd1"
    # A value with a problem was left out of the config (its default stands in): show nothing for it
    bad = {field for field, _ in problems}
    v = (family is not None and family.prediction == "v") or bool(config.v_parameterization)
    try:
        preset = None if "network_args" in bad else config.preset
    except InstantLoraError:
        preset = None
    try:
        w, h = config.resolution_wh()
        buckets = ((w, h),) if "resolution" not in bad else ()
    except InstantLoraError:
        buckets = ()
    try:
        alpha = None if "network_alpha" in bad else float(config.network_alpha)
    except (TypeError, ValueError):
        alpha = None
    rank = config.rank if "network_dim" not in bad and isinstance(config.rank, int) and 1 <= config.rank <= 1024 else None
    settings = PanelSettings(
        family=name, folder=config_folder(config.pretrained_model_name_or_path, name, config.model_config_dir),
        prediction="v" if v else "epsilon", rank=rank, alpha=alpha if alpha and alpha > 0 else None,
        preset=preset if preset in ("default", "attn-only") else None,
        train_text_encoder=not config.network_train_unet_only, buckets=buckets,
        max_token_length=config.max_token_length if "max_token_length" not in bad else None,
        min_snr_gamma=config.min_snr_gamma or None, noise_offset=config.noise_offset or None,
        prior_loss_weight=config.prior_loss_weight, problems=bool(problems))
    plan = made.plan
    if plan is None:
        return settings
    # the buckets the loaded dataset trains in, and whether regularization images take part
    return replace(settings, buckets=plan.buckets or ((plan.width, plan.height),), from_dataset=True,
                   with_reg=bool(plan.reg_per_epoch))


def form_anatomy(made):
    """(lora.anatomy.Anatomy, settings) of a request.Preview's run; (None, settings) when its rank
    or preset is not valid (the plan's problems say why)."""
    from ...lora.anatomy import lora_anatomy

    settings = panel_settings(made)
    if settings is None or settings.rank is None or settings.preset is None:
        return None, settings
    return lora_anatomy(settings.folder, settings.rank, settings.preset, settings.train_text_encoder,
                        alpha=settings.alpha), settings


# ---- the panel --------------------------------------------------------------------------------------

def anatomy_html(host, form, scan, lang=None) -> str:
    """The panel for a form (see `panel_html`)."""
    from ...request import preview
    from .run import run_request

    try:
        made = preview(run_request(form, host), host, scan)
    except InstantLoraError as e:
        return _root({}, [_note(t("Cannot show what will be trained: {why}", lang, why=e.message))])
    return panel_html(made, scan is not None, lang)


def panel_html(made, loaded: bool, lang=None) -> str:
    """The panel as HTML (root `.il-anatomy`, whose data attributes give the counts) for a
    request.Preview; `loaded`: a dataset is loaded."""
    from ...lora.anatomy import model_shapes

    try:
        anatomy, settings = form_anatomy(made)
        if settings is None:
            return _root({}, [_note(t("The settings cannot be read yet: fix the ones the plan lists.", lang))])
        shapes = model_shapes(settings.folder)
    except InstantLoraError as e:
        return _root({}, [_note(t("Cannot show what will be trained: {why}", lang, why=e.message))])
    except Exception as e:  # diffusers missing or a broken config folder: the rest of the page still works
        return _root({}, [_note(t("Cannot show what will be trained: {why}", lang, why=f"{type(e).__name__}: {e}"))])
    parts = []
    if not loaded:
        parts.append(_note(t("Load a dataset to see the latent shape of each of its buckets; shown here at the "
                             "training resolution.", lang)))
    if settings.problems:
        parts.append(_note(t("Some settings need fixing (the plan lists them): shown here is what the others allow.", lang)))
    parts.append(_facts(settings, shapes, lang))
    attrs = {"family": settings.family, "prediction": settings.prediction,
             "buckets": len(settings.buckets) if settings.from_dataset else 0}  # 0: no dataset loaded yet
    if anatomy is not None:
        attrs.update(rank=anatomy.rank, preset=anatomy.preset, text_encoder=int(anatomy.train_text_encoder),
                     modules=len(anatomy.rows), unet_modules=anatomy.unet_modules,
                     te_modules=anatomy.text_encoder_modules, trainable=anatomy.trainable, base=anatomy.base)
        parts += [_table(anatomy, settings, lang), _totals(anatomy, settings, lang)]
        if settings.alpha is not None:
            parts.append(_p(_scale_line(anatomy, lang)))
    return _root(attrs, parts)


def escape(text: str) -> str:
    """Text for a text node, quotes kept as they are: the page's translation on the way out looks
    each node up as written (ui.localized.translate_html)."""
    return _escape(text, quote=False)


def _root(attrs: dict, parts: list) -> str:
    data = "".join(f" data-{k.replace('_', '-')}='{_escape(str(v))}'" for k, v in attrs.items())
    return f"<div class='il-anatomy'{data} style='color:inherit;line-height:1.5'>{''.join(parts)}</div>"


def _p(text: str) -> str:
    return f"<p style='margin:.35em 0'>{escape(text)}</p>"


def _note(text: str) -> str:
    return f"<p class='il-anatomy-note' style='margin:.35em 0;opacity:.8;font-style:italic'>{escape(text)}</p>"


def _shape(dims) -> str:
    return "×".join(str(d) for d in dims)


# ---- what the run computes ---------------------------------------------------------------------------

def _facts(s: PanelSettings, shapes, lang) -> str:
    """One line each: latents, text, timesteps, loss. Each sentence sits in its own element, so a
    page translated on its way out (ui.localized.translate_html) finds every one whole."""
    lines = [[_latent_line(s, shapes, lang)], text_parts(s.family, shapes, s.max_token_length, lang),
             [timestep_line(lang)], loss_parts(s, lang)]
    items = "".join("<li>" + "; ".join(f"<span>{escape(part)}</span>" for part in parts) + "</li>"
                    for parts in lines if any(parts))
    return f"<ul class='il-anatomy-facts' style='margin:.35em 0;padding-left:1.2em'>{items}</ul>"


def latent_shapes(buckets, shapes) -> list[str]:
    """'512×512 → 4×64×64' per bucket (image width × height px → latent channels × height × width)."""
    return [f"{w}×{h} → {_shape(shapes.latent_shape(w, h))}" for w, h in buckets]


def _latent_line(s: PanelSettings, shapes, lang) -> str:
    if not s.buckets:
        return ""
    shown = latent_shapes(s.buckets[:_MAX_BUCKETS_SHOWN], shapes)
    if len(s.buckets) > _MAX_BUCKETS_SHOWN:
        shown.append(t("{count} more buckets", lang, count=len(s.buckets) - _MAX_BUCKETS_SHOWN))
    if s.from_dataset and len(s.buckets) > 1:
        return t("latents per bucket (image W×H px → channels×height×width, {factor}× smaller in the VAE): {shapes}",
                 lang, factor=shapes.downscale, shapes="; ".join(shown))
    return t("latent (image W×H px → channels×height×width, {factor}× smaller in the VAE): {shapes}",
             lang, factor=shapes.downscale, shapes="; ".join(shown))


def text_parts(family: str, shapes, max_token_length, lang) -> list[str]:
    """The text features the UNet attends to: tokens × features, per encoder for SDXL."""
    from ...model_family import ModelFamily
    from ...text_windows import MAX_WINDOWS

    windows = MAX_WINDOWS.get(max_token_length, 1)
    tokens = shapes.window_tokens * windows
    names = ModelFamily(family).text_encoders
    widths = shapes.encoder_widths
    if len(widths) > 1:
        line = t("text: two encoders side by side, {tokens}×({width1} + {width2}) = {tokens}×{width} "
                 "(tokens × features) from {encoder1} and {encoder2}, plus the second's pooled {pooled} vector "
                 "and {ids} size/crop numbers", lang, tokens=tokens, width1=widths[0], width2=widths[1],
                 width=shapes.text_width, encoder1=names[0], encoder2=names[-1], pooled=shapes.pooled or widths[-1],
                 ids=shapes.size_ids or 6)
    else:
        line = t("text: {tokens}×{width} (tokens × features) from {encoder}", lang, tokens=tokens,
                 width=shapes.text_width, encoder=names[0])
    if windows == 1:
        return [line]
    return [line, t("captions up to {limit} tokens are read in {windows} windows of {chunk} tokens "
                    "(+ start and end) = {tokens} tokens", lang, limit=max_token_length, windows=windows,
                    chunk=shapes.window_tokens - 2, tokens=tokens)]


def timestep_line(lang) -> str:
    from ...lora.anatomy import TRAIN_TIMESTEPS

    return t("timesteps: one per image per step, drawn uniformly from 0–{last} of the {steps} DDPM noise levels",
             lang, last=TRAIN_TIMESTEPS - 1, steps=TRAIN_TIMESTEPS)


def loss_parts(s: PanelSettings, lang) -> list[str]:
    """The objective as train/objective.py computes it: the loss, then each weighting the run adds."""
    if s.prediction == "v":
        parts = [t("loss: mean squared error between the UNet's prediction and the velocity "
                   "(v-prediction: v = α·noise − σ·latent)", lang)]
    else:
        parts = [t("loss: mean squared error between the UNet's prediction and the noise that was added", lang)]
    if s.min_snr_gamma:
        if s.prediction == "v":
            parts.append(t("Min-SNR weighting, γ = {gamma:g}: each image's loss × min(SNR, γ)/(SNR + 1)",
                           lang, gamma=s.min_snr_gamma))
        else:
            parts.append(t("Min-SNR weighting, γ = {gamma:g}: each image's loss × min(SNR, γ)/SNR",
                           lang, gamma=s.min_snr_gamma))
    if s.noise_offset:
        parts.append(t("noise offset {offset:g}: a constant per image and channel added to the noise "
                       "(lets the LoRA learn very dark or bright images)", lang, offset=s.noise_offset))
    if s.with_reg:
        parts.append(t("regularization images weighted {weight:g}", lang, weight=s.prior_loss_weight))
    return parts


# ---- what the run tunes ------------------------------------------------------------------------------

def _part_label(part: str, lang) -> str:
    if part == "down":
        return t("down", lang)
    if part == "mid":
        return t("middle", lang)
    if part == "up":
        return t("up", lang)
    if part == "text encoder":
        return t("text encoder", lang)
    return part


def _kind_label(kind: str, lang) -> str:
    return t("1×1 conv", lang) if kind == "conv1x1" else t("linear", lang)


def role_groups(rows) -> list[tuple]:
    """[(first row, count)] of a block's rows, the same role and shapes counted once, in model order."""
    groups: dict = {}
    for row in rows:
        key = (row.role, row.kind, row.out_features, row.in_features)
        first, count = groups.get(key, (row, 0))
        groups[key] = (first, count + 1)
    return list(groups.values())


def _table(anatomy, s: PanelSettings, lang) -> str:
    head = "".join(f"<th{align}>{escape(text)}</th>" for text, align in (
        (t("block", lang), ""), (t("part", lang), ""), (t("modules", lang), " align='right'"),
        (t("LoRA parameters", lang), " align='right'"), (t("modules, layer shapes, A and B", lang), "")))
    body = []
    for block, rows in anatomy.blocks():
        params = sum(r.params for r in rows)
        body.append(f"<tr data-block='{_escape(block)}' data-modules='{len(rows)}' data-params='{params}' style='{_RULE}'>"
                    f"<td style='{_MONO}'>{escape(block)}</td><td>{escape(_part_label(rows[0].part, lang))}</td>"
                    f"<td align='right'>{len(rows)}</td><td align='right'>{params:,}</td>"
                    f"<td>{_block_details(rows, lang)}</td></tr>")
    if not anatomy.text_encoder_modules:
        title = t("{modules} adapted modules, all in the UNet, at rank {rank}, preset {preset}", lang,
                  modules=len(anatomy.rows), rank=anatomy.rank, preset=anatomy.preset)
    elif s.family == "sdxl":
        title = t("{modules} adapted modules ({unet} in the UNet, {te} in the two text encoders) at rank {rank}, "
                  "preset {preset}", lang, modules=len(anatomy.rows), unet=anatomy.unet_modules,
                  te=anatomy.text_encoder_modules, rank=anatomy.rank, preset=anatomy.preset)
    else:
        title = t("{modules} adapted modules ({unet} in the UNet, {te} in the text encoder) at rank {rank}, "
                  "preset {preset}", lang, modules=len(anatomy.rows), unet=anatomy.unet_modules,
                  te=anatomy.text_encoder_modules, rank=anatomy.rank, preset=anatomy.preset)
    frozen = ""
    if not anatomy.train_text_encoder:
        frozen = _note(t("The text encoders are not trained: they stay frozen and only the UNet gets LoRA modules.", lang)
                       if s.family == "sdxl" else
                       t("The text encoder is not trained: it stays frozen and only the UNet gets LoRA modules.", lang))
    return (_p(title) + frozen
            + f"<table class='il-anatomy-blocks' cellpadding='3' style='{_TABLE};width:100%'>"
            + f"<thead><tr style='{_RULE}'>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")


def _block_details(rows, lang) -> str:
    head = "".join(f"<th{align}>{escape(text)}</th>" for text, align in (
        (t("role", lang), ""), (t("kind", lang), ""), (t("layer weight", lang), ""), (t("A (down)", lang), ""),
        (t("B (up)", lang), ""), (t("parameters each", lang), " align='right'"), ("", "")))
    body = "".join(
        f"<tr data-role='{_escape(r.role)}' style='{_RULE}'><td>{escape(r.role)}</td>"
        f"<td>{escape(_kind_label(r.kind, lang))}</td><td>{_shape(r.weight_shape)}</td>"
        f"<td>{_shape(r.down_shape)}</td><td>{_shape(r.up_shape)}</td>"
        f"<td align='right'>{r.params:,}</td><td align='right'>×{count}</td></tr>"
        for r, count in role_groups(rows))
    summary = t("{count} modules in this block", lang, count=len(rows))
    return (f"<details><summary style='cursor:pointer'>{escape(summary)}</summary>"
            f"<table cellpadding='2' style='{_TABLE};{_MONO};margin:.25em 0'><thead><tr style='{_RULE}'>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table></details>")


def _totals(anatomy, s: PanelSettings, lang) -> str:
    model = t("UNet + 2 text encoders", lang) if s.family == "sdxl" else t("UNet + text encoder", lang)
    return _p(t("trainable: {trainable:,} parameters ({millions:.2f} M) = {share:.2f}% of the model's {base:.0f} M ({model})",
                lang, trainable=anatomy.trainable, millions=anatomy.trainable / 1e6, share=100 * anatomy.share,
                base=anatomy.base / 1e6, model=model))


def _scale_line(anatomy, lang) -> str:
    return t("scale alpha/rank = {alpha:g}/{rank} = {scale:.3g}: each adapted layer outputs W·x + {scale:.3g}·B·A·x, "
             "so a smaller scale means smaller steps for the same learning rate. B starts at zero: step 0 is "
             "exactly the base model.", lang, alpha=anatomy.alpha, rank=anatomy.rank, scale=anatomy.scale)
