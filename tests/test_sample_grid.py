"""The weight x epoch grid with a stand-in renderer (as the WebUI will plug in its own): layout,
labels, infotext, the run's rows, and the chosen cell as preview + preferred weight."""

import json

import numpy as np
import pytest
from PIL import Image
from test_sample_support import write_lora

from instant_lora.errors import InstantLoraError
from instant_lora.sample.grid import DEFAULT_WEIGHTS, GridRow, build_grid, draw_grid, run_rows, set_preview
from instant_lora.sample.infotext import parse_infotext
from instant_lora.sample.settings import GenerationSettings
from instant_lora.sample.tags import parse_prompt

SETTINGS = GenerationSettings(negative_prompt="blurry", steps=12, cfg_scale=6.5, sampler="DPM++ 2M Karras", width=48, height=40)


class FakeRender:
    """Paints each cell a colour derived from its tag, and records the calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompt, seed, settings):
        self.calls.append((prompt, seed, settings))
        tags = parse_prompt(prompt).loras
        level = int(tags[0].unet_weight * 200) if tags else 0
        row = int(tags[0].name.rsplit("-", 1)[-1]) if tags and "-" in tags[0].name else 9
        return Image.new("RGB", (settings.width, settings.height), (level, 20 * row, 7))


ROWS = [GridRow("epoch 1", "run-000001"), GridRow("epoch 2", "run-000002"), GridRow("final", "run")]


def test_grid_layout_labels_and_cells():
    render = FakeRender()
    result = build_grid(render, "<lora:run:0.8> a cat, <lora:other:0.3>", ROWS, seed=77, settings=SETTINGS, model_name="base")
    lay = result.layout
    assert (lay.rows, lay.cols, lay.cell_width, lay.cell_height) == (3, 4, 48, 40)
    assert result.image.size == (lay.label_width + 4 * 48, lay.header_height + 3 * 40)
    assert result.row_labels == ["epoch 1", "epoch 2", "final"]
    assert result.col_labels == ["w=0", "w=0.4", "w=0.7", "w=1"]
    # 3 rows x 3 non-zero weights + the weight-0 column once; every call with the grid's one seed.
    assert result.renders == len(render.calls) == 10
    assert {seed for _, seed, _ in render.calls} == {77}
    assert result.prompts[0][0] == "a cat, <lora:other:0.3>"  # weight 0: the base model (other LoRAs kept)
    assert result.prompts[1][2] == "a cat, <lora:other:0.3> <lora:run-000002:0.7>"
    assert result.prompts[2][3] == "a cat, <lora:other:0.3> <lora:run:1>"
    arr = np.asarray(result.image)
    for r in range(3):
        for c in range(4):
            x, y = lay.cell_origin(r, c)
            cell = arr[y:y + 40, x:x + 48]
            assert (cell == np.asarray(result.cells[r][c])).all()
            assert lay.cell_at(x + 5, y + 5) == (r, c)
    assert lay.cell_at(2, lay.header_height + 5) is None and lay.cell_at(lay.label_width + 5, 1) is None
    # Labels are drawn: dark pixels in the label column beside each row and above each column.
    for r in range(3):
        _, y = lay.cell_origin(r, 0)
        assert (arr[y:y + 40, :lay.label_width] < 100).any()
    for c in range(4):
        x, _ = lay.cell_origin(0, c)
        assert (arr[:lay.header_height, x:x + 48] < 100).any()
    assert (arr[:lay.header_height, :lay.label_width] == 255).all()  # the corner stays blank


def test_grid_infotext_in_the_png(tmp_path):
    result = build_grid(FakeRender(), "a cat <lora:run:1>", ROWS, weights=(0, 0.5, 1), seed=3, settings=SETTINGS,
                        model_name="v1-5", model_hash="abcdef1234")
    path = result.save(tmp_path / "grid.png")
    text = Image.open(path).info["parameters"]
    assert text == result.infotext
    prompt, negative, params = parse_infotext(text)
    assert (prompt, negative) == ("a cat", "blurry")
    assert params["Steps"] == "12" and params["Sampler"] == "DPM++ 2M Karras" and params["CFG scale"] == "6.5"
    assert params["Seed"] == "3" and params["Size"] == "48x40" and params["Model"] == "v1-5"
    assert params["Model hash"] == "abcdef1234"
    assert params["Grid rows"] == "epoch 1, epoch 2, final" and params["Grid weights"] == "0, 0.5, 1"
    assert params["Grid LoRAs"] == "run-000001, run-000002, run"
    cell_prompt, _, cell_params = parse_infotext(result.cell_infotext(1, 1))
    assert cell_prompt == "a cat <lora:run-000002:0.5>" and cell_params["Seed"] == "3"


def test_grid_progress_and_errors():
    seen = []
    build_grid(FakeRender(), "x", ROWS[:2], weights=(0.4, 1), seed=1, settings=SETTINGS,
               progress=lambda done, total, image: seen.append((done, total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    by_alias = build_grid(FakeRender(), "<lora:my_alias:0.9> x", ROWS[2:], weights=(0, 1), seed=1, settings=SETTINGS,
                          replace={"my_alias"})
    assert by_alias.prompts == [["x", "x <lora:run:1>"]]
    with pytest.raises(InstantLoraError, match="no rows"):
        build_grid(FakeRender(), "x", [], seed=1, settings=SETTINGS)
    with pytest.raises(InstantLoraError, match="differ in size"):
        draw_grid([[Image.new("RGB", (8, 8)), Image.new("RGB", (8, 9))]], ["r"], ["a", "b"])


def test_run_rows_in_training_order(tmp_path):
    from instant_lora.tiny import build_tiny_sd

    model = build_tiny_sd(0)
    for stem, steps, epoch in [("run", 45, 3), ("run-000001", 20, 1), ("run-000002", 40, 2), ("run-step00000030", 30, 2),
                               ("run-step00000010", 10, 1), ("runner", 5, 1), ("other-000001", 20, 1)]:
        write_lora(tmp_path / f"{stem}.safetensors", model, output_name=stem.split("-")[0], steps=steps, epoch=epoch, rank=1,
                   text_encoder=False)
    (tmp_path / "run-000003.safetensors").write_bytes(b"half-written")
    rows = run_rows(tmp_path, "run")
    assert [(r.label, r.lora, r.steps) for r in rows] == [("step 10", "run-step00000010", 10), ("epoch 1", "run-000001", 20),
                                                          ("step 30", "run-step00000030", 30), ("epoch 2", "run-000002", 40),
                                                          ("final", "run", 45)]
    assert all(r.path.name == f"{r.lora}.safetensors" for r in rows)
    with pytest.raises(InstantLoraError, match="no saved files of the run 'nope'"):
        run_rows(tmp_path, "nope")


def test_chosen_cell_becomes_preview_and_preferred_weight(tmp_path):
    lora = tmp_path / "run-000002.safetensors"
    lora.write_bytes(b"stand-in")
    (tmp_path / "run-000002.json").write_text(json.dumps({"activation text": "sks dog", "preferred weight": 0, "notes": "mine"}))
    rows = [GridRow("epoch 2", "run-000002", lora)]
    result = build_grid(FakeRender(), "a dog", rows, seed=4, settings=SETTINGS)
    preview, sidecar = result.choose(0, 2)
    assert preview == tmp_path / "run-000002.preview.png"  # where the WebUI's Lora card looks
    assert sidecar == tmp_path / "run-000002.json"
    img = Image.open(preview)
    assert img.tobytes() == result.cells[0][2].tobytes()
    assert parse_infotext(img.info["parameters"])[0] == "a dog <lora:run-000002:0.7>"
    data = json.loads(sidecar.read_text())
    assert data == {"activation text": "sks dog", "preferred weight": 0.7, "notes": "mine"}
    with pytest.raises(InstantLoraError, match="base model"):
        result.choose(0, 0)
    # No sidecar yet: one is created with the WebUI's keys.
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes(b"stand-in")
    _, side = set_preview(lone, result.cells[0][3], 1.0)
    assert json.loads(side.read_text())["preferred weight"] == 1.0
    assert json.loads(side.read_text())["sd version"] == "SD1"
    (tmp_path / "bad.safetensors").write_bytes(b"x")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InstantLoraError, match="not valid JSON"):
        set_preview(tmp_path / "bad.safetensors", result.cells[0][3], 1.0)
    assert (tmp_path / "bad.json").read_text() == "{not json"
    assert not (tmp_path / "bad.preview.png").exists()
    assert not list(tmp_path.glob(".*tmp"))  # no temp files left behind


def test_default_weights():
    assert DEFAULT_WEIGHTS == (0.0, 0.4, 0.7, 1.0)
