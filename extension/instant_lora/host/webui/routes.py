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
import math
import secrets

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


REQUEST_KEYS = ("checkpoint", "preset", "overwrite")


def prepare(host, payload):
    """A request body through the one request path -> PreparedRun; ApiError(4xx) when it cannot run."""
    from ...request import RequestError, RunRequest, prepare_run

    if not isinstance(payload, dict):
        raise ApiError(400, "the body must be a JSON object of training settings")
    values = dict(payload)
    overwrite = values.pop("overwrite", False)
    if not isinstance(overwrite, bool):
        raise ApiError(422, "overwrite must be true or false (a JSON boolean)")
    checkpoint, preset = values.pop("checkpoint", None), values.pop("preset", None)
    try:
        return prepare_run(RunRequest(front="api", values=values, preset=preset, checkpoint=checkpoint, overwrite=overwrite),
                           host)
    except RequestError as e:
        message = _error(e) + (' (or pass "overwrite": true)' if e.status == 409 else "")
        raise ApiError(e.status, message) from e
    except InstantLoraError as e:  # the dataset (empty, unreadable) or the output folder
        raise ApiError(422, _error(e)) from e


def start_training(host, job, payload) -> dict:
    snap = job.snapshot()
    if snap.running:
        raise ApiError(409, f"a training is already running: '{snap.name}' at step {snap.step}/{snap.total}")
    prepared = prepare(host, payload)
    try:
        job.start(prepared, host=host)
    except InstantLoraError as e:
        raise ApiError(409, _error(e)) from e
    plan = prepared.plan
    return {"started": prepared.name, "output": str(plan.final_path()), "steps": plan.max_train_steps,
            "epochs": plan.num_epochs, "saves": [s.stem for s in plan.saves], "seed": plan.seed}


def progress(job) -> dict:
    """The job's state for scripts: never fails (a NaN loss is null), the failure's message included."""
    from ...jobs import finite_or_none
    from ...sample.tags import result_prompt

    snap = job.snapshot()
    prompt = result_prompt(snap.result_path, snap.trigger_words) if snap.result_path else None
    return {"state": snap.state, "stage": snap.stage, "name": snap.name, "step": snap.step, "total": snap.total,
            "epoch": snap.epoch, "loss": finite_or_none(snap.loss), "avg_loss": finite_or_none(snap.avg_loss),
            "lr": finite_or_none(snap.lr), "seconds": round(snap.seconds, 2), "it_per_s": round(snap.it_per_s, 4),
            "eta_s": None if snap.eta_s is None else round(snap.eta_s, 1), "saved": snap.saved,
            "result_path": snap.result_path, "prompt": prompt, "error": snap.error,
            "samples": [{"caption": c, "path": p} for c, p in snap.samples], "log": snap.log[-20:],
            "validation": [{"step": s, "loss": v, "train_avg_loss": t} for s, v, t in snap.validation]}


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
    from ...sample.settings import MAX_SIDE, GenerationSettings
    from ...ui import testing

    if not isinstance(payload, dict):
        raise ApiError(400, "the body must be a JSON object, e.g. {\"run\": \"my_style\", \"prompt\": \"a photo of mystyle\"}")
    unknown = [k for k in payload if k not in GRID_KEYS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], GRID_KEYS, n=1)
        raise ApiError(422, f"unknown key '{unknown[0]}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                       + f"; keys: {', '.join(GRID_KEYS)}")
    def number(key, default, kind, low, high):
        value = payload.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not math.isfinite(value)):
            raise ApiError(422, f"{key} must be a number (got {value!r:.40})")
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ApiError(422, f"{key} must be a whole number (got {value})")
        if not low <= value <= high:
            raise ApiError(422, f"{key} = {value:.6g} is out of range: allowed {low} to {high}")
        return kind(value)

    def text(key, default=""):
        value = payload.get(key, default)
        if value is None:
            return default
        if not isinstance(value, str) or len(value) > 4096:
            raise ApiError(422, f"{key} must be text (at most 4096 characters)")
        return value

    run = text("run").strip()
    if not run:
        raise ApiError(422, "run is required: the output name of a training, e.g. \"my_style\"")
    weights = payload.get("weights", "0, 0.4, 0.7, 1")
    if not isinstance(weights, (str, list)) or (isinstance(weights, list) and len(weights) > 32):
        raise ApiError(422, "weights must be a list of numbers or a text like \"0, 0.5, 1\" (at most 32)")
    defaults = GenerationSettings()
    seed = number("seed", -1, int, -1, 2**32 - 1)
    try:
        settings = GenerationSettings(
            negative_prompt=text("negative_prompt"), steps=number("steps", defaults.steps, int, 1, 1000),
            cfg_scale=number("cfg_scale", defaults.cfg_scale, float, 0, 100), sampler=text("sampler", defaults.sampler),
            width=number("width", defaults.width, int, 8, MAX_SIDE), height=number("height", defaults.height, int, 8, MAX_SIDE)).checked()
        parsed_weights = testing.parse_weights(weights)
    except InstantLoraError as e:
        raise ApiError(422, _error(e)) from e
    checkpoint = text("checkpoint") or host.default_checkpoint()
    if checkpoint and not host.knows_checkpoint(checkpoint):
        raise ApiError(422, f"checkpoint '{checkpoint:.120}' is not a checkpoint of this server (GET {PREFIX}/checkpoints lists them)")
    snap = job.snapshot()
    if snap.running:
        raise ApiError(409, f"a training is running ('{snap.name}' at step {snap.step}/{snap.total}): ask again when it has finished")
    try:
        grid = testing.generate_grid(job, host, checkpoint, run, text("prompt"), parsed_weights, seed, settings)
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
