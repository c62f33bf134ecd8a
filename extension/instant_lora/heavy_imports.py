"""diffusers / transformers / peft, imported by one thread at a time.

Their lazy top-level modules are not safe to initialise from two threads at once (one thread gets
"cannot import name ..." from a half-initialised module). The UI warms up in a background thread
while a training may start in another, so every entry point that needs them calls this first."""

from __future__ import annotations

import threading

_lock = threading.Lock()
_done = False
_clip_done = False


def import_sd_libraries() -> None:
    global _done
    if _done:
        return
    with _lock:
        if _done:
            return
        import peft.tuners.lora  # noqa: F401
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: F401
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer  # noqa: F401

        _done = True


def import_clip_library() -> None:
    """open_clip (which imports timm and transformers), under the same lock."""
    global _clip_done
    if _clip_done:
        return
    with _lock:
        if not _clip_done:
            import open_clip  # noqa: F401

            _clip_done = True
