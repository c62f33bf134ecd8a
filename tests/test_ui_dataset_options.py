"""The dataset options in the UI, at the handler level (no browser): every new form field has a
label and a one-line help, what the user changes flows into the request (and what they leave
alone does not), the dataset view shows each image's bucket from the form's resolution and
bucket fields and flags images that would be upscaled into blur, the regularization folder says
what it holds, and the loss chart draws the validation loss beside the training loss."""

from pathlib import Path

import pytest
from conftest import make_image

from instant_lora.jobs import TrainingJob
from instant_lora.train.events import Step, Validation
from instant_lora.ui import actions
from instant_lora.ui.handlers import buckets as bucket_handlers
from instant_lora.ui.handlers import dataset as dataset_handlers

NEW_FIELDS = ("enable_bucket", "bucket_no_upscale", "min_bucket_reso", "max_bucket_reso", "reg_data_dir", "prior_loss_weight",
              "shuffle_caption", "keep_tokens", "caption_dropout_rate", "caption_tag_dropout_rate", "max_token_length",
              "flip_aug", "random_crop", "validation_split", "validate_every_n_steps")


@pytest.fixture
def shapes(tmp_path):
    """A portrait, a landscape and a square photo-sized image, and one small portrait."""
    folder = tmp_path / "ds" / "10_shapes"
    make_image(folder / "portrait.png", size=(832, 1216))
    make_image(folder / "landscape.png", size=(1216, 832), shape="circle")
    make_image(folder / "square.png", size=(1024, 1024))
    make_image(folder / "small.png", size=(200, 300))
    return tmp_path / "ds"


def form(host, folder="", **changed):
    return actions.RunForm(fields={**actions.initial_values(), **changed}, dataset_dir=str(folder),
                           checkpoint=host.default_checkpoint())


def captions_by_name(view) -> dict:
    return {Path(path).name: caption for path, (_, caption) in zip(view[1], view[0])}


# ---- the form ---------------------------------------------------------------------------------------

def test_every_new_field_is_on_the_form_with_a_label_a_help_line_and_the_requests_default():
    from instant_lora.config import TrainConfig
    from instant_lora.request import APP_DEFAULTS

    start = actions.initial_values()
    default = {**TrainConfig().to_dict(), **APP_DEFAULTS}
    for name in NEW_FIELDS:
        assert name in actions.FORM_FIELDS and actions.label_for(name) != name
        help_line = actions.help_for(name)
        assert len(help_line) > 20 and "\n" not in help_line, name
        assert start[name] == default[name], name  # the form shows what a request without the field gets
    assert start["enable_bucket"] is True  # the app's default
    assert "overfitting" in actions.help_for("validation_split")
    assert "rising" in actions.help_for("validation_split") and "falls" in actions.help_for("validation_split")
    assert "turn off Cache latents" in actions.help_for("random_crop")
    assert "trigger words" in actions.help_for("keep_tokens") and "0 =" in actions.help_for("keep_tokens")
    assert "Empty = none" in actions.help_for("reg_data_dir")
    assert "0 or empty" in actions.help_for("validate_every_n_steps")


def test_max_caption_length_is_a_dropdown_whose_75_is_the_default():
    assert actions.choices_for("max_token_length") == ["75", "150", "225"]
    assert actions.shown_value("max_token_length", None) == "75"
    assert actions.read_value("max_token_length", "75") is None and actions.read_value("max_token_length", "225") == 225
    assert actions.shown_value("max_token_length", 150) == "150"


def test_an_untouched_form_sends_no_dataset_option_and_buckets_are_on(host, shapes):
    from instant_lora.request import validate_request

    request = actions.run_request(form(host, shapes), host)
    assert not set(request.values) & set(NEW_FIELDS)
    config = validate_request(request, host)
    assert config.enable_bucket is True and config.max_token_length is None and config.validation_split == 0


def test_the_dataset_options_the_user_sets_flow_into_the_request(host, shapes, tmp_path):
    from instant_lora.request import validate_request

    make_image(tmp_path / "reg" / "1_person" / "r.png")
    changed = dict(enable_bucket=False, shuffle_caption=True, keep_tokens=2, caption_dropout_rate=0.05,
                   caption_tag_dropout_rate=0.1, max_token_length="150", flip_aug=True, validation_split=0.1,
                   validate_every_n_steps=50, reg_data_dir=str(tmp_path / "reg"), prior_loss_weight=0.5,
                   bucket_no_upscale=True, min_bucket_reso=320, max_bucket_reso=768)
    values = actions.run_request(form(host, shapes, **changed), host).values
    assert values["enable_bucket"] is False  # buckets off is sent: the app's default is on
    assert {k: values[k] for k in changed} == {**changed, "max_token_length": 150}
    config = validate_request(actions.run_request(form(host, shapes, **changed), host), host)
    assert (config.enable_bucket, config.max_token_length, config.validate_every_n_steps) == (False, 150, 50)
    # cleared optional boxes mean off / none
    values = actions.run_request(form(host, shapes, validate_every_n_steps=0, reg_data_dir=""), host).values
    assert "validate_every_n_steps" not in values and "reg_data_dir" not in values


def test_random_crop_with_the_default_latent_cache_says_to_turn_the_cache_off(host, shapes):
    message = actions.start_training(_IdleJob(), host, form(host, shapes, random_crop=True))
    assert "did not start" in message and "Random crop" in message and "cache_latents" in message
    plan = actions.live_plan(host, form(host, shapes, random_crop=True), None)
    assert "Random crop" in plan


def test_presets_carry_the_dataset_options_but_not_the_regularization_folder(host, tmp_path):
    import json

    changed = form(host, shuffle_caption=True, max_token_length="225", flip_aug=True, reg_data_dir=str(tmp_path / "reg"))
    name, _ = actions.save_form_preset("mine", changed, host)
    saved = json.loads((Path(host.data_dir) / "presets" / "mine.json").read_text())
    assert (saved["shuffle_caption"], saved["max_token_length"], saved["flip_aug"]) == (True, 225, True)
    assert "reg_data_dir" not in saved and saved["enable_bucket"] is True
    shown, _ = actions.preset_form(name, host)
    assert (shown["shuffle_caption"], shown["max_token_length"], shown["enable_bucket"]) == (True, "225", True)
    assert "reg_data_dir" not in shown  # the folder stays as typed
    again = actions.RunForm(fields={**changed.fields, **shown}, preset=name, checkpoint=host.default_checkpoint())
    assert actions.run_request(again, host).values == {"output_name": "my_lora", "reg_data_dir": str(tmp_path / "reg")}


class _IdleJob:
    def snapshot(self):
        from instant_lora.jobs import JobSnapshot

        return JobSnapshot()

    def start(self, prepared, *, host=None):
        raise AssertionError("must not start")


def test_blocks_lay_out_the_dataset_options_in_the_dataset_section(tmp_path):
    from instant_lora.host.standalone import StandaloneHost
    from instant_lora.ui import build_ui

    demo = build_ui(StandaloneHost(models_dir=tmp_path / "m", lora_dir=tmp_path / "l", data_dir=tmp_path / "d"))
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"il_dataset_options", "il_dataset_buckets", "il_reg_summary"} <= ids
    assert {f"il_{name}" for name in NEW_FIELDS} <= ids
    dropdown = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "il_max_token_length")
    choices = [c[0] if isinstance(c, (tuple, list)) else c for c in dropdown.choices]
    assert choices == ["75", "150", "225"] and dropdown.value == "75"


# ---- buckets in the dataset view --------------------------------------------------------------------

def test_each_image_shows_its_bucket_and_the_table_counts_them(shapes):
    view = dataset_handlers.dataset_view(str(shapes))
    labels = captions_by_name((view.gallery, view.paths))
    assert labels["portrait.png"].startswith("832×1216 → 384×640")
    assert labels["landscape.png"].startswith("1216×832 → 576×448")
    assert labels["square.png"].startswith("1024×1024 → 512×512")
    assert "(no caption)" in labels["square.png"] or "shapes" in labels["square.png"]
    assert "| 384×640 | 2 | 20 |" in view.buckets  # portrait + small, 10 repeats each
    assert "| 576×448 | 1 | 10 |" in view.buckets and "| 512×512 | 1 | 10 |" in view.buckets


def test_buckets_follow_the_forms_resolution_and_bucket_fields(shapes):
    scan = dataset_handlers.dataset_view(str(shapes)).scan
    at_768 = bucket_handlers.bucket_settings({"resolution": "768,768"})
    labels = captions_by_name(dataset_handlers.bucketed_gallery(scan, at_768))
    assert labels["portrait.png"].startswith("832×1216 → 640×896")
    assert labels["landscape.png"].startswith("1216×832 → 896×640")
    off = bucket_handlers.bucket_settings({"enable_bucket": False})
    gallery, paths, table = dataset_handlers.bucketed_gallery(scan, off)
    assert captions_by_name((gallery, paths))["portrait.png"].startswith("832×1216 → 512×512")
    assert "Buckets off" in table and "| 512×512 | 4 | 40 |" in table
    # a half-typed or impossible setting says what to fix instead of guessing
    settings, problem = bucket_handlers.bucket_settings({"resolution": "51"})
    assert settings is None and "Resolution" in problem
    settings, problem = bucket_handlers.bucket_settings({"min_bucket_reso": 1024, "max_bucket_reso": 512})
    assert settings is None and "Min bucket size" in problem
    assert "cannot be shown" in dataset_handlers.bucketed_gallery(scan, (settings, problem))[2]


def test_a_preset_decides_the_buckets_the_form_leaves_alone():
    settings, _ = bucket_handlers.bucket_settings({"resolution": "512,512"}, preset={"resolution": "768,768", "bucket_reso_steps": 32})
    assert settings.resolution == (512, 512) and settings.step == 32  # the user's resolution, the preset's step
    settings, _ = bucket_handlers.bucket_settings({"resolution": "768,768"}, preset={"resolution": "768,768"})
    assert settings.resolution == (768, 768)


def test_small_images_are_flagged_as_upscaled_with_their_names_and_count(shapes):
    view = dataset_handlers.dataset_view(str(shapes))
    assert "**1 image(s) upscaled more than 1.5×**" in view.buckets
    assert "`10_shapes/small.png` 2.1×" in view.buckets
    assert "teaches blur" in view.buckets and "turn on Don't upscale small images" in view.buckets
    assert "portrait.png" not in view.buckets  # shrunk, not enlarged
    labels = captions_by_name((view.gallery, view.paths))
    assert labels["small.png"].startswith("200×300 → 384×640")
    # Don't upscale: the small image trains at about its own size, and nothing is flagged
    no_upscale = bucket_handlers.bucket_settings({"bucket_no_upscale": True})
    gallery, paths, table = dataset_handlers.bucketed_gallery(view.scan, no_upscale)
    assert captions_by_name((gallery, paths))["small.png"].startswith("200×300 → 192×256")
    assert "upscaled" not in table


def test_many_upscaled_images_are_counted_and_the_first_named(tmp_path):
    for i in range(10):
        make_image(tmp_path / "ds" / "2_tiny" / f"t{i}.png", size=(96, 96))
    view = dataset_handlers.dataset_view(str(tmp_path / "ds"))
    assert "**10 image(s) upscaled more than 1.5×**" in view.buckets and "and 2 more" in view.buckets
    assert "5.3×" in view.buckets  # 96 px -> 512 px


def test_image_sizes_come_upright_from_the_exif_orientation(tmp_path):
    from PIL import Image

    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored landscape, shown portrait
    Image.new("RGB", (1216, 832), (10, 120, 200)).save(path, exif=exif)
    assert bucket_handlers.image_size(path) == (832, 1216)
    assert bucket_handlers.image_size(tmp_path / "missing.png") is None


def test_the_regularization_folder_says_how_many_images_it_holds(tmp_path):
    for i in range(3):
        make_image(tmp_path / "reg" / "1_person" / f"r{i}.png")
    text = dataset_handlers.reg_view(str(tmp_path / "reg"))
    assert "**3 images** found" in text and "1_person: 3 x 1" in text
    assert dataset_handlers.reg_view("") == ""
    assert "not found" in dataset_handlers.reg_view(str(tmp_path / "nothing_here")).lower()


# ---- validation in the loss chart ---------------------------------------------------------------------

def _job_with(events) -> TrainingJob:
    job = TrainingJob()
    for event in events:
        job._on_event(event)
    return job


def _steps(losses):
    return [Step(step=i + 1, total=len(losses), epoch=1, loss=v, avg_loss=v, lr=1e-4, seconds=float(i)) for i, v in enumerate(losses)]


def test_validation_events_reach_the_snapshot_and_the_chart_draws_them_with_a_legend():
    train = [0.30 - 0.01 * i for i in range(20)]  # falling
    job = _job_with(_steps(train[:10]) + [Validation(step=10, epoch=1, loss=0.25, images=2, train_avg_loss=0.22)]
                    + _steps(train)[10:] + [Validation(step=20, epoch=2, loss=0.24, images=2, train_avg_loss=0.15)])
    snap = job.snapshot()
    assert snap.validation == [(10, 0.25, 0.22), (20, 0.24, 0.15)]
    assert any("validation loss at step 10" in line for line in snap.log)
    values, seen = actions.poll(job)
    svg = values["loss_chart"]
    assert "data-validation-points='2'" in svg and svg.count("<circle class='il-validation'") == 2
    assert "<polyline class='il-validation'" in svg
    assert "training loss" in svg and "smoothed" in svg and "validation loss" in svg  # the legend
    assert "Validation loss rising while training loss falls = overfitting" in svg
    assert "<b>Overfitting:</b>" not in svg  # it fell too
    # one more validation point is news for the page; the same job polled again is not
    job._on_event(Validation(step=20, epoch=2, loss=0.24, images=2))
    values, _ = actions.poll(job, seen)
    assert "loss_chart" in values


def test_the_chart_says_overfitting_when_validation_rises_while_training_falls():
    train = [0.30 - 0.01 * i for i in range(30)]
    events = _steps(train)
    val = [Validation(step=s, epoch=e, loss=v, images=3) for s, e, v in ((10, 1, 0.20), (20, 2, 0.23), (30, 3, 0.27))]
    job = _job_with(events[:10] + [val[0]] + events[10:20] + [val[1]] + events[20:] + [val[2]])
    svg = actions.loss_chart_svg(job.snapshot().losses, job.snapshot().validation)
    assert "<b>Overfitting:</b>" in svg and "(step 10)" in svg and "0.2700" in svg


def test_without_validation_the_chart_says_how_to_see_overfitting():
    svg = actions.loss_chart_svg([(1, 0.3), (2, 0.2)])
    assert "data-validation-points='0'" in svg and "Validation split" in svg and "overfitting" in svg
    assert "il-validation" not in svg


def test_the_webui_mirror_and_rest_progress_show_validation():
    from types import SimpleNamespace

    from instant_lora.host.webui.progress import WebUIProgressSink
    from instant_lora.host.webui.routes import progress

    state = SimpleNamespace(textinfo="")
    WebUIProgressSink(state)(Validation(step=40, epoch=2, loss=0.1234, images=3))
    assert state.textinfo == "Instant LoRA: step 40, validation loss 0.1234"
    job = _job_with(_steps([0.3, 0.2]) + [Validation(step=2, epoch=1, loss=float("nan"), images=1, train_avg_loss=0.25)])
    assert progress(job)["validation"] == [{"step": 2, "loss": None, "train_avg_loss": 0.25}]
