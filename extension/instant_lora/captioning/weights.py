"""Where CLIP weights come from (tag, file, local-dir:, hf-hub:), found on disk before any download.

We read weights files ourselves instead of letting open_clip fetch them, because
- open_clip 2.20 (the WebUI's pin) and 3.x look in different places (~/.cache/clip vs the HF hub)
  and 2.20 knows neither safetensors nor `local-dir:`; one loader here behaves the same on both;
- a weights file that is already on disk (another tool's cache, the WebUI's models folder) must be
  used offline, and a missing one must produce a message that says which file to put where.

We download them ourselves too. huggingface_hub retries a server that does not answer for minutes
(2.x: a second round with a 60 s timeout and 5 retries, and open_clip 3.x asks for two files),
and open_clip 2.20 reads OpenAI's URL with no timeout at all. So a download starts with one HEAD
request to the server (PROBE_SECONDS, DNS included): no answer means no network, and the user
reads what to do within seconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import ssl
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import InstantLoraError
from .options import CaptionOptions

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
# Keys in OpenAI's TorchScript archives that are not parameters of open_clip's CLIP.
_NON_PARAM_KEYS = ("input_resolution", "context_length", "vocab_size")
_LOCAL_DIR_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                    "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
                    "model.safetensors", "pytorch_model.bin")
# The files open_clip 3.x asks an HF repo for, in its order (the safetensors twin first).
_HUB_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")

PROBE_SECONDS = 3.0      # a server that is there answers a HEAD request well within this
DOWNLOAD_STALL_SECONDS = 30.0  # a started URL download that sends nothing for this long has failed
NOTE = "instant_lora_note"  # a log record with this attribute set is meant for the user (the UI shows it)

# open_clip 3.x fetches OpenAI's weights from these HF repos (its pretrained.py, 3.3); 2.20 only
# knows OpenAI's own URLs (openaipublic.azureedge.net), reported to answer 404 since 2025
# (https://github.com/openai/CLIP/issues/516). Keyed by the URL's file name.
_OPENAI_HUB_MIRRORS = {
    "RN50.pt": "timm/resnet50_clip.openai/", "RN101.pt": "timm/resnet101_clip.openai/",
    "RN50x4.pt": "timm/resnet50x4_clip.openai/", "RN50x16.pt": "timm/resnet50x16_clip.openai/",
    "RN50x64.pt": "timm/resnet50x64_clip.openai/", "ViT-B-32.pt": "timm/vit_base_patch32_clip_224.openai/",
    "ViT-B-16.pt": "timm/vit_base_patch16_clip_224.openai/", "ViT-L-14.pt": "timm/vit_large_patch14_clip_224.openai/",
    "ViT-L-14-336px.pt": "timm/vit_large_patch14_clip_336.openai/",
}
# What the default download weighs, for messages written without a network. ViT-L-14 has
# 427,616,513 parameters (counted in open_clip's ViT-L-14); in fp32 that is 1.71 GB, the size
# https://huggingface.co/timm/vit_large_patch14_clip_224.openai/tree/main lists for the repo's
# pytorch_model.bin, which holds the same fp32 tensors as open_clip_model.safetensors and
# open_clip_pytorch_model.bin there. OpenAI's own ViT-L-14.pt stores them in fp16: about 0.9 GB.
# When the server answers, the size it reports (X-Linked-Size / Content-Length) is used instead.
_KNOWN_SIZES = {"timm/vit_large_patch14_clip_224.openai": "1.71 GB", "ViT-L-14.pt": "about 0.9 GB"}


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
    if os.environ.get("XDG_CACHE_HOME"):
        roots.append(os.path.join(os.environ["XDG_CACHE_HOME"], "huggingface", "hub"))
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
    hub = _hub_of(tag, cfg)
    if hub:
        repo, files = hub
        roots = [Path(d).expanduser() for d in options.search_dirs] + _hf_cache_roots()
        folder = "models--" + repo.replace("/", "--")
        for root in roots:
            snapshots = root / folder / "snapshots"
            if snapshots.is_dir():
                found += [snap / f for snap in sorted(snapshots.iterdir()) for f in files]
    return found


def _hub_of(tag: str, cfg: dict) -> Optional[Tuple[str, Tuple[str, ...]]]:
    """(repo, file names to try) on the HF hub for a pretrained config, or None."""
    hub = cfg.get("hf_hub", "") or (_OPENAI_HUB_MIRRORS.get(os.path.basename(cfg.get("url", "")), "")
                                    if tag == "openai" else "")
    if not hub:
        return None
    if hub.endswith("/"):
        return hub.strip("/"), _HUB_FILES
    repo, filename = os.path.split(hub.strip("/"))
    return repo, (filename,)


def hf_endpoint() -> str:
    """The HF hub's address as huggingface_hub would use it: $HF_ENDPOINT (read now) or its default."""
    env = os.environ.get("HF_ENDPOINT", "").strip()
    if env:
        return env.rstrip("/")
    try:
        from huggingface_hub import constants

        return str(constants.ENDPOINT).rstrip("/")
    except ImportError:
        return "https://huggingface.co"


def _human_size(headers: Dict[str, str]) -> str:
    lower = {k.lower(): v for k, v in headers.items()}
    try:
        size = int(lower.get("x-linked-size") or lower.get("content-length") or 0)
    except ValueError:
        size = 0
    if size < 1_000_000:  # a redirect's own body, or no size given
        return ""
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # the redirect is the server's answer; the file's own host is the download's business


def _why(exc: BaseException) -> str:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, socket.gaierror):
        return "its name does not resolve (no network or no DNS)"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    return str(reason) or type(reason).__name__


def probe(url: str, timeout: float = PROBE_SECONDS) -> Tuple[Optional[str], int, Dict[str, str]]:
    """(None, HTTP status, headers) when the server behind `url` answers a HEAD request within
    `timeout` seconds in all (any status counts, redirects are not followed), else (why not, 0, {})."""
    # The request runs in a daemon thread that we stop waiting for, so a name lookup that hangs
    # costs `timeout` too. Proxies come from the environment, as for the download itself.
    host = urllib.parse.urlsplit(url).netloc or url
    box: dict = {}

    def run():
        try:
            request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "instant-lora"})
            # The socket may wait a little longer than we do: the join below decides, the same way each time.
            with urllib.request.build_opener(_NoRedirect).open(request, timeout=timeout + 1) as response:
                box["status"], box["headers"] = response.status, dict(response.headers.items())
        except urllib.error.HTTPError as exc:  # 302, 404, 401...: an answer all the same
            box["status"], box["headers"] = exc.code, (dict(exc.headers.items()) if exc.headers else {})
        except BaseException as exc:  # noqa: BLE001 - reported, never raised from this thread
            box["error"] = exc

    worker = threading.Thread(target=run, name="instant-lora-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    exc = box.get("error")
    if worker.is_alive() or isinstance(getattr(exc, "reason", exc), (socket.timeout, TimeoutError)):
        return f"{host} did not answer within {timeout:g} s", 0, {}
    if exc is None:
        return None, box.get("status", 0), box.get("headers", {})
    if isinstance(getattr(exc, "reason", exc), ssl.SSLError):
        return None, 0, {}  # a server answered; the download's own client judges its certificate
    return f"{host} can't be reached: {_why(exc)}", 0, {}


@dataclass
class _Source:
    """One place a missing weights file can be downloaded from."""
    kind: str                          # "hub" or "url"
    address: str                       # hub: org/repo; url: the file's URL
    files: Tuple[str, ...] = ()        # hub: file names, tried in order
    size: str = ""                     # "1.71 GB", for messages; "" if unknown

    def page(self, endpoint: str) -> str:
        return f"{endpoint}/{self.address}" if self.kind == "hub" else self.address

    def probe_url(self, endpoint: str, filename: str = "") -> str:
        if self.kind == "url":
            return self.address
        return f"{endpoint}/{self.address}/resolve/main/{filename or self.files[0]}"

    def file(self) -> str:
        return self.files[0] if self.kind == "hub" else os.path.basename(urllib.parse.urlsplit(self.address).path)


def _sources(tag: str, cfg: dict) -> List[_Source]:
    """Where open_clip would download these weights from: the HF hub first (HF_ENDPOINT applies),
    then the weights' own URL."""
    out = []
    hub = _hub_of(tag, cfg)
    if hub:
        out.append(_Source("hub", hub[0], hub[1], _KNOWN_SIZES.get(hub[0], "")))
    if cfg.get("url"):
        out.append(_Source("url", cfg["url"], size=_KNOWN_SIZES.get(os.path.basename(cfg["url"]), "")))
    return out


def _clip_folder(options: CaptionOptions) -> str:
    """Where to tell the user to save a weights file: the WebUI's models/clip when we know it."""
    webui = [d for d in _webui_dirs() if d.name == "clip"]
    return str(webui[0]) if webui else "~/.cache/clip"


def _offline_reason(options: CaptionOptions) -> str:
    for var in ("HF_HUB_OFFLINE", "INSTANT_LORA_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").lower() in ("1", "true", "yes", "on"):
            return f"{var}={os.environ[var]}"
    return options.words().name("offline") or "offline"


def _missing_error(arch: str, tag: str, cfg: dict, options: CaptionOptions, reason: str,
                   offline: str = "") -> InstantLoraError:
    """What is missing, why it was not downloaded, and every way to get it, in the asking front end's words.

    `offline`: the switch that forbade the download (HF_HUB_OFFLINE=1, --offline), if one did."""
    words = options.words()
    endpoint = hf_endpoint()
    sources = _sources(tag, cfg)
    folder = _clip_folder(options)
    lines = []
    if sources:
        first = sources[0]
        size = f", {first.size}" if first.size else ""
        lines.append(f"They are downloaded once, on first use: {first.file()}{size}, from {first.page(endpoint)}.")
    if offline:
        if "=" not in offline:  # an option of this front end
            lines.append(f"To let it download, drop {offline} and {words.retry}.")
        elif words.fields:  # the app read its environment when it started
            lines.append(f"To let it download, start the app without {offline} and {words.retry}.")
        else:
            lines.append(f"To let it download, {words.retry} without {offline}.")
    else:
        lines.append(f"Connect to the internet and {words.retry}.")
    for source in sources:
        if source.kind == "hub":
            if len(source.files) == 1:
                names, saved = source.files[0], f"{arch}-{tag}{Path(source.files[0]).suffix}"
            else:
                names, saved = " (or ".join(source.files) + ")", f"{arch}-{tag}.safetensors (or .bin)"
            lines.append(f"Or download {names} from {source.page(endpoint)} yourself and save it as {folder}/{saved}.")
        else:
            size = f", {source.size}" if source.size else ""
            lines.append(f"Or put {source.file()} from {source.address} (the original file{size}) into {folder}/.")
    ways = [w for w in (words.set("clip_model", "/path/to/weights_file", "the weights file's full path"),
                        words.set("search_dirs", "FOLDER (a folder that holds it)", "the folder that holds it")) if w]
    if ways:
        lines.append("Or " + ", or ".join(ways) + ".")
    folders = [str(d) for d in search_dirs(options)] + [str(r) for r in _hf_cache_roots()]
    lines.append(f"Looked in: {', '.join(folders)}.")
    return InstantLoraError(f"CLIP weights {arch}/{tag} are not on this computer and can't be downloaded now "
                            f"({reason}).", hint=words.line_break.join(lines))


def _note(text: str) -> None:
    log.info(text, extra={NOTE: True})


def _url_download(url: str, folder: Path) -> str:
    """A file from a plain URL into `folder`, via a .part file; OpenAI's URLs carry the SHA-256."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / os.path.basename(urllib.parse.urlsplit(url).path)
    part = target.with_name(target.name + ".part")
    expected = url.split("/")[-2] if "openaipublic" in url else ""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=DOWNLOAD_STALL_SECONDS) as source, open(part, "wb") as out:
        total = int(source.headers.get("Content-Length") or 0)
        done, shown = 0, 0
        for block in iter(lambda: source.read(1 << 20), b""):
            out.write(block)
            digest.update(block)
            done += len(block)
            if total and done * 10 // total > shown:
                shown = done * 10 // total
                log.info("  downloaded %d/%d MB", done >> 20, total >> 20)
    if expected and not digest.hexdigest().startswith(expected):
        part.unlink()
        raise OSError(f"{url} arrived with the wrong SHA-256 (damaged download)")
    os.replace(part, target)
    return str(target)


def _hub_download(repo: str, filename: str, endpoint: str) -> str:
    from huggingface_hub import hf_hub_download

    # cache_dir: the first HF cache we look in, so the next run finds the file there.
    return hf_hub_download(repo, filename, cache_dir=str(_hf_cache_roots()[0]), endpoint=endpoint)


def _pick_hub_file(source: _Source, endpoint: str) -> Tuple[Optional[str], str, Dict[str, str]]:
    """(why the hub can't be reached or None, the first of its files the server has, that file's headers)."""
    for name in source.files:
        why, status, headers = probe(source.probe_url(endpoint, name))
        if why:
            return why, "", {}
        if status != 404:  # 200, or 302 to the file's storage (its X-Linked-Size is the file's size)
            return None, name, headers
    return None, source.files[-1], {}


def _download(arch: str, tag: str, cfg: dict, options: CaptionOptions) -> str:
    """Download the weights (hub first, then the URL) after checking that the server answers."""
    endpoint = hf_endpoint()
    sources = _sources(tag, cfg)
    failures = []
    for i, source in enumerate(sources):
        if source.kind == "hub":
            why, filename, headers = _pick_hub_file(source, endpoint)
        else:
            filename = source.file()
            why, _, headers = probe(source.address)
        if why:
            if i == 0:  # the first server did not answer: no network, or none that reaches it
                raise _missing_error(arch, tag, cfg, options, f"no network: {why}")
            failures.append(why)
            continue
        size = _human_size(headers) or source.size
        where = str(_hf_cache_roots()[0]) if source.kind == "hub" else str(Path("~/.cache/clip").expanduser())
        _note(f"First use of CLIP {arch}/{tag}: downloading {filename}{f' ({size})' if size else ''} "
              f"from {source.page(endpoint)} into {where}, once; later runs load it from there.")
        try:
            if source.kind == "hub":
                path = _hub_download(source.address, filename, endpoint)
            else:
                path = _url_download(source.address, Path("~/.cache/clip").expanduser())
        except Exception as exc:  # network, disk, hub errors all mean the same thing to the user
            failures.append(f"{source.page(endpoint)}: {exc}")
            continue
        if path and os.path.isfile(path):
            return path
        failures.append(f"{source.page(endpoint)} gave no file")
    reason = "download failed: " + "; ".join(failures) if failures else "no download source known"
    raise _missing_error(arch, tag, cfg, options, reason)


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
    words = options.words()
    endpoint = hf_endpoint()
    use = words.set("clip_model", "local-dir:FOLDER")
    hint = (f"Download open_clip_config.json and open_clip_model.safetensors from {endpoint}/{repo} "
            f"into a folder{' and ' + use if use else ''}; or connect to the internet and {words.retry}.")
    if offline_requested(options):
        raise InstantLoraError(f"hf-hub:{repo} is not in the local HF cache (offline mode: {_offline_reason(options)}).",
                               hint=hint)
    source = _Source("hub", repo, ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))
    why, filename, headers = _pick_hub_file(source, endpoint)
    if why:
        raise InstantLoraError(f"hf-hub:{repo} is not in the local HF cache and can't be downloaded now "
                               f"(no network: {why}).", hint=hint)
    size = _human_size(headers)
    _note(f"First use of hf-hub:{repo}: downloading {filename}{f' ({size})' if size else ''} and "
          f"open_clip_config.json from {endpoint}/{repo} into {_hf_cache_roots()[0]}, once.")
    try:  # files land in the HF cache, where the lookup above finds them next time
        config = _hub_download(repo, "open_clip_config.json", endpoint)
        _hub_download(repo, filename, endpoint)
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
            arch, named_quick = infer_arch(state_dict, path, options), False
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
            switch = _offline_reason(options)
            raise _missing_error(arch, tag, cfg, options, f"offline mode: {switch}", offline=switch)
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


def infer_arch(sd: dict, path: str, options: Optional[CaptionOptions] = None) -> str:
    """The registered open_clip ViT architecture whose shapes match the file (plain name preferred)."""
    import open_clip

    wanted = _signature_from_state(sd)
    if wanted is not None:
        names = sorted(open_clip.list_models(), key=lambda n: ("quickgelu" in n, len(n), n))
        for name in names:
            if _signature_from_config(open_clip.get_model_config(name) or {}) == wanted:
                return name
    words = (options or CaptionOptions()).words()
    ways = [w for w in (words.set("clip_arch", "its architecture (e.g. ViT-L-14)"),
                        words.set("clip_model", "local-dir:FOLDER (open_clip_config.json beside the weights)")) if w]
    hint = "; or ".join(ways) or "Use a folder with open_clip_config.json beside the weights"
    raise InstantLoraError(f"Can't tell which CLIP architecture {path} is.", path=path,
                           hint=hint[:1].upper() + hint[1:] + ".")
