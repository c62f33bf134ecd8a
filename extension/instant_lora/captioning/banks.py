"""Label banks: the phrases that captions are made of, one text file per category.

File format (`label_banks/<category>.txt`):
    # comment lines start with '#'; blank lines are ignored
    # top_k: 2            <- how many labels of this category a caption gets by default
    wrap dress
    grey | gray           <- synonyms: every spelling is scored, the first one is written

Phrases describe what is *in* a training image (garment, colour, setting...), never prompt
boosters ("trending on artstation") or artist names: a caption teaches the LoRA which parts of the
image are not the subject, so it has to name them plainly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from ..errors import InstantLoraError

BUILTIN_DIR = Path(__file__).resolve().parent / "label_banks"

# Caption order: what the subject is and wears first, then the scene, then how it was shot/made.
DEFAULT_ORDER = (
    "subject", "garment", "garment_detail", "colour", "material", "pattern", "accessory",
    "hair", "pose", "setting", "framing", "lighting", "medium",
)

_TOP_K_LINE = re.compile(r"^#\s*top_k\s*:\s*(\d+)\s*$", re.IGNORECASE)


@dataclass
class LabelBank:
    category: str
    labels: List[str]                      # what a caption may contain
    phrases: List[str]                     # what gets encoded: labels plus their synonyms
    phrase_label: List[int]                # phrases[i] is a spelling of labels[phrase_label[i]]
    default_top_k: int = 1
    source: str = "<memory>"
    extra: Dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.labels)


def parse_bank(category: str, lines: Iterable[str], default_top_k: int = 1,
               source: str = "<memory>") -> LabelBank:
    labels: List[str] = []
    phrases: List[str] = []
    phrase_label: List[int] = []
    seen_phrase = set()
    top_k = default_top_k
    for raw in lines:
        line = raw.strip()
        match = _TOP_K_LINE.match(line)
        if match:
            top_k = int(match.group(1))
            continue
        if not line or line.startswith("#"):
            continue
        spellings = [s.strip() for s in line.split("|") if s.strip()]
        # A phrase listed twice (also across synonym groups) is kept once: the first wins.
        spellings = [s for s in spellings if s.lower() not in seen_phrase]
        if not spellings:
            continue
        labels.append(spellings[0])
        for s in spellings:
            seen_phrase.add(s.lower())
            phrases.append(s)
            phrase_label.append(len(labels) - 1)
    if not labels:
        raise InstantLoraError(f"Label bank '{category}' has no labels.", path=source,
                               hint="Put one phrase per line; lines starting with '#' are comments.")
    return LabelBank(category, labels, phrases, phrase_label, top_k, source)


def read_bank_file(path: Path) -> LabelBank:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InstantLoraError(f"Can't read label bank {path}: {exc}", path=str(path)) from exc
    return parse_bank(path.stem, text.splitlines(), source=str(path))


def _bank_files(folder: Path) -> Dict[str, Path]:
    if not folder.is_dir():
        raise InstantLoraError(f"Label bank folder {folder} does not exist.", path=str(folder),
                               hint="Pass a folder holding <category>.txt files.")
    return {p.stem: p for p in sorted(folder.glob("*.txt"))}


def load_banks(label_banks: str = "", banks: Optional[Dict[str, List[str]]] = None,
               categories: Optional[List[str]] = None) -> List[LabelBank]:
    """The banks to use, in caption order.

    In-memory `banks` replace the built-in set (API callers pass exactly what they want); a
    `label_banks` folder overrides same-named built-in banks and adds new categories.
    """
    found: Dict[str, LabelBank] = {}
    if banks:
        for name, lines in banks.items():
            found[name] = parse_bank(name, lines)
    else:
        sources = [_bank_files(BUILTIN_DIR)]
        if label_banks:
            sources.append(_bank_files(Path(label_banks).expanduser()))
        for files in sources:
            for name, path in files.items():
                found[name] = read_bank_file(path)

    if categories:
        unknown = [c for c in categories if c not in found]
        if unknown:
            raise InstantLoraError(f"Unknown label categories: {', '.join(unknown)}.",
                                   hint=f"Available: {', '.join(sorted(found))}.")
        names = list(dict.fromkeys(categories))
    elif banks:
        names = list(found)  # the caller's order
    else:
        # Custom categories (not in the default order) go after the built-in ones, by name.
        names = [c for c in DEFAULT_ORDER if c in found] + sorted(c for c in found if c not in DEFAULT_ORDER)
    return [found[n] for n in names]


def builtin_bank_sizes() -> Dict[str, int]:
    """{category: number of labels} of the shipped banks (for docs and tests)."""
    return {name: len(read_bank_file(path)) for name, path in _bank_files(BUILTIN_DIR).items()}
