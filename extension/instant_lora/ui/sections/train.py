"""3. Train: start and cancel, progress, the loss chart, the mechanism (loss against timestep, how far
each block has moved), sample prompts and their images, the log."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainSection:
    start: object
    cancel: object
    gpus: object  # several GPUs: one process each (standalone app only)
    message: object
    progress: object
    loss_chart: object
    mechanism: object  # this step's timestep / loss / lr, loss against timestep, movement per block
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
        choices = ctx.host.gpu_choices()
        # One GPU (or none) needs no choice; inside the WebUI the run uses the WebUI's own device.
        gpus = gr.CheckboxGroup(choices=choices, value=choices[:1], label="GPUs", elem_id="il_gpus",
                                visible=len(choices) > 1,
                                info="Train on several GPUs at once (one process each, torchrun); global batch = "
                                     "batch size x GPUs x accumulation. One GPU is the default.")
        if not ctx.host.can_launch_processes:
            gr.Markdown("Trains on the WebUI's own GPU. For several GPUs, use the standalone app or "
                        "`torchrun --nproc_per_node N standalone_app.py train ...`.", elem_id="il_gpu_note")
        message = gr.Markdown(elem_id="il_train_msg")
        progress = gr.HTML(progress_html(ctx.job.snapshot()), elem_id="il_progress")
        loss_chart = gr.HTML(elem_id="il_loss_chart")
        mechanism = gr.HTML(elem_id="il_mechanism")
        with gr.Row():
            sample_text = gr.Textbox(label="Sample prompts", lines=2, elem_id="il_sample_prompts", scale=3,
                                     info="One per line, rendered with the LoRA as it trains (fixed seeds). Options: --n negative --s steps.")
            sample_every = gr.Number(label="Sample every N steps", value=0, precision=0, elem_id="il_sample_every", scale=1,
                                     info="0 = no samples; each sample costs a few seconds.")
        samples = gr.Gallery(label="Samples", columns=4, height=240, elem_id="il_samples")
        log = gr.Textbox(label="Log", lines=8, max_lines=8, interactive=False, elem_id="il_log")
    return TrainSection(start, cancel, gpus, message, progress, loss_chart, mechanism, sample_text, sample_every, samples, log)
