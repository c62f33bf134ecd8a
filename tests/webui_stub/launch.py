"""The WebUI's launch.py as install.py sees it (PYTHONPATH = the WebUI root): is_installed (a name,
no version logic) and run_pip, which really runs pip the way the WebUI does."""

import importlib.metadata
import importlib.util
import os
import subprocess
import sys

python = sys.executable
index_url = os.environ.get("INDEX_URL", "")
default_command_live = os.environ.get("WEBUI_LAUNCH_LIVE_OUTPUT") == "1"


def is_installed(package):
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        try:
            spec = importlib.util.find_spec(package)
        except ModuleNotFoundError:
            return False
        return spec is not None
    return dist is not None


def run(command, desc=None, errdesc=None, custom_env=None, live=default_command_live):
    if desc is not None:
        print(desc)
    run_kwargs = {"args": command, "shell": True, "env": os.environ if custom_env is None else custom_env,
                  "encoding": "utf8", "errors": "ignore"}
    if not live:
        run_kwargs["stdout"] = run_kwargs["stderr"] = subprocess.PIPE
    result = subprocess.run(**run_kwargs)
    if result.returncode != 0:
        error_bits = [f"{errdesc or 'Error running command'}.", f"Command: {command}", f"Error code: {result.returncode}"]
        if result.stdout:
            error_bits.append(f"stdout: {result.stdout}")
        if result.stderr:
            error_bits.append(f"stderr: {result.stderr}")
        raise RuntimeError("\n".join(error_bits))
    return result.stdout or ""


def run_pip(command, desc=None, live=default_command_live):
    index_url_line = f" --index-url {index_url}" if index_url != "" else ""
    return run(f'"{python}" -m pip {command} --prefer-binary{index_url_line}', desc=f"Installing {desc}",
               errdesc=f"Couldn't install {desc}", live=live)
