"""4. Result: where the LoRA went and the prompt that uses it; a host adds its own controls here
(the WebUI: "Send to txt2img")."""

from __future__ import annotations

from dataclasses import dataclass

from ..compat import copyable_textbox


@dataclass
class ResultSection:
    result: object
    tag: object
    open_test: object


def build(gr, ctx) -> ResultSection:
    with gr.Accordion("4. Result", open=True, elem_id="il_section_result"):
        result = gr.Markdown(elem_id="il_result")
        tag = copyable_textbox(gr, label="Use it in a prompt", interactive=False, elem_id="il_result_tag")
        open_test = gr.Button("Open the test panel", elem_id="il_open_test")
        if hasattr(ctx.host, "extend_ui"):  # looks up il_result_tag, il_preset, il_sample_* by elem_id
            ctx.host.extend_ui(gr, ctx.demo, ctx.job)
    return ResultSection(result, tag, open_test)
