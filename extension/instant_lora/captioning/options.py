"""What the captioner is told to do: one dataclass, each field with its one-line help.

The help strings are the single source for the UI's tooltips and the CLI's --help. `Wording` says
how a front end's user sets those options (flags on the command line, fields in the app), so a
message that says what to do names what that user actually sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Dict, List, Optional, Union

from ..errors import InstantLoraError

MODES = ("fill", "overwrite", "append")
DEVICES = ("auto", "cuda", "cpu", "mps")
QUICK_GELU = ("auto", "on", "off")


@dataclass(frozen=True)
class Wording:
    """How one front end names the captioning options in messages that say what to do.

    `names` maps option names (clip_model, clip_pretrained, clip_arch, search_dirs, device,
    offline) to what the user sees there: a flag, or a field's label. An option the front end
    does not offer is left out, and messages then do not suggest it.
    """
    names: Dict[str, str]
    fields: bool = False                 # names are form fields ("enter X in ..."), not flags ("pass ... X")
    retry: str = "run the command again"
    line_break: str = "\n     "         # between the hint's sentences (under "  -> " on a terminal)

    def name(self, option: str) -> str:
        return self.names.get(option, "")

    def set(self, option: str, value: str, in_words: str = "") -> str:
        """'pass --clip_model VALUE', or 'enter IN_WORDS in the "CLIP model" field' (IN_WORDS defaults
        to VALUE); '' when this front end has no such option."""
        name = self.name(option)
        if not name:
            return ""
        return f"enter {in_words or value} in {name}" if self.fields else f"pass {name} {value}"


# `caption DIR ...`
CLI_WORDING = Wording({"clip_model": "--clip_model", "clip_pretrained": "--clip_pretrained", "clip_arch": "--clip_arch",
                       "search_dirs": "--clip_search_dir", "device": "--device", "offline": "--offline"})
# `train --auto_caption ...`: the same settings under the trainer's flag names
TRAIN_CLI_WORDING = Wording({"clip_model": "--caption_clip_model", "clip_pretrained": "--caption_clip_pretrained"},
                            retry="start the training again")


def _opt(default, help, **extra):
    """A field with its help; `flag` renames the CLI option, `cli=False` keeps it API-only."""
    meta = {"help": help, **extra}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class CaptionOptions:
    clip_model: str = _opt(
        "ViT-L-14",
        "open_clip architecture (ViT-L-14 suits SD1.x), a CLIP weights file, local-dir:FOLDER or hf-hub:ORG/REPO",
        metavar="NAME|FILE|local-dir:PATH")
    clip_pretrained: str = _opt(
        "openai",
        "open_clip pretrained tag or weights file for --clip_model NAME ('random': untrained, speed tests only)",
        metavar="TAG|FILE")
    clip_arch: str = _opt(
        "", "architecture of a --clip_model weights file (empty: inferred from the file's tensor shapes)",
        metavar="NAME")
    quick_gelu: str = _opt(
        "auto", "QuickGELU activation: auto (on for OpenAI weights), on, off", choices=QUICK_GELU)
    mode: str = _opt(
        "fill", "fill: caption images without one; overwrite: replace all; append: add new tags to existing",
        choices=MODES)
    caption_extension: str = _opt(".txt", "caption file extension, written next to each image", metavar="EXT")
    prefix: str = _opt("", "trigger word(s) put first in every caption", flag="caption_prefix", metavar="WORDS")
    categories: List[str] = _opt(
        [], "label categories to use, in caption order (empty: all banks in their default order)")
    top_k: Union[int, Dict[str, int]] = _opt(
        {}, "labels kept per category: N, category=N,... or both (unset: each bank's default; 0 drops it)")
    threshold: Union[float, Dict[str, float]] = _opt(
        0.15, "minimum image-label cosine similarity: X, category=X,... or both (ViT-L-14: fitting phrases ~0.2-0.35)")
    dedup_threshold: float = _opt(
        0.95, "drop a label whose text embedding is this similar to a better one in its category (1: off)")
    max_tokens: int = _opt(75, "caption length limit in CLIP tokens (SD1.x reads 75)")
    label_banks: str = _opt(
        "", "folder of <category>.txt label banks; they replace same-named built-in banks and add new ones",
        metavar="FOLDER")
    banks: Optional[Dict[str, List[str]]] = _opt(
        None, "in-memory label banks {category: [labels]}, used instead of all others", cli=False)
    batch_size: int = _opt(0, "images per batch (0: 32 on GPU, 8 on CPU)")
    device: str = _opt("auto", "auto (GPU if present), cuda, cpu or mps; GPU runs in fp16, CPU in fp32",
                       choices=DEVICES)
    cache_dir: Optional[str] = _opt(
        None, "label-embedding cache folder (default: $INSTANT_LORA_CACHE or ~/.cache/instant_lora)",
        metavar="FOLDER")
    search_dirs: List[str] = _opt(
        [], "extra folders searched for CLIP weights before any download", flag="clip_search_dir")
    offline: bool = _opt(False, "never download weights (also on when HF_HUB_OFFLINE=1)")
    keep_model_loaded: bool = _opt(False, "keep CLIP in memory after captioning (faster reruns, holds VRAM)")
    workers: int = _opt(2, "threads that decode images while the model runs")
    wording: Optional[Wording] = _opt(
        None, "how messages name these options for the front end that asks (default: the caption command's flags)",
        cli=False)

    def words(self) -> Wording:
        return self.wording or CLI_WORDING

    def validate(self) -> None:
        """Raise one InstantLoraError naming every bad value at once."""
        problems = []
        if self.mode not in MODES:
            problems.append(f"mode = {self.mode!r} must be one of {', '.join(MODES)}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            problems.append(f"device = {self.device!r} must be one of {', '.join(DEVICES)} or cuda:N")
        if self.quick_gelu not in QUICK_GELU:
            problems.append(f"quick_gelu = {self.quick_gelu!r} must be one of {', '.join(QUICK_GELU)}")
        ext = self.caption_extension
        if not ext.startswith(".") or len(ext) < 2 or "/" in ext or "\\" in ext:
            problems.append(f"caption_extension = {ext!r} must look like '.txt'")
        if not 1 <= self.max_tokens <= 75:
            problems.append(f"max_tokens = {self.max_tokens} must be 1-75 (SD1.x reads 75 tokens)")
        if not 0.0 < self.dedup_threshold <= 1.0:
            problems.append(f"dedup_threshold = {self.dedup_threshold} must be in (0, 1]")
        if self.batch_size < 0 or self.workers < 0:
            problems.append("batch_size and workers must be >= 0")
        for name, value in (("top_k", self.top_k), ("threshold", self.threshold)):
            values = value.values() if isinstance(value, dict) else [value]
            if any(not isinstance(v, (int, float)) or v < (0 if name == "top_k" else -1) for v in values):
                problems.append(f"{name} = {value!r} must be a number or {{category: number}}")
        if problems:
            raise InstantLoraError("Invalid captioning options: " + "; ".join(problems),
                                   hint="See `caption --help` for each option's range.")

    def top_k_for(self, category: str, bank_default: int) -> int:
        if isinstance(self.top_k, dict):
            return int(self.top_k.get(category, self.top_k.get("*", bank_default)))
        return int(self.top_k)

    def threshold_for(self, category: str) -> float:
        if isinstance(self.threshold, dict):
            return float(self.threshold.get(category, self.threshold.get("*", 0.15)))
        return float(self.threshold)


def option_fields():
    """(field, help, cli flag) for every user-visible option, in declaration order."""
    for f in fields(CaptionOptions):
        if f.metadata.get("cli", True):
            yield f, f.metadata["help"], f.metadata.get("flag", f.name)
