"""Where files go: the WebUI's Lora folder when one is known, else ./output. Names never escape it."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import socket
import time
import uuid
from pathlib import Path

from .errors import InstantLoraError

WEBUI_ENV = "INSTANT_LORA_WEBUI_DIR"


def is_webui_root(path: Path) -> bool:
    return (path / "modules").is_dir() and ((path / "webui.py").is_file() or (path / "launch.py").is_file())


def find_webui_root(webui_dir: str | None = None) -> Path | None:
    """--webui_dir, else $INSTANT_LORA_WEBUI_DIR, else the WebUI this extension is installed in."""
    for cand in (webui_dir, os.environ.get(WEBUI_ENV)):
        if cand:
            root = Path(cand).expanduser()
            if not is_webui_root(root):
                raise InstantLoraError(f"{root} is not a Stable Diffusion WebUI folder (no webui.py and modules/).",
                                       hint="pass the folder that holds webui.py", path=root)
            return root
    here = Path(__file__).resolve()
    # <webui>/extensions/<this repo>/extension/instant_lora/output_paths.py
    if len(here.parents) > 4 and here.parents[3].name == "extensions" and is_webui_root(here.parents[4]):
        return here.parents[4]
    return None


def resolve_output_dir(output_dir: str | None, lora_dir: str | None = None, webui_dir: str | None = None) -> tuple[Path, str]:
    """(folder, why) -- why is shown to the user so they know where the LoRA went."""
    if output_dir:
        return Path(output_dir).expanduser(), "--output_dir"
    if lora_dir:
        return Path(lora_dir).expanduser(), "--lora_dir"
    root = find_webui_root(webui_dir)
    if root is not None:
        return root / "models" / "Lora", f"the WebUI at {root}"
    return Path("output"), "default (no WebUI found; pass --lora_dir or --webui_dir to save into the WebUI)"


def is_webui_lora_folder(folder: Path, why: str = "", lora_dir: str | None = None) -> bool:
    """Whether `folder` (from resolve_output_dir, `why` its reason) is a WebUI's Lora folder: named
    by --lora_dir, found through --webui_dir / $INSTANT_LORA_WEBUI_DIR / the install, or an
    --output_dir that is some WebUI's models/Lora."""
    if why == "--lora_dir" or why.startswith("the WebUI at"):
        return True
    folder = Path(folder).expanduser().resolve()
    if lora_dir and folder == Path(lora_dir).expanduser().resolve():
        return True
    return folder.name.lower() == "lora" and folder.parent.name.lower() == "models" and is_webui_root(folder.parent.parent)


def replace_check(folder: Path, name: str, *, overwrite: bool, webui_lora: bool, named: bool = True) -> tuple[str | None, str | None]:
    """(refusal, warning) for a command-line run about to write `folder/name.safetensors`.

    The WebUI's Lora folder is shared with everything the user has: an existing file there is never
    replaced without --overwrite. In a folder of the user's own the reference trainer replaces it;
    so does this one, saying so once."""
    target = Path(folder) / f"{name}.safetensors"
    if not target.exists():
        return None, None
    if webui_lora and not overwrite:
        which = "choose another --output_name" if named else f"pass --output_name=NAME (the default name is '{name}')"
        return (f"{target.name} already exists in {folder} (the WebUI's Lora folder): {which}, "
                f"or add --overwrite to replace it"), None
    if overwrite:
        return None, None
    return None, (f"{target} exists and will be replaced by this run (as the reference trainer does); "
                  f"pass another --output_name to keep it")


def remove_stale_state(folder: Path, stem: str, keep: str | None = None) -> Path | None:
    """Remove `folder/stem-state` (an earlier run's resumable state) unless it is `keep`, the state
    this run resumed from. The removed folder's path, or None; OSError when it cannot be removed."""
    state = Path(folder) / f"{stem}-state"
    if not state.is_dir():
        return None
    if keep and Path(keep).expanduser().resolve() == state.resolve():
        return None
    if state.is_symlink():
        state.unlink()
    else:
        shutil.rmtree(state)
    return state


def file_in(folder: Path, stem: str, suffix: str) -> Path:
    """folder/stem+suffix, refusing any stem that would land outside folder."""
    path = (folder / f"{stem}{suffix}")
    if path.resolve().parent != folder.resolve():
        raise InstantLoraError(f"output name '{stem}' would write outside {folder}", hint="use a plain name like my_style")
    return path


# ---- writing safely: errors the user can act on, probes, run locks, leftovers -----------------

def write_error(e: OSError, path: Path, what: str = "writing") -> InstantLoraError | None:
    """An InstantLoraError saying what to do for a full disk / denied / read-only write of `path`;
    None for other errors (raise those as they are)."""
    code = getattr(e, "errno", None)
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return InstantLoraError(f"disk full while {what} {path}",
                                hint="free some space on that drive (or choose another output folder) and try again; "
                                     "earlier saves are intact", path=path)
    if code in (errno.EACCES, errno.EPERM):
        also = " (or close the program that has it open)" if os.name == "nt" else ""
        return InstantLoraError(f"cannot write {path} (permission denied)",
                                hint=f"choose another output folder or fix its permissions{also}; earlier saves are intact", path=path)
    if code == errno.EROFS:
        return InstantLoraError(f"cannot write {path}: the drive is read-only",
                                hint="choose another output folder; earlier saves are intact", path=path)
    if code == errno.ENAMETOOLONG:
        return InstantLoraError(f"cannot write {path}: the file name or path is too long",
                                hint="use a shorter output name or an output folder with a shorter path", path=path)
    return None


def write_synced(path: Path, data) -> None:
    """Write `data` to `path` and fsync it; raises OSError as the OS reports it."""
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o666)
    try:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            done += os.write(fd, view[done:])
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable(folder: Path) -> None:
    """Create `folder` if needed and write/remove a probe file in it, before a training starts."""
    folder = Path(folder)
    probe = folder / f".instant_lora_probe.{os.getpid()}.tmp"
    try:
        if folder.exists() and not folder.is_dir():
            raise InstantLoraError(f"cannot write into {folder}: it is a file, not a folder",
                                   hint="choose another output folder", path=folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_synced(probe, b"ok")
        probe.unlink()
    except OSError as e:
        with contextlib.suppress(OSError):
            probe.unlink()
        reason = {errno.EACCES: "Permission denied", errno.EPERM: "Permission denied", errno.EROFS: "read-only drive",
                  errno.ENOSPC: "disk full"}.get(e.errno, e.strerror or type(e).__name__)
        hint = ("free some space on that drive or choose another output folder" if e.errno == errno.ENOSPC
                else "choose another output folder or fix its permissions")
        raise InstantLoraError(f"cannot write into {folder} ({reason})", hint=hint, path=folder) from e


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (a process we may not signal counts as alive)."""
    pid = int(pid)
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    if os.name == "nt":
        # os.kill(pid, 0) on Windows sends CTRL_C_EVENT; ask the process table instead.
        import ctypes

        kernel32 = ctypes.windll.kernel32
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.GetLastError() == 5  # ERROR_ACCESS_DENIED: exists, not ours
        try:
            code = ctypes.c_ulong()
            if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
                return True
            return code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def lock_path(folder: Path, stem: str) -> Path:
    return Path(folder) / f".{stem}.lock"


def read_lock(path: Path) -> dict | None:
    """The lock's JSON (pid, host, started, ...); {} when unreadable or half-written; None when absent."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError:
        return {}
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def lock_is_live(info: dict | None, path: Path | None = None) -> bool:
    """A lock held by a running process, or one we cannot check (another host). A half-written or
    unreadable lock counts as live for a minute after it was written (its writer may be mid-write)."""
    if info is None:
        return False
    if not info or not isinstance(info.get("pid"), int):
        try:
            return path is not None and time.time() - Path(path).stat().st_mtime < 60
        except OSError:
            return False
    if info.get("host") and info.get("host") != socket.gethostname():
        return True
    return pid_alive(info["pid"])


def _since(ts) -> str:
    try:
        t = time.localtime(float(ts))
    except (TypeError, ValueError, OverflowError, OSError):
        return "an unknown time"
    same_day = time.strftime("%Y-%m-%d", t) == time.strftime("%Y-%m-%d")
    return time.strftime("%H:%M" if same_day else "%Y-%m-%d %H:%M", t)


@contextlib.contextmanager
def claim_output(folder: Path, stem: str):
    """Hold `folder/.{stem}.lock` while a run writes `stem`'s files: a second run with the same
    name into the same folder is refused, a lock left by a dead process is taken over. The lock
    is removed on exit, also after an exception. Yields the lock file's path."""
    folder = Path(folder)
    lock = lock_path(folder, stem)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise (write_error(e, folder, "creating") or e) from e
    info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "name": stem, "token": uuid.uuid4().hex}
    for _ in range(5):
        try:
            fd = os.open(str(lock), os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
        except FileExistsError:
            holder = read_lock(lock)
            if lock_is_live(holder, lock):
                holder = holder or {}
                where = f" on {holder['host']}" if holder.get("host") and holder.get("host") != socket.gethostname() else ""
                who = (f"pid {holder['pid']} since {_since(holder.get('started'))}" if "pid" in holder
                       else "it is just starting")
                raise InstantLoraError(f"'{stem}' is being trained by another run{where} ({who}) into {folder}: "
                                       "pick another name or wait",
                                       hint=f"if no such run is going on, delete {lock}", path=lock)
            # Stale: remove it only if it is still the lock we judged, then try again.
            if read_lock(lock) == holder:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock)
            continue
        except OSError as e:
            raise (write_error(e, lock) or e) from e
        try:
            os.write(fd, json.dumps(info).encode("utf-8"))
        except OSError as e:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(lock)
            raise (write_error(e, lock) or e) from e
        os.close(fd)
        break
    else:
        raise InstantLoraError(f"could not take the run lock {lock}", hint=f"delete {lock} if no other run is training '{stem}'",
                               path=lock)
    try:
        yield lock
    finally:
        if (read_lock(lock) or {}).get("token") == info["token"]:
            with contextlib.suppress(OSError):
                os.unlink(lock)


# A leftover's own name (what `stem` + variant + suffix): a step save, an epoch save, or the final.
_VARIANT = r"(?:-step\d{8}|-\d{6})?"
_HIDDEN_TMP = r"^\.(?P<base>{stem}{variant})(?:\.safetensors|\.json|\.preview\.png)\.(?P<pid>\d+)\.tmp$"
_STATE_SIDE = r"^(?P<base>{stem}{variant})-state\.(?P<kind>tmp|old)$"
STALE_TMP_SECONDS = 600


def state_complete(folder: Path) -> bool:
    """Whether a state folder holds its two files, whole (train/state.py writes the info last)."""
    import zipfile

    from .train.state import INFO_FILE, STATE_FILE

    folder = Path(folder)
    try:
        info = json.loads((folder / INFO_FILE).read_text(encoding="utf-8"))
        return isinstance(info, dict) and "current_step" in info and zipfile.is_zipfile(folder / STATE_FILE)
    except (OSError, ValueError):
        return False


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        return True
    except FileNotFoundError:
        return False


class Cleaned(list):
    """The paths `clean_leftovers` removed; `.restored` = [(leftover, state folder it became)]."""

    def __init__(self):
        super().__init__()
        self.restored: list[tuple[Path, Path]] = []


def clean_leftovers(folder: Path, stem: str) -> list[Path]:
    """Remove what an interrupted run of `stem` left in `folder` and return those paths.

    Leftovers: hidden temp files of atomic writes (`.{stem}[-stepNNNNNNNN|-NNNNNN].safetensors|.json|
    .preview.png.{pid}.tmp`, skipped while their process still runs and writes) and `...-state.tmp`
    / `...-state.old` folders. When `X-state` is missing, the whole `X-state.tmp` (a save that was
    about to be renamed) or else a whole `X-state.old` (a crash between the two renames) is renamed
    back to `X-state` instead of being removed (listed in the result's `.restored`). Nothing else is
    touched: other names, finished files, complete `-state` folders, leftovers of a name that
    another running run holds. Call it while holding `claim_output(folder, stem)`.
    """
    folder = Path(folder)
    removed = Cleaned()
    if not folder.is_dir():
        return removed
    esc = re.escape(stem)
    hidden = re.compile(_HIDDEN_TMP.format(stem=esc, variant=_VARIANT))
    state_side = re.compile(_STATE_SIDE.format(stem=esc, variant=_VARIANT))
    now = time.time()

    def held_by_other(base: str) -> bool:  # `stem-step00000100` may itself be another run's name
        return base != stem and lock_is_live(read_lock(lock_path(folder, base)), lock_path(folder, base))

    states: dict[str, dict[str, Path]] = {}
    for entry in sorted(folder.iterdir()):
        m = hidden.match(entry.name)
        if m and entry.is_file() and not held_by_other(m["base"]):
            try:
                age = now - entry.stat().st_mtime
            except OSError:
                continue
            if pid_alive(int(m["pid"])) and age < STALE_TMP_SECONDS:
                continue  # a write in progress
            if _remove(entry):
                removed.append(entry)
            continue
        m = state_side.match(entry.name)
        if m and not held_by_other(m["base"]):
            states.setdefault(m["base"], {})[m["kind"]] = entry
    for base, sides in states.items():
        target = folder / f"{base}-state"
        if not target.exists():
            for kind in ("tmp", "old"):  # the newer whole state first
                side = sides.get(kind)
                if side is not None and side.is_dir() and state_complete(side):
                    side.rename(target)
                    removed.restored.append((side, target))
                    del sides[kind]
                    break
        for side in sides.values():
            if _remove(side):
                removed.append(side)
    return removed
