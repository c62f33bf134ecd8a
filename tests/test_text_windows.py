"""Long captions in 75-token windows, as the WebUI splits long prompts (comma backtrack, BREAK)."""

import pytest

from instant_lora.text_windows import MAX_WINDOWS, batch_window_ids, caption_windows, count_cut, encode_windows

BOS, EOS, COMMA = 49406, 49407, 267
EMPTY = [BOS] + [EOS] * 76

TAGS = ["red dress with long sleeves and a white collar", "blue sky over the hills",
        "a tall woman standing in a field of flowers", "soft warm evening light", "looking at the viewer",
        "short black hair", "smile", "outdoors on a sunny day", "green eyes", "wooden house in the background",
        "detailed face", "high quality photo"]
LONG = ", ".join(TAGS * 3)  # 191 tokens


@pytest.fixture
def tok():
    from instant_lora.tokenizer import load_sd_tokenizer

    return load_sd_tokenizer()


def plain_ids(tok, text):
    return tok(text, add_special_tokens=False, verbose=False).input_ids


def webui_rule(ids, backtrack=20):
    """The WebUI's chunking restated by positions: before a full 75-token piece is closed, look at
    the token after it; unless that one is a comma, end the piece after its last comma when that
    comma is among the piece's last `backtrack` tokens."""
    pieces, start = [], 0
    while len(ids) - start > 75:
        piece = ids[start:start + 75]
        commas = [i for i, t in enumerate(piece) if t == COMMA]
        take = 75
        if backtrack and ids[start + 75] != COMMA and commas and 75 - commas[-1] <= backtrack:
            take = commas[-1] + 1
        pieces.append(piece[:take])
        start += take
    pieces.append(ids[start:])
    return [[BOS] + p + [EOS] * (76 - len(p)) for p in pieces]


def body(window):
    assert len(window) == 77 and window[0] == BOS
    return [t for t in window[1:] if t != EOS]


def test_vocabulary_facts(tok):
    assert tok.get_vocab()[",</w>"] == COMMA
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (BOS, EOS, EOS)
    assert plain_ids(tok, "Red BREAK") == plain_ids(tok, "red break")  # the tokenizer lower-cases
    assert MAX_WINDOWS == {None: 1, 75: 1, 150: 2, 225: 3}


def test_long_caption_windows_follow_the_webui_rule(tok):
    ids = plain_ids(tok, LONG)
    assert len(ids) == 191
    windows, cut = caption_windows(tok, LONG, 3)
    assert not cut
    assert windows == webui_rule(ids)
    assert [len(body(w)) for w in windows] == [74, 70, 47]
    for w in windows[:2]:
        assert body(w)[-1] == COMMA  # each window ends just after a comma
        assert w[len(body(w)) + 1:] == [EOS] * (76 - len(body(w)))
    assert sum(len(body(w)) for w in windows) == 191  # nothing lost or repeated
    assert [t for w in windows for t in body(w)] == ids


def test_other_backtracks_and_no_comma(tok):
    ids = plain_ids(tok, LONG)
    for backtrack in (0, 1, 5, 40):
        windows, _ = caption_windows(tok, LONG, 5, backtrack=backtrack)
        assert windows == webui_rule(ids, backtrack)
    assert [len(body(w)) for w in caption_windows(tok, LONG, 5, backtrack=0)[0]] == [75, 75, 41]
    words = " ".join(["flower"] * 100)
    assert [len(body(w)) for w in caption_windows(tok, words, 3)[0]] == [75, 25]


@pytest.mark.parametrize("cats, first", [(55, 56), (54, 75)])
def test_backtrack_reaches_exactly_20_tokens(tok, cats, first):
    # comma at index 55: 75 - 55 = 20 tokens back, moved; at index 54 (21 back) the window is cut at 75.
    text = " ".join(["cat"] * cats) + ", " + " ".join(["dog"] * 30)
    windows, _ = caption_windows(tok, text, 3)
    assert len(body(windows[0])) == first
    assert windows == webui_rule(plain_ids(tok, text))


def test_comma_right_after_a_full_window_starts_the_next(tok):
    text = " ".join(["cat"] * 75) + ", dog"
    windows, _ = caption_windows(tok, text, 3)
    assert [body(w) for w in windows] == [plain_ids(tok, "cat") * 75, [COMMA] + plain_ids(tok, "dog")]


def test_75_tokens_is_one_window_76_is_two(tok):
    a = plain_ids(tok, "a")
    assert len(a) == 1
    text75 = " ".join(["a"] * 75)
    assert len(plain_ids(tok, text75)) == 75
    windows, cut = caption_windows(tok, text75, 3)
    assert len(windows) == 1 and not cut and windows[0] == [BOS] + a * 75 + [EOS]
    windows, cut = caption_windows(tok, text75 + " a", 3)
    assert len(windows) == 2 and not cut
    assert windows[1] == [BOS] + a + [EOS] * 75


def test_one_window_matches_todays_tokenize(tok):
    from instant_lora.cache import tokenize

    captions = ["", "test, red square dress", "A Photo of SKS woman, (smiling), 1girl", " ".join(["a"] * 75)]
    expected = tokenize(tok, captions).tolist()
    for caption, ids in zip(captions, expected):
        windows, cut = caption_windows(tok, caption, 1)
        assert windows == [ids] and not cut
    assert caption_windows(tok, "", 1)[0] == [EMPTY]


def test_break_starts_a_new_window(tok):
    red, blue = plain_ids(tok, "red dress"), plain_ids(tok, "blue sky")
    windows, _ = caption_windows(tok, "red dress BREAK blue sky", 3)
    assert [body(w) for w in windows] == [red, blue]
    assert caption_windows(tok, "red dress\nBREAK,blue sky", 3)[0] == caption_windows(tok, "red dress BREAK ,blue sky", 3)[0]
    # Only the upper-case whole word.
    for text in ("red dress break blue sky", "red BREAKfast", "red Break blue"):
        assert len(caption_windows(tok, text, 3)[0]) == 1
    # A leading BREAK closes an empty window; a trailing one adds nothing; a doubled one leaves an empty window.
    assert caption_windows(tok, "BREAK red dress", 3)[0] == [EMPTY, [BOS] + red + [EOS] * (76 - len(red))]
    assert len(caption_windows(tok, "red dress BREAK", 3)[0]) == 1
    assert [body(w) for w in caption_windows(tok, "red dress BREAK BREAK blue sky", 3)[0]] == [red, [], blue]


def test_break_resets_the_comma_backtrack(tok):
    first = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)  # 81 tokens, comma at 70
    windows, _ = caption_windows(tok, first + " BREAK x", 4)
    assert [len(body(w)) for w in windows] == [71, 10, 1]
    assert body(windows[2]) == plain_ids(tok, "x")


def test_max_windows_cuts_and_reports(tok):
    windows, cut = caption_windows(tok, LONG, 2)
    assert cut and windows == caption_windows(tok, LONG, 3)[0][:2]
    assert caption_windows(tok, LONG, 3)[1] is False
    # Only padding past the limit is not a cut.
    assert caption_windows(tok, "red BREAK BREAK", 1) == ([[BOS] + plain_ids(tok, "red") + [EOS] * 75], False)
    assert caption_windows(tok, "red BREAK BREAK blue", 2)[1] is True
    assert count_cut(tok, [LONG, "short", LONG, "red BREAK blue"], 1) == 3
    assert count_cut(tok, [LONG, "short", LONG, "red BREAK blue"], 2) == 2
    assert count_cut(tok, [LONG, "short"], 3) == 0
    with pytest.raises(ValueError):
        caption_windows(tok, "x", 0)


def test_batch_pads_with_empty_windows(tok):
    ids, cut = batch_window_ids(tok, ["short caption", LONG, "short caption"], 3)
    assert ids.dtype.is_floating_point is False and tuple(ids.shape) == (3, 3, 77)
    assert cut == [False, False, False]
    assert ids[1].tolist() == caption_windows(tok, LONG, 3)[0]
    assert ids[0, 0].tolist() == caption_windows(tok, "short caption", 3)[0][0]
    assert ids[0, 1].tolist() == EMPTY and ids[0, 2].tolist() == EMPTY
    assert ids[0].tolist() == ids[2].tolist()
    ids, cut = batch_window_ids(tok, [LONG, "a"], 2)
    assert tuple(ids.shape) == (2, 2, 77) and cut == [True, False]
    ids, cut = batch_window_ids(tok, ["a", "b"], 3)
    assert tuple(ids.shape) == (2, 1, 77)


@pytest.fixture
def text_encoder():
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from instant_lora.tiny import TINY_TEXT

    torch.manual_seed(0)
    return CLIPTextModel(CLIPTextConfig(**TINY_TEXT)).eval()


@pytest.mark.parametrize("clip_skip", [None, 2])
def test_encode_windows_concatenates_windows_encoded_alone(tok, text_encoder, clip_skip):
    import torch

    from instant_lora.cache import encode_text

    ids, _ = batch_window_ids(tok, ["short caption", LONG], 3)
    with torch.no_grad():
        out = encode_windows(text_encoder, ids, clip_skip)
        assert tuple(out.shape) == (2, 3 * 77, 32)
        for k in range(3):
            alone = encode_text(text_encoder, ids[:, k], clip_skip)
            torch.testing.assert_close(out[:, 77 * k:77 * (k + 1)], alone, rtol=1e-5, atol=1e-5)
        # Window 1 alone, not in a batch with others, gives the same first 77 positions.
        single = encode_text(text_encoder, ids[1:, 0], clip_skip)
        torch.testing.assert_close(out[1:, :77], single, rtol=1e-5, atol=1e-5)
        # The padding window of the short caption encodes like an empty caption.
        empty = encode_text(text_encoder, torch.tensor([EMPTY]), clip_skip)
        torch.testing.assert_close(out[:1, 77:154], empty, rtol=1e-5, atol=1e-5)


def test_clip_skip_changes_the_output_and_2d_ids_are_one_window(tok, text_encoder):
    import torch

    ids, _ = batch_window_ids(tok, ["red dress", LONG], 3)
    with torch.no_grad():
        last = encode_windows(text_encoder, ids)
        skip = encode_windows(text_encoder, ids, clip_skip=2)
        assert not torch.allclose(last, skip)
        flat = encode_windows(text_encoder, ids[:, 0])
    assert tuple(flat.shape) == (2, 77, 32)
    torch.testing.assert_close(flat, last[:, :77], rtol=1e-5, atol=1e-5)
