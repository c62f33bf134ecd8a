"""The "Instant LoRA" section of the WebUI's Settings, and reading an option safely."""

from __future__ import annotations

SECTION = ("instant_lora", "Instant LoRA")
OPT_PRESET = "instant_lora_default_preset"
OPT_KEEP_ON_GPU = "instant_lora_keep_model_on_gpu"
OPT_SAMPLE_PROMPTS = "instant_lora_sample_prompts"
OPT_SAMPLE_EVERY = "instant_lora_sample_every_n_steps"


def opt(name: str, default=None):
    """A WebUI option, or `default` when unset or unreadable."""
    from modules import shared

    try:
        value = getattr(shared.opts, name)
    except Exception:
        return default
    return default if value is None else value


def add_settings() -> None:
    """on_ui_settings: the "Instant LoRA" section of Settings."""
    import gradio as gr
    from modules import shared

    from ...presets import list_presets

    def preset_choices():
        return {"choices": [""] + list(list_presets(_data_dir() / "presets"))}

    def option(key, default, label, component=None, component_args=None):
        try:
            info = shared.OptionInfo(default, label, component, component_args, section=SECTION, category_id="training")
        except TypeError:  # WebUIs before 1.7 have no settings categories
            info = shared.OptionInfo(default, label, component, component_args, section=SECTION)
        shared.opts.add_option(key, info)

    option(OPT_PRESET, "", "Preset selected when the tab opens (empty: the tab's own defaults)", gr.Dropdown, preset_choices)
    option(OPT_KEEP_ON_GPU, False, "Keep the WebUI's model on the GPU while training (needs more VRAM; skips moving it "
                                   "to the CPU and back)")
    option(OPT_SAMPLE_PROMPTS, "", "Default sample prompts, one per line (rendered with the LoRA while it trains)",
           gr.Textbox, {"lines": 3})
    option(OPT_SAMPLE_EVERY, 0, "Default: render the samples every N steps (0 = no samples)", gr.Slider,
           {"minimum": 0, "maximum": 2000, "step": 10})


def _data_dir():
    from . import get_host

    return get_host().data_dir
