"""1. Dataset: a folder on this machine or uploads, the regularization folder, the images with their
buckets and captions, caption edits, auto-captioning, and the dataset options (buckets, captions,
augmentation, validation: config fields, laid out as the model section lays out its own)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import fields as form_fields
from ..compat import gradio_major
from .model import field_component, rows


@dataclass
class DatasetSection:
    folder: object
    load: object
    uploads: object
    upload_name: object
    upload_repeats: object
    upload: object
    reg_summary: object  # what the Regularization folder holds
    summary: object
    buckets: object  # the bucket table and the images upscaled too much
    problems: object
    gallery: object
    selected_name: object
    caption: object
    save_caption: object
    caption_mode: object
    clip_model: object
    clip_pretrained: object
    auto_caption: object
    caption_status: object
    message: object
    scan: object  # State: the DatasetScan of the loaded folder (or None)
    paths: object  # State: the image behind each gallery tile
    selected: object  # State: the selected image's path
    fields: dict  # the config fields laid out here (Regularization folder, Dataset options), by name


def build(gr, ctx) -> DatasetSection:
    scan, paths, selected = gr.State(None), gr.State([]), gr.State("")
    with gr.Accordion("1. Dataset", open=True, elem_id="il_section_dataset"):
        with gr.Row():
            folder = gr.Textbox(label="Dataset folder", elem_id="il_dataset_dir", scale=4,
                                info="A folder on this machine with N_name subfolders (N = repeats) or images directly inside.")
            load = gr.Button("Load folder", elem_id="il_load_dataset", scale=1)
        fields = ctx.fields
        with gr.Row():
            for (name, label), scale in zip(form_fields.REG_FIELDS, (4, 1)):
                fields[name] = field_component(gr, name, label, ctx.form[name], scale=scale)
        reg_summary = gr.Markdown(elem_id="il_reg_summary")
        with gr.Accordion("Upload images from the browser", open=False, elem_id="il_upload_section"):
            uploads = gr.File(label="Images (and optional .txt captions)", file_count="multiple", elem_id="il_uploads")
            with gr.Row():
                upload_name = gr.Textbox(label="Dataset name", value="my_dataset", elem_id="il_upload_name",
                                         info="Folder name under the app's data folder; also the fallback caption.")
                upload_repeats = gr.Number(label="Repeats", value=10, precision=0, elem_id="il_upload_repeats",
                                           info="How often each image is seen per epoch (10 suits 10-30 images).")
            upload = gr.Button("Add to dataset", elem_id="il_upload_btn")
            if gradio_major(gr) < 4:  # gradio-app/gradio#5517: an upload that meets another event can stall
                gr.Markdown("If a file stays at *Uploading...*, press x on the box and drop the files again.",
                            elem_id="il_upload_hint")
        summary = gr.Markdown(elem_id="il_dataset_summary")
        buckets = gr.Markdown(elem_id="il_dataset_buckets")
        problems = gr.Markdown(elem_id="il_dataset_problems")
        gallery = gr.Gallery(label="Images (click one to edit its caption)", columns=5, height=320, elem_id="il_gallery")
        with gr.Row():
            selected_name = gr.Textbox(label="Selected image", interactive=False, elem_id="il_selected_image", scale=1)
            caption = gr.Textbox(label="Caption", elem_id="il_caption", scale=4,
                                 info="What is in the picture besides your subject; saved as <image>.txt beside it.")
            save_caption = gr.Button("Save caption", elem_id="il_save_caption", scale=1)
        with gr.Accordion("Auto-caption (CLIP interrogation)", open=False, elem_id="il_autocaption_section"):
            with gr.Row():
                caption_mode = gr.Radio(["fill", "overwrite", "append"], value="fill", label="Mode", elem_id="il_caption_mode",
                                        info="fill: only images without a caption; overwrite: all; append: add tags to existing.")
                clip_model = gr.Textbox(value="ViT-L-14", label="CLIP model", elem_id="il_clip_model",
                                        info="open_clip name, a weights file, or local-dir:PATH.")
                clip_pretrained = gr.Textbox(value="openai", label="CLIP weights", elem_id="il_clip_pretrained",
                                             info="open_clip pretrained tag (openai for SD's own CLIP).")
            auto_caption = gr.Button("Auto-caption", elem_id="il_autocaption_btn")
            caption_status = gr.Markdown(elem_id="il_caption_status")
        with gr.Accordion("Dataset options: buckets, captions, augmentation, validation", open=False,
                          elem_id="il_dataset_options"):
            for title, group in form_fields.DATASET_GROUPS:
                gr.Markdown(f"**{title}**")
                rows(gr, group, ctx.form, fields, per_row=4 if len(group) == 4 else 3)
        message = gr.Markdown(elem_id="il_dataset_msg")
    own = {name: fields[name] for name, _ in form_fields.DATASET_FIELDS}
    return DatasetSection(folder, load, uploads, upload_name, upload_repeats, upload, reg_summary, summary, buckets, problems,
                          gallery, selected_name, caption, save_caption, caption_mode, clip_model, clip_pretrained,
                          auto_caption, caption_status, message, scan, paths, selected, own)
