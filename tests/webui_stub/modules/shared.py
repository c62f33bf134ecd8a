"""modules.shared: opts, cmd_opts, state, and `sd_model` as the WebUI has it (a property that loads
the selected checkpoint when none is loaded; peek with sd_models.model_data.sd_model instead)."""

import argparse
import os
import sys
import types

from modules import options, paths, shared_state
from modules.paths import data_path, models_path, script_path  # noqa: F401

OptionInfo = options.OptionInfo

# What `launch.py` / `modules/shared_cmd_options.py` parse; `lora_dir` comes from the built-in
# Lora extension's preload.py (default <models>/Lora, made absolute).
cmd_opts = argparse.Namespace(
    data_dir=data_path, models_dir=None, ckpt_dir=None, lora_dir=os.path.join(paths.models_path, "Lora"),
    lyco_dir_backcompat=os.path.join(paths.models_path, "LyCORIS"), api=False, api_auth=None, gradio_auth=None,
    listen=False, lowvram=False, medvram=False, skip_install=False, nowebui=False,
)
# The WebUI's own options the extension reads (shared_options.py): "None" or a localizations/*.json stem.
opts = options.Options({"localization": OptionInfo("None", "Localization")})
state = shared_state.State()
device = "cuda"
demo = None


class Shared(types.ModuleType):
    @property
    def sd_model(self):
        from modules import sd_models

        return sd_models.model_data.get_sd_model()

    @sd_model.setter
    def sd_model(self, value):
        from modules import sd_models

        sd_models.model_data.set_sd_model(value)


sys.modules[__name__].__class__ = Shared
