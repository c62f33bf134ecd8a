"""Merge kohya LoRAs into a loaded model's weights, and put the exact original weights back.

    W <- W + up @ down * alpha / rank * weight          (the WebUI's and ComfyUI's merge)

Before a module's weight is changed the first time, a copy of it is kept; `restore()` copies it
back, so after any number of apply/restore cycles the base model is bit-identical (subtracting
the delta again would leave rounding residue that grows with every test, and in fp16 quickly).
Only the touched modules are copied (192 UNet + 72 text-encoder weights for a default LoRA).

Why merging rather than peft adapters: a merged LoRA costs nothing per denoising step, while an
adapter adds two matmuls per module to every UNet call; merging is also the WebUI's own method
and works the same under the WebUI's libraries. Figures: benchmarks/RESULTS.md.
"""

from __future__ import annotations

from ..errors import InstantLoraError
from ..lora.kohya_file import TE_PREFIX, UNET_PREFIX, as_list, kohya_name, kohya_names, split_key, uses_sgm_names

_TE1 = "lora_te1_"  # SD1 files from some trainers; the same modules as lora_te_


def _weighted_modules(net):
    for path, module in net.named_modules():
        weight = getattr(module, "weight", None)
        if path and weight is not None and hasattr(weight, "shape"):
            yield path, module


def _module_map(unet, text_encoders) -> dict:
    modules = kohya_names(unet, text_encoders, _weighted_modules)
    if uses_sgm_names(unet):  # SDXL LoRAs from other trainers may name the UNet's diffusers paths
        modules.update({kohya_name(UNET_PREFIX, p): m for p, m in _weighted_modules(unet) if kohya_name(UNET_PREFIX, p) not in modules})
    return modules


def group_lora_tensors(sd: dict, source: str = "LoRA", single_text_encoder: bool = True) -> dict:
    """{kohya module name: {"down", "up", "alpha"}} from a kohya state dict; checks completeness.
    With one text encoder (SD1/SD2), `lora_te1_` is read as `lora_te_` (some trainers write it)."""
    groups: dict = {}
    for key, tensor in sd.items():
        name, suffix = split_key(key)
        if single_text_encoder and name.startswith(_TE1):
            name = TE_PREFIX + "_" + name[len(_TE1):]
        slot = {".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"}[suffix]
        groups.setdefault(name, {})[slot] = tensor
    broken = [n for n, g in groups.items() if "down" not in g or "up" not in g]
    if broken:
        raise InstantLoraError(f"{source}: {len(broken)} modules lack lora_down or lora_up (e.g. {broken[0]}).",
                               hint="the file is incomplete; re-save it from the trainer")
    return groups


def _check_shapes(name: str, group: dict, weight, source: str) -> None:
    down, up = group["down"], group["up"]
    rank = down.shape[0]
    out_ok = up.shape[0] == weight.shape[0] and up.shape[1] == rank and all(s == 1 for s in up.shape[2:])
    in_ok = tuple(down.shape[1:]) == tuple(weight.shape[1:]) or (
        weight.dim() == 4 and down.dim() == 2 and down.shape[1] == weight.shape[1] and tuple(weight.shape[2:]) == (1, 1))
    if not (out_ok and in_ok):
        raise InstantLoraError(f"{source}: '{name}' has down {tuple(down.shape)} / up {tuple(up.shape)}, which does not fit "
                               f"the model's weight {tuple(weight.shape)}.",
                               hint="the LoRA was trained for another model family (SD1.x, SD2.x and SDXL LoRAs differ)")


class LoraMerger:
    """Applies LoRAs to one model in place; `restore()` undoes all of them exactly.

    `backup_device`: where the copies of the original weights live; None = beside the weights.
    Use "cpu" to keep VRAM free on a small GPU (restore then costs one host-to-device copy).
    """

    def __init__(self, unet, text_encoder=None, backup_device=None):
        self.unet = unet
        self.text_encoder = text_encoder  # one encoder, or SDXL's [CLIP-L, bigG]
        self.backup_device = backup_device
        self._backup: dict = {}  # module -> copy of its original weight
        self.applied: list[str] = []  # what is merged now, for messages

    @property
    def active(self) -> bool:
        return bool(self._backup)

    def apply(self, sd: dict, unet_weight: float = 1.0, te_weight: float | None = None, source: str = "LoRA") -> int:
        """Add one LoRA at the given weights; returns the number of modules changed. Everything is
        checked before any weight is touched, so an error leaves the model as it was."""
        import torch

        te_weight = unet_weight if te_weight is None else te_weight
        encoders = as_list(self.text_encoder)
        groups = group_lora_tensors(sd, source, single_text_encoder=len(encoders) < 2)
        modules = _module_map(self.unet, encoders)
        unmatched = sorted(n for n in groups if n not in modules)
        if unmatched:
            has_te = any(n.startswith(TE_PREFIX) for n in unmatched)
            raise InstantLoraError(f"{source}: {len(unmatched)} of {len(groups)} LoRA modules match nothing in this model "
                                   f"(e.g. {unmatched[0]}).",
                                   hint="no text encoder was given to apply it to" if has_te and not encoders
                                   else "the LoRA was trained for another model family (SD1.x, SD2.x and SDXL LoRAs differ)")
        work = []
        for name, group in sorted(groups.items()):
            is_te = name.startswith(TE_PREFIX)
            w = te_weight if is_te else unet_weight
            if w == 0:
                continue  # weight 0 leaves the weights untouched: exactly the base model
            module = modules[name]
            _check_shapes(name, group, module.weight, source)
            work.append((module, group, float(w)))
        with torch.no_grad():
            for module, group, w in work:
                weight = module.weight
                if module not in self._backup:
                    self._backup[module] = weight.detach().to(self.backup_device or weight.device, copy=True)
                down = group["down"].to(weight.device, torch.float32)
                up = group["up"].to(weight.device, torch.float32)
                rank = down.shape[0]
                alpha = float(group["alpha"]) if "alpha" in group else float(rank)  # no alpha: scale 1, as the WebUI
                scale = alpha / rank * w
                delta = (up.flatten(1) @ down.flatten(1)).reshape(weight.shape) * scale
                # Sum in fp32 and round once, rather than rounding the delta and then the sum.
                weight.copy_((weight.float() + delta).to(weight.dtype))
        if work:
            self.applied.append(source)
        return len(work)

    def restore(self) -> None:
        """Copy every changed weight back from its saved original (bit-identical)."""
        import torch

        with torch.no_grad():
            for module, original in self._backup.items():
                module.weight.copy_(original)
        self._backup.clear()
        self.applied.clear()

    def keep(self) -> None:
        """Keep what is merged (drop the saved originals): restore() then has nothing to undo."""
        self._backup.clear()
        self.applied.clear()

    def __enter__(self) -> "LoraMerger":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def merge_lora(sd: dict, unet, text_encoder=None, unet_weight: float = 1.0, te_weight: float | None = None,
               source: str = "LoRA") -> int:
    """Merge a LoRA into the model for good (no copies kept): the loaders' math, as a check that a
    saved file reproduces the trained model. Raises when any key matches no module."""
    merger = LoraMerger(unet, text_encoder)
    count = merger.apply(sd, unet_weight, te_weight, source)
    merger.keep()
    return count
