"""2. Model & LoRA: the base model, presets, every training setting (typed and explained from the
config), and the live plan."""

from __future__ import annotations

from dataclasses import dataclass

from .. import fields as form_fields


@dataclass
class ModelSection:
    checkpoint: object
    refresh: object
    models_message: object  # under the list: where checkpoints are read from when there is none; download progress
    download: object  # "Download SD1.5 (4.3 GB)": shown when the list is empty and the host can download
    preset: object
    preset_name: object
    save_preset: object
    fields: dict  # config field name -> component, in FORM_FIELDS order (the dataset section's too)
    overwrite: object
    plan: object
    preset_message: object
    anatomy: object  # "What will be trained": the adapted modules and shapes (handlers.anatomy)


def field_component(gr, name: str, label: str, value, **layout):
    """A form component for a config field, typed from the config, with its one-line help;
    `layout`: the component's own layout options (scale)."""
    from ...config import field_type

    kind, choices = field_type(name), form_fields.choices_for(name)
    common = {"label": label, "info": form_fields.help_for(name), "elem_id": f"il_{name}", **layout}
    shown = form_fields.shown_value(name, value)
    if kind is bool:
        return gr.Checkbox(value=bool(shown), **common)
    if choices:
        not_set = form_fields.FIELDS[name].default is None and name not in form_fields.NONE_SHOWN_AS
        options = list(choices) + ([form_fields.NONE_CHOICE] if not_set else [])
        return gr.Dropdown(choices=options, value=shown, **common)
    if kind in (int, float):
        return gr.Number(value=shown, precision=0 if kind is int else None, **common)
    return gr.Textbox(value=shown, **common)


def rows(gr, table, values: dict, out: dict, per_row: int = 3) -> None:
    """The fields of `table` ((name, label) pairs), `per_row` to a row, into `out` by name."""
    for start in range(0, len(table), per_row):
        with gr.Row():
            for name, label in table[start:start + per_row]:
                out[name] = field_component(gr, name, label, values[name])


def build(gr, ctx) -> ModelSection:
    from ..handlers.models import download_label, models_view
    from ..handlers.run import preset_choices

    host = ctx.host
    view = models_view(host)
    where = ("this app's models folder, then any A1111 / Forge / ComfyUI install found" if host.can_download_models
             else "the models folder")
    with gr.Accordion("2. Model & LoRA", open=True, elem_id="il_section_model"):
        with gr.Row():
            checkpoint = gr.Dropdown(choices=view.choices, value=view.value, label="Base model",
                                     elem_id="il_checkpoint", allow_custom_value=True, scale=4,
                                     info=f"SD1.x, SD2.x or SDXL checkpoint from {where} (its family is read from the file); the LoRA works best on the model it was trained on.")
            refresh = gr.Button("Refresh", elem_id="il_refresh_models", scale=1)
        with gr.Row():
            models_message = gr.Markdown(view.message, elem_id="il_models_msg")
            download = gr.Button(download_label(), elem_id="il_download_model", visible=view.show_download, scale=0)
        with gr.Row():
            preset = gr.Dropdown(choices=preset_choices(host), value=None, label="Preset", elem_id="il_preset",
                                 info="Load tested settings; Balanced suits most subjects.")
            preset_name = gr.Textbox(label="Save current settings as", elem_id="il_preset_name",
                                     info="A name for your own preset (JSON in the app's data folder).")
            save_preset = gr.Button("Save preset", elem_id="il_save_preset")
        components = ctx.fields  # the dataset section's fields are in it already
        rows(gr, form_fields.BASIC_FIELDS, ctx.form, components)
        overwrite = gr.Checkbox(value=False, label="Replace existing file", elem_id="il_overwrite",
                                info="Allow this output name to replace a LoRA of the same name in the Lora folder.")
        with gr.Accordion("Advanced", open=False, elem_id="il_advanced"):
            rows(gr, form_fields.ADVANCED_FIELDS, ctx.form, components)
        plan = gr.Markdown(elem_id="il_plan")
        with gr.Accordion("What will be trained", open=False, elem_id="il_section_anatomy"):
            anatomy = gr.HTML(elem_id="il_anatomy")
        preset_message = gr.Markdown(elem_id="il_preset_msg")
    ordered = {name: components[name] for name in form_fields.FORM_FIELDS}
    return ModelSection(checkpoint, refresh, models_message, download, preset, preset_name, save_preset, ordered, overwrite,
                        plan, preset_message, anatomy)
