"""Giving memory back after a training, a test grid or a dropped model, and measuring it.

Inside the WebUI the process lives for days: what a training or a Test panel grid leaves behind
stays in its resident memory unless it is handed back. Three things hold it:

- Python objects in reference cycles (models, optimizers, graphs) until the cycle collector runs;
- PyTorch's CUDA caching allocator, which keeps freed blocks reserved for the next allocation;
- glibc's malloc, which keeps freed heap pages (in every arena a thread used) instead of returning
  them to the system. `malloc_trim(0)` returns what is free at the top of each heap and, since
  glibc 2.8, the free whole pages inside them.

release_memory() does all three where they apply; it is cheap enough (tens of milliseconds) to
call at the end of every such job. Nothing here imports torch.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import os
import sys


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's malloc_trim, or None (another OS, or a C library without it such as musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_memory() -> None:
    """Collect garbage, empty PyTorch's CUDA cache (only if torch is already imported and CUDA is
    in use) and return free heap pages to the system (glibc only; elsewhere a no-op)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # does nothing while CUDA is not initialised
        except Exception:  # a broken CUDA setup must not fail the caller's job
            pass
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def rss_bytes() -> int:
    """Resident memory of this process in bytes: /proc/self/statm (Linux), else psutil, else
    resource's ru_maxrss, which is the *peak* so far rather than the current size (0 if none)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) * (1 if sys.platform == "darwin" else 1024)  # bytes on macOS, KiB elsewhere
    except Exception:
        return 0
