"""Caption lint: the caption mistakes that quietly ruin a LoRA, reported (and fixed on request).

- empty or missing captions, and several images sharing one caption: those images teach nothing
  apart from each other;
- a trigger word missing from some captions: those images train without it;
- a tag present in (nearly) every caption: the constant binds to that tag instead of the trigger,
  so the LoRA then needs the tag in every prompt;
- captions over 75 CLIP tokens: SD1.x cuts the rest off silently;
- a prompt tag such as `<lora:name:0.8>` inside a caption: the text encoder learns it as words.

The last two are per-caption rules shared with the dataset scan (`caption_rule_issues`), so the
scan, the app's dataset view and `caption --lint` report them the same way.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional

from ..errors import InstantLoraError
from .compose import count_tokens, has_phrase, join_tags, split_tags, tag_key, truncate_tags, unique_tags

COMMON_TAG_RATIO = 0.9   # a tag in >= 90% of captions is treated as constant
COMMON_TAG_MIN_CAPTIONS = 4  # below this, every tag looks constant
MAX_CAPTION_TOKENS = 75  # SD1.x's text window: 77 positions less the start and end tokens


@dataclass
class LintIssue:
    # unreadable | missing | empty | duplicate | prompt_tag | no_trigger | common_tag | too_long | repeated_tag
    kind: str
    message: str
    paths: List[str] = field(default_factory=list)
    fixable: bool = False
    fixed: bool = False


@dataclass
class LintReport:
    folder: str
    images: int = 0
    captions: int = 0
    issues: List[LintIssue] = field(default_factory=list)
    files_changed: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is left to fix by hand or by --fix."""
        return all(i.fixed for i in self.issues)

    def summary(self) -> str:
        lines = [f"Caption lint of {self.folder}: {self.images} images, {self.captions} captions, "
                 f"{len(self.issues)} issue(s)"]
        for issue in self.issues:
            state = " [fixed]" if issue.fixed else (" [fixable with --fix]" if issue.fixable else "")
            lines.append(f"  - {issue.message}{state}")
            lines += [f"      {p}" for p in issue.paths[:5]]
            if len(issue.paths) > 5:
                lines.append(f"      ... and {len(issue.paths) - 5} more")
        if self.files_changed:
            lines.append(f"  {len(self.files_changed)} caption file(s) rewritten")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- per-caption rules
# One set of rules for `caption --lint` and the dataset scan. Pure Python until a caption's length
# is in doubt; only then is the CLIP tokenizer loaded (open_clip's bundled BPE file: no network).

_PROMPT_TAG = re.compile(r"<\s*(?:lora|lyco|locon|loha|lokr|hypernet)\s*:[^<>]*>", re.IGNORECASE)
# CLIP's pre-tokenizer on lowercased ASCII text ([\p{L}]+ is [a-z]+ there, [\p{N}] is [0-9]).
_ASCII_PIECE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")
_tokenizer_missing = False


def prompt_tags(caption: str) -> List[str]:
    """`<lora:...>`, `<lyco:...>`, `<hypernet:...>` tags in a caption: WebUI prompt syntax, not caption text."""
    return [m.group(0) for m in _PROMPT_TAG.finditer(caption)]


def strip_prompt_tags(caption: str) -> str:
    """The caption without its prompt tags; empty tags and doubled spaces left behind are dropped."""
    return join_tags([" ".join(t.split()) for t in split_tags(_PROMPT_TAG.sub(" ", caption))])


def _token_bounds(caption: str) -> Optional[tuple]:
    """(at least, at most) CLIP tokens without loading the tokenizer; None when the text is not plain ASCII.

    Every pre-tokenizer piece is one token or more, and BPE never yields more tokens than the
    piece has bytes. Entities (&amp;), control characters and special-token names are handled by
    the tokenizer itself, so such text takes the exact path.
    """
    if not caption.isascii() or "&" in caption or "<|" in caption or "_of_text>" in caption.lower():
        return None  # entities, special tokens: left to the tokenizer
    if not all(c.isprintable() or c in "\t\r\n" for c in caption):
        return None
    pieces = _ASCII_PIECE.findall(" ".join(caption.split()).lower())
    return len(pieces), sum(len(p) for p in pieces)


def count_caption_tokens(caption: str) -> int:
    """CLIP tokens of a caption, without start/end tokens (what SD1.x's 75-token window counts).

    Exact with open_clip's tokenizer; where open_clip is not installed, the count of
    pre-tokenizer pieces (never more than the exact count, so no false alarms).
    """
    global _tokenizer_missing
    if not _tokenizer_missing:
        try:
            return count_tokens(caption)
        except Exception:  # open_clip missing or broken: a scan must still finish
            _tokenizer_missing = True
    bounds = _token_bounds(caption)
    if bounds is not None:
        return bounds[0]
    return len(re.findall(r"[^\W\d_]+|\d|[^\s\w]+|_+", " ".join(caption.split()).lower()))


def caption_over_limit(caption: str, max_tokens: int = MAX_CAPTION_TOKENS) -> bool:
    """True when SD1.x would cut the caption: more than max_tokens CLIP tokens."""
    bounds = _token_bounds(caption)
    if bounds is not None:
        if bounds[1] <= max_tokens:
            return False
        if bounds[0] > max_tokens:
            return True
    return count_caption_tokens(caption) > max_tokens


def prompt_tag_issue(captions: Mapping[str, str]) -> Optional[LintIssue]:
    """Captions holding a `<lora:...>`-style tag; keys name the caption files."""
    tagged = {name: tags for name, text in captions.items() if (tags := prompt_tags(text))}
    if not tagged:
        return None
    example = next(iter(tagged.values()))[0]
    return LintIssue("prompt_tag", f"{len(tagged)} caption(s) hold a prompt tag like {example}: the text encoder "
                     f"learns it as plain words; remove it (`caption --lint --fix` does)",
                     [str(name) for name in tagged], fixable=True)


def too_long_issue(captions: Mapping[str, str], max_tokens: int = MAX_CAPTION_TOKENS) -> Optional[LintIssue]:
    """Captions over max_tokens CLIP tokens; keys name the caption files."""
    too_long = [str(name) for name, text in captions.items() if caption_over_limit(text, max_tokens)]
    if not too_long:
        return None
    return LintIssue("too_long", f"{len(too_long)} caption(s) exceed {max_tokens} CLIP tokens; SD1.x ignores the "
                     f"rest: shorten them (`caption --lint --fix` drops trailing tags)", too_long, fixable=True)


def caption_rule_issues(captions: Mapping[str, str], max_tokens: int = MAX_CAPTION_TOKENS) -> List[LintIssue]:
    """The per-caption rules, as the dataset scan runs them: prompt tags, then over-long captions."""
    return [issue for issue in (prompt_tag_issue(captions), too_long_issue(captions, max_tokens)) if issue]


def _caption_file(image: Path, ext: str) -> Path:
    return image.with_name(image.stem + ext)


def lint_captions(folder, caption_extension: str = ".txt", trigger: Optional[str] = None,
                  fix: bool = False, max_tokens: int = 75,
                  common_tag_ratio: float = COMMON_TAG_RATIO) -> LintReport:
    """Check the captions of a training folder; with fix=True rewrite what can be fixed safely.

    Fixes: add a missing trigger in front, remove tags present in (nearly) every caption, drop
    repeated tags inside a caption, drop trailing tags of captions over max_tokens. Missing, empty
    and duplicate captions need new captions (`caption --mode fill` / `--overwrite`): only reported.
    """
    from ..dataset import read_caption, scan_dataset

    if not caption_extension.startswith("."):
        caption_extension = "." + caption_extension
    scan = scan_dataset(folder, caption_extension, check_images=False)
    report = LintReport(folder=str(scan.root), images=len(scan.items))
    captions: Dict[Path, str] = {}
    missing, empty = [], []
    unreadable = []
    for item in scan.items:
        try:
            text = read_caption(item.path, caption_extension)
        except InstantLoraError as exc:
            unreadable.append(f"{_caption_file(item.path, caption_extension)}: {exc.message}")
            continue
        if text is None:
            missing.append(str(item.path))
        elif not text.strip():
            empty.append(str(_caption_file(item.path, caption_extension)))
        else:
            captions[item.path] = text.strip()
    report.captions = len(captions) + len(empty)
    if unreadable:
        report.issues.append(LintIssue("unreadable", f"{len(unreadable)} caption file(s) can't be read",
                                       unreadable))
    if missing:
        report.issues.append(LintIssue("missing", f"{len(missing)} image(s) have no {caption_extension} caption "
                                       f"(run `caption` to fill them)", missing))
    if empty:
        report.issues.append(LintIssue("empty", f"{len(empty)} caption file(s) are empty "
                                       f"(`caption` fills them)", empty))

    by_text = defaultdict(list)
    for path, text in captions.items():
        by_text[tag_key(text)].append(str(path))
    for text, paths in by_text.items():
        if len(paths) > 1:
            report.issues.append(LintIssue("duplicate", f"{len(paths)} images share the caption '{text[:60]}' "
                                           f"(describe what differs between them)", paths))

    new = dict(captions)  # path -> caption after fixes
    tagged = prompt_tag_issue(new)
    if tagged:
        report.issues.append(tagged)
        for p in new:
            if prompt_tags(new[p]):
                new[p] = strip_prompt_tags(new[p])
    trigger = (trigger or "").strip().strip(",").strip()
    trigger_keys = {tag_key(t) for t in split_tags(trigger)}

    repeated = [p for p, t in new.items() if len({tag_key(x) for x in split_tags(t)}) < len(split_tags(t))]
    if repeated:
        report.issues.append(LintIssue("repeated_tag", f"{len(repeated)} caption(s) repeat a tag",
                                       [str(p) for p in repeated], fixable=True))
        for p in repeated:
            new[p] = join_tags(unique_tags(split_tags(new[p])))

    if trigger:
        lacking = [p for p, t in new.items() if not has_phrase(t, trigger)]
        if lacking:
            report.issues.append(LintIssue("no_trigger", f"{len(lacking)} caption(s) lack the trigger '{trigger}'",
                                           [str(p) for p in lacking], fixable=True))
            for p in lacking:
                new[p] = join_tags([trigger, new[p]])

    if len(new) >= COMMON_TAG_MIN_CAPTIONS:
        counts = Counter(k for t in new.values() for k in {tag_key(x) for x in split_tags(t)})
        common = sorted(k for k, n in counts.items()
                        if n >= common_tag_ratio * len(new) and k not in trigger_keys)
        for tag in common:
            report.issues.append(LintIssue(
                "common_tag", f"'{tag}' is in {counts[tag]} of {len(new)} captions: it will absorb what the "
                f"images share instead of the trigger (removed by --fix)", [], fixable=True))
        if common:
            for p in new:
                new[p] = join_tags([x for x in split_tags(new[p]) if tag_key(x) not in common])

    too_long = too_long_issue(new, max_tokens)
    if too_long:
        report.issues.append(too_long)
        keep = len(split_tags(trigger)) if trigger else 0
        long_paths = set(too_long.paths)
        for p in new:
            if str(p) in long_paths:
                new[p] = truncate_tags(new[p], max_tokens, keep_first=keep)

    if fix:
        for path, text in new.items():
            if text != captions[path]:
                target = _caption_file(path, caption_extension)
                target.write_text(text, encoding="utf-8")
                report.files_changed.append(str(target))
        for issue in report.issues:
            issue.fixed = issue.fixable
    return report
