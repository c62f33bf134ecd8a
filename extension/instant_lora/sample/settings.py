"""What one test image is made with (besides prompt and seed), and the sampler names users know."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, replace

from ..errors import InstantLoraError

# The WebUI's names. diffusers equivalents: Euler a = EulerAncestralDiscreteScheduler,
# DPM++ 2M Karras = DPMSolverMultistepScheduler(use_karras_sigmas=True), DDIM = DDIMScheduler.
SAMPLERS = ("Euler a", "DPM++ 2M Karras", "DDIM")
_ALIASES = {"euler_a": "Euler a", "euler a": "Euler a", "euler_ancestral": "Euler a",
            "dpm++ 2m karras": "DPM++ 2M Karras", "dpmpp_2m_karras": "DPM++ 2M Karras", "ddim": "DDIM"}


def normalize_sampler(name: str) -> str:
    """'euler_a' / 'Euler a' -> 'Euler a'; unknown names raise, naming the closest one."""
    if name in SAMPLERS:
        return name
    found = _ALIASES.get(name.strip().lower())
    if found:
        return found
    close = difflib.get_close_matches(name, SAMPLERS, n=1, cutoff=0.3)
    raise InstantLoraError(f"unknown sampler '{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""),
                           hint="choose one of: " + ", ".join(SAMPLERS))


MAX_SIDE = 4096  # pixels; a bigger image would exhaust memory before it is refused anywhere else


@dataclass(frozen=True)
class GenerationSettings:
    negative_prompt: str = ""
    steps: int = 20
    cfg_scale: float = 7.0
    sampler: str = "Euler a"
    width: int = 512
    height: int = 512
    clip_skip: int = 1  # the WebUI's meaning: 1 = last layer, 2 = the one before

    def checked(self) -> "GenerationSettings":
        """A copy with the sampler name normalized; raises for values that cannot work."""
        problems = []
        if not 1 <= int(self.steps) <= 1000:
            problems.append(f"steps = {self.steps} must be 1-1000")
        if not math.isfinite(float(self.cfg_scale)) or not 0 <= float(self.cfg_scale) <= 100:
            problems.append(f"CFG scale = {self.cfg_scale} must be a number from 0 to 100")
        for label, v in (("width", self.width), ("height", self.height)):
            if int(v) < 8 or int(v) % 8 or int(v) > MAX_SIDE:
                problems.append(f"{label} = {v} must be a multiple of 8 from 8 to {MAX_SIDE}"
                                + (f" (e.g. {max(8, round(int(v) / 8) * 8)})" if 8 <= int(v) <= MAX_SIDE else ""))
        if not 1 <= int(self.clip_skip) <= 12:
            problems.append(f"clip skip = {self.clip_skip} must be 1-12")
        if problems:
            raise InstantLoraError("invalid generation settings: " + "; ".join(problems))
        return replace(self, sampler=normalize_sampler(self.sampler), steps=int(self.steps), width=int(self.width),
                       height=int(self.height), clip_skip=int(self.clip_skip), cfg_scale=float(self.cfg_scale))
