"""One door for every run: what a user asked for -> a validated TrainConfig and its plan.

The command line, the app's Start button and REST's /train all call `prepare_run`. It layers the
values in one fixed order and no other:

    the front end's defaults -> the host's defaults (the WebUI's Settings) -> the preset
    -> the user's values -> what the host owns (the Lora folder, the log folder, the checkpoint)

validates them once (types, ranges, names, folders) before torch or diffusers are imported, scans
the dataset, and computes the plan. Nothing changes the config afterwards; the loop walks the plan.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import TrainConfig
from .config_values import coerce_values
from .errors import InstantLoraError, UnsupportedModel

FRONTS = ("cli", "app", "api", "config")
# The app and REST train with the same settings when the user leaves a field alone. Where the
# reference's defaults are a trap for a first run (rank 4, alpha 1, lr 2e-6), these learn.
APP_DEFAULTS = {
    "network_dim": 16, "network_alpha": 8.0, "learning_rate": 1e-4, "max_train_epochs": 10, "cache_latents": True,
    "mixed_precision": "fp16", "save_every_n_epochs": 2, "enable_bucket": True,
}
FRONT_DEFAULTS = {"cli": {}, "config": {}, "app": APP_DEFAULTS, "api": APP_DEFAULTS}
HOST_OWNED = ("output_dir", "logging_dir", "lora_dir", "webui_dir")
# A request from the app or REST names no file the server would read: the base model is a
# checkpoint of the host's list, sample prompts are text, a start LoRA or a state is a name in the
# Lora folder.
NOT_FROM_REQUESTS = {
    "pretrained_model_name_or_path": 'pass "checkpoint": a title from the checkpoint list',
    "model_config_dir": "the host's bundled configs are used",
    "sample_prompts": "send the prompts themselves as text",
    "dataset_config": "send the folders and options as fields (train_data_dir, reg_data_dir, ...)",
}
CLIP_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class RequestError(InstantLoraError):
    """Everything wrong with a request at once: (field, message) pairs and an HTTP status."""

    def __init__(self, problems: list[tuple[str, str]], status: int = 422, hint: str | None = None):
        self.problems = list(problems)
        self.status = status
        lines = "; ".join(f"{k} {m}" if k else m for k, m in self.problems)
        super().__init__(lines, hint=hint)

    @property
    def fields(self) -> list[str]:
        return [k for k, _ in self.problems]


@dataclass(frozen=True)
class RunRequest:
    front: str  # "cli" | "app" | "api" | "config"
    values: dict = field(default_factory=dict)  # the user's values, as they came
    preset: str | None = None
    checkpoint: str | None = None  # a label of the host's checkpoint list
    overwrite: bool = False  # replace an existing LoRA of that name (app and REST)
    explicit: frozenset = frozenset()  # command line: the flags the user gave (for the reference's warnings)
    find_model: bool = False  # command line: a bare model name is looked up among the checkpoints found (model_sources)
    processes: int = 1  # the app's GPUs field: the run starts this many processes (train/launch.py)


@dataclass(frozen=True)
class PreparedRun:
    config: TrainConfig
    plan: object  # train.plan.TrainPlan
    scan: object  # dataset.DatasetScan: the training images (every training folder)
    data: object = None  # train.data.TrainingData: buckets, reg balance, validation split, batches

    @property
    def name(self) -> str:
        return self.plan.output_name


def _layer(request: RunRequest, host) -> tuple[dict, list, set]:
    """The merged values, the problems found while merging, and the keys a preset or the user
    chose (the rest are front-end or host defaults, which a model family's defaults replace)."""
    from .presets import list_presets, load_preset

    problems: list[tuple[str, str]] = []
    chosen: set = set()
    if request.front not in FRONTS:
        raise ValueError(f"unknown front end {request.front!r}")
    merged = dict(FRONT_DEFAULTS[request.front])
    if host is not None and request.front in ("app", "api"):
        merged.update(host.request_defaults())
    if request.preset not in (None, ""):
        if not isinstance(request.preset, str):
            problems.append(("preset", "must be the name of a preset (text)"))
        else:
            presets = list_presets(host.data_dir / "presets" if host is not None else None)
            if request.preset not in presets:
                problems.append(("preset", f"'{request.preset:.80}' is unknown; presets: {', '.join(presets)}"))
            else:
                try:
                    preset_values = load_preset(presets[request.preset])[0]
                    merged.update(preset_values)
                    chosen.update(preset_values)
                except InstantLoraError as e:
                    problems.append(("preset", e.message))
    user = dict(request.values)
    if request.front in ("app", "api"):
        for key in HOST_OWNED:
            if key in user:
                where = host.lora_dir if host is not None else "the host's Lora folder"
                problems.append((key, f"cannot be set here: LoRAs go to {where}"))
                user.pop(key)
        if "sample_prompts" in user and "sample_prompt_text" not in user:
            user["sample_prompt_text"] = user.pop("sample_prompts")  # REST's sample_prompts is prompt text
        for key, why in NOT_FROM_REQUESTS.items():
            if user.get(key) not in (None, ""):
                problems.append((key, f"cannot be set in a request: {why}"))
            user.pop(key, None)
    if any(k.startswith("sample_") for k in user):  # the user's own sampling replaces the host's default
        for k in [k for k in merged if k.startswith("sample_") and k not in user]:
            merged.pop(k)
    coerced, type_problems = coerce_values(user)
    problems += type_problems
    merged.update(coerced)
    _keep_trigger_words_first(merged, set(coerced))
    return merged, problems, chosen | set(coerced)


def model_family_of(values: dict, request: RunRequest, problems: list):
    """The base model's family read from its file's header (no torch), or None when it cannot be
    told before loading (a hub id, a missing or unreadable file: loading says what is wrong). A
    checkpoint of a kind not trained here (an SDXL refiner, SD3, FLUX, inpainting) is a problem."""
    from .model_family import detect_family

    source = str(values.get("pretrained_model_name_or_path") or "")
    path = Path(source).expanduser()
    if not source or not (path.is_file() or path.is_dir()):
        return None
    try:
        return detect_family(path)
    except UnsupportedModel as e:
        problems.append(("checkpoint" if request.checkpoint else "pretrained_model_name_or_path", str(e)))
    except (InstantLoraError, OSError, ValueError):
        pass
    return None


def _family_defaults(values: dict, chosen: set, family) -> None:
    """What a family trains at unless the preset or the user said otherwise: SDXL at 1024 px with
    buckets up to 2048 and its text encoders frozen (the reference's SDXL examples), SD2 768-v at
    768 px."""
    if family is None:
        return
    if family.name == "sdxl" and not chosen & {"network_train_unet_only", "text_encoder_lr", "text_encoder_lr2"}:
        # The reference's advice for SDXL LoRAs: UNet only, both encoders' outputs cached (less
        # memory, faster); a text-encoder learning rate or the setting itself says otherwise.
        values["network_train_unet_only"] = True
    size = family.default_resolution
    if "resolution" not in chosen and size != 512:
        values["resolution"] = f"{size},{size}"
        if "max_bucket_reso" not in chosen:
            values["max_bucket_reso"] = max(int(values.get("max_bucket_reso") or 1024), 2 * size if size >= 1024 else 1024)


def _keep_trigger_words_first(values: dict, given: set) -> None:
    """Shuffling or dropping tags must not move the trigger words (they start every caption the
    captioner writes): keep_tokens covers them unless the user chose keep_tokens or a separator."""
    trigger = values.get("trigger_words")
    spread = values.get("shuffle_caption") or values.get("caption_tag_dropout_rate")
    if not (trigger and spread) or "keep_tokens" in given or values.get("keep_tokens_separator"):
        return
    from .captions import trigger_keep_tokens

    values["keep_tokens"] = max(int(values.get("keep_tokens") or 0),
                                trigger_keep_tokens(trigger, values.get("caption_separator") or ","))


def _host_owned(request: RunRequest, host, values: dict, problems: list) -> None:
    """The values only the host sets: folders and the checkpoint behind a label."""
    if host is None or request.front not in ("app", "api"):
        return
    values["output_dir"] = str(host.lora_dir)
    values["logging_dir"] = str(Path(host.data_dir) / "logs")
    label = request.checkpoint
    if label is not None and not isinstance(label, str):
        problems.append(("checkpoint", "must be a checkpoint title (text)"))
        return
    label = label or host.default_checkpoint()
    if not label:
        problems.append(("checkpoint", f"no base model: put an SD1.x, SD2.x or SDXL checkpoint into {host.models_dir}, or pass one"))
    elif request.front == "api" and not host.knows_checkpoint(label):
        problems.append(("checkpoint", f"'{label:.120}' is not a checkpoint of this server (GET /instant-lora/v1/checkpoints lists them)"))
    else:
        values["pretrained_model_name_or_path"] = host.checkpoint_path(label)
    for key, suffix in (("network_weights", ".safetensors"), ("resume", "")):
        name = values.get(key)
        if name:  # a name in the Lora folder, never a path the server would read
            from .config import name_problem

            stem = name[: -len(suffix)] if suffix and name.endswith(suffix) else name
            problem = name_problem(stem)
            if problem:
                problems.append((key, f"must be the name of a {'LoRA' if suffix else 'state folder'} in the Lora folder: '{name:.80}' {problem}"))
            else:
                values[key] = str(Path(host.lora_dir) / f"{stem}{suffix}")
    clip = values.get("caption_clip_model")
    if clip and not CLIP_MODEL_NAME.match(clip):
        problems.append(("caption_clip_model", "must be an open_clip model name such as ViT-L-14 (no paths)"))


def _find_model(values: dict, problems: list) -> None:
    """--pretrained_model_name_or_path given as a bare name ('v1-5-pruned-emaonly') -> the path of
    that checkpoint among those found on this machine; a path or a hub id stays as it is."""
    from .model_sources import resolve_model_name

    name = values.get("pretrained_model_name_or_path")
    if isinstance(name, str) and name:
        try:
            values["pretrained_model_name_or_path"] = resolve_model_name(name, webui_dir=values.get("webui_dir"))
        except InstantLoraError as e:
            problems.append(("pretrained_model_name_or_path", f"{e.message}; {e.hint}"))


def _check_names(config: TrainConfig, request: RunRequest, problems: list) -> None:
    from .config import name_problem

    if request.front in ("app", "api") and not config.output_name:
        problems.append(("output_name", "is required: the LoRA's file name, e.g. my_style"))
    for key in ("log_prefix",):  # output_name: TrainConfig.validate
        value = getattr(config, key)
        if value:
            problem = name_problem(value)
            if problem:
                problems.append((key, f"'{value:.80}' {problem}"))


def _check_folders(config: TrainConfig, problems: list) -> None:
    """The dataset folder exists and is readable; named, and nothing else about the server said."""
    import os

    for key in ("train_data_dir", "reg_data_dir"):
        data = getattr(config, key)
        if not data or (key == "train_data_dir" and config.dataset_config):
            continue
        path = Path(data).expanduser()
        if not path.is_dir():
            problems.append((key, f"{data} is not a folder on this machine"
                             + (" (it is a file: pass the folder that holds it)" if path.is_file() else "")))
        elif not os.access(path, os.R_OK | os.X_OK):
            problems.append((key, f"{data} cannot be read (permission denied)"))


def _sample_prompts(config: TrainConfig, problems: list) -> tuple:
    """The prompts to render (text from the app or REST, a file from the command line). Prompts
    without a schedule render nothing; a schedule without prompts is refused by TrainConfig.validate."""
    from .train.sampling import parse_prompt_text, read_prompt_file, sampler_name

    prompts: list = []
    try:
        if config.sample_prompt_text:
            prompts = parse_prompt_text(config.sample_prompt_text)
        elif config.sample_prompts:
            prompts = read_prompt_file(config.sample_prompts)
        if prompts:
            sampler_name(config.sample_sampler)
    except InstantLoraError as e:
        problems.append(("sample_prompts", e.message))
    return tuple(prompts)


def output_conflict(folder: Path, name: str) -> str | None:
    if (Path(folder) / f"{name}.safetensors").exists():
        return f"{name}.safetensors already exists in {folder}: pick another name or allow replacing it"
    return None


def detect_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def validate_request(request: RunRequest, host=None) -> TrainConfig:
    """The config for a request, or RequestError listing every problem. No torch, no dataset scan."""
    values, problems, chosen = _layer(request, host)
    _host_owned(request, host, values, problems)
    if request.find_model:
        _find_model(values, problems)
    _family_defaults(values, chosen, model_family_of(values, request, problems))
    try:
        config = TrainConfig(**values)
    except TypeError as e:  # cannot happen for coerced values; a bug if it does
        raise RequestError([("", str(e))]) from e
    problems += [(k, m) for k, m in config.validate() if k not in {p for p, _ in problems}]
    _check_names(config, request, problems)
    _check_folders(config, problems)
    if problems:
        raise RequestError(_dedupe(problems))
    return config


def _dedupe(problems):
    seen, out = set(), []
    for p in problems:
        if p not in seen:
            seen.add(p)
            out.append(p)
    return out


def prepare_run(request: RunRequest, host=None, *, cuda: bool | None = None, scan=None, check_output: bool = True) -> PreparedRun:
    """The one path from a request to a run: validated config + dataset scan + plan."""
    from .output_paths import resolve_output_dir
    from .train.plan import make_plan

    config = validate_request(request, host)
    problems: list = []
    prompts = _sample_prompts(config, problems)
    if problems:
        raise RequestError(problems)
    if request.front in ("app", "api") and not request.overwrite and config.output_name:
        conflict = output_conflict(Path(config.output_dir), config.output_name)
        if conflict:
            raise RequestError([("output_name", conflict)], status=409)
    output_dir, why = resolve_output_dir(config.output_dir, config.lora_dir, config.webui_dir)
    replace_warning = None
    if request.front == "cli":  # never replaces a LoRA in the WebUI's Lora folder without --overwrite
        from .output_paths import is_webui_lora_folder, replace_check

        refusal, replace_warning = replace_check(output_dir, config.output_name or "last", overwrite=request.overwrite,
                                                 webui_lora=is_webui_lora_folder(output_dir, why, config.lora_dir),
                                                 named=bool(config.output_name))
        if refusal:
            raise RequestError([("output_name", refusal)], status=409)
    from .train.data import merge_scans, scan_parts, train_scans, training_data

    specs = dataset_specs_of(config)
    parts = scan_parts(specs, scan=scan)
    scan = merge_scans(train_scans(parts))
    if check_output:
        from .output_paths import check_writable

        check_writable(output_dir)
    from .train import distributed

    launched = distributed.world_size()  # started by torchrun / accelerate launch: one process per GPU
    processes = max(launched, int(request.processes or 1))  # or about to start them (the app's GPUs)
    seed = config.seed if config.seed is not None else random.randint(0, 2**31 - 1)
    if launched > 1:  # every process must draw the same data order, noise and validation split
        distributed.init(config.ddp_timeout, cuda=detect_cuda() if cuda is None else cuda)
        seed = distributed.agree(seed)
    data = training_data(config, seed=seed, parts=parts)
    data.warnings[:0] = list(getattr(specs, "warnings", ()))  # what the dataset TOML asked for that is not done
    name = config.output_name or "last"
    run_name = f"{config.log_prefix or ''}{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    family = model_family_of({"pretrained_model_name_or_path": config.pretrained_model_name_or_path}, request, [])
    plan = make_plan(config, cuda=detect_cuda() if cuda is None else cuda, data=data, family=family, processes=processes,
                     explicit=request.explicit, seed=seed, reference_warnings=request.front == "cli",
                     output_dir=str(output_dir), logging_dir=config.logging_dir or str(Path(output_dir) / "logs"),
                     run_name=run_name, sample_prompts=prompts)
    extra = [w for w in (replace_warning, _preset_mismatch(request, host, family)) if w]
    if extra:
        from dataclasses import replace

        plan = replace(plan, warnings=(*plan.warnings, *extra))
    return PreparedRun(config=config, plan=plan, scan=scan, data=data)


def _preset_mismatch(request: RunRequest, host, family) -> str | None:
    """A warning when a preset made for one family (e.g. "SDXL 12 GB") meets another's checkpoint."""
    if not request.preset or not isinstance(request.preset, str):
        return None
    from .presets import family_mismatch

    return family_mismatch(request.preset, family, host.data_dir / "presets" if host is not None else None)


def dataset_specs_of(config):
    """The dataset specs (flags or --dataset_config), problems as a RequestError naming the field."""
    from .dataset_config import dataset_specs

    try:
        return dataset_specs(config)
    except InstantLoraError as e:
        raise RequestError([("dataset_config" if config.dataset_config else "train_data_dir", e.message)], hint=e.hint) from e


def _inside(path, folder) -> bool:
    """Whether a problem's file or folder is `folder` or lies in it."""
    if not path or not folder:
        return False
    return Path(path).expanduser().resolve().is_relative_to(Path(folder).expanduser().resolve())


def preview_config(request: RunRequest, host) -> tuple[TrainConfig | None, object, list[tuple[str, str]]]:
    """(config, family, problems) for the UI's previews: the same layering and checks, without the
    parts a form being filled in cannot pass yet (no dataset, no checkpoint). The config is there
    even when values are wrong (the problems say which); None only when it cannot be made."""
    values, problems, chosen = _layer(request, host)
    _host_owned(request, host, values, problems)
    family = model_family_of(values, request, problems)
    _family_defaults(values, chosen, family)
    values.pop("sample_prompts", None)
    try:
        config = TrainConfig(**values)
    except TypeError as e:
        return None, family, [("", str(e))]
    problems += config.validate()
    _check_names(config, request, problems)
    pending = {"train_data_dir", "pretrained_model_name_or_path", "checkpoint", "sample_prompts"}
    return config, family, [p for p in _dedupe(problems) if p[0] not in pending]


@dataclass(frozen=True)
class Preview:
    """What a form being filled in would run: its config (None when it cannot be made), the
    checkpoint's family, the plan (None before a dataset is loaded or while a value it needs is
    wrong) and the problems. The live plan and the "What will be trained" panel share one."""
    config: TrainConfig | None
    family: object
    plan: object | None
    problems: list


def preview_plan(request: RunRequest, host, scan) -> tuple[object | None, list[tuple[str, str]]]:
    """(plan, problems) for the UI's live plan (see `preview`)."""
    made = preview(request, host, scan)
    return made.plan, made.problems


def preview(request: RunRequest, host, scan) -> Preview:
    """The request as the UI previews it: the same layering and checks as a run, without the parts
    a form being filled in cannot pass yet (no dataset, no checkpoint), no seed drawn, no file read."""
    from .train.plan import make_plan

    config, family, problems = preview_config(request, host)
    if config is None or scan is None or any(k in ("resolution", "train_batch_size", "gradient_accumulation_steps",
                                                   "max_train_steps", "max_train_epochs") for k, _ in problems):
        return Preview(config, family, None, problems)
    from .train.sampling import parse_prompt_text

    try:
        prompts = tuple(parse_prompt_text(config.sample_prompt_text or ""))
    except InstantLoraError as e:
        problems.append(("sample_prompts", e.message))
        prompts = ()
    data = None
    try:
        from .train.data import scan_parts, training_data

        parts = scan_parts(dataset_specs_of(config), scan=scan, check_images=False)
        data = training_data(config, seed=config.seed or 0, parts=parts)
    except InstantLoraError as e:
        field = "reg_data_dir" if _inside(e.path, config.reg_data_dir) else (
            "validation_split" if "validation_split" in e.message else "train_data_dir")
        problems.append((field, e.message))
    except ValueError:
        pass  # a value the form is still being typed into (its problem is listed already): the plan without buckets
    if data is None:
        plan = make_plan(config, len(scan.items), scan.num_train_images, cuda=detect_cuda(), seed=config.seed,
                         reference_warnings=False, output_dir=config.output_dir, sample_prompts=prompts, family=family)
    else:
        plan = make_plan(config, cuda=detect_cuda(), seed=config.seed, data=data, family=family,
                         processes=max(1, int(request.processes or 1)),
                         reference_warnings=False, output_dir=config.output_dir, sample_prompts=prompts)
    mismatch = _preset_mismatch(request, host, family)
    if mismatch and plan is not None:
        from dataclasses import replace

        plan = replace(plan, warnings=(*plan.warnings, mismatch))
    return Preview(config, family, plan, problems)
