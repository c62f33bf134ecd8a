"""modules.sd_models: the checkpoint list, the loaded model and moving it between devices.

A1111 1.10: unload_model_weights() = send_model_to_cpu (the weights stay in RAM) and
send_model_to_device() brings them back. A loaded model carries `is_sdxl` / `is_sd2` / `is_sd1` as
load_model_weights sets them: SDXL when the model has a `conditioner` (its config, guessed from the
checkpoint's tensor names, is sd_xl_base: `conditioner.embedders.1.model.ln_final.weight`), SD2
when its cond_stage_model has a `model` (OpenCLIP: `cond_stage_model.model.*`), SD1 otherwise; the
stand-in reads the names from a .safetensors header (any other file is SD1). Forge (with forge/ on sys.path): send_model_to_cpu /
send_model_to_device do nothing and unload_model_weights() asks backend.memory_management.
"""

import importlib.util
import json
import os
import re
import struct

from modules import paths, record, shared

FORGE = importlib.util.find_spec("modules_forge") is not None
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")

checkpoints_list = {}
checkpoint_aliases = {}


class CheckpointInfo:
    def __init__(self, filename):
        self.filename = filename
        abspath = os.path.abspath(filename)
        model_dir = os.path.abspath(os.path.join(paths.models_path, "Stable-diffusion"))
        self.is_safetensors = os.path.splitext(filename)[1].lower() == ".safetensors"
        name = os.path.relpath(abspath, model_dir) if abspath.startswith(model_dir) else os.path.basename(filename)
        if name.startswith("\\") or name.startswith("/"):
            name = name[1:]
        self.name = name
        self.name_for_extra = os.path.splitext(os.path.basename(filename))[0]
        self.model_name = os.path.splitext(name.replace("/", "_").replace("\\", "_"))[0]
        self.hash = None
        self.sha256 = None
        self.shorthash = None
        self.title = name
        self.short_title = self.name_for_extra
        self.ids = [self.name, self.model_name, self.name_for_extra]
        self.metadata = {}

    def register(self):
        checkpoints_list[self.title] = self
        for cid in self.ids:
            checkpoint_aliases[cid] = self


def list_models():
    record("sd_models.list_models")
    checkpoints_list.clear()
    checkpoint_aliases.clear()
    folders = [os.path.join(paths.models_path, "Stable-diffusion")]
    if shared.cmd_opts.ckpt_dir:
        folders.append(shared.cmd_opts.ckpt_dir)
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for root, _, files in os.walk(folder):
            for f in sorted(files):
                if f.lower().endswith(CHECKPOINT_SUFFIXES):
                    CheckpointInfo(os.path.join(root, f)).register()


def checkpoint_tiles(use_short=False):
    return [x.short_title if use_short else x.title for x in checkpoints_list.values()]


def get_closet_checkpoint_match(search_string):
    if not search_string:
        return None
    info = checkpoint_aliases.get(search_string, None)
    if info is not None:
        return info
    found = sorted([info for info in checkpoints_list.values() if search_string in info.title], key=lambda x: len(x.title))
    if found:
        return found[0]
    search_string_without_checksum = re.sub(re.compile(r"\s\[[^]]+]\s*$"), "", search_string)
    found = sorted([info for info in checkpoints_list.values() if search_string_without_checksum in info.title],
                   key=lambda x: len(x.title))
    return found[0] if found else None


def select_checkpoint():
    info = checkpoint_aliases.get(shared.opts.data.get("sd_model_checkpoint"), None)
    if info is not None:
        return info
    if not checkpoints_list:
        raise FileNotFoundError("No checkpoints found")
    return next(iter(checkpoints_list.values()))


def _tensor_names(filename) -> set:
    """The tensor names in a .safetensors header (8-byte length, then JSON); none for other files."""
    try:
        with open(filename, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if not 2 <= length <= 100_000_000:
                return set()
            header = json.loads(f.read(length))
    except (OSError, ValueError, struct.error):
        return set()
    return {k for k in header if k != "__metadata__"} if isinstance(header, dict) else set()


class FakeSdModel:
    """What the extension may look at on the loaded model; `.to()` records the move."""

    def __init__(self, info):
        self.sd_checkpoint_info = info
        self.sd_model_checkpoint = info.filename
        self.sd_model_hash = info.shorthash
        names = _tensor_names(info.filename)
        # load_model_weights: is_sdxl = hasattr(model, 'conditioner'), is_sd2 = the cond_stage_model has a `model`
        self.is_sdxl = any(n.startswith("conditioner.embedders.") for n in names)
        self.is_sd2 = not self.is_sdxl and any(n.startswith("cond_stage_model.model.") for n in names)
        self.is_sd1 = not self.is_sdxl and not self.is_sd2
        self.is_ssd = self.is_sdxl and "model.diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight" not in names
        if self.is_sdxl:
            self.conditioner = object()  # sgm's GeneralConditioner: what makes the model SDXL to the WebUI
        self.lowvram = False
        self.device = shared.device

    def to(self, device):
        record(("sd_model.to", str(device)))
        self.device = str(device)
        return self


class SdModelData:
    def __init__(self):
        self.sd_model = None
        self.loaded_sd_models = []
        self.was_loaded_at_least_once = False

    def get_sd_model(self):
        if self.sd_model is None and not self.was_loaded_at_least_once:
            load_model()
        return self.sd_model

    def set_sd_model(self, v, already_loaded=False):
        self.sd_model = v
        if v is not None:
            self.was_loaded_at_least_once = True
            if v not in self.loaded_sd_models:
                self.loaded_sd_models.insert(0, v)


model_data = SdModelData()


def load_model(checkpoint_info=None, already_loaded_state_dict=None):
    record("sd_models.load_model")  # Forge: model_data.forge_loading_parameters + forge_model_reload(), same result
    info = checkpoint_info or select_checkpoint()
    model = FakeSdModel(info)
    model_data.set_sd_model(model)
    shared.opts.data["sd_model_checkpoint"] = info.title
    return model


def send_model_to_cpu(m):
    record("sd_models.send_model_to_cpu")
    if FORGE:
        return
    m.to("cpu")


def send_model_to_device(m):
    record("sd_models.send_model_to_device")
    if FORGE:
        return
    m.to(shared.device)


def send_model_to_trash(m):
    record("sd_models.send_model_to_trash")


def unload_model_weights(sd_model=None, info=None):
    record("sd_models.unload_model_weights")
    if FORGE:
        from backend import memory_management

        memory_management.unload_all_models()
        return
    send_model_to_cpu(sd_model or shared.sd_model)
    return sd_model


def reload_model_weights(sd_model=None, info=None, forced_reload=False):
    record("sd_models.reload_model_weights")
    return sd_model or model_data.sd_model
