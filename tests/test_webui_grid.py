"""The Test panel inside the WebUI: images and the weight x epoch grid go through the WebUI's own
txt2img processing (stand-in: tests/webui_stub/modules/processing.py), under its queue lock, with
its samplers' names, its checkpoint, and its infotext for "Send cell to txt2img"."""

import dataclasses
import threading
import time

import pytest
from webui_stub.harness import webui

from instant_lora.errors import InstantLoraError
from instant_lora.jobs import TrainingJob
from instant_lora.sample.settings import GenerationSettings
from instant_lora.ui import testing

RUN = "shapes"


def _lora_file(path, steps: int, seed: int):
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    save_file({"lora_unet_x.lora_down.weight": torch.randn(4, 8, generator=g)}, str(path),
              metadata={"ss_output_name": RUN, "ss_steps": str(steps)})


@pytest.fixture
def w(tmp_path, monkeypatch):
    with webui(tmp_path) as stub:
        monkeypatch.setattr("instant_lora.jobs._JOB", TrainingJob())
        _lora_file(stub.lora_dir / f"{RUN}-000001.safetensors", 10, 1)
        _lora_file(stub.lora_dir / f"{RUN}.safetensors", 20, 2)
        stub.shared.opts.data["outdir_txt2img_grids"] = "outputs/txt2img-grids"  # the WebUI's default
        yield stub


@pytest.fixture
def host(w):
    from instant_lora.host.webui.host import WebUIHost

    return WebUIHost(job=TrainingJob())


def _processed(calls):
    return [c for c in calls if isinstance(c, tuple) and c[0] == "processing.process_images"]


SETTINGS = GenerationSettings(negative_prompt="blurry", steps=12, cfg_scale=6, sampler="DPM++ 2M Karras", width=64, height=64)


def test_grid_goes_through_the_webuis_txt2img_under_its_queue_lock(w, host):
    grid = testing.generate_grid(host.job, host, host.default_checkpoint(), RUN, "shpz, red square", "0, 0.5, 1", 3, SETTINGS)
    calls = _processed(w.calls)
    assert len(calls) == 5 == grid.renders  # weight 0 (the base model) once for both rows
    prompts = [c[1] for c in calls]
    assert prompts == ["shpz, red square", f"shpz, red square <lora:{RUN}-000001:0.5>", f"shpz, red square <lora:{RUN}-000001:1>",
                       f"shpz, red square <lora:{RUN}:0.5>", f"shpz, red square <lora:{RUN}:1>"]
    assert {c[2:5] for c in calls} == {(3, "DPM++ 2M", "Karras")}  # one seed; 1.10's sampler + schedule type
    assert all(c[5] == {} for c in calls)  # the loaded checkpoint: no override, no reload
    # one session: the queue lock taken once around all of it, the job shown in shared.state
    held = [c for c in w.calls if c in ("queue_lock.acquire", "queue_lock.release") or (isinstance(c, tuple) and c[0] in ("state.begin", "state.end"))]
    assert held[0] == "queue_lock.acquire" and held[1][0] == "state.begin" and held[-1] == "queue_lock.release"
    assert held.count("queue_lock.acquire") == 1
    # weight 0 is the base model's image; the LoRA changes the others
    colours = [[cell.getpixel((0, 0)) for cell in row] for row in grid.cells]
    assert len({colours[0][1], colours[0][2], colours[1][1], colours[1][2], colours[0][0]}) == 5
    base, _ = testing.generate_image(host.job, host, host.default_checkpoint(), "shpz, red square", 3, SETTINGS)
    assert colours[0][0] == colours[1][0] == base.getpixel((0, 0))  # weight 0 = the prompt without the LoRA
    # each cell keeps the WebUI's own infotext (what its paste reads), the grid PNG lands in its grids folder
    info = grid.cell_infotext(1, 2)
    assert info.startswith(f"shpz, red square <lora:{RUN}:1>\nNegative prompt: blurry\n") and "Version: v1.10.1" in info
    assert "Lora hashes" in info and "Seed: 3" in info
    saved = list((w.root / "outputs" / "txt2img-grids").glob(f"{RUN}-grid-*.png"))
    assert len(saved) == 1
    from PIL import Image

    assert "Grid weights: \"0, 0.5, 1\"" in Image.open(saved[0]).info["parameters"]
    from modules import call_queue

    assert not call_queue.queue_lock.locked() and w.calls.count("queue_lock.release") == w.calls.count("queue_lock.acquire")


def test_another_checkpoint_is_used_for_the_test_and_the_users_choice_comes_back(w, host):
    assert host.loaded_checkpoint() == "sd15/dreamy.ckpt"
    image, seed = testing.generate_image(host.job, host, "v1-5-pruned-emaonly.safetensors", f"<lora:{RUN}:0.8> shpz", 5, SETTINGS)
    call, = _processed(w.calls)
    assert call[5] == {"sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors"} and seed == 5
    assert "Model: v1-5-pruned-emaonly" in image.info["parameters"]
    assert w.shared.opts.data["sd_model_checkpoint"] == "sd15/dreamy.ckpt"  # restored: the next txt2img loads it again


def test_unknown_lora_names_fail_before_the_webui_runs(w, host):
    with pytest.raises(InstantLoraError, match=f"did you mean '{RUN}'"):
        testing.generate_image(host.job, host, host.default_checkpoint(), "<lora:shapez:0.8> shpz", 1, SETTINGS)
    assert _processed(w.calls) == []
    assert w.calls.count("queue_lock.acquire") == w.calls.count("queue_lock.release") == 1
    from modules import call_queue

    assert not call_queue.queue_lock.locked()


def test_interrupt_stops_the_grid_and_gives_everything_back(w, host):
    from modules import call_queue, processing

    seen = []

    def press_interrupt(p):
        seen.append(p.prompt)
        if len(seen) == 2:
            w.shared.state.interrupt()  # the WebUI's Interrupt button during the second image

    processing.ON_PROCESS.append(press_interrupt)
    with pytest.raises(InstantLoraError, match="interrupted"):
        testing.generate_grid(host.job, host, host.default_checkpoint(), RUN, "shpz", "0, 1", 3, SETTINGS)
    assert len(seen) == 2
    assert not call_queue.queue_lock.locked() and ("state.end") in [c if isinstance(c, str) else c[0] for c in w.calls]
    assert not list(w.root.rglob(f"{RUN}-grid-*.png"))
    # the next test begins afresh (state.begin clears the flag)
    processing.ON_PROCESS.clear()
    testing.generate_image(host.job, host, host.default_checkpoint(), "shpz", 1, SETTINGS)


def test_waits_for_a_running_generation(w, host):
    from modules import call_queue

    call_queue.queue_lock.acquire()  # txt2img is generating
    done = []
    t = threading.Thread(target=lambda: done.append(testing.generate_image(host.job, host, host.default_checkpoint(), "shpz", 1, SETTINGS)))
    t.start()
    time.sleep(0.3)
    assert not done and _processed(w.calls) == []
    call_queue.queue_lock.release()
    t.join(10)
    assert done and len(_processed(w.calls)) == 1


def test_no_test_while_a_training_runs(w, host, monkeypatch):
    monkeypatch.setattr(host.job, "snapshot", lambda: type("S", (), {"running": True})())
    with pytest.raises(InstantLoraError, match="training is running"):
        testing.generate_grid(host.job, host, host.default_checkpoint(), RUN, "shpz", "0, 1", 3, SETTINGS)
    assert _processed(w.calls) == [] and "queue_lock.acquire" not in w.calls


def test_older_webui_without_schedule_type_gets_the_old_sampler_name():
    from instant_lora.host.webui.render import processing_kwargs

    @dataclasses.dataclass
    class OldProcessing:  # before 1.9: no `scheduler` field
        prompt: str = ""
        sampler_name: str = None

    @dataclasses.dataclass
    class NewProcessing(OldProcessing):
        scheduler: str = None

    settings = SETTINGS.checked()
    old = processing_kwargs(OldProcessing, "p", 1, settings, None)
    new = processing_kwargs(NewProcessing, "p", 1, settings, None)
    assert (old["sampler_name"], "scheduler" in old) == ("DPM++ 2M Karras", False)
    assert (new["sampler_name"], new["scheduler"]) == ("DPM++ 2M", "Karras")
    assert new["do_not_save_samples"] and new["do_not_save_grid"] and new["override_settings_restore_afterwards"]
    clip2 = processing_kwargs(NewProcessing, "p", 1, dataclasses.replace(settings, clip_skip=2), "x.safetensors")
    assert clip2["override_settings"] == {"sd_model_checkpoint": "x.safetensors", "CLIP_stop_at_last_layers": 2}


def test_send_cell_to_txt2img_uses_the_webuis_paste(w):
    gr = pytest.importorskip("gradio")
    from instant_lora.host import webui as webui_host
    from instant_lora.ui import actions

    actions.lora_parameter_count(16, "default", True)
    (demo, _, _), = webui_host.ui_tabs()
    from modules import infotext_utils

    ids = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    binding, = infotext_utils.registered_param_bindings
    assert binding.tabname == "txt2img" and binding.paste_button is ids["il_cell_to_txt2img"]
    assert binding.source_text_component is ids["il_grid_cell_info"]
    assert isinstance(ids["il_grid_cell_info"], gr.Textbox)


def test_rest_grid_route(w, host):
    import base64
    import io

    from fastapi import FastAPI
    from fastapi.testclient import TestClient
    from PIL import Image

    from instant_lora.host.webui import routes as api_routes

    app = FastAPI()
    assert api_routes.register(app, host, host.job)
    client = TestClient(app)
    r = client.post("/instant-lora/v1/grid", json={"run": RUN, "prompt": "shpz", "weights": [0, 1], "seed": 3, "steps": 4,
                                                    "width": 64, "height": 64, "sampler": "DDIM"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["rows"] == ["epoch 1", "final"] and body["weights"] == [0.0, 1.0] and body["seed"] == 3
    assert body["cells"][1][1]["prompt"] == f"shpz <lora:{RUN}:1>" and "Version: v1.10.1" in body["cells"][1][1]["infotext"]
    assert body["cells"][1][1]["infotext"].startswith(f"shpz <lora:{RUN}:1>\n")
    image = Image.open(io.BytesIO(base64.b64decode(body["image"])))
    assert image.size == Image.open(body["path"]).size and "Grid LoRAs" in image.info["parameters"]
    assert {c[3] for c in _processed(w.calls)} == {"DDIM"}
    for payload, status, text in [({"prompt": "x"}, 422, "run is required"), ({"run": "nope"}, 422, "no saved files"),
                                  ({"run": RUN, "sampler": "euler b"}, 422, "did you mean"),
                                  ({"run": RUN, "wieghts": [1]}, 422, "did you mean 'weights'"),
                                  ({"run": RUN, "steps": "many"}, 422, "steps must be a number"), ([1], 400, "JSON object")]:
        r = client.post("/instant-lora/v1/grid", json=payload)
        assert (r.status_code, text in r.json()["error"]) == (status, True), (payload, r.text)


def test_the_webuis_processing_drops_the_tags_from_the_infotext_without_scripts(w):
    """What the stand-in copies from the WebUI 1.10's process_images_inner: the tags are cut out of
    the prompt that is generated, and the image's infotext has them back only when `p` has the
    script runner (as txt2img gives it); the result's infotext(p, i) writes them either way."""
    from modules import processing, scripts

    prompt = f"shpz <lora:{RUN}:0.7>"
    kwargs = {"prompt": prompt, "negative_prompt": "blurry", "seed": 3, "steps": 4, "width": 64, "height": 64, "sampler_name": "DDIM"}
    bare = processing.StableDiffusionProcessingTxt2Img(**kwargs)
    processed = processing.process_images(bare)
    assert bare.prompts == ["shpz "] and bare.all_prompts == [prompt]
    assert processed.infotexts[0].startswith("shpz \nNegative prompt: blurry\n") and "Lora hashes" in processed.infotexts[0]
    assert processed.images[0].info["parameters"] == processed.infotexts[0]
    assert processed.infotext(bare, 0).startswith(prompt + "\nNegative prompt: blurry\n")

    like_txt2img = processing.StableDiffusionProcessingTxt2Img(**kwargs)
    like_txt2img.scripts = scripts.scripts_txt2img
    like_txt2img.script_args = [0]
    with_scripts = processing.process_images(like_txt2img)
    assert with_scripts.infotexts[0] == processed.infotext(bare, 0)
    assert with_scripts.images[0].getpixel((0, 0)) == processed.images[0].getpixel((0, 0))  # the same image


@pytest.mark.parametrize("fork", [False, True], ids=["webui", "fork-without-Processed.infotext"])
def test_send_cell_to_txt2img_pastes_the_lora_tags(w, host, monkeypatch, fork):
    """A grid cell's infotext, the text "Send cell to txt2img" hands to the WebUI's paste, keeps
    `<lora:name:w>` for every weight but 0, so txt2img makes the same image."""
    from modules import infotext_utils, processing

    if fork:  # a fork whose result cannot write the infotext again: the prompt is put back in place
        monkeypatch.delattr(processing.Processed, "infotext")
    grid = testing.generate_grid(host.job, host, host.default_checkpoint(), RUN, "shpz, red square", "0, 0.5, 1", 3, SETTINGS)
    assert grid.renders == 5
    for r, row in enumerate(grid.rows):
        for c, weight in enumerate(grid.weights):
            info = testing.cell_infotext(grid, f"{row.label} @ w={weight:g}")  # what the cell's textbox holds
            assert info == grid.cell_infotext(r, c) == grid.cells[r][c].info["parameters"]
            pasted = infotext_utils.parse_generation_parameters(info)
            assert pasted["Prompt"] == grid.prompts[r][c]
            assert pasted["Negative prompt"] == "blurry" and pasted["Seed"] == "3" and pasted["Steps"] == "12"
            assert (pasted["Sampler"], pasted["Schedule type"], pasted["Size-1"]) == ("DPM++ 2M", "Karras", "64")
            if weight:
                assert f"<lora:{row.lora}:{weight:g}>" in pasted["Prompt"]
                assert pasted["Lora hashes"].startswith(f"{row.lora}: ")
            else:
                assert "<lora:" not in pasted["Prompt"] and "Lora hashes" not in pasted
    # the pasted prompt gives txt2img's image: the same colour as the cell
    again, _ = testing.generate_image(host.job, host, host.default_checkpoint(), grid.prompts[1][2], 3, SETTINGS)
    assert again.getpixel((0, 0)) == grid.cells[1][2].getpixel((0, 0))


def test_infotext_prompt_is_put_back_in_any_layout():
    from instant_lora.host.webui.render import infotext_with_tags

    class Result:  # a fork's result: the stripped prompt, no infotext(p, i)
        def __init__(self, text):
            self.infotexts = [text]

    tagged = f"a\nb <lora:{RUN}:0.5>"
    assert infotext_with_tags(None, Result("a\nb \nNegative prompt: x\nSteps: 4, Seed: 1"), tagged) == tagged + "\nNegative prompt: x\nSteps: 4, Seed: 1"
    assert infotext_with_tags(None, Result("a\nb \nSteps: 4, Seed: 1"), tagged) == tagged + "\nSteps: 4, Seed: 1"
    assert infotext_with_tags(None, Result("a b"), tagged) == tagged
    kept = f"a <lora:{RUN}:0.5>\nSteps: 4"
    assert infotext_with_tags(None, Result(kept), f"a <lora:{RUN}:0.5>") == kept  # already right: unchanged


def test_a_test_session_gives_memory_back_after_the_queue_lock(w, host, monkeypatch):
    from instant_lora import memory

    assert memory.rss_bytes() > 0
    monkeypatch.setattr(memory, "release_memory", lambda: w.calls.append("release_memory"))
    testing.generate_image(host.job, host, host.default_checkpoint(), "shpz", 1, SETTINGS)
    assert w.calls.count("release_memory") == 1
    assert w.calls.index("release_memory") > w.calls.index("queue_lock.release")
