"""The WebUI's extra-network prompt syntax: `<lora:name:w>` tags, split off before text encoding.

    <lora:name>                 weight 1 for both the text encoder and the UNet
    <lora:name:0.8>             0.8 for both
    <lora:name:0.5:1.2>         text encoder 0.5, UNet 1.2
    <lora:name:te=0.5:unet=1>   the same, by name (a named value wins over a positional one)

Any `<word:...>` is an extra-network tag and is removed from the text, as in the WebUI; tags other
than `lora` (or its old alias `lyco`) are reported in `ParsedPrompt.other`. A LoRA tag that the
WebUI would choke on or silently misread (no name, a weight that is not a number, no closing `>`)
raises InstantLoraError naming the tag, so a typo is seen instead of becoming prompt text.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from ..errors import InstantLoraError

LORA_KINDS = ("lora", "lyco")
# `<kind:body>`; the body may not contain `<` so that an unclosed tag cannot swallow the next one.
_TAG = re.compile(r"<(\w+):([^<>]*)>")
_UNCLOSED = re.compile(r"<(?:%s):" % "|".join(LORA_KINDS))
_HINT = "write LoRA tags as <lora:name:0.8> (or <lora:name:te_weight:unet_weight>)"


@dataclass(frozen=True)
class LoraTag:
    name: str
    te_weight: float = 1.0
    unet_weight: float = 1.0

    def as_tuple(self) -> tuple[str, float, float]:
        return self.name, self.te_weight, self.unet_weight

    @property
    def is_zero(self) -> bool:
        return self.te_weight == 0 and self.unet_weight == 0


@dataclass
class ParsedPrompt:
    text: str  # the prompt without its tags: what the text encoder sees
    loras: list[LoraTag] = field(default_factory=list)
    other: list[str] = field(default_factory=list)  # other extra-network tags, e.g. "<hypernet:x:1>"


def _number(value: str, tag: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise InstantLoraError(f"{tag}: '{value}' is not a number.", hint=_HINT) from None
    if not math.isfinite(x):
        raise InstantLoraError(f"{tag}: the weight must be a finite number, not '{value}'.", hint=_HINT)
    return x


def _parse_lora(body: str, tag: str) -> LoraTag:
    parts = body.split(":")
    name = parts[0].strip()
    if not name:
        raise InstantLoraError(f"{tag}: the LoRA name is missing.", hint=_HINT)
    positional, named = [], {}
    for part in parts[1:]:
        key, eq, value = part.partition("=")
        if eq:
            key = key.strip()
            if key not in ("te", "unet", "dyn"):
                raise InstantLoraError(f"{tag}: unknown setting '{key}' (te=, unet= are supported).", hint=_HINT)
            named[key] = value.strip()
        else:
            positional.append(part.strip())
    if len(positional) > 3:
        raise InstantLoraError(f"{tag}: too many values ({len(positional)}); at most te_weight:unet_weight.", hint=_HINT)
    if len(positional) == 3 or "dyn" in named:
        raise InstantLoraError(f"{tag}: the dyn (dynamic rank) value is not supported by this tester.",
                               hint="drop the third number: <lora:name:te_weight:unet_weight>")
    # Same precedence as the WebUI: te defaults to 1, unet defaults to te; named beats positional.
    te = _number(positional[0], tag) if positional else 1.0
    te = _number(named["te"], tag) if "te" in named else te
    unet = _number(positional[1], tag) if len(positional) > 1 else te
    unet = _number(named["unet"], tag) if "unet" in named else unet
    return LoraTag(name, te, unet)


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Split a prompt into its text and its tags. Whitespace is collapsed as CLIP's tokenizer does."""
    loras: list[LoraTag] = []
    other: list[str] = []

    def take(m: re.Match) -> str:
        if m.group(1) in LORA_KINDS:
            loras.append(_parse_lora(m.group(2), m.group(0)))
        else:
            other.append(m.group(0))
        return ""

    text = _TAG.sub(take, prompt)
    unclosed = _UNCLOSED.search(text)
    if unclosed:
        start = unclosed.start()
        raise InstantLoraError(f"unclosed LoRA tag in the prompt: '{text[start:start + 40].strip()}'", hint=_HINT)
    return ParsedPrompt(" ".join(text.split()), loras, other)


def _fmt(x: float) -> str:
    return f"{x:g}"


def format_tag(name: str, weight: float = 1.0, unet_weight: float | None = None) -> str:
    """`<lora:name:w>`, or `<lora:name:te:unet>` when the two weights differ."""
    if not name or any(c in name for c in ":<>"):
        raise InstantLoraError(f"'{name}' cannot be written in a <lora:...> tag (empty, or contains : < >).",
                               hint="rename the LoRA file to a plain name like my_style.safetensors")
    if unet_weight is None or unet_weight == weight:
        return f"<lora:{name}:{_fmt(weight)}>"
    return f"<lora:{name}:{_fmt(weight)}:{_fmt(unet_weight)}>"


def remove_lora_tags(prompt: str, names) -> str:
    """The prompt without the LoRA tags naming any of `names` (other tags and text untouched)."""
    names = set(names)

    def drop(m: re.Match) -> str:
        if m.group(1) in LORA_KINDS and m.group(2).split(":")[0].strip() in names:
            return ""
        return m.group(0)

    return " ".join(_TAG.sub(drop, prompt).split())


def with_lora_tag(prompt: str, name: str, weight: float, replace=()) -> str:
    """`prompt` with one tag for `name` at `weight` appended (after removing tags for `name` and
    `replace`); weight 0 appends nothing, so the prompt is exactly the base model's."""
    base = remove_lora_tags(prompt, {name, *replace})
    if weight == 0:
        return base
    tag = format_tag(name, weight)
    return f"{base} {tag}" if base else tag


def result_prompt(lora_path, trigger_words: str = "", weight: float = 0.8) -> str:
    """What a user pastes after a training: `<lora:name:0.8> trigger words`."""
    from pathlib import Path

    return format_tag(Path(lora_path).stem, weight) + (f" {trigger_words}" if trigger_words else "")
