"""Finding base models where users keep them: the app's models folder, the WebUI, and A1111 / Forge /
ComfyUI installs in a fake home folder. Labels map back to files, a bare name on the command line
finds its checkpoint, and `models` says what it found or where it looked."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from instant_lora import model_sources as ms
from instant_lora.errors import InstantLoraError

ROOT = Path(__file__).resolve().parents[1]


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def diffusers_folder(path: Path) -> Path:
    touch(path / "model_index.json", b"{}")
    touch(path / "unet" / "diffusion_pytorch_model.safetensors")
    touch(path / "vae" / "diffusion_pytorch_model.safetensors")
    return path


@pytest.fixture
def machine(tmp_path):
    """A home with three installs, a working folder with its own models folder and a sibling WebUI."""
    home, work = tmp_path / "home", tmp_path / "work"
    a1111 = home / "stable-diffusion-webui" / "models" / "Stable-diffusion"
    touch(a1111 / "v1-5-pruned-emaonly.safetensors")
    touch(a1111 / "styles" / "anime.ckpt")
    touch(a1111 / "notes.txt")
    touch(a1111 / ".hidden.safetensors")
    touch(a1111 / "half.safetensors.part")
    touch(home / "stable-diffusion-webui-forge" / "models" / "Stable-diffusion" / "forge_model.safetensors")
    comfy = home / "ComfyUI_windows_portable" / "ComfyUI" / "models" / "checkpoints"
    touch(comfy / "v1-5-pruned-emaonly.safetensors")  # the same name as A1111's: two entries, two labels
    diffusers_folder(home / "ComfyUI" / "models" / "checkpoints" / "my-diffusers")
    (comfy / "loop").mkdir()
    (comfy / "loop" / "back").symlink_to(comfy)  # a symlink loop
    touch(work / "app" / "models" / "mine.safetensors")
    diffusers_folder(work / "app" / "models" / "tiny-sd")
    touch(work / "stable-diffusion-webui" / "models" / "Stable-diffusion" / "sibling.safetensors")
    return {"home": home, "app": work / "app", "models": work / "app" / "models", "a1111": a1111, "comfy": comfy}


def found(m, **kw):
    return ms.find_checkpoints(m["models"], home=m["home"], near=[m["app"]], **kw)


def test_every_install_is_found_with_its_source_and_a_readable_label(machine):
    items = found(machine)
    labels = [i.label for i in items]
    assert labels[:2] == ["mine.safetensors", "tiny-sd"]  # the models folder first, plain relative paths
    assert "sibling.safetensors  (A1111: " + str(machine["app"].parent / "stable-diffusion-webui") + ")" in labels
    assert "v1-5-pruned-emaonly.safetensors  (A1111: ~/stable-diffusion-webui)" in labels
    assert str(Path("styles/anime.ckpt")) + "  (A1111: ~/stable-diffusion-webui)" in labels
    assert "forge_model.safetensors  (Forge: ~/stable-diffusion-webui-forge)" in labels
    assert "v1-5-pruned-emaonly.safetensors  (ComfyUI: ~/ComfyUI_windows_portable/ComfyUI)" in labels
    assert "my-diffusers  (ComfyUI: ~/ComfyUI)" in labels
    assert len(labels) == len(set(labels)) == 8  # no notes, hidden files, .part files, diffusers components or loop repeats
    by_label = {i.label: i for i in items}
    assert by_label["forge_model.safetensors  (Forge: ~/stable-diffusion-webui-forge)"].source == "Forge at ~/stable-diffusion-webui-forge"
    assert by_label["mine.safetensors"].source == "models folder"
    assert not any("diffusion_pytorch_model" in str(i.path) for i in items)


def test_the_same_folder_reached_twice_is_listed_once(machine, tmp_path):
    linked = tmp_path / "linked-models"
    linked.symlink_to(machine["a1111"])  # the app's models folder is the WebUI's, through a link
    items = ms.find_checkpoints(linked, home=machine["home"], near=[machine["app"]])
    plain = [i.label for i in items if i.place.root is None]
    assert "v1-5-pruned-emaonly.safetensors" in plain
    assert not any(i.label.startswith("v1-5-pruned-emaonly.safetensors  (A1111") for i in items)


def test_a_webui_named_by_flag_is_searched_and_recognised_as_forge(machine, tmp_path):
    webui = tmp_path / "elsewhere" / "forge"
    (webui / "modules").mkdir(parents=True)
    (webui / "modules_forge").mkdir()
    touch(webui / "webui.py")
    touch(webui / "models" / "Stable-diffusion" / "named.safetensors")
    items = ms.find_checkpoints(machine["models"], str(webui), home=machine["home"], near=[machine["app"]])
    named = [i for i in items if i.name == "named.safetensors"]
    assert named and named[0].source == f"Forge at {webui}"
    # without --models-dir the WebUI's folder is the models folder: its files keep plain labels, once
    items = ms.find_checkpoints(None, str(webui), home=machine["home"], near=[machine["app"]])
    assert [i.label for i in items if i.name == "named.safetensors"] == ["named.safetensors"]


def test_unreadable_folders_are_skipped(machine, monkeypatch):
    real = os.scandir
    blocked = str(machine["a1111"])

    def scandir(path="."):
        if str(path) == blocked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(ms.os, "scandir", scandir)
    labels = [i.label for i in found(machine)]
    assert "mine.safetensors" in labels and not any("(A1111: ~/stable-diffusion-webui)" in lb for lb in labels)


def test_the_walk_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(ms, "MAX_ENTRIES", 5)
    for i in range(20):
        touch(tmp_path / "m" / f"{i:02d}.safetensors")
    touch(tmp_path / "m" / "a" / "b" / "c" / "d" / "e" / "deep.safetensors")
    items = ms.find_checkpoints(tmp_path / "m", home=tmp_path / "h", near=[tmp_path / "n"])
    assert len(items) <= 5 and not any(i.name == "deep.safetensors" for i in items)


def test_the_host_lists_labels_and_maps_them_back(machine):
    from instant_lora.host.standalone import StandaloneHost

    host = StandaloneHost(models_dir=machine["models"], lora_dir=machine["app"] / "l", data_dir=machine["app"] / "d",
                          search_home=machine["home"], search_near=[machine["app"]])
    labels = host.list_checkpoints()
    assert host.default_checkpoint() == "mine.safetensors"
    assert host.checkpoint_path("mine.safetensors") == str(machine["models"] / "mine.safetensors")
    comfy = "v1-5-pruned-emaonly.safetensors  (ComfyUI: ~/ComfyUI_windows_portable/ComfyUI)"
    assert comfy in labels and host.knows_checkpoint(comfy)
    assert host.checkpoint_path(comfy) == str(machine["comfy"] / "v1-5-pruned-emaonly.safetensors")
    assert Path(host.checkpoint_path("my-diffusers  (ComfyUI: ~/ComfyUI)")).name == "my-diffusers"
    assert not host.knows_checkpoint("nope.safetensors") and host.checkpoint_path("nope.safetensors") == "nope.safetensors"
    assert host.can_download_models


def test_a_request_names_a_checkpoint_of_another_install_by_label(machine, train_set):
    from instant_lora.host.standalone import StandaloneHost
    from instant_lora.request import RunRequest, validate_request

    host = StandaloneHost(models_dir=machine["models"], lora_dir=machine["app"] / "l", data_dir=machine["app"] / "d",
                          search_home=machine["home"], search_near=[machine["app"]])
    label = "forge_model.safetensors  (Forge: ~/stable-diffusion-webui-forge)"
    config = validate_request(RunRequest(front="api", checkpoint=label, values={"train_data_dir": str(train_set),
                                                                                "output_name": "x"}), host)
    assert config.pretrained_model_name_or_path == str(
        machine["home"] / "stable-diffusion-webui-forge" / "models" / "Stable-diffusion" / "forge_model.safetensors")


def test_a_bare_name_finds_its_checkpoint(machine, monkeypatch):
    kw = {"home": machine["home"], "near": [machine["app"]]}
    resolve = ms.resolve_model_name
    assert resolve("mine", machine["models"], **kw) == str(machine["models"] / "mine.safetensors")
    assert resolve("v1-5-pruned-emaonly.safetensors", machine["models"], **kw) == \
        str(machine["a1111"] / "v1-5-pruned-emaonly.safetensors")  # the first place that has it
    assert resolve("ANIME", machine["models"], **kw) == str(machine["a1111"] / "styles" / "anime.ckpt")
    assert resolve("tiny-sd", machine["models"], **kw) == str(machine["models"] / "tiny-sd")
    assert resolve("org/model", machine["models"], **kw) == "org/model"  # a hub id
    assert resolve("/no/such/file.safetensors", machine["models"], **kw) == "/no/such/file.safetensors"
    with pytest.raises(InstantLoraError) as e:
        resolve("nosuch", machine["models"], **kw)
    assert str(machine["models"]) in e.value.message and "~/stable-diffusion-webui/models/Stable-diffusion" in e.value.message
    assert "download-model sd15" in e.value.hint


def test_the_command_line_resolves_a_bare_model_name(machine, train_set, monkeypatch):
    from instant_lora.request import RequestError, RunRequest, validate_request

    monkeypatch.chdir(machine["app"])  # ./models is the app's models folder
    monkeypatch.setenv(ms.HOME_ENV, str(machine["home"]))
    values = {"train_data_dir": str(train_set), "pretrained_model_name_or_path": "forge_model", "output_dir": "o"}
    config = validate_request(RunRequest(front="cli", values=values, find_model=True))
    assert config.pretrained_model_name_or_path.endswith(str(Path("stable-diffusion-webui-forge/models/Stable-diffusion/forge_model.safetensors")))
    assert validate_request(RunRequest(front="cli", values=values)).pretrained_model_name_or_path == "forge_model"  # only when asked
    with pytest.raises(RequestError) as e:
        validate_request(RunRequest(front="cli", values={**values, "pretrained_model_name_or_path": "nosuch",
                                                          "network_dim": 0}, find_model=True))
    assert set(e.value.fields) == {"pretrained_model_name_or_path", "network_dim"}  # every problem at once
    assert "download-model sd15" in str(e.value)


def run_app(*args, home, cwd):
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", ms.HOME_ENV: str(home),
           "INSTANT_LORA_CACHE": os.environ.get("INSTANT_LORA_CACHE", "")}
    return subprocess.run([sys.executable, str(ROOT / "standalone_app.py"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_models_command_lists_what_it_found_and_where_it_looked(machine, tmp_path):
    r = run_app("models", home=machine["home"], cwd=machine["app"])
    assert r.returncode == 0, r.stderr
    assert "8 checkpoint(s)" in r.stdout
    line = next(x for x in r.stdout.splitlines() if "forge_model" in x)
    assert "Forge at ~/stable-diffusion-webui-forge" in line and "~/stable-diffusion-webui-forge/models/Stable-diffusion/forge_model" in line
    empty = tmp_path / "empty"
    (empty / "cwd").mkdir(parents=True)
    r = run_app("models", "--models-dir", empty / "none", home=empty / "home", cwd=empty / "cwd")
    assert r.returncode == 0, r.stderr
    assert "No checkpoint found" in r.stdout and f"{empty / 'none'}  [models folder]  (missing)" in r.stdout
    assert "stable-diffusion-webui-forge" in r.stdout and "ComfyUI_windows_portable/ComfyUI" in r.stdout and "~" in r.stdout
    assert "download-model sd15" in r.stdout


def test_train_with_an_unknown_bare_name_says_where_it_looked(tmp_path, train_set):
    (tmp_path / "cwd").mkdir()
    r = run_app("train", "--pretrained_model_name_or_path=nosuch", f"--train_data_dir={train_set}", "--network_dim=0",
                home=tmp_path / "home", cwd=tmp_path / "cwd")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--pretrained_model_name_or_path" in r.stderr and "--network_dim" in r.stderr
    assert str(tmp_path / "cwd" / "models") in r.stderr and "download-model sd15" in r.stderr
