"""The dataset side of a run, wired end to end on the tiny model: aspect-ratio buckets (cached
latents of the bucket's shape, batches that never mix, the metadata's bucket info, per-bucket disk
caches that re-encode exactly what changed), regularization balance and prior loss weight,
mirrored latents, per-step captions, long captions and the validation loss."""

import json

import pytest
import torch
from conftest import make_image, tiny_config

from instant_lora.config import TrainConfig
from instant_lora.lora.kohya_file import read_lora_file
from instant_lora.request import RunRequest, prepare_run
from instant_lora.tiny import build_tiny_sd
from instant_lora.train.data import balance_reg
from instant_lora.train.loop import Run, train


def mixed_set(root, sizes=((64, 192), (192, 64), (96, 96), (64, 256), (128, 128))):
    """Portrait, landscape, square and tall images with captions, in one repeat folder."""
    for i, size in enumerate(sizes):
        make_image(root / "2_mixed" / f"img_{i}.png", (40 * i % 255, 90, 160), size=size, shape="square" if i % 2 else "round")
        (root / "2_mixed" / f"img_{i}.txt").write_text(f"mixed, picture {i}", encoding="utf-8")
    return root


def bucket_config(data, out, **kw):
    values = dict(resolution="128,128", enable_bucket=True, min_bucket_reso=64, max_bucket_reso=256, bucket_reso_steps=64)
    values.update(kw)
    return tiny_config(data, out, **values)


def prepared(config):
    return prepare_run(RunRequest(front="config", values={k: v for k, v in config.to_dict().items()
                                                          if v != TrainConfig().to_dict()[k]}), cuda=False)


def ready_run(config, stages=("prepare", "load_model", "build_caches", "build_optimizer")):
    """A Run on the tiny model, set up to its first step (its stages called in the loop's order)."""
    run = Run(prepared(config), model=build_tiny_sd(0))
    for stage in stages:
        getattr(run, stage)()
    return run


def test_a_mixed_aspect_folder_trains_in_buckets(tmp_path, monkeypatch):
    data = mixed_set(tmp_path / "set")
    config = bucket_config(data, tmp_path / "out", train_batch_size=2, max_train_steps=6)
    run = prepared(config)
    buckets = {s.path.name: s.bucket for s in run.data.samples}
    assert buckets == {"img_0.png": (64, 192), "img_1.png": (192, 64), "img_2.png": (128, 128),
                       "img_3.png": (64, 256), "img_4.png": (128, 128)}
    seen_batches = []
    original = Run._batch_loss

    def record(self, samples, micro):
        seen_batches.append({s.bucket for s in samples})
        return original(self, samples, micro)

    monkeypatch.setattr(Run, "_batch_loss", record)
    result = train(run, model=build_tiny_sd(0))
    assert all(len(b) == 1 for b in seen_batches), seen_batches  # never mixed
    sd, md = read_lora_file(result.path)
    info = json.loads(md["ss_bucket_info"])
    assert info == json.loads(json.dumps(run.data.bucket_info()))
    counts = {tuple(b["resolution"]): b["count"] for b in info["buckets"].values()}
    assert counts == {(64, 192): 2, (64, 256): 2, (192, 64): 2, (128, 128): 4}  # with the folder's 2 repeats
    assert md["ss_enable_bucket"] == "True" and md["ss_min_bucket_reso"] == "64" and md["ss_max_bucket_reso"] == "256"
    assert md["ss_num_train_images"] == "10"
    # the plan says what each bucket brings and that two buckets cannot fill a batch of 2
    lines = "\n".join(run.plan.data_lines)
    assert "64x256: 1 image(s), 2 per epoch in 1 batch(es)" in lines and "mean aspect error" in lines


def test_cached_latents_have_the_bucket_shapes_and_flip_caches_both(tmp_path, monkeypatch):
    import instant_lora.cache as cache

    data = mixed_set(tmp_path / "set", sizes=((64, 192), (192, 64)))
    kept = {}
    encode = cache.encode_images

    def keep(*a, **k):
        kept.update(encode(*a, **k))
        return kept

    monkeypatch.setattr(cache, "encode_images", keep)
    run, model = prepared(bucket_config(data, tmp_path / "out", flip_aug=True, max_train_steps=2)), build_tiny_sd(0)
    train(run, model=model)
    shapes = sorted((key[0].name, key[-1], tuple(v.shape)) for key, v in kept.items())
    assert shapes == [("img_0.png", False, (4, 24, 8)), ("img_0.png", True, (4, 24, 8)),
                      ("img_1.png", False, (4, 8, 24)), ("img_1.png", True, (4, 8, 24))]
    # the mirrored latent is the VAE's encoding of the mirrored image, not a copy
    from instant_lora.train.images import pixels

    sample = [s for s in run.data.samples if s.path.name == "img_1.png"][0]
    vae = model.vae.to("cpu", torch.float32)
    with torch.no_grad():
        expected = vae.encode(pixels(sample, flip=True)[None]).latent_dist.mean[0] * vae.config.scaling_factor
    mirrored = kept[(*sample.cache_key, True)]
    assert torch.allclose(mirrored, expected, atol=1e-5) and not torch.allclose(mirrored, kept[(*sample.cache_key, False)])


def test_disk_cache_reencodes_exactly_what_changed(tmp_path, monkeypatch):
    import instant_lora.train.images as images

    data = mixed_set(tmp_path / "set", sizes=((64, 192), (192, 64), (128, 128)))
    encoded = []
    pixels = images.pixels

    def count(sample, **k):
        encoded.append(sample.path.name)
        return pixels(sample, **k)

    monkeypatch.setattr(images, "pixels", count)
    config = bucket_config(data, tmp_path / "out", cache_latents_to_disk=True, max_train_steps=1)
    train(prepared(config), model=build_tiny_sd(0))
    assert sorted(encoded) == ["img_0.png", "img_1.png", "img_2.png"]
    folder = data / "2_mixed"
    assert sorted(p.name for p in folder.glob("*.npz")) == ["img_0_0064x0192_sd.npz", "img_1_0192x0064_sd.npz",
                                                          "img_2_0128x0128_sd.npz"]
    encoded.clear()
    train(prepared(config.__class__(**{**config.to_dict(), "output_name": "second"})), model=build_tiny_sd(0))
    assert encoded == []  # nothing changed: every latent from disk
    make_image(folder / "img_1.png", (10, 200, 10), size=(192, 64))  # the user replaces one image
    train(prepared(config.__class__(**{**config.to_dict(), "output_name": "third"})), model=build_tiny_sd(0))
    assert encoded == ["img_1.png"]
    encoded.clear()
    bigger = config.__class__(**{**config.to_dict(), "output_name": "fourth", "resolution": "192,192", "max_bucket_reso": 384})
    train(prepared(bigger), model=build_tiny_sd(0))
    assert sorted(encoded) == ["img_0.png", "img_1.png", "img_2.png"]  # other buckets: other files, all encoded
    assert (folder / "img_2_0192x0192_sd.npz").is_file()


@pytest.mark.parametrize("train_count, reg, used, unused", [
    (10, [(0, 1), (1, 1), (2, 1)], {0: 4, 1: 3, 2: 3}, 0),  # repeats raised in turn until they match
    (3, [(i, 1) for i in range(5)], {0: 1, 1: 1, 2: 1}, 2),  # more reg images than needed: the rest unused
    (4, [(0, 3), (1, 3)], {0: 3, 1: 3}, 0),  # the folder's repeats first: 6 >= 4, nothing added
])
def test_regularization_balance_follows_the_reference(train_count, reg, used, unused):
    assert balance_reg(train_count, reg) == (used, unused)


def test_reg_images_join_the_epoch_with_prior_loss_weight(tmp_path, monkeypatch):
    train_set = mixed_set(tmp_path / "set", sizes=((64, 64), (64, 64)))
    reg = tmp_path / "reg"
    for i in range(3):
        make_image(reg / "1_person" / f"r{i}.png", (30, 30, 200), size=(64, 64), shape="round")
    config = tiny_config(train_set, tmp_path / "out", reg_data_dir=str(reg), max_train_steps=2, prior_loss_weight=0.0)
    run = prepared(config)
    assert run.data.num_train_images == 8 and run.data.num_reg_images == 3  # 2 x 2 training + 4 reg entries
    assert any("regularization: 3 image(s) x repeats = 4 per epoch" in line for line in run.plan.data_lines)
    result = train(run, model=build_tiny_sd(0))
    md = read_lora_file(result.path)[1]
    assert md["ss_num_reg_images"] == "3" and json.loads(md["ss_reg_dataset_dirs"]) == {"1_person": {"n_repeats": 1, "img_count": 3}}

    # a batch of reg images only, weighted 0: no loss and no gradient at all
    from instant_lora.train.objective import batch_loss

    r = ready_run(config)
    regs = [s for s in r.data.samples if s.is_reg]
    loss = batch_loss(r, regs, 0)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert all(p.grad is not None and not p.grad.any() for p in r.unet_params)  # reached, and zero
    weighted = ready_run(config.__class__(**{**config.to_dict(), "prior_loss_weight": 1.0}))
    assert float(batch_loss(weighted, [s for s in weighted.data.samples if s.is_reg], 0).detach()) > 0


def test_validation_loss_is_repeatable_and_moves_with_training(tmp_path):
    from instant_lora.train.objective import validation_loss

    data = mixed_set(tmp_path / "set", sizes=((64, 64),) * 4)
    config = tiny_config(data, tmp_path / "out", validation_split=0.25, validate_every_n_steps=2, max_train_steps=4,
                         learning_rate=1e-2)
    run = ready_run(config)
    assert len(run.data.validation) == 1 and run.data.num_train_images == 6  # 3 images x 2 repeats train
    held = run.data.validation[0].path
    assert held not in {s.path for s in run.data.samples}
    first, again = validation_loss(run), validation_loss(run)
    assert first == again
    result = run.run()
    after = validation_loss(run)
    assert after != first
    events = [json.loads(line) for f in (tmp_path / "out" / "logs").glob("*.jsonl") for line in f.read_text().splitlines()]
    validations = [e for e in events if e["event"] == "validation"]
    assert [e["step"] for e in validations] == [2, 4] and validations[-1]["loss"] == pytest.approx(after, rel=1e-6)
    md = read_lora_file(result.path)[1]
    assert md["ss_num_validation_images"] == "1" and md["ss_validation_split"] == "0.25"


def test_validation_split_leaving_nothing_is_refused(tmp_path):
    from instant_lora.errors import InstantLoraError

    data = mixed_set(tmp_path / "set", sizes=((64, 64),))
    with pytest.raises(InstantLoraError, match="leaves no image to train on"):
        prepared(tiny_config(data, tmp_path / "out", validation_split=0.5))


def test_random_crop_with_cached_latents_is_one_clear_error(tmp_path):
    from instant_lora.errors import InstantLoraError

    data = mixed_set(tmp_path / "set", sizes=((64, 64),))
    with pytest.raises(InstantLoraError) as e:
        prepared(tiny_config(data, tmp_path / "out", random_crop=True, cache_latents=True))
    assert "random_crop" in str(e.value) and "cache_latents" in str(e.value)


def test_random_crop_without_cache_trains_and_moves_the_crop(tmp_path):
    from instant_lora.train.images import crop_box
    from instant_lora.train.objective import step_rng

    data = mixed_set(tmp_path / "set", sizes=((64, 160),))
    run = prepared(bucket_config(data, tmp_path / "out", random_crop=True, cache_latents=False, max_train_steps=2))
    sample = run.data.samples[0]
    crops = {crop_box(sample, step_rng(1, "crop", i, 0)) for i in range(20)}
    assert len(crops) > 1 and all(c[3] - c[1] == sample.bucket[1] for c in crops)
    assert train(run, model=build_tiny_sd(0)).steps == 2


def test_long_captions_are_encoded_in_windows_and_cut_ones_reported(tmp_path):
    data = mixed_set(tmp_path / "set", sizes=((64, 64),))
    words = ", ".join(f"word{i}" for i in range(60))  # ~180 tokens
    (data / "2_mixed" / "img_0.txt").write_text(words, encoding="utf-8")
    short = tiny_config(data, tmp_path / "a", max_train_steps=1, network_train_unet_only=True)
    run = ready_run(short, stages=())
    warnings = []
    run.emit.sinks.append(lambda e: warnings.append(e.message) if type(e).__name__ == "Warn" else None)
    for stage in ("prepare", "load_model", "build_caches"):
        getattr(run, stage)()
    assert next(iter(run.text_cache.values())).hidden.shape[0] == 77
    assert any("1 image(s)' captions are longer than --max_token_length 75" in w for w in warnings)
    long = ready_run(tiny_config(data, tmp_path / "b", max_train_steps=1, max_token_length=225, network_train_unet_only=True))
    assert next(iter(long.text_cache.values())).hidden.shape[0] == 3 * 77
    assert long.run().steps == 1


def test_shuffled_captions_change_per_step_and_keep_the_first_tags(tmp_path):
    from instant_lora.train.objective import step_captions

    data = mixed_set(tmp_path / "set", sizes=((64, 64),))
    (data / "2_mixed" / "img_0.txt").write_text("sks, red, dress, studio, photo, smiling", encoding="utf-8")
    run = Run(prepared(tiny_config(data, tmp_path / "out", shuffle_caption=True, keep_tokens=1)), model=build_tiny_sd(0))
    sample = run.data.samples[0]
    captions = {step_captions(run, [sample], micro, 0)[0] for micro in range(30)}
    assert len(captions) > 5 and all(c.startswith("sks, ") for c in captions)
    assert step_captions(run, [sample], 3, 0) == step_captions(run, [sample], 3, 0)  # seeded by position


def test_trigger_words_stay_first_when_shuffling(tmp_path):
    from instant_lora.request import validate_request

    values = dict(pretrained_model_name_or_path="x", train_data_dir=str(tmp_path), trigger_words="sks woman, red coat",
                  shuffle_caption=True)
    assert validate_request(RunRequest(front="cli", values=values)).keep_tokens == 2
    assert validate_request(RunRequest(front="cli", values={**values, "keep_tokens": 1})).keep_tokens == 1  # the user's choice
    assert validate_request(RunRequest(front="cli", values={**values, "shuffle_caption": False})).keep_tokens == 0


def test_a_bucketed_flipped_uncached_run_resumes_on_the_same_path(tmp_path):
    """Resume walks the same per-bucket batches, flips and crops as the uninterrupted run."""
    data = mixed_set(tmp_path / "set")
    options = dict(flip_aug=True, cache_latents=False, train_batch_size=2, shuffle_caption=True, caption_dropout_rate=0.3)
    straight = train(prepared(bucket_config(data, tmp_path / "straight", max_train_steps=5, **options)), model=build_tiny_sd(0))
    train(prepared(bucket_config(data, tmp_path / "split", max_train_steps=3, save_state=True, **options)), model=build_tiny_sd(0))
    resumed = train(prepared(bucket_config(data, tmp_path / "split", max_train_steps=5, resume=str(tmp_path / "split" / "tiny_lora-state"),
                                           **options)), model=build_tiny_sd(0))
    assert resumed.losses == pytest.approx(straight.losses[3:], rel=1e-4)


def test_a_dataset_toml_trains_two_resolutions_and_batch_sizes_in_one_run(tmp_path, monkeypatch):
    small, large = tmp_path / "small", tmp_path / "large"
    for i in range(3):
        make_image(small / f"s{i}.png", (200, 30, 30), size=(64, 64))
        make_image(large / f"l{i}.png", (30, 30, 200), size=(128, 128), shape="round")
    toml = tmp_path / "dataset.toml"
    toml.write_text(f"""
[general]
caption_extension = ".txt"
class_tokens = "thing"

[[datasets]]
resolution = 64
batch_size = 1
  [[datasets.subsets]]
  image_dir = "{small.as_posix()}"
  num_repeats = 2

[[datasets]]
resolution = 128
batch_size = 3
  [[datasets.subsets]]
  image_dir = "{large.as_posix()}"
  num_repeats = 1
""", encoding="utf-8")
    config = TrainConfig(pretrained_model_name_or_path="unused", dataset_config=str(toml), output_dir=str(tmp_path / "out"),
                         output_name="toml_lora", network_dim=4, network_alpha=4.0, learning_rate=1e-3, max_train_epochs=1,
                         seed=3, cache_latents=True)
    run = prepared(config)
    assert run.data.batch_sizes == [1, 3] and run.data.num_train_images == 9
    assert run.plan.steps_per_epoch == 7  # 6 batches of one 64 px image + 1 batch of three 128 px images
    from instant_lora.train.plan import describe

    assert "9 per epoch / batch sizes 1, 3 (one per dataset) = 7 steps per epoch" in describe(run.plan)[0]
    sizes = []
    original = Run._batch_loss
    monkeypatch.setattr(Run, "_batch_loss", lambda self, samples, micro: sizes.append((len(samples), samples[0].bucket))
                        or original(self, samples, micro))
    result = train(run, model=build_tiny_sd(0))
    assert sorted(sizes) == [(1, (64, 64))] * 6 + [(3, (128, 128))]
    md = read_lora_file(result.path)[1]
    assert json.loads(md["ss_tag_frequency"]) and md["ss_num_train_images"] == "9"


def test_requests_cannot_name_a_dataset_file_and_reg_folders_must_exist(tmp_path):
    from instant_lora.request import RequestError, validate_request

    with pytest.raises(RequestError) as e:
        validate_request(RunRequest(front="api", values={"dataset_config": "/etc/passwd", "train_data_dir": str(tmp_path),
                                                         "reg_data_dir": "/no/such/reg", "output_name": "x"}))
    problems = dict(e.value.problems)
    assert "cannot be set in a request" in problems["dataset_config"]
    assert problems["reg_data_dir"] == "/no/such/reg is not a folder on this machine"


def test_the_plan_says_which_buckets_give_short_batches_and_counts_reg_entries(tmp_path):
    from instant_lora.train.plan import describe

    data = mixed_set(tmp_path / "set", sizes=((64, 192), (192, 64), (128, 128), (128, 128)))
    reg = tmp_path / "reg"
    make_image(reg / "1_thing" / "r.png", size=(128, 128))
    run = prepared(bucket_config(data, tmp_path / "out", train_batch_size=3, reg_data_dir=str(reg)))
    short = [w for w in run.plan.warnings if "batch(es) per epoch are smaller" in w]
    assert short == ["batch size 3: 2 batch(es) per epoch are smaller, because each batch holds one bucket's images only and "
                     "these buckets' entries per epoch do not fill their last batch: 64x192 (2), 192x64 (2). Fine as it is; "
                     "to fill them, add images of those shapes or lower the batch size"]
    # 8 training entries, one reg image repeated 8 times: 16 per epoch; batches 1 + 4 + 1
    assert describe(run.plan)[0].startswith("4 images x repeats + 8 regularization = 16 per epoch / batch 3 = 6 steps per epoch")


@pytest.mark.parametrize("values, field, words", [
    ({"caption_separator": ""}, "caption_separator", "must not be empty"),
    ({"caption_dropout_rate": 2.0}, "caption_dropout_rate", "out of range"),
    ({"min_bucket_reso": 2048, "max_bucket_reso": 256}, "min_bucket_reso", "is above --max_bucket_reso"),
    ({"reg_data_dir": "/no/such/reg"}, "reg_data_dir", "Regularization folder not found: /no/such/reg"),
    ({"validation_split": 0.5}, "validation_split", "leaves no image to train on"),
])
def test_the_live_plan_names_a_half_typed_dataset_option_and_never_fails(tmp_path, host, values, field, words):
    """The app's plan is recomputed as the user types: a value that cannot work yet is a named problem."""
    from instant_lora.dataset import scan_dataset
    from instant_lora.request import preview_plan

    data = mixed_set(tmp_path / "set", sizes=((64, 64),))
    plan, problems = preview_plan(RunRequest(front="app", values={"train_data_dir": str(data), "output_name": "x", **values}),
                                  host, scan_dataset(data))
    assert plan is not None and any(k == field and words in m for k, m in problems), problems
