"""Inside the WebUI with an SDXL (or SD2) checkpoint loaded: the stand-in tells the families apart
as the WebUI does (`sd_model.is_sdxl` / `is_sd2` / `is_sd1`), the tab's base model is the loaded
checkpoint whatever its family, and the Test panel's grid goes through the WebUI's own txt2img
processing with the `<lora:name:w>` tags intact."""

import json

import pytest
from webui_stub.harness import webui

from instant_lora.jobs import TrainingJob
from instant_lora.sample.settings import GenerationSettings
from instant_lora.ui import testing

RUN = "xl_shapes"
SDXL = "sdxl/sd_xl_base_1.0.safetensors"
SD2 = "v2-1_768-ema-pruned.safetensors"
SETTINGS = GenerationSettings(negative_prompt="", steps=8, cfg_scale=5, sampler="Euler a", width=128, height=128)


def _checkpoint(path, names: dict):
    """A checkpoint file whose header has the family's tensor names (tiny tensors: only names count)."""
    import torch
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({name: torch.zeros(shape, dtype=torch.float16) for name, shape in names.items()}, str(path))


SDXL_NAMES = {  # SGM layout: CLIP-L under conditioner.embedders.0, OpenCLIP bigG under conditioner.embedders.1
    "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (8,),
    "conditioner.embedders.1.model.ln_final.weight": (8,),
    "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
    "model.diffusion_model.label_emb.0.0.weight": (8, 8),
    "model.diffusion_model.middle_block.1.transformer_blocks.0.attn1.to_q.weight": (8, 8),
}
SD2_NAMES = {  # LDM layout with OpenCLIP ViT-H under cond_stage_model.model, 1024-wide cross-attention
    "cond_stage_model.model.ln_final.weight": (8,),
    "model.diffusion_model.input_blocks.0.0.weight": (8, 4, 3, 3),
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
}


def _lora_file(path, steps: int, seed: int):
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    save_file({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(4, 8, generator=g),
               "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(4, 8, generator=g)}, str(path),
              metadata={"ss_output_name": RUN, "ss_steps": str(steps), "ss_base_model_version": "sdxl_base_v1-0"})


@pytest.fixture
def w(tmp_path, monkeypatch):
    """The WebUI stand-in with an SDXL and an SD2 checkpoint beside the SD1 ones, the SDXL one loaded."""
    with webui(tmp_path, load_model=False) as stub:
        monkeypatch.setattr("instant_lora.jobs._JOB", TrainingJob())
        ckpts = stub.models / "Stable-diffusion"
        _checkpoint(ckpts / SDXL, SDXL_NAMES)
        _checkpoint(ckpts / SD2, SD2_NAMES)
        stub.sd_models.list_models()
        stub.sd_models.load_model(stub.sd_models.checkpoints_list[SDXL])
        stub.calls.clear()
        _lora_file(stub.lora_dir / f"{RUN}-000001.safetensors", 10, 1)
        _lora_file(stub.lora_dir / f"{RUN}.safetensors", 20, 2)
        yield stub


@pytest.fixture
def host(w):
    from instant_lora.host.webui.host import WebUIHost

    return WebUIHost(job=TrainingJob())


def _processed(calls):
    return [c for c in calls if isinstance(c, tuple) and c[0] == "processing.process_images"]


def test_the_stand_in_tells_the_families_apart_as_the_webui_does(w):
    from instant_lora.model_family import detect_family

    loaded = w.shared.sd_model
    assert (loaded.is_sdxl, loaded.is_sd2, loaded.is_sd1) == (True, False, False)
    assert hasattr(loaded, "conditioner")  # what load_model_weights keys is_sdxl off
    for title, flags in [(SD2, (False, True, False)), ("sd15/dreamy.ckpt", (False, False, True))]:
        model = w.sd_models.load_model(w.sd_models.checkpoints_list[title])
        assert (model.is_sdxl, model.is_sd2, model.is_sd1) == flags
    # the extension reads the same families from the files' headers
    ckpts = w.models / "Stable-diffusion"
    assert detect_family(ckpts / SDXL).name == "sdxl" and detect_family(ckpts / SD2).name == "sd2"


def test_the_tabs_base_model_is_the_loaded_sdxl_checkpoint(w, host):
    assert host.loaded_checkpoint() == SDXL
    assert host.default_checkpoint() == SDXL
    assert host.checkpoint_path(host.default_checkpoint()) == str(w.models / "Stable-diffusion" / SDXL)
    from instant_lora.host.webui import routes

    assert routes.checkpoints(host)["default"] == SDXL
    gr = pytest.importorskip("gradio")
    from instant_lora.host import webui as webui_host
    from instant_lora.ui import actions

    actions.lora_parameter_count(16, "default", True)  # warmed here: build_ui's thread finds it cached
    (demo, _, _), = webui_host.ui_tabs()
    ids = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    assert isinstance(ids["il_checkpoint"], gr.Dropdown) and ids["il_checkpoint"].value == SDXL
    assert "sd_models.load_model" not in w.calls  # building the tab loads nothing


def test_an_sdxl_grid_goes_through_the_webuis_processing_with_the_tags(w, host):
    from modules import processing

    seen = []
    processing.ON_PROCESS.append(lambda p: seen.append((w.sd_models.model_data.sd_model.is_sdxl, list(p.prompts or []))))
    try:
        grid = testing.generate_grid(host.job, host, host.default_checkpoint(), RUN, "xlz, red square", "0, 0.5, 1", 3, SETTINGS)
    finally:
        processing.ON_PROCESS.clear()
    calls = _processed(w.calls)
    assert [c[1] for c in calls] == ["xlz, red square", f"xlz, red square <lora:{RUN}-000001:0.5>",
                                     f"xlz, red square <lora:{RUN}-000001:1>", f"xlz, red square <lora:{RUN}:0.5>",
                                     f"xlz, red square <lora:{RUN}:1>"] and grid.renders == 5
    assert all(c[5] == {} for c in calls)  # the loaded SDXL checkpoint: no override, no reload
    assert "sd_models.load_model" not in w.calls
    assert [s[0] for s in seen] == [True] * 5  # every image made by the SDXL model
    assert grid.cells[0][0].size == (128, 128)
    info = grid.cell_infotext(1, 2)
    assert info.startswith(f"xlz, red square <lora:{RUN}:1>\n") and "Model: sd_xl_base_1.0" in info and "Lora hashes" in info
    assert grid.model_name == "sd_xl_base_1.0"
    # the chosen cell becomes the card's preview; a new sidecar says SDXL (the card filter's value)
    preview, sidecar = grid.choose(1, 2)
    assert preview == w.lora_dir / f"{RUN}.preview.png"
    assert json.loads(sidecar.read_text())["sd version"] == "SDXL"


def test_a_test_on_the_sdxl_checkpoint_while_sd1_is_loaded_has_the_webui_load_it(w, host):
    from modules import processing

    w.sd_models.load_model(w.sd_models.checkpoints_list["sd15/dreamy.ckpt"])
    w.calls.clear()
    seen = []
    processing.ON_PROCESS.append(lambda p: seen.append(w.sd_models.model_data.sd_model.is_sdxl))
    try:
        image, _ = testing.generate_image(host.job, host, SDXL, f"<lora:{RUN}:0.8> xlz", 5, SETTINGS)
    finally:
        processing.ON_PROCESS.clear()
    call, = _processed(w.calls)
    assert call[1] == f"<lora:{RUN}:0.8> xlz" and call[5] == {"sd_model_checkpoint": SDXL}
    assert seen == [True]
    assert image.info["parameters"].startswith(f"<lora:{RUN}:0.8> xlz\n") and "Model: sd_xl_base_1.0" in image.info["parameters"]
