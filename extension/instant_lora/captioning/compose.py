"""Turning ranked labels into one caption: pick per category, drop near-duplicates, fit 75 tokens.

Pure Python (no model): scores come in, a string comes out, so every rule here is testable alone.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

_WORD = re.compile(r"[a-z0-9']+")
_tokenizer = None
_tokenizer_lock = threading.Lock()


def count_tokens(text: str) -> int:
    """CLIP BPE tokens in `text`, without the start/end tokens: what SD1.x's 75-token window counts.

    open_clip's SimpleTokenizer uses the same vocabulary and cleaning as SD's CLIPTokenizer.
    """
    global _tokenizer
    if _tokenizer is None:
        with _tokenizer_lock:
            if _tokenizer is None:
                from open_clip.tokenizer import SimpleTokenizer  # imports torch: only when needed

                _tokenizer = SimpleTokenizer()
    return len(_tokenizer.encode(text))


def split_tags(caption: str) -> List[str]:
    return [t.strip() for t in caption.split(",") if t.strip()]


def join_tags(tags: Sequence[str]) -> str:
    return ", ".join(t for t in tags if t)


def unique_tags(tags: Sequence[str]) -> List[str]:
    """Tags without case/space-insensitive repeats, first occurrence kept."""
    seen, out = set(), []
    for tag in tags:
        if tag_key(tag) not in seen:
            seen.add(tag_key(tag))
            out.append(tag)
    return out


def tag_key(tag: str) -> str:
    return " ".join(tag.lower().split())


def tag_words(tag: str) -> frozenset:
    return frozenset(_WORD.findall(tag.lower()))


def has_phrase(caption: str, phrase: str) -> bool:
    """Whole-word, case-insensitive: 'ohwx' is in 'ohwx woman, red' but not in 'ohwxy'."""
    phrase = tag_key(phrase)
    if not phrase:
        return True
    return re.search(r"(?<!\w)" + re.escape(phrase) + r"(?!\w)", tag_key(caption)) is not None


@dataclass
class Candidate:
    category: str
    label: str
    score: float
    index: int  # row in the caller's label-embedding table, for text-text similarity
    rank: int = 0  # position among the labels kept for its category (0 = best)


def _overlaps(a: str, b: str) -> bool:
    """One tag's words contain the other's ('dress' / 'wrap dress'): the shorter adds nothing."""
    wa, wb = tag_words(a), tag_words(b)
    return bool(wa) and bool(wb) and (wa <= wb or wb <= wa)


def pick_labels(ranked: Dict[str, List[Candidate]], order: Sequence[str], top_k: Dict[str, int],
                similarity: Optional[Callable[[int, int], float]] = None,
                dedup_threshold: float = 1.0, exclude: Sequence[str] = ()) -> List[Candidate]:
    """Up to top_k labels per category, best first, skipping near-duplicates; in priority order.

    `ranked[c]` must be sorted by score (best first) and already cut at the threshold. Near-duplicates
    are checked inside a category only: 'white' (colour) and 'white background' (setting) say
    different things, while 'crimson' after 'red' says nothing new. Exact repeats are dropped
    everywhere. Labels already in `exclude` (an existing caption's tags) are not repeated and
    count towards their category's top_k.
    """
    taken_keys = {tag_key(t) for t in exclude}
    exclude_words = [tag_words(t) for t in exclude]
    per_category: Dict[str, List[Candidate]] = {}
    for category in order:
        kept: List[Candidate] = []
        present = 0  # slots filled by labels the existing caption already has
        for cand in ranked.get(category, []):
            if len(kept) + present >= top_k.get(category, 1):
                break
            key = tag_key(cand.label)
            if any(w and tag_words(key) <= w for w in exclude_words):
                present += 1  # the image's best colour is already written: no second one appended
                continue
            if key in taken_keys:
                continue
            if any(_overlaps(cand.label, k.label) for k in kept):
                continue
            if similarity is not None and dedup_threshold < 1.0 and any(
                    similarity(cand.index, k.index) >= dedup_threshold for k in kept):
                continue
            cand.rank = len(kept)
            kept.append(cand)
            taken_keys.add(key)
        per_category[category] = kept
    # Interleave by rank: every category's best label comes before any category's second best,
    # so the token cap trims the least important labels.
    depth = max((len(v) for v in per_category.values()), default=0)
    return [per_category[c][r] for r in range(depth) for c in order if r < len(per_category[c])]


def assemble(prefix: str, picked: Sequence[Candidate], order: Sequence[str], max_tokens: int = 75,
             existing: Optional[str] = None,
             count: Callable[[str], int] = count_tokens) -> str:
    """`prefix, labels in category order` (or `existing, new labels`), at most max_tokens tokens.

    Labels are added in priority order and skipped when they would break the limit; the trigger
    prefix and an existing caption are never cut (lint reports an existing caption that is too long).
    """
    head: List[str] = []
    prefix = prefix.strip().strip(",").strip()
    if existing is not None and existing.strip():
        if prefix and not has_phrase(existing, prefix):
            head.append(prefix)
        head.append(existing.strip().rstrip(","))
    elif prefix:
        head.append(prefix)

    position = {c: i for i, c in enumerate(order)}
    chosen: List[Candidate] = []

    def render(items: Sequence[Candidate]) -> str:
        body = sorted(items, key=lambda c: (position.get(c.category, len(position)), c.rank))
        return join_tags(head + [c.label for c in body])

    for cand in picked:
        if count(render(chosen + [cand])) <= max_tokens:
            chosen.append(cand)
    return render(chosen)


def truncate_tags(caption: str, max_tokens: int = 75, keep_first: int = 0,
                  count: Callable[[str], int] = count_tokens) -> str:
    """Drop tags from the end until the caption fits; the first `keep_first` tags stay."""
    tags = split_tags(caption)
    while len(tags) > max(keep_first, 1) and count(join_tags(tags)) > max_tokens:
        tags.pop()
    return join_tags(tags)
