"""What a caption becomes at each training step: prefix/suffix, dropout, kept tags, shuffling.

The rules follow the reference trainer (kohya sd-scripts, ``BaseDataset.process_caption``), so a
LoRA trained here with ``--shuffle_caption --keep_tokens 1`` sees the same kind of captions as one
trained there:

1. ``caption_prefix`` / ``caption_suffix`` are joined with a single space (no separator), so a
   prefix meant to be its own tag must end with the separator itself (``"sks,"``).
2. The whole caption is emptied with probability ``caption_dropout_rate``, and in every epoch
   divisible by ``caption_dropout_every_n_epochs`` (epochs count from 1).
3. Multi-line text keeps its first line only.
4. Only when shuffling or tag dropout is on is the caption split into tags: with
   ``keep_tokens_separator`` present, the text before it is fixed and the text after a second
   occurrence is a fixed suffix (empty tags dropped); otherwise the first ``keep_tokens`` tags
   are fixed (empty tags kept, as the reference keeps them). The movable tags are shuffled, then
   each is dropped with probability ``caption_tag_dropout_rate``, and the tags are joined with
   ", " whatever the separator is. With neither option on, the caption passes through untouched
   (a ``keep_tokens_separator`` marker then stays in the text, as in the reference).

Randomness comes only from the ``random.Random`` passed in, drawn in the reference's order, so a
seeded generator gives the same caption sequence on every run and in every worker.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields

__all__ = ["CaptionRules", "process_caption", "trigger_keep_tokens"]


@dataclass(frozen=True)
class CaptionRules:
    """The caption options of one dataset (or of the whole run); defaults change nothing."""

    shuffle_caption: bool = False
    keep_tokens: int = 0
    keep_tokens_separator: str = ""
    caption_separator: str = ","
    caption_prefix: str | None = None
    caption_suffix: str | None = None
    caption_dropout_rate: float = 0.0
    caption_dropout_every_n_epochs: int = 0
    caption_tag_dropout_rate: float = 0.0

    def __post_init__(self):
        # Caught here rather than as a ValueError from str.split("") deep in a data loader.
        if not self.caption_separator:
            raise ValueError("caption_separator must not be empty")
        if self.keep_tokens < 0 or self.caption_dropout_every_n_epochs < 0:
            raise ValueError("keep_tokens and caption_dropout_every_n_epochs must be >= 0")
        for name in ("caption_dropout_rate", "caption_tag_dropout_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")

    @classmethod
    def of(cls, source) -> "CaptionRules":
        """The rules named by `source`'s attributes (a TrainConfig, a subset spec...).

        Missing or None attributes take the defaults, so a config that predates an option, or a
        dataset spec that leaves it unset, still works.
        """
        values = {}
        for f in fields(cls):
            value = getattr(source, f.name, None)
            if value is not None:
                values[f.name] = value
        return cls(**values)

    @property
    def varies(self) -> bool:
        """True when a caption can differ between steps, so its text-encoder output cannot be cached.

        Unlike the reference's cacheability check, every-n-epochs dropout counts too: a cached
        output would silently skip those empty-caption epochs.
        """
        return bool(self.shuffle_caption or self.caption_dropout_rate > 0 or self.caption_dropout_every_n_epochs > 0
                    or self.caption_tag_dropout_rate > 0)

    def fixed(self, caption: str) -> str:
        """The caption with prefix/suffix only: the deterministic text a cache or validation uses."""
        if self.caption_prefix:
            caption = self.caption_prefix + " " + caption
        if self.caption_suffix:
            caption = caption + " " + self.caption_suffix
        return caption


def _tags(text: str, separator: str, keep_empty: bool) -> list[str]:
    tags = [t.strip() for t in text.split(separator)]
    return tags if keep_empty else [t for t in tags if t]


def _split(caption: str, rules: CaptionRules) -> tuple[list[str], list[str], list[str]]:
    """(fixed head, movable tags, fixed tail)."""
    sep, marker = rules.caption_separator, rules.keep_tokens_separator
    if marker and marker in caption:
        head, flex = caption.split(marker, 1)
        tail = ""
        if marker in flex:
            flex, tail = flex.split(marker, 1)  # a third marker stays inside the tail's text
        return _tags(head, sep, False), _tags(flex, sep, False), _tags(tail, sep, False)
    tags = _tags(caption.strip(), sep, True)
    n = rules.keep_tokens
    return tags[:n], tags[n:], []


def process_caption(caption: str, rules: CaptionRules, rng: random.Random, epoch: int) -> str:
    """The caption one training step sees; `epoch` counts from 1 (the reference's current_epoch).

    `rng` is drawn in the reference's order: one draw for caption dropout (only when its rate is
    above 0), then the shuffle, then one draw per movable tag for tag dropout.
    """
    caption = rules.fixed(caption)
    dropped = rules.caption_dropout_rate > 0 and rng.random() < rules.caption_dropout_rate
    every = rules.caption_dropout_every_n_epochs
    if dropped or (every > 0 and epoch % every == 0):
        return ""
    caption = caption.split("\n")[0]
    if not (rules.shuffle_caption or rules.caption_tag_dropout_rate > 0):
        return caption
    head, flex, tail = _split(caption, rules)
    if rules.shuffle_caption:
        rng.shuffle(flex)
    if rules.caption_tag_dropout_rate > 0:
        flex = [t for t in flex if rng.random() >= rules.caption_tag_dropout_rate]
    return ", ".join(head + flex + tail)


def trigger_keep_tokens(trigger_words: str, separator: str = ",") -> int:
    """How many tags `trigger_words` make, i.e. the keep_tokens that keeps them first when shuffling.

    "sks, red style" is 2 tags. When the words go in as a caption prefix, end the prefix with the
    separator ("sks, red style,"): the prefix is joined with a space, so without it the last
    trigger tag would merge with the caption's first tag.
    """
    if not separator:
        raise ValueError("separator must not be empty")
    return len(_tags(trigger_words, separator, False))
