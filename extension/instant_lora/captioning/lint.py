"""Caption lint: the caption mistakes that quietly ruin a LoRA, reported (and fixed on request).

- empty or missing captions, and several images sharing one caption: those images teach nothing
  apart from each other;
- a trigger word missing from some captions: those images train without it;
- a tag present in (nearly) every caption: the constant binds to that tag instead of the trigger,
  so the LoRA then needs the tag in every prompt;
- captions over 75 CLIP tokens: SD1.x cuts the rest off silently.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from ..errors import InstantLoraError
from .compose import count_tokens, has_phrase, join_tags, split_tags, tag_key, truncate_tags, unique_tags

COMMON_TAG_RATIO = 0.9   # a tag in >= 90% of captions is treated as constant
COMMON_TAG_MIN_CAPTIONS = 4  # below this, every tag looks constant


@dataclass
class LintIssue:
    kind: str          # unreadable | missing | empty | duplicate | no_trigger | common_tag | too_long | repeated_tag
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

    too_long = [p for p, t in new.items() if count_tokens(t) > max_tokens]
    if too_long:
        report.issues.append(LintIssue("too_long", f"{len(too_long)} caption(s) exceed {max_tokens} CLIP tokens; "
                                       f"SD1.x ignores the rest (--fix drops trailing tags)",
                                       [str(p) for p in too_long], fixable=True))
        keep = len(split_tags(trigger)) if trigger else 0
        for p in too_long:
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
