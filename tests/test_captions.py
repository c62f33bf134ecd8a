"""Per-step caption processing: the reference trainer's shuffle / keep / dropout semantics."""

import itertools
import random
from collections import Counter
from types import SimpleNamespace

import pytest

from instant_lora.captions import CaptionRules, process_caption, trigger_keep_tokens


def draws(caption, rules, n, seed=0, epoch=1):
    rng = random.Random(seed)
    return [process_caption(caption, rules, rng, epoch) for _ in range(n)]


def test_defaults_change_nothing_and_do_not_touch_the_rng():
    rng = random.Random(3)
    state = rng.getstate()
    caption = "  a,b , c,, d  "
    assert process_caption(caption, CaptionRules(), rng, 1) == caption
    assert rng.getstate() == state


def test_shuffle_keeps_the_first_tokens_and_permutes_the_rest_uniformly():
    rules = CaptionRules(shuffle_caption=True, keep_tokens=2)
    out = draws("k1, k2, a, b, c, d", rules, 3000, seed=11)
    flex = ("a", "b", "c", "d")
    position_counts = Counter()
    perms = Counter()
    for caption in out:
        tags = caption.split(", ")
        assert tags[:2] == ["k1", "k2"]
        assert sorted(tags[2:]) == list(flex)
        perms[tuple(tags[2:])] += 1
        for pos, tag in enumerate(tags[2:]):
            position_counts[pos, tag] += 1
    # Every tag in every slot about 3000/4 = 750 times (sd ~24).
    for pos, tag in itertools.product(range(4), flex):
        assert 650 < position_counts[pos, tag] < 850, (pos, tag, position_counts[pos, tag])
    # All 24 orders, each about 125 times: chi-square with 23 degrees of freedom.
    assert len(perms) == 24
    expected = 3000 / 24
    chi2 = sum((c - expected) ** 2 / expected for c in perms.values())
    assert chi2 < 50, chi2


def test_keep_tokens_zero_shuffles_every_tag():
    out = draws("a, b, c", CaptionRules(shuffle_caption=True), 600, seed=2)
    firsts = Counter(c.split(", ")[0] for c in out)
    assert set(firsts) == {"a", "b", "c"}
    assert all(150 < n < 250 for n in firsts.values()), firsts


def test_keep_tokens_separator_fixes_a_prefix_and_a_suffix():
    rules = CaptionRules(shuffle_caption=True, keep_tokens_separator="|||", keep_tokens=5)
    caption = "sks, woman ||| red, blue, green ||| best quality, masterpiece"
    out = draws(caption, rules, 400, seed=4)
    middles = Counter()
    for c in out:
        tags = c.split(", ")
        assert tags[:2] == ["sks", "woman"]
        assert tags[-2:] == ["best quality", "masterpiece"]
        assert sorted(tags[2:-2]) == ["blue", "green", "red"]
        middles[tuple(tags[2:-2])] += 1
    assert len(middles) == 6  # the separator, not keep_tokens=5, decided what moves


def test_keep_tokens_separator_details():
    rules = CaptionRules(shuffle_caption=True, keep_tokens_separator="|||", keep_tokens=1)
    rng = random.Random(0)
    # A third marker stays inside the fixed tail's text; empty tags vanish on this path.
    out = process_caption("a ||| , b, ||| c ||| d", rules, rng, 1)
    assert out == "a, b, c ||| d"
    # Marker absent from this caption: keep_tokens decides.
    outs = {process_caption("x, y, z", rules, rng, 1) for _ in range(50)}
    assert {o.split(", ")[0] for o in outs} == {"x"} and len(outs) == 2
    # Nothing splits without shuffle or tag dropout: the marker stays in the text (as the reference).
    plain = CaptionRules(keep_tokens_separator="|||")
    assert process_caption("a ||| b, c", plain, rng, 1) == "a ||| b, c"


def test_empty_tags_are_kept_on_the_keep_tokens_path():
    rules = CaptionRules(shuffle_caption=True)
    outs = draws(" a, , b, ", rules, 200, seed=9)
    for o in outs:
        assert sorted(o.split(", ")) == ["", "", "a", "b"]
    assert "a, , b, " in outs and ", , a, b" in outs


def test_tags_are_rejoined_with_comma_space_whatever_the_separator():
    rules = CaptionRules(shuffle_caption=True, caption_separator=";", keep_tokens=1)
    outs = set(draws("x;y ; z", rules, 100, seed=1))
    assert outs == {"x, y, z", "x, z, y"}


def test_caption_dropout_rate_empties_about_that_share():
    rules = CaptionRules(caption_dropout_rate=0.3)
    out = draws("a, b, c", rules, 5000, seed=5)
    empty = sum(c == "" for c in out)
    assert 1380 < empty < 1620, empty  # 1500 expected, sd ~32
    assert set(out) == {"", "a, b, c"}


def test_dropout_every_n_epochs_empties_exactly_those_epochs():
    rules = CaptionRules(caption_dropout_every_n_epochs=3, caption_prefix="sks,")
    rng = random.Random(0)
    state = rng.getstate()
    got = {epoch: process_caption("a, b", rules, rng, epoch) for epoch in range(1, 11)}
    assert [e for e, c in got.items() if c == ""] == [3, 6, 9]
    assert got[1] == got[10] == "sks, a, b"
    assert rng.getstate() == state  # no draw when the rate is 0


def test_tag_dropout_drops_flex_tags_about_half_the_time_never_kept_ones():
    rules = CaptionRules(caption_tag_dropout_rate=0.5, keep_tokens=1)
    out = draws("k, a, b, c, d", rules, 4000, seed=6)
    kept = Counter()
    for c in out:
        tags = c.split(", ")
        assert tags[0] == "k"
        assert tags[1:] == [t for t in "abcd" if t in tags[1:]]  # order kept: no shuffle asked
        kept.update(tags[1:])
    for tag in "abcd":
        assert 1880 < kept[tag] < 2120, kept  # 2000 expected, sd ~32
    assert "k" in out  # every flex tag dropped at once happens too (1/16)


def test_prefix_and_suffix_are_joined_with_a_space():
    rules = CaptionRules(caption_prefix="sks,", caption_suffix="best quality")
    assert process_caption("a, b", rules, random.Random(0), 1) == "sks, a, b best quality"
    assert rules.fixed("a, b") == "sks, a, b best quality"
    assert rules.fixed("") == "sks,  best quality"
    # Without a trailing separator the prefix merges with the first tag, as in the reference.
    merged = CaptionRules(caption_prefix="sks", shuffle_caption=True, keep_tokens=1)
    assert {process_caption("woman, a, b", merged, random.Random(i), 1).split(", ")[0] for i in range(20)} == {"sks woman"}
    assert CaptionRules(caption_prefix="").fixed("a") == "a"


def test_multi_line_text_keeps_its_first_line():
    assert process_caption("a, b\nc, d", CaptionRules(), random.Random(0), 1) == "a, b"


def test_same_seed_same_sequence_other_seed_other_sequence():
    rules = CaptionRules(shuffle_caption=True, keep_tokens=1, caption_dropout_rate=0.1, caption_tag_dropout_rate=0.2)
    caption = "k, a, b, c, d, e, f"
    assert draws(caption, rules, 50, seed=42) == draws(caption, rules, 50, seed=42)
    assert draws(caption, rules, 50, seed=42) != draws(caption, rules, 50, seed=43)


def test_draw_order_matches_the_reference():
    # dropout draw, then the shuffle, then one draw per movable tag.
    rules = CaptionRules(shuffle_caption=True, keep_tokens=1, caption_dropout_rate=0.25, caption_tag_dropout_rate=0.4)
    for seed in range(30):
        rng, mirror = random.Random(seed), random.Random(seed)
        got = process_caption("k, a, b, c, d", rules, rng, 1)
        if mirror.random() < 0.25:
            expected = ""
        else:
            flex = ["a", "b", "c", "d"]
            mirror.shuffle(flex)
            expected = ", ".join(["k"] + [t for t in flex if mirror.random() >= 0.4])
        assert got == expected
        assert rng.getstate() == mirror.getstate()


def test_varies():
    assert not CaptionRules().varies
    assert not CaptionRules(caption_prefix="sks,", caption_suffix="x", keep_tokens=3, keep_tokens_separator="|||").varies
    assert CaptionRules(shuffle_caption=True).varies
    assert CaptionRules(caption_dropout_rate=0.1).varies
    assert CaptionRules(caption_dropout_every_n_epochs=2).varies
    assert CaptionRules(caption_tag_dropout_rate=0.1).varies


def test_of_reads_attributes_and_defaults_missing_or_none():
    source = SimpleNamespace(shuffle_caption=True, keep_tokens=2, caption_prefix=None, caption_dropout_rate=0.2,
                             caption_separator=None, unrelated="x")
    rules = CaptionRules.of(source)
    assert rules == CaptionRules(shuffle_caption=True, keep_tokens=2, caption_dropout_rate=0.2)
    assert CaptionRules.of(object()) == CaptionRules()


def test_of_reads_a_train_config(tmp_path):
    from conftest import tiny_config

    cfg = tiny_config(tmp_path, tmp_path / "out", shuffle_caption=True, keep_tokens=1, caption_tag_dropout_rate=0.1,
                      caption_prefix="sks,")
    assert CaptionRules.of(cfg) == CaptionRules(shuffle_caption=True, keep_tokens=1, caption_tag_dropout_rate=0.1,
                                                caption_prefix="sks,")


@pytest.mark.parametrize("bad", [dict(caption_separator=""), dict(keep_tokens=-1), dict(caption_dropout_rate=1.5),
                                 dict(caption_tag_dropout_rate=-0.1), dict(caption_dropout_every_n_epochs=-2)])
def test_bad_rules_are_refused(bad):
    with pytest.raises(ValueError):
        CaptionRules(**bad)


def test_trigger_keep_tokens():
    assert trigger_keep_tokens("sks") == 1
    assert trigger_keep_tokens("sks, red style") == 2
    assert trigger_keep_tokens(" sks,, red style , ") == 2
    assert trigger_keep_tokens("") == 0
    assert trigger_keep_tokens("a; b; c", ";") == 3
    # Used with a prefix ending in the separator, the trigger tags stay first when shuffling.
    trigger = "sks, red style"
    rules = CaptionRules(caption_prefix=trigger + ",", shuffle_caption=True, keep_tokens=trigger_keep_tokens(trigger))
    for c in draws("a, b, c", rules, 30):
        assert c.startswith("sks, red style, ")
