"""modules.infotext_utils (1.8+; `generation_parameters_copypaste` before): the paste buttons.

A tab registers its fields with add_paste_fields(tabname, init_img, [(component, "Infotext key")]);
an extension registers a button with register_paste_params_button(ParamBinding(...)); after all
tabs are built the WebUI calls connect_paste_params_buttons(), which makes each button parse the
source textbox's infotext into the target tab's fields and switch to that tab."""

from __future__ import annotations

import json
import re

paste_fields: dict = {}
registered_param_bindings: list = []
_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


class ParamBinding:
    def __init__(self, paste_button, tabname, source_text_component=None, source_image_component=None, source_tabname=None,
                 override_settings_component=None, paste_field_names=None):
        self.paste_button = paste_button
        self.tabname = tabname
        self.source_text_component = source_text_component
        self.source_image_component = source_image_component
        self.source_tabname = source_tabname
        self.override_settings_component = override_settings_component
        self.paste_field_names = paste_field_names or []


def quote(text):
    if "," not in str(text) and "\n" not in str(text) and ":" not in str(text):
        return text
    return json.dumps(text, ensure_ascii=False)


def add_paste_fields(tabname, init_img, fields, override_settings_component=None):
    paste_fields[tabname] = {"init_img": init_img, "fields": fields, "override_settings_component": override_settings_component}


def register_paste_params_button(binding: ParamBinding):
    registered_param_bindings.append(binding)


def parse_generation_parameters(x: str) -> dict:
    lines = x.strip().split("\n")
    res, prompt, negative, done_prompt = {}, "", "", False
    last = lines[-1] if lines else ""
    if len(_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    for line in lines[:-1]:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_prompt, line = True, line[16:].strip()
        if done_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"], res["Negative prompt"] = prompt, negative
    for k, v in _PARAM.findall(last):
        v = v.strip()
        if v[:1] == '"' and v[-1:] == '"':
            v = v[1:-1]
        m = re.match(r"^(\d+)x(\d+)$", v)
        if m:
            res[f"{k}-1"], res[f"{k}-2"] = m.group(1), m.group(2)
        else:
            res[k] = v
    return res


def connect_paste_params_buttons():
    import gradio as gr

    major = int(gr.__version__.split(".")[0])
    for binding in registered_param_bindings:
        fields = paste_fields[binding.tabname]["fields"]
        components = [c for c, _ in fields]

        def paste(text, fields=fields):
            params = parse_generation_parameters(text or "")
            return [params.get(key, gr.update()) if not callable(key) else key(params) for _, key in fields]

        binding.paste_button.click(fn=paste, inputs=[binding.source_text_component], outputs=components)
        js = f"switch_to_{binding.tabname}"
        binding.paste_button.click(fn=None, inputs=None, outputs=None, **({"_js": js} if major < 4 else {"js": js}))
