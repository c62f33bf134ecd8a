"""Sample images while training: the reference trainer's prompt file, rendered with the training
model itself (no second copy) at fixed seeds, so each sample shows the LoRA at that step."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import InstantLoraError

# The reference trainer's --sample_sampler names -> ours.
SAMPLER_NAMES = {"ddim": "DDIM", "euler_a": "Euler a", "k_euler_a": "Euler a", "dpmsolver++": "DPM++ 2M Karras",
                 "k_dpmpp_2m_karras": "DPM++ 2M Karras"}


@dataclass(frozen=True)
class SamplePrompt:
    prompt: str
    negative: str = ""
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    cfg: float = 7.5
    steps: int = 20


def parse_prompt_line(line: str) -> SamplePrompt | None:
    """`a prompt --n negative --w 512 --h 512 --d 42 --l 7.5 --s 28` (the reference's syntax)."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    head, *opts = line.split(" --")
    values: dict = {"prompt": head.strip()}
    keys = {"n": ("negative", str), "w": ("width", int), "h": ("height", int), "d": ("seed", int), "l": ("cfg", float),
            "s": ("steps", int)}
    for opt in opts:
        key, _, value = opt.partition(" ")
        if key not in keys:
            continue  # other options of the reference (e.g. --ss) are ignored
        name, kind = keys[key]
        try:
            values[name] = kind(value.strip())
        except ValueError:
            raise InstantLoraError(f"sample prompt option --{key} '{value.strip()}' is not a {kind.__name__}: {line}") from None
    return SamplePrompt(**values)


def parse_prompt_text(text: str) -> list[SamplePrompt]:
    """Prompts given as text (the app, REST): one per line, the file's syntax; never a path."""
    return [p for p in (parse_prompt_line(x) for x in str(text or "").splitlines()) if p]


def read_prompt_file(path: str | Path) -> list[SamplePrompt]:
    path = Path(path)
    if not path.is_file():
        raise InstantLoraError(f"--sample_prompts {path} does not exist", hint="a .txt file with one prompt per line")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise InstantLoraError(f"--sample_prompts {path} cannot be read as UTF-8 text ({e})", path=path) from e
    prompts = parse_prompt_text(text)
    if not prompts:
        raise InstantLoraError(f"--sample_prompts {path} has no prompts", hint="one prompt per line; # starts a comment")
    return prompts


def sampler_name(name: str) -> str:
    from ..sample.settings import normalize_sampler

    return normalize_sampler(SAMPLER_NAMES.get(name.strip().lower(), name))


def render_samples(model, prompts: list[SamplePrompt], *, sampler: str, width: int, height: int, seed: int,
                   clip_skip: int | None, folder: Path, stem: str) -> list[tuple[str, Path]]:
    """[(prompt, png path)] for each prompt at its fixed seed (prompt i: its --d, else seed + i)."""
    from ..sample.generate import sample_images
    from ..sample.infotext import save_png
    from ..sample.settings import GenerationSettings

    out = []
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(prompts):
        settings = GenerationSettings(negative_prompt=p.negative, steps=p.steps, cfg_scale=p.cfg, sampler=sampler,
                                      width=p.width or width, height=p.height or height, clip_skip=clip_skip or 1)
        image = sample_images(model, [p.prompt], p.seed if p.seed is not None else seed + i, settings)[0]
        path = folder / f"{stem}_{i:02d}.png"
        save_png(image, path, image.info.get("parameters", p.prompt))
        out.append((p.prompt, path))
    return out
