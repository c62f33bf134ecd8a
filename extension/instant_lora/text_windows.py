"""Long captions in 75-token windows, cut the way the AUTOMATIC1111 WebUI cuts long prompts.

A LoRA should learn with the conditioning the WebUI will feed it. For a prompt longer than 75
tokens the WebUI (``modules/sd_hijack_clip.py``, ``FrozenCLIPEmbedderWithCustomWordsBase``)
does not truncate; it splits the tokens into chunks and encodes each chunk on its own:

- A chunk holds 75 tokens. When it is full and a comma was seen within the last
  ``comma_padding_backtrack`` tokens (default 20), the chunk ends just after that comma and the
  tokens after the comma start the next chunk, so a tag is not torn in two.
- ``BREAK`` (upper case, a whole word; spaces around it dropped) ends the current chunk, even an
  empty one: a leading ``BREAK`` gives an empty first chunk; a trailing one adds nothing.
- Each chunk is padded to 75 with the end token, wrapped as [BOS] + 75 + [EOS] = 77 ids, encoded
  separately (same clip skip) and the outputs are concatenated: 77*k positions.
- In a batch, prompts with fewer chunks get empty chunks ([BOS] + [EOS]*76) up to the longest.
- With a pad id other than the end token (SD2's tokenizer), everything after the first end token
  becomes the pad id (``process_tokens``); for SD1 this changes nothing.

An empty caption is one chunk, and a caption of up to 75 tokens is one chunk with exactly the ids
that ordinary max-length tokenization gives.

Not reproduced: the WebUI's emphasis syntax. Training captions are plain text, so brackets,
``(word:1.2)`` and backslashes are kept as text and tokenized as written (the WebUI would strip
them and weight the words), and no textual-inversion embeddings are looked up.
"""

from __future__ import annotations

import re

__all__ = ["MAX_WINDOWS", "CHUNK", "caption_windows", "batch_window_ids", "encode_windows", "count_cut"]

MAX_WINDOWS = {None: 1, 75: 1, 150: 2, 225: 3}  # --max_token_length -> windows
CHUNK = 75  # tokens per window between BOS and EOS
BACKTRACK = 20  # the WebUI's comma_padding_backtrack default
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def _special_ids(tokenizer) -> tuple[int, int, int]:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return bos, eos, pad


def _comma_id(tokenizer) -> int | None:
    # ",</w>" is a comma standing alone (id 267 in CLIP's vocabulary); ",," or ",(" are other tokens.
    return tokenizer.get_vocab().get(",</w>")


def _segments(tokenizer, caption: str) -> list[list[int]]:
    """Token ids of the text between BREAKs (no BOS/EOS, no truncation)."""
    parts = _BREAK.split(caption)
    # verbose=False: no "sequence longer than 77" warning, long text is what this module is for.
    return list(tokenizer(parts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])


def _chunks(segments: list[list[int]], comma: int | None, backtrack: int) -> list[list[int]]:
    """The WebUI's chunking of token segments (a BREAK between consecutive segments)."""
    chunks: list[list[int]] = []
    chunk: list[int] = []
    last_comma = -1

    def close():
        nonlocal chunk, last_comma
        chunks.append(chunk)
        chunk, last_comma = [], -1

    for i, tokens in enumerate(segments):
        if i > 0:
            close()  # BREAK
        for token in tokens:
            if token == comma:
                last_comma = len(chunk)
            elif backtrack and len(chunk) == CHUNK and last_comma != -1 and CHUNK - last_comma <= backtrack:
                moved = chunk[last_comma + 1:]
                chunk = chunk[:last_comma + 1]
                close()
                chunk = moved
            if len(chunk) == CHUNK:
                close()
            chunk.append(token)
    if chunk or not chunks:
        close()
    return chunks


def _wrap(chunk: list[int], bos: int, eos: int, pad: int) -> list[int]:
    ids = [bos] + chunk + [eos] * (CHUNK + 1 - len(chunk))
    if pad != eos:
        first_end = ids.index(eos)
        ids[first_end + 1:] = [pad] * (len(ids) - first_end - 1)
    return ids


def caption_windows(tokenizer, caption: str, max_windows: int, backtrack: int = BACKTRACK) -> tuple[list[list[int]], bool]:
    """The caption's windows (each 77 ids), at most `max_windows`, and whether text was cut.

    "Cut" means windows past the limit held tokens; windows past it that are only padding (from a
    doubled BREAK) are dropped without counting as a cut.
    """
    if max_windows < 1:
        raise ValueError("max_windows must be at least 1")
    bos, eos, pad = _special_ids(tokenizer)
    chunks = _chunks(_segments(tokenizer, caption), _comma_id(tokenizer), backtrack)
    cut = any(chunks[max_windows:])
    return [_wrap(c, bos, eos, pad) for c in chunks[:max_windows]], cut


def batch_window_ids(tokenizer, captions: list[str], max_windows: int):
    """ids [batch, k, 77] (torch.long) with k = the most windows any caption here needs, and cut flags.

    Captions with fewer windows are padded with empty windows, as the WebUI pads a batch.
    """
    import torch

    bos, eos, pad = _special_ids(tokenizer)
    empty = _wrap([], bos, eos, pad)
    done: dict[str, tuple[list[list[int]], bool]] = {}
    rows = []
    for caption in captions:
        if caption not in done:
            done[caption] = caption_windows(tokenizer, caption, max_windows)
        rows.append(done[caption])
    k = max((len(w) for w, _ in rows), default=1)
    ids = [w + [empty] * (k - len(w)) for w, _ in rows]
    tensor = torch.tensor(ids, dtype=torch.long) if ids else torch.zeros((0, k, CHUNK + 2), dtype=torch.long)
    return tensor, [cut for _, cut in rows]


def encode_windows(text_encoder, ids, clip_skip: int | None = None):
    """ids [b, k, 77] -> hidden states [b, k*77, dim]: each window encoded alone, then concatenated.

    All windows go through the text encoder in one call (as [b*k, 77]); clip skip applies to each
    window as in ``cache.encode_text``. A 2-D [b, 77] input is taken as one window each.
    """
    from .cache import encode_text

    if ids.dim() == 2:
        ids = ids.unsqueeze(1)
    b, k, length = ids.shape
    hidden = encode_text(text_encoder, ids.reshape(b * k, length), clip_skip)
    return hidden.reshape(b, k * length, hidden.shape[-1])


def count_cut(tokenizer, captions, max_windows: int) -> int:
    """How many of `captions` lose text at `max_windows` windows (each list entry counts)."""
    done: dict[str, bool] = {}
    for caption in captions:
        if caption not in done:
            done[caption] = caption_windows(tokenizer, caption, max_windows)[1]
    return sum(done[c] for c in captions)
