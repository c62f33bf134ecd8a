"""Write a diffusers SD model as an original-layout (ldm / CompVis) single-file checkpoint.

Test-fixture code: the tiny model must go through the same single-file path a user's
v1-5-pruned-emaonly.safetensors takes. The layout rules are SD's own: input_blocks numbered
(level * (layers + 1) + 1 + j), output_blocks (level * (layers + 1) + j), resnet/attention
sub-indices 0/1, down/up samplers after them; VAE decoder levels reversed.
"""

from __future__ import annotations

RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
          "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTN = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _sub(sd: dict, prefix: str, new_prefix: str, out: dict, rename: dict | None = None) -> None:
    for k in list(sd):
        if k.startswith(prefix + "."):
            rest = k[len(prefix) + 1:]
            for a, b in (rename or {}).items():
                if rest.startswith(a + "."):
                    rest = b + rest[len(a):]
                    break
            out[new_prefix + "." + rest] = sd.pop(k)


def unet_to_ldm(unet) -> dict:
    sd = dict(unet.state_dict())
    cfg = unet.config
    layers = cfg.layers_per_block
    out: dict = {}
    _sub(sd, "time_embedding.linear_1", "time_embed.0", out)
    _sub(sd, "time_embedding.linear_2", "time_embed.2", out)
    _sub(sd, "conv_in", "input_blocks.0.0", out)
    _sub(sd, "conv_norm_out", "out.0", out)
    _sub(sd, "conv_out", "out.2", out)
    for i in range(len(cfg.block_out_channels)):
        for j in range(layers):
            n = i * (layers + 1) + 1 + j
            _sub(sd, f"down_blocks.{i}.resnets.{j}", f"input_blocks.{n}.0", out, RESNET)
            _sub(sd, f"down_blocks.{i}.attentions.{j}", f"input_blocks.{n}.1", out)
        _sub(sd, f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{(i + 1) * (layers + 1)}.0.op", out)
    for i, kind in enumerate(cfg.up_block_types):
        has_attn = "CrossAttn" in kind
        for j in range(layers + 1):
            n = i * (layers + 1) + j
            _sub(sd, f"up_blocks.{i}.resnets.{j}", f"output_blocks.{n}.0", out, RESNET)
            _sub(sd, f"up_blocks.{i}.attentions.{j}", f"output_blocks.{n}.1", out)
        last = i * (layers + 1) + layers
        _sub(sd, f"up_blocks.{i}.upsamplers.0", f"output_blocks.{last}.{2 if has_attn else 1}", out)
    _sub(sd, "mid_block.resnets.0", "middle_block.0", out, RESNET)
    _sub(sd, "mid_block.attentions.0", "middle_block.1", out)
    _sub(sd, "mid_block.resnets.1", "middle_block.2", out, RESNET)
    assert not sd, f"unconverted UNet keys: {sorted(sd)[:5]}"
    return {"model.diffusion_model." + k: v for k, v in out.items()}


def vae_to_ldm(vae) -> dict:
    sd = dict(vae.state_dict())
    levels = len(vae.config.block_out_channels)
    layers = vae.config.layers_per_block
    vres = {"conv_shortcut": "nin_shortcut"}
    out: dict = {}
    for part in ("encoder", "decoder"):
        for name in ("conv_in", "conv_out"):
            _sub(sd, f"{part}.{name}", f"{part}.{name}", out)
        _sub(sd, f"{part}.conv_norm_out", f"{part}.norm_out", out)
        _sub(sd, f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", out, vres)
        _sub(sd, f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", out, vres)
        for k in [k for k in sd if k.startswith(f"{part}.mid_block.attentions.0.")]:
            rest = k[len(f"{part}.mid_block.attentions.0."):]
            for a, b in VAE_ATTN.items():
                if rest.startswith(a + "."):
                    rest = b + rest[len(a):]
            v = sd.pop(k)
            if v.dim() == 2:  # diffusers Linear -> ldm 1x1 Conv
                v = v[:, :, None, None]
            out[f"{part}.mid.attn_1.{rest}"] = v
    for i in range(levels):
        for j in range(layers):
            _sub(sd, f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}", out, vres)
        _sub(sd, f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv", out)
        for j in range(layers + 1):
            _sub(sd, f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{levels - 1 - i}.block.{j}", out, vres)
        _sub(sd, f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{levels - 1 - i}.upsample.conv", out)
    for name in ("quant_conv", "post_quant_conv"):
        _sub(sd, name, name, out)
    assert not sd, f"unconverted VAE keys: {sorted(sd)[:5]}"
    return {"first_stage_model." + k: v for k, v in out.items()}


def text_encoder_to_ldm(text_encoder) -> dict:
    out = {}
    for k, v in text_encoder.state_dict().items():
        if not k.startswith("text_model."):  # transformers >= 5.6 layout
            k = "text_model." + k
        out["cond_stage_model.transformer." + k] = v
    return out


def to_ldm_checkpoint(model) -> dict:
    sd = {**unet_to_ldm(model.unet), **vae_to_ldm(model.vae), **text_encoder_to_ldm(model.text_encoder)}
    return {k: v.contiguous() for k, v in sd.items()}
