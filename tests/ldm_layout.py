"""Write a diffusers SD model as an original-layout (ldm / CompVis, SGM for SDXL) single-file checkpoint.

Test-fixture code: the tiny models must go through the same single-file path a user's
v1-5-pruned-emaonly.safetensors, v2-1_768-ema-pruned.safetensors or sd_xl_base_1.0.safetensors
takes. The layout rules are SD's own: input_blocks numbered (level * (layers + 1) + 1 + j),
output_blocks (level * (layers + 1) + j), resnet/attention sub-indices 0/1, down/up samplers after
them; VAE decoder levels reversed; SDXL's size/crop embedding is `label_emb.0.{0,2}`. Text
encoders: CLIP ViT-L in transformers' layout, OpenCLIP (SD2, SDXL's second) in open_clip's, with
q/k/v fused and the projection stored as a [width, proj] matrix; SD2's files hold ViT-H's 24th
block, which SD2 does not use (the loader drops it).
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
    _sub(sd, "add_embedding.linear_1", "label_emb.0.0", out)  # SDXL's size/crop conditioning
    _sub(sd, "add_embedding.linear_2", "label_emb.0.2", out)
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


def _with_text_model(sd: dict) -> dict:
    # transformers >= 5.6 drops `text_model.` from CLIPTextModel; checkpoints always have it
    return {k if k.startswith(("text_model.", "text_projection")) else "text_model." + k: v
            for k, v in sd.items()}


def text_encoder_to_ldm(text_encoder, prefix: str = "cond_stage_model.transformer.") -> dict:
    return {prefix + k: v for k, v in _with_text_model(text_encoder.state_dict()).items()}


def text_encoder_to_openclip(text_encoder, prefix: str, extra_blocks: int = 0, seed: int = 0) -> dict:
    """A CLIPTextModel(WithProjection) in open_clip's text-transformer layout under `prefix`;
    `extra_blocks` random blocks after the last (SD2's unused 24th); a random projection when the
    model has none (SD2's files hold one, unused)."""
    import torch

    sd = _with_text_model(text_encoder.state_dict())
    t = "text_model."
    out = {"token_embedding.weight": sd[t + "embeddings.token_embedding.weight"],
           "positional_embedding": sd[t + "embeddings.position_embedding.weight"],
           "ln_final.weight": sd[t + "final_layer_norm.weight"], "ln_final.bias": sd[t + "final_layer_norm.bias"]}
    n = text_encoder.config.num_hidden_layers
    for i in range(n):
        hf, oc = f"{t}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for p in ("weight", "bias"):
            out[f"{oc}ln_1.{p}"] = sd[f"{hf}layer_norm1.{p}"]
            out[f"{oc}ln_2.{p}"] = sd[f"{hf}layer_norm2.{p}"]
            out[f"{oc}attn.in_proj_{p}"] = torch.cat([sd[f"{hf}self_attn.{q}_proj.{p}"] for q in "qkv"])
            out[f"{oc}attn.out_proj.{p}"] = sd[f"{hf}self_attn.out_proj.{p}"]
            out[f"{oc}mlp.c_fc.{p}"] = sd[f"{hf}mlp.fc1.{p}"]
            out[f"{oc}mlp.c_proj.{p}"] = sd[f"{hf}mlp.fc2.{p}"]
    g = torch.Generator().manual_seed(seed)
    for e in range(extra_blocks):
        block = f"transformer.resblocks.{n + e}."
        for k in [k for k in out if k.startswith("transformer.resblocks.0.")]:
            out[block + k[len("transformer.resblocks.0."):]] = torch.randn(out[k].shape, generator=g)
    width = text_encoder.config.hidden_size
    proj = sd.get("text_projection.weight")
    out["text_projection"] = proj.T if proj is not None else torch.randn(width, width, generator=g)
    out["logit_scale"] = torch.tensor(4.6052)
    return {prefix + k: v for k, v in out.items()}


def to_ldm_checkpoint(model) -> dict:
    """The whole model in its family's single-file layout (SD1/SD2: LDM; SDXL: SGM)."""
    sd = {**unet_to_ldm(model.unet), **vae_to_ldm(model.vae)}
    family = getattr(getattr(model, "family", None), "name", "sd1")
    if family == "sd2":
        sd.update(text_encoder_to_openclip(model.text_encoder, "cond_stage_model.model.", extra_blocks=1))
    elif family == "sdxl":
        sd.update(text_encoder_to_ldm(model.text_encoder, "conditioner.embedders.0.transformer."))
        sd.update(text_encoder_to_openclip(model.text_encoder_2, "conditioner.embedders.1.model."))
    else:
        sd.update(text_encoder_to_ldm(model.text_encoder))
    return {k: v.contiguous() for k, v in sd.items()}
