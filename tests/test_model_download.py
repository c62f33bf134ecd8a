"""Downloading a base model: against a local stand-in for the hub (tests/fake_hub.py), a tiny file
with its own sha256. Resume with Range, refusal of a wrong file, offline in seconds, the CLI."""

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_hub import FakeHub, closed_port, write_registry

from instant_lora import model_download as md
from instant_lora.errors import InstantLoraError

ROOT = Path(__file__).resolve().parents[1]
DATA = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit: a few reads
REPO = "test-org/tiny-base"


@pytest.fixture
def hub():
    with FakeHub() as h:
        yield h


@pytest.fixture(autouse=True)
def _online(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # conftest sets it for the rest of the suite
    monkeypatch.delenv("HF_ENDPOINT", raising=False)


def entry_for(hub, data=DATA, **changes) -> md.BaseModelFile:
    values = hub.add(REPO, "tiny-base.safetensors", data)
    values.update(changes)
    return md.BaseModelFile(name="tiny", **values)


def test_registry_has_sd15_with_its_published_size_and_hash():
    sd15 = md.get_entry("sd15")
    assert (sd15.repo_id, sd15.filename) == ("stable-diffusion-v1-5/stable-diffusion-v1-5", "v1-5-pruned-emaonly.safetensors")
    assert sd15.size == 4_265_146_304 and sd15.sha256.startswith("6ce0161689")  # the WebUI's short hash
    assert sd15.size_text == "4.3 GB"
    assert md.file_url(sd15, "http://mirror.test") == \
        "http://mirror.test/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors"
    with pytest.raises(InstantLoraError, match="sd15"):
        md.get_entry("nope")


def test_interrupted_download_resumes_with_range_to_a_verified_file(hub, tmp_path):
    entry = entry_for(hub)
    models = tmp_path / "models"
    hub.cut_after, hub.cut_times = 300_000, 1
    with pytest.raises(InstantLoraError, match="run it again to resume") as e:
        md.download_model(entry, models, endpoint=hub.endpoint, retries=0)
    part = models / "tiny-base.safetensors.part"
    assert part.stat().st_size == 300_000 and not (models / "tiny-base.safetensors").exists()
    assert str(part) in e.value.hint
    seen = []
    result = md.download_model(entry, models, endpoint=hub.endpoint, progress=lambda done, total: seen.append((done, total)))
    assert hub.requests[-1]["range"] == "bytes=300000-"
    assert result.resumed_from == 300_000 and result.transferred == len(DATA) - 300_000
    final = models / "tiny-base.safetensors"
    assert hashlib.sha256(final.read_bytes()).hexdigest() == entry.sha256
    assert not part.exists() and not list(models.glob(".*lock"))
    assert seen[-1] == (len(DATA), len(DATA)) and all(t == len(DATA) for _, t in seen)
    again = md.download_model(entry, models, endpoint=hub.endpoint)  # already there: no request
    assert again.already_there and len(hub.requests) == 2


def test_a_dropped_connection_resumes_by_itself(hub, tmp_path):
    entry = entry_for(hub)
    hub.cut_after, hub.cut_times = 100_000, 2
    notes = []
    result = md.download_model(entry, tmp_path, endpoint=hub.endpoint, status=notes.append)
    assert [r["range"] for r in hub.requests] == [None, "bytes=100000-", "bytes=200000-"]
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == entry.sha256
    assert any("resuming" in n for n in notes)


def test_a_server_that_ignores_range_still_gives_the_right_file(hub, tmp_path):
    entry = entry_for(hub)
    (tmp_path / "tiny-base.safetensors.part").write_bytes(b"x" * 1000)  # what a resume would keep
    hub.ignore_range = True  # answers the whole file (200): the part starts afresh
    result = md.download_model(entry, tmp_path, endpoint=hub.endpoint)
    assert hub.requests[-1]["range"] == "bytes=1000-" and result.transferred == len(DATA)
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == entry.sha256


def test_a_wrong_file_is_refused_and_nothing_appears_under_the_final_name(hub, tmp_path):
    entry = entry_for(hub, sha256="0" * 64)
    (tmp_path / "keep.safetensors").write_bytes(b"mine")
    with pytest.raises(InstantLoraError) as e:
        md.download_model(entry, tmp_path, endpoint=hub.endpoint)
    assert "not the expected file" in e.value.message and "deleted the partial download" in e.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.safetensors"]  # only the bad temp file went
    wrong_size = entry_for(hub, size=len(DATA) + 1)
    with pytest.raises(InstantLoraError, match="not the expected file"):
        md.download_model(wrong_size, tmp_path, endpoint=hub.endpoint)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.safetensors"]


def test_missing_file_and_an_existing_other_file_say_what_to_do(hub, tmp_path):
    entry = md.BaseModelFile(name="x", title="X", repo_id=REPO, filename="absent.safetensors", size=10, sha256="0" * 64)
    with pytest.raises(InstantLoraError, match="no such file"):
        md.download_model(entry, tmp_path, endpoint=hub.endpoint)
    (tmp_path / "absent.safetensors").write_bytes(b"123")
    with pytest.raises(InstantLoraError, match="exists but is"):
        md.download_model(entry, tmp_path, endpoint=hub.endpoint)


def _assert_put_message(e, entry, folder):
    text = f"{e.value.message} {e.value.hint}"
    assert f"put {entry.filename} into {folder.absolute()}" in text
    assert md.file_url(entry, os.environ.get("HF_ENDPOINT")) in text or "resolve/main/" + entry.filename in text


def test_offline_fails_in_seconds_saying_which_file_to_put_where(tmp_path, monkeypatch):
    entry = md.get_entry("sd15")
    endpoint = f"http://127.0.0.1:{closed_port()}"
    start = time.monotonic()
    with pytest.raises(InstantLoraError) as e:
        md.download_model("sd15", tmp_path / "models", endpoint=endpoint)
    assert time.monotonic() - start < 5
    _assert_put_message(e, entry, tmp_path / "models")
    assert f"{endpoint}/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors" in e.value.hint
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(InstantLoraError, match="HF_HUB_OFFLINE") as e:
        md.download_model("sd15", tmp_path / "models")
    assert time.monotonic() - start < 1
    assert "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors" in e.value.hint
    _assert_put_message(e, entry, tmp_path / "models")
    assert not (tmp_path / "models" / "v1-5-pruned-emaonly.safetensors.part").exists()


def test_an_unknown_host_fails_quickly(tmp_path):
    start = time.monotonic()
    with pytest.raises(InstantLoraError, match="put v1-5-pruned-emaonly.safetensors into"):
        md.download_model("sd15", tmp_path, endpoint="http://no-such-host.invalid")
    assert time.monotonic() - start < 5


def test_the_token_stays_with_the_hub_on_a_redirect(hub, tmp_path, monkeypatch):
    """The hub redirects downloads to its file storage: the Authorization header is not sent there."""
    import urllib.request

    req = urllib.request.Request(hub.endpoint + "/x", headers={"Authorization": "Bearer secret", "Range": "bytes=5-"})
    elsewhere = md._NoAuthOffHost().redirect_request(req, None, 302, "Found", {}, "http://storage.test/y")
    assert elsewhere.get_header("Authorization") is None and elsewhere.get_header("Range") == "bytes=5-"
    same = md._NoAuthOffHost().redirect_request(req, None, 302, "Found", {}, hub.endpoint + "/y")
    assert same.get_header("Authorization") == "Bearer secret"
    monkeypatch.setattr(md, "_headers", lambda: {"Authorization": "Bearer secret"})
    md.download_model(entry_for(hub), tmp_path, endpoint=hub.endpoint)
    assert hub.requests[-1]["auth"] == "Bearer secret"  # the hub itself gets it


def run_cli(*args, env_extra=None, cwd=None, timeout=60):
    env = {"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "INSTANT_LORA_CACHE": os.environ.get("INSTANT_LORA_CACHE", ""), **(env_extra or {})}
    return subprocess.run([sys.executable, str(ROOT / "standalone_app.py"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_download_model_command_end_to_end(hub, tmp_path):
    values = hub.add(REPO, "tiny-base.safetensors", DATA)
    registry = write_registry(tmp_path / "registry.json", {"tiny": values})
    env = {"HF_ENDPOINT": hub.endpoint, md.TEST_REGISTRY_ENV: str(registry), "INSTANT_LORA_SEARCH_HOME": str(tmp_path / "home")}
    hub.cut_after, hub.cut_times = 500_000, 1
    r = run_cli("download-model", "tiny", "--models-dir", tmp_path / "m", env_extra=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    final = tmp_path / "m" / "tiny-base.safetensors"
    assert hashlib.sha256(final.read_bytes()).hexdigest() == values["sha256"]
    assert str(final) in r.stdout and "resuming" in r.stderr
    assert hub.requests[-1]["range"] == "bytes=500000-"
    r = run_cli("download-model", "--models-dir", tmp_path / "m", env_extra=env, cwd=tmp_path)  # no name: what there is
    assert r.returncode == 0 and "sd15" in r.stdout and "4.3 GB" in r.stdout
    r = run_cli("download-model", "sd15", "--models-dir", tmp_path / "m",
                env_extra={"HF_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}, cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert f"put v1-5-pruned-emaonly.safetensors into {tmp_path / 'm'}" in r.stderr


# ---- the app's Base model list: empty-list help and the download button's run ------------------

def app_host(tmp_path):
    from instant_lora.host.standalone import StandaloneHost

    return StandaloneHost(models_dir=tmp_path / "models", lora_dir=tmp_path / "l", data_dir=tmp_path / "d",
                          search_home=tmp_path / "home", search_near=[tmp_path])


def test_an_empty_list_says_which_folder_the_app_reads(tmp_path):
    from instant_lora.host.base import Host
    from instant_lora.ui.handlers.models import download_label, models_view

    view = models_view(app_host(tmp_path))
    assert view.choices == [] and view.value is None and view.show_download
    assert f"`{tmp_path / 'models'}` (the folder this app reads)" in view.message
    assert "Also searched: no A1111, Forge or ComfyUI install in" in view.message and download_label() in view.message
    assert download_label() == "Download SD1.5 (4.3 GB)"

    class OwnList(Host):  # the WebUI: its own checkpoints, nothing to download
        models_dir = tmp_path / "webui" / "models" / "Stable-diffusion"

        def list_checkpoints(self):
            return []

    view = models_view(OwnList())
    assert not view.show_download and str(OwnList.models_dir) in view.message and "Download" not in view.message


def test_the_download_button_fetches_and_selects_the_model(hub, tmp_path, monkeypatch):
    from instant_lora.ui.handlers.models import follow_download, models_view

    values = hub.add(REPO, "tiny-base.safetensors", DATA)
    monkeypatch.setenv(md.TEST_REGISTRY_ENV, str(write_registry(tmp_path / "r.json", {"sd15": {**values, "title": "SD1.5"}})))
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    host = app_host(tmp_path)
    steps = list(follow_download(host, None, poll_s=0.01))
    message, view = steps[-1]
    assert all(v is None for _, v in steps[:-1]) and "Downloaded `tiny-base.safetensors`" in message
    assert view.choices == ["tiny-base.safetensors"] and view.value == "tiny-base.safetensors" and not view.show_download
    assert models_view(host).message == ""  # a later page load shows the list only
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    other = app_host(tmp_path / "offline")
    message, view = list(follow_download(other, None, poll_s=0.01))[-1]
    assert f"put tiny-base.safetensors into {tmp_path / 'offline' / 'models'}" in message
    assert view.choices == [] and view.show_download  # try again, or put it there


def test_a_polling_page_gets_the_end_of_the_download_once(hub, tmp_path, monkeypatch):
    """Gradio 3: the click only starts the download; the page's poll brings progress and the end."""
    from instant_lora.ui.handlers.models import _TASKS, _key, download_news, follow_download

    values = hub.add(REPO, "tiny-base.safetensors", DATA)
    monkeypatch.setenv(md.TEST_REGISTRY_ENV, str(write_registry(tmp_path / "r.json", {"sd15": values})))
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    host, record = app_host(tmp_path), {}
    assert download_news(host, record) is None  # nothing downloading: nothing to say
    steps = list(follow_download(host, None, follow=False))
    assert len(steps) <= 1 or steps[-1][1] is not None
    _TASKS[_key(host)].thread.join(30)
    message, view = download_news(host, record)
    assert "Downloaded" in message and view.value == "tiny-base.safetensors"
    assert download_news(host, record) is None  # once
    # a page opened (or reloaded) after the end: its load listed the file and chose the selection;
    # the poll must not override that choice with the downloaded file
    assert download_news(host, {}) is None
