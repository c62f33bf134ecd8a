"""The WebUI's "infotext": prompt and settings as text in a PNG chunk named `parameters`.

    a photo of sks dog <lora:sks:0.8>
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model: v1-5-pruned-emaonly

PNG Info and "Send to txt2img" in the WebUI read this back, so the text follows its layout: a
value holding `,`, `:` or a newline is written JSON-quoted, and DPM++ 2M Karras is written as
the WebUI 1.10 does (`Sampler: DPM++ 2M, Schedule type: Karras`).
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

from .settings import GenerationSettings

PNG_KEY = "parameters"
_PARAM = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def quote(value) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def format_infotext(prompt: str, settings: GenerationSettings, seed: int, model_name: str = "",
                    model_hash: str | None = None, extra: dict | None = None) -> str:
    sampler, schedule = settings.sampler, None
    if sampler == "DPM++ 2M Karras":
        sampler, schedule = "DPM++ 2M", "Karras"
    params = {"Steps": settings.steps, "Sampler": sampler, "Schedule type": schedule,
              "CFG scale": f"{settings.cfg_scale:g}", "Seed": seed, "Size": f"{settings.width}x{settings.height}",
              "Model hash": model_hash, "Model": model_name or None,
              "Clip skip": settings.clip_skip if settings.clip_skip > 1 else None}
    params.update(extra or {})
    lines = [prompt]
    if settings.negative_prompt:
        lines.append(f"Negative prompt: {settings.negative_prompt}")
    lines.append(", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None and v != ""))
    return "\n".join(lines)


def parse_infotext(text: str) -> tuple[str, str, dict]:
    """(prompt, negative prompt, {key: value as text}) -- the inverse of format_infotext."""
    lines = text.strip().split("\n")
    params: dict = {}
    if lines and len(_PARAM.findall(lines[-1])) >= 3:
        params = {k.strip(): _unquote(v.strip()) for k, v in _PARAM.findall(lines.pop())}
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    if params.get("Sampler") == "DPM++ 2M" and params.get("Schedule type") == "Karras":
        params["Sampler"] = "DPM++ 2M Karras"
    return "\n".join(prompt), "\n".join(negative), params


def png_bytes(image, infotext: str | None) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    if infotext:
        info.add_text(PNG_KEY, infotext)  # Pillow switches to an iTXt chunk for non-Latin-1 text
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_png(image, path, infotext: str | None) -> Path:
    """Write the PNG with its infotext; atomic, so a half-written image is never picked up."""
    from ..lora.kohya_file import atomic_write_bytes

    path = Path(path)
    atomic_write_bytes(path, png_bytes(image, infotext))
    return path
