"""The UI module: builds on the installed Gradio (3.41 in the WebUI env, current otherwise), imports
no torch at import time, and its actions refuse bad input without writing outside their folders."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_image

from instant_lora.errors import InstantLoraError
from instant_lora.ui import actions

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_ui_imports_no_torch():
    code = ("import sys; sys.path.insert(0, 'extension'); import instant_lora.ui, instant_lora.ui.actions, instant_lora.host.standalone; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_blocks_build_on_the_installed_gradio(tmp_path):
    import gradio as gr

    from instant_lora.host.standalone import StandaloneHost as Host
    from instant_lora.ui import build_ui

    demo = build_ui(Host(models_dir=tmp_path / "m", lora_dir=tmp_path / "l", data_dir=tmp_path / "d"))
    assert isinstance(demo, gr.Blocks)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"il_dataset_dir", "il_gallery", "il_start", "il_cancel", "il_progress", "il_result_tag", "il_network_dim"} <= ids


def test_every_form_field_has_help_and_a_default():
    values = actions.initial_values()
    for name in actions.FORM_FIELDS:
        assert len(actions.help_for(name)) > 15 and name in values


def test_uploads_reject_non_images_and_bad_names(tmp_path):
    make_image(tmp_path / "in" / "ok.png")
    (tmp_path / "in" / "evil.exe").write_bytes(b"MZ")
    (tmp_path / "in" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    folder, report = actions.import_uploads([str(tmp_path / "in" / n) for n in ("ok.png", "evil.exe", "broken.jpg")],
                                            tmp_path / "data", "set", 5)
    assert sorted(p.name for p in (Path(folder) / "5_set").iterdir()) == ["ok.png"]
    assert "evil.exe: not an image" in report and "broken.jpg" in report
    for bad in ("../up", "a/b", ""):
        with pytest.raises(InstantLoraError):
            actions.import_uploads([str(tmp_path / "in" / "ok.png")], tmp_path / "data", bad, 5)
    assert sorted(p.name for p in (tmp_path / "data" / "datasets").iterdir()) == ["set"]  # nothing else was made
    assert not (tmp_path / "data" / "up").exists() and not (tmp_path / "up").exists()


def test_upload_box_says_what_arrived_before_anything_is_copied(tmp_path):
    msg = actions.describe_uploads([str(tmp_path / n) for n in ("a.png", "b.JPG", "a.txt", "notes.pdf")])
    assert msg.startswith("4 file(s) ready to add: 2 image(s), 1 caption file(s), 1 other file(s)")
    assert actions.describe_uploads(None) == "" and not (tmp_path / "data").exists()


def test_caption_edits_stay_inside_the_dataset(tmp_path):
    img = make_image(tmp_path / "ds" / "10_x" / "a.png")
    outside = make_image(tmp_path / "elsewhere.png")
    actions.save_caption(str(img), "new caption\nsecond line", str(tmp_path / "ds"))
    assert (tmp_path / "ds" / "10_x" / "a.txt").read_text(encoding="utf-8") == "new caption second line\n"
    with pytest.raises(InstantLoraError):
        actions.save_caption(str(outside), "x", str(tmp_path / "ds"))
    assert not (tmp_path / "elsewhere.txt").exists()


def test_output_name_checks(tmp_path):
    (tmp_path / "taken.safetensors").write_bytes(b"")
    assert "already exists" in actions.output_name_problem("taken", tmp_path, overwrite=False)
    assert actions.output_name_problem("taken", tmp_path, overwrite=True) is None
    assert "plain file name" in actions.output_name_problem("../x", tmp_path, overwrite=True)


def test_form_values_map_to_the_config(tmp_path):
    values = actions.initial_values()
    values.update(min_snr_gamma=0, seed=-1, network_args="preset=attn-only", max_train_epochs=3)
    cfg = actions.config_from_form(values, checkpoint="m.safetensors", dataset_dir="d", output_dir="o")
    assert cfg.min_snr_gamma is None and cfg.seed is None and cfg.preset == "attn-only" and cfg.max_train_epochs == 3
    assert cfg.network_dim == 16 and cfg.network_alpha == 8.0 and cfg.learning_rate == 1e-4


def test_presets_load_and_save(tmp_path):
    from instant_lora.presets import list_presets, load_preset, save_preset

    presets = list_presets(tmp_path)
    assert {"Quick test", "Balanced", "Low VRAM (6 GB)"} <= set(presets)
    for path in presets.values():
        values, description = load_preset(path)
        assert description and values
    path = save_preset("mine", {"network_dim": 64, "train_data_dir": "x", "max_train_steps": 1600}, tmp_path)
    values, _ = load_preset(path)
    assert values == {"network_dim": 64}  # per-run fields and defaults are not stored


def test_plan_counts_steps_and_the_files_a_run_leaves(tmp_path):
    from instant_lora.dataset import scan_dataset

    for i in range(3):
        make_image(tmp_path / "ds" / "5_x" / f"{i}.png")
    scan = scan_dataset(tmp_path / "ds")
    values = dict(actions.initial_values(), max_train_epochs=4, train_batch_size=1, save_every_n_epochs=1, save_every_n_steps=0)
    plan = actions.plan_markdown(values, scan)
    assert "**60 steps**" in plan and "final file + 3 intermediate" in plan
    values.update(save_every_n_epochs=2, save_every_n_steps=15)  # steps 15, 30 (= epoch 2), 45
    assert "final file + 3 intermediate" in actions.plan_markdown(values, scan)
    values.update(save_every_n_epochs=0, save_every_n_steps=0)
    assert "final file only" in actions.plan_markdown(values, scan)


def test_a_training_frees_the_test_panels_model_and_no_model_is_a_clear_message(tiny_model_dir, tmp_path):
    from instant_lora.host.standalone import StandaloneHost as Host
    from instant_lora.sample import generate

    host = Host(models_dir=tiny_model_dir.parent, lora_dir=tmp_path / "loras", data_dir=tmp_path / "data")
    with host.test_renderer(tiny_model_dir.name) as render:  # no Lora folder yet: the base model still tests
        assert render.model_name
    assert generate._kept and (tmp_path / "loras").is_dir()
    host.before_training()  # the test model leaves the GPU before a training loads its own
    assert not generate._kept
    with pytest.raises(InstantLoraError, match="no base model chosen"):
        host.test_renderer("")
