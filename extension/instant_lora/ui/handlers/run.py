"""Model & LoRA and Train: the form -> one RunRequest -> `request.prepare_run` -> the job, and the
live plan from `request.preview`. The UI computes no steps, epochs or saves of its own: the
plan is the one source, so the form says what the run does."""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import InstantLoraError
from ...i18n import t
from ...request import RunRequest, prepare_run, preview
from ..fields import FORM_ONLY_DEFAULTS, shown_value, starting_values, user_values
from . import error_message, problems_message

# A preset that does not name them leaves them as typed; a saved preset holds no folder of this machine.
PER_RUN_FIELDS = ("output_name", "trigger_words", "reg_data_dir")
NOT_IN_PRESETS = ("reg_data_dir",)


@dataclass(frozen=True)
class RunForm:
    """What a run is made of on the page, as the components hold it."""

    fields: dict = field(default_factory=dict)  # form field -> the component's value
    dataset_dir: str = ""
    checkpoint: str | None = None  # a label of the host's checkpoint list
    preset: str | None = None
    overwrite: bool = False
    sample_text: str = ""
    sample_every: float | int | None = 0
    gpus: list = field(default_factory=list)  # labels of host.gpu_choices(); several = one process each


def presets_dir(host) -> Path:
    return Path(host.data_dir) / "presets"


def preset_values(name: str | None, host) -> dict:
    """The preset's values, or {} (an unknown or broken preset is reported by the request)."""
    from ...presets import list_presets, load_preset

    presets = list_presets(presets_dir(host)) if name else {}
    if name not in presets:
        return {}
    try:
        return load_preset(presets[name])[0]
    except InstantLoraError:
        return {}


def _sample_values(form: RunForm, host) -> dict:
    """The sample prompts and their schedule, when they differ from what the host puts under a
    request (the WebUI's Settings, which its tab shows in these boxes)."""
    text = (form.sample_text or "").strip()
    try:
        every = int(float(form.sample_every or 0))
    except (TypeError, ValueError):
        every = 0
    every = every if every > 0 else None
    defaults = host.request_defaults() if host is not None else {}
    if (text, every) == ((defaults.get("sample_prompt_text") or "").strip(), defaults.get("sample_every_n_steps")):
        return {}
    return {"sample_prompt_text": text, "sample_every_n_steps": every}


def run_request(form: RunForm, host) -> RunRequest:
    """The request the form stands for: only what the user set, the preset by name, the checkpoint
    by its label; sample prompts as text."""
    values = user_values(form.fields, preset_values(form.preset, host))
    folder = (form.dataset_dir or "").strip()
    if folder:
        values["train_data_dir"] = folder
    values.update(_sample_values(form, host))
    return RunRequest(front="app", values=values, preset=form.preset or None, checkpoint=form.checkpoint or None,
                      overwrite=bool(form.overwrite), processes=max(1, len(form.gpus)))


NOT_STARTED = "Training did not start"


def not_started(e: Exception) -> str:
    """Why Start did nothing, said first: the run did not start, then what to fix."""
    from ...request import RequestError

    if isinstance(e, RequestError):
        return problems_message(e.problems, e.hint, title=f"{NOT_STARTED}. Fix these settings:")
    if isinstance(e, InstantLoraError):
        return f"**{NOT_STARTED}:** {e.message}" + (f"\n\n{e.hint}" if e.hint else "")
    return f"**{NOT_STARTED}:** unexpected error {type(e).__name__}: {e}"


def start_training(job, host, form: RunForm) -> str:
    """Validate, scan, plan and start; a message for the Train section either way. A start that
    fails says so first ("Training did not start") and then why."""
    snap = job.snapshot()
    if snap.running:
        return (f"**{NOT_STARTED}:** a training is already running ('{snap.name}' at step {snap.step}/{snap.total}). "
                "Wait for it to finish or cancel it first.")
    try:
        prepared = prepare_run(run_request(form, host), host)
        busy = _gpu_owner()
        devices = _devices(form, host)
        job.start(prepared, host=host, **({"devices": devices} if devices else {}))
    except InstantLoraError as e:
        return not_started(e)
    except Exception as e:  # a bug: named here, with its traceback in the console
        traceback.print_exc(file=sys.stderr)
        return not_started(e)
    plan = prepared.plan
    estimate = _estimate(plan)
    return (f"Started **{prepared.name}**: {plan.max_train_steps} steps, {plan.num_epochs} epoch(s); "
            f"{len(plan.saves)} file(s) to `{plan.output_dir}`"
            + (f"; {estimate.short()}" if estimate else "") + "."
            + (f" It waits for the GPU first: {busy} is using it." if busy else ""))


def _devices(form: RunForm, host) -> list[int] | None:
    """CUDA indices of the GPUs chosen, when several (one process each); None: this process."""
    if len(form.gpus) < 2:
        return None
    from ...train.launch import gpu_index

    known = set(host.gpu_choices())
    unknown = [g for g in form.gpus if g not in known]
    if unknown:
        raise InstantLoraError(f"GPU '{unknown[0]}' is not one of this machine's", hint="pick GPUs from the list")
    return [gpu_index(g) for g in form.gpus]


def _gpu_owner() -> str | None:
    from ...host import gpu

    return gpu.owner()


def _estimate(plan):
    from ...train.estimate import run_estimate

    return run_estimate(plan)


def cancel_training(job) -> str:
    if job.cancel():
        return "Cancelling: stopping at the next step (or stage) and saving what was learned."
    return "Nothing is running."


# ---- the live plan --------------------------------------------------------------------------------

def live_plan(host, form: RunForm, scan) -> str:
    """The plan the form would run, as markdown (see `plan_markdown`)."""
    try:
        made = preview(run_request(form, host), host, scan)
    except InstantLoraError as e:
        return error_message(e)
    return plan_markdown(host, form, made, scan is not None)


def plan_and_panel(host, form: RunForm, scan, lang=None) -> tuple[str, str]:
    """(the live plan, the "What will be trained" panel) from one preview of the form: the request
    is layered, the checkpoint's header read and the dataset planned once for both."""
    from .anatomy import panel_html

    try:
        made = preview(run_request(form, host), host, scan)
    except InstantLoraError as e:
        return error_message(e), ""
    return plan_markdown(host, form, made, scan is not None), panel_html(made, scan is not None, lang)


def plan_markdown(host, form: RunForm, made, loaded: bool) -> str:
    """A request.Preview as markdown: the preset (and whether the form changed it), steps, epochs,
    saves, samples, about how long, where the file goes, the trainable parameters, what to fix."""
    from ...train.plan import describe

    lines: list[str] = [preset_status(form, host)]
    plan, problems = made.plan, made.problems
    if plan is not None:
        # a preview draws no seed: "a random seed" unless the form sets one
        lines += describe(plan, estimate=_estimate(plan), markdown=True)
        lines.append(t("writes `{path}`", path=plan.final_path()))
        lines += [t("note: {warning}", warning=warning) for warning in plan.warnings]
        if (form.sample_text or "").strip() and not plan.sample_steps:
            lines.append("sample prompts are set, but Sample every N steps is 0: no samples")
    elif not loaded:
        lines.append("Load a dataset to see the steps, epochs, saves and about how long it takes.")
    lines.append(parameters_line(made))
    if problems:
        lines.append(problems_message(problems, title=t("fix:")))
    return "\n\n".join(line for line in lines if line)


def changed_fields(form: RunForm, host) -> list[str]:
    """The form fields whose value differs from where the preset (or, with none, the app's
    defaults) starts them; the per-run fields (output name, trigger words) are not counted."""
    changed = user_values(form.fields, preset_values(form.preset, host))
    return [name for name in form.fields if name in changed and name not in PER_RUN_FIELDS]


def preset_status(form: RunForm, host) -> str:
    """'preset: **Balanced**', 'preset: **Balanced (modified)**; changed: Rank, Epochs', or
    'no preset: the app's defaults' (with what changed)."""
    from ..fields import label_for

    changed = changed_fields(form, host)
    shown = ", ".join(label_for(n) for n in changed[:6]) + (", ..." if len(changed) > 6 else "")
    if form.preset and form.preset in preset_choices(host):
        if not changed:
            return f"preset: **{form.preset}**"
        return f"preset: **{form.preset} (modified)**; changed: {shown}"
    return "no preset: the app's defaults" + (f"; changed: {shown}" if changed else "")


def effective_values(form: RunForm, host) -> dict:
    """Every form field as the run would get it from the defaults, the preset and the user."""
    preset = preset_values(form.preset, host)
    return {**starting_values(preset), **user_values(form.fields, preset)}


def parameters_line(made) -> str:
    """The trainable parameters against the base model, counted as the "What will be trained"
    panel counts them (lora.anatomy, on the model the run would load)."""
    from .anatomy import form_anatomy

    try:
        anatomy, settings = form_anatomy(made)
    except InstantLoraError:
        return ""  # the problems say why
    except Exception as e:  # diffusers missing or broken: the rest of the plan still shows
        return f"trainable parameters: unknown ({error_message(e)})"
    if anatomy is None or settings.alpha is None:
        return ""  # the problems say why
    encoders = "UNet + 2 text encoders" if settings.family == "sdxl" else "UNet + text encoder"
    return (f"trainable: **{anatomy.trainable / 1e6:.2f} M** parameters = {100 * anatomy.share:.2f}% of "
            f"{FAMILY_BASE[settings.family]}'s {anatomy.base / 1e6:.0f} M ({encoders}); "
            f"LoRA scale alpha/rank = {anatomy.scale:.3g}")


FAMILY_BASE = {"sd1": "SD1.5", "sd2": "SD2.x", "sdxl": "SDXL"}


def lora_parameter_count(rank: int, preset: str, train_text_encoder: bool, family: str = "sd1") -> tuple[int, int]:
    """(trainable, base) parameters at this rank for the family's real architecture (SD1.5, SD2.x or
    SDXL's bundled config), counted without loading or allocating weights (lora.anatomy)."""
    from ...lora.anatomy import lora_anatomy
    from ...models import BUNDLED_CONFIGS

    family = family if family in FAMILY_BASE else "sd1"
    anatomy = lora_anatomy(BUNDLED_CONFIGS[family], rank, str(preset), train_text_encoder)
    return anatomy.trainable, anatomy.base


# ---- presets and checkpoints --------------------------------------------------------------------------

def preset_choices(host) -> list[str]:
    from ...presets import list_presets

    return list(list_presets(presets_dir(host)))


def preset_form(name: str | None, host) -> tuple[dict, str]:
    """({field: value to show}, message) for picking a preset: every field at where the preset
    starts it; the output name and trigger words stay as typed unless the preset sets them.
    ({}, "") when no preset is picked."""
    from ...presets import list_presets, load_preset

    presets = list_presets(presets_dir(host))
    if not name or name not in presets:
        return {}, ""
    from ...presets import BUILTIN_DIR

    values, description = load_preset(presets[name])  # InstantLoraError names the broken file
    start = starting_values(values)
    shown = {n: shown_value(n, v) for n, v in start.items() if n not in PER_RUN_FIELDS or n in values}
    own = "" if presets[name].parent == BUILTIN_DIR else f" (your own: `{presets[name]}`)"
    return shown, f"Preset **{name}**{own}" + (f": {description}" if description else "")


def save_form_preset(name: str, form: RunForm, host) -> tuple[str, str]:
    """Save what the form would run as a user preset: (its name, message)."""
    from ...presets import save_preset

    values = effective_values(form, host)
    for key in (*FORM_ONLY_DEFAULTS, *NOT_IN_PRESETS):
        values.pop(key, None)
    path = save_preset((name or "").strip(), values, presets_dir(host))
    return path.stem, f"saved preset {path.name}"


def checkpoint_choices(host, current: str | None) -> tuple[list[str], str | None]:
    """(the host's checkpoint labels, the one to select: the current one if still listed)."""
    choices = host.list_checkpoints()
    return choices, current if current in choices else host.default_checkpoint()

