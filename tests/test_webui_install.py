"""install.py: installs only what is missing, never moves the WebUI's pins, compares versions (not
names), says in one line what is incompatible, and is silent when all is present. The real runs use
a throwaway venv that sees this environment's packages (no network: a missing package comes from a
wheel built here from the installed one)."""

import base64
import hashlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import sysconfig
import types
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STUB = ROOT / "tests" / "webui_stub"

A1111_PINS = {"torch": "2.1.2+cu121", "torchvision": "0.16.2+cu121", "xformers": "0.0.23.post1", "gradio": "3.41.2",
              "transformers": "4.30.2", "tokenizers": "0.13.3", "huggingface-hub": "0.36.2", "accelerate": "0.21.0",
              "safetensors": "0.4.2", "numpy": "1.26.2", "Pillow": "9.5.0", "open-clip-torch": "2.20.0",
              "fastapi": "0.94.0", "httpx": "0.24.1", "httpcore": "0.15.0", "protobuf": "3.20.0"}
FORGE_PINS = dict(A1111_PINS, torch="2.3.1+cu121", gradio="4.40.0", transformers="4.46.1", accelerate="0.31.0",
                  **{"huggingface-hub": "0.26.2", "diffusers": "0.31.0", "peft": "0.13.2"})


@pytest.fixture(scope="module")
def install():
    spec = importlib.util.spec_from_file_location("instant_lora_install", ROOT / "install.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lookup(versions):
    normal = {k.lower().replace("_", "-"): v for k, v in versions.items()}
    return lambda name: normal.get(name.lower().replace("_", "-"))


# ---- the plan -----------------------------------------------------------------------------------

def test_a1111_gets_diffusers_and_peft_with_every_pin_held(install):
    missing, warnings = install.plan(lookup(A1111_PINS), python=(3, 10))
    assert missing == ["diffusers==0.30.3", "peft==0.13.2", "tomli==2.0.1"] and warnings == []
    pins = install.constraints(lookup(A1111_PINS))
    for name in ("torch", "transformers", "gradio", "accelerate", "safetensors", "tokenizers", "huggingface-hub",
                 "numpy", "Pillow", "open-clip-torch"):
        assert f"{name}=={A1111_PINS[name]}" in pins
    # nothing of the WebUI's own is ever installed
    assert not {r.split("==")[0].lower() for r in missing} & {n.lower() for n in install.HOST_PACKAGES}


def test_forge_needs_nothing(install):
    assert install.plan(lookup(FORGE_PINS), python=(3, 10)) == (["tomli==2.0.1"], [])
    assert install.plan(lookup(dict(FORGE_PINS, tomli="2.0.1")), python=(3, 10)) == ([], [])
    assert install.plan(lookup(FORGE_PINS), python=(3, 11)) == ([], [])  # tomllib is built in


def test_hub_is_bounded_when_absent(install):
    assert "huggingface-hub<1.0" in install.constraints(lookup({"torch": "2.1.2"}))


@pytest.mark.parametrize("present, says", [
    ({"diffusers": "0.35.2"}, "diffusers 0.35.2 is installed, but with transformers 4.30.2 its StableDiffusionPipeline does not import"),
    ({"peft": "0.17.1"}, "peft 0.17.1 is installed, but it does not import with transformers 4.30.2"),
    ({"diffusers": "0.9.0"}, "diffusers 0.9.0 is installed but Instant LoRA needs >= 0.29.2"),  # 0.9 < 0.29: versions, not strings
    ({"peft": "0.12.0"}, "peft 0.12.0 is installed but Instant LoRA is built for peft >= 0.13.2"),
])
def test_an_incompatible_version_is_named_once_and_left_alone(install, present, says):
    missing, warnings = install.plan(lookup(dict(A1111_PINS, **present)), python=(3, 11))
    assert len(warnings) == 1 and says in warnings[0] and "left as it is" in warnings[0]
    assert not any(r.startswith(tuple(present)) for r in missing)  # present: not reinstalled, not upgraded


def test_peft_015_needs_a_newer_accelerate(install):
    _, warnings = install.plan(lookup(dict(FORGE_PINS, peft="0.15.0")), python=(3, 11))
    assert warnings == [f"{install.PREFIX} peft 0.15.0 is installed, but it does not import with accelerate 0.31.0 "
                        "(accelerate.utils.memory.clear_device_cache is missing; peft 0.13.2 works): left as it is; training may fail. "
                        f"To fix, install the version named in brackets with the WebUI's Python (\"{sys.executable}\" -m pip install ...)."]


def test_the_pip_call_inside_the_webui(install, monkeypatch, capsys):
    """Missing packages go through the WebUI's launch.run_pip with a constraints file."""
    calls = []

    def run_pip(args, desc=None):
        constraints_file = args.split(' -c "')[1].rstrip('"')
        calls.append((args, desc, Path(constraints_file).read_text().split()))

    monkeypatch.setitem(sys.modules, "launch", types.SimpleNamespace(run_pip=run_pip))
    monkeypatch.setattr(install, "installed_version", lookup(A1111_PINS))
    monkeypatch.setattr(install, "NEEDED_BEFORE_PY311", ())
    assert install.main([]) == 0
    (args, desc, pinned), = calls
    assert args.startswith('install "diffusers==0.30.3" "peft==0.13.2" -c "') and args.endswith('constraints.txt"')
    assert desc == "diffusers==0.30.3 peft==0.13.2 for Instant LoRA"
    assert "transformers==4.30.2" in pinned and "gradio==3.41.2" in pinned and "torch==2.1.2+cu121" in pinned
    assert capsys.readouterr().out == ""  # run_pip prints its own "Installing ..." line


def test_a_failed_install_is_one_line_and_the_webui_goes_on(install, monkeypatch, capsys):
    def run_pip(args, desc=None):
        raise RuntimeError("Couldn't install diffusers.\nCommand: ...\nError code: 1")

    monkeypatch.setitem(sys.modules, "launch", types.SimpleNamespace(run_pip=run_pip))
    monkeypatch.setattr(install, "installed_version", lookup(A1111_PINS))
    assert install.main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "could not install diffusers==0.30.3 peft==0.13.2 (Couldn't install diffusers.)" in out[0]
    # the hand-run command holds the WebUI's versions, so it cannot upgrade torch or transformers
    assert f'"{sys.executable}" -m pip install diffusers==0.30.3 peft==0.13.2 ' in out[0]
    assert '"torch==2.1.2+cu121"' in out[0] and '"transformers==4.30.2"' in out[0]


def test_dry_run_prints_the_command(install, monkeypatch, capsys):
    monkeypatch.setattr(install, "installed_version", lookup(A1111_PINS))
    install.main(["--dry-run"])
    out = capsys.readouterr().out
    assert 'would run: pip install "diffusers==0.30.3" "peft==0.13.2" -c' in out and "transformers==4.30.2" in out


# ---- real runs in a throwaway venv ------------------------------------------------------------

def _site_dirs() -> list[str]:
    return sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})


def _throwaway_venv(tmp_path: Path, site_dirs: list[str]) -> Path:
    """A venv without its own packages that sees `site_dirs` (this environment's, or a filtered copy)."""
    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(target)
    py = target / "bin" / "python"
    own_site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    Path(own_site, "webui_env.pth").write_text("\n".join(site_dirs) + "\n")
    return py


def _freeze(py: Path) -> set[str]:
    out = subprocess.run([str(py), "-m", "pip", "freeze", "--all"], capture_output=True, text=True, check=True).stdout
    return {line for line in out.splitlines() if line and not line.startswith("#")}


def _run_install(py: Path, env: dict, webui: bool) -> subprocess.CompletedProcess:
    env = dict(env)
    if webui:  # as the WebUI runs it: PYTHONPATH = the WebUI root, so `import launch` works
        env["PYTHONPATH"] = str(STUB)
    return subprocess.run([str(py), str(ROOT / "install.py")], capture_output=True, text=True, env=env, timeout=240)


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    return dict(env, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1")


def test_nothing_missing_means_no_output_and_no_change(tmp_path):
    missing = [n for n in ("diffusers", "peft") if importlib.util.find_spec(n) is None]
    if missing:
        pytest.skip(f"this environment lacks {missing}")
    py = _throwaway_venv(tmp_path, _site_dirs())
    before = _freeze(py)
    for webui in (True, False):
        done = _run_install(py, _clean_env(), webui)
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert _freeze(py) == before


def _wheel_from_installed(name: str, out_dir: Path) -> Path:
    """A py3-none-any wheel of an installed pure-Python distribution (offline stand-in for PyPI)."""
    dist = importlib.metadata.distribution(name)
    base = Path(dist.locate_file(""))
    info_dir = next(str(f).split("/")[0] for f in dist.files if ".dist-info/" in str(f))
    wheel = out_dir / f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-py3-none-any.whl"
    out_dir.mkdir(parents=True, exist_ok=True)
    records = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as z:
        for f in dist.files:
            arc = str(f)
            if "__pycache__" in arc or arc.startswith("..") or arc.endswith(("/RECORD", "/INSTALLER", "/REQUESTED", "/direct_url.json")):
                continue
            data = (base / f).read_bytes()
            z.writestr(arc, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{arc},sha256={digest},{len(data)}")
        records.append(f"{info_dir}/RECORD,,")
        z.writestr(f"{info_dir}/RECORD", "\n".join(records) + "\n")
    return wheel


def _site_without(tmp_path: Path, hidden: str) -> list[str]:
    """This environment's packages, minus one distribution (links, no copies)."""
    filtered = tmp_path / "site"
    filtered.mkdir()
    dist = importlib.metadata.distribution(hidden)
    hidden_tops = {str(f).split("/")[0] for f in dist.files if not str(f).startswith("..")}
    for site in _site_dirs():
        for entry in Path(site).iterdir():
            if entry.name not in hidden_tops and not (filtered / entry.name).exists():
                (filtered / entry.name).symlink_to(entry)
    return [str(filtered)]


def test_a_missing_package_is_added_and_nothing_else_changes(tmp_path, install):
    pinned = dict(install.NEEDED)["peft"]
    if importlib.util.find_spec("peft") is None or importlib.metadata.version("peft") != pinned:
        pytest.skip(f"needs the WebUI environment's peft=={pinned} to build an offline wheel")
    wheels = tmp_path / "wheels"
    _wheel_from_installed("peft", wheels)
    py = _throwaway_venv(tmp_path, _site_without(tmp_path, "peft"))
    before = _freeze(py)
    assert not any(line.lower().startswith("peft==") for line in before)
    env = dict(_clean_env(), PIP_FIND_LINKS=str(wheels))
    done = _run_install(py, env, webui=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == f"Installing peft=={pinned} for Instant LoRA"  # the WebUI's run_pip line
    assert _freeze(py) - before == {f"peft=={pinned}"} and before - _freeze(py) == set()
    again = _run_install(py, env, webui=True)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
