"""--dataset_config: the reference trainer's dataset TOML into datasets and subsets, and the
one-dataset plan of the flags. Folders only (no images are needed to plan)."""

import json
import sys
from pathlib import Path

import pytest

from instant_lora.buckets import BucketSettings
from instant_lora.config import TrainConfig
from instant_lora.dataset_config import (
    DatasetSpec,
    DatasetSpecs,
    SubsetSpec,
    dataset_specs,
    read_dataset_config,
    specs_from_config,
)
from instant_lora.errors import InstantLoraError


def folders(root: Path, *names: str) -> dict:
    out = {}
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        out[name] = (root / name).as_posix()
    return out


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path, config=None) -> str:
    with pytest.raises(InstantLoraError) as e:
        read_dataset_config(path, config or TrainConfig())
    assert e.value.path == str(path)
    assert e.value.message.startswith(f"Invalid dataset config {path} (")
    return e.value.message


def subset_toml(tmp_path: Path, body: str, dataset: str = "", general: str = "") -> Path:
    """A file with one dataset and one subset of an existing folder, plus the given lines."""
    d = folders(tmp_path, "imgs")
    return write(tmp_path / "d.toml", f"[general]\n{general}\n[[datasets]]\n{dataset}\n"
                                      f"  [[datasets.subsets]]\n  image_dir = '{d['imgs']}'\n{body}\n")


# ----------------------------------------------------------------------------- a full file


def test_general_dataset_subset_inheritance_and_command_line_fallbacks(tmp_path):
    d = folders(tmp_path, "sks", "sks_close", "reg", "wide", "plain")
    path = write(tmp_path / "dataset.toml", f"""
[general]
shuffle_caption = true
keep_tokens = 1
caption_extension = ".caption"
enable_bucket = true
num_repeats = 2

[[datasets]]
resolution = 512
batch_size = 4
keep_tokens = 2
flip_aug = true

  [[datasets.subsets]]
  image_dir = '{d['sks']}'
  class_tokens = 'sks dog'
  num_repeats = 10

  [[datasets.subsets]]
  image_dir = '{d['sks_close']}'
  keep_tokens = 3
  caption_tag_dropout_rate = 0.2

  [[datasets.subsets]]
  image_dir = '{d['reg']}'
  class_tokens = 'dog'
  is_reg = true
  flip_aug = false

[[datasets]]
resolution = [768, 512]
batch_size = 2
min_bucket_reso = 320
bucket_no_upscale = true

  [[datasets.subsets]]
  image_dir = '{d['wide']}'
  caption_extension = ".txt"

[[datasets]]
  [[datasets.subsets]]
  image_dir = '{d['plain']}'
""")
    config = TrainConfig(resolution="640,640", train_batch_size=3, max_bucket_reso=1536, caption_prefix="trigger, ",
                         caption_dropout_rate=0.1, keep_tokens_separator="|||", random_crop=True)
    specs = read_dataset_config(path, config)

    assert isinstance(specs, DatasetSpecs) and isinstance(specs, list)
    assert specs.source == str(path)
    assert specs.warnings == ()
    assert len(specs) == 3
    # subset options: subset > dataset > [general] > the flags > the reference's default
    common = dict(layout="images", caption_extension=".caption", shuffle_caption=True, keep_tokens_separator="|||",
                  caption_separator=",", caption_prefix="trigger, ", caption_suffix=None, caption_dropout_rate=0.1,
                  caption_dropout_every_n_epochs=0, caption_tag_dropout_rate=0.0, random_crop=True)
    assert specs[0] == DatasetSpec(
        resolution=(512, 512), batch_size=4, enable_bucket=True, min_bucket_reso=256, max_bucket_reso=1536,
        bucket_reso_steps=64, bucket_no_upscale=False, subsets=(
            SubsetSpec(image_dir=d["sks"], num_repeats=10, class_tokens="sks dog", keep_tokens=2, flip_aug=True,
                       **common),
            SubsetSpec(image_dir=d["sks_close"], num_repeats=2, keep_tokens=3, flip_aug=True,
                       **{**common, "caption_tag_dropout_rate": 0.2}),
            SubsetSpec(image_dir=d["reg"], num_repeats=2, class_tokens="dog", is_reg=True, keep_tokens=2,
                       flip_aug=False, **common),
        ))
    assert specs[1] == DatasetSpec(
        resolution=(768, 512), batch_size=2, enable_bucket=True, min_bucket_reso=320, max_bucket_reso=1536,
        bucket_reso_steps=64, bucket_no_upscale=True, subsets=(
            SubsetSpec(image_dir=d["wide"], num_repeats=2, keep_tokens=1, **{**common, "caption_extension": ".txt"}),
        ))
    # nothing in the dataset: --resolution and --train_batch_size, as the reference's fallbacks
    assert (specs[2].resolution, specs[2].batch_size) == ((640, 640), 3)
    assert specs[2].subsets == (SubsetSpec(image_dir=d["plain"], num_repeats=2, keep_tokens=1, **common),)
    assert specs[1].buckets() == BucketSettings(resolution=(768, 512), enabled=True, min_size=320, max_size=1536,
                                                step=64, no_upscale=True)


def test_defaults_without_general_or_flags_are_the_references(tmp_path):
    d = folders(tmp_path, "a")
    path = write(tmp_path / "d.toml", f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{d['a']}'\n")
    (spec,) = read_dataset_config(path, TrainConfig())
    assert spec == DatasetSpec(resolution=(512, 512), batch_size=1, enable_bucket=False, min_bucket_reso=256,
                               max_bucket_reso=1024, bucket_reso_steps=64, bucket_no_upscale=False,
                               subsets=(SubsetSpec(image_dir=d["a"]),))
    assert spec.subsets[0].num_repeats == 1 and spec.subsets[0].class_tokens == ""


def test_json_file_with_the_same_layout(tmp_path):
    d = folders(tmp_path, "a")
    path = tmp_path / "d.json"
    path.write_text(json.dumps({"general": {"batch_size": 2},
                                "datasets": [{"resolution": [512, 768], "subsets": [{"image_dir": d["a"], "num_repeats": 3}]}]}))
    (spec,) = read_dataset_config(path, TrainConfig())
    assert (spec.resolution, spec.batch_size, spec.subsets[0].num_repeats) == ((512, 768), 2, 3)


# ----------------------------------------------------------------------------- keys in the wrong place


def test_unknown_keys_get_a_suggestion_at_their_level(tmp_path):
    path = subset_toml(tmp_path, "  num_repeat = 3\n  flipaug = true\n  zzz_nothing = 1",
                       dataset="bach_size = 2", general="shufle_caption = true")
    message = problems_of(path)
    assert "(5 problems)" in message
    assert "  general.shufle_caption is not a dataset config key (did you mean shuffle_caption?)" in message
    assert "  datasets[0].bach_size is not a dataset config key (did you mean batch_size?)" in message
    assert "  datasets[0].subsets[0].num_repeat is not a dataset config key (did you mean num_repeats?)" in message
    assert "  datasets[0].subsets[0].flipaug is not a dataset config key (did you mean flip_aug?)" in message
    assert "  datasets[0].subsets[0].zzz_nothing is not a dataset config key\n" in message + "\n"


def test_a_typo_of_a_key_of_another_level_says_where_that_key_belongs(tmp_path):
    path = subset_toml(tmp_path, "  batch_sise = 2")
    assert ("datasets[0].subsets[0].batch_sise is not a dataset config key (did you mean batch_size? "
            "it belongs in [[datasets]] or [general])") in problems_of(path)


def test_misplaced_keys_say_where_they_belong(tmp_path):
    path = subset_toml(tmp_path, "  batch_size = 2\n  resolution = 768\n  validation_split = 0.1",
                       dataset="is_reg = true", general="image_dir = 'x'")
    message = problems_of(path)
    assert "  datasets[0].subsets[0].batch_size belongs in [[datasets]] or [general], not in a subset" in message
    assert "  datasets[0].subsets[0].resolution belongs in [[datasets]] or [general], not in a subset" in message
    assert "  datasets[0].subsets[0].validation_split belongs in [[datasets]] or [general], not in a subset" in message
    assert "  datasets[0].is_reg belongs in [[datasets.subsets]], not in a dataset" in message
    assert "  general.image_dir belongs in [[datasets.subsets]], not in [general]" in message


def test_keys_at_the_top_and_command_line_names(tmp_path):
    d = folders(tmp_path, "a")
    path = write(tmp_path / "d.toml", f"""resolution = 512
train_data_dir = 'x'
[[datasets]]
train_batch_size = 2
learning_rate = 1e-4
prior_loss_weight = 0.5
  [[datasets.subsets]]
  image_dir = '{d['a']}'
  dataset_repeats = 4
""")
    message = problems_of(path)
    assert "  resolution belongs in [[datasets]] or [general], not at the top of the file" in message
    assert "  train_data_dir is a command-line flag: in a dataset config each folder of images is a " in message
    assert "  datasets[0].train_batch_size is called batch_size in a dataset config" in message
    assert ("  datasets[0].learning_rate is a training flag, not a dataset key: pass --learning_rate on the command "
            "line (or in --config_file)") in message
    assert "  datasets[0].prior_loss_weight is a training flag, not a dataset key: pass --prior_loss_weight" in message
    assert "  datasets[0].subsets[0].dataset_repeats is called num_repeats in a dataset config" in message


# ----------------------------------------------------------------------------- values


def test_type_and_range_errors_are_listed_together_with_their_places(tmp_path):
    path = subset_toml(tmp_path, "  num_repeats = 'five'\n  caption_dropout_rate = 1.5\n  flip_aug = 'yes'\n"
                                 "  keep_tokens = -1\n  class_tokens = 3",
                       dataset="batch_size = 0", general="min_bucket_reso = 'big'")
    message = problems_of(path)
    assert "(7 problems)" in message
    lines = message.splitlines()[1:]
    assert lines == [
        "  general.min_bucket_reso must be a number (got str 'big')",
        "  datasets[0].batch_size = 0 is out of range: allowed 1 to 1024",
        "  datasets[0].subsets[0].num_repeats must be a whole number (got str 'five')",
        "  datasets[0].subsets[0].caption_dropout_rate = 1.5 is out of range: allowed 0 to 1",
        "  datasets[0].subsets[0].flip_aug must be true or false (got str 'yes')",
        "  datasets[0].subsets[0].keep_tokens = -1 is out of range: allowed 0 to 255",
        "  datasets[0].subsets[0].class_tokens must be text in quotes (got int 3)",
    ]


def test_a_whole_float_is_a_whole_number_and_a_fraction_is_not(tmp_path):
    d = folders(tmp_path, "a")
    path = write(tmp_path / "d.toml", f"[[datasets]]\nbatch_size = 2.0\n[[datasets.subsets]]\nimage_dir = '{d['a']}'\n"
                                      "num_repeats = 2.0\n")
    (spec,) = read_dataset_config(path, TrainConfig())
    assert (spec.batch_size, spec.subsets[0].num_repeats) == (2, 2)
    write(path, f"[[datasets]]\n[[datasets.subsets]]\nimage_dir = '{d['a']}'\nnum_repeats = 2.5\n")
    assert "datasets[0].subsets[0].num_repeats must be a whole number (got 2.5)" in problems_of(path)


@pytest.mark.parametrize("written, expected", [("512", (512, 512)), ("[768, 512]", (768, 512)),
                                               ("1024.0", (1024, 1024)), ("[512, 1024]", (512, 1024))])
def test_resolution_as_a_number_or_width_and_height(tmp_path, written, expected):
    path = subset_toml(tmp_path, "", dataset=f"resolution = {written}")
    assert read_dataset_config(path, TrainConfig())[0].resolution == expected


@pytest.mark.parametrize("written, problem", [
    ("'512,512'", "must be a number like 512 or [width, height] like [512, 768] (got str '512,512')"),
    ("[512]", "must be a number like 512 or [width, height] like [512, 768] (got list [512])"),
    ("[512, 512, 3]", "must be a number like 512 or [width, height] like [512, 768] (got list [512, 512, 3])"),
    ("true", "must be a number like 512 or [width, height] like [512, 768] (got bool True)"),
    ("500", "500x500 must be multiples of 64 between 64 and 2048 (512 for SD1.5, 1024 for SDXL)"),
    ("[512, 4096]", "512x4096 must be multiples of 64 between 64 and 2048 (512 for SD1.5, 1024 for SDXL)"),
])
def test_bad_resolutions(tmp_path, written, problem):
    path = subset_toml(tmp_path, "", general=f"resolution = {written}")
    assert f"  general.resolution {problem}" in problems_of(path)


def test_bucket_sizes_must_fit_the_steps(tmp_path):
    path = subset_toml(tmp_path, "", dataset="min_bucket_reso = 320\nmax_bucket_reso = 1000\nbucket_reso_steps = 128")
    message = problems_of(path)
    assert ("  datasets[0].min_bucket_reso = 320 must be a multiple of bucket_reso_steps "
            "(128, datasets[0].bucket_reso_steps)") in message
    assert "  datasets[0].max_bucket_reso = 1000 must be a multiple of bucket_reso_steps" in message
    path = subset_toml(tmp_path, "", dataset="min_bucket_reso = 1024", general="max_bucket_reso = 512")
    assert "  datasets[0].min_bucket_reso = 1024 is above max_bucket_reso (512, general.max_bucket_reso)" in problems_of(path)


def test_caption_checks_of_the_flags_apply_to_the_file(tmp_path):
    path = subset_toml(tmp_path, "  caption_extension = '.png'\n  caption_separator = ''\n  random_crop = true",
                       dataset="keep_tokens_separator = ','")
    message = problems_of(path, TrainConfig(cache_latents=True))
    assert "  datasets[0].subsets[0].caption_extension Caption extension '.png' is an image file type" in message
    assert "  datasets[0].subsets[0].caption_separator must not be empty (',' separates tags)" in message
    assert ('  datasets[0].keep_tokens_separator = ",": the keep_tokens_separator is also the caption separator; '
            "use another marker such as |||") in message
    assert "  datasets[0].subsets[0].random_crop needs each step's own crop of the image, which cached latents" in message


# ----------------------------------------------------------------------------- subsets and folders


def test_metadata_file_and_controlnet_subsets_are_refused(tmp_path):
    path = subset_toml(tmp_path, "  metadata_file = 'meta.json'\n  conditioning_data_dir = 'cond'")
    message = problems_of(path)
    assert ("  datasets[0].subsets[0].metadata_file makes a fine-tuning subset, which is not supported: only the "
            "DreamBooth-style layout is (image_dir holding the images, with a caption file beside each image or "
            "class_tokens)") in message
    assert "  datasets[0].subsets[0].conditioning_data_dir makes a ControlNet subset, which is not supported" in message


def test_missing_and_wrong_image_dirs_are_named(tmp_path):
    (tmp_path / "a_file.png").write_bytes(b"x")
    path = write(tmp_path / "d.toml", f"""[[datasets]]
  [[datasets.subsets]]
  num_repeats = 2
  [[datasets.subsets]]
  image_dir = '{(tmp_path / "nowhere").as_posix()}'
  [[datasets.subsets]]
  image_dir = '{(tmp_path / "a_file.png").as_posix()}'
  [[datasets.subsets]]
  image_dir = ' '
""")
    message = problems_of(path)
    assert "  datasets[0].subsets[0].image_dir is required: the folder that holds this subset's images" in message
    assert f"  datasets[0].subsets[1].image_dir folder not found: {tmp_path / 'nowhere'}\n" in message
    assert f"  datasets[0].subsets[2].image_dir {tmp_path / 'a_file.png'} is a file, not a folder\n" in message
    assert "  datasets[0].subsets[3].image_dir is empty: give the folder that holds this subset's images" in message


def test_relative_image_dir_is_read_from_the_working_directory_as_the_reference(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "work" / "imgs").mkdir(parents=True)
    path = write(tmp_path / "configs" / "d.toml", "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'imgs'\n")
    monkeypatch.chdir(tmp_path / "work")
    assert read_dataset_config(path, TrainConfig())[0].subsets[0].image_dir == "imgs"
    (tmp_path / "configs" / "imgs").mkdir()  # beside the file: not where the reference looks
    monkeypatch.chdir(tmp_path)
    assert (f"  datasets[0].subsets[0].image_dir folder not found: {tmp_path / 'imgs'} (a relative path is read "
            f"from the working directory, {tmp_path})") in problems_of(path)


def test_a_folder_twice_in_one_dataset_is_used_once_and_in_two_datasets_twice(tmp_path):
    d = folders(tmp_path, "a")
    path = write(tmp_path / "d.toml", f"""[[datasets]]
  [[datasets.subsets]]
  image_dir = '{d['a']}'
  [[datasets.subsets]]
  image_dir = '{d['a']}/'
  num_repeats = 5
[[datasets]]
resolution = 768
  [[datasets.subsets]]
  image_dir = '{d['a']}'
""")
    specs = read_dataset_config(path, TrainConfig())
    assert [len(s.subsets) for s in specs] == [1, 1]
    assert specs[0].subsets[0].num_repeats == 1
    assert specs.warnings == (f"{path}: datasets[0].subsets[1].image_dir is the folder of datasets[0].subsets[0]: this "
                              "subset is ignored (as the reference does); put it in another [[datasets]] to train the "
                              "folder at another resolution",)


def test_datasets_and_subsets_must_be_arrays_of_tables(tmp_path):
    path = write(tmp_path / "d.toml", "[datasets]\nresolution = 512\n[datasets.subsets]\nimage_dir = 'x'\n")
    message = problems_of(path)
    assert "  datasets must be written [[datasets]] (double brackets: there may be several), not [datasets]" in message
    assert ("  datasets[0].subsets must be written [[datasets.subsets]] (double brackets: there may be several), "
            "not [datasets.subsets]") in message
    write(path, "[general]\nbatch_size = 2\n")
    assert "  datasets are missing: add a [[datasets]] table" in problems_of(path)
    write(path, "[[datasets]]\nbatch_size = 2\n")
    assert ("  datasets[0] has no [[datasets.subsets]]: add one with image_dir = the folder of its images"
            in problems_of(path))
    write(path, "datasets = []\n")
    assert problems_of(path).splitlines()[1] == (
        "  datasets is empty: add a [[datasets]] table with at least one [[datasets.subsets]]")


def test_a_bad_resolution_flag_is_named_where_the_file_falls_back_to_it(tmp_path):
    path = subset_toml(tmp_path, "")
    assert problems_of(path, TrainConfig(resolution="abc")).splitlines()[1] == (
        "  --resolution 'abc' must be a number or 'W,H' like 512,512")
    assert read_dataset_config(subset_toml(tmp_path, "", dataset="resolution = 768"),
                               TrainConfig(resolution="abc"))[0].resolution == (768, 768)


# ----------------------------------------------------------------------------- keys we do not act on


def test_keys_without_effect_here_are_accepted_with_a_warning(tmp_path):
    path = subset_toml(tmp_path, "  alpha_mask = true\n  cache_info = true\n  resize_interpolation = 'lanczos'",
                       dataset="face_crop_aug_range = [1.0, 3.0]\ntoken_warmup_step = 10",
                       general="color_aug = true\ncustom_attributes = { a = 1 }")
    specs = read_dataset_config(path, TrainConfig())
    assert len(specs[0].subsets) == 1
    assert specs.warnings == (
        f"{path}: general.color_aug = true is ignored: colour augmentation is not implemented here; images train "
        "in their own colours",
        f"{path}: general.custom_attributes = {{...}} is ignored: they serve the reference's own custom code",
        f"{path}: datasets[0].face_crop_aug_range = [1, 3] is ignored: face-crop augmentation is not implemented "
        "here; images are cropped to their bucket",
        f"{path}: datasets[0].token_warmup_step = 10 is ignored: caption token warm-up is not implemented here; "
        "every step trains the whole caption",
        f"{path}: datasets[0].subsets[0].alpha_mask = true is ignored: masked loss is not implemented here; "
        "transparent areas are trained as white",
        f"{path}: datasets[0].subsets[0].cache_info = true is ignored: image sizes and captions are read on every "
        "run here (no metadata_cache.json)",
        f'{path}: datasets[0].subsets[0].resize_interpolation = "lanczos" is ignored: images are resized with '
        "Lanczos filtering here",
    )


def test_keys_at_their_default_values_are_silent(tmp_path):
    path = subset_toml(tmp_path, "  alpha_mask = false\n  enable_wildcard = false\n  secondary_separator = ''",
                       dataset="network_multiplier = 1.0\ntoken_warmup_min = 1", general="color_aug = false")
    assert read_dataset_config(path, TrainConfig()).warnings == ()


def test_keys_that_would_change_captions_or_strength_are_refused(tmp_path):
    path = subset_toml(tmp_path, "  enable_wildcard = true\n  secondary_separator = ';;;'",
                       dataset="network_multiplier = -1.0", general="resize_interpolation = 'sinc'")
    message = problems_of(path)
    assert ("  datasets[0].subsets[0].enable_wildcard = true is not supported: {a|b} choices and multi-line captions "
            "would be trained literally") in message
    assert ('  datasets[0].subsets[0].secondary_separator = ";;;" is not supported: captions would be trained with '
            "the separator in them") in message
    assert ("  datasets[0].network_multiplier = -1 is not supported: every dataset trains the LoRA at strength 1.0 "
            "here; remove the key") in message
    assert ("  general.resize_interpolation must be one of lanczos, nearest, bilinear, linear, bicubic, cubic, area, "
            "box (got str 'sinc')") in message


def test_validation_split_per_dataset_defers_to_the_flag_with_a_warning(tmp_path):
    path = subset_toml(tmp_path, "", dataset="validation_seed = 7", general="validation_split = 0.1")
    specs = read_dataset_config(path, TrainConfig())
    assert specs.warnings == (
        f"{path}: general.validation_split = 0.1 is not applied per dataset here: the --validation_split flag (0) "
        "holds for all datasets; pass --validation_split 0.1 to use it",
        f"{path}: datasets[0].validation_seed = 7 is not applied per dataset here: the --validation_seed flag "
        "(not set) holds for all datasets; pass --validation_seed 7 to use it",
    )
    assert read_dataset_config(path, TrainConfig(validation_split=0.1, validation_seed=7)).warnings == ()
    path = subset_toml(tmp_path, "", general="validation_split = 0.95")
    assert "  general.validation_split = 0.95 is out of range: allowed 0 to 0.9" in problems_of(path)


# ----------------------------------------------------------------------------- the file itself


def test_unreadable_files_name_the_file_and_what_to_do(tmp_path):
    missing = tmp_path / "none.toml"
    with pytest.raises(InstantLoraError) as e:
        read_dataset_config(missing, TrainConfig())
    assert e.value.message == f"Dataset config not found: {missing}"
    assert "Check the path given to --dataset_config" in e.value.hint
    bad = write(tmp_path / "bad.toml", "[[datasets]]\nresolution = 512,\n")
    with pytest.raises(InstantLoraError) as e:
        read_dataset_config(bad, TrainConfig())
    assert e.value.message.startswith(f"--dataset_config {bad} is not valid TOML: ")
    assert e.value.path == str(bad)
    assert "[[datasets.subsets]]" in e.value.hint
    with pytest.raises(InstantLoraError) as e:
        read_dataset_config(tmp_path, TrainConfig())
    assert e.value.message == f"--dataset_config {tmp_path} is a folder, not a file"


def test_without_tomllib_or_tomli_the_message_says_to_install_tomli(tmp_path, monkeypatch):
    path = write(tmp_path / "d.toml", "[[datasets]]\n")
    monkeypatch.setitem(sys.modules, "tomllib", None)
    monkeypatch.setitem(sys.modules, "tomli", None)
    with pytest.raises(InstantLoraError) as e:
        read_dataset_config(path, TrainConfig())
    assert e.value.message == f"reading --dataset_config {path} needs Python 3.11+ or the 'tomli' package"
    assert e.value.hint == "pip install tomli"


# ----------------------------------------------------------------------------- the flags


def test_specs_from_flags_without_reg_folder():
    config = TrainConfig(train_data_dir="data/train", resolution="768", train_batch_size=2, enable_bucket=True,
                         bucket_no_upscale=True, caption_extension=".caption", shuffle_caption=True, keep_tokens=1,
                         caption_tag_dropout_rate=0.1, flip_aug=True)
    specs = specs_from_config(config)
    assert specs.warnings == () and specs.source is None
    assert list(specs) == [DatasetSpec(
        resolution=(768, 768), batch_size=2, enable_bucket=True, min_bucket_reso=256, max_bucket_reso=1024,
        bucket_reso_steps=64, bucket_no_upscale=True,
        subsets=(SubsetSpec(image_dir="data/train", layout="folders", caption_extension=".caption",
                            shuffle_caption=True, keep_tokens=1, caption_tag_dropout_rate=0.1, flip_aug=True),))]
    assert specs[0].buckets() == BucketSettings.of(config)
    assert dataset_specs(config) == specs


def test_specs_from_flags_with_reg_folder():
    config = TrainConfig(train_data_dir="train", reg_data_dir="reg", caption_prefix="sks, ", random_crop=True)
    (spec,) = specs_from_config(config)
    assert spec.subsets == (
        SubsetSpec(image_dir="train", layout="folders", caption_prefix="sks, ", random_crop=True),
        SubsetSpec(image_dir="reg", layout="folders", is_reg=True, caption_prefix="sks, ", random_crop=True),
    )
    assert (spec.resolution, spec.batch_size, spec.enable_bucket) == ((512, 512), 1, False)


def test_dataset_specs_reads_the_file_and_says_the_folder_flags_are_ignored(tmp_path):
    path = subset_toml(tmp_path, "  num_repeats = 4", dataset="batch_size = 2")
    config = TrainConfig(dataset_config=str(path), train_data_dir="elsewhere", reg_data_dir="reg")
    specs = dataset_specs(config)
    assert (specs[0].batch_size, specs[0].subsets[0].num_repeats, specs[0].subsets[0].layout) == (2, 4, "images")
    assert specs.warnings == (f"--train_data_dir and --reg_data_dir are ignored: the dataset config {path} names "
                              "the image folders",)
