"""Puts the WebUI stand-in on sys.path for one test and takes it away afterwards, so other tests
never see a `modules` package. `webui(tmp_path, forge=...)` lays out a WebUI folder (two
checkpoints, a Lora folder), loads one checkpoint, and yields the stand-in's modules."""

from __future__ import annotations

import contextlib
import sys
import types
from pathlib import Path

STUB = Path(__file__).resolve().parent
ROOT = STUB.parents[1]
STUB_PREFIXES = ("modules", "launch", "backend", "modules_forge", "ldm_patched", "instant_lora_tab_script")


def _purge_stub_modules() -> None:
    for name in list(sys.modules):
        if any(name == p or name.startswith(p + ".") for p in STUB_PREFIXES):
            del sys.modules[name]


def _reset_extension_globals() -> None:
    wh = sys.modules.get("instant_lora.host.webui")
    if wh is not None:
        wh._HOST = None


@contextlib.contextmanager
def webui(tmp_path: Path, forge: bool = False, load_model: bool = True):
    added = [str(STUB / "forge"), str(STUB)] if forge else [str(STUB)]
    _purge_stub_modules()
    _reset_extension_globals()
    for p in reversed(added):
        sys.path.insert(0, p)
    try:
        import modules
        from modules import paths, script_callbacks, sd_models, shared

        root = Path(tmp_path) / "webui"
        models = root / "models"
        paths.script_path = paths.data_path = str(root)
        paths.models_path = str(models)
        shared.cmd_opts.lora_dir = str(models / "Lora")
        ckpts = models / "Stable-diffusion"
        (ckpts / "sd15").mkdir(parents=True)
        (models / "Lora").mkdir(parents=True)
        (ckpts / "v1-5-pruned-emaonly.safetensors").write_bytes(b"\0" * 16)
        (ckpts / "sd15" / "dreamy.ckpt").write_bytes(b"\0" * 16)
        sd_models.list_models()
        if load_model:
            sd_models.load_model(sd_models.checkpoints_list["sd15/dreamy.ckpt"])
        script_callbacks.clear_callbacks()
        script_callbacks.reported_exceptions.clear()
        modules.CALLS.clear()
        yield types.SimpleNamespace(root=root, models=models, lora_dir=models / "Lora", calls=modules.CALLS,
                                    shared=shared, sd_models=sd_models, paths=paths, script_callbacks=script_callbacks,
                                    forge=forge)
    finally:
        for p in added:
            while p in sys.path:
                sys.path.remove(p)
        _purge_stub_modules()
        _reset_extension_globals()
