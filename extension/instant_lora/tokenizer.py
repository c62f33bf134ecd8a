"""SD1.x's CLIP tokenizer, built offline from the BPE file that open_clip ships.

SD1.5's tokenizer (openai/clip-vit-large-patch14) and open_clip's SimpleTokenizer share one BPE
table and one id order, so no hub download is needed: we write vocab.json/merges.txt once into
the cache folder and hand them to transformers' CLIPTokenizer. Pad = end-of-text (49407), as SD.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
from pathlib import Path

from .errors import InstantLoraError

BOS_ID = 49406
EOS_ID = 49407
MAX_LENGTH = 77  # 75 tokens + BOS + EOS


def cache_root() -> Path:
    """Where Instant LoRA keeps derived files (tokenizer, caption-bank embeddings)."""
    env = os.environ.get("INSTANT_LORA_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "instant_lora"


def _bpe_path() -> Path:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise InstantLoraError(
            "open_clip is not installed, and its BPE file is needed to build SD's CLIP tokenizer offline.",
            hint="pip install open-clip-torch",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise InstantLoraError(f"open_clip's BPE file is missing: {path}", hint="reinstall open-clip-torch")
    return path


def _bytes_to_unicode() -> list[str]:
    # CLIP's reversible byte -> printable-character table; its order defines ids 0..255.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def tokenizer_files() -> tuple[Path, Path]:
    """vocab.json and merges.txt in SD's layout, written once per BPE file (keyed by its hash)."""
    bpe = _bpe_path()
    data = bpe.read_bytes()
    folder = cache_root() / "tokenizer" / hashlib.sha256(data).hexdigest()[:16]
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    if vocab_file.is_file() and merges_file.is_file():
        return vocab_file, merges_file
    lines = gzip.decompress(data).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # the count CLIP uses; the header line is skipped
    byte_chars = _bytes_to_unicode()
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    # Write to temp names then rename, so a parallel process never reads a half-written file.
    tmp_v, tmp_m = folder / f"vocab.json.{os.getpid()}.tmp", folder / f"merges.txt.{os.getpid()}.tmp"
    tmp_v.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    tmp_m.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    os.replace(tmp_v, vocab_file)
    os.replace(tmp_m, merges_file)
    return vocab_file, merges_file


OPENCLIP_PAD = "!"  # id 0: what open_clip pads with (SD2's text encoder, SDXL's second one)


def load_sd_tokenizer(pad_token: str = "<|endoftext|>"):
    """transformers.CLIPTokenizer with SD1.5's ids, built without network. SD2's tokenizer and
    SDXL's second one are the same BPE with `pad_token=OPENCLIP_PAD` (open_clip pads with id 0)."""
    from transformers import CLIPTokenizer

    vocab_file, merges_file = tokenizer_files()
    return CLIPTokenizer(str(vocab_file), str(merges_file), pad_token=pad_token, model_max_length=MAX_LENGTH)
