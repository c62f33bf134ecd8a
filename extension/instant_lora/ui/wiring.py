"""One Gradio Blocks for both front ends: the sections laid out top to bottom (1 Dataset, 2 Model &
LoRA, 3 Train, 4 Result, 5 Test), then every event wired here, last.

The functions wired here only adapt: component values in, a handler of `ui.handlers` or
`ui.testing` called, its plain result out as component updates, an error as a visible message.
Gradio is imported by build_ui only, never when the package is imported.
"""

import sys
import threading  # no `from __future__ import annotations`: Gradio reads `evt: gr.SelectData` at wiring time
import traceback
from pathlib import Path

from ..errors import InstantLoraError
from . import testing
from .compat import every, gradio_major, in_order, quiet, updates, upload_paths
from .fields import BUCKET_FIELDS, initial_values
from .handlers import buckets as bucket_handlers
from .handlers import dataset as dataset_handlers
from .handlers import error_message
from .handlers import models as model_handlers
from .handlers import progress as progress_handlers
from .handlers import run as run_handlers
from .sections import BuildContext
from .sections import dataset as dataset_section
from .sections import model as model_section
from .sections import result as result_section
from .sections import test as test_section
from .sections import train as train_section

INTRO = ("### Instant LoRA\nTrain a LoRA on your images and use it in the next prompt as `<lora:name:0.8>`. "
         "Work top to bottom: **1 Dataset**, **2 Model & LoRA**, **3 Train**, **4 Result**.")
POLL_SECONDS = 1.0


def _shown(e: Exception) -> str:
    """An error as a message where the user looks; one that is not ours also goes to the console
    with its traceback."""
    if not isinstance(e, InstantLoraError):
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
    return error_message(e)


def build_ui(host, job=None, lang=None):
    """The whole app as a gr.Blocks. `host` supplies folders, checkpoints and the GPU hand-off;
    `lang` the page's language (default: the host's, e.g. the WebUI's Localization setting)."""
    import gradio as real_gr

    from ..i18n import normalize, translate
    from ..jobs import current_job
    from .localized import LocalizedGradio, browser_i18n, localize_events, request_language

    job = job or current_job()
    lang = normalize(lang if lang is not None else host_language(host))
    # The standalone app without --lang follows the browser's language where Gradio can (gr.I18n).
    follow = browser_i18n(real_gr) if lang == "en" and getattr(host, "follows_browser_language", False) else None
    gr = LocalizedGradio(real_gr, (lambda s: translate(s, lang)) if lang != "en" else follow[1] if follow else None)
    # The parameter count needs SD1.5's skeleton (a few seconds to build): warm it up now.
    threading.Thread(target=run_handlers.lora_parameter_count, args=(16, "default", True), daemon=True).start()
    with gr.Blocks(title="Instant LoRA", analytics_enabled=False) as demo:
        gr.Markdown(INTRO)
        ctx = BuildContext(host=host, job=job, demo=demo, form=initial_values(), lang=lang)
        ds = dataset_section.build(gr, ctx)
        md = model_section.build(gr, ctx)
        tr = train_section.build(gr, ctx)
        rs = result_section.build(gr, ctx)
        ts = test_section.build(gr, ctx)

        run = _RunInputs(ctx.host, ds, md, tr)
        _wire_model(gr, ctx, md, tr, run)
        _wire_dataset(gr, ctx, ds, md, run)
        _wire_train(gr, ctx, tr, rs, run)
        _wire_test(gr, ctx, md, rs, ts)
    demo.instant_lora_texts = gr.seen  # the page's English texts, for the catalogue's tests
    demo.instant_lora_lang = lang
    demo.instant_lora_i18n = follow[0] if follow else None  # for launch(i18n=...)
    localize_events(demo, real_gr, request_language if follow else lang)
    return demo


def host_language(host) -> str:
    """The language the host asks for ("en" when it has no say)."""
    try:
        return host.language()
    except Exception:  # an older host object, or the WebUI's option unreadable: English
        return "en"


class _RunInputs:
    """The components a run is made of, how their values become a RunForm, and the live plan."""

    def __init__(self, host, ds, md, tr):
        self.host = host
        self.names = list(md.fields)
        self.components = [ds.folder, md.checkpoint, md.preset, md.overwrite, tr.sample_text, tr.sample_every, tr.gpus,
                           *md.fields.values()]
        self.plan_inputs = [ds.scan, *self.components]
        self.plan_outputs = [md.plan, md.anatomy]  # the live plan and the "What will be trained" panel

    def form(self, folder, checkpoint, preset, overwrite, sample_text, sample_every, gpus, *values) -> run_handlers.RunForm:
        return run_handlers.RunForm(fields=dict(zip(self.names, values)), dataset_dir=folder or "", checkpoint=checkpoint,
                                    preset=preset, overwrite=bool(overwrite), sample_text=sample_text or "",
                                    sample_every=sample_every, gpus=list(gpus or []))

    def update_plan(self, scan, *values):
        """The live plan and the "What will be trained" panel, from one preview of the form (in
        English: the page translates what it is sent)."""
        return run_handlers.plan_and_panel(self.host, self.form(*values), scan)

    def then_update_plan(self, gr, dependency) -> None:
        dependency.then(self.update_plan, self.plan_inputs, self.plan_outputs, **quiet(gr), **in_order(gr, "il_plan"))


def _wire_model(gr, ctx, md, tr, run):
    host = ctx.host
    _wire_base_models(gr, ctx, md)  # first: its page-load refresh is quick, the plan's may wait for a model skeleton
    for component in [md.checkpoint, *md.fields.values(), tr.sample_text, tr.sample_every, tr.gpus]:
        component.change(run.update_plan, run.plan_inputs, run.plan_outputs, **quiet(gr), **in_order(gr, "il_plan"))
    ctx.demo.load(run.update_plan, run.plan_inputs, run.plan_outputs, show_progress="hidden", **in_order(gr, "il_plan"))

    def apply_preset(name):
        try:
            shown, message = run_handlers.preset_form(name, host)
        except Exception as e:
            return updates(gr, {}, run.names) + (_shown(e),)
        return updates(gr, shown, run.names) + (message,)

    # the plan after the fields show the preset: until then they would read as the user's changes
    run.then_update_plan(gr, md.preset.change(apply_preset, [md.preset], [*md.fields.values(), md.preset_message]))

    def save_preset(name, *values):
        try:
            saved, message = run_handlers.save_form_preset(name, run.form(*values), host)
        except Exception as e:
            return gr.update(), _shown(e)
        # selected, so the plan names it (its change event loads it: the same values the form holds)
        return gr.update(choices=run_handlers.preset_choices(host), value=saved), message

    md.save_preset.click(save_preset, [md.preset_name, *run.components], [md.preset, md.preset_message])


def _wire_base_models(gr, ctx, md):
    """The base-model list: fresh on every page load and on Refresh; the download button's run,
    followed by the page that pressed it (the download itself goes on without the page)."""
    host = ctx.host
    shown = [md.checkpoint, md.models_message, md.download]

    def view_updates(view):
        return (gr.update(choices=view.choices, value=view.value), view.message,
                gr.update(visible=view.show_download))

    def refresh_models(current):
        return view_updates(model_handlers.models_view(host, current))

    md.refresh.click(refresh_models, [md.checkpoint], shown)
    ctx.demo.load(refresh_models, [md.checkpoint], shown, show_progress="hidden")

    # Gradio 3 runs queued events one at a time: a page there follows the download by a poll
    # (which runs outside the queue) instead of by the click's event.
    follow = gradio_major(gr) >= 4

    def download(current):
        for message, view in model_handlers.follow_download(host, current, follow=follow):
            yield (gr.update(), message, gr.update()) if view is None else view_updates(view)

    md.download.click(download, [md.checkpoint], shown, show_progress="hidden")
    if not follow and host.can_download_models:
        page = gr.State({})

        def poll_download(record):
            news = model_handlers.download_news(host, record)
            if news is None:
                return (gr.update(),) * len(shown)
            message, view = news
            return (gr.update(), message, gr.update()) if view is None else view_updates(view)

        every(gr, ctx.demo, poll_download, [page], shown, POLL_SECONDS)


def _bucket_settings(host, preset, bucket_values):
    """The form's bucket settings (BucketSettings or None, what to fix) under its preset."""
    return bucket_handlers.bucket_settings(dict(zip(BUCKET_FIELDS, bucket_values)), run_handlers.preset_values(preset, host))


def _wire_dataset(gr, ctx, ds, md, run):
    host, job = ctx.host, ctx.job
    ext, trigger = md.fields["caption_extension"], md.fields["trigger_words"]
    bucket_inputs = [md.preset, *(md.fields[name] for name in BUCKET_FIELDS)]
    shown = [ds.gallery, ds.summary, ds.buckets, ds.problems, ds.scan, ds.paths]
    unchanged = (gr.update(),) * len(shown)
    view_inputs = [ext, trigger, *bucket_inputs]  # what a dataset view is drawn from, after the folder

    def show_dataset(folder, caption_extension, trigger_words, preset, *bucket_values):
        view = dataset_handlers.dataset_view(folder, caption_extension, trigger_words,
                                             buckets=_bucket_settings(host, preset, bucket_values))
        return view.gallery, view.summary, view.buckets, view.problems, view.scan, view.paths

    for event in (ds.load.click, ds.folder.submit):
        run.then_update_plan(gr, event(show_dataset, [ds.folder, *view_inputs], shown))

    def rebucket(scan, preset, *bucket_values):
        """Resolution or a bucket field changed: the tiles' buckets and the table again, no rescan."""
        if scan is None:
            return gr.update(), gr.update(), gr.update()
        settings = _bucket_settings(host, preset, bucket_values)
        if settings[0] is None:  # a half-typed resolution: the tiles keep their last buckets
            return gr.update(), gr.update(), f"**Buckets cannot be shown:** {settings[1]}"
        try:
            return dataset_handlers.bucketed_gallery(scan, settings)
        except Exception as e:
            return gr.update(), gr.update(), _shown(e)

    for component in bucket_inputs:
        component.change(rebucket, [ds.scan, *bucket_inputs], [ds.gallery, ds.paths, ds.buckets], **quiet(gr))

    def show_reg(folder, caption_extension):
        try:
            return dataset_handlers.reg_view(folder, caption_extension)
        except Exception as e:
            return _shown(e)

    reg = md.fields["reg_data_dir"]
    for event in (reg.submit, reg.blur, ds.load.click):
        event(show_reg, [reg, ext], [ds.reg_summary], show_progress="hidden")

    def do_upload(files, name, repeats, *view_values):
        try:
            folder, report = dataset_handlers.import_uploads(upload_paths(files), host.data_dir, name, repeats)
        except Exception as e:
            return (gr.update(), _shown(e)) + unchanged
        return (folder, report) + show_dataset(folder, *view_values)

    # Says what arrived, so nobody clicks "Add to dataset" while the browser is still uploading.
    ds.uploads.change(lambda files: dataset_handlers.describe_uploads(upload_paths(files)), [ds.uploads], [ds.message])
    run.then_update_plan(gr, ds.upload.click(do_upload, [ds.uploads, ds.upload_name, ds.upload_repeats, *view_inputs],
                                             [ds.folder, ds.message, *shown]))

    def select_image(paths, caption_extension, evt: gr.SelectData):
        if not paths or evt.index is None:
            return "", "", ""
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        path = paths[index] if 0 <= index < len(paths) else ""
        try:
            caption = dataset_handlers.caption_of(path, caption_extension)
        except Exception as e:
            caption = f"(cannot read the caption: {e})"
        return path, Path(path).name if path else "", caption

    ds.gallery.select(select_image, [ds.paths, ext], [ds.selected, ds.selected_name, ds.caption])

    def do_save_caption(path, caption, folder, *view_values):
        try:
            message = dataset_handlers.save_caption(path, caption, folder, view_values[0])
        except Exception as e:
            return (_shown(e),) + unchanged
        return (message,) + show_dataset(folder, *view_values)

    ds.save_caption.click(do_save_caption, [ds.selected, ds.caption, ds.folder, *view_inputs], [ds.message, *shown])

    def do_caption(folder, mode, model, pretrained, trigger_words, caption_extension, progress_bar=gr.Progress()):
        def progress(done, total, rate=0.0):
            progress_bar(done / max(total, 1), desc=f"captioning {done}/{total}")

        try:
            return dataset_handlers.auto_caption(host, job, folder, mode, model, pretrained, trigger_words,
                                                 caption_extension, progress,
                                                 notify=lambda text: progress_bar(0, desc=text))  # e.g. CLIP's first download
        except Exception as e:
            return _shown(e)

    # the captions changed on disk: the view again, from what the form holds now
    ds.auto_caption.click(do_caption, [ds.folder, ds.caption_mode, ds.clip_model, ds.clip_pretrained, trigger, ext],
                          [ds.caption_status]).then(show_dataset, [ds.folder, *view_inputs], shown)


def _wire_train(gr, ctx, tr, rs, run):
    host, job = ctx.host, ctx.job

    def start(*values):
        return run_handlers.start_training(job, host, run.form(*values))

    tr.start.click(start, run.components, [tr.message])

    def cancel():
        return run_handlers.cancel_training(job)

    tr.cancel.click(cancel, None, [tr.message])

    # One timer for the page. Each page keeps what it last got and gets only what changed: the loss
    # chart and the samples are sent again only when a step or an image was added. The page's record
    # is changed in place: Gradio 3's `every` calls the function again and again with the inputs it
    # had at the start, so a new value returned into the State would never reach it.
    page = gr.State({})
    outputs = [tr.progress, tr.loss_chart, tr.samples, tr.log, rs.result, rs.tag, tr.mechanism, page]  # POLLED's order

    def poll(record=None):
        values, seen = progress_handlers.poll(job, record.get("seen") if record else None)
        if record is not None:
            record["seen"] = seen
        return updates(gr, values, progress_handlers.POLLED) + (record,)

    every(gr, ctx.demo, poll, [page], outputs, POLL_SECONDS)
    ctx.demo.load(poll, [page], outputs, show_progress="hidden")  # a page opened later gets the whole state at once


def _wire_test(gr, ctx, md, rs, ts):
    def test_size(checkpoint, width, height):
        size = model_handlers.native_size(ctx.host, checkpoint)  # SDXL tests at 1024, SD1 at 512
        return (width, height) if size is None else (size, size)

    md.checkpoint.change(test_size, [md.checkpoint, ts.width, ts.height], [ts.width, ts.height], show_progress="hidden")

    host, job = ctx.host, ctx.job

    def open_test(tag):
        prompt, run_name = testing.panel_defaults(job, tag)
        return gr.update(visible=True), prompt, run_name

    rs.open_test.click(open_test, [rs.tag], [ts.panel, ts.prompt, ts.grid_run])

    def do_generate(checkpoint, prompt, seed, *settings):
        try:
            image, used = testing.generate_image(job, host, checkpoint, prompt, seed, testing.settings_from(*settings))
        except Exception as e:  # ours say what to do; anything else (OOM, I/O) is named
            return None, _shown(e)
        return image, f"seed {used}"

    ts.generate.click(do_generate, [md.checkpoint, ts.prompt, ts.seed, *ts.settings], [ts.image, ts.message])

    def do_grid(checkpoint, run_name, prompt, weights, seed, *settings):
        try:
            grid = testing.generate_grid(job, host, checkpoint, (run_name or "").strip(), prompt, weights, seed,
                                         testing.settings_from(*settings))
        except Exception as e:  # ours say what to do; anything else (OOM, I/O) is named
            return None, None, gr.update(choices=[], value=None), "", _shown(e)
        return (grid.image, grid, gr.update(choices=testing.cell_labels(grid), value=None), "",
                f"{len(grid.rows)} x {len(grid.weights)} grid, seed {grid.seed}")

    ts.grid.click(do_grid, [md.checkpoint, ts.grid_run, ts.prompt, ts.grid_weights, ts.seed, *ts.settings],
                  [ts.grid_image, ts.grid_state, ts.cell, ts.cell_info, ts.grid_message])
    ts.cell.change(testing.cell_infotext, [ts.grid_state, ts.cell], [ts.cell_info])

    def click_cell(grid, evt: gr.SelectData):
        label = testing.cell_at(grid, *evt.index) if evt.index is not None else None
        return gr.update(value=label) if label else gr.update()

    ts.grid_image.select(click_cell, [ts.grid_state], [ts.cell])

    def do_preview(grid, label):
        try:
            return testing.choose_cell(grid, label)
        except Exception as e:  # ours say what to do; anything else (OOM, I/O) is named
            return _shown(e)

    ts.use_preview.click(do_preview, [ts.grid_state, ts.cell], [ts.grid_message])
