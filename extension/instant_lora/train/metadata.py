"""The `ss_*` / `modelspec.*` header of the saved file: what the WebUI's Lora card shows, and the
run's hyper-parameters so a LoRA can be reproduced. All values are strings (safetensors header)."""

from __future__ import annotations

import datetime
import json
import os
import time
import zlib

from .. import __version__

# Kept even with --no_metadata: loaders need them to recognise the file.
MINIMUM_KEYS = ("ss_v2", "ss_base_model_version", "ss_network_module", "ss_network_dim", "ss_network_alpha",
                "ss_network_args", "ss_output_name")


# What the reference trainer writes per family (sd-scripts model_util / sdxl_model_util /
# sai_model_spec), and the WebUI's card filter value ("sd version" in the sidecar).
BASE_MODEL_VERSION = {("sd1", "epsilon"): "sd_v1", ("sd1", "v"): "sd_v1_v", ("sd2", "epsilon"): "sd_v2",
                      ("sd2", "v"): "sd_v2_v", ("sdxl", "epsilon"): "sdxl_base_v1-0", ("sdxl", "v"): "sdxl_base_v1-0"}
ARCHITECTURE = {("sd1", "epsilon"): "stable-diffusion-v1", ("sd1", "v"): "stable-diffusion-v1",
                ("sd2", "epsilon"): "stable-diffusion-v2-512", ("sd2", "v"): "stable-diffusion-v2-768-v",
                ("sdxl", "epsilon"): "stable-diffusion-xl-v1-base", ("sdxl", "v"): "stable-diffusion-xl-v1-base"}
SGM_IMPLEMENTATION = "https://github.com/Stability-AI/generative-models"
WEBUI_VERSION = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}


def family_keys(family) -> dict:
    """The keys by which loaders and the WebUI's card filter tell a LoRA's base model family."""
    key = (family.name, family.prediction)
    return {
        "ss_v2": family.name == "sd2",
        "ss_base_model_version": BASE_MODEL_VERSION[key],
        "modelspec.architecture": f"{ARCHITECTURE[key]}/lora",
        "modelspec.implementation": SGM_IMPLEMENTATION if family.name == "sdxl" else "diffusers",
        "modelspec.prediction_type": family.prediction,
    }


TRAINER_MARK = "instant-lora-"  # ss_sd_scripts_commit_hash prefix: how a file trained here is recognised


def run_clock() -> float:
    """Now, or $SOURCE_DATE_EPOCH (the reproducible-builds convention) when set: then two runs with
    the same seed and data write bit-identical files, times in the header included."""
    fixed = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if fixed.isdigit():
        return float(fixed)
    return time.time()


def build_metadata(config, plan, scan, model, *, output_name: str, started_at: float, step: int, epoch: int,
                   finished: bool, optimizer: str = "", data=None) -> dict:
    w, h = plan.width, plan.height
    md = {
        "ss_session_id": str(zlib.crc32(f"{plan.seed}-{started_at}-{output_name}".encode()) % 2**31),
        "ss_training_started_at": started_at,
        "ss_output_name": output_name,
        "ss_training_comment": config.training_comment,
        "ss_sd_scripts_commit_hash": f"{TRAINER_MARK}{__version__}",
        "ss_steps": step,
        "ss_epoch": epoch,
        "ss_seed": plan.seed,
        "ss_learning_rate": config.learning_rate,
        "ss_unet_lr": plan.unet_lr,
        "ss_text_encoder_lr": plan.text_encoder_lr if plan.train_text_encoder else None,
        "ss_optimizer": optimizer or config.optimizer_type,
        "ss_max_grad_norm": config.max_grad_norm,
        "ss_lr_scheduler": config.lr_scheduler,
        "ss_lr_warmup_steps": plan.warmup_steps,
        "ss_max_train_steps": plan.max_train_steps,
        "ss_num_epochs": plan.num_epochs,
        "ss_num_batches_per_epoch": plan.batches_per_epoch,
        "ss_gradient_accumulation_steps": config.gradient_accumulation_steps,
        "ss_gradient_checkpointing": config.gradient_checkpointing,
        "ss_mixed_precision": plan.precision,
        "ss_full_fp16": False,
        "ss_network_module": "networks.lora",
        "ss_network_dim": plan.rank,
        "ss_network_alpha": plan.alpha,
        "ss_network_dropout": config.network_dropout,
        "ss_network_args": json.dumps(config.network_arg_dict()),
        "ss_network_train_unet_only": not plan.train_text_encoder,
        "ss_sd_model_name": model.name,
        "ss_sd_model_hash": model.legacy_hash,
        "ss_clip_skip": None if model.family.name == "sdxl" else config.clip_skip,  # SDXL: fixed penultimate layers
        "ss_max_token_length": config.max_token_length,
        "ss_noise_offset": config.noise_offset,
        "ss_min_snr_gamma": config.min_snr_gamma,
        "ss_num_train_images": data.num_train_images if data is not None else scan.num_train_images,
        "ss_cache_latents": config.cache_latents or config.cache_latents_to_disk,
        "ss_batch_size_per_device": plan.batch_size,
        "ss_total_batch_size": plan.total_batch_size,
        "ss_num_processes": plan.processes,
        "ss_resolution": f"({w}, {h})",
        "ss_enable_bucket": bool(config.enable_bucket),
        "ss_min_bucket_reso": config.min_bucket_reso if config.enable_bucket else None,
        "ss_max_bucket_reso": config.max_bucket_reso if config.enable_bucket else None,
        "ss_bucket_no_upscale": bool(config.bucket_no_upscale) if config.enable_bucket else None,
        "ss_bucket_info": json.dumps(data.bucket_info() if data is not None else
                                     {"buckets": {"0": {"resolution": [w, h], "count": scan.num_train_images}},
                                      "mean_img_ar_error": 0.0}),
        "ss_reg_dataset_dirs": json.dumps(data.reg_dirs if data is not None else {}),
        "ss_num_reg_images": data.num_reg_images if data is not None else 0,
        "ss_prior_loss_weight": config.prior_loss_weight,
        "ss_shuffle_caption": bool(config.shuffle_caption),
        "ss_keep_tokens": config.keep_tokens,
        "ss_caption_dropout_rate": config.caption_dropout_rate,
        "ss_caption_dropout_every_n_epochs": config.caption_dropout_every_n_epochs,
        "ss_caption_tag_dropout_rate": config.caption_tag_dropout_rate,
        "ss_flip_aug": bool(config.flip_aug),
        "ss_random_crop": bool(config.random_crop),
        "ss_validation_split": config.validation_split,
        "ss_validation_seed": (config.validation_seed if config.validation_seed is not None else plan.seed)
                              if config.validation_split else None,  # the one that chose the held-out images
        "ss_num_validation_images": len(data.validation) if data is not None else 0,
        "ss_dataset_dirs": json.dumps(scan.dataset_dirs()),
        "ss_tag_frequency": json.dumps(scan.tag_frequency()),
        "ss_caption_extension": config.caption_extension,
        "modelspec.sai_model_spec": "1.0.0",
        **family_keys(model.family),
        "modelspec.title": output_name,
        "modelspec.resolution": f"{w}x{h}",
        "modelspec.date": datetime.datetime.fromtimestamp(int(started_at)).isoformat(),
        "modelspec.encoder_layer": 2 if model.family.name == "sdxl" else config.clip_skip or 1,
    }
    if finished:
        md["ss_training_finished_at"] = run_clock()
    if config.trigger_words:
        md["modelspec.trigger_phrase"] = config.trigger_words
    if config.no_metadata:
        md = {k: v for k, v in md.items() if k in MINIMUM_KEYS or k.startswith("modelspec.")}
    return {k: str(v) for k, v in md.items()}
