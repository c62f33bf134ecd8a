"""modules.processing: StableDiffusionProcessingTxt2Img and process_images as callers see them in
the WebUI 1.10 (a dataclass with `scheduler`, override_settings applied for one call and the
options restored afterwards, a checkpoint override loading that checkpoint, `close()`).

No diffusion here: the image is one flat colour derived from everything a real image depends on
(prompt without tags, negative prompt, seed, sampler, schedule, steps, CFG, size, the loaded
checkpoint, and each <lora:name:w> found in the Lora folder by file stem with its weight), so the
tests can tell images apart and compare them. As the WebUI's Lora loader does, an unknown name is
printed ("Networks not found") and the image made without it. The infotext follows the WebUI's.
`ON_PROCESS` hooks run inside each call (a test presses Interrupt there)."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from typing import Any

from modules import record, sd_models, shared

ON_PROCESS: list = []
_LORA = re.compile(r"<lora:([^:>]+):([^:>]+)(?::[^>]*)?>")


@dataclass(repr=False)
class StableDiffusionProcessing:
    sd_model: object = None
    outpath_samples: str = None
    outpath_grids: str = None
    prompt: str = ""
    negative_prompt: str = ""
    styles: list = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0
    sampler_name: str = None
    scheduler: str = None
    batch_size: int = 1
    n_iter: int = 1
    steps: int = 50
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    override_settings: dict[str, Any] = None
    override_settings_restore_afterwards: bool = True
    disable_extra_networks: bool = False
    closed: bool = field(default=False, init=False)

    def __post_init__(self):
        self.override_settings = self.override_settings or {}

    def close(self):
        self.closed = True


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75


class Processed:
    def __init__(self, p, images, infotexts):
        self.images, self.infotexts = images, infotexts
        self.info = infotexts[0] if infotexts else ""
        self.seed, self.prompt = p.seed, p.prompt


def _lora_files() -> dict[str, str]:
    found = {}
    for root, _, files in os.walk(shared.cmd_opts.lora_dir):
        for f in sorted(files):
            if f.endswith(".safetensors"):
                found.setdefault(f[: -len(".safetensors")], os.path.join(root, f))
    return found


def process_images(p: StableDiffusionProcessing) -> Processed:
    from PIL import Image

    record(("processing.process_images", p.prompt, p.seed, p.sampler_name, p.scheduler, dict(p.override_settings)))
    opts = shared.opts.data
    stored = {k: opts.get(k) for k in p.override_settings}
    try:
        for k, v in p.override_settings.items():
            opts[k] = v
            if k == "sd_model_checkpoint":
                info = sd_models.checkpoint_aliases.get(v) or sd_models.checkpoints_list.get(v)
                loaded = getattr(sd_models.model_data.sd_model, "sd_checkpoint_info", None)
                if info is not None and info is not loaded:
                    sd_models.load_model(info)
        shared.state.job_count = max(shared.state.job_count, 1)
        for hook in ON_PROCESS:
            hook(p)
        files, used, missing = _lora_files(), [], []
        for name, weight in _LORA.findall(p.prompt):
            if name in files and not p.disable_extra_networks:
                with open(files[name], "rb") as fh:
                    used.append((name, float(weight), hashlib.sha256(fh.read()).hexdigest()[:12]))
            else:
                missing.append(name)
        if missing:
            print(f"Networks not found: {', '.join(missing)}")
        text = _LORA.sub("", p.prompt)
        model = sd_models.model_data.sd_model.sd_checkpoint_info
        key = repr((text, p.negative_prompt, p.seed, p.sampler_name, p.scheduler, p.steps, p.cfg_scale, p.width, p.height,
                    model.title, [(n, w, h) for n, w, h in used if w != 0]))
        colour = tuple(hashlib.sha256(key.encode()).digest()[:3])
        image = Image.new("RGB", (p.width, p.height), colour)
        params = {"Steps": p.steps, "Sampler": p.sampler_name, "Schedule type": p.scheduler, "CFG scale": p.cfg_scale,
                  "Seed": p.seed, "Size": f"{p.width}x{p.height}", "Model": model.name_for_extra,
                  "Lora hashes": '"' + ", ".join(f"{n}: {h}" for n, _, h in used) + '"' if used else None,
                  "Version": "v1.10.1"}
        lines = [p.prompt] + ([f"Negative prompt: {p.negative_prompt}"] if p.negative_prompt else [])
        lines.append(", ".join(f"{k}: {v}" for k, v in params.items() if v not in (None, "")))
        shared.state.nextjob()
        return Processed(p, [image], ["\n".join(lines)])
    finally:
        if p.override_settings_restore_afterwards:
            opts.update(stored)  # the options only: a checkpoint loaded for the call stays loaded
