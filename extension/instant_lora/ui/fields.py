"""The form's settings: which config fields it shows, what they start at, and which of them the
user set. No Gradio here.

The form starts at what a request with no values gets (`request.APP_DEFAULTS`, the same for the
app and REST) and, once a preset is picked, at what that preset gives. A field the user left at
that starting value is not sent: the request layers the defaults and the preset itself, so the
form and REST can never drift apart. A field the user changed is sent as the user's value:

- a cleared or 0 optional number turns that option off (None): Epochs cleared = train for
  max_train_steps, Min-SNR gamma 0 = off; a seed below 0 = random;
- a cleared Rank is "not set": None would mean the reference trainer's rank 4, so nothing is sent
  and the defaults and the preset apply;
- a cleared required number (Batch size, ...) is not sent either.
"""

from __future__ import annotations

from ..config import FIELDS, OPTIMIZERS, TrainConfig, field_type
from ..request import APP_DEFAULTS

# Fields the form shows, in order: (field, label). Help text comes from the config's metadata.
BASIC_FIELDS = [
    ("output_name", "Output name"), ("trigger_words", "Trigger words"), ("network_dim", "Rank"), ("network_alpha", "Alpha"),
    ("network_train_unet_only", "UNet only (freeze the text encoder)"), ("learning_rate", "Learning rate"),
    ("max_train_epochs", "Epochs"), ("train_batch_size", "Batch size"), ("resolution", "Resolution"),
]
ADVANCED_FIELDS = [
    ("unet_lr", "UNet learning rate"), ("text_encoder_lr", "Text encoder learning rate"), ("optimizer_type", "Optimizer"),
    ("lr_scheduler", "LR schedule"), ("lr_warmup_steps", "Warm-up steps"), ("min_snr_gamma", "Min-SNR gamma"),
    ("noise_offset", "Noise offset"), ("clip_skip", "CLIP skip"), ("mixed_precision", "Mixed precision"),
    ("gradient_checkpointing", "Gradient checkpointing"), ("cache_latents", "Cache latents"),
    ("cache_latents_to_disk", "Cache latents to disk"), ("seed", "Seed"), ("save_every_n_epochs", "Save every N epochs"),
    ("save_every_n_steps", "Save every N steps"), ("save_precision", "Save precision"), ("network_args", "Network args"),
    ("caption_extension", "Caption extension"), ("max_grad_norm", "Max grad norm"),
    ("gradient_accumulation_steps", "Gradient accumulation"), ("save_state", "Save resumable state"),
    ("max_train_steps", "Steps (when Epochs is empty)"),
]
# Section 1's fields: the regularization folder beside the dataset folder, then "Dataset options"
# in groups (buckets, captions, augmentation, validation).
REG_FIELDS = [("reg_data_dir", "Regularization folder"), ("prior_loss_weight", "Prior loss weight")]
DATASET_GROUPS = [
    ("Aspect-ratio buckets", [("enable_bucket", "Aspect-ratio buckets"), ("bucket_no_upscale", "Don't upscale small images"),
                              ("min_bucket_reso", "Min bucket size"), ("max_bucket_reso", "Max bucket size")]),
    ("Captions", [("shuffle_caption", "Shuffle tags"), ("keep_tokens", "Keep first N tags"),
                  ("max_token_length", "Max caption length"), ("caption_dropout_rate", "Caption dropout"),
                  ("caption_tag_dropout_rate", "Tag dropout")]),
    ("Augmentation", [("flip_aug", "Flip images"), ("random_crop", "Random crop")]),
    ("Validation", [("validation_split", "Validation split"), ("validate_every_n_steps", "Validate every N steps")]),
]
DATASET_FIELDS = REG_FIELDS + [pair for _, group in DATASET_GROUPS for pair in group]
BUCKET_FIELDS = ("resolution", "enable_bucket", "bucket_no_upscale", "min_bucket_reso", "max_bucket_reso")  # the dataset view's buckets
FORM_FIELDS = [name for name, _ in BASIC_FIELDS + ADVANCED_FIELDS + DATASET_FIELDS]
# Labels of what the request names that is not a form field (for messages that list problems).
OTHER_LABELS = {
    "train_data_dir": "Dataset folder", "checkpoint": "Base model", "pretrained_model_name_or_path": "Base model",
    "preset": "Preset", "sample_prompts": "Sample prompts", "sample_prompt_text": "Sample prompts",
    "sample_every_n_steps": "Sample every N steps",
}
LABELS = {**dict(BASIC_FIELDS + ADVANCED_FIELDS + DATASET_FIELDS), **OTHER_LABELS}
FORM_ONLY_DEFAULTS = {"output_name": "my_lora"}  # pre-filled in the form; a request must name its LoRA
CHOICES = {"optimizer_type": list(OPTIMIZERS), "max_token_length": ["75", "150", "225"]}
NONE_CHOICE = "(none)"  # a dropdown's entry for "not set"
# Dropdowns whose "not set" has a value of its own: shown as it, and read back as not set.
NONE_SHOWN_AS = {"max_token_length": "75"}
NOT_SET_WHEN_EMPTY = {"network_dim"}  # optional numbers whose None is a reference default, not "off"


class _Unset:
    def __repr__(self):
        return "UNSET"


UNSET = _Unset()  # "the user did not set this field"


# What an empty (or 0, or -1) box means in the form, said next to the field: the config's help is
# the command line's, where leaving a flag out is how "not set" is written.
FORM_NOTES = {
    "network_dim": f"Empty = the preset's rank, else {APP_DEFAULTS['network_dim']}.",
    "unet_lr": "0 or empty = use Learning rate.",
    "text_encoder_lr": "0 or empty = use Learning rate.",
    "max_train_epochs": "0 or empty = train for Steps instead.",
    "max_train_steps": "Used only when Epochs is 0 or empty.",
    "lr_warmup_steps": "0 = no warm-up.",
    "min_snr_gamma": "0 or empty = off.",
    "noise_offset": "0 or empty = off.",
    "clip_skip": "0 or empty = 1 (the last layer).",
    "seed": "-1 or empty = a new random seed each run (the log and the file's metadata record it).",
    "save_every_n_epochs": "0 or empty = no saves by epoch.",
    "save_every_n_steps": "0 or empty = no saves by step.",
    "network_args": "Empty = the default modules.",
    "gradient_accumulation_steps": "1 = none.",
    "reg_data_dir": "Empty = none; a folder on this machine, like Dataset folder.",
    "prior_loss_weight": "Used only with a Regularization folder.",
    "enable_bucket": "Off = every image is resized to cover the resolution and centre-cropped.",
    "min_bucket_reso": "Used only with Aspect-ratio buckets.",
    "max_bucket_reso": "Used only with Aspect-ratio buckets.",
    "bucket_no_upscale": "Used only with Aspect-ratio buckets.",
    "shuffle_caption": "The app keeps the trigger words first by itself.",
    "keep_tokens": "0 = only the trigger words, which the app keeps first by itself when shuffling.",
    "caption_dropout_rate": "0 = off; 0.05-0.1 is usual.",
    "caption_tag_dropout_rate": "0 = off.",
    "random_crop": "Cache latents (under Advanced) is on by default and cannot go with it: turn off Cache latents to use it.",
    "validation_split": ("The chart then draws the validation loss beside the training loss: this is how you see "
                         "overfitting (validation loss rising while training loss falls)."),
    "validate_every_n_steps": "0 or empty = once per epoch; needs a Validation split.",
}


def help_for(name: str) -> str:
    """The field's one-line help (the config's), plus what an empty box means in the form."""
    note = FORM_NOTES.get(name)
    return FIELDS[name].metadata["help"] + (f" {note}" if note else "")


def choices_for(name: str):
    return CHOICES.get(name) or FIELDS[name].metadata["choices"]


def label_for(name: str) -> str:
    return LABELS.get(name, name)


def starting_values(preset_values: dict | None = None) -> dict:
    """What each form field is when the user has not touched it: the config's own value, under
    the app's defaults, under the preset's values. Only for display and for telling what the
    user changed; never sent."""
    base = TrainConfig().to_dict()
    base.update(APP_DEFAULTS)
    base.update({k: v for k, v in (preset_values or {}).items() if k in base})
    return {name: base[name] for name in FORM_FIELDS}


def initial_values() -> dict:
    """The form as a new page shows it."""
    return {**starting_values(), **FORM_ONLY_DEFAULTS}


def shown_value(name: str, value):
    """A config value as its component shows it: None as "(none)" in a dropdown, 0 in a number,
    a list as space-separated text."""
    kind = field_type(name)
    if kind is list:
        return " ".join(str(v) for v in value or [])
    if name in NONE_SHOWN_AS:
        return NONE_SHOWN_AS[name] if value is None else str(value)
    if value is None:
        if choices_for(name):
            return NONE_CHOICE
        if name == "seed":
            return -1
        return 0 if kind in (int, float) else ""
    return value


def read_value(name: str, shown):
    """A component's value as the config value it stands for, or UNSET when it stands for none.
    No range checks: the request checks every value and names the field."""
    kind = field_type(name)
    optional = FIELDS[name].default is None
    if name in NONE_SHOWN_AS and (shown is None or str(shown).strip() in (NONE_SHOWN_AS[name], NONE_CHOICE, "")):
        return None
    if kind is list:
        return [v for v in str(shown or "").replace(",", " ").split() if v]
    if kind is bool:
        return bool(shown)
    if kind in (int, float):
        if isinstance(shown, str):
            shown = shown.strip()
            try:
                shown = float(shown) if shown else None
            except ValueError:
                return shown  # sent as it is: the request says it must be a number
        if name == "seed":  # 0 is a seed like any other; -1 is random, as in the WebUI
            empty = shown is None or shown < 0
        else:
            empty = shown is None or (optional and shown == 0)
        if empty:
            return UNSET if (not optional or name in NOT_SET_WHEN_EMPTY) else None
        if kind is int and float(shown).is_integer():
            return int(shown)
        return float(shown) if kind is float else shown
    if shown == NONE_CHOICE and choices_for(name):
        return None
    text = "" if shown is None else str(shown).strip()
    if not text and optional:
        return None
    return text


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b


def user_values(form: dict, preset_values: dict | None = None) -> dict:
    """{field: value} for the fields the user set: those whose value differs from where the form
    started (the defaults and the preset). What the user left alone is not sent."""
    start = starting_values(preset_values)
    out = {}
    for name, shown in form.items():
        if name not in start:
            continue
        value = read_value(name, shown)
        if value is UNSET or _same(value, start[name]):
            continue
        out[name] = value
    return out
