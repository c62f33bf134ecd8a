"""The Test panel inside the WebUI: images made by the WebUI's own txt2img processing, so its
samplers, its Lora loader and its checkpoint make them -- what the grid shows is what the same
prompt gives in txt2img.

One session is one image or one grid: it waits for a running generation, then holds the WebUI's
queue lock (txt2img waits meanwhile, as behind any generation), shows the job in `shared.state`,
and stops at the Interrupt button. Imports of the WebUI's `modules` happen inside the calls.

The infotext of a cell must keep its `<lora:...>` tags, or "Send to txt2img" pastes the prompt
without the LoRA. In the WebUI 1.10 and Forge 2, process_images_inner (modules/processing.py)
cuts the extra-network tags out of each batch's `p.prompts` (p.parse_extra_network_prompts())
and writes the images' infotexts from `p.prompts`; it puts the full prompts back only inside
`if p.scripts is not None:`, i.e. when txt2img or the API gave `p` the script runner and its
arguments. We do not: those arguments belong to the txt2img form (its always-on scripts would run
with whatever we passed). So the cell's infotext comes from `Processed.infotext(p, i)`, which
writes the same text from `all_prompts` (as the WebUI writes params.txt); a fork without it gets
the image's infotext with the prompt part replaced by the prompt we asked for.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from contextlib import contextmanager

from ...errors import InstantLoraError
from ...sample.tags import parse_prompt

# Our sampler names -> (WebUI >= 1.9 sampler, its "Schedule type"). Before 1.9 the schedule was
# part of the sampler's name ("DPM++ 2M Karras") and processing had no `scheduler` field.
WEBUI_SAMPLERS = {"Euler a": ("Euler a", "Automatic"), "DPM++ 2M Karras": ("DPM++ 2M", "Karras"),
                  "DDIM": ("DDIM", "Automatic")}


def _init_fields(cls) -> set[str]:
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls) if f.init}
    return set(inspect.signature(cls).parameters)


# An extra-network tag as the WebUI's parser finds it (modules/extra_networks.py re_extra_net).
_EXTRA_NETWORK_TAG = re.compile(r"<\w+:[^>]+>")


def _keeps_tags(infotext: str, prompt: str) -> bool:
    return all(tag in infotext for tag in _EXTRA_NETWORK_TAG.findall(prompt))


def _with_prompt(infotext: str, prompt: str) -> str:
    """`infotext` with its prompt part (the lines before "Negative prompt:" or, without one, before
    the parameters line) replaced by `prompt`."""
    lines = infotext.split("\n")
    negative = next((i for i, line in enumerate(lines) if line.startswith("Negative prompt:")), None)
    rest = lines[negative:] if negative is not None else lines[-1:] if len(lines) > 1 else []
    return "\n".join([prompt, *rest])


def infotext_with_tags(p, processed, prompt_with_tags: str, index: int = 0) -> str:
    """Image `index`'s infotext as txt2img writes it: with the prompt's `<lora:...>` tags (see the
    module docstring for why the WebUI drops them from a processing object without scripts)."""
    infotexts = getattr(processed, "infotexts", None) or [getattr(processed, "info", "") or ""]
    written = infotexts[index] if index < len(infotexts) else infotexts[0]
    if _keeps_tags(written, prompt_with_tags):
        return written
    rewrite = getattr(processed, "infotext", None)  # A1111 1.x and Forge: create_infotext over all_prompts
    if callable(rewrite):
        try:
            text = rewrite(p, index)
        except Exception:  # a fork with another signature: fall through
            text = None
        if isinstance(text, str) and _keeps_tags(text, prompt_with_tags):
            return text
    return _with_prompt(written, prompt_with_tags)


def processing_kwargs(cls, prompt: str, seed: int, settings, checkpoint_title: str | None) -> dict:
    """Arguments for the WebUI's StableDiffusionProcessingTxt2Img: one image, nothing saved to the
    outputs folder, settings overridden for this image only (restored afterwards)."""
    fields = _init_fields(cls)
    sampler, schedule = WEBUI_SAMPLERS[settings.sampler]
    kwargs = dict(prompt=prompt, negative_prompt=settings.negative_prompt, seed=int(seed), subseed=-1, subseed_strength=0,
                  sampler_name=sampler, batch_size=1, n_iter=1, steps=settings.steps, cfg_scale=settings.cfg_scale,
                  width=settings.width, height=settings.height, do_not_save_samples=True, do_not_save_grid=True,
                  override_settings_restore_afterwards=True)
    if "scheduler" in fields:
        kwargs["scheduler"] = schedule
    else:
        kwargs["sampler_name"] = settings.sampler
    overrides = {}
    if checkpoint_title:
        overrides["sd_model_checkpoint"] = checkpoint_title  # loaded once; the next txt2img goes back by itself
    if settings.clip_skip > 1:
        overrides["CLIP_stop_at_last_layers"] = settings.clip_skip
    kwargs["override_settings"] = overrides
    return kwargs


class WebUIRenderer:
    """render(prompt_with_tags, seed, settings) -> PIL image through modules.processing. The
    image carries the WebUI's own infotext with the prompt's tags (what "Send to txt2img" pastes)."""

    def __init__(self, host, checkpoint_info=None):
        from ...sample.lora_files import LoraLibrary

        self.host = host
        self.info = checkpoint_info  # None: the checkpoint the WebUI has loaded
        # One scan of the Lora folder per host, not per click; find() rescans when a name is new.
        if getattr(host, "_lora_library", None) is None or host._lora_library.folder != host.lora_dir:
            host._lora_library = LoraLibrary(host.lora_dir)
        self.loras = host._lora_library

    @property
    def _override_title(self) -> str | None:
        if self.info is None or self.info.title == self.host.loaded_checkpoint():
            return None  # already loaded: no override, no reload
        return self.info.title

    @property
    def model_name(self) -> str:
        info = self.info or getattr(getattr(self.host.sd_models.model_data, "sd_model", None), "sd_checkpoint_info", None)
        return str(getattr(info, "name_for_extra", "") or "")

    @property
    def model_hash(self) -> str | None:
        info = self.info or getattr(getattr(self.host.sd_models.model_data, "sd_model", None), "sd_checkpoint_info", None)
        return getattr(info, "shorthash", None)

    def check_prompt(self, prompt: str) -> None:
        """Unknown LoRA names fail here, naming the closest match: the WebUI's loader would only
        print "Networks not found" to its console and draw the image without them."""
        for tag in parse_prompt(prompt).loras:
            self.loras.find(tag.name)

    def __call__(self, prompt_with_tags: str, seed: int, settings, progress=None):
        from modules import processing

        settings = settings.checked()
        self.check_prompt(prompt_with_tags)
        state = self.host.shared.state
        if state.interrupted:
            raise InstantLoraError("interrupted (the Interrupt button)", hint="run the test again when you are ready")
        cls = processing.StableDiffusionProcessingTxt2Img
        p = cls(**processing_kwargs(cls, prompt_with_tags, seed, settings, self._override_title))
        try:
            processed = processing.process_images(p)
            if state.interrupted:
                raise InstantLoraError("interrupted (the Interrupt button)", hint="run the test again when you are ready")
            if not getattr(processed, "images", None):
                raise InstantLoraError("the WebUI returned no image", hint="its console says why")
            image = processed.images[0]
            image.info["parameters"] = infotext_with_tags(p, processed, prompt_with_tags)  # before close(): it reads p
        finally:
            p.close()
        return image


@contextmanager
def webui_session(host, checkpoint_label: str | None, job: str = "Instant LoRA test"):
    """A WebUIRenderer while holding the WebUI's queue lock, the job shown in shared.state."""
    info = host._match(checkpoint_label) if checkpoint_label else None
    if checkpoint_label and info is None:
        raise InstantLoraError(f"checkpoint '{checkpoint_label}' is not in the WebUI's list",
                               hint="press the refresh button next to the checkpoint list "
                                    "(REST: GET /instant-lora/v1/checkpoints lists the titles)")
    try:
        with host.exclusive(job):  # after a running generation; txt2img waits for us
            yield WebUIRenderer(host, info)
    finally:
        from ...memory import release_memory

        release_memory()  # after the lock: txt2img need not wait for it
