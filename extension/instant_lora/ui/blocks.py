"""One Gradio Blocks for both front ends: Dataset -> Model & LoRA -> Train -> Result.

Layout first, wiring after. Every handler delegates to `actions` (or the trainer package) and
turns an InstantLoraError into a visible message; nothing here knows how training works.
"""

from pathlib import Path

import gradio as gr  # this module is only imported by build_ui, never at package import

from ..errors import InstantLoraError
from . import actions
from .compat import copyable_textbox, every, gradio_major, upload_paths

INTRO = ("### Instant LoRA\nTrain a LoRA on your images and use it in the next prompt as `<lora:name:0.8>`. "
         "Work top to bottom: **1 Dataset**, **2 Model & LoRA**, **3 Train**, **4 Result**.")


def _message(e: Exception) -> str:
    if isinstance(e, InstantLoraError):
        return f"**{e.message}**" + (f"\n\n{e.hint}" if e.hint else "")
    return f"**Unexpected error:** {type(e).__name__}: {e}"


def _component(name: str, label: str, value):
    """A form component for a config field, typed from the config, with its one-line help."""
    from ..config import field_type

    kind, help_text, choices = field_type(name), actions.help_for(name), actions.choices_for(name)
    common = dict(label=label, info=help_text, elem_id=f"il_{name}")
    if kind is bool:
        return gr.Checkbox(value=bool(value), **common)
    if choices:
        opts = list(choices) + (["(none)"] if value is None else [])
        return gr.Dropdown(choices=opts, value=value if value is not None else "(none)", **common)
    if kind in (int, float):
        return gr.Number(value=value if value is not None else 0, precision=0 if kind is int else None, **common)
    if kind is list:
        return gr.Textbox(value=" ".join(value or []), **common)
    return gr.Textbox(value=value or "", **common)


def build_ui(host, job=None):
    """The whole app as a gr.Blocks. `host` supplies folders, checkpoints and the VRAM hand-off."""
    from ..jobs import current_job
    from ..presets import list_presets, load_preset, save_preset

    job = job or current_job()
    # The parameter count needs SD1.5's skeleton (a few seconds to build): warm it up now.
    import threading

    threading.Thread(target=actions.lora_parameter_count, args=(16, "default", True), daemon=True).start()
    user_presets = host.data_dir / "presets"
    defaults = actions.initial_values()

    with gr.Blocks(title="Instant LoRA", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        scan_state = gr.State(None)
        items_state = gr.State([])
        selected_state = gr.State("")

        # ---- 1. Dataset -----------------------------------------------------------------
        with gr.Accordion("1. Dataset", open=True, elem_id="il_section_dataset"):
            with gr.Row():
                dataset_dir = gr.Textbox(label="Dataset folder", elem_id="il_dataset_dir", scale=4,
                                         info="A folder on this machine with N_name subfolders (N = repeats) or images directly inside.")
                load_btn = gr.Button("Load folder", elem_id="il_load_dataset", scale=1)
            with gr.Accordion("Upload images from the browser", open=False, elem_id="il_upload_section"):
                uploads = gr.File(label="Images (and optional .txt captions)", file_count="multiple", elem_id="il_uploads")
                with gr.Row():
                    upload_name = gr.Textbox(label="Dataset name", value="my_dataset", elem_id="il_upload_name",
                                             info="Folder name under the app's data folder; also the fallback caption.")
                    upload_repeats = gr.Number(label="Repeats", value=10, precision=0, elem_id="il_upload_repeats",
                                               info="How often each image is seen per epoch (10 suits 10-30 images).")
                upload_btn = gr.Button("Add to dataset", elem_id="il_upload_btn")
                if gradio_major(gr) < 4:  # gradio-app/gradio#5517: an upload that meets another event can stall
                    gr.Markdown("If a file stays at *Uploading...*, press x on the box and drop the files again.",
                                elem_id="il_upload_hint")
            dataset_summary = gr.Markdown(elem_id="il_dataset_summary")
            dataset_problems = gr.Markdown(elem_id="il_dataset_problems")
            gallery = gr.Gallery(label="Images (click one to edit its caption)", columns=6, height=320, elem_id="il_gallery")
            with gr.Row():
                selected_name = gr.Textbox(label="Selected image", interactive=False, elem_id="il_selected_image", scale=1)
                caption_box = gr.Textbox(label="Caption", elem_id="il_caption", scale=4,
                                         info="First line of <image>.txt: what is in the picture besides your subject.")
                save_caption_btn = gr.Button("Save caption", elem_id="il_save_caption", scale=1)
            with gr.Accordion("Auto-caption (CLIP interrogation)", open=False, elem_id="il_autocaption_section"):
                with gr.Row():
                    cap_mode = gr.Radio(["fill", "overwrite", "append"], value="fill", label="Mode", elem_id="il_caption_mode",
                                        info="fill: only images without a caption; overwrite: all; append: add tags to existing.")
                    cap_model = gr.Textbox(value="ViT-L-14", label="CLIP model", elem_id="il_clip_model",
                                           info="open_clip name, a weights file, or local-dir:PATH.")
                    cap_pretrained = gr.Textbox(value="openai", label="CLIP weights", elem_id="il_clip_pretrained",
                                                info="open_clip pretrained tag (openai for SD's own CLIP).")
                caption_btn = gr.Button("Auto-caption", elem_id="il_autocaption_btn")
                caption_status = gr.Markdown(elem_id="il_caption_status")
            dataset_msg = gr.Markdown(elem_id="il_dataset_msg")

        # ---- 2. Model & LoRA --------------------------------------------------------------
        with gr.Accordion("2. Model & LoRA", open=True, elem_id="il_section_model"):
            with gr.Row():
                checkpoint = gr.Dropdown(choices=host.list_checkpoints(), value=host.default_checkpoint(), label="Base model",
                                         elem_id="il_checkpoint", allow_custom_value=True, scale=4,
                                         info="SD1.x checkpoint from the models folder; the LoRA works best on the model it was trained on.")
                refresh_btn = gr.Button("Refresh", elem_id="il_refresh_models", scale=1)
            with gr.Row():
                preset = gr.Dropdown(choices=list(list_presets(user_presets)), value=None, label="Preset", elem_id="il_preset",
                                     info="Load tested settings; Balanced suits most subjects.")
                preset_name = gr.Textbox(label="Save current settings as", elem_id="il_preset_name",
                                         info="A name for your own preset (JSON in the app's data folder).")
                save_preset_btn = gr.Button("Save preset", elem_id="il_save_preset")
            fields = {}
            for row in range(0, len(actions.BASIC_FIELDS), 3):
                with gr.Row():
                    for name, label in actions.BASIC_FIELDS[row:row + 3]:
                        fields[name] = _component(name, label, defaults[name])
            overwrite = gr.Checkbox(value=False, label="Replace existing file", elem_id="il_overwrite",
                                    info="Allow this output name to replace a LoRA of the same name in the Lora folder.")
            with gr.Accordion("Advanced", open=False, elem_id="il_advanced"):
                for row in range(0, len(actions.ADVANCED_FIELDS), 3):
                    with gr.Row():
                        for name, label in actions.ADVANCED_FIELDS[row:row + 3]:
                            fields[name] = _component(name, label, defaults[name])
            plan_md = gr.Markdown(elem_id="il_plan")
            preset_msg = gr.Markdown(elem_id="il_preset_msg")

        # ---- 3. Train -----------------------------------------------------------------------
        with gr.Accordion("3. Train", open=True, elem_id="il_section_train"):
            with gr.Row():
                start_btn = gr.Button("Start training", variant="primary", elem_id="il_start")
                cancel_btn = gr.Button("Cancel", variant="stop", elem_id="il_cancel")
            train_msg = gr.Markdown(elem_id="il_train_msg")
            progress = gr.HTML(actions.progress_html(job.snapshot()), elem_id="il_progress")
            loss_chart = gr.HTML(elem_id="il_loss_chart")
            with gr.Row():
                sample_text = gr.Textbox(label="Sample prompts", lines=2, elem_id="il_sample_prompts", scale=3,
                                         info="One per line, rendered with the LoRA as it trains (fixed seeds). Options: --n negative --s steps.")
                sample_every = gr.Number(label="Sample every N steps", value=0, precision=0, elem_id="il_sample_every", scale=1,
                                         info="0 = no samples; each sample costs a few seconds.")
            samples = gr.Gallery(label="Samples", columns=4, height=240, elem_id="il_samples")
            log = gr.Textbox(label="Log", lines=8, max_lines=8, interactive=False, elem_id="il_log")

        # ---- 4. Result ------------------------------------------------------------------------
        with gr.Accordion("4. Result", open=True, elem_id="il_section_result"):
            result_md = gr.Markdown(elem_id="il_result")
            result_tag = copyable_textbox(gr, label="Use it in a prompt", interactive=False, elem_id="il_result_tag")
            test_btn = gr.Button("Open the test panel", elem_id="il_open_test")
            if hasattr(host, "extend_ui"):  # a host's own controls here (the WebUI: "Send to txt2img")
                host.extend_ui(gr, demo, job)

        # ---- 5. Test ------------------------------------------------------------------------
        from ..sample.settings import SAMPLERS

        with gr.Column(visible=False, elem_id="il_test_panel") as test_panel:
            gr.Markdown("### 5. Test\nGenerate with the base model and `<lora:name:w>` tags, or a grid of the run's saved "
                        "epochs (rows) x weights (columns) at one seed. Weight 0 is the base model.")
            with gr.Row():
                test_prompt = gr.Textbox(label="Prompt", lines=2, elem_id="il_test_prompt", scale=3,
                                         info="Use <lora:name:weight> tags; several are fine.")
                test_negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="il_test_negative", scale=2,
                                           info="What to keep out of the image.")
            with gr.Row():
                test_sampler = gr.Dropdown(choices=list(SAMPLERS), value=SAMPLERS[0], label="Sampler", elem_id="il_test_sampler",
                                           info="Euler a is quick; DPM++ 2M Karras is sharper at few steps.")
                test_steps = gr.Number(value=20, precision=0, label="Steps", elem_id="il_test_steps", info="Denoising steps (20-30).")
                test_cfg = gr.Number(value=7, label="CFG scale", elem_id="il_test_cfg", info="How strictly to follow the prompt (5-9).")
                test_seed = gr.Number(value=-1, precision=0, label="Seed", elem_id="il_test_seed", info="-1 = random.")
                test_width = gr.Number(value=512, precision=0, label="Width", elem_id="il_test_width", info="Multiple of 8.")
                test_height = gr.Number(value=512, precision=0, label="Height", elem_id="il_test_height", info="Multiple of 8.")
            generate_btn = gr.Button("Generate", elem_id="il_generate")
            test_image = gr.Image(label="Image", type="pil", elem_id="il_test_image", interactive=False)
            test_msg = gr.Markdown(elem_id="il_test_msg")
            with gr.Row():
                grid_run = gr.Textbox(label="Run", elem_id="il_grid_run", info="The output name whose saved epochs form the rows.")
                grid_weights = gr.Textbox(value="0, 0.4, 0.7, 1", label="Weights", elem_id="il_grid_weights",
                                          info="The columns; 0 shows the base model.")
            grid_btn = gr.Button("Generate grid", elem_id="il_grid_btn")
            grid_image = gr.Image(label="Grid (click a cell to pick it)", type="pil", elem_id="il_grid_image", interactive=False)
            grid_state = gr.State(None)
            with gr.Row():
                grid_cell = gr.Dropdown(choices=[], label="Cell", elem_id="il_grid_cell",
                                        info="The picked cell becomes the LoRA's preview and its weight the preferred weight.")
                preview_btn = gr.Button("Use as preview", elem_id="il_use_preview")
            cell_info = copyable_textbox(gr, label="Cell parameters", lines=3, interactive=False, elem_id="il_grid_cell_info",
                                         info="The picked cell's prompt and settings, as txt2img reads them (paste into its prompt box).")
            if hasattr(host, "extend_test_panel"):  # the WebUI: "Send cell to txt2img"
                host.extend_test_panel(gr, demo, cell_info)
            grid_msg = gr.Markdown(elem_id="il_grid_msg")

        # ---- wiring ---------------------------------------------------------------------------
        field_names = list(fields)
        field_inputs = [fields[n] for n in field_names]

        def form_values(*vals):
            return {n: (None if v == "(none)" else v) for n, v in zip(field_names, vals)}

        def show_dataset(folder, ext):
            items, summary, problems, scan = actions.dataset_view(folder, ext or ".txt")
            return items, summary, problems, scan, items

        load_outputs = [gallery, dataset_summary, dataset_problems, scan_state, items_state]
        def update_plan(scan, *vals):
            return actions.plan_markdown(form_values(*vals), scan)

        plan_inputs = [scan_state] + field_inputs
        load_btn.click(show_dataset, [dataset_dir, fields["caption_extension"]], load_outputs).then(update_plan, plan_inputs, [plan_md])
        dataset_dir.submit(show_dataset, [dataset_dir, fields["caption_extension"]], load_outputs).then(
            update_plan, plan_inputs, [plan_md])

        def do_upload(files, name, repeats, ext):
            try:
                folder, report = actions.import_uploads(upload_paths(files), host.data_dir, name, repeats)
            except InstantLoraError as e:
                return ("", _message(e)) + (gr.update(),) * 5
            return (folder, report) + show_dataset(folder, ext)

        # Says what arrived, so nobody clicks "Add to dataset" while the browser is still uploading.
        uploads.change(lambda files: actions.describe_uploads(upload_paths(files)), [uploads], [dataset_msg])
        upload_btn.click(do_upload, [uploads, upload_name, upload_repeats, fields["caption_extension"]],
                         [dataset_dir, dataset_msg] + load_outputs).then(update_plan, plan_inputs, [plan_md])

        def select_image(items, ext, evt: gr.SelectData):
            if not items or evt.index is None:
                return "", "", ""
            index = evt.index if isinstance(evt.index, int) else evt.index[0]
            path = items[index][0]
            return path, Path(path).name, actions.caption_of(path, ext or ".txt")

        gallery.select(select_image, [items_state, fields["caption_extension"]], [selected_state, selected_name, caption_box])

        def do_save_caption(path, caption, folder, ext):
            try:
                msg = actions.save_caption(path, caption, folder, ext or ".txt")
            except InstantLoraError as e:
                return (_message(e),) + (gr.update(),) * 5
            return (msg,) + show_dataset(folder, ext)

        save_caption_btn.click(do_save_caption, [selected_state, caption_box, dataset_dir, fields["caption_extension"]],
                               [dataset_msg] + load_outputs)

        def do_caption(folder, mode, model, pretrained, trigger, ext, progress_bar=gr.Progress()):
            from ..captioning import CaptionOptions, caption_folder, free_clip_model

            if not folder:
                return ("Load a dataset first.",) + (gr.update(),) * 5
            if job.snapshot().running:  # CLIP beside a training would fight it for VRAM
                return ("A training is running: caption when it has finished.",) + (gr.update(),) * 5
            try:
                opts = CaptionOptions(mode=mode, clip_model=model.strip() or "ViT-L-14", clip_pretrained=pretrained.strip(),
                                      prefix=trigger or "", caption_extension=ext or ".txt")
                with host.exclusive("Instant LoRA: captioning"):
                    report = caption_folder(folder, opts, progress=lambda done, total, rate=0.0: progress_bar(
                        done / max(total, 1), desc=f"captioning {done}/{total}"))
            except InstantLoraError as e:
                return (_message(e),) + (gr.update(),) * 5
            finally:
                free_clip_model()
            return (report.summary(),) + show_dataset(folder, ext)

        caption_btn.click(do_caption, [dataset_dir, cap_mode, cap_model, cap_pretrained, fields["trigger_words"],
                                       fields["caption_extension"]], [caption_status] + load_outputs)

        def refresh_models(current):
            choices = host.list_checkpoints()
            return gr.update(choices=choices, value=current if current in choices else host.default_checkpoint())

        refresh_btn.click(refresh_models, [checkpoint], [checkpoint])

        def apply_preset(name):
            presets = list_presets(user_presets)
            if not name or name not in presets:
                return (gr.update(),) * len(field_names) + ("",)
            try:
                values, description = load_preset(presets[name])
            except InstantLoraError as e:
                return (gr.update(),) * len(field_names) + (_message(e),)
            base = actions.initial_values()
            base.update({"max_train_epochs": None})
            updates = []
            for n in field_names:
                v = values.get(n, base.get(n))
                if n == "network_args":
                    v = " ".join(v or [])
                updates.append(gr.update(value="(none)" if v is None and actions.choices_for(n) else (0 if v is None else v)))
            return tuple(updates) + (f"Preset **{name}**: {description}",)

        preset.change(apply_preset, [preset], field_inputs + [preset_msg])

        def do_save_preset(name, *vals):
            try:
                values = {n: actions._form_value(n, v) for n, v in form_values(*vals).items()}
                path = save_preset(name, values, user_presets)
            except InstantLoraError as e:
                return gr.update(), _message(e)
            return gr.update(choices=list(list_presets(user_presets)), value=path.stem), f"saved preset {path.name}"

        save_preset_btn.click(do_save_preset, [preset_name] + field_inputs, [preset, preset_msg])

        for comp in [fields[n] for n in ("network_dim", "network_alpha", "network_train_unet_only", "max_train_epochs",
                                         "max_train_steps", "train_batch_size", "gradient_accumulation_steps", "network_args",
                                         "save_every_n_epochs", "save_every_n_steps") if n in fields]:
            comp.change(update_plan, plan_inputs, [plan_md])

        def start(folder, ckpt, replace, prompts_text, every_n, *vals):
            values = form_values(*vals)
            snap = job.snapshot()
            if snap.running:
                return f"**A training is already running:** '{snap.name}' at step {snap.step}/{snap.total}. Cancel it first."
            problem = actions.output_name_problem(str(values.get("output_name") or ""), host.lora_dir, bool(replace))
            if problem:
                return f"**{problem}**"
            if not ckpt:
                return "**Choose a base model** (put an SD1.x .safetensors file into the models folder, then Refresh)."
            if not folder:
                return "**Load a dataset first** (section 1)."
            try:
                config = actions.config_from_form(values, checkpoint=host.checkpoint_path(ckpt), dataset_dir=folder,
                                                  output_dir=str(host.lora_dir))
                config.logging_dir = str(host.data_dir / "logs")
                config.sample_prompts, config.sample_every_n_steps = actions.sample_prompt_file(
                    prompts_text, every_n, host.data_dir, config.output_name)
                job.start(config, explicit=set(actions.FORM_FIELDS), before=host.before_training, after=host.after_training,
                          extra_sinks=host.progress_sinks())
            except InstantLoraError as e:
                return _message(e)
            return f"Started **{config.output_name}**."

        start_btn.click(start, [dataset_dir, checkpoint, overwrite, sample_text, sample_every] + field_inputs, [train_msg])

        def cancel():
            return "Cancelling: stopping after the current step and saving." if job.cancel() else "Nothing is running."

        cancel_btn.click(cancel, None, [train_msg])

        def poll():
            snap = job.snapshot()
            md, tag = actions.result_markdown(snap, trigger_words=snap.trigger_words)
            return (actions.progress_html(snap), actions.loss_chart_svg(snap.losses), [(p, c) for c, p in snap.samples],
                    "\n".join(snap.log[-40:]), md, tag)

        every(gr, demo, poll, [progress, loss_chart, samples, log, result_md, result_tag], 1.0)
        demo.load(poll, None, [progress, loss_chart, samples, log, result_md, result_tag])

        from . import testing

        def open_test(tag):
            snap = job.snapshot()
            run = snap.name if snap.result_path else ""  # the output name: its saved files are the grid's rows
            return gr.update(visible=True), gr.update(value=tag or ""), gr.update(value=run)

        test_btn.click(open_test, [result_tag], [test_panel, test_prompt, grid_run])
        settings_inputs = [test_negative, test_sampler, test_steps, test_cfg, test_width, test_height]

        def do_generate(ckpt, prompt, seed, *settings):
            try:
                image, used = testing.generate_image(job, host, ckpt, prompt, seed, testing.settings_from(*settings))
            except Exception as e:  # ours say what to do; anything else (OOM, I/O) is named
                return None, _message(e)
            return image, f"seed {used}"

        generate_btn.click(do_generate, [checkpoint, test_prompt, test_seed] + settings_inputs, [test_image, test_msg])

        def do_grid(ckpt, run, prompt, weights, seed, *settings):
            try:
                grid = testing.generate_grid(job, host, ckpt, run.strip(), prompt, weights, seed, testing.settings_from(*settings))
            except Exception as e:  # ours say what to do; anything else (OOM, I/O) is named
                return None, None, gr.update(choices=[], value=None), "", _message(e)
            labels = testing.cell_labels(grid)
            return (grid.image, grid, gr.update(choices=labels, value=None), "",
                    f"{len(grid.rows)} x {len(grid.weights)} grid, seed {grid.seed}")

        grid_btn.click(do_grid, [checkpoint, grid_run, test_prompt, grid_weights, test_seed] + settings_inputs,
                       [grid_image, grid_state, grid_cell, cell_info, grid_msg])
        grid_cell.change(testing.cell_infotext, [grid_state, grid_cell], [cell_info])

        def click_cell(grid, evt: gr.SelectData):
            if grid is None or evt.index is None:
                return gr.update()
            hit = grid.layout.cell_at(int(evt.index[0]), int(evt.index[1]))
            return gr.update(value=testing.cell_labels(grid)[hit[0] * len(grid.weights) + hit[1]]) if hit else gr.update()

        grid_image.select(click_cell, [grid_state], [grid_cell])

        def do_preview(grid, label):
            try:
                return testing.choose_cell(grid, label)
            except Exception as e:  # ours say what to do; anything else (OOM, I/O) is named
                return _message(e)

        preview_btn.click(do_preview, [grid_state, grid_cell], [grid_msg])
    return demo
