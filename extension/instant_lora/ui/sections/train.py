"""3. Train: start and cancel, progress, the loss chart, sample prompts and their images, the log."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainSection:
    start: object
    cancel: object
    message: object
    progress: object
    loss_chart: object
    sample_text: object
    sample_every: object
    samples: object
    log: object


def build(gr, ctx) -> TrainSection:
    from ..handlers.progress import progress_html

    with gr.Accordion("3. Train", open=True, elem_id="il_section_train"):
        with gr.Row():
            start = gr.Button("Start training", variant="primary", elem_id="il_start")
            cancel = gr.Button("Cancel", variant="stop", elem_id="il_cancel")
        message = gr.Markdown(elem_id="il_train_msg")
        progress = gr.HTML(progress_html(ctx.job.snapshot()), elem_id="il_progress")
        loss_chart = gr.HTML(elem_id="il_loss_chart")
        with gr.Row():
            sample_text = gr.Textbox(label="Sample prompts", lines=2, elem_id="il_sample_prompts", scale=3,
                                     info="One per line, rendered with the LoRA as it trains (fixed seeds). Options: --n negative --s steps.")
            sample_every = gr.Number(label="Sample every N steps", value=0, precision=0, elem_id="il_sample_every", scale=1,
                                     info="0 = no samples; each sample costs a few seconds.")
        samples = gr.Gallery(label="Samples", columns=4, height=240, elem_id="il_samples")
        log = gr.Textbox(label="Log", lines=8, max_lines=8, interactive=False, elem_id="il_log")
    return TrainSection(start, cancel, message, progress, loss_chart, sample_text, sample_every, samples, log)
