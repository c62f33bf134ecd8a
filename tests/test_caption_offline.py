"""Auto-caption without a network: the CLIP weights on disk are used without a request, and
missing ones fail within seconds with what to do, in the asking front end's words.

Every "server" here is on 127.0.0.1: one port that refuses connections, one socket that accepts
and never answers, and a small HF-hub stand-in that records each request. HF_ENDPOINT points at
them; the tests' HF_HUB_OFFLINE=1 is lifted only inside each test.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.server
import socket
import threading
import time
import types
from pathlib import Path

import pytest

import captioning_fixtures as cf
from instant_lora.captioning import CaptionOptions, add_caption_subcommand, caption_folder, free_clip_model
from instant_lora.captioning.weights import PROBE_SECONDS, plan_weights
from instant_lora.errors import InstantLoraError

TAG = "offline_test"   # a pretrained tag registered for the tiny architecture, as open_clip lists its own
REPO = "someone/tiny-clip"
FAST = 6.0             # seconds: "fails fast", PROBE_SECONDS (3 s) plus slack for a busy machine


# -- stand-in servers ---------------------------------------------------------------------------

def _refusing_port() -> int:
    """A local port with nothing listening: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _silent_server():
    """Accepts connections and never sends a byte: what a captive portal or a dead proxy does."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    held, stop = [], threading.Event()

    def accept():
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(2)
        for conn in held:
            conn.close()
        server.close()


class _Hub(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files):
        self.files, self.requests = dict(files), []  # {"org/repo/resolve/main/name": bytes}
        super().__init__(("127.0.0.1", 0), _HubHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _HubHandler(http.server.BaseHTTPRequestHandler):
    """Enough of the HF hub's file API for huggingface_hub 0.26 and 2.x to download a file."""

    def log_message(self, *args):
        pass

    def _answer(self, body: bool):
        self.server.requests.append((self.command, self.path))
        data = self.server.files.get(self.path.lstrip("/").split("?")[0])
        if data is None:
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
        self.send_header("ETag", '"%s"' % hashlib.sha256(data).hexdigest())
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.wfile.write(data)

    def do_HEAD(self):
        self._answer(False)

    def do_GET(self):
        self._answer(True)


@contextlib.contextmanager
def _hub(files=()):
    server = _Hub(files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """The tiny CLIP architecture (registered once) and untrained weights for it: these tests
    are about finding and fetching files, not about what the captions say."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from instant_lora.heavy_imports import import_clip_library

    import_clip_library()  # imported before any timing starts
    root = tmp_path_factory.mktemp("tiny-offline")
    cf.register_tiny_arch(root / "configs")
    torch.manual_seed(0)
    model = open_clip.create_model(cf.TINY_ARCH)
    path = root / "tiny.safetensors"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(autouse=True)
def _network_env(monkeypatch, tmp_path):
    """A fresh HOME and caches; the offline switches off; no proxy between us and 127.0.0.1."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "INSTANT_LORA_OFFLINE", "HF_HUB_CACHE",
                "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "INSTANT_LORA_CLIP_DIRS", "HF_ENDPOINT",
                "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home" / "hf"))
    monkeypatch.setenv("INSTANT_LORA_CACHE", str(tmp_path / "cache"))
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # read by the hub at import time
    yield
    free_clip_model()


@pytest.fixture
def tiny_tag(tiny_weights, monkeypatch):
    """Register `TAG` for the tiny architecture with the given download sources."""
    import open_clip

    def register(hf_hub=f"{REPO}/", url=""):
        cfg = {"hf_hub": hf_hub, "url": url, "quick_gelu": True}
        monkeypatch.setitem(open_clip.pretrained._PRETRAINED, cf.TINY_ARCH, {TAG: cfg})
        return cfg

    return register


def _images(folder: Path) -> Path:
    cf.write_shapes(folder, [("red", "circle", "black"), ("blue", "square", "white")])
    return folder


def _cli(args, capsys):
    parser = argparse.ArgumentParser()
    add_caption_subcommand(parser.add_subparsers(dest="command"))
    parsed = parser.parse_args(["caption", *map(str, args)])
    begin = time.perf_counter()
    code = parsed.func(parsed)
    return code, time.perf_counter() - begin, capsys.readouterr()


class _Host:
    @contextlib.contextmanager
    def exclusive(self, job):
        yield


_JOB = types.SimpleNamespace(snapshot=lambda: types.SimpleNamespace(running=False))


def _ui_caption(folder, model, pretrained, notify=None):
    from instant_lora.ui.handlers.dataset import auto_caption

    return auto_caption(_Host(), _JOB, str(folder), "fill", model, pretrained, "sks", ".txt", notify=notify)


# -- no weights on disk, no network: seconds, and what to do ------------------------------------

def test_refused_connection_fails_fast_and_the_cli_names_its_flags(tiny_tag, tmp_path, monkeypatch, capsys):
    tiny_tag()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_refusing_port()}")
    data = _images(tmp_path / "data")
    code, seconds, out = _cli([data, "--clip_model", cf.TINY_ARCH, "--clip_pretrained", TAG, "--device", "cpu"], capsys)
    assert code == 2 and seconds < FAST
    err = out.err
    assert f"CLIP weights {cf.TINY_ARCH}/{TAG} are not on this computer" in err and "connection refused" in err
    assert f"/{REPO}" in err and "open_clip_model.safetensors" in err      # what would be downloaded
    assert f"~/.cache/clip/{cf.TINY_ARCH}-{TAG}.safetensors" in err       # where to put it instead
    assert "--clip_model /path/to/weights_file" in err and "--clip_search_dir FOLDER" in err
    assert "run the command again" in err and '"CLIP model" field' not in err
    assert not list(data.glob("*.txt"))


def test_default_model_message_says_name_size_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_refusing_port()}")
    begin = time.perf_counter()
    with pytest.raises(InstantLoraError) as err:
        plan_weights(CaptionOptions())
    assert time.perf_counter() - begin < FAST
    text = str(err.value)
    assert "ViT-L-14/openai" in text and "1.71 GB" in text                 # the size comes with the name
    assert "timm/vit_large_patch14_clip_224.openai" in text               # on open_clip 2.20 as on 3.x
    assert "~/.cache/clip/ViT-L-14-openai.safetensors" in text and "ViT-L-14.pt" in text
    assert str(Path.home() / ".cache" / "clip") in text                    # where it looked


def test_server_that_never_answers_fails_within_seconds(tiny_tag, tmp_path, monkeypatch, capsys):
    tiny_tag()
    data = _images(tmp_path / "data")
    with _silent_server() as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        code, seconds, out = _cli([data, "--clip_model", cf.TINY_ARCH, "--clip_pretrained", TAG, "--device", "cpu"],
                                  capsys)
    assert code == 2 and PROBE_SECONDS - 0.5 < seconds < FAST, seconds
    assert f"did not answer within {PROBE_SECONDS:g} s" in out.err and "--clip_model" in out.err


def test_url_source_that_never_answers_fails_within_seconds(tiny_tag, tmp_path):
    with _silent_server() as url:
        tiny_tag(hf_hub="", url=f"{url}/models/tiny.pt")
        begin = time.perf_counter()
        with pytest.raises(InstantLoraError) as err:
            plan_weights(CaptionOptions(clip_model=cf.TINY_ARCH, clip_pretrained=TAG))
        seconds = time.perf_counter() - begin
    assert seconds < FAST and "did not answer" in str(err.value)
    assert f"Or put tiny.pt from {url}/models/tiny.pt (the original file) into ~/.cache/clip/." in str(err.value)


def test_ui_message_names_the_fields_and_the_button(tiny_tag, tmp_path, monkeypatch):
    from instant_lora.ui.handlers import error_message

    tiny_tag()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{_refusing_port()}")
    data = _images(tmp_path / "data")
    begin = time.perf_counter()
    with pytest.raises(InstantLoraError) as err:
        _ui_caption(data, cf.TINY_ARCH, TAG)
    assert time.perf_counter() - begin < FAST
    shown = error_message(err.value)
    assert "the weights file's full path in the \"CLIP model\" field" in shown
    assert 'click "Auto-caption" again' in shown
    assert "--clip" not in shown and "run the command" not in shown


def test_hf_hub_offline_fails_at_once_without_a_request(tiny_tag, tmp_path, monkeypatch, capsys):
    tiny_tag()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with _hub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        code, seconds, out = _cli([_images(tmp_path / "data"), "--clip_model", cf.TINY_ARCH,
                                   "--clip_pretrained", TAG, "--device", "cpu"], capsys)
        with pytest.raises(InstantLoraError) as err:
            _ui_caption(tmp_path / "data", cf.TINY_ARCH, TAG)
    assert code == 2 and seconds < 2 and hub.requests == []
    assert "offline mode: HF_HUB_OFFLINE=1" in out.err and "run the command again without HF_HUB_OFFLINE=1" in out.err
    assert "start the app without HF_HUB_OFFLINE=1" in str(err.value)


# -- weights on disk: not one request ------------------------------------------------------------

@pytest.mark.parametrize("place", ["clip_folder", "hf_cache"])
def test_local_weights_are_used_without_any_request(tiny_tag, tiny_weights, tmp_path, monkeypatch, place):
    import shutil

    tiny_tag()
    if place == "clip_folder":
        target = Path.home() / ".cache" / "clip" / f"{cf.TINY_ARCH}-{TAG}.safetensors"
    else:
        target = (Path.home() / "hf" / "hub" / ("models--" + REPO.replace("/", "--")) / "snapshots" / "abc"
                  / "open_clip_model.safetensors")
    target.parent.mkdir(parents=True)
    shutil.copyfile(tiny_weights, target)
    data = _images(tmp_path / "data")
    with _hub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        report = caption_folder(data, CaptionOptions(clip_model=cf.TINY_ARCH, clip_pretrained=TAG, device="cpu",
                                                     banks=cf.BANKS, threshold=-1.0, top_k=1))
    assert len(report.written) == 2 and str(target) in report.model
    assert hub.requests == []


def test_default_model_on_disk_is_found_without_any_request(tmp_path, monkeypatch):
    clip_dir = Path.home() / ".cache" / "clip"
    clip_dir.mkdir(parents=True)
    (clip_dir / "ViT-L-14.pt").write_bytes(b"stand-in")  # only located here, never read
    with _hub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        assert plan_weights(CaptionOptions()).weights == str(clip_dir / "ViT-L-14.pt")
    assert hub.requests == []


# -- first use: the download is announced with its size and destination, then never repeated ----

@pytest.mark.parametrize("front", ["ui", "cli"])
def test_first_use_announces_the_download_then_runs_offline(tiny_tag, tiny_weights, tmp_path, monkeypatch, capsys,
                                                            front):
    from instant_lora.captioning import interrogate

    tiny_tag()
    real = interrogate.load_banks  # the shape banks, not the thousands of built-in phrases: seconds saved
    monkeypatch.setattr(interrogate, "load_banks", lambda folder, banks, categories: real("", cf.BANKS, []))
    weights = tiny_weights.read_bytes()
    data = _images(tmp_path / "data")
    notes = []

    def run():
        if front == "ui":
            return _ui_caption(data, cf.TINY_ARCH, TAG, notify=notes.append)
        code, _, out = _cli([data, "--clip_model", cf.TINY_ARCH, "--clip_pretrained", TAG, "--device", "cpu",
                             "--caption_prefix", "sks"], capsys)
        assert code == 0, out.err
        notes.extend(line for line in out.err.splitlines() if line.startswith("First use"))
        return out.out

    with _hub({f"{REPO}/resolve/main/open_clip_model.safetensors": weights}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        summary = run()
        fetched = list(hub.requests)
        (data / "red_circle_black.txt").unlink()
        again = run()
        assert hub.requests == fetched  # the second run found the file in the HF cache
    size = f"{len(weights) / 1e6:.0f} MB"
    assert len(notes) == 1, notes  # announced once, before the one download
    assert f"open_clip_model.safetensors ({size})" in notes[0]
    assert f"{hub.url}/{REPO}" in notes[0] and str(Path.home() / "hf" / "hub") in notes[0]
    assert "2 written" in summary and "1 written" in again
    if front == "ui":
        assert summary.startswith(notes[0]) and "downloading" not in again
    assert list((Path.home() / "hf" / "hub").glob("models--someone--tiny-clip/snapshots/*/open_clip_model.safetensors"))
