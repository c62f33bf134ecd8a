"""modules.processing: StableDiffusionProcessingTxt2Img and process_images as callers see them in
the WebUI 1.10 (a dataclass with `scheduler`, override_settings applied for one call and the
options restored afterwards, a checkpoint override loading that checkpoint, `close()`).

No diffusion here: the image is one flat colour derived from everything a real image depends on
(prompt without tags, negative prompt, seed, sampler, schedule, steps, CFG, size, the loaded
checkpoint, and each <lora:name:w> found in the Lora folder by file stem with its weight), so the
tests can tell images apart and compare them. As the WebUI's Lora loader does, an unknown name is
printed ("Networks not found") and the image made without it.

The prompt and the infotext follow process_images_inner and create_infotext of 1.10 (Forge 2 has
the same code): each batch's `p.prompts` go through `p.parse_extra_network_prompts()`, which cuts
the `<lora:...>` tags out (extra_networks.parse_prompts) before the networks are activated and the
text is encoded. Only when `p.scripts` is set (txt2img and the API give it the script runner) does
processing put the batch's full prompts back into `p.prompts` (after `scripts.postprocess_batch`),
and the images' infotexts are written from `p.prompts`: without scripts they have no tags.
`Processed.infotext(p, i)` writes from `all_prompts`, which keep them (as params.txt is written).
`ON_PROCESS` hooks run inside each call (a test presses Interrupt there)."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from modules import extra_networks, infotext_utils, record, sd_models, shared

ON_PROCESS: list = []

# The WebUI's defaults for the options processing reads here.
_DEFAULTS = {"add_model_hash_to_info": True, "add_model_name_to_info": True, "add_version_to_infotext": True,
             "CLIP_stop_at_last_layers": 1, "enable_pnginfo": True}


def _opt(key):
    return shared.opts.data.get(key, _DEFAULTS.get(key))


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
    extra_generation_params: dict[str, Any] = None
    override_settings: dict[str, Any] = None
    override_settings_restore_afterwards: bool = True
    disable_extra_networks: bool = False

    # In the WebUI `scripts` / `script_args` are properties over these; setting both runs the
    # runner's setup_scrips(p).
    scripts_value: object = field(default=None, init=False)
    script_args_value: list = field(default=None, init=False)
    scripts_setup_complete: bool = field(default=False, init=False)
    is_api: bool = field(default=False, init=False)

    all_prompts: list = field(default=None, init=False)
    all_negative_prompts: list = field(default=None, init=False)
    all_seeds: list = field(default=None, init=False)
    all_subseeds: list = field(default=None, init=False)
    iteration: int = field(default=0, init=False)
    main_prompt: str = field(default=None, init=False)
    main_negative_prompt: str = field(default=None, init=False)
    prompts: list = field(default=None, init=False)
    negative_prompts: list = field(default=None, init=False)
    seeds: list = field(default=None, init=False)
    subseeds: list = field(default=None, init=False)
    extra_network_data: dict = field(default=None, init=False)
    sd_model_name: str = field(default=None, init=False)
    sd_model_hash: str = field(default=None, init=False)
    closed: bool = field(default=False, init=False)  # instrumentation: close() was called

    def __post_init__(self):
        self.styles = self.styles or []
        self.extra_generation_params = self.extra_generation_params or {}
        self.override_settings = self.override_settings or {}
        self.script_args = self.script_args or {}
        self.active_loras = []

    @property
    def scripts(self):
        return self.scripts_value

    @scripts.setter
    def scripts(self, value):
        self.scripts_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    @property
    def script_args(self):
        return self.script_args_value

    @script_args.setter
    def script_args(self, value):
        self.script_args_value = value
        if self.scripts_value and self.script_args_value and not self.scripts_setup_complete:
            self.setup_scripts()

    def setup_scripts(self):
        self.scripts_setup_complete = True
        self.scripts.setup_scrips(self, is_ui=not self.is_api)

    def setup_prompts(self):
        self.all_prompts = self.prompt if isinstance(self.prompt, list) else self.batch_size * self.n_iter * [self.prompt]
        negative = self.negative_prompt
        self.all_negative_prompts = negative if isinstance(negative, list) else self.batch_size * self.n_iter * [negative]
        self.main_prompt = self.all_prompts[0]
        self.main_negative_prompt = self.all_negative_prompts[0]

    def parse_extra_network_prompts(self):
        self.prompts, self.extra_network_data = extra_networks.parse_prompts(self.prompts)

    def get_token_merging_ratio(self, for_hr=False):
        return 0

    def close(self):
        self.closed = True


@dataclass(repr=False)
class StableDiffusionProcessingTxt2Img(StableDiffusionProcessing):
    enable_hr: bool = False
    denoising_strength: float = 0.75


class Processed:
    def __init__(self, p, images_list, seed=-1, info="", subseed=None, all_prompts=None, all_negative_prompts=None,
                 all_seeds=None, all_subseeds=None, index_of_first_image=0, infotexts=None, comments=""):
        self.images = images_list
        self.prompt = p.prompt
        self.negative_prompt = p.negative_prompt
        self.seed = seed
        self.subseed = subseed
        self.info = info
        self.comments = comments
        self.width, self.height = p.width, p.height
        self.sampler_name = p.sampler_name
        self.cfg_scale = p.cfg_scale
        self.steps = p.steps
        self.batch_size = p.batch_size
        self.sd_model_name = p.sd_model_name
        self.sd_model_hash = p.sd_model_hash
        self.extra_generation_params = p.extra_generation_params
        self.index_of_first_image = index_of_first_image
        self.all_prompts = all_prompts or p.all_prompts or [self.prompt]
        self.all_negative_prompts = all_negative_prompts or p.all_negative_prompts or [self.negative_prompt]
        self.all_seeds = all_seeds or p.all_seeds or [self.seed]
        self.all_subseeds = all_subseeds or p.all_subseeds or [self.subseed]
        self.infotexts = infotexts or [info] * len(images_list)

    def infotext(self, p, index):
        return create_infotext(p, self.all_prompts, self.all_seeds, self.all_subseeds, comments=[],
                               position_in_batch=index % self.batch_size, iteration=index // self.batch_size)


def create_infotext(p, all_prompts, all_seeds, all_subseeds, comments=None, iteration=0, position_in_batch=0,
                    use_main_prompt=False, index=None, all_negative_prompts=None):
    if use_main_prompt:
        index = 0
    elif index is None:
        index = position_in_batch + iteration * p.batch_size
    if all_negative_prompts is None:
        all_negative_prompts = p.all_negative_prompts
    clip_skip = _opt("CLIP_stop_at_last_layers")
    prompt_text = p.main_prompt if use_main_prompt else all_prompts[index]
    negative_prompt = p.main_negative_prompt if use_main_prompt else all_negative_prompts[index]
    generation_params = {
        "Steps": p.steps,
        "Sampler": p.sampler_name,
        "Schedule type": p.scheduler,
        "CFG scale": p.cfg_scale,
        "Seed": p.all_seeds[0] if use_main_prompt else all_seeds[index],
        "Size": f"{p.width}x{p.height}",
        "Model hash": p.sd_model_hash if _opt("add_model_hash_to_info") else None,
        "Model": p.sd_model_name if _opt("add_model_name_to_info") else None,
        "Variation seed": None if p.subseed_strength == 0 else all_subseeds[index],
        "Variation seed strength": None if p.subseed_strength == 0 else p.subseed_strength,
        "Clip skip": None if clip_skip <= 1 else clip_skip,
        **p.extra_generation_params,
        "Version": "v1.10.1" if _opt("add_version_to_infotext") else None,
    }
    text = ", ".join(k if k == v else f"{k}: {infotext_utils.quote(v)}" for k, v in generation_params.items() if v is not None)
    negative_prompt_text = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt_text}{negative_prompt_text}\n{text}".strip()


def get_fixed_seed(seed):
    if seed == "" or seed is None:
        seed = -1
    return int(random.randrange(4294967294)) if int(seed) == -1 else int(seed)


def _image(p, index):
    """The stand-in for sampling + decoding: a flat colour from what the real image depends on."""
    from PIL import Image

    model = sd_models.model_data.sd_model.sd_checkpoint_info
    key = repr((p.prompts[index].strip(), p.negative_prompts[index], p.seeds[index], p.sampler_name, p.scheduler, p.steps,
                p.cfg_scale, p.width, p.height, _opt("CLIP_stop_at_last_layers"), model.title,
                [(n, w, h) for n, w, h in p.active_loras if w != 0]))
    return Image.new("RGB", (p.width, p.height), tuple(hashlib.sha256(key.encode()).digest()[:3]))


def process_images(p: StableDiffusionProcessing) -> Processed:
    if p.scripts is not None:
        p.scripts.before_process(p)
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
        return process_images_inner(p)
    finally:
        if p.override_settings_restore_afterwards:
            opts.update(stored)  # the options only: a checkpoint loaded for the call stays loaded


def process_images_inner(p: StableDiffusionProcessing) -> Processed:
    state = shared.state
    state.job_count = max(state.job_count, 1)
    for hook in ON_PROCESS:
        hook(p)
    seed, subseed = get_fixed_seed(p.seed), get_fixed_seed(p.subseed)
    model = sd_models.model_data.sd_model
    p.sd_model_name = model.sd_checkpoint_info.name_for_extra
    p.sd_model_hash = model.sd_model_hash
    p.setup_prompts()
    p.all_seeds = [seed + (x if p.subseed_strength == 0 else 0) for x in range(len(p.all_prompts))]
    p.all_subseeds = [subseed + x for x in range(len(p.all_prompts))]
    if p.scripts is not None:
        p.scripts.process(p)

    infotexts, output_images = [], []
    for n in range(p.n_iter):
        p.iteration = n
        if state.interrupted:
            break
        batch = slice(n * p.batch_size, (n + 1) * p.batch_size)
        p.prompts, p.negative_prompts = p.all_prompts[batch], p.all_negative_prompts[batch]
        p.seeds, p.subseeds = p.all_seeds[batch], p.all_subseeds[batch]
        if p.scripts is not None:
            p.scripts.before_process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
        if len(p.prompts) == 0:
            break
        p.parse_extra_network_prompts()
        if not p.disable_extra_networks:
            extra_networks.activate(p, p.extra_network_data)
        if p.scripts is not None:
            p.scripts.process_batch(p, batch_number=n, prompts=p.prompts, seeds=p.seeds, subseeds=p.subseeds)
        images = [_image(p, i) for i in range(len(p.prompts))]
        state.nextjob()

        if p.scripts is not None:
            from modules import scripts

            p.scripts.postprocess_batch(p, images, batch_number=n)
            p.prompts = p.all_prompts[batch]
            p.negative_prompts = p.all_negative_prompts[batch]
            batch_params = scripts.PostprocessBatchListArgs(list(images))
            p.scripts.postprocess_batch_list(p, batch_params, batch_number=n)
            images = batch_params.images

        def infotext(index=0, use_main_prompt=False):
            return create_infotext(p, p.prompts, p.seeds, p.subseeds, use_main_prompt=use_main_prompt, index=index,
                                   all_negative_prompts=p.negative_prompts)

        for i, image in enumerate(images):
            p.batch_index = i
            text = infotext(i)
            infotexts.append(text)
            if _opt("enable_pnginfo"):
                image.info["parameters"] = text
            output_images.append(image)

    if not infotexts:
        infotexts.append(Processed(p, []).infotext(p, 0))
    if not p.disable_extra_networks and p.extra_network_data:
        extra_networks.deactivate(p, p.extra_network_data)
    res = Processed(p, images_list=output_images, seed=p.all_seeds[0], info=infotexts[0], subseed=p.all_subseeds[0],
                    infotexts=infotexts)
    if p.scripts is not None:
        p.scripts.postprocess(p, res)
    return res
