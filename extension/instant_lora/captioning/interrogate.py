"""Caption a folder: rank label banks against each image's CLIP embedding, write <stem><ext>.

Score = cosine of L2-normalised image and label embeddings (no softmax: a label's score does not
depend on which other labels are in its bank). Per category the best labels above the threshold
are kept, then compose.py de-duplicates them and fits the caption into 75 tokens.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from ..errors import InstantLoraError
from .banks import LabelBank, load_banks
from .compose import Candidate, assemble, pick_labels, split_tags
from .embed_cache import LabelEmbeddingCache
from .options import CaptionOptions

log = logging.getLogger(__name__)
_run_lock = threading.Lock()
Progress = Callable[[int, int, float], None]  # (images done, images to do, images per second)
_EXTRA_CANDIDATES = 8  # ranked beyond top_k so that de-duplication still leaves top_k labels


@dataclass
class CaptionedImage:
    image: str
    caption_file: str
    caption: str
    action: str  # "new" | "overwritten" | "appended"


@dataclass
class CaptionReport:
    folder: str
    mode: str
    written: List[CaptionedImage] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)        # kept as they were (caption exists, or nothing new)
    unreadable: List[Tuple[str, str]] = field(default_factory=list)  # (path, why): images or caption files
    no_labels: List[str] = field(default_factory=list)      # no label passed the threshold: nothing written
    model: str = ""
    labels: int = 0                 # phrases in the banks used
    labels_encoded: int = 0         # of which encoded in this run (0 when the cache was warm)
    label_seconds: float = 0.0
    model_seconds: float = 0.0
    seconds: float = 0.0
    images_per_s: float = 0.0

    def summary(self) -> str:
        lines = [f"Captions in {self.folder} ({self.mode}): {len(self.written)} written, "
                 f"{len(self.skipped)} left as they were, {len(self.unreadable)} unreadable"
                 + (f", {len(self.no_labels)} without any label above the threshold" if self.no_labels else "")]
        if self.model:
            lines.append(f"  model: {self.model} (loaded in {self.model_seconds:.1f} s)")
            cached = self.labels - self.labels_encoded
            lines.append(f"  labels: {self.labels} ({cached} from cache, {self.labels_encoded} encoded "
                         f"in {self.label_seconds:.1f} s); {self.images_per_s:.2f} images/s")
        lines += [f"  unreadable: {path}: {why}" for path, why in self.unreadable]
        return "\n".join(lines)


class Interrogator:
    """Label embeddings for a set of banks, and the per-image ranking against them."""

    def __init__(self, clip, banks: List[LabelBank], options: CaptionOptions, cache_root: Path):
        import torch

        self.clip, self.options = clip, options
        self.banks = banks
        phrases = [p for bank in banks for p in bank.phrases]
        cache = LabelEmbeddingCache(cache_root, clip.identity)
        start = time.perf_counter()
        vectors, self.encoded = cache.lookup(phrases, self._encode_texts)
        self.seconds = time.perf_counter() - start
        self.n_phrases = len(dict.fromkeys(phrases))  # a phrase in two banks is encoded once

        table = torch.from_numpy(vectors)
        self.per_bank = []  # (bank, phrase vectors on device, phrase->label index, label row offset)
        label_rows = []
        offset = 0
        for bank in banks:
            n = len(bank.phrases)
            vecs = table[offset:offset + n]
            group = torch.tensor(bank.phrase_label, dtype=torch.long)
            first = [bank.phrase_label.index(i) for i in range(len(bank.labels))]  # primary spellings
            self.per_bank.append((bank, vecs.to(clip.device), group.to(clip.device), len(label_rows)))
            label_rows += [vecs[i] for i in first]
            offset += n
        self.label_vectors = torch.stack(label_rows) if label_rows else torch.zeros(0)

    def _encode_texts(self, texts: List[str]):
        from .clip_model import encode_texts

        log.info("Encoding %d labels with %s (once per model; cached for later runs)...",
                 len(texts), self.clip.description)
        shown = [0]

        def on_batch(done: int, total: int):  # about ten lines, however many labels
            if done * 10 // total > shown[0]:
                shown[0] = done * 10 // total
                log.info("  labels encoded: %d/%d", done, total)

        return encode_texts(self.clip, texts, on_batch=on_batch)

    def similarity(self, a: int, b: int) -> float:
        return float(self.label_vectors[a] @ self.label_vectors[b])

    def rank(self, images) -> List[Dict[str, List[Candidate]]]:
        """Per image: {category: candidates above threshold, best first}."""
        import torch

        with torch.inference_mode():
            feats = self.clip.model.encode_image(images.to(self.clip.device, self.clip.dtype)).float()
            feats = torch.nn.functional.normalize(feats, dim=-1)
            results: List[Dict[str, List[Candidate]]] = [{} for _ in range(len(feats))]
            for bank, vecs, group, row0 in self.per_bank:
                phrase_scores = feats @ vecs.T  # [B, phrases]
                # A label scores as its best-matching spelling.
                scores = torch.full((len(feats), len(bank.labels)), -2.0, device=feats.device)
                scores.scatter_reduce_(1, group.expand_as(phrase_scores), phrase_scores, reduce="amax")
                k = self.options.top_k_for(bank.category, bank.default_top_k)
                n = min(len(bank.labels), k + _EXTRA_CANDIDATES)
                values, index = scores.topk(n, dim=1)
                threshold = self.options.threshold_for(bank.category)
                for b, (vals, idxs) in enumerate(zip(values.tolist(), index.tolist())):
                    results[b][bank.category] = [Candidate(bank.category, bank.labels[i], v, row0 + i)
                                                 for v, i in zip(vals, idxs) if v >= threshold]
        return results

    def caption(self, ranked: Dict[str, List[Candidate]], existing: Optional[str]) -> str:
        opts = self.options
        order = [bank.category for bank, *_ in self.per_bank]
        top_k = {bank.category: opts.top_k_for(bank.category, bank.default_top_k) for bank in self.banks}
        exclude = split_tags(existing) if existing else ()
        picked = pick_labels(ranked, order, top_k, self.similarity, opts.dedup_threshold, exclude)
        return assemble(opts.prefix, picked, order, opts.max_tokens, existing)


def _todo(folder, options: CaptionOptions, report: CaptionReport) -> List[Tuple[Path, Optional[str]]]:
    """(image, existing caption or None) for every image this mode will caption."""
    from ..dataset import read_caption, scan_dataset

    scan = scan_dataset(folder, options.caption_extension, check_images=False)
    report.folder = str(scan.root)
    report.unreadable += [(str(s.path), s.reason) for s in scan.skipped]
    todo = []
    for item in scan.items:
        try:
            existing = read_caption(item.path, options.caption_extension)
        except InstantLoraError as exc:  # never overwrite a caption file we could not read
            report.unreadable.append((str(item.path.with_suffix(options.caption_extension)), exc.message))
            continue
        has_caption = bool(existing and existing.strip())
        if options.mode == "fill" and has_caption:
            report.skipped.append(str(item.path))
        else:
            todo.append((item.path, existing if has_caption else None))
    return todo


def _decoded(paths: List[Path], preprocess, workers: int):
    """Yield (path, tensor or None, error) in order, decoding ahead on a few threads."""
    from ..dataset import load_image

    def work(path: Path):
        try:
            return path, preprocess(load_image(path)), None
        except InstantLoraError as exc:
            return path, None, getattr(exc, "reason", exc.message)
        except (OSError, ValueError) as exc:
            return path, None, str(exc)

    if workers <= 0:
        yield from map(work, paths)
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()
        feed = iter(paths)
        for path in feed:  # keep a bounded window in flight: memory stays flat on huge folders
            pending.append(pool.submit(work, path))
            if len(pending) >= workers * 8:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _caption_path(image: Path, ext: str) -> Path:
    return image.with_name(image.stem + ext)


def _run(todo, options: CaptionOptions, report: CaptionReport, progress: Optional[Progress]) -> None:
    import torch

    from .clip_model import load_clip
    from .weights import cache_root

    banks = [b for b in load_banks(options.label_banks, options.banks, options.categories)
             if options.top_k_for(b.category, b.default_top_k) > 0]
    start = time.perf_counter()
    clip = load_clip(options)
    report.model, report.model_seconds = clip.description, time.perf_counter() - start
    interrogator = Interrogator(clip, banks, options, cache_root(options))
    report.labels, report.labels_encoded = interrogator.n_phrases, interrogator.encoded
    report.label_seconds = interrogator.seconds

    batch_size = options.batch_size or (32 if clip.device.type == "cuda" else 8)
    existing = dict(todo)
    done, start = 0, time.perf_counter()
    batch: List[Tuple[Path, object]] = []

    def flush():
        nonlocal done
        if batch:
            ranked = interrogator.rank(torch.stack([t for _, t in batch]))
            for (path, _), per_category in zip(batch, ranked):
                old = existing[path]
                text = interrogator.caption(per_category, old if options.mode == "append" else None)
                if options.mode == "append" and old is not None and text == old:
                    report.skipped.append(str(path))
                    continue
                if not text:  # no trigger and no label cleared the threshold: an empty file helps no one
                    report.no_labels.append(str(path))
                    continue
                target = _caption_path(path, options.caption_extension)
                action = "new" if old is None else ("appended" if options.mode == "append" else "overwritten")
                try:
                    target.write_text(text, encoding="utf-8")
                except OSError as exc:  # read-only file or full disk: report it, caption the rest
                    report.unreadable.append((str(target), f"can't write caption: {exc.strerror or exc}"))
                    continue
                report.written.append(CaptionedImage(str(path), str(target), text, action))
            done += len(batch)
            batch.clear()
        if progress is not None:
            elapsed = time.perf_counter() - start
            progress(done + len(bad), len(todo), done / elapsed if elapsed > 0 else 0.0)

    bad: List[Path] = []
    if progress is not None:
        progress(0, len(todo), 0.0)  # the model is loaded: the UI can show 0/N now
    for path, tensor, error in _decoded([p for p, _ in todo], clip.preprocess, options.workers):
        if tensor is None:
            bad.append(path)
            report.unreadable.append((str(path), error))
            continue
        batch.append((path, tensor))
        if len(batch) >= batch_size:
            flush()
    flush()
    elapsed = time.perf_counter() - start
    report.images_per_s = done / elapsed if elapsed > 0 else 0.0


def caption_folder(folder, options: Optional[CaptionOptions] = None,
                   progress: Optional[Progress] = None) -> CaptionReport:
    """Caption the images of a training folder (itself and its N_name subfolders), as the trainer sees them.

    Writes `<image stem><caption_extension>` beside each image per `options.mode`; unreadable images
    are skipped and listed in the report. The CLIP model is freed afterwards unless
    `options.keep_model_loaded`. Raises InstantLoraError for problems the user must fix.
    """
    from ..heavy_imports import import_clip_library
    from .clip_model import free_clip_model

    options = options or CaptionOptions()
    options.validate()
    import_clip_library()  # not concurrently with another thread's first diffusers/transformers import
    if options.prefix:
        from .compose import count_tokens

        if count_tokens(options.prefix) > options.max_tokens:
            raise InstantLoraError(f"The caption prefix is longer than {options.max_tokens} tokens.",
                                   hint="Use a short trigger word.")
    report = CaptionReport(folder=str(folder), mode=options.mode)
    begin = time.perf_counter()
    # One run at a time: a second click in the UI waits instead of sharing (or freeing) the model.
    with _run_lock:
        todo = _todo(folder, options, report)
        try:
            if todo:  # nothing to caption: the model is never loaded
                _run(todo, options, report, progress)
        finally:
            if not options.keep_model_loaded:
                free_clip_model()
    report.seconds = time.perf_counter() - begin
    return report
