"""The weight x epoch grid: rows = the files a run saved (epochs, steps, final), columns = LoRA
weights, one fixed seed; and the chosen cell as the LoRA card's preview and preferred weight.

Any `render(prompt_with_tags, seed, settings) -> PIL.Image` can draw the cells: the standalone
app passes generate.DiffusersRenderer, the WebUI its own txt2img. Weight 0 renders the prompt
without the run's tag (the base model), once for the whole column.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InstantLoraError
from .infotext import format_infotext, save_png
from .settings import GenerationSettings
from .tags import remove_lora_tags, with_lora_tag

DEFAULT_WEIGHTS = (0.0, 0.4, 0.7, 1.0)
_EPOCH = re.compile(r"-(\d{6})$")  # run-000003            (the trainer's epoch saves)
_STEP = re.compile(r"-step(\d{8})$")  # run-step00000030   (step saves, and a cancelled run's last file)


@dataclass(frozen=True)
class GridRow:
    label: str  # "epoch 1", "step 30", "final"
    lora: str  # the name its tags use (the file stem)
    path: Path | None = None  # the file, when known: where a chosen cell's preview goes
    steps: int | None = None


def _int_or_none(text) -> int | None:
    try:
        return int(text)
    except (TypeError, ValueError):
        return None


def run_rows(folder: Path | str, run_name: str) -> list[GridRow]:
    """The saved files of run `run_name` in `folder`, in training order, the final file last."""
    from .lora_files import read_metadata

    folder = Path(folder)
    rows = []
    for path in sorted(folder.glob("*.safetensors")):
        stem = path.stem
        if stem == run_name:
            kind, number = "final", None
        elif stem.startswith(run_name) and _EPOCH.fullmatch(stem[len(run_name):]):
            kind, number = "epoch", int(stem[len(run_name) + 1:])
        elif stem.startswith(run_name) and _STEP.fullmatch(stem[len(run_name):]):
            kind, number = "step", int(stem[len(run_name) + 5:])
        else:
            continue
        try:
            steps = _int_or_none(read_metadata(path).get("ss_steps"))
        except InstantLoraError:
            continue  # half-written or damaged: not a row
        if kind == "step" and steps is None:
            steps = number
        label = "final" if kind == "final" else f"{kind} {number}"
        rows.append((kind == "final", steps if steps is not None else -1, number or 0, GridRow(label, stem, path, steps)))
    if not rows:
        raise InstantLoraError(f"no saved files of the run '{run_name}' in {folder}",
                               hint=f"expected {run_name}.safetensors, {run_name}-000001.safetensors or {run_name}-step00000010.safetensors")
    return [r[-1] for r in sorted(rows, key=lambda r: r[:3])]


def _font(size: int):
    """PIL's built-in font: scalable on Pillow >= 10.1, the fixed small bitmap font before that."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 (the WebUI pins 9.5) has no size argument
        return ImageFont.load_default()


def _text_box(text: str, font) -> tuple[int, int, int, int]:
    from PIL import Image, ImageDraw

    return ImageDraw.Draw(Image.new("RGB", (1, 1))).textbbox((0, 0), text, font=font)


@dataclass
class GridLayout:
    label_width: int  # left column with the row labels
    header_height: int  # top row with the column labels
    cell_width: int
    cell_height: int
    rows: int
    cols: int

    def cell_origin(self, row: int, col: int) -> tuple[int, int]:
        return self.label_width + col * self.cell_width, self.header_height + row * self.cell_height

    def cell_at(self, x: int, y: int) -> tuple[int, int] | None:
        """(row, col) under pixel (x, y) of the grid image, or None on a label."""
        col, row = (x - self.label_width) // self.cell_width, (y - self.header_height) // self.cell_height
        if x < self.label_width or y < self.header_height or not (0 <= row < self.rows and 0 <= col < self.cols):
            return None
        return row, col


def draw_grid(cells: list[list], row_labels: list[str], col_labels: list[str]):
    """(image, layout): the cells side by side, row labels on the left, column labels on top,
    in PIL's built-in font (no font files needed), sized to the cells where Pillow allows."""
    from PIL import Image, ImageDraw

    if not cells or not cells[0]:
        raise InstantLoraError("a grid needs at least one row and one column")
    cw, ch = cells[0][0].size
    if any(c.size != (cw, ch) for row in cells for c in row):
        raise InstantLoraError("grid cells differ in size", hint="render every cell at the same width and height")
    font_size = max(11, min(cw, ch) // 16)  # 11 px at 64 px cells, 32 px at 512
    font = _font(font_size)
    pad = max(6, font_size // 2)
    row_boxes = [_text_box(t, font) for t in row_labels]
    col_boxes = [_text_box(t, font) for t in col_labels]
    label_w = max(b[2] - b[0] for b in row_boxes) + 2 * pad
    header_h = max(b[3] - b[1] for b in col_boxes) + 2 * pad
    layout = GridLayout(label_w, header_h, cw, ch, len(cells), len(cells[0]))
    grid = Image.new("RGB", (label_w + layout.cols * cw, header_h + layout.rows * ch), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for c, (text, box) in enumerate(zip(col_labels, col_boxes)):
        x0 = label_w + c * cw + (cw - (box[2] - box[0])) // 2 - box[0]
        draw.text((x0, (header_h - (box[3] - box[1])) // 2 - box[1]), text, fill=(0, 0, 0), font=font)
    for r, (text, box) in enumerate(zip(row_labels, row_boxes)):
        y0 = header_h + r * ch + (ch - (box[3] - box[1])) // 2 - box[1]
        draw.text((pad - box[0], y0), text, fill=(0, 0, 0), font=font)
        for c, cell in enumerate(cells[r]):
            grid.paste(cell.convert("RGB"), layout.cell_origin(r, c))
    return grid, layout


def weight_label(w: float) -> str:
    return f"w={w:g}"


@dataclass
class GridResult:
    image: object  # PIL image of the whole grid
    layout: GridLayout
    cells: list[list]  # [row][col] PIL images
    prompts: list[list[str]]  # [row][col] the prompt each cell was rendered with
    rows: list[GridRow]
    weights: list[float]
    seed: int
    settings: GenerationSettings
    infotext: str
    model_name: str = ""
    model_hash: str | None = None
    renders: int = 0  # how many images were rendered (the weight-0 column once)
    row_labels: list[str] = field(default_factory=list)
    col_labels: list[str] = field(default_factory=list)
    path: Path | None = None  # where save() last wrote the grid

    def cell_infotext(self, row: int, col: int) -> str:
        """The cell's own infotext: what "Send to txt2img" fills in. The renderer's own when it
        gave one (the WebUI's, with its hashes), else written here in the same layout."""
        written = getattr(self.cells[row][col], "info", {}).get("parameters")
        if written:
            return written
        return format_infotext(self.prompts[row][col], self.settings, self.seed, self.model_name, self.model_hash)

    def save(self, path: Path | str) -> Path:
        self.path = save_png(self.image, path, self.infotext)
        return self.path

    def choose(self, row: int, col: int) -> tuple[Path, Path]:
        """Make cell (row, col) its LoRA's card preview and its weight the preferred weight."""
        target = self.rows[row].path
        if target is None:
            raise InstantLoraError(f"the file behind row '{self.rows[row].label}' is not known; cannot set its preview")
        return set_preview(target, self.cells[row][col], self.weights[col], self.cell_infotext(row, col))


def build_grid(render, prompt: str, rows: list[GridRow], weights=DEFAULT_WEIGHTS, *, seed: int,
               settings: GenerationSettings, model_name: str = "", model_hash: str | None = None,
               replace=(), progress=None) -> GridResult:
    """Render every (row, weight) cell with one seed and assemble the labelled grid.

    `prompt` is the user's prompt: its tags naming a row's LoRA (or a name in `replace`, such as
    the run's alias) are replaced by each cell's tag; other tags stay. `progress(done, total,
    image)` is called after each rendered cell; it may raise to stop."""
    if not rows:
        raise InstantLoraError("the grid has no rows (no saved LoRA files)")
    weights = [float(w) for w in weights]
    if not weights:
        raise InstantLoraError("the grid has no weights", hint="e.g. 0, 0.4, 0.7, 1")
    base = remove_lora_tags(prompt, {r.lora for r in rows} | set(replace))
    total = len(rows) * sum(1 for w in weights if w != 0) + (1 if 0 in weights else 0)
    cells, prompts, done, zero = [], [], 0, None
    for row in rows:
        row_cells, row_prompts = [], []
        for w in weights:
            cell_prompt = with_lora_tag(base, row.lora, w)
            if w == 0 and zero is not None:
                image = zero  # the base model's image does not depend on the row
            else:
                image = render(cell_prompt, seed, settings)
                done += 1
                if progress is not None:
                    progress(done, total, image)
                if w == 0:
                    zero = image
            row_cells.append(image)
            row_prompts.append(cell_prompt)
        cells.append(row_cells)
        prompts.append(row_prompts)
    row_labels = [r.label for r in rows]
    col_labels = [weight_label(w) for w in weights]
    image, layout = draw_grid(cells, row_labels, col_labels)
    extra = {"Grid LoRAs": ", ".join(r.lora for r in rows), "Grid rows": ", ".join(row_labels),
             "Grid weights": ", ".join(f"{w:g}" for w in weights)}
    infotext = format_infotext(base, settings, seed, model_name, model_hash, extra)
    return GridResult(image, layout, cells, prompts, list(rows), weights, seed, settings, infotext, model_name, model_hash,
                      done, row_labels, col_labels)


def sd_version_of(lora_path: Path | str) -> str:
    """The WebUI card's "sd version" (its filter value) for a LoRA file, read from its metadata as
    the WebUI's Lora extension reads it: `ss_base_model_version` "sdxl_..." = SDXL, `ss_v2` "True"
    (or a "sd_v2..." version) = SD2, else SD1."""
    from .lora_files import read_metadata

    try:
        metadata = read_metadata(Path(lora_path))
    except InstantLoraError:
        return "SD1"
    version = str(metadata.get("ss_base_model_version", ""))
    if version.startswith("sdxl_"):
        return "SDXL"
    if str(metadata.get("ss_v2", "")) == "True" or version.startswith("sd_v2"):
        return "SD2"
    return "SD1"


def set_preview(lora_path: Path | str, image, weight: float, infotext: str | None = None) -> tuple[Path, Path]:
    """`<stem>.preview.png` beside the LoRA (the WebUI card's thumbnail) and `preferred weight` in
    `<stem>.json` (other keys kept: trigger words, notes; a new sidecar gets the file's "sd
    version"). Returns (preview, sidecar)."""
    from ..lora.kohya_file import atomic_write_bytes

    lora_path = Path(lora_path)
    if not lora_path.is_file():
        raise InstantLoraError(f"LoRA file not found: {lora_path}", path=lora_path)
    if weight == 0:
        raise InstantLoraError("a weight-0 image is the base model without the LoRA; it cannot be the LoRA's preview.",
                               hint="pick a cell with a weight above 0")
    preview = lora_path.with_name(lora_path.stem + ".preview.png")
    sidecar = lora_path.with_suffix(".json")
    data = {"description": "", "sd version": sd_version_of(lora_path), "activation text": "", "preferred weight": 0.0,
            "notes": ""}
    if sidecar.is_file():
        try:
            data = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InstantLoraError(f"{sidecar.name} is not valid JSON ({e}); not overwriting it.",
                                   hint="fix or delete the file, then choose the preview again", path=sidecar) from e
        if not isinstance(data, dict):
            raise InstantLoraError(f"{sidecar.name} does not hold a JSON object; not overwriting it.", path=sidecar)
    data["preferred weight"] = float(weight)
    save_png(image, preview, infotext)
    atomic_write_bytes(sidecar, (json.dumps(data, indent=4, ensure_ascii=False) + "\n").encode("utf-8"))
    return preview, sidecar
