"""On-disk cache of label text embeddings, one file per model weights identity.

Encoding a few thousand phrases with ViT-L-14 takes minutes on a GPU-less machine (about 3
phrases/s on 2 CPU cores), so it must happen once per model, not once per run. Entries are keyed
by the exact phrase text inside a file named by the weights identity (a hash of the weights, not
the model's name: a fine-tuned or random model with the same name must not reuse stale vectors).
Editing one label re-encodes that label only.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

FORMAT = 1  # bump when the stored vectors change meaning (e.g. a different normalisation)


class LabelEmbeddingCache:
    def __init__(self, root: Path, identity: str):
        self.path = Path(root) / "label_embeddings" / f"v{FORMAT}-{identity}.npz"

    def _read(self) -> Tuple[Dict[str, int], np.ndarray]:
        try:
            with np.load(self.path, allow_pickle=False) as data:
                phrases, embeds = [str(p) for p in data["phrases"]], data["embeds"]
        except (OSError, KeyError, ValueError):  # absent, truncated by a crash, or foreign: rebuild
            return {}, np.zeros((0, 0), np.float16)
        if len(phrases) != len(embeds):
            return {}, np.zeros((0, 0), np.float16)
        return {p: i for i, p in enumerate(phrases)}, embeds

    def _write(self, phrases: List[str], embeds: np.ndarray) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Write-then-rename: a run killed mid-write leaves the old file, never a broken one.
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, phrases=np.array(phrases, dtype=str), embeds=embeds.astype(np.float16))
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def lookup(self, phrases: List[str], encode: Callable[[List[str]], np.ndarray]) -> Tuple[np.ndarray, int]:
        """Unit vectors [len(phrases), D] float32, and how many phrases had to be encoded now.

        Vectors are stored in fp16 and always returned through fp16, so a cold and a warm run rank
        labels identically.
        """
        index, stored = self._read()
        missing = [p for p in dict.fromkeys(phrases) if p not in index]
        if missing:
            fresh = np.asarray(encode(missing), dtype=np.float32)
            if stored.size and stored.shape[1] != fresh.shape[1]:
                index, stored = {}, np.zeros((0, fresh.shape[1]), np.float16)  # foreign file: replace
                missing = list(dict.fromkeys(phrases))
                fresh = np.asarray(encode(missing), dtype=np.float32)
            all_phrases = list(index) + missing
            stored = np.concatenate([stored.reshape(-1, fresh.shape[1]), fresh.astype(np.float16)])
            self._write(all_phrases, stored)
            index = {p: i for i, p in enumerate(all_phrases)}
        rows = np.asarray([index[p] for p in phrases], dtype=np.int64)
        return stored[rows].astype(np.float32), len(missing)
