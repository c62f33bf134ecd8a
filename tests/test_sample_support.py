"""Helpers for the test_sample_* modules (no tests here): random kohya LoRA files for the tiny
model, written with the same names and metadata the trainer writes."""

from pathlib import Path

import torch

from instant_lora.lora.kohya_file import TE_PREFIX, UNET_PREFIX, kohya_name, save_lora_file
from instant_lora.lora.targets import text_encoder_targets, unet_targets
from instant_lora.sample.settings import GenerationSettings

FAST = GenerationSettings(steps=3, width=64, height=64, cfg_scale=5.0, sampler="DDIM")


def random_lora_state_dict(model, rank=4, alpha=2.0, strength=1.0, seed=0, text_encoder=True) -> dict:
    """A LoRA over the trainer's default targets with a clearly visible effect on the tiny model."""
    g = torch.Generator().manual_seed(seed)
    nets = [(UNET_PREFIX, model.unet, unet_targets(model.unet))]
    if text_encoder:
        nets.append((TE_PREFIX, model.text_encoder, text_encoder_targets(model.text_encoder)))
    sd = {}
    for prefix, net, names in nets:
        modules = dict(net.named_modules())
        for path in names:
            weight = modules[path].weight
            out_f, in_f = weight.shape[0], weight.shape[1]
            kernel = tuple(weight.shape[2:])
            name = kohya_name(prefix, path)
            sd[name + ".lora_down.weight"] = (torch.randn((rank, in_f, *kernel), generator=g) / in_f ** 0.5).contiguous()
            sd[name + ".lora_up.weight"] = (strength * torch.randn((out_f, rank, *(1,) * len(kernel)), generator=g)).contiguous()
            sd[name + ".alpha"] = torch.tensor(float(alpha))
    return sd


def write_lora(path: Path, model, output_name=None, steps=None, epoch=None, **kw) -> Path:
    md = {"ss_output_name": output_name or Path(path).stem, "ss_base_model_version": "sd_v1", "ss_network_module": "networks.lora"}
    if steps is not None:
        md["ss_steps"] = steps
    if epoch is not None:
        md["ss_epoch"] = epoch
    return save_lora_file(Path(path), random_lora_state_dict(model, **kw), md)


def model_state(model) -> dict:
    return {f"{n}.{k}": v.detach().clone() for n, net in (("unet", model.unet), ("te", model.text_encoder), ("vae", model.vae))
            for k, v in net.state_dict().items()}


def assert_bit_identical(before: dict, model) -> None:
    after = model_state(model)
    assert before.keys() == after.keys()
    # Compare the raw bytes: bit-identical, not merely equal (-0.0 == 0.0, NaN != NaN).
    changed = [k for k in before if before[k].shape != after[k].shape or before[k].dtype != after[k].dtype
               or not torch.equal(before[k].reshape(-1).view(torch.uint8), after[k].reshape(-1).view(torch.uint8))]
    assert not changed, f"{len(changed)} tensors changed, e.g. {changed[:3]}"
