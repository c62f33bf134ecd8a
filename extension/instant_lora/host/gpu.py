"""One owner of the GPU per process: a training, the Test panel's renderer and the CLIP captioner
never hold it at the same time, in the standalone app as inside the WebUI."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from ..errors import InstantLoraError
from ..train.events import RunStopped

_lock = threading.Lock()
_owner: str | None = None
_owner_thread: int | None = None


def owner() -> str | None:
    """What holds the GPU now ("training 'my_lora'", "captioning", ...), or None."""
    return _owner


@contextmanager
def hold(job: str, *, wait: float = 0.0, should_stop=None):
    """Hold the GPU for `job`. Waits up to `wait` seconds for the current owner (polling
    `should_stop`), then refuses with a message naming it. Re-entrant within one thread."""
    global _owner, _owner_thread
    me = threading.get_ident()
    if _owner_thread == me:  # nested use by the same worker (a training's own samples)
        yield
        return
    deadline = time.monotonic() + max(0.0, wait)
    while not _lock.acquire(timeout=0.1):
        if should_stop is not None and should_stop():
            raise RunStopped("waiting")
        if time.monotonic() >= deadline:
            raise InstantLoraError(f"the GPU is busy: {_owner or 'another job'} is running",
                                   hint="wait for it to finish (or cancel it), then try again")
    _owner, _owner_thread = job, me
    try:
        yield
    finally:
        _owner, _owner_thread = None, None
        _lock.release()


@contextmanager
def holding(job: str, context):
    """`context` (a renderer, a captioner) entered while holding the GPU for `job`."""
    with hold(job), context as value:
        yield value
