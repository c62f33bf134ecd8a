"""Instant LoRA inside the AUTOMATIC1111 WebUI or WebUI Forge: the Host the tab and the REST routes
use there, the settings section, the tab itself, and stopping the worker on a UI reload.

What differs from the standalone app (`host.Host`):
- checkpoints are the WebUI's own list (`sd_models.checkpoints_list`), the loaded one first;
- LoRAs go to the Lora extension's folder (`cmd_opts.lora_dir`, else `<models>/Lora`);
- around a training: wait for a running generation and hold the WebUI's queue lock (txt2img waits,
  as with the WebUI's own Train tab), show the job in `shared.state`, and move the WebUI's model
  off the GPU and back (A1111: `unload_model_weights` / `send_model_to_device`; Forge: its memory
  manager frees the model and the next generation loads it again); all undone after success,
  failure and cancel;
- the Interrupt button (`shared.state.interrupted`, also `/sdapi/v1/interrupt`) cancels the run at
  the next step.

Imports of the WebUI's `modules` happen when a WebUIHost is made (inside the WebUI), never at import.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ...train.events import RunStopped
from .. import gpu
from ..standalone import Host
from .progress import WebUIProgressSink
from .settings import OPT_KEEP_ON_GPU, OPT_PRESET, OPT_SAMPLE_EVERY, OPT_SAMPLE_PROMPTS, opt as _opt

LOCK_POLL_S = 0.2


def detect_flavor() -> tuple[str, object]:
    """("forge", its memory-management module or None) on WebUI Forge, ("a1111", None) otherwise.
    Forge ships the `modules_forge` package; its memory manager is `backend.memory_management`
    (Forge 2) or `ldm_patched.modules.model_management` (Forge before August 2024)."""
    if importlib.util.find_spec("modules_forge") is None:
        return "a1111", None
    for name in ("backend.memory_management", "ldm_patched.modules.model_management"):
        try:
            module = importlib.import_module(name)
        except Exception:
            continue
        if hasattr(module, "unload_all_models"):
            return "forge", module
    return "forge", None


class WebUIHost(Host):
    """The WebUI's folders, checkpoints, VRAM hand-off and progress; see the module docstring."""

    def __init__(self, job=None):
        from modules import paths, sd_models, shared

        self.shared, self.sd_models, self.paths = shared, sd_models, paths
        self.flavor, self.memory = detect_flavor()
        self.name = "forge" if self.flavor == "forge" else "webui"
        self.webui_root = Path(paths.script_path)
        self.data_dir = Path(getattr(paths, "data_path", paths.script_path)) / "instant_lora"
        self._job = job
        self._listed_once = False
        self._reset_handoff()

    def _reset_handoff(self):
        self._active = False  # past the queue lock: the trainer may have used the GPU
        self._lock = None  # the WebUI's queue lock while we hold it
        self._state_begun = False
        self._moved_model = None  # A1111: the model we sent to the CPU
        self._forge_unloaded = False

    @property
    def job(self):
        if self._job is not None:
            return self._job
        from ...jobs import current_job

        return current_job()

    # ---- folders ---------------------------------------------------------------------------
    @property
    def models_dir(self) -> Path:
        return Path(self.paths.models_path) / "Stable-diffusion"

    @property
    def lora_dir(self) -> Path:
        """The Lora extension's folder (its preload adds --lora-dir), else <models>/Lora."""
        configured = getattr(self.shared.cmd_opts, "lora_dir", None)
        return Path(configured) if configured else Path(self.paths.models_path) / "Lora"

    # ---- checkpoints ---------------------------------------------------------------------------
    def _titles(self) -> list[str]:
        sd = self.sd_models
        try:
            tiles = getattr(sd, "checkpoint_tiles", None)
            return list(tiles()) if tiles else list(sd.checkpoints_list)
        except Exception:
            return list(getattr(sd, "checkpoints_list", {}) or {})

    def list_checkpoints(self) -> list[str]:
        """The WebUI's checkpoint titles. The first call (building the tab) uses the WebUI's list as
        it is; later calls (the Refresh button) rescan the folders as the WebUI's own refresh does."""
        if self._listed_once:
            try:
                self.sd_models.list_models()
            except Exception as e:
                print(f"[Instant LoRA] could not rescan the checkpoints: {e}", file=sys.stderr)
        self._listed_once = True
        return self._titles()

    def loaded_checkpoint(self) -> str | None:
        """Title of the checkpoint the WebUI has loaded, without loading one (shared.sd_model would)."""
        model = getattr(getattr(self.sd_models, "model_data", None), "sd_model", None)
        info = getattr(model, "sd_checkpoint_info", None)
        return getattr(info, "title", None)

    def default_checkpoint(self) -> str | None:
        titles = self._titles()
        loaded = self.loaded_checkpoint()
        if loaded in titles:
            return loaded
        wanted = _opt("sd_model_checkpoint")
        if wanted:
            match = self._match(wanted)
            if match is not None and match.title in titles:
                return match.title
        return titles[0] if titles else None

    def _match(self, label: str):
        info = (getattr(self.sd_models, "checkpoints_list", {}) or {}).get(label)
        if info is None:
            try:
                info = self.sd_models.get_closet_checkpoint_match(label)
            except Exception:
                info = None
        return info

    def knows_checkpoint(self, label: str) -> bool:
        return bool(label) and self._match(label) is not None

    def checkpoint_path(self, label: str) -> str:
        info = self._match(label) if label else None
        return info.filename if info is not None else super().checkpoint_path(label)

    # ---- around a training -------------------------------------------------------------------
    def before_training(self, control=None) -> None:
        """Runs in the worker before the trainer loads anything. Waits for a running generation,
        then holds the queue lock, begins the job in shared.state and frees the GPU."""
        self._reset_handoff()
        self._control = control
        self._acquire_queue_lock()
        self._active = True
        state = self.shared.state
        name = self.job.snapshot().name
        state.begin(job=f"Instant LoRA: {name}")
        self._state_begun = True
        state.job_count, state.job_no, state.sampling_step, state.sampling_steps = 1, 0, 0, 0
        state.textinfo = f"Instant LoRA: preparing {name}"
        if not _opt(OPT_KEEP_ON_GPU, False):
            self._offload()

    def after_training(self) -> None:
        """Runs in the worker after success, failure and cancel; undoes what before_training did
        (also a partial before_training), then lets the WebUI generate again."""
        if not self._active:
            return  # cancelled (or failed) before it got the GPU: nothing to undo
        try:
            gc.collect()  # the trainer's models are gone: give their VRAM back first
            self._torch_gc()
            if self._forge_unloaded and self.memory is not None and hasattr(self.memory, "soft_empty_cache"):
                self.memory.soft_empty_cache()  # Forge loads the model again at the next generation
            if self._moved_model is not None:
                self.sd_models.send_model_to_device(self._moved_model)
        finally:
            self._moved_model, self._forge_unloaded, self._active = None, False, False
            try:
                if self._state_begun:
                    self.shared.state.end()
            finally:
                self._state_begun = False
                lock, self._lock = self._lock, None
                if lock is not None:
                    lock.release()

    def _offload(self) -> None:
        if self.flavor == "forge":
            if self.memory is not None:
                self.memory.unload_all_models()
                if hasattr(self.memory, "soft_empty_cache"):
                    self.memory.soft_empty_cache()
            else:
                self.sd_models.unload_model_weights()
            self._forge_unloaded = True
            return
        model = getattr(self.sd_models.model_data, "sd_model", None)  # never shared.sd_model: it loads one
        if model is None:
            return  # nothing loaded, nothing to move
        self._moved_model = model  # first: a move that fails halfway is undone too
        self.sd_models.unload_model_weights(model)

    @staticmethod
    def _torch_gc() -> None:
        try:
            from modules import devices
        except Exception:
            return
        devices.torch_gc()

    def _acquire_queue_lock(self) -> None:
        try:
            from modules import call_queue

            lock = call_queue.queue_lock
        except Exception:
            return  # a WebUI without one

        def try_acquire():
            try:
                return lock.acquire(blocking=False)
            except TypeError:
                return lock.acquire(False)

        if not try_acquire():
            print("[Instant LoRA] waiting for the WebUI's current generation to finish...", file=sys.stderr)
            while not try_acquire():
                if self._cancel_requested():
                    raise RunStopped("waiting")
                time.sleep(LOCK_POLL_S)
        self._lock = lock

    def _cancel_requested(self) -> bool:
        control = getattr(self, "_control", None)
        return bool(control.stop_requested) if control is not None else bool(getattr(self.job, "cancel_requested", False))

    def stop_sources(self) -> list:
        """The Interrupt button (and /sdapi/v1/interrupt) stops the run through its control."""
        # Only once this run has begun in shared.state: an Interrupt meant for a generation the
        # run is still waiting behind must not cancel it (state.begin() clears the flag).
        return [lambda: self._state_begun and bool(getattr(self.shared.state, "interrupted", False))]

    def progress_sinks(self) -> list:
        return [WebUIProgressSink(self.shared.state, self.job)]

    @contextmanager
    def exclusive(self, job: str):
        """Hold the GPU (one owner per process), then wait for a running generation and hold the
        WebUI's queue (txt2img waits) with the job shown in shared.state: for captioning and test
        images, which share the GPU with it."""
        from modules import call_queue

        with gpu.hold(job), call_queue.queue_lock:
            self.shared.state.begin(job=job)
            try:
                yield
            finally:
                self.shared.state.end()

    # ---- the Test panel: the WebUI's own txt2img ----------------------------------------------
    def test_renderer(self, checkpoint_label: str):
        from .render import webui_session

        return gpu.holding("test images", webui_session(self, checkpoint_label))

    @property
    def grids_dir(self) -> Path:
        """The WebUI's txt2img grids folder (Settings > Paths for saving), where its image browsers look."""
        folder = _opt("outdir_grids", "") or _opt("outdir_txt2img_grids", "")
        if not folder:
            return self.data_dir / "grids"
        folder = Path(folder)
        return folder if folder.is_absolute() else self.webui_root / folder

    def extend_test_panel(self, gr, demo, cell_infotext) -> None:
        """Called by build_ui under the grid: "Send to txt2img" for the picked cell, through the
        WebUI's own paste (prompt, negative prompt, seed, sampler, steps, size, CFG, checkpoint)."""
        from ...ui.compat import js_kwargs

        send = gr.Button("Send cell to txt2img", elem_id="il_cell_to_txt2img")
        try:
            try:
                from modules import infotext_utils as paste
            except ImportError:  # before 1.8 the module had its old name
                from modules import generation_parameters_copypaste as paste
            paste.register_paste_params_button(paste.ParamBinding(paste_button=send, tabname="txt2img",
                                                                  source_text_component=cell_infotext))
        except Exception as e:  # a fork without it: the prompt alone, by script
            print(f"[Instant LoRA] the WebUI's paste is unavailable ({e}); sending the cell's prompt only", file=sys.stderr)
            send.click(fn=None, inputs=[cell_infotext], outputs=None, **js_kwargs(gr, "instantLoraSendInfotextToTxt2img"))

    # ---- settings the tab and the REST routes use ------------------------------------------
    def language(self) -> str:
        """The WebUI's Settings > User interface > Localization ("zh_TW" -> "zh-TW"; "None" -> "en").
        Changing it needs Reload UI, which builds the tab again in the new language."""
        from ...i18n import normalize

        return normalize(getattr(self.shared.opts, "localization", None))

    def request_defaults(self) -> dict:
        """The Settings' sample prompts, under what a request or its preset sets."""
        text, every = self.sample_defaults()
        return {"sample_prompt_text": text, "sample_every_n_steps": every} if text.strip() and every > 0 else {}

    def sample_defaults(self) -> tuple[str, int]:
        """(sample prompts, every N steps) from the settings; ("", 0) = no samples."""
        try:
            every = int(_opt(OPT_SAMPLE_EVERY, 0) or 0)
        except (TypeError, ValueError):
            every = 0
        return str(_opt(OPT_SAMPLE_PROMPTS, "") or ""), every

    def extend_ui(self, gr, demo, job) -> None:
        """Called by build_ui inside its Result section: the WebUI's own controls."""
        from ...presets import list_presets
        from ...ui.compat import js_kwargs

        by_id = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
        send = gr.Button("Send to txt2img", elem_id="il_send_to_txt2img")
        gr.Markdown("The Lora cards refresh by themselves when a training ends; the new card shows the trigger words "
                    "as activation text.", elem_id="il_webui_note")
        if "il_result_tag" in by_id:  # JS: append to the txt2img prompt, tell Gradio, switch tab
            send.click(fn=None, inputs=[by_id["il_result_tag"]], outputs=None, **js_kwargs(gr, "instantLoraSendToTxt2img"))

        preset = by_id.get("il_preset")
        if preset is not None:
            def default_preset():
                name = str(_opt(OPT_PRESET, "") or "")
                return gr.update(value=name) if name and name in list_presets(self.data_dir / "presets") else gr.update()

            demo.load(default_preset, None, [preset])
        prompts_box, every_box = by_id.get("il_sample_prompts"), by_id.get("il_sample_every")
        if prompts_box is not None and every_box is not None:
            def sample_defaults():
                text, every = self.sample_defaults()
                return (gr.update(value=text), gr.update(value=every)) if text else (gr.update(), gr.update())

            demo.load(sample_defaults, None, [prompts_box, every_box])
