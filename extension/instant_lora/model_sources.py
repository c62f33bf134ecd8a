"""Where base models already are: SD checkpoints in the folders users keep them in, each with the
place it came from and a label for the base-model list.

The places, in order (the first one that holds a file wins when two places lead to the same file):
1. the app's models folder (`--models-dir`, else the WebUI's models/Stable-diffusion, else ./models);
2. the WebUI/Forge named by `--webui-dir` / $INSTANT_LORA_WEBUI_DIR, or the one this extension is
   installed in: its models/Stable-diffusion;
3. the usual install folders of A1111, Forge and ComfyUI in the working folder, next to it, next to
   this repository and in the user's home (a fixed list of names, never a walk of the home folder).

Every folder is read with a bounded walk (depth, entry count), symlinked folders followed once
(loops are safe), unreadable folders skipped. A diffusers folder (one with model_index.json) is one
entry; the files inside it are never listed. No torch, no network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import InstantLoraError

MODEL_SUFFIXES = (".safetensors", ".ckpt")
DIFFUSERS_MARKER = "model_index.json"
# The home folder searched for other installs; the tests point it at a temporary folder.
HOME_ENV = "INSTANT_LORA_SEARCH_HOME"
MAX_DEPTH = 4  # models/Stable-diffusion/<sub>/<sub>/file: deep enough for any sorted collection
MAX_ENTRIES = 5000  # directory entries read per place, at most
REPO_ROOT = Path(__file__).resolve().parents[2]

# (folder name(s) under a base folder, kind, the checkpoints folder inside the install)
A1111_CKPT = ("models", "Stable-diffusion")
COMFY_CKPT = ("models", "checkpoints")
INSTALLS = (
    ("stable-diffusion-webui", "A1111", A1111_CKPT),
    ("sd.webui/webui", "A1111", A1111_CKPT),  # A1111's one-click Windows package
    ("stable-diffusion-webui-forge", "Forge", A1111_CKPT),
    ("stable-diffusion-webui-reForge", "Forge", A1111_CKPT),
    ("ComfyUI", "ComfyUI", COMFY_CKPT),
    ("comfyui", "ComfyUI", COMFY_CKPT),
    ("ComfyUI_windows_portable/ComfyUI", "ComfyUI", COMFY_CKPT),
)
HOME_ONLY = (("Documents/ComfyUI", "ComfyUI", COMFY_CKPT),)  # ComfyUI Desktop's default base folder
# Forge's one-click packages unpack to webui_forge_<cuda>_<torch>/webui: one listing of each base.
FORGE_PACKAGE_PREFIX = "webui_forge_"


@dataclass(frozen=True)
class Place:
    """A folder searched for checkpoints."""

    folder: Path  # the checkpoints folder itself
    kind: str  # "models folder", "A1111", "Forge", "ComfyUI"
    root: Path | None  # the install the folder belongs to (None: the app's models folder)
    home: Path | None = None  # for showing paths as ~/...
    base: Path | None = None  # the folder the install was looked for in (None: named or found, not guessed)

    @property
    def where(self) -> str:
        return shown(self.root if self.root is not None else self.folder, self.home)

    @property
    def source(self) -> str:
        """'models folder' or 'A1111 at ~/stable-diffusion-webui'."""
        return "models folder" if self.root is None else f"{self.kind} at {self.where}"

    @property
    def tag(self) -> str:
        """What a label from this place ends with: '(A1111: ~/stable-diffusion-webui)'."""
        return "" if self.root is None else f"({self.kind}: {self.where})"


@dataclass(frozen=True)
class FoundModel:
    """A checkpoint file or a diffusers folder, where it came from, and its label in the list."""

    path: Path
    place: Place
    relative: str  # the path inside its place's folder
    label: str

    @property
    def source(self) -> str:
        return self.place.source

    @property
    def name(self) -> str:
        return self.path.name


def shown(path: Path, home: Path | None = None) -> str:
    """A path as the user reads it: under the home folder as ~/..., else as it is."""
    home, path = home or _default_home(), Path(path).absolute()
    try:
        return "~/" + path.relative_to(home).as_posix() if path != home else "~"
    except ValueError:
        return str(path)


def _default_home() -> Path:
    value = os.environ.get(HOME_ENV)
    if value:
        return Path(value).expanduser()
    try:
        return Path.home()
    except (RuntimeError, KeyError, OSError):  # no home at all (a service account)
        return Path(os.sep)


def default_models_dir(models_dir=None, webui_root: Path | None = None) -> Path:
    """--models-dir, else the WebUI's models/Stable-diffusion, else ./models."""
    if models_dir:
        return Path(models_dir).expanduser()
    return webui_root / "models" / "Stable-diffusion" if webui_root else Path("models")


def _safe_is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # permission denied on a parent, a name too long, a dead network drive
        return False


def _webui_kind(root: Path) -> str:
    return "Forge" if _safe_is_dir(root / "modules_forge") else "A1111"


def _identity(path: Path):
    """(device, inode) of a file or folder: the same for every link and spelling that reaches it."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def search_places(models_dir=None, webui_dir: str | None = None, *, webui_root: Path | None = None,
                  home: str | Path | None = None, near: list | None = None) -> list[Place]:
    """Every folder searched, in order, without duplicates (the same folder reached twice is
    searched once, under its first place). `near`: the folders whose neighbours are searched
    (default: the working folder and this repository); `home`: default $INSTANT_LORA_SEARCH_HOME,
    else the user's home."""
    from .output_paths import find_webui_root

    home = Path(home).expanduser() if home else _default_home()
    if webui_root is None:
        try:
            webui_root = find_webui_root(webui_dir)
        except InstantLoraError:
            webui_root = None  # a wrong --webui-dir is reported where it is used for writing
    places = [Place(default_models_dir(models_dir, webui_root), "models folder", None, home)]
    if webui_root is not None:
        places.append(Place(webui_root / "models" / "Stable-diffusion", _webui_kind(webui_root), webui_root, home))
    bases: list[Path] = []
    if near is None:
        try:
            near = [Path.cwd(), REPO_ROOT]
        except OSError:  # the working folder was deleted
            near = [REPO_ROOT]
    for folder in near:
        folder = Path(folder).absolute()
        bases += [folder, folder.parent]
    bases.append(home)
    seen_bases: list[Path] = []
    for base in bases:
        if any(base == b for b in seen_bases):
            continue
        seen_bases.append(base)
        candidates = [(base / name, kind, sub) for name, kind, sub in INSTALLS + (HOME_ONLY if base == home else ())]
        candidates += [(p / "webui", "Forge", A1111_CKPT) for p in _forge_packages(base)]
        for root, kind, sub in candidates:
            places.append(Place(root.joinpath(*sub), kind, root, home, base))
    unique: list[Place] = []
    seen: set = set()
    for place in places:
        key = (_identity(place.folder) if _safe_is_dir(place.folder) else None) or str(place.folder.absolute())
        if key in seen:
            continue  # the same folder reached again (the WebUI's folder is the models folder, a link)
        seen.add(key)
        unique.append(place)  # a missing one is kept to say where we looked
    return unique


def _forge_packages(base: Path) -> list[Path]:
    try:
        with os.scandir(base) as it:
            return sorted(Path(e.path) for e in it if e.name.startswith(FORGE_PACKAGE_PREFIX) and e.is_dir())
    except OSError:
        return []


def _walk(folder: Path) -> list[tuple[Path, str]]:
    """(path, relative path) of the checkpoints in `folder`: files with a model suffix and
    diffusers folders, sorted; bounded in depth and entries; symlinked folders followed once."""
    found: list[tuple[Path, str]] = []
    seen: set = set()
    budget = [MAX_ENTRIES]

    def visit(here: Path, rel: tuple, depth: int) -> None:
        try:
            st = here.stat()
        except OSError:
            return
        key = (st.st_dev, st.st_ino)
        if key in seen:  # a symlink loop, or two links to one folder
            return
        seen.add(key)
        try:
            with os.scandir(here) as it:
                entries = []
                for entry in it:
                    budget[0] -= 1
                    if budget[0] < 0:
                        break
                    entries.append(entry)
        except OSError:  # unreadable: skipped
            return
        for entry in sorted(entries, key=lambda e: e.name.lower()):
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            try:
                is_dir = entry.is_dir()  # follows symlinks
                is_file = not is_dir and entry.is_file()
            except OSError:
                continue
            if is_file and entry.name.lower().endswith(MODEL_SUFFIXES):
                found.append((path, "/".join((*rel, entry.name))))
            elif is_dir:
                if (path / DIFFUSERS_MARKER).is_file():
                    found.append((path, "/".join((*rel, entry.name))))  # one entry, never its component files
                elif depth < MAX_DEPTH:
                    visit(path, (*rel, entry.name), depth + 1)

    try:
        if (folder / DIFFUSERS_MARKER).is_file():  # the folder itself is one diffusers model
            return [(folder, folder.name)]
    except OSError:
        return []
    visit(folder, (), 1)
    return found


def find_checkpoints(models_dir=None, webui_dir: str | None = None, *, places: list[Place] | None = None,
                     **where) -> list[FoundModel]:
    """Every checkpoint in the search places, in place order, each file once, labels unique.
    The models folder's labels are paths relative to it (with the OS's separator, as before);
    others are 'file.safetensors  (A1111: ~/stable-diffusion-webui)'."""
    if places is None:
        places = search_places(models_dir, webui_dir, **where)
    found: list[FoundModel] = []
    files_seen: set = set()
    labels: set = set()
    for place in places:
        if not _safe_is_dir(place.folder):
            continue
        for path, rel in sorted(_walk(place.folder), key=lambda item: str(Path(item[1]))):  # as the list always was
            key = _identity(path) or str(path)
            if key in files_seen:
                continue
            files_seen.add(key)
            shown_rel = str(Path(rel))
            label = shown_rel if place.root is None else f"{shown_rel}  {place.tag}"
            base, n = label, 2
            while label in labels:
                label, n = f"{base} #{n}", n + 1
            labels.add(label)
            found.append(FoundModel(path=path, place=place, relative=rel, label=label))
    return found


def describe_places(places: list[Place], *, found_only: bool = False) -> list[str]:
    """One line per place: the folder, its source and whether it is there."""
    lines = []
    for place in places:
        there = _safe_is_dir(place.folder)
        if found_only and not there:
            continue
        state = "" if there else ("  (missing)" if place.root is None else "  (not installed)")
        lines.append(f"{shown(place.folder, place.home)}  [{place.source}]{state}")
    return lines


def searched_summary(places: list[Place]) -> str:
    """The places other than the models folder, in a few words: the installs found, by folder,
    and the rest as 'no A1111, Forge or ComfyUI install in ~, /work, ...'."""
    present = [p for p in places if p.root is not None and _safe_is_dir(p.folder)]
    bases: list[str] = []
    for p in places:
        if p.base is not None and p not in present:
            text = shown(p.base, p.home)
            if text not in bases:
                bases.append(text)
    parts = [f"{shown(p.folder, p.home)} ({p.source})" for p in present]
    if bases:
        parts.append(f"no {'other ' if present else ''}A1111, Forge or ComfyUI install in {', '.join(bases)}")
    return "; ".join(parts)


def searched_lines(places: list[Place]) -> list[str]:
    """Where the search looked, for a user who found nothing: the models folder, the WebUI, the
    installs found, and the install names looked for, by folder."""
    lines = describe_places([p for p in places if p.base is None])
    lines += describe_places([p for p in places if p.base is not None], found_only=True)
    bases: list[str] = []
    for p in places:
        if p.base is not None and shown(p.base, p.home) not in bases:
            bases.append(shown(p.base, p.home))
    names = [name for name, _, _ in INSTALLS + HOME_ONLY]
    if bases:
        lines.append(f"A1111 / Forge / ComfyUI installs looked for in {', '.join(bases)}: "
                     f"{', '.join(names)}, {FORGE_PACKAGE_PREFIX}*/webui")
    return lines


def looks_like_name(value: str) -> bool:
    """A bare checkpoint name: not a path (no separator, no ~) and not a hub id (no '/')."""
    return bool(value) and not any(c in value for c in "/\\") and not value.startswith("~")


def resolve_model_name(value: str, models_dir=None, webui_dir: str | None = None, **where) -> str:
    """--pretrained_model_name_or_path as the trainer takes it: an existing path or a hub id is
    returned as it is; a bare name ('v1-5-pruned-emaonly', 'v1-5-pruned-emaonly.safetensors', a
    label) is looked up among the checkpoints found on this machine. Raises InstantLoraError naming
    the places searched when there is no such checkpoint."""
    if not value or Path(value).expanduser().exists() or not looks_like_name(value):
        return value
    places = search_places(models_dir, webui_dir, **where)
    found = find_checkpoints(places=places)
    wanted = value.lower()
    for test in (lambda m: m.label == value, lambda m: m.name.lower() == wanted,
                 lambda m: m.path.is_file() and m.path.stem.lower() == wanted):
        for model in found:
            if test(model):
                return str(model.path)
    looked = describe_places(places[:1]) + describe_places(places[1:], found_only=True)
    names = ", ".join(m.name for m in found[:8]) + (" ..." if len(found) > 8 else "")
    message = (f"'{value}' is not a file here and no checkpoint of that name was found in "
               f"{'; '.join(looked)}"
               + (f" (found: {names})" if found else "")
               + f"; also searched: {searched_summary(places) or 'nothing else'}")
    raise InstantLoraError(message, hint="pass the checkpoint's path, or get SD1.5 with: python standalone_app.py download-model sd15")


def run_models_command(argv: list[str]) -> int:
    """`python standalone_app.py models`: the checkpoints found and where each comes from."""
    import argparse

    from .output_paths import find_webui_root

    p = argparse.ArgumentParser(prog="standalone_app.py models",
                                description="List the SD checkpoints found on this machine: the models folder, the WebUI, "
                                            "and A1111 / Forge / ComfyUI installs in the usual places.")
    p.add_argument("--models-dir", help="the app's models folder (default: the WebUI's models/Stable-diffusion, else ./models)")
    p.add_argument("--webui-dir", help="a WebUI install (also $INSTANT_LORA_WEBUI_DIR)")
    args = p.parse_args(argv)
    places = search_places(args.models_dir, webui_root=find_webui_root(args.webui_dir))
    found = find_checkpoints(places=places)
    if not found:
        print("No checkpoint found. Searched:")
        for line in searched_lines(places):
            print(f"  {line}")
        print("Get SD1.5 (4.3 GB) with: python standalone_app.py download-model sd15")
        return 0
    width = min(max(len(m.relative) for m in found), 60)
    source_width = min(max(len(m.source) for m in found), 60)
    print(f"{len(found)} checkpoint(s):")
    for m in found:
        print(f"  {m.relative:<{width}}  {m.source:<{source_width}}  {shown(m.path, m.place.home)}")
    print("Train on one with --pretrained_model_name_or_path=NAME (its file name, with or without the suffix) or its path.")
    return 0
