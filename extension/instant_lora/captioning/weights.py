"""Where CLIP weights come from (tag, file, local-dir:, hf-hub:), found on disk before any download.

We read weights files ourselves instead of letting open_clip fetch them, because
- open_clip 2.20 (the WebUI's pin) and 3.x look in different places (~/.cache/clip vs the HF hub)
  and 2.20 knows neither safetensors nor `local-dir:`; one loader here behaves the same on both;
- a weights file that is already on disk (another tool's cache, the WebUI's models folder) must be
  used offline, and a missing one must produce a message that says which file to put where.
"""

from __future__ import annotations

import json
import os
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import InstantLoraError
from .options import CaptionOptions

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
# Keys in OpenAI's TorchScript archives that are not parameters of open_clip's CLIP.
_NON_PARAM_KEYS = ("input_resolution", "context_length", "vocab_size")
_LOCAL_DIR_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                    "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
                    "model.safetensors", "pytorch_model.bin")


@dataclass
class WeightsPlan:
    """What to build and what to load into it."""
    arch: str                          # an architecture name open_clip knows (registered if needed)
    weights: Optional[str]             # local file, or None for random weights
    quick_gelu: bool
    source: str                        # "name/tag", the path or the folder, for messages
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None
    state_dict: Optional[dict] = field(default=None, repr=False)  # already read (file-arch inference)


def offline_requested(options: CaptionOptions) -> bool:
    env = any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
              for v in ("HF_HUB_OFFLINE", "INSTANT_LORA_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return options.offline or env


def _hf_cache_roots() -> List[Path]:
    roots = [os.environ.get("HF_HUB_CACHE"), os.environ.get("HUGGINGFACE_HUB_CACHE")]
    if os.environ.get("HF_HOME"):
        roots.append(os.path.join(os.environ["HF_HOME"], "hub"))
    roots.append("~/.cache/huggingface/hub")
    return [Path(r).expanduser() for r in roots if r]


_WEBUI_CLIP_FOLDERS = ("clip", "CLIP", "clip-interrogator", "open_clip")


def _webui_dirs() -> List[Path]:
    """The WebUI's model folders: from its own modules when we run inside it, else a known install."""
    dirs: List[Path] = []
    paths = sys.modules.get("modules.paths_internal") or sys.modules.get("modules.paths")
    models_path = getattr(paths, "models_path", None)
    if models_path:
        dirs += [Path(models_path) / d for d in _WEBUI_CLIP_FOLDERS]
    try:  # standalone next to a WebUI (--webui_dir / $INSTANT_LORA_WEBUI_DIR / installed as extension)
        from ..output_paths import find_webui_root

        root = find_webui_root()
    except (ImportError, InstantLoraError):
        root = None
    if root is not None:
        dirs += [Path(root) / "models" / d for d in _WEBUI_CLIP_FOLDERS]
    cmd_opts = getattr(sys.modules.get("modules.shared"), "cmd_opts", None)
    if getattr(cmd_opts, "clip_models_path", None):
        dirs.append(Path(cmd_opts.clip_models_path))
    return dirs


def search_dirs(options: CaptionOptions) -> List[Path]:
    """Folders that may hold weights files under their usual names, most specific first."""
    dirs = [Path(d).expanduser() for d in options.search_dirs]
    dirs += [Path(d).expanduser() for d in os.environ.get("INSTANT_LORA_CLIP_DIRS", "").split(os.pathsep) if d]
    dirs += _webui_dirs()
    dirs.append(Path("~/.cache/clip").expanduser())  # OpenAI's clip package and open_clip 2.x
    return list(dict.fromkeys(dirs))


def _candidates(arch: str, tag: str, cfg: dict, options: CaptionOptions) -> List[Path]:
    names = []
    if cfg.get("url"):
        names.append(os.path.basename(cfg["url"]))  # e.g. ViT-L-14.pt, as the URL downloader names it
    names += [f"{arch}-{tag}{s}" for s in WEIGHT_SUFFIXES] + [f"{arch}_{tag}{s}" for s in WEIGHT_SUFFIXES]
    found = [d / n for d in search_dirs(options) for n in names]
    hub = cfg.get("hf_hub", "")
    if hub:
        repo, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        files = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        roots = [Path(d).expanduser() for d in options.search_dirs] + _hf_cache_roots()
        folder = "models--" + repo.replace("/", "--")
        for root in roots:
            snapshots = root / folder / "snapshots"
            if snapshots.is_dir():
                found += [snap / f for snap in sorted(snapshots.iterdir()) for f in files]
    return found


def _missing_error(arch: str, tag: str, cfg: dict, options: CaptionOptions, reason: str) -> InstantLoraError:
    folders = [str(d) for d in search_dirs(options)] + [str(r) for r in _hf_cache_roots()]
    ways = []
    if cfg.get("url"):
        ways.append(f"put {os.path.basename(cfg['url'])} from {cfg['url']} into ~/.cache/clip/")
    hub = cfg.get("hf_hub", "")
    if hub:
        repo = "/".join(hub.strip("/").split("/")[:2])
        ways.append(f"save open_clip_model.safetensors (or open_clip_pytorch_model.bin) from "
                    f"https://huggingface.co/{repo} as ~/.cache/clip/{arch}-{tag}.safetensors (or .bin)")
    ways.append("pass --clip_model /path/to/weights_file, or --clip_search_dir FOLDER that holds it")
    hint = "; or ".join(ways) + "."
    return InstantLoraError(
        f"CLIP weights {arch}/{tag} are not on this computer ({reason}); looked in: {', '.join(folders)}.",
        hint=hint[0].upper() + hint[1:])


def _download(arch: str, tag: str, cfg: dict, options: CaptionOptions) -> str:
    import open_clip

    try:
        # Same call on 2.20 and 3.x: open_clip picks URL or HF hub and its own cache folder.
        path = open_clip.pretrained.download_pretrained(cfg, cache_dir=None)
    except Exception as exc:  # network, disk, hub errors all mean the same thing to the user
        raise _missing_error(arch, tag, cfg, options, f"download failed: {exc}") from exc
    if not path or not os.path.isfile(path):
        raise _missing_error(arch, tag, cfg, options, "download returned no file")
    return path


def _known_arch(name: str) -> Tuple[str, bool]:
    """Map a user's model name to a registered architecture; '-quickgelu' names work on 2.20 too."""
    import open_clip

    name = name.replace("/", "-")
    known = open_clip.list_models()
    if name in known:
        return name, name.endswith("-quickgelu")
    if name.endswith("-quickgelu") and name[: -len("-quickgelu")] in known:
        return name[: -len("-quickgelu")], True
    import difflib

    close = difflib.get_close_matches(name, known, n=4)
    raise InstantLoraError(f"Unknown CLIP architecture '{name}'.",
                           hint=f"Did you mean {', '.join(close)}?" if close else "See open_clip.list_models().")


def _local_dir(path: str, options: CaptionOptions) -> WeightsPlan:
    import open_clip

    folder = Path(path).expanduser()
    config_path = folder / "open_clip_config.json"
    if not config_path.is_file():
        raise InstantLoraError(f"local-dir:{folder} has no open_clip_config.json.", path=str(folder),
                               hint="The folder needs open_clip_config.json and open_clip_model.safetensors.")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    model_cfg = config.get("model_cfg", config)
    pre = config.get("preprocess_cfg", {})
    weights = next((str(folder / f) for f in _LOCAL_DIR_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise InstantLoraError(f"local-dir:{folder} holds no weights file.", path=str(folder),
                               hint=f"Expected one of: {', '.join(_LOCAL_DIR_FILES)}.")
    # open_clip 2.20 has no local-dir: schema; registering the config as a named architecture
    # works on every version. The name is derived from the config so reruns reuse it.
    import hashlib

    digest = hashlib.sha256(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:12]
    arch = f"instant-lora-local-{digest}"
    if arch not in open_clip.list_models():
        arch_dir = cache_root(options) / "archs"
        arch_dir.mkdir(parents=True, exist_ok=True)
        (arch_dir / f"{arch}.json").write_text(json.dumps(model_cfg), encoding="utf-8")
        open_clip.add_model_config(arch_dir / f"{arch}.json")
    mean, std = pre.get("mean"), pre.get("std")
    return WeightsPlan(arch, weights, bool(model_cfg.get("quick_gelu", False)), f"local-dir:{folder}",
                       tuple(mean) if mean else None, tuple(std) if std else None)


def _hf_hub(repo: str, options: CaptionOptions) -> WeightsPlan:
    """`hf-hub:org/repo`: the repo's snapshot in a local HF cache, read like a local-dir."""
    folder = "models--" + repo.replace("/", "--")
    roots = [Path(d).expanduser() for d in options.search_dirs] + _hf_cache_roots()
    for root in roots:
        snapshots = root / folder / "snapshots"
        if snapshots.is_dir():
            for snap in sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
                if (snap / "open_clip_config.json").is_file() and any((snap / f).is_file() for f in _LOCAL_DIR_FILES):
                    plan = _local_dir(str(snap), options)
                    plan.source = f"hf-hub:{repo}"
                    return plan
    hint = (f"Download open_clip_config.json and open_clip_model.safetensors from https://huggingface.co/{repo} "
            f"into a folder and pass --clip_model local-dir:FOLDER.")
    if offline_requested(options):
        raise InstantLoraError(f"hf-hub:{repo} is not in the local HF cache (offline mode).", hint=hint)
    import open_clip

    try:  # the same helper on open_clip 2.20 and 3.x; files land in the HF cache
        config = open_clip.pretrained.download_pretrained_from_hf(repo, filename="open_clip_config.json")
        try:
            open_clip.pretrained.download_pretrained_from_hf(repo, filename="open_clip_model.safetensors")
        except Exception:  # older repos only have the pickle
            open_clip.pretrained.download_pretrained_from_hf(repo, filename="open_clip_pytorch_model.bin")
    except Exception as exc:
        raise InstantLoraError(f"hf-hub:{repo} could not be downloaded: {exc}", hint=hint) from exc
    plan = _local_dir(str(Path(config).parent), options)
    plan.source = f"hf-hub:{repo}"
    return plan


def cache_root(options: CaptionOptions) -> Path:
    root = options.cache_dir or os.environ.get("INSTANT_LORA_CACHE") or "~/.cache/instant_lora"
    return Path(root).expanduser()


def _quick_gelu(options: CaptionOptions, auto: bool) -> bool:
    return {"on": True, "off": False}.get(options.quick_gelu, auto)


def plan_weights(options: CaptionOptions) -> WeightsPlan:
    """Decide architecture, weights file and activation; nothing is built yet."""
    import open_clip

    model = options.clip_model.strip()
    if model.startswith(("local-dir:", "hf-hub:")):
        if model.startswith("hf-hub:"):
            plan = _hf_hub(model[len("hf-hub:"):].strip("/"), options)
        else:
            plan = _local_dir(model[len("local-dir:"):], options)
        plan.quick_gelu = _quick_gelu(options, plan.quick_gelu)
        return plan

    if os.path.isfile(os.path.expanduser(model)) or model.lower().endswith(WEIGHT_SUFFIXES):
        path = os.path.expanduser(model)
        if not os.path.isfile(path):
            raise InstantLoraError(f"CLIP weights file {path} does not exist.", path=path)
        state_dict, is_openai_archive = read_state_dict(path)
        if options.clip_arch:
            arch, named_quick = _known_arch(options.clip_arch)
        else:
            arch, named_quick = infer_arch(state_dict, path), False
        # OpenAI's own archives and files named after the tag were trained with QuickGELU.
        auto = is_openai_archive or "openai" in path.lower() or named_quick or arch.endswith("-quickgelu")
        return WeightsPlan(arch, path, _quick_gelu(options, auto), path, state_dict=state_dict)

    arch, named_quick = _known_arch(model)
    tag = options.clip_pretrained.strip()
    if tag.lower() in ("", "none", "random"):
        return WeightsPlan(arch, None, _quick_gelu(options, named_quick), f"{arch}/random")
    if os.path.isfile(os.path.expanduser(tag)):
        path = os.path.expanduser(tag)
        auto = named_quick or "openai" in path.lower()
        return WeightsPlan(arch, path, _quick_gelu(options, auto), path)
    cfg = open_clip.get_pretrained_cfg(model.replace("/", "-"), tag) or open_clip.get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise InstantLoraError(f"'{tag}' is neither a pretrained tag of {arch} nor a file.",
                               hint=f"Tags for {arch}: {', '.join(tags) or 'none'}.")
    # OpenAI's CLIP was trained with QuickGELU; open_clip >= 2.29 builds plain GELU for
    # ('ViT-L-14', 'openai') unless told, which silently degrades every score.
    auto = named_quick or tag == "openai" or bool(cfg.get("quick_gelu"))
    looked = _candidates(arch, tag, cfg, options)
    path = next((str(p) for p in looked if p.is_file()), None)
    if path is None:
        if offline_requested(options):
            raise _missing_error(arch, tag, cfg, options, "offline mode")
        path = _download(arch, tag, cfg, options)
    mean, std = cfg.get("mean"), cfg.get("std")
    return WeightsPlan(arch, path, _quick_gelu(options, auto), f"{arch}/{tag}",
                       tuple(mean) if mean else None, tuple(std) if std else None)


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in z.namelist())


def read_state_dict(path: str) -> Tuple[Dict[str, "object"], bool]:
    """(state dict, is an OpenAI TorchScript archive) from .safetensors, torch pickles or TorchScript."""
    import torch

    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd, archive = load_file(path, device="cpu"), False
        elif _is_torchscript(path):
            sd, archive = torch.jit.load(path, map_location="cpu").state_dict(), True
        else:
            sd, archive = torch.load(path, map_location="cpu", weights_only=True), False
    except Exception as exc:
        raise InstantLoraError(f"Can't read CLIP weights {path}: {exc}", path=path,
                               hint="Use an open_clip/OpenAI CLIP checkpoint (.safetensors, .pt, .bin).") from exc
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd:
        raise InstantLoraError(f"{path} holds no tensors.", path=path)
    sd = {(k[7:] if k.startswith("module.") else k): v for k, v in sd.items() if k not in _NON_PARAM_KEYS}
    return sd, archive


def _signature_from_state(sd: dict) -> Optional[tuple]:
    prefix = "text." if "text.token_embedding.weight" in sd else ""
    try:
        conv = sd["visual.conv1.weight"]
        vis_layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("visual.transformer.resblocks."))
        txt_block = prefix + "transformer.resblocks."
        txt_layers = 1 + max(int(k[len(txt_block):].split(".")[0]) for k in sd if k.startswith(txt_block))
        grid = sd["visual.positional_embedding"].shape[0] - 1
        patch = conv.shape[-1]
        return (conv.shape[0], vis_layers, patch, int(round(grid ** 0.5)) * patch,
                sd[prefix + "token_embedding.weight"].shape[1], txt_layers,
                sd[prefix + "positional_embedding"].shape[0], sd[prefix + "text_projection"].shape[-1])
    except (KeyError, ValueError, AttributeError):
        return None


def _signature_from_config(cfg: dict) -> Optional[tuple]:
    v, t = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if "timm_model_name" in v or "hf_model_name" in t or isinstance(v.get("layers"), (list, tuple)):
        return None
    size = v.get("image_size", 224)
    size = size[0] if isinstance(size, (list, tuple)) else size
    return (v.get("width", 768), v.get("layers", 12), v.get("patch_size", 16), size,
            t.get("width", 512), t.get("layers", 12), t.get("context_length", 77), cfg.get("embed_dim"))


def infer_arch(sd: dict, path: str) -> str:
    """The registered open_clip ViT architecture whose shapes match the file (plain name preferred)."""
    import open_clip

    wanted = _signature_from_state(sd)
    if wanted is not None:
        names = sorted(open_clip.list_models(), key=lambda n: ("quickgelu" in n, len(n), n))
        for name in names:
            if _signature_from_config(open_clip.get_model_config(name) or {}) == wanted:
                return name
    raise InstantLoraError(f"Can't tell which CLIP architecture {path} is.", path=path,
                           hint="Name it with --clip_arch (e.g. ViT-L-14), or use --clip_model local-dir:FOLDER.")
