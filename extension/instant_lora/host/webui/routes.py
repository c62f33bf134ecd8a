"""REST routes on the WebUI's FastAPI app (registered from on_app_started), under /instant-lora/v1:

    POST /instant-lora/v1/train      start a training from a JSON config (TrainConfig keys, plus
                                     "checkpoint": a WebUI checkpoint title, "preset": a preset name,
                                     "overwrite": replace an existing LoRA of that name)
    GET  /instant-lora/v1/progress   the running (or last) job: state, step, loss, ETA, files, log
    POST /instant-lora/v1/cancel     stop after the current step and save
    GET  /instant-lora/v1/loras      LoRAs in the WebUI's Lora folder trained here (?all=true: all)
    GET  /instant-lora/v1/checkpoints  the WebUI's checkpoints and the default one
    POST /instant-lora/v1/grid       the weight x epoch grid of a run through the WebUI's txt2img:
                                     {"run", "prompt", "weights", "seed", "steps", "cfg_scale",
                                     "sampler", "width", "height", "negative_prompt", "checkpoint"}
                                     -> the PNG (base64, as the WebUI's API), its path, each cell's infotext

The LoRA always goes to the WebUI's Lora folder. When the WebUI runs with --api-auth, these routes
ask for the same credentials. The handlers are plain functions (`start_training`, `progress`, ...)
so they are tested without a server. (No `from __future__ import annotations` here: FastAPI reads the
route functions' annotations at runtime.)
"""

import json
import secrets
from pathlib import Path

from ...errors import InstantLoraError

PREFIX = "/instant-lora/v1"
HOST_SET_KEYS = ("output_dir", "logging_dir", "lora_dir", "webui_dir")


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _error(e: InstantLoraError) -> str:
    return e.message + (f" ({e.hint})" if e.hint else "")


def build_config(host, payload: dict):
    """(TrainConfig, explicit keys) for a request body; ApiError(4xx) when it cannot run."""
    from ...config import TrainConfig, is_safe_name
    from ...presets import list_presets, load_preset
    from ...ui.actions import output_name_problem

    if not isinstance(payload, dict):
        raise ApiError(400, "the body must be a JSON object of training settings")
    payload = dict(payload)
    checkpoint = payload.pop("checkpoint", None)
    preset = payload.pop("preset", None)
    overwrite = bool(payload.pop("overwrite", False))
    fixed = [k for k in HOST_SET_KEYS if k in payload]
    if fixed:
        raise ApiError(400, f"{', '.join(fixed)} cannot be set here: LoRAs go to the WebUI's Lora folder {host.lora_dir}")
    values: dict = {}
    if preset:
        presets = list_presets(host.data_dir / "presets")
        if preset not in presets:
            raise ApiError(400, f"unknown preset '{preset}'; presets: {', '.join(presets)}")
        try:
            values.update(load_preset(presets[preset])[0])
        except InstantLoraError as e:
            raise ApiError(400, _error(e)) from e
    values.update(payload)
    if not values.get("output_name"):
        raise ApiError(400, "output_name is required: the LoRA's file name, e.g. my_style")
    if not is_safe_name(str(values["output_name"])):
        raise ApiError(422, f"output_name '{values['output_name']}' must be a plain file name (no folders, no ..), e.g. my_style")
    if not values.get("train_data_dir"):
        raise ApiError(400, "train_data_dir is required: a folder on the WebUI's machine with the training images")
    if not Path(str(values["train_data_dir"])).expanduser().is_dir():
        raise ApiError(400, f"train_data_dir {values['train_data_dir']} is not a folder on the WebUI's machine")
    if not values.get("pretrained_model_name_or_path"):
        label = checkpoint or host.default_checkpoint()
        if not label:
            raise ApiError(400, "no checkpoint: pass \"checkpoint\" (a title from GET /instant-lora/v1/checkpoints)")
        values["pretrained_model_name_or_path"] = host.checkpoint_path(label)
    values.update(output_dir=str(host.lora_dir), logging_dir=str(host.data_dir / "logs"))
    try:
        config = TrainConfig.from_dict(values, source="request")
        config.check()
    except InstantLoraError as e:
        raise ApiError(422, _error(e)) from e
    problem = output_name_problem(config.output_name, host.lora_dir, overwrite)
    if problem:
        exists = "already exists" in problem
        raise ApiError(409 if exists else 400, problem + (' (or pass "overwrite": true)' if exists else ""))
    # The Settings' sample prompts, unless the request or its preset set its own; written only now
    # that the request is valid, with the Train section's own writer.
    prompts, every = host.sample_defaults() if hasattr(host, "sample_defaults") else ("", 0)
    if not any(k.startswith("sample_") for k in values):
        from ...ui.actions import sample_prompt_file

        path, every = sample_prompt_file(prompts, every, host.data_dir, config.output_name)
        if path:
            config.sample_prompts, config.sample_every_n_steps = path, every
            values.update(sample_prompts=path, sample_every_n_steps=every)
    return config, set(values)


def start_training(host, job, payload: dict) -> dict:
    snap = job.snapshot()
    if snap.running:
        raise ApiError(409, f"a training is already running: '{snap.name}' at step {snap.step}/{snap.total}")
    config, explicit = build_config(host, payload)
    try:
        job.start(config, explicit=explicit, before=host.before_training, after=host.after_training,
                  extra_sinks=host.progress_sinks())
    except InstantLoraError as e:
        raise ApiError(409, _error(e)) from e
    return {"started": config.output_name, "output": str(Path(host.lora_dir) / f"{config.output_name}.safetensors")}


def progress(job) -> dict:
    from ...ui.actions import result_markdown

    snap = job.snapshot()
    _, prompt = result_markdown(snap, trigger_words=snap.trigger_words)
    return {"state": snap.state, "name": snap.name, "step": snap.step, "total": snap.total, "epoch": snap.epoch,
            "loss": snap.loss, "avg_loss": snap.avg_loss, "lr": snap.lr, "seconds": round(snap.seconds, 2),
            "it_per_s": round(snap.it_per_s, 4), "eta_s": None if snap.eta_s is None else round(snap.eta_s, 1),
            "saved": snap.saved, "result_path": snap.result_path, "prompt": prompt or None, "error": snap.error,
            "samples": [{"caption": c, "path": p} for c, p in snap.samples], "log": snap.log[-20:]}


def cancel(job) -> dict:
    return {"cancelled": job.cancel()}


def list_loras(host, include_all: bool = False) -> list[dict]:
    from ...sample.lora_files import read_metadata
    from ...train.metadata import TRAINER_MARK

    out = []
    for path in host.lora_files():
        try:
            meta = read_metadata(path)
        except InstantLoraError:
            meta = {}  # half-copied or damaged: listed with ?all=true, never as ours
        ours = str(meta.get("ss_sd_scripts_commit_hash", "")).startswith(TRAINER_MARK)
        if not ours and not include_all:
            continue
        side = {}
        sidecar = path.with_suffix(".json")
        if sidecar.is_file():
            try:
                side = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                side = {}
        words = str(side.get("activation text", "") or "")
        weight = side.get("preferred weight") or 0.8
        preview = path.with_name(path.stem + ".preview.png")
        stat = path.stat()
        out.append({"name": path.stem, "path": str(path), "size_mb": round(stat.st_size / 2**20, 2), "modified": stat.st_mtime,
                    "trained_here": ours, "base_model": meta.get("ss_base_model_version"),
                    "sd_version": side.get("sd version"), "activation_text": words, "preferred_weight": weight,
                    "preview": str(preview) if preview.is_file() else None,
                    "prompt": f"<lora:{path.stem}:{weight:g}>" + (f" {words}" if words else "")})
    return out


GRID_KEYS = ("run", "prompt", "weights", "seed", "steps", "cfg_scale", "sampler", "width", "height", "negative_prompt",
             "checkpoint")


def make_grid(host, job, payload: dict) -> dict:
    """The Test panel's grid for a script: same rendering, same grids folder."""
    import base64
    import difflib

    from ...sample.infotext import png_bytes
    from ...sample.settings import GenerationSettings
    from ...ui import testing

    if not isinstance(payload, dict):
        raise ApiError(400, "the body must be a JSON object, e.g. {\"run\": \"my_style\", \"prompt\": \"a photo of mystyle\"}")
    unknown = [k for k in payload if k not in GRID_KEYS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], GRID_KEYS, n=1)
        raise ApiError(422, f"unknown key '{unknown[0]}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                       + f"; keys: {', '.join(GRID_KEYS)}")
    run = str(payload.get("run") or "").strip()
    if not run:
        raise ApiError(400, "run is required: the output name of a training, e.g. \"my_style\"")
    weights = payload.get("weights", "0, 0.4, 0.7, 1")
    defaults = GenerationSettings()
    try:
        settings = GenerationSettings(
            negative_prompt=str(payload.get("negative_prompt", "") or ""), steps=int(payload.get("steps", defaults.steps)),
            cfg_scale=float(payload.get("cfg_scale", defaults.cfg_scale)), sampler=str(payload.get("sampler", defaults.sampler)),
            width=int(payload.get("width", defaults.width)), height=int(payload.get("height", defaults.height))).checked()
        int(payload.get("seed", -1))
    except (TypeError, ValueError) as e:
        raise ApiError(422, f"steps, cfg_scale, width, height and seed must be numbers ({e})") from e
    except InstantLoraError as e:
        raise ApiError(422, _error(e)) from e
    snap = job.snapshot()
    if snap.running:
        raise ApiError(409, f"a training is running ('{snap.name}' at step {snap.step}/{snap.total}): ask again when it has finished")
    try:
        seed = int(payload.get("seed", -1))
        grid = testing.generate_grid(job, host, payload.get("checkpoint") or host.default_checkpoint(), run,
                                     str(payload.get("prompt", "") or ""), testing.parse_weights(weights), seed, settings)
    except InstantLoraError as e:
        raise ApiError(422, _error(e)) from e
    cells = [[{"weight": w, "prompt": grid.prompts[r][c], "infotext": grid.cell_infotext(r, c)} for c, w in enumerate(grid.weights)]
             for r in range(len(grid.rows))]
    return {"path": str(grid.path), "seed": grid.seed, "rows": grid.row_labels, "weights": grid.weights, "cells": cells,
            "info": grid.infotext, "image": base64.b64encode(png_bytes(grid.image, grid.infotext)).decode("ascii")}


def checkpoints(host) -> dict:
    return {"checkpoints": host.list_checkpoints(), "default": host.default_checkpoint()}


def _credentials(host) -> dict:
    """--api-auth "user:pass,user2:pass2" as the WebUI's own API reads it."""
    raw = getattr(getattr(host, "shared", None) and host.shared.cmd_opts, "api_auth", None)
    if not raw:
        return {}
    pairs = (item.split(":", 1) for item in str(raw).strip('"').replace("\n", "").split(",") if ":" in item)
    return {user: password for user, password in pairs}


def register(app, host, job) -> bool:
    """Add the routes to a FastAPI app (once per app). Returns False when they are already there."""
    from fastapi import Depends, HTTPException, Request
    from fastapi.responses import JSONResponse
    from fastapi.security import HTTPBasic, HTTPBasicCredentials

    if any(getattr(r, "path", "") == f"{PREFIX}/progress" for r in app.routes):
        return False
    basic = HTTPBasic(auto_error=False)

    def auth(credentials: HTTPBasicCredentials = Depends(basic)):
        users = _credentials(host)
        if not users:
            return True
        if credentials is not None and credentials.username in users and secrets.compare_digest(
                credentials.password.encode(), users[credentials.username].encode()):
            return True
        raise HTTPException(status_code=401, detail="Incorrect username or password", headers={"WWW-Authenticate": "Basic"})

    deps = [Depends(auth)]

    def fail(e: ApiError):
        return JSONResponse(status_code=e.status, content={"error": e.message})

    async def train_route(request: Request):
        try:
            payload = await request.json()
        except ValueError:
            return fail(ApiError(400, "the body is not JSON"))
        try:
            return start_training(host, job, payload)
        except ApiError as e:
            return fail(e)

    def progress_route():
        return progress(job)

    def cancel_route():
        return cancel(job)

    def loras_route(all: bool = False):  # noqa: A002 -- the query parameter's name
        return {"loras": list_loras(host, include_all=all)}

    def checkpoints_route():
        return checkpoints(host)

    async def grid_route(request: Request):
        try:
            payload = await request.json()
        except ValueError:
            return fail(ApiError(400, "the body is not JSON"))
        from starlette.concurrency import run_in_threadpool

        try:  # the images take a while: off the event loop
            return await run_in_threadpool(make_grid, host, job, payload)
        except ApiError as e:
            return fail(e)

    tags = ["Instant LoRA"]
    app.add_api_route(f"{PREFIX}/train", train_route, methods=["POST"], dependencies=deps, tags=tags)
    app.add_api_route(f"{PREFIX}/progress", progress_route, methods=["GET"], dependencies=deps, tags=tags)
    app.add_api_route(f"{PREFIX}/cancel", cancel_route, methods=["POST"], dependencies=deps, tags=tags)
    app.add_api_route(f"{PREFIX}/loras", loras_route, methods=["GET"], dependencies=deps, tags=tags)
    app.add_api_route(f"{PREFIX}/checkpoints", checkpoints_route, methods=["GET"], dependencies=deps, tags=tags)
    app.add_api_route(f"{PREFIX}/grid", grid_route, methods=["POST"], dependencies=deps, tags=tags)
    return True
