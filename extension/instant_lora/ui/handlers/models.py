"""The base-model list of section 2: what it shows (refreshed on page load and by Refresh), the
sentence under it when it is empty, and the download of a base model in a background thread that
any page can follow. Plain values in and out: no Gradio, no torch."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from ...errors import InstantLoraError

POLL_S = 0.5  # how often a following page gets the download's progress
NEWS_S = 10.0  # a page's poll announces a download that ended this recently (Gradio 3: see download_news)


@dataclass
class ModelsView:
    choices: list
    value: str | None
    message: str  # markdown under the list ("" when there is a checkpoint and no news)
    show_download: bool


def download_entry():
    from ...model_download import DEFAULT_MODEL, registry

    return registry()[DEFAULT_MODEL]


def download_label() -> str:
    entry = download_entry()
    return f"Download {entry.title} ({entry.size_text})"


def empty_message(host) -> str:
    """One sentence: the folder the app reads, the other places searched, what to do."""
    folder = Path(host.models_dir).absolute()
    places = host.search_places() if hasattr(host, "search_places") else []
    if not places:
        return f"No checkpoint found in `{folder}`: put an SD1.x, SD2.x or SDXL `.safetensors` file there and press Refresh."
    from ...model_sources import searched_summary

    also = searched_summary(places)
    # whole sentences, each one catalogue entry: a translation never has to split a sentence
    sentences = [f"No checkpoint found: put an SD1.x, SD2.x or SDXL `.safetensors` file into `{folder}` (the folder "
                 "this app reads) and press Refresh."]
    if host.can_download_models:
        sentences.append(f"Or press **{download_label()}** to download it.")
    if also:
        sentences.append(f"Also searched: {also}.")
    return " ".join(sentences)


def models_view(host, current: str | None = None, message: str = "") -> ModelsView:
    """The list, the entry to select (the current one if still listed), and the empty-list help."""
    choices = list(host.list_checkpoints())
    if current in choices:
        value = current
    else:
        value = host.default_checkpoint() if choices else None
    task = running_download(host)
    if task is not None and not message:
        message = task.message()
    if not choices and not message:
        message = empty_message(host)
    return ModelsView(choices, value, message, bool(host.can_download_models and (not choices or task is not None)))


# ---- the download, in a thread that outlives the page ----------------------------------------

class DownloadTask:
    def __init__(self, entry, folder: Path):
        self.entry, self.folder = entry, folder
        self.done, self.note = 0, ""
        self.path: Path | None = None
        self.error: Exception | None = None
        self._first: tuple | None = None
        self._rate = 0.0
        self.ended: float | None = None
        self.thread = threading.Thread(target=self._run, name="instant-lora-download", daemon=True)

    @property
    def finished(self) -> bool:
        return self.path is not None or self.error is not None

    def _progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self._first is None:
            self._first = (now, done)
        elif now > self._first[0]:
            self._rate = (done - self._first[1]) / (now - self._first[0])
        self.done = done

    def _status(self, text: str) -> None:
        self.note = text

    def _run(self) -> None:
        from ...model_download import download_model

        try:
            self.path = download_model(self.entry, self.folder, progress=self._progress, status=self._status).path
        except Exception as e:  # shown to the page that follows it
            self.error = e
        self.ended = time.monotonic()

    def message(self) -> str:
        from ...model_download import human_size

        from . import error_message

        e = self.entry
        if self.error is not None:
            return error_message(self.error)
        if self.path is not None:
            return f"Downloaded `{e.filename}` ({e.size_text}, checked) into `{self.folder.absolute()}`: selected as the base model."
        pct = 100.0 * self.done / e.size if e.size else 0.0
        rate = f", {human_size(self._rate)}/s" if self._rate > 0 else ""
        left = ""
        if self._rate > 0:
            seconds = int((e.size - self.done) / self._rate)
            left = f", about {seconds // 60} min {seconds % 60:02d} s left"
        note = f" ({self.note})" if self.note and not self.done else ""
        return (f"Downloading `{e.filename}` into `{self.folder.absolute()}`: {human_size(self.done)} of {e.size_text} "
                f"({pct:.0f}%){rate}{left}{note}. It goes on if you close the page; an interrupted download resumes.")


_TASKS: dict = {}
_TASKS_LOCK = threading.Lock()


def _key(host) -> str:
    return str(Path(host.models_dir).absolute())


def running_download(host) -> DownloadTask | None:
    task = _TASKS.get(_key(host))
    return task if task is not None and not task.finished else None


def start_download(host) -> DownloadTask:
    """The running download into this host's models folder, or a new one."""
    if not host.can_download_models:
        raise InstantLoraError("this host lists its own checkpoints", hint=f"put a checkpoint into {host.models_dir}")
    with _TASKS_LOCK:
        task = _TASKS.get(_key(host))
        if task is None or task.finished:
            task = DownloadTask(download_entry(), Path(host.models_dir))
            _TASKS[_key(host)] = task
            task.thread.start()
    return task


def label_of(host, path: Path) -> str | None:
    """The list's label for the file at `path`."""
    want = Path(path).resolve()
    for label in host.list_checkpoints():
        if Path(host.checkpoint_path(label)).resolve() == want:
            return label
    return None


def _final(host, task: DownloadTask, current: str | None) -> tuple:
    message = task.message()
    selected = label_of(host, task.path) if task.path is not None else current
    return message, models_view(host, selected, message=message)


def follow_download(host, current: str | None = None, poll_s: float = POLL_S, follow: bool = True):
    """Start (or join) the download and yield (message, view or None) while it runs; the last one
    carries the refreshed list with the new model selected (or the list as it was, on failure).
    follow=False: only the first message (the page's poll, download_news, shows the rest)."""
    try:
        task = start_download(host)
    except Exception as e:
        from . import error_message

        yield error_message(e), None
        return
    while not task.finished:
        yield task.message(), None
        if not follow:
            return
        task.thread.join(poll_s)
    yield _final(host, task, current)


def download_news(host, record: dict, current: str | None = None):
    """For a page that polls (Gradio 3, where a followed download would hold the one queue worker
    that every event of the app waits for): None when there is nothing new; (message, None) while
    a download runs; (message, view) once after it ended. `record` is the page's own, changed in place.
    A download that ended before the page opened is no news: that page's load already listed the
    file, and announcing it would change the selection its load made."""
    opened = record.setdefault("opened", time.monotonic())
    task = _TASKS.get(_key(host))
    if task is None or record.get("shown") is task:
        return None
    if task.finished and task.ended is not None and task.ended < opened:
        record["shown"] = task
        return None
    if not task.finished:
        return task.message(), None
    if task.ended is None or time.monotonic() - task.ended > NEWS_S:
        return None
    record["shown"] = task
    return _final(host, task, current)


def native_size(host, checkpoint: str | None) -> int | None:
    """The image size the chosen checkpoint's family was trained at (SD1 512, SD2 768-v 768, SDXL
    1024), read from its header; None when it cannot be told (no choice yet, unreadable file)."""
    from ...model_family import detect_family

    if not checkpoint or not host.knows_checkpoint(checkpoint):
        return None
    try:
        return detect_family(host.checkpoint_path(checkpoint)).default_resolution
    except (InstantLoraError, OSError, ValueError):
        return None
