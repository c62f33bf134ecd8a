"""Untrusted values (a JSON body, form values, TOML, flags) into TrainConfig fields, strictly.

Every value is checked for its type (a JSON `"false"` is not a boolean, `"1e-4"` is not a
number), for being finite, and for a sane range, so a request can never start a run with NaN,
10^30 steps or a seed that overflows. Problems come back as (field, message) pairs, all at once.
No torch here: a bad value costs a fraction of a second.
"""

from __future__ import annotations

import math

from .config import FIELDS, field_type

# (lowest, highest) allowed; None = unbounded on that side. Optional numbers may also be None.
# Chosen wide enough for every real run and narrow enough that nothing overflows downstream.
LIMITS = {
    "network_dim": (1, 1024),
    "network_alpha": (1e-6, 65536),
    "network_dropout": (0.0, 0.99),
    "learning_rate": (0.0, 10.0), "unet_lr": (0.0, 10.0), "text_encoder_lr": (0.0, 10.0), "text_encoder_lr2": (0.0, 10.0),
    "lr_warmup_steps": (0, 10_000_000),
    "lr_scheduler_num_cycles": (1, 10_000),
    "lr_scheduler_power": (1e-6, 100.0),
    "max_train_steps": (1, 10_000_000),
    "max_train_epochs": (1, 1_000_000),
    "train_batch_size": (1, 1024),
    "gradient_accumulation_steps": (1, 1024),
    "max_grad_norm": (0.0, 1e6),
    "min_snr_gamma": (0.0, 1000.0),
    "noise_offset": (0.0, 1.0),
    "seed": (0, 2**32 - 1),  # the WebUI's seed range; -1 (random) is read as "not set"
    "clip_skip": (1, 12), "ddp_timeout": (1, 10080),
    "save_every_n_epochs": (1, 1_000_000),
    "save_every_n_steps": (1, 10_000_000),
    "sample_every_n_steps": (1, 10_000_000),
    "sample_every_n_epochs": (1, 1_000_000),
    "max_data_loader_n_workers": (0, 256),
    "config_version": (1, 1000),
    "min_bucket_reso": (64, 4096), "max_bucket_reso": (64, 4096), "bucket_reso_steps": (8, 1024),
    "prior_loss_weight": (0.0, 100.0),
    "keep_tokens": (0, 255),
    "caption_dropout_rate": (0.0, 1.0), "caption_dropout_every_n_epochs": (0, 1_000_000), "caption_tag_dropout_rate": (0.0, 1.0),
    "max_token_length": (75, 225),
    "validation_split": (0.0, 0.9), "validation_seed": (0, 2**32 - 1),
    "validate_every_n_steps": (1, 10_000_000), "validate_every_n_epochs": (1, 1_000_000),
}
# What to pick, said after an out-of-range value of these fields.
ADVICE = {"network_dim": "16-32 suits most subjects", "network_alpha": "often the rank or half of it",
          "clip_skip": "SD1.x's text encoder has 12 layers; use 1, or 2 for anime-style models",
          "learning_rate": "1e-4 suits most LoRAs", "seed": "-1 draws a random one"}
MAX_TEXT = 4096  # characters in one text field (sample prompts: MAX_PROMPT_TEXT)
MAX_PROMPT_TEXT = 64 * 1024
MAX_LIST_ITEMS = 64


def _fmt(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def coerce_value(name: str, value):
    """(value in the field's type, None) or (None, message). Strict: no string-to-number or
    string-to-boolean guessing; a whole float (2.0) is accepted for an integer field."""
    kind = field_type(name)
    optional = FIELDS[name].default is None
    if value is None:
        return (None, None) if optional else (None, "must be set")
    if kind is bool:
        return (value, None) if isinstance(value, bool) else (None, f"must be true or false (got {type(value).__name__} {value!r:.40})")
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None, f"must be a number (got {type(value).__name__} {value!r:.40})"
        if isinstance(value, float) and not math.isfinite(value):
            return None, f"must be a finite number (got {value})"
        if name == "seed" and value == -1:
            return None, None  # -1 = random, as in the WebUI
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                return None, f"must be a whole number (got {value:g})"
            value = int(value)
        else:
            value = float(value)
        low, high = LIMITS.get(name, (None, None))
        if (low is not None and value < low) or (high is not None and value > high):
            advice = f" ({ADVICE[name]})" if name in ADVICE else ""
            return None, (f"= {_fmt(value) if abs(value) < 1e15 else f'{value:.3g}'} is out of range: "
                          f"allowed {_fmt(low)} to {_fmt(high)}{advice}")
        return value, None
    if kind is list:
        items = value if isinstance(value, (list, tuple)) else str(value).split() if isinstance(value, str) else None
        if items is None or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in items):
            return None, "must be a list of key=value texts"
        if len(items) > MAX_LIST_ITEMS or any(len(str(v)) > MAX_TEXT for v in items):
            return None, f"is too long (at most {MAX_LIST_ITEMS} items of {MAX_TEXT} characters)"
        return [str(v) for v in items], None
    if not isinstance(value, str):
        return None, f"must be text (got {type(value).__name__})"
    limit = MAX_PROMPT_TEXT if name == "sample_prompt_text" else MAX_TEXT
    if len(value) > limit:
        return None, f"is too long ({len(value)} characters; at most {limit})"
    if "\x00" in value:
        return None, "must not contain a NUL character"
    return value, None


def coerce_values(values: dict) -> tuple[dict, list[tuple[str, str]]]:
    """({field: value}, problems) for known fields; unknown keys are problems with a suggestion."""
    import difflib

    out, problems = {}, []
    for key, value in values.items():
        if not isinstance(key, str) or key not in FIELDS:
            close = difflib.get_close_matches(str(key), list(FIELDS), n=1, cutoff=0.6)
            problems.append((str(key), "is not a setting" + (f" (did you mean {close[0]}?)" if close else "")))
            continue
        v, problem = coerce_value(key, value)
        if problem:
            problems.append((key, problem))
        else:
            out[key] = v
    return out, problems
