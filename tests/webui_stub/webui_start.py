"""Starts the WebUI stand-in the way the WebUI does, for one extension, and prints a JSON report:

1. extension scripts are imported with the extension root on sys.path only during the import
   (modules/scripts.py), by file location (modules/script_loading.py);
2. on_ui_settings callbacks, then on_ui_tabs; every tab is rendered into the top-level
   gr.Tabs(elem_id="tabs") as gr.TabItem(title, id=elem_id, elem_id="tab_" + elem_id);
3. on_app_started(demo, app) with the FastAPI app; the report calls the new REST routes;
4. "Reload UI": on_script_unloaded.

usage: python webui_start.py EXTENSION_ROOT WEBUI_DIR [--break-import]
"""

import importlib.util
import json
import os
import sys
import traceback

ext_root, webui_dir = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the stand-in's `modules`, `launch`

from modules import paths, script_callbacks, sd_models, shared  # noqa: E402

paths.script_path = paths.data_path = webui_dir
paths.models_path = os.path.join(webui_dir, "models")
shared.cmd_opts.lora_dir = os.path.join(paths.models_path, "Lora")
os.makedirs(os.path.join(paths.models_path, "Stable-diffusion"), exist_ok=True)
with open(os.path.join(paths.models_path, "Stable-diffusion", "v1-5.safetensors"), "wb") as f:
    f.write(b"\0" * 16)
sd_models.list_models()
sd_models.load_model()

if "--break-import" in sys.argv:
    sys.modules["instant_lora"] = None  # as if the package could not be imported

report = {"errors": []}
path_before = list(sys.path)
for script in sorted(os.listdir(os.path.join(ext_root, "scripts"))):
    if not script.endswith(".py"):
        continue
    syspath = sys.path
    sys.path = [ext_root] + sys.path
    try:
        spec = importlib.util.spec_from_file_location(script, os.path.join(ext_root, "scripts", script))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except Exception:
        report["errors"].append(traceback.format_exc())
    finally:
        sys.path = syspath
report["sys_path_added_by_import"] = [p for p in sys.path if p not in path_before]  # the WebUI restores it

script_callbacks.ui_settings_callback()
report["settings"] = {k: [str(v.section), v.default] for k, v in shared.opts.data_labels.items()}
tabs = script_callbacks.ui_tabs_callback()
report["tabs"] = [[title, elem_id] for _, title, elem_id in tabs]

import gradio as gr  # noqa: E402

with gr.Blocks(analytics_enabled=False) as demo:
    with gr.Tabs(elem_id="tabs"):
        with gr.TabItem("txt2img", id="txt2img", elem_id="tab_txt2img"):
            prompt = gr.Textbox(elem_id="txt2img_prompt")
            gr.Button(elem_id="txt2img_lora_extra_refresh_internal", visible=False)
        for interface, title, elem_id in tabs:
            with gr.TabItem(title, id=elem_id, elem_id=f"tab_{elem_id}"):
                interface.render()
    from modules import infotext_utils  # the WebUI connects every registered paste button after the tabs

    infotext_utils.add_paste_fields("txt2img", None, [(prompt, "Prompt")])
    infotext_utils.connect_paste_params_buttons()
    report["paste_buttons"] = [[b.tabname, b.paste_button.elem_id, b.source_text_component.elem_id]
                               for b in infotext_utils.registered_param_bindings]
report["sys_path_added"] = [p for p in sys.path if p not in path_before]
report["sys_path_prefix_unchanged"] = sys.path[:len(path_before)] == path_before
report["elem_ids"] = sorted(str(getattr(b, "elem_id", None)) for b in demo.blocks.values() if getattr(b, "elem_id", None))

from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

app = FastAPI()
script_callbacks.app_started_callback(demo, app)
report["routes"] = sorted(r.path for r in app.routes if "instant-lora" in r.path)
if report["routes"]:
    client = TestClient(app)
    report["progress"] = client.get("/instant-lora/v1/progress").json()
    report["checkpoints"] = client.get("/instant-lora/v1/checkpoints").json()

script_callbacks.script_unloaded_callback()
report["modules_after_unload"] = sorted(n for n in sys.modules if n and n.split(".")[0] == "instant_lora" and sys.modules[n])
report["reported_exceptions"] = [f"{c.script}: {where}\n{tb}" for c, where, tb in script_callbacks.reported_exceptions]
print("REPORT " + json.dumps(report))
