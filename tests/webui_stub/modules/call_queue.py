"""modules.call_queue: `queue_lock` serialises generations (the WebUI's FIFOLock: acquire(blocking),
release, context manager). `wrap_gradio_gpu_call` holds it around a UI handler."""

import collections
import threading

from modules import record


class FIFOLock:
    def __init__(self):
        self._lock = threading.Lock()
        self._inner_lock = threading.Lock()
        self._pending_threads = collections.deque()

    def acquire(self, blocking=True):
        with self._inner_lock:
            if self._lock.acquire(False):
                record("queue_lock.acquire")
                return True
            if not blocking:
                return False
            release_event = threading.Event()
            self._pending_threads.append(release_event)
        release_event.wait()
        got = self._lock.acquire()
        record("queue_lock.acquire")
        return got

    def release(self):
        with self._inner_lock:
            if self._pending_threads:
                self._pending_threads.popleft().set()
            record("queue_lock.release")
            self._lock.release()

    def locked(self):
        return self._lock.locked()

    __enter__ = acquire

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.release()


queue_lock = FIFOLock()


def wrap_queued_call(func):
    def f(*args, **kwargs):
        with queue_lock:
            return func(*args, **kwargs)
    return f
