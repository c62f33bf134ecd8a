"""Text-to-image with the base model already in memory: the standalone Test panel, the `generate`
command and the trainer's sample images all come through here.

The denoising loop is ours (about 30 lines) rather than StableDiffusionPipeline, for three
reasons: it runs unchanged on diffusers 0.30 and current versions; it works on the training
model, whose parts may sit on different devices (the trainer parks the VAE and a frozen text
encoder on the CPU) and mix dtypes (fp16 base, fp32 LoRA); and it draws its random numbers in the
same order as the pipeline, so on the same model and seed it gives the pipeline's image (a test
checks this for each sampler).
"""

from __future__ import annotations

import inspect
import json
import threading
from contextlib import contextmanager
from pathlib import Path

from ..errors import InstantLoraError
from .settings import GenerationSettings, normalize_sampler
from .tags import parse_prompt

_SCHEDULER_JSON = Path(__file__).resolve().parents[1] / "sd15_config" / "scheduler" / "scheduler_config.json"
_scheduler_config: dict | None = None


def make_scheduler(sampler: str):
    """A fresh diffusers scheduler for a WebUI sampler name, on SD1.5's noise schedule."""
    global _scheduler_config
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler

    name = normalize_sampler(sampler)
    if _scheduler_config is None:
        _scheduler_config = {k: v for k, v in json.loads(_SCHEDULER_JSON.read_text()).items() if not k.startswith("_")}
    cls, extra = {"Euler a": (EulerAncestralDiscreteScheduler, {}),
                  "DPM++ 2M Karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
                  "DDIM": (DDIMScheduler, {})}[name]
    accepted = inspect.signature(cls.__init__).parameters
    # Only the keys this class takes (the bundled file is PNDM's): no "ignored attributes" warnings.
    return cls.from_config({k: v for k, v in {**_scheduler_config, **extra}.items() if k in accepted})


def _first_param(module):
    return next(module.parameters())


def encode_prompt(model, text: str, clip_skip: int = 1):
    """Text-encoder hidden states [1, 77, dim] for one prompt, on the text encoder's device."""
    from ..cache import encode_text, tokenize

    ids = tokenize(model.tokenizer, [text]).to(_first_param(model.text_encoder).device)
    return encode_text(model.text_encoder, ids, clip_skip)


def denoise(model, cond, uncond, seed: int, settings: GenerationSettings, progress=None):
    """The sampling loop; returns fp32 latents [1, C, H/8, W/8] on the UNet's device.

    Noise comes from a CPU torch.Generator seeded with `seed`, so a seed gives the same start on
    every device. `progress(step, total)` is called after each step; it may raise to stop."""
    import torch

    unet = model.unet
    device, dtype = _first_param(unet).device, unet.dtype
    scheduler = make_scheduler(settings.sampler)
    scheduler.set_timesteps(settings.steps, device=device)
    vae_scale = 2 ** (len(model.vae.config.block_out_channels) - 1)
    shape = (1, unet.config.in_channels, settings.height // vae_scale, settings.width // vae_scale)
    generator = torch.Generator().manual_seed(int(seed))
    latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(device) * scheduler.init_noise_sigma
    guided = settings.cfg_scale > 1  # as diffusers: CFG 1 or less = the prompt alone, one UNet pass
    context = torch.cat([uncond, cond]) if guided else cond
    context = context.to(device, dtype)
    step_params = inspect.signature(scheduler.step).parameters
    step_kwargs = {k: v for k, v in (("generator", generator), ("eta", 0.0)) if k in step_params}
    timesteps = scheduler.timesteps
    for i, t in enumerate(timesteps):
        x = torch.cat([latents, latents]) if guided else latents
        x = scheduler.scale_model_input(x, t)
        eps = unet(x.to(dtype), t, encoder_hidden_states=context, return_dict=False)[0].float()
        if guided:
            eps_uncond, eps_text = eps.chunk(2)
            eps = eps_uncond + settings.cfg_scale * (eps_text - eps_uncond)
        latents = scheduler.step(eps, t, latents, return_dict=False, **step_kwargs)[0]
        if progress is not None:
            progress(i + 1, len(timesteps))
    return latents


def decode(model, latents):
    """Latents -> images [B, H, W, 3] as fp32 in 0..1 on the CPU (the VAE runs where it is)."""
    import torch

    vae = model.vae
    p = _first_param(vae)
    x = (latents / vae.config.scaling_factor).to(p.device, p.dtype)
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
        uncond = encode_prompt(model, settings.negative_prompt, settings.clip_skip) if settings.cfg_scale > 1 else None
        latents = denoise(model, cond, uncond, seed, settings, progress)
        return decode(model, latents)[0]


def model_label(model) -> str:
    """The checkpoint's name as the WebUI writes it in infotext (file name without extension)."""
    from ..models import SINGLE_FILE_SUFFIXES

    name = str(getattr(model, "name", "") or "")
    return name.rsplit(".", 1)[0] if name.lower().endswith(SINGLE_FILE_SUFFIXES) else name


def place_model(model, device=None, dtype=None):
    """Move the UNet and text encoder to `device`/`dtype` in place (no copy); the VAE goes to
    `device` in fp32 (SD VAEs can overflow in fp16). Returns the model."""
    import torch

    # dtype only where it changes: diffusers warns on every .to(dtype=...), even a no-op one.
    for net, want in ((model.unet, dtype), (model.text_encoder, dtype), (model.vae, torch.float32)):
        if device is not None:
            net.to(device)
        if want is not None and net.dtype != want:
            net.to(dtype=want)
    for net in (model.unet, model.text_encoder, model.vae):
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
        self.merger = LoraMerger(model.unet, model.text_encoder, backup_device=backup_device)
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
    """Drop the Test panel's model (about 2 GB in fp16) so a training gets the GPU to itself, and
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
    module's own train/eval flag; nothing is copied or cast. The UNet and text encoder run where
    they are; a VAE parked elsewhere (the trainer moves it to the CPU) visits the UNet's device
    for decoding and goes back."""
    import torch

    from .infotext import format_infotext

    settings = settings.checked()
    texts = [parse_prompt(p).text for p in prompts]  # validates every prompt before any work
    nets = [model.unet, model.text_encoder, model.vae]
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
