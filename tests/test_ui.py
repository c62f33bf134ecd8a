"""The UI: builds on the installed Gradio (3.41 in the WebUI env, 4.40 in Forge's, current
otherwise), imports no torch or gradio at import time, and its handlers (plain functions, called
here directly) go through the one request path: the form says what the run does."""

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_image

from instant_lora.errors import InstantLoraError
from instant_lora.jobs import JobSnapshot
from instant_lora.ui import actions

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def three_images(tmp_path):
    for i in range(3):
        make_image(tmp_path / "ds" / "10_x" / f"{i}.png")
        (tmp_path / "ds" / "10_x" / f"{i}.txt").write_text(f"x, picture {i}", encoding="utf-8")
    return tmp_path / "ds"


def form(host, folder="", **fields):
    return actions.RunForm(fields={**actions.initial_values(), **fields}, dataset_dir=str(folder),
                           checkpoint=host.default_checkpoint())


class RecordingJob:
    """Stands in for TrainingJob: records what Start hands it."""

    def __init__(self):
        self.started, self.snap = [], JobSnapshot()

    def snapshot(self):
        return self.snap

    def start(self, prepared, *, host=None):
        self.started.append(prepared)


# ---- the package ------------------------------------------------------------------------------------

def test_importing_the_ui_imports_no_torch_and_no_gradio():
    code = ("import sys; sys.path.insert(0, 'extension'); import instant_lora.ui, instant_lora.ui.actions, instant_lora.ui.wiring, "
            "instant_lora.ui.sections.model, instant_lora.host.standalone; print('torch' in sys.modules, 'gradio' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout.strip() == "False False", out.stderr


def test_no_ui_module_is_long():
    for path in (ROOT / "extension" / "instant_lora" / "ui").rglob("*.py"):
        assert len(path.read_text(encoding="utf-8").splitlines()) <= 400, path


def test_blocks_build_on_the_installed_gradio(tmp_path):
    import gradio as gr

    from instant_lora.host.standalone import StandaloneHost as Host
    from instant_lora.ui import build_ui

    demo = build_ui(Host(models_dir=tmp_path / "m", lora_dir=tmp_path / "l", data_dir=tmp_path / "d"))
    assert isinstance(demo, gr.Blocks)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"il_dataset_dir", "il_gallery", "il_start", "il_cancel", "il_progress", "il_result_tag", "il_network_dim",
            "il_preset", "il_sample_prompts", "il_sample_every", "il_grid_cell_info", "il_plan", "il_max_train_steps"} <= ids
    assert {f"il_{name}" for name in actions.FORM_FIELDS} <= ids


# ---- the form and the one request path --------------------------------------------------------------

def test_every_form_field_has_help_and_a_default():
    values = actions.initial_values()
    for name in actions.FORM_FIELDS:
        assert len(actions.help_for(name)) > 15 and name in values


def test_the_form_starts_at_the_apps_and_rests_defaults():
    from instant_lora.request import APP_DEFAULTS

    values = actions.initial_values()
    assert {k: values[k] for k in APP_DEFAULTS} == APP_DEFAULTS
    assert values["output_name"] == "my_lora"
    assert actions.user_values(values) == {"output_name": "my_lora"}  # an untouched form sends only the name


def test_an_untouched_form_trains_what_rest_trains(host, three_images):
    from instant_lora.request import RunRequest, validate_request

    from_form = validate_request(actions.run_request(form(host, three_images), host), host)
    from_rest = validate_request(RunRequest(front="api", values={"train_data_dir": str(three_images), "output_name": "my_lora"}), host)
    assert from_form.to_dict() == from_rest.to_dict()
    assert (from_form.network_dim, from_form.network_alpha, from_form.learning_rate) == (16, 8.0, 1e-4)
    assert from_form.mixed_precision == "fp16" and from_form.cache_latents


def test_what_the_user_changes_is_sent_and_cleared_numbers_mean_off(host):
    values = actions.run_request(form(host, min_snr_gamma=5, seed=-1, network_args="preset=attn-only", max_train_epochs=None,
                                      save_every_n_epochs=0, network_dim=None, train_batch_size=None), host).values
    assert values == {"output_name": "my_lora", "min_snr_gamma": 5, "network_args": ["preset=attn-only"],
                      "max_train_epochs": None, "save_every_n_epochs": None}  # rank and batch size: not set
    assert actions.read_value("seed", 0) == 0 and actions.read_value("seed", -1) is None


def test_a_preset_fills_the_form_and_what_it_sets_is_not_sent_again(host):
    shown, message = actions.preset_form("Quick test", host)
    assert "Quick test" in message and shown["network_dim"] == 8 and shown["max_train_steps"] == 200
    assert shown["max_train_epochs"] == 0  # Epochs empty: a fixed number of steps
    assert "output_name" not in shown  # the user's name stays
    request = actions.run_request(actions.RunForm(fields={**actions.initial_values(), **shown}, preset="Quick test"), host)
    assert request.values == {"output_name": "my_lora"} and request.preset == "Quick test"
    request = actions.run_request(actions.RunForm(fields={**actions.initial_values(), **shown, "network_dim": 16},
                                                  preset="Quick test"), host)
    assert request.values["network_dim"] == 16  # back to the app's default is a change against the preset


def test_start_goes_through_prepare_run_with_prompts_as_text(host, three_images):
    job = RecordingJob()
    run = actions.RunForm(fields={**actions.initial_values(), "output_name": "cat"}, dataset_dir=str(three_images),
                          checkpoint="base.safetensors", sample_text="a photo of x", sample_every=10)
    message = actions.start_training(job, host, run)
    assert message.startswith("Started **cat**"), message
    (prepared,) = job.started
    assert prepared.config.sample_prompt_text == "a photo of x" and prepared.config.sample_every_n_steps == 10
    assert prepared.config.sample_prompts is None and not (host.data_dir / "prompts").exists()  # no file written
    assert prepared.config.output_dir == str(host.lora_dir)
    assert prepared.config.pretrained_model_name_or_path == str(host.models_dir / "base.safetensors")


def test_start_lists_every_bad_setting_by_its_label(host, three_images):
    job = RecordingJob()
    message = actions.start_training(job, host, form(host, three_images, learning_rate=-1, resolution="100",
                                                     output_name="../escape"))
    assert message.startswith("**Training did not start. Fix these settings:**") and not job.started
    for label, name in (("Learning rate", "learning_rate"), ("Resolution", "resolution"), ("Output name", "output_name")):
        assert f"**{label}** (`{name}`)" in message, message
    host.lora_dir.mkdir()
    (host.lora_dir / "taken.safetensors").write_bytes(b"")
    message = actions.start_training(job, host, form(host, three_images, output_name="taken"))
    assert message.startswith("**Training did not start") and "already exists" in message
    message = actions.start_training(job, host, form(host, three_images.parent / "nowhere"))
    assert message.startswith("**Training did not start") and "**Dataset folder**" in message, message
    replace = actions.RunForm(**{**form(host, three_images, output_name="taken").__dict__, "overwrite": True})
    assert actions.start_training(job, host, replace).startswith("Started")
    job.snap = JobSnapshot(state="running", name="taken", step=3, total=40)
    message = actions.start_training(job, host, form(host, three_images))
    assert message.startswith("**Training did not start:** a training is already running ('taken' at step 3/40)")


def test_a_start_the_job_refuses_says_it_did_not_start(host, three_images):
    class Refusing(RecordingJob):
        def __init__(self, error):
            super().__init__()
            self.error = error

        def start(self, prepared, *, host=None):
            raise self.error

    busy = Refusing(InstantLoraError("the GPU is busy: captioning is running", hint="wait for it to finish"))
    message = actions.start_training(busy, host, form(host, three_images))
    assert message == "**Training did not start:** the GPU is busy: captioning is running\n\nwait for it to finish"
    message = actions.start_training(Refusing(OSError("disk full")), host, form(host, three_images))
    assert message == "**Training did not start:** unexpected error OSError: disk full"


# ---- the live plan is the run's plan -----------------------------------------------------------------

def test_live_plan_with_epochs_cleared_runs_the_reference_steps(host, three_images):
    from instant_lora.dataset import scan_dataset
    from instant_lora.request import prepare_run

    scan = scan_dataset(three_images)
    run = form(host, three_images, max_train_epochs=None, save_every_n_epochs=0)
    shown = actions.live_plan(host, run, scan)
    prepared = prepare_run(actions.run_request(run, host), host, cuda=False)
    assert prepared.plan.max_train_steps == 1600 and prepared.plan.num_epochs == 54  # ceil(1600 / 30)
    assert "30 steps per epoch; 1600 steps = 54 epoch(s)" in shown, shown
    assert "1620" not in shown
    assert f"`{prepared.plan.final_path()}`" in shown
    assert "trainable:" in shown and "LoRA scale alpha/rank = 0.5" in shown


def test_live_plan_counts_a_save_once_when_step_and_epoch_saves_coincide(host, three_images):
    from instant_lora.dataset import scan_dataset
    from instant_lora.request import prepare_run

    scan = scan_dataset(three_images)
    run = form(host, three_images, max_train_epochs=4, save_every_n_epochs=1, save_every_n_steps=15)
    plan = prepare_run(actions.run_request(run, host), host, cuda=False).plan
    assert [s.step for s in plan.intermediate_saves] == [15, 30, 45, 60, 75, 90, 105]  # 30, 60, 90 are both kinds
    assert f"final file + {len(plan.intermediate_saves)} intermediate" in actions.live_plan(host, run, scan)
    shown = actions.live_plan(host, form(host, three_images, save_every_n_epochs=0), scan)
    assert "final file only" in shown


def test_live_plan_names_what_to_fix_and_needs_no_dataset(host):
    shown = actions.live_plan(host, form(host, network_alpha=-2), None)
    assert "Load a dataset" in shown and "**Alpha** (`network_alpha`)" in shown


def test_live_plan_names_the_preset_and_says_when_the_form_left_it(host, three_images):
    from instant_lora.dataset import scan_dataset

    scan = scan_dataset(three_images)
    assert actions.live_plan(host, form(host, three_images), scan).startswith("no preset: the app's defaults\n")
    shown, _ = actions.preset_form("Balanced", host)
    balanced = actions.RunForm(fields={**actions.initial_values(), **shown}, dataset_dir=str(three_images), preset="Balanced",
                               checkpoint=host.default_checkpoint())
    plan = actions.live_plan(host, balanced, scan)
    assert plan.startswith("preset: **Balanced**\n") and "modified" not in plan
    assert "time: **about" in plan  # the estimate, wherever this runs
    changed = actions.RunForm(**{**balanced.__dict__, "fields": {**balanced.fields, "network_dim": 32, "output_name": "x"}})
    assert actions.live_plan(host, changed, scan).startswith("preset: **Balanced (modified)**; changed: Rank\n")


# ---- polling sends only what changed --------------------------------------------------------------------

class SteppingJob:
    def __init__(self):
        self.snap = JobSnapshot(state="running", name="cat", total=10, started_at=1.0, version=1)

    @property
    def version(self):
        return self.snap.version

    def snapshot(self):
        return self.snap

    def step(self, n, loss=0.5, log=None):
        s = self.snap
        s.step, s.losses = n, s.losses + [(n, loss)]
        s.log = s.log + ([log] if log else [])
        s.version += 1


def test_poll_sends_a_new_page_everything_then_only_what_changed():
    job = SteppingJob()
    values, seen = actions.poll(job, None)
    assert set(values) == set(actions.POLLED)  # a page opened later gets the whole state
    assert actions.poll(job, seen) == ({}, seen)  # nothing changed: nothing sent
    job.step(1, log="step one")
    values, seen = actions.poll(job, seen)
    assert set(values) == {"progress", "loss_chart", "log"}  # no samples, no result: not re-sent
    job.step(2)
    values, seen = actions.poll(job, seen)
    assert "<svg" in values["loss_chart"] and "step 2 / 10" in values["progress"] and "log" not in values
    job.snap.version += 1  # a change that touches none of the outputs
    assert actions.poll(job, seen)[0] == {}
    job.snap.samples = [("a photo", "/x/s1.png")]
    job.snap.version += 1
    values, _ = actions.poll(job, seen)
    assert values == {"samples": [("/x/s1.png", "a photo")]}


def test_poll_wiring_leaves_unchanged_outputs_alone():
    import gradio as gr

    from instant_lora.ui.compat import updates

    job = SteppingJob()
    values, seen = actions.poll(job, None)
    job.step(1)
    values, _ = actions.poll(job, seen)
    out = updates(gr, values, actions.POLLED)
    assert out[0] == values["progress"] and out[2] == gr.update() and out[4] == gr.update()


def test_cancelled_is_not_failed_and_says_where_it_stopped(tmp_path):
    cancelled = JobSnapshot(state="cancelled", stage="loading", name="cat")
    md, tag = actions.result_markdown(cancelled)
    assert md.startswith("**Cancelled** while loading the model: nothing was saved") and tag == ""
    assert "data-state='cancelled'" in actions.progress_html(cancelled) and "cancelled while loading" in actions.progress_html(cancelled)
    lora = tmp_path / "cat-step00000020.safetensors"
    lora.write_bytes(b"x")
    md, tag = actions.result_markdown(JobSnapshot(state="cancelled", stage="training", result_path=str(lora), trigger_words="shpz"))
    assert md.startswith("**Cancelled** while training; saved") and tag == "<lora:cat-step00000020:0.8> shpz"
    md, _ = actions.result_markdown(JobSnapshot(state="failed", stage="caching", error="out of memory"))
    assert md.startswith("**Training failed** while caching: out of memory")


# ---- dataset ------------------------------------------------------------------------------------------

def test_dataset_view_shows_thumbnails_and_the_caption_linters_findings(tmp_path):
    for i in range(4):
        make_image(tmp_path / "ds" / "5_x" / f"{i}.png", size=(600, 400))
        (tmp_path / "ds" / "5_x" / f"{i}.txt").write_text(f"x, photo, look {i}", encoding="utf-8")
    (tmp_path / "ds" / "5_x" / "0.txt").write_text("x, photo, <lora:old:1>", encoding="utf-8")
    (tmp_path / "ds" / "5_x" / "1.txt").write_text("x, photo, same", encoding="utf-8")
    (tmp_path / "ds" / "5_x" / "2.txt").write_text("x, photo, same", encoding="utf-8")
    view = actions.dataset_view(str(tmp_path / "ds"), ".txt", trigger="shpz")
    assert "**4 images**, 20 per epoch" in view.summary
    assert view.paths == [str(tmp_path / "ds" / "5_x" / f"{i}.png") for i in range(4)]
    assert all(max(thumb.size) <= 256 and not isinstance(thumb, (str, Path)) for thumb, _ in view.gallery)
    problems = view.problems
    assert problems.count("prompt tag") == 1  # the scan and the linter share the rule: said once
    assert "2 images share the caption" in problems and "lack the trigger 'shpz'" in problems
    assert "'photo' is in 4 of 4 captions" in problems  # the constant tag (the linter's rule, not the UI's own)


def test_a_missing_folder_is_a_clear_message(tmp_path):
    view = actions.dataset_view(str(tmp_path / "nowhere"))
    assert view.scan is None and view.gallery == [] and "Training folder not found" in view.problems
    assert "No dataset yet" in actions.dataset_view("  ").summary


def test_caption_edits_stay_inside_the_dataset(tmp_path):
    img = make_image(tmp_path / "ds" / "10_x" / "a.png")
    outside = make_image(tmp_path / "elsewhere.png")
    actions.save_caption(str(img), "new caption\nsecond line", str(tmp_path / "ds"))
    assert (tmp_path / "ds" / "10_x" / "a.txt").read_text(encoding="utf-8") == "new caption second line\n"
    with pytest.raises(InstantLoraError):
        actions.save_caption(str(outside), "x", str(tmp_path / "ds"))
    assert not (tmp_path / "elsewhere.txt").exists()


def test_a_caption_can_never_overwrite_an_image(tmp_path):
    img = make_image(tmp_path / "ds" / "10_x" / "a.jpg")
    other = make_image(tmp_path / "ds" / "10_x" / "a.png", color=(1, 2, 3))
    before = other.read_bytes()
    for ext in (".png", "png", ".JPG", ".webp", "../a.png", ".safetensors"):
        with pytest.raises(InstantLoraError, match="[Cc]aption extension"):
            actions.save_caption(str(img), "text", str(tmp_path / "ds"), ext)
    assert other.read_bytes() == before and img.read_bytes()[:2] == b"\xff\xd8"
    assert "a.caption" in actions.save_caption(str(img), "text", str(tmp_path / "ds"), ".caption")
    assert (tmp_path / "ds" / "10_x" / "a.caption").read_text(encoding="utf-8") == "text\n"


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


# ---- presets, the Test panel's model ------------------------------------------------------------------

def test_presets_load_and_save(tmp_path, host):
    from instant_lora.presets import list_presets, load_preset, save_preset

    presets = list_presets(tmp_path)
    assert {"Quick test", "Balanced", "Low VRAM (6 GB)"} <= set(presets)
    for path in presets.values():
        values, description = load_preset(path)
        assert description and values
    path = save_preset("mine", {"network_dim": 64, "train_data_dir": "x", "max_train_steps": 1600}, tmp_path)
    values, _ = load_preset(path)
    assert values == {"network_dim": 64}  # per-run fields and defaults are not stored
    name, _ = actions.save_form_preset("from_form", form(host, network_dim=32, output_name="cat"), host)
    values, _ = load_preset(host.data_dir / "presets" / "from_form.json")
    assert name == "from_form" and values["network_dim"] == 32 and "output_name" not in values
    assert "from_form" in actions.preset_choices(host)


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
