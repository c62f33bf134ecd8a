"""The LoRA files a prompt can name: a folder (and its subfolders) of `.safetensors` files.

A tag names a file by its stem or by the `ss_output_name` alias in its metadata, as the WebUI's
Lora loader does. An alias that more than one file carries (every epoch file of a run carries
the run's name) is not usable as an alias, so `<lora:run:1>` means `run.safetensors`, and
`<lora:run-000002:1>` the epoch-2 file. Unknown names raise, naming the closest known name.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InstantLoraError


@dataclass(frozen=True)
class LoraEntry:
    name: str  # file stem
    path: Path
    alias: str = ""  # ss_output_name, when the file has one
    metadata: dict = field(default_factory=dict, compare=False, hash=False, repr=False)


def read_metadata(path: Path) -> dict:
    """The safetensors header's `__metadata__` (strings), without reading any tensor."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # safetensors raises its own error types per version
        raise InstantLoraError(f"{path.name} is not a readable .safetensors file ({e}).",
                               hint="it may be half-copied or damaged; re-save or remove it", path=path) from e


class LoraLibrary:
    """Name -> file lookup for one Lora folder, plus a small cache of loaded tensors."""

    CACHE_SIZE = 4

    def __init__(self, folder: Path | str):
        self.folder = Path(folder).expanduser()
        self.entries: list[LoraEntry] = []
        self.unreadable: list[Path] = []
        self._by_name: dict[str, LoraEntry] = {}
        self._by_alias: dict[str, LoraEntry] = {}
        self._ambiguous: dict[str, list[str]] = {}
        self._tensors: dict[Path, tuple[tuple, dict]] = {}
        self.refresh()

    def refresh(self) -> None:
        """Rescan the folder (new files from a run that is still training show up here)."""
        if not self.folder.is_dir():
            raise InstantLoraError(f"LoRA folder not found: {self.folder}",
                                   hint="train a LoRA first (it creates the folder), or point the LoRA folder "
                                        "(--lora_dir / --lora-dir) at your .safetensors LoRAs", path=self.folder)
        entries, unreadable = [], []
        # Hidden names are our atomic-write temp files (and other tools' partial files): skip them.
        for path in sorted(p for p in self.folder.rglob("*.safetensors") if not p.name.startswith(".")):
            try:
                md = read_metadata(path)
            except InstantLoraError:
                unreadable.append(path)
                continue
            entries.append(LoraEntry(path.stem, path, md.get("ss_output_name", "") or "", md))
        by_name: dict[str, LoraEntry] = {}
        for e in entries:
            by_name.setdefault(e.name, e)  # the same stem in two subfolders: the first in sorted order
        holders: dict[str, list[LoraEntry]] = {}
        for e in entries:
            if e.alias and e.alias != e.name:
                holders.setdefault(e.alias, []).append(e)
        by_alias, ambiguous = {}, {}
        for alias, es in holders.items():
            if len(es) == 1 and alias not in by_name:
                by_alias[alias] = es[0]
            else:
                ambiguous[alias] = sorted(x.name for x in es)
        self.entries, self.unreadable = entries, unreadable
        self._by_name, self._by_alias, self._ambiguous = by_name, by_alias, ambiguous

    def names(self) -> list[str]:
        """Every name a tag can use: file stems and unambiguous aliases."""
        return sorted({*self._by_name, *self._by_alias})

    def _lookup(self, name: str) -> LoraEntry | None:
        found = self._by_name.get(name) or self._by_alias.get(name)
        if found:
            return found
        folded = [e for n, e in {**self._by_alias, **self._by_name}.items() if n.lower() == name.lower()]
        return folded[0] if len({e.path for e in folded}) == 1 else None

    def find(self, name: str) -> LoraEntry:
        entry = self._lookup(name)
        if entry is None:
            self.refresh()
            entry = self._lookup(name)
        if entry is not None:
            return entry
        if name in self._ambiguous:
            raise InstantLoraError(f"LoRA '{name}': several files in {self.folder} carry that name "
                                   f"({', '.join(self._ambiguous[name][:5])}).",
                                   hint=f"name the file instead, e.g. <lora:{self._ambiguous[name][0]}:1>")
        known = self.names()
        by_lower = {n.lower(): n for n in known}
        close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.5)
        message = f"LoRA '{name}' not found in {self.folder}"
        if close:
            message += f" -- did you mean '{by_lower[close[0]]}'?"
        hint = (f"{len(known)} LoRAs there: " + ", ".join(known[:8]) + (" ..." if len(known) > 8 else "")) if known else \
            "the folder has no .safetensors LoRA files"
        raise InstantLoraError(message, hint=hint)

    def load(self, entry: LoraEntry) -> dict:
        """The file's tensors (CPU), cached by path + size + mtime so a rewritten file is reloaded."""
        from ..lora.kohya_file import read_lora_file

        try:
            st = entry.path.stat()
        except OSError as e:
            raise InstantLoraError(f"{entry.path} disappeared ({e.strerror}).", path=entry.path) from e
        stamp = (st.st_size, st.st_mtime_ns)
        cached = self._tensors.get(entry.path)
        if cached and cached[0] == stamp:
            return cached[1]
        try:
            sd, _ = read_lora_file(entry.path)
        except Exception as e:
            raise InstantLoraError(f"{entry.path.name} could not be read ({e}).", path=entry.path) from e
        self._tensors.pop(entry.path, None)
        while len(self._tensors) >= self.CACHE_SIZE:
            self._tensors.pop(next(iter(self._tensors)))
        self._tensors[entry.path] = (stamp, sd)
        return sd
