"""Aspect-ratio buckets as the reference trainer makes and assigns them (a first step of the
dataset work: the arithmetic, before it is wired into the dataset and the plan)."""

import pytest

from instant_lora.buckets import (aspect, batches, bucket_info, bucket_resolutions, no_upscale_bucket, place, scale_of,
                                  select_bucket)

SD15 = bucket_resolutions((512, 512))


def test_512_gives_the_reference_17_buckets_within_the_area():
    assert len(SD15) == 17 and (256, 1024) in SD15 and (1024, 256) in SD15 and (512, 512) in SD15
    assert all(w % 64 == 0 and h % 64 == 0 and 256 <= min(w, h) and max(w, h) <= 1024 for w, h in SD15)
    assert all(w * h <= 512 * 512 for w, h in SD15)
    assert {(h, w) for w, h in SD15} == set(SD15)  # both orientations
    assert len(bucket_resolutions((1024, 1024))) == 25 and len(bucket_resolutions((1024, 1024), max_size=2048)) == 41


@pytest.mark.parametrize("image, bucket", [
    ((3000, 4000), (448, 576)),    # portrait photo, 3:4
    ((4000, 3000), (576, 448)),    # landscape photo
    ((1024, 1024), (512, 512)),    # square
    ((2000, 200), (1024, 256)),    # a 10:1 strip: the widest bucket there is
    ((40, 60), (384, 640)),        # tiny: still the nearest aspect, enlarged
    ((1080, 1920), (384, 640)),    # phone portrait 9:16 (0.5625 vs 0.6)
])
def test_each_image_goes_to_the_bucket_of_nearest_aspect(image, bucket):
    chosen, error = select_bucket(image, SD15)
    assert chosen == bucket
    assert error == min(abs(aspect(b) - aspect(image)) for b in SD15)
    p = place(image, chosen)
    left, top, right, bottom = p.crop
    assert (right - left, bottom - top) == bucket and 0 <= left and 0 <= top
    assert right <= p.resized[0] and bottom <= p.resized[1]
    assert p.resized[0] == bucket[0] or p.resized[1] == bucket[1]  # covers, one side exact


@pytest.mark.parametrize("ratio", [0.3 + i * 0.05 for i in range(60)])
def test_within_the_bucket_range_little_of_the_image_is_cut(ratio):
    """The reference's list is coarse away from square (e.g. between 5:3 = 640x384 and 12:5 =
    768x320): up to 1/7 of an image is cropped there, more than one 64 px step."""
    image = (round(1000 * ratio), 1000)
    p = place(image, select_bucket(image, SD15)[0])
    cut = 1 - (p.bucket[0] * p.bucket[1]) / (p.resized[0] * p.resized[1])
    assert cut <= 1 / 7 + 1e-9
    if 0.75 <= ratio <= 1.35:  # near square the buckets are one step apart
        assert p.resized[0] - p.bucket[0] <= 64 and p.resized[1] - p.bucket[1] <= 64


def test_no_upscale_keeps_small_images_small_and_shrinks_big_ones_to_the_area():
    assert no_upscale_bucket((300, 200), 512 * 512) == (256, 192)
    w, h = no_upscale_bucket((4000, 3000), 512 * 512)
    assert w * h <= 512 * 512 and (w, h) == (576, 384) and abs(w / h - 4 / 3) < 0.2
    assert no_upscale_bucket((20, 20), 512 * 512) == (64, 64)  # never below one step
    assert scale_of((40, 60), place((40, 60), (384, 640))) > 9  # the dataset view flags such images


def test_batches_never_mix_buckets_cover_every_sample_and_follow_the_seed():
    bucket_of = [(512, 512)] * 5 + [(448, 576)] * 3 + [(1024, 256)]
    got = batches(bucket_of, batch_size=2, seed=1, epoch=0)
    assert sorted(i for b in got for i in b) == list(range(9))
    assert all(len({bucket_of[i] for i in b}) == 1 for b in got)
    assert sorted(len(b) for b in got) == [1, 1, 1, 2, 2, 2]  # ceil(5/2) + ceil(3/2) + 1 batches
    assert got == batches(bucket_of, 2, seed=1, epoch=0) and got != batches(bucket_of, 2, seed=1, epoch=1)


def test_bucket_info_has_the_reference_shape():
    info = bucket_info([(512, 512), (448, 576), (512, 512)], [0.0, 0.03, 0.0])
    assert info == {"buckets": {0: {"resolution": [448, 576], "count": 1}, 1: {"resolution": [512, 512], "count": 2}},
                    "mean_img_ar_error": pytest.approx(0.01)}


def test_a_bad_range_is_refused():
    with pytest.raises(ValueError):
        bucket_resolutions((512, 512), min_size=512, max_size=256)
