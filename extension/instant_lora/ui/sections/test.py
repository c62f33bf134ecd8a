"""5. Test (hidden until opened): images with `<lora:name:w>` tags, and the grid of a run's saved
files (rows) x weights (columns) at one seed, whose picked cell becomes the LoRA's preview."""

from __future__ import annotations

from dataclasses import dataclass

from ..compat import copyable_textbox


@dataclass
class TestSection:
    __test__ = False  # not a pytest class

    panel: object
    prompt: object
    negative: object
    sampler: object
    steps: object
    cfg: object
    seed: object
    width: object
    height: object
    generate: object
    image: object
    message: object
    grid_run: object
    grid_weights: object
    grid: object
    grid_image: object
    grid_state: object  # State: the last GridResult
    cell: object
    use_preview: object
    cell_info: object
    grid_message: object

    @property
    def settings(self) -> list:
        """The inputs of testing.settings_from, in its order."""
        return [self.negative, self.sampler, self.steps, self.cfg, self.width, self.height]


def build(gr, ctx) -> TestSection:
    from ...sample.settings import SAMPLERS

    with gr.Column(visible=False, elem_id="il_test_panel") as panel:
        gr.Markdown("### 5. Test\nGenerate with the base model and `<lora:name:w>` tags, or a grid of the run's saved "
                    "epochs (rows) x weights (columns) at one seed. Weight 0 is the base model.")
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="il_test_prompt", scale=3,
                                info="Use <lora:name:weight> tags; several are fine.")
            negative = gr.Textbox(label="Negative prompt", lines=2, elem_id="il_test_negative", scale=2,
                                  info="What to keep out of the image.")
        with gr.Row():
            sampler = gr.Dropdown(choices=list(SAMPLERS), value=SAMPLERS[0], label="Sampler", elem_id="il_test_sampler",
                                  info="Euler a is quick; DPM++ 2M Karras is sharper at few steps.")
            steps = gr.Number(value=20, precision=0, label="Steps", elem_id="il_test_steps", info="Denoising steps (20-30).")
            cfg = gr.Number(value=7, label="CFG scale", elem_id="il_test_cfg", info="How strictly to follow the prompt (5-9).")
            seed = gr.Number(value=-1, precision=0, label="Seed", elem_id="il_test_seed", info="-1 = random.")
            width = gr.Number(value=512, precision=0, label="Width", elem_id="il_test_width", info="Multiple of 8.")
            height = gr.Number(value=512, precision=0, label="Height", elem_id="il_test_height", info="Multiple of 8.")
        generate = gr.Button("Generate", elem_id="il_generate")
        image = gr.Image(label="Image", type="pil", elem_id="il_test_image", interactive=False)
        message = gr.Markdown(elem_id="il_test_msg")
        with gr.Row():
            grid_run = gr.Textbox(label="Run", elem_id="il_grid_run", info="The output name whose saved epochs form the rows.")
            grid_weights = gr.Textbox(value="0, 0.4, 0.7, 1", label="Weights", elem_id="il_grid_weights",
                                      info="The columns; 0 shows the base model.")
        grid = gr.Button("Generate grid", elem_id="il_grid_btn")
        grid_image = gr.Image(label="Grid (click a cell to pick it)", type="pil", elem_id="il_grid_image", interactive=False)
        grid_state = gr.State(None)
        with gr.Row():
            cell = gr.Dropdown(choices=[], label="Cell", elem_id="il_grid_cell",
                               info="The picked cell becomes the LoRA's preview and its weight the preferred weight.")
            use_preview = gr.Button("Use as preview", elem_id="il_use_preview")
        cell_info = copyable_textbox(gr, label="Cell parameters", lines=3, interactive=False, elem_id="il_grid_cell_info",
                                     info="The picked cell's prompt and settings, as txt2img reads them (paste into its prompt box).")
        if hasattr(ctx.host, "extend_test_panel"):  # the WebUI: "Send cell to txt2img"
            ctx.host.extend_test_panel(gr, ctx.demo, cell_info)
        grid_message = gr.Markdown(elem_id="il_grid_msg")
    return TestSection(panel, prompt, negative, sampler, steps, cfg, seed, width, height, generate, image, message, grid_run,
                       grid_weights, grid, grid_image, grid_state, cell, use_preview, cell_info, grid_message)
