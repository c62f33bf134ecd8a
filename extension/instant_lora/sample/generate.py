"""Text-to-image with the base model already in memory: the standalone Test panel, the `generate`
command and the trainer's sample images all come through here, for SD1.x, SD2.x (epsilon or
v-prediction) and SDXL.

The denoising loop is ours (about 30 lines) rather than diffusers' pipelines, for three
reasons: it runs unchanged on diffusers 0.30 and current versions; it works on the training
model, whose parts may sit on different devices (the trainer parks the VAE and a frozen text
encoder on the CPU) and mix dtypes (fp16 base, fp32 LoRA); and it draws its random numbers in the
same order as the pipeline, so on the same model and seed it gives the pipeline's image (tests
check this for each sampler, and for SDXL and SD2 v-prediction).

Per family (the conditioning module says what the UNet is conditioned on): the scheduler takes the
family's bundled schedule and the model's prediction type; SDXL gets both encoders' penultimate
layers (2048 features), the pooled vector and the size ids (height, width, 0, 0, height, width)
for both halves of classifier-free guidance, and an empty negative prompt is zeros there, as in
diffusers and the WebUI.
"""

from __future__ import annotations

import inspect
import json
import threading
from contextlib import contextmanager
from pathlib import Path

from ..conditioning import TextConditioning, encode, is_sdxl, unet_kwargs, window_ids
from ..errors import InstantLoraError
from .settings import GenerationSettings, normalize_sampler
from .tags import parse_prompt

_PACKAGE = Path(__file__).resolve().parents[1]
_SD15_SCHEDULER = _PACKAGE / "sd15_config" / "scheduler" / "scheduler_config.json"
# Each family's bundled scheduler file (SD1.x, SD2.x and SDXL share the training betas,
# scaled_linear 0.00085-0.012; they differ in spacing/offset details and, SD2-768, in prediction).
_SCHEDULER_FILES = {"sd1": _SD15_SCHEDULER,
                    "sd2": _PACKAGE / "sd21_config" / "scheduler" / "scheduler_config.json",
                    "sdxl": _PACKAGE / "sdxl_config" / "scheduler" / "scheduler_config.json"}
_scheduler_configs: dict = {}
# A prompt is cut into 75-token windows as the WebUI cuts it (text_windows); a prompt of up to 75
# tokens is one window of 77 ids, exactly what plain 77-token tokenization gives. The WebUI sets no
# limit; 32 windows (2400 tokens) is none in practice.
PROMPT_WINDOWS = 32


def scheduler_config(family=None) -> dict:
    """The family's scheduler settings (a ModelFamily or its name; None = SD1.x), from its bundled
    config folder; SD1.5's file when that folder is missing."""
    name = getattr(family, "name", family) or "sd1"
    if name not in _scheduler_configs:
        path = _SCHEDULER_FILES.get(name, _SD15_SCHEDULER)
        if not path.is_file():
            path = _SD15_SCHEDULER
        _scheduler_configs[name] = {k: v for k, v in json.loads(path.read_text(encoding="utf-8")).items()
                                    if not k.startswith("_")}
    return dict(_scheduler_configs[name])


def make_scheduler(sampler: str, prediction_type: str | None = None, family=None):
    """A fresh diffusers scheduler for a WebUI sampler name, on the noise schedule of `family` (a
    ModelFamily or "sd1"/"sd2"/"sdxl"; None = SD1.5's). prediction_type: "epsilon" or
    "v_prediction"; None = the family's (a ModelFamily), else what its config file says."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

    name = normalize_sampler(sampler)
    config = scheduler_config(family)
    if prediction_type is None:
        prediction_type = getattr(family, "scheduler_prediction", None)
    if prediction_type is not None:
        config["prediction_type"] = prediction_type
    cls, extra = {"Euler a": (EulerAncestralDiscreteScheduler, {}),
                  "DPM++ 2M Karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
                  "DDIM": (DDIMScheduler, {})}[name]
    accepted = inspect.signature(cls.__init__).parameters
    # Only the keys this class takes (the bundled files are other classes'): no "ignored attributes" warnings.
    return cls.from_config({k: v for k, v in {**config, **extra}.items() if k in accepted})


def model_family_name(model) -> str:
    family = getattr(model, "family", None)
    if is_sdxl(model):
        return "sdxl"
    return getattr(family, "name", None) or "sd1"


def model_scheduler(model, sampler: str):
    """make_scheduler for this model: its family's schedule and its prediction type (the training
    scheduler's, which --v_parameterization may have set)."""
    config = getattr(getattr(model, "noise_scheduler", None), "config", None)
    prediction = getattr(config, "prediction_type", None) or getattr(getattr(model, "family", None), "scheduler_prediction", None)
    return make_scheduler(sampler, prediction or "epsilon", model_family_name(model))


def _first_param(module):
    return next(module.parameters())


def encode_prompt(model, text: str, clip_skip: int = 1, max_windows: int = PROMPT_WINDOWS) -> TextConditioning:
    """What the UNet is conditioned on for one prompt (conditioning.TextConditioning): hidden
    states [1, 77 * windows, dim] (SDXL: both encoders' 768 + 1280 features) and, for SDXL, the
    pooled vector [1, 1280]; where the first text encoder is. Clip skip does not apply to SDXL."""
    ids = window_ids(model, [text], max_windows)
    ids = [i.to(_first_param(te).device) for i, te in zip(ids, model.text_encoders)]
    return encode(model, ids, None if is_sdxl(model) else clip_skip)


def empty_negative(cond: TextConditioning) -> TextConditioning:
    """SDXL's unconditional input for an empty negative prompt: zeros (hidden and pooled, one
    window), as diffusers' force_zeros_for_empty_prompt and the WebUI do."""
    import torch

    hidden = torch.zeros((cond.hidden.shape[0], 77, cond.hidden.shape[-1]), dtype=cond.hidden.dtype, device=cond.hidden.device)
    return TextConditioning(hidden, None if cond.pooled is None else torch.zeros_like(cond.pooled))


def size_ids(settings: GenerationSettings) -> list[int]:
    """SDXL's size conditioning for a generated image: original = target = its (height, width),
    crop (0, 0), as diffusers' pipeline and the WebUI (default crop options) give it."""
    return [settings.height, settings.width, 0, 0, settings.height, settings.width]


def _as_conditioning(c):
    return c if c is None or isinstance(c, TextConditioning) else TextConditioning(c)


def _joined(a: TextConditioning, b: TextConditioning) -> TextConditioning:
    import torch

    return TextConditioning(torch.cat([a.hidden, b.hidden]), None if a.pooled is None else torch.cat([a.pooled, b.pooled]))


def denoise(model, cond, uncond, seed: int, settings: GenerationSettings, progress=None):
    """The sampling loop; returns fp32 latents [1, C, H/8, W/8] on the UNet's device.

    cond/uncond: TextConditioning (or plain hidden states). Noise comes from a CPU
    torch.Generator seeded with `seed`, so a seed gives the same start on every device. With
    guidance, prompt and negative prompt go through the UNet as one batch when their window counts
    agree, else one after the other (as the WebUI does unless told to pad). `progress(step, total)`
    is called after each step; it may raise to stop."""
    import torch

    unet = model.unet
    device, dtype = _first_param(unet).device, unet.dtype
    scheduler = model_scheduler(model, settings.sampler)
    scheduler.set_timesteps(settings.steps, device=device)
    vae_scale = 2 ** (len(model.vae.config.block_out_channels) - 1)
    shape = (1, unet.config.in_channels, settings.height // vae_scale, settings.width // vae_scale)
    generator = torch.Generator().manual_seed(int(seed))
    latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(device) * scheduler.init_noise_sigma
    guided = settings.cfg_scale > 1  # as diffusers: CFG 1 or less = the prompt alone, one UNet pass
    cond = _as_conditioning(cond).to(device, dtype)
    uncond = _as_conditioning(uncond).to(device, dtype) if guided else None
    joint = _joined(uncond, cond) if guided and uncond.hidden.shape[1] == cond.hidden.shape[1] else None
    sizes = size_ids(settings)

    def predict(x, t, c: TextConditioning):
        return unet(x.to(dtype), t, encoder_hidden_states=c.hidden, return_dict=False, **unet_kwargs(c, sizes))[0].float()

    step_params = inspect.signature(scheduler.step).parameters
    step_kwargs = {k: v for k, v in (("generator", generator), ("eta", 0.0)) if k in step_params}
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        if joint is not None:
            x = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            eps_uncond, eps = predict(x, t, joint).chunk(2)
        else:
            x = scheduler.scale_model_input(latents, t)
            eps = predict(x, t, cond)
            eps_uncond = predict(x, t, uncond) if guided else None
        if guided:
            eps = eps_uncond + settings.cfg_scale * (eps - eps_uncond)
        latents = scheduler.step(eps, t, latents, return_dict=False, **step_kwargs)[0]
        if progress is not None:
            progress(i + 1, len(timesteps))
    return latents


def decode(model, latents):
    """Latents -> images [B, H, W, 3] as fp32 in 0..1 on the CPU (the VAE runs where it is)."""
    import torch

    vae = model.vae
    p = _first_param(vae)
    config = vae.config
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:  # VAEs with normalised latents, as diffusers' SDXL pipeline
        view = (1, len(mean), 1, 1)
        latents = latents * torch.tensor(std).view(view).to(latents) / config.scaling_factor + torch.tensor(mean).view(view).to(latents)
    else:
        latents = latents / config.scaling_factor
    x = latents.to(p.device, p.dtype)
    images = vae.decode(x, return_dict=False)[0]
    images = (images.float() / 2 + 0.5).clamp(0, 1)
    if not torch.isfinite(images).all():
        raise InstantLoraError("the image came out as NaN (the VAE overflowed).", hint="run the VAE in fp32 (precision fp32)")
    return images.permute(0, 2, 3, 1).cpu()


def to_pil(images) -> list:
    from PIL import Image

    arr = (images.numpy() * 255).round().astype("uint8")
    return [Image.fromarray(a) for a in arr]


def generate_tensor(model, text: str, seed: int, settings: GenerationSettings, progress=None):
    """One image for a tag-free prompt as fp32 [H, W, 3] in 0..1: the model as it is now."""
    import torch

    with torch.no_grad():
        cond = encode_prompt(model, text, settings.clip_skip)
        uncond = None
        if settings.cfg_scale > 1:
            if is_sdxl(model) and settings.negative_prompt == "":
                uncond = empty_negative(cond)
            else:
                uncond = encode_prompt(model, settings.negative_prompt, settings.clip_skip)
        latents = denoise(model, cond, uncond, seed, settings, progress)
        return decode(model, latents)[0]


def model_label(model) -> str:
    """The checkpoint's name as the WebUI writes it in infotext (file name without extension)."""
    from ..models import SINGLE_FILE_SUFFIXES

    name = str(getattr(model, "name", "") or "")
    return name.rsplit(".", 1)[0] if name.lower().endswith(SINGLE_FILE_SUFFIXES) else name


def place_model(model, device=None, dtype=None):
    """Move the UNet and text encoder(s) to `device`/`dtype` in place (no copy); the VAE goes to
    `device` in fp32 (SD VAEs can overflow in fp16, SDXL's does). Returns the model."""
    import torch

    nets = [(model.unet, dtype), *((te, dtype) for te in model.text_encoders), (model.vae, torch.float32)]
    # dtype only where it changes: diffusers warns on every .to(dtype=...), even a no-op one.
    for net, want in nets:
        if device is not None:
            net.to(device)
        if want is not None and net.dtype != want:
            net.to(dtype=want)
    for net, _ in nets:
        net.eval()
    return model


def pick_device(device: str = "auto", precision: str = "auto"):
    """('cuda' if available else 'cpu', fp16 on CUDA / fp32 on CPU) unless told otherwise."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision == "auto":
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
    elif precision in dtypes:
        dtype = dtypes[precision]
    else:
        raise InstantLoraError(f"unknown precision '{precision}'", hint="use auto, fp32, fp16 or bf16")
    return torch.device(device), dtype


def resolve_prompt(prompt_with_tags: str, library):
    """(text, [(LoraEntry, LoraTag)]) for a prompt; raises for malformed tags, unknown names and
    other extra networks, so a UI can check a prompt before anything is generated."""
    parsed = parse_prompt(prompt_with_tags)
    if parsed.other:
        raise InstantLoraError(f"{parsed.other[0]}: only <lora:...> tags can be tested here.",
                               hint="remove it, or test the prompt in the WebUI's txt2img")
    if parsed.loras and library is None:
        raise InstantLoraError(f"the prompt names LoRAs ({', '.join(t.name for t in parsed.loras)}) but no LoRA folder was given.",
                               hint="pass --lora_dir")
    return parsed.text, [(library.find(t.name), t) for t in parsed.loras]


class DiffusersRenderer:
    """render(prompt_with_tags, seed, settings) -> PIL image, on a base model kept in memory.

    The `<lora:...>` tags are looked up in the Lora folder, merged into the weights for this one
    image and taken out again exactly, so tests can follow each other without reloading the model.
    The image carries its infotext in `image.info["parameters"]`."""

    def __init__(self, model, lora_dir: Path | str | None = None, *, library=None, backup_device=None):
        from .apply import LoraMerger
        from .lora_files import LoraLibrary

        self.model = model
        self.loras = library if library is not None else (LoraLibrary(lora_dir) if lora_dir else None)
        # SDXL's LoRA names its two encoders lora_te1_/lora_te2_: the merger gets both.
        encoders = model.text_encoders if is_sdxl(model) else model.text_encoder
        self.merger = LoraMerger(model.unet, encoders, backup_device=backup_device)
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return model_label(self.model)

    @property
    def model_hash(self) -> str | None:
        return getattr(self.model, "legacy_hash", None)

    def resolve(self, prompt_with_tags: str):
        return resolve_prompt(prompt_with_tags, self.loras)

    def infotext(self, prompt_with_tags: str, seed: int, settings: GenerationSettings) -> str:
        from .infotext import format_infotext

        return format_infotext(prompt_with_tags, settings, seed, self.model_name, self.model_hash)

    def __call__(self, prompt_with_tags: str, seed: int, settings: GenerationSettings, progress=None):
        settings = settings.checked()
        text, loras = self.resolve(prompt_with_tags)
        with self._lock:
            try:
                for entry, tag in loras:
                    self.merger.apply(self.loras.load(entry), unet_weight=tag.unet_weight, te_weight=tag.te_weight,
                                      source=entry.path.name)
                pixels = generate_tensor(self.model, text, seed, settings, progress)
            finally:
                self.merger.restore()
        image = to_pil(pixels[None])[0]
        image.info["parameters"] = self.infotext(prompt_with_tags, seed, settings)
        return image


_kept: dict = {}  # {"key": (checkpoint, lora folder), "renderer": DiffusersRenderer}
_kept_lock = threading.Lock()


@contextmanager
def kept_renderer(checkpoint_path: str, lora_dir: Path | str):
    """The standalone Test panel's renderer, held for one image or one grid. The base model stays
    loaded between tests and is loaded again only when the checkpoint changes."""
    from ..models import load_sd_model

    with _kept_lock:
        key = (str(checkpoint_path), str(lora_dir))
        if _kept.get("key") != key:
            _kept.clear()
            Path(lora_dir).mkdir(parents=True, exist_ok=True)  # before the first training: tests of the base model work
            device, dtype = pick_device()
            _kept.update(key=key, renderer=DiffusersRenderer(place_model(load_sd_model(checkpoint_path), device, dtype), lora_dir))
        yield _kept["renderer"]


def release_kept_renderer() -> None:
    """Drop the Test panel's model (in fp16 about 2 GB for SD1.5, 7 GB for SDXL) so a training gets the GPU to itself, and
    hand the freed memory back (garbage collection, CUDA cache, malloc_trim)."""
    from ..memory import release_memory

    with _kept_lock:
        dropped = bool(_kept)
        _kept.clear()
    if dropped:
        release_memory()


def sample_images(model, prompts: list[str], seed: int, settings: GenerationSettings, progress=None) -> list:
    """Sample images with the model being trained: prompt i gets seed + i, the same at every call,
    so successive samples show how the LoRA evolves.

    The LoRA is already active in the model's peft layers (at weight 1), so `<lora:...>` tags in
    the prompts are dropped. Runs under no_grad with every module in eval mode and puts back each
    module's own train/eval flag; nothing is copied or cast. The UNet and text encoder(s) run where
    they are; a VAE parked elsewhere (the trainer moves it to the CPU) visits the UNet's device
    for decoding and goes back."""
    import torch

    from .infotext import format_infotext

    settings = settings.checked()
    texts = [parse_prompt(p).text for p in prompts]  # validates every prompt before any work
    nets = [model.unet, *model.text_encoders, model.vae]
    modes = {m: m.training for net in nets for m in net.modules()}
    unet_device = _first_param(model.unet).device
    vae_device = _first_param(model.vae).device
    images = []
    try:
        for net in nets:
            net.eval()
        if vae_device != unet_device:
            model.vae.to(unet_device)
        with torch.no_grad():
            for i, text in enumerate(texts):
                step = (lambda s, n, i=i: progress(i * n + s, len(texts) * n)) if progress else None
                pixels = generate_tensor(model, text, seed + i, settings, step)
                image = to_pil(pixels[None])[0]
                image.info["parameters"] = format_infotext(prompts[i], settings, seed + i, model_label(model))
                images.append(image)
    finally:
        if vae_device != unet_device:
            model.vae.to(vae_device)
        for m, mode in modes.items():
            m.training = mode
    return images
