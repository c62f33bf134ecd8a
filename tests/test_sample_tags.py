"""The prompt tag parser, sampler names, generation settings and the infotext text (no torch)."""

import pytest

from instant_lora.errors import InstantLoraError
from instant_lora.sample.infotext import format_infotext, parse_infotext
from instant_lora.sample.settings import GenerationSettings, normalize_sampler
from instant_lora.sample.tags import format_tag, parse_prompt, remove_lora_tags, with_lora_tag

TABLE = [
    # prompt -> (clean text, [(name, te_weight, unet_weight)])
    ("a cat", ("a cat", [])),
    ("<lora:style:0.8> a cat", ("a cat", [("style", 0.8, 0.8)])),
    ("a cat <lora:style>", ("a cat", [("style", 1.0, 1.0)])),
    ("a cat, <lora:style:0.5:1.2>", ("a cat,", [("style", 0.5, 1.2)])),
    ("<lora:a:1><lora:b:-0.5> x", ("x", [("a", 1.0, 1.0), ("b", -0.5, -0.5)])),
    ("<lora:big:2.5> x", ("x", [("big", 2.5, 2.5)])),
    ("<lora:n:te=0.3:unet=0.9> x", ("x", [("n", 0.3, 0.9)])),
    ("<lora:n:te=0.3> x", ("x", [("n", 0.3, 0.3)])),  # unet defaults to te, as in the WebUI
    ("<lora:n:unet=0.4> x", ("x", [("n", 1.0, 0.4)])),
    ("<lora:n:0.2:unet=0.7> x", ("x", [("n", 0.2, 0.7)])),  # named beats positional
    ("<lora:my style v2:.5> x", ("x", [("my style v2", 0.5, 0.5)])),
    ("<lora: spaced : 0.5 > x", ("x", [("spaced", 0.5, 0.5)])),
    ("<lora:run-000002:1e-1> x", ("x", [("run-000002", 0.1, 0.1)])),
    ("<lyco:old:0.6> x", ("x", [("old", 0.6, 0.6)])),
    ("a  <lora:s:1>\n  b", ("a b", [("s", 1.0, 1.0)])),
    ("glued<lora:s:1>text", ("gluedtext", [("s", 1.0, 1.0)])),  # the WebUI removes the tag, nothing more
    ("<lora:s:0> x", ("x", [("s", 0.0, 0.0)])),
    ("(masterpiece:1.2) x", ("(masterpiece:1.2) x", [])),  # emphasis is not a tag
    ("<lora a cat", ("<lora a cat", [])),  # no colon: not a tag in the WebUI either
]


@pytest.mark.parametrize("prompt,expected", TABLE, ids=[p for p, _ in TABLE])
def test_tag_table(prompt, expected):
    parsed = parse_prompt(prompt)
    assert (parsed.text, [t.as_tuple() for t in parsed.loras]) == expected
    assert parsed.other == []


MALFORMED = [
    ("<lora:style:abc> x", "'abc' is not a number"),
    ("<lora::0.5> x", "name is missing"),
    ("<lora:> x", "name is missing"),
    ("<lora:style:0.5 x", "unclosed"),
    ("<lora:a:<lora:b:1> x", "unclosed"),
    ("<lora:style:0.5:0.5:8:9> x", "too many values"),
    ("<lora:style:1:1:8> x", "dyn"),
    ("<lora:style:dyn=8> x", "dyn"),
    ("<lora:style:foo=1> x", "unknown setting 'foo'"),
    ("<lora:style:unet=x> x", "'x' is not a number"),
    ("<lora:style:nan> x", "finite"),
    ("<lora:style:inf> x", "finite"),
]


@pytest.mark.parametrize("prompt,message", MALFORMED, ids=[p for p, _ in MALFORMED])
def test_malformed_tags_are_errors_naming_the_tag(prompt, message):
    with pytest.raises(InstantLoraError, match=message) as err:
        parse_prompt(prompt)
    assert "<lora:" in str(err.value)


def test_other_extra_networks_are_stripped_and_reported():
    parsed = parse_prompt("<hypernet:h:1> a <lora:s:0.5> cat <LORA:upper:1>")
    assert parsed.text == "a cat"
    assert [t.as_tuple() for t in parsed.loras] == [("s", 0.5, 0.5)]
    assert parsed.other == ["<hypernet:h:1>", "<LORA:upper:1>"]


def test_format_tag_round_trips():
    for name, te, unet in [("s", 0.8, 0.8), ("s", 1.0, 1.0), ("run-000002", -0.5, -0.5), ("s", 0.5, 1.25)]:
        tag = format_tag(name, te, unet)
        assert [t.as_tuple() for t in parse_prompt(tag).loras] == [(name, te, unet)]
    assert format_tag("s", 1.0) == "<lora:s:1>" and format_tag("s", 0.4) == "<lora:s:0.4>"
    assert format_tag("s", 0.5, 1.0) == "<lora:s:0.5:1>"
    with pytest.raises(InstantLoraError):
        format_tag("a:b", 1.0)


def test_with_lora_tag_replaces_the_runs_tags_and_keeps_others():
    p = "<lora:run:0.8> a cat, <lora:other:0.3>"
    assert with_lora_tag(p, "run-000001", 0.4, replace={"run"}) == "a cat, <lora:other:0.3> <lora:run-000001:0.4>"
    assert with_lora_tag(p, "run", 0, replace=()) == "a cat, <lora:other:0.3>"
    assert remove_lora_tags(p, {"other"}) == "<lora:run:0.8> a cat,"
    assert with_lora_tag("", "run", 1) == "<lora:run:1>"


def test_sampler_names_and_settings_checks():
    assert normalize_sampler("euler_a") == "Euler a"
    assert normalize_sampler("DPM++ 2M Karras") == "DPM++ 2M Karras"
    assert normalize_sampler("ddim") == "DDIM"
    with pytest.raises(InstantLoraError, match="did you mean 'DDIM'"):
        normalize_sampler("DDM")
    with pytest.raises(InstantLoraError, match="width = 500 must be a multiple of 8 from 8 to 4096") as err:
        GenerationSettings(width=500, height=513).checked()
    assert "height" in str(err.value)
    assert GenerationSettings(sampler="euler a").checked().sampler == "Euler a"


def test_infotext_layout_like_the_webui():
    s = GenerationSettings(negative_prompt="blurry, low quality", steps=20, cfg_scale=7.0, sampler="Euler a", width=512, height=512)
    text = format_infotext("a cat <lora:s:0.8>", s, 1, "v1-5-pruned-emaonly", "6ce0161689")
    assert text == ("a cat <lora:s:0.8>\nNegative prompt: blurry, low quality\n"
                    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512, Model hash: 6ce0161689, "
                    "Model: v1-5-pruned-emaonly")
    k = GenerationSettings(sampler="DPM++ 2M Karras", cfg_scale=7.5, clip_skip=2, width=64, height=96)
    text = format_infotext("multi\nline", k, 42, "m", extra={"Grid rows": "epoch 1, final"})
    assert "Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.5" in text and "Clip skip: 2" in text
    assert 'Grid rows: "epoch 1, final"' in text and "Negative prompt" not in text
    prompt, negative, params = parse_infotext(text)
    assert prompt == "multi\nline" and negative == ""
    assert params["Sampler"] == "DPM++ 2M Karras" and params["Seed"] == "42" and params["Size"] == "64x96"
    assert params["Grid rows"] == "epoch 1, final"
    prompt, negative, params = parse_infotext(format_infotext("p", s, 3, "m"))
    assert (prompt, negative, params["Steps"], params["CFG scale"]) == ("p", "blurry, low quality", "20", "7")
