"""Download a base model into the models folder, for a user who has none.

The file's address is the Hugging Face hub's (`huggingface_hub.hf_hub_url`, so HF_ENDPOINT and a
mirror work as everywhere else; the hub's headers, with the user's token when there is one), but
the transfer is this module's own, over the standard library (huggingface_hub 0.26 speaks
`requests`, 2.x `httpx`; urllib is the same everywhere), so that it can:
- report progress through a callback (bytes done, bytes in all);
- resume an interrupted transfer from `<file>.part` in the models folder with an HTTP Range request
  (also by itself, a few times, when the connection drops mid-way);
- check the size and the sha256 at the end: a mismatch deletes the `.part` file and nothing else;
- rename the checked file into place in one step: the models folder never holds a half-written
  file under the model's name (and `.part` is no checkpoint suffix: no list shows it);
- fail within seconds when offline (HF_HUB_OFFLINE, connection refused, no DNS), saying which file
  to put where and where to get it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import InstantLoraError


@dataclass(frozen=True)
class BaseModelFile:
    """One downloadable base model: a single file of a hub repository, with its size and hash."""

    name: str  # what `download-model NAME` takes
    title: str  # what the UI's button says
    repo_id: str
    filename: str
    size: int  # bytes
    sha256: str
    revision: str = "main"
    description: str = ""

    @property
    def size_text(self) -> str:
        return human_size(self.size)


REGISTRY: dict[str, BaseModelFile] = {
    # Size and sha256 are the Git LFS pointer of this file (`oid sha256:6ce0161689b3…`,
    # `size 4265146304`), as the hub shows it under "Git LFS Details" for every copy of
    # v1-5-pruned-emaonly.safetensors (e.g. huggingface.co/jyoung105/stable-diffusion-v1-5 and the
    # LFS pointer committed in huggingface.co/taini/SdTraining, commit 20bb50c); its first ten hex
    # digits are the WebUI's short hash of this checkpoint, 6ce0161689.
    "sd15": BaseModelFile(
        name="sd15", title="SD1.5", repo_id="stable-diffusion-v1-5/stable-diffusion-v1-5",
        filename="v1-5-pruned-emaonly.safetensors", size=4_265_146_304,
        sha256="6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
        description="Stable Diffusion 1.5, EMA weights, fp32: the base most SD1.x LoRAs are trained on"),
    # "sdxl": SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0, sd_xl_base_1.0.safetensors)
    # goes here once the SDXL model family trains; fill in its size and sha256 from the hub's LFS details.
}
DEFAULT_MODEL = "sd15"
# A JSON file of extra entries {name: {title, repo_id, filename, size, sha256}} merged over the
# registry. Only the tests set it (a tiny file served by a local stand-in for the hub).
TEST_REGISTRY_ENV = "INSTANT_LORA_TEST_MODEL_REGISTRY"

TIMEOUT_S = 10.0  # connect and each read: a stalled transfer resumes instead of hanging
DNS_TIMEOUT_S = 4.0
CHUNK = 1 << 20
RETRIES = 3  # resumes by itself after a dropped connection that had made progress
PROGRESS_EVERY_S = 0.2


def human_size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000.0
    return f"{n} bytes"


def registry() -> dict[str, BaseModelFile]:
    models = dict(REGISTRY)
    extra = os.environ.get(TEST_REGISTRY_ENV)
    if extra:
        for name, entry in json.loads(Path(extra).read_text(encoding="utf-8")).items():
            models[name] = BaseModelFile(name=name, **entry)
    return models


def get_entry(name: str, models: dict | None = None) -> BaseModelFile:
    models = registry() if models is None else models
    if name not in models:
        known = ", ".join(f"{k} ({m.title}, {m.size_text})" for k, m in models.items())
        raise InstantLoraError(f"unknown base model '{name}'", hint=f"known: {known}")
    return models[name]


def file_url(entry: BaseModelFile, endpoint: str | None = None) -> str:
    """The file's download address: the hub's resolve URL under `endpoint` (else $HF_ENDPOINT,
    else the hub's default)."""
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None
    try:
        from huggingface_hub import hf_hub_url
    except ImportError:
        base = endpoint or "https://huggingface.co"
        return f"{base}/{entry.repo_id}/resolve/{urllib.parse.quote(entry.revision, safe='')}/{urllib.parse.quote(entry.filename)}"
    return hf_hub_url(entry.repo_id, entry.filename, revision=entry.revision, endpoint=endpoint)


def _headers() -> dict:
    """The hub's own request headers: its user agent, and the user's token when one is set."""
    try:
        from huggingface_hub.utils import build_hf_headers

        return dict(build_hf_headers(library_name="instant-lora"))
    except Exception:  # no hub, or a broken token file: download without a token
        return {"user-agent": "instant-lora"}


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def put_it_there(entry: BaseModelFile, url: str, folder: Path) -> str:
    """What a user without a connection does instead: the file, where to get it, where to put it."""
    return (f"put {entry.filename} into {Path(folder).absolute()} yourself: download it from {url} "
            f"({entry.size_text}, sha256 {entry.sha256[:10]}...)")


@dataclass
class DownloadResult:
    path: Path
    entry: BaseModelFile
    transferred: int  # bytes fetched by this call
    resumed_from: int  # bytes of an earlier .part that were kept
    already_there: bool = False


class _NoAuthOffHost(urllib.request.HTTPRedirectHandler):
    """Follow the hub's redirect to its file storage; the token goes to the hub only."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and urllib.parse.urlsplit(newurl).netloc != urllib.parse.urlsplit(req.full_url).netloc:
            new.remove_header("Authorization")
        return new


def _opener():
    return urllib.request.build_opener(_NoAuthOffHost())


def _first_hop(url: str) -> tuple[str, int]:
    """The host a request to `url` connects to: its proxy's (HTTPS_PROXY etc.) when one applies."""
    split = urllib.parse.urlsplit(url)
    host, port = split.hostname or "", split.port or (443 if split.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(split.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        hop = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return hop.hostname or "", hop.port or 80
    return host, port


def _resolves(host: str, port: int, timeout: float) -> str | None:
    """None when `host` resolves within `timeout` seconds, else why not (a machine without network
    can take much longer to say that a name does not resolve)."""
    result: list = []

    def look():
        try:
            socket.getaddrinfo(host, port)
            result.append(None)
        except OSError as e:
            result.append(f"cannot resolve {host}: {e.strerror or e}")

    t = threading.Thread(target=look, daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else f"no answer resolving {host} within {timeout:.0f} s"


class _Lock:
    """`.<file>.download.lock` in the models folder: one download of a file at a time."""

    def __init__(self, folder: Path, filename: str):
        self.path, self.filename = folder / f".{filename}.download.lock", filename
        self.token = f"{os.getpid()}-{time.time()}"

    def __enter__(self):
        from .output_paths import lock_is_live, read_lock

        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "token": self.token})
        for _ in range(3):
            try:
                fd = os.open(str(self.path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
            except FileExistsError:
                holder = read_lock(self.path)
                if lock_is_live(holder, self.path):
                    raise InstantLoraError(f"{self.filename} is already being downloaded into "
                                           f"{self.path.parent} (pid {(holder or {}).get('pid', '?')})",
                                           hint=f"wait for it to finish; if no download is running, delete {self.path}") from None
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(info)
            return self
        raise InstantLoraError(f"could not take the download lock {self.path}", hint=f"delete {self.path} and try again")

    def __exit__(self, *exc):
        from .output_paths import read_lock

        if (read_lock(self.path) or {}).get("token") == self.token:
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def download_model(name_or_entry, models_dir, *, progress=None, status=None, endpoint: str | None = None,
                   models: dict | None = None, retries: int = RETRIES, timeout: float = TIMEOUT_S) -> DownloadResult:
    """Download a registry entry's file into `models_dir` (resumed, checked, renamed into place).

    progress(done, total): bytes, every fraction of a second; status(text): what happens now
    (checking an earlier part, resuming). Raises InstantLoraError for everything a user can act on."""
    entry = name_or_entry if isinstance(name_or_entry, BaseModelFile) else get_entry(name_or_entry, models)
    folder = Path(models_dir).expanduser()
    final, part = folder / entry.filename, folder / f"{entry.filename}.part"
    say = status or (lambda text: None)
    url = file_url(entry, endpoint)
    if final.exists():
        size = final.stat().st_size
        if size == entry.size:
            return DownloadResult(final, entry, 0, 0, already_there=True)
        raise InstantLoraError(f"{final} exists but is {human_size(size)}, not {entry.size_text}",
                               hint="move or rename it, then download again", path=final)
    if hub_offline():
        raise InstantLoraError(f"cannot download {entry.filename}: HF_HUB_OFFLINE is set",
                               hint=put_it_there(entry, url, folder))
    unreachable = _resolves(*_first_hop(url), DNS_TIMEOUT_S)
    if unreachable:
        raise InstantLoraError(f"cannot download {entry.filename}: {unreachable} (offline?)", hint=put_it_there(entry, url, folder))
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from .output_paths import write_error

        raise (write_error(e, folder, "creating") or e) from e
    with _Lock(folder, entry.filename):
        return _download_locked(entry, url, final, part, progress, say, retries, timeout)


def _download_locked(entry, url, final, part, progress, say, retries, timeout) -> DownloadResult:
    hasher, have = hashlib.sha256(), 0
    if part.exists():
        have = part.stat().st_size
        if have > entry.size:
            say(f"discarding {part.name}: it is larger than the file")
            part.unlink()
            have = 0
        elif have:
            say(f"checking the {human_size(have)} downloaded before")
            have = _hash_into(hasher, part, have)
    resumed_from, transferred = have, 0
    attempt = 0
    while have < entry.size:
        got, have, hasher, why = _transfer(entry, url, part, have, hasher, progress, timeout)
        transferred += got
        if have >= entry.size:
            break
        attempt += 1
        if (got == 0 and not why.startswith("restart")) or attempt > retries:
            if got == 0 and transferred == 0 and why.startswith("unreachable"):
                raise InstantLoraError(f"cannot download {entry.filename}: {why[len('unreachable: '):]}",
                                       hint=put_it_there(entry, url, final.parent))
            raise InstantLoraError(f"the download of {entry.filename} stopped at {human_size(have)} of {entry.size_text} ({why})",
                                   hint=f"run it again to resume from there ({part} is kept), or "
                                        + put_it_there(entry, url, final.parent))
        say(f"connection lost at {human_size(have)} ({why}); resuming")
    digest = hasher.hexdigest()
    size = part.stat().st_size
    if size != entry.size or digest != entry.sha256:
        with contextlib.suppress(OSError):
            part.unlink()
        raise InstantLoraError(
            f"the downloaded {entry.filename} is not the expected file (size {size} vs {entry.size}, sha256 {digest[:16]}... "
            f"vs {entry.sha256[:16]}...): deleted the partial download {part}; nothing else was changed",
            hint="try again; if it happens again the file on the server differs from the one this version knows: "
                 + put_it_there(entry, url, final.parent))
    if final.exists():
        raise InstantLoraError(f"{final} appeared while downloading; kept it and left the download at {part}", path=final,
                               hint=f"if {final.name} is the model you want, delete {part.name}; else move {final.name} "
                                    "away and run the download again (it resumes)")
    os.replace(part, final)
    if progress:
        progress(entry.size, entry.size)
    return DownloadResult(final, entry, transferred, resumed_from)


def _hash_into(hasher, path: Path, length: int) -> int:
    done = 0
    with open(path, "rb") as f:
        while done < length:
            block = f.read(min(CHUNK * 8, length - done))
            if not block:
                break
            hasher.update(block)
            done += len(block)
    return done


def _transfer(entry, url, part, have, hasher, progress, timeout):
    """One request from byte `have` on, appended to `part`. Returns (bytes got, bytes now in the
    part, the hasher over them, why it stopped short: '' when complete; 'unreachable: ...' when no
    connection was made; 'restart: ...' when the part was dropped and a new request starts over)."""
    from .output_paths import write_error

    headers = _headers()
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = _opener().open(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # the server's file is not longer than the part: it cannot be the same file
            part.unlink()
            return 0, 0, hashlib.sha256(), "restart: the partial file did not fit the server's file"
        what = {401: "the hub wants a login (set HF_TOKEN or run `huggingface-cli login`)",
                403: "access refused (accept the model's terms on its page, and log in)",
                404: "no such file on the server"}.get(e.code, f"HTTP {e.code} {e.reason}")
        raise InstantLoraError(f"cannot download {entry.filename} from {url}: {what}",
                                hint=put_it_there(entry, url, part.parent)) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        text = getattr(reason, "strerror", None) or str(reason) or type(reason).__name__
        return 0, have, hasher, f"unreachable: cannot connect to {urllib.parse.urlsplit(url).netloc} ({text})"
    got, stopped = 0, ""
    with response:
        ranged = have and response.status == 206
        if ranged and _range_start(response.headers.get("Content-Range", "")) != have:
            return 0, have, hasher, f"the server sent another range than asked for ({response.headers.get('Content-Range')})"
        total = _total(response, bool(ranged))
        if total is not None and total != entry.size:
            with contextlib.suppress(OSError):
                part.unlink()
            raise InstantLoraError(f"the server's {entry.filename} is {total} bytes, not {entry.size}: not the expected file "
                                   "(deleted the partial download; nothing else was changed)",
                                   hint=put_it_there(entry, url, part.parent))
        if not ranged:  # the whole file (also from a server that ignores Range): the part starts afresh
            have, hasher = 0, hashlib.sha256()
        last = 0.0
        try:
            f = open(part, "r+b" if have else "wb")
        except OSError as e:
            raise (write_error(e, part) or e) from e
        with f:
            f.seek(have)
            f.truncate()
            while have < entry.size:
                try:
                    block = response.read1(min(CHUNK, entry.size - have))  # what has arrived: progress keeps moving
                except Exception as e:  # a dropped connection, a read timeout, http.client.IncompleteRead
                    stopped = f"{type(e).__name__}: {e}"[:200]
                    break
                if not block:
                    break
                try:
                    f.write(block)
                except OSError as e:  # a full disk is the user's to fix
                    raise (write_error(e, part) or e) from e
                hasher.update(block)
                got += len(block)
                have += len(block)
                now = time.monotonic()
                if progress and now - last >= PROGRESS_EVERY_S:
                    last = now
                    progress(have, entry.size)
            try:
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                raise (write_error(e, part) or e) from e
    if progress:
        progress(have, entry.size)
    return got, have, hasher, "" if have >= entry.size else (stopped or "the connection closed early")


def _range_start(content_range: str) -> int | None:
    try:  # "bytes 100-999/1000"
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _total(response, ranged: bool) -> int | None:
    """The whole file's size as the server says it, if it does."""
    if ranged:
        total = response.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


# ---- the command line: `python standalone_app.py download-model NAME` ------------------------

class ProgressLine:
    """Progress on stderr: one line redrawn in place on a terminal, a line per tenth otherwise."""

    def __init__(self, name: str, stream=None):
        import sys

        self.name, self.stream = name, stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start, self.first, self.tenth, self.drawn = time.monotonic(), None, -1, False

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = (now, done)
        t0, d0 = self.first
        rate = (done - d0) / (now - t0) if now > t0 else 0.0
        left = f", {_duration((total - done) / rate)} left" if rate > 0 and done < total else ""
        text = (f"{self.name}: {human_size(done)} / {human_size(total)} ({100 * done / max(total, 1):.0f}%)"
                + (f", {human_size(rate)}/s" if rate else "") + left)
        if self.tty:
            self.stream.write("\r" + text.ljust(78))
            self.drawn = True
        elif done * 10 // max(total, 1) > self.tenth:
            self.tenth = done * 10 // max(total, 1)
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        self.end()
        self.stream.write(f"{text}\n")
        self.stream.flush()

    def end(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.drawn = False


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def run_download_command(argv: list[str]) -> int:
    import argparse
    import sys

    from .model_sources import default_models_dir
    from .output_paths import find_webui_root

    models = registry()
    p = argparse.ArgumentParser(prog="standalone_app.py download-model",
                                description="Download a base model into the models folder: resumable (run it again after an "
                                            "interruption), checked against its published size and sha256.")
    p.add_argument("name", nargs="?", help=f"which one: {', '.join(models)} (without a name: list them)")
    p.add_argument("--models-dir", help="where it goes (default: the WebUI's models/Stable-diffusion, else ./models)")
    p.add_argument("--webui-dir", help="a WebUI install whose models/Stable-diffusion receives it (also $INSTANT_LORA_WEBUI_DIR)")
    args = p.parse_args(argv)
    if not args.name:
        for key, m in models.items():
            print(f"{key:8} {m.title} ({m.size_text}): {m.filename} from {m.repo_id}" + (f" - {m.description}" if m.description else ""))
        return 0
    entry = get_entry(args.name, models)
    folder = default_models_dir(args.models_dir, find_webui_root(args.webui_dir))
    print(f"{entry.filename} ({entry.size_text}) from {file_url(entry)}\n  into {folder.absolute()}", file=sys.stderr)
    line = ProgressLine(entry.filename)
    try:
        result = download_model(entry, folder, progress=line, status=line.note)
    finally:
        line.end()
    if result.already_there:
        print(f"already there ({entry.size_text})", file=sys.stderr)
    print(result.path.absolute())
    return 0
