"""Run by the WebUI (AUTOMATIC1111 / Forge) at every start and after installing the extension.

Installs only what Instant LoRA needs and the WebUI does not ship (diffusers, peft; tomli on
Python < 3.11), at versions that work with the WebUI's own pins. It never installs or upgrades the
WebUI's packages (torch, gradio, transformers, accelerate, safetensors, numpy, Pillow,
open-clip-torch, ...): pip runs with a constraints file that holds each of them at its installed
version. A present but incompatible version is not touched; one line says what and why.
Silent, and fast (no imports of torch or pip), when everything is present.

`python install.py --dry-run` prints what it would do.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

try:
    from importlib import metadata as _metadata
except ImportError:  # Python < 3.8 cannot run the WebUI anyway
    _metadata = None

try:
    from packaging.version import InvalidVersion, Version
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.version import InvalidVersion, Version

PREFIX = "[Instant LoRA]"

# What the trainer needs and the WebUI does not ship: (distribution, version installed when it is
# missing). diffusers 0.30.3 + peft 0.13.2 import with A1111 1.10's pins (transformers 4.30.2,
# accelerate 0.21.0) and match what Forge pins itself (diffusers 0.31.0 is fine too).
NEEDED = (("diffusers", "0.30.3"), ("peft", "0.13.2"))
NEEDED_BEFORE_PY311 = (("tomli", "2.0.1"),)  # reads TOML config files (tomllib from 3.11 on)

# The WebUI's packages: never installed or upgraded by us; pinned to their installed versions for
# the one pip call, so no dependency of diffusers/peft can move them.
HOST_PACKAGES = ("torch", "torchvision", "torchaudio", "xformers", "transformers", "tokenizers", "huggingface-hub",
                 "accelerate", "safetensors", "gradio", "gradio-client", "numpy", "Pillow", "open-clip-torch",
                 "fastapi", "pydantic", "starlette", "httpx", "httpcore", "protobuf", "setuptools")
# Upper bounds for what the constraints add when a package is absent.
ABSENT_BOUNDS = {"huggingface-hub": "<1.0"}


def installed_version(name: str) -> str | None:
    try:
        return _metadata.version(name)
    except Exception:  # PackageNotFoundError, or a broken dist-info
        return None


def _v(text: str | None) -> Version | None:
    try:
        return Version(text) if text else None
    except InvalidVersion:
        return None


def incompatibilities(versions) -> list[str]:
    """One line per present package whose version is known not to work with this host."""
    d, p, t = _v(versions("diffusers")), _v(versions("peft")), _v(versions("transformers"))
    acc, torch, hub = _v(versions("accelerate")), _v(versions("torch")), _v(versions("huggingface-hub"))
    out = []
    if d is not None:
        if d < Version("0.29.2"):
            out.append(f"diffusers {d} is installed but Instant LoRA needs >= 0.29.2 "
                       "(older releases fail to import with current huggingface_hub)")
        elif d >= Version("0.32") and t is not None and t < Version("4.37"):
            out.append(f"diffusers {d} is installed, but with transformers {t} its StableDiffusionPipeline does not import "
                       "(diffusers <= 0.31 works here, e.g. 0.30.3)")
        elif d >= Version("0.36") and torch is not None and torch.release < (2, 2):
            out.append(f"diffusers {d} does not import on torch {torch} (diffusers 0.31.0 works)")
    if p is not None:
        if p < Version("0.13"):
            out.append(f"peft {p} is installed but Instant LoRA is built for peft >= 0.13.2")
        elif p >= Version("0.14") and t is not None and t < Version("4.36"):
            out.append(f"peft {p} is installed, but it does not import with transformers {t} "
                       "(transformers.Cache is missing; peft 0.13.2 works)")
        elif p >= Version("0.15") and acc is not None and acc < Version("0.33"):
            out.append(f"peft {p} is installed, but it does not import with accelerate {acc} "
                       "(accelerate.utils.memory.clear_device_cache is missing; peft 0.13.2 works)")
    if hub is not None and hub >= Version("1.0") and d is not None and d < Version("0.36"):
        out.append(f"huggingface_hub {hub} is installed; diffusers {d} and the WebUI's transformers expect huggingface_hub < 1.0")
    return out


def plan(versions=None, python=None) -> tuple[list[str], list[str]]:
    """(requirements to install, warning lines). Only absent packages are installed."""
    versions = versions or installed_version
    python = python or sys.version_info
    needed = list(NEEDED) + (list(NEEDED_BEFORE_PY311) if tuple(python[:2]) < (3, 11) else [])
    missing = [f"{name}=={version}" for name, version in needed if versions(name) is None]
    return missing, [f"{PREFIX} {line}: left as it is; training may fail. To fix, install the version named in brackets "
                     f"with the WebUI's Python (\"{sys.executable}\" -m pip install ...)." for line in incompatibilities(versions)]


def constraints(versions=None) -> list[str]:
    """`name==installed` for every WebUI package present (a bound for the few that are not)."""
    versions = versions or installed_version
    lines = []
    for name in HOST_PACKAGES:
        version = versions(name)
        if version and _v(version) is not None:
            lines.append(f"{name}=={version}")
        elif not version and name in ABSENT_BOUNDS:
            lines.append(f"{name}{ABSENT_BOUNDS[name]}")
    return lines


def pip_args(requirements: list[str], constraints_file: str) -> str:
    """The arguments after `pip` (launch.run_pip adds `--prefer-binary` and the WebUI's index)."""
    return "install " + " ".join(f'"{r}"' for r in requirements) + f' -c "{constraints_file}"'


def _run_pip(args: str, desc: str) -> None:
    """Inside the WebUI: its launch.run_pip (honours --index-url, prints 'Installing ...').
    Else: this Python's pip."""
    try:
        import launch  # the WebUI puts its root on PYTHONPATH for install.py

        run_pip = launch.run_pip
    except Exception:
        run_pip = None
    if run_pip is not None:
        run_pip(args, desc)
        return
    print(f"{PREFIX} installing {desc}", flush=True)
    command = f'"{sys.executable}" -m pip {args} --prefer-binary'
    done = subprocess.run(command, shell=True, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    missing, warnings = plan()
    for line in warnings:
        print(line, flush=True)
    if not missing:
        return 0
    with tempfile.TemporaryDirectory(prefix="instant-lora-install-") as tmp:
        path = os.path.join(tmp, "constraints.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(constraints()) + "\n")
        args = pip_args(missing, path)
        if "--dry-run" in argv:
            print(f"{PREFIX} would run: pip {args}\n{PREFIX} constraints: {', '.join(constraints())}")
            return 0
        try:
            _run_pip(args, f"{' '.join(missing)} for Instant LoRA")
        except Exception as e:  # never stop the WebUI from starting
            first = next((ln for ln in str(e).splitlines() if ln.strip()), str(e))
            # The hand-run command repeats the WebUI's own versions, so pip cannot move them either.
            held = " ".join(f'"{c}"' for c in constraints())
            print(f"{PREFIX} could not install {' '.join(missing)} ({first.strip()[:200]}); the Instant LoRA tab "
                  f"will say what is missing. Install by hand, with the WebUI stopped: \"{sys.executable}\" -m pip install "
                  f"{' '.join(missing)} {held}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
