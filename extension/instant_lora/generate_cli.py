"""`generate`: test LoRAs headless with `<lora:name:w>` prompts, or draw a run's weight x epoch grid.

    python standalone_app.py generate --pretrained_model_name_or_path MODEL --lora_dir DIR \\
        --prompt "<lora:name:0.8> a photo of sks dog" --seed 1 --out image.png
    python standalone_app.py generate ... --prompt "<lora:name:1> a photo of sks dog" --grid --out grid.png

Prints the written file. Exit status: 0 ok, 2 error (one line on stderr, with a hint).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from .errors import InstantLoraError

DESCRIPTION = """\
Generate an image with the base model and the LoRAs named in the prompt (<lora:name:weight>,
<lora:name:te_weight:unet_weight>; name = file stem or its ss_output_name alias). The LoRAs are
merged into the weights for the image and taken out exactly afterwards. The PNG carries the
prompt and settings in its "parameters" text, as the WebUI writes them.
With --grid: rows = every file the run of the prompt's LoRA saved (epochs, steps, final),
columns = --grid_weights, one seed; weight 0 is the base model."""


def _weights(text: str) -> list[float]:
    try:
        values = [float(p) for p in text.replace(";", ",").split(",") if p.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers like 0,0.4,0.7,1 ({e})") from e
    if not values:
        raise argparse.ArgumentTypeError("expected at least one weight")
    return values


def add_generate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from .sample.settings import SAMPLERS

    m = parser.add_argument_group("model and LoRAs")
    m.add_argument("--pretrained_model_name_or_path", required=True, metavar="MODEL",
                   help="SD1.x, SD2.x or SDXL checkpoint (.safetensors/.ckpt), diffusers folder, or the name of one `models` lists: "
                        "the base model the LoRA was trained on")
    m.add_argument("--model_config_dir", default=None,
                   help="diffusers config folder for a single-file checkpoint shaped unlike SD1.5, SD2.1 or SDXL base")
    m.add_argument("--lora_dir", default=None,
                   help="folder of LoRA files the tags name (default: the WebUI's models/Lora when found, else ./output)")
    m.add_argument("--webui_dir", default=None, help="the WebUI folder, to find its models/Lora")
    g = parser.add_argument_group("generation")
    g.add_argument("--prompt", required=True, help='e.g. "<lora:my_style:0.8> a cat"')
    g.add_argument("--negative_prompt", default="")
    g.add_argument("--seed", type=int, default=-1, help="-1 = random (the seed used is printed and saved in the PNG)")
    g.add_argument("--steps", type=int, default=20)
    g.add_argument("--width", type=int, default=None,
                   help="default: --height, else the model family's size (SD1.x 512, SD2.x v-prediction 768, SDXL 1024)")
    g.add_argument("--height", type=int, default=None, help="default: --width, else the model family's size")
    g.add_argument("--cfg", "--cfg_scale", dest="cfg", type=float, default=7.0, help="classifier-free guidance scale")
    g.add_argument("--sampler", default="Euler a", help=f"one of: {', '.join(SAMPLERS)}")
    g.add_argument("--clip_skip", type=int, default=1,
                   help="1 = last text-encoder layer (the WebUI's meaning); SDXL always uses its encoders' penultimate layers")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    g.add_argument("--precision", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="UNet/text-encoder precision; auto = fp16 on CUDA, fp32 on CPU (the VAE always runs fp32)")
    o = parser.add_argument_group("output")
    o.add_argument("--out", required=True, help="PNG file to write")
    o.add_argument("--grid", action="store_true", help="weight x epoch grid of the run of the prompt's LoRA")
    o.add_argument("--grid_weights", type=_weights, default=[0.0, 0.4, 0.7, 1.0], metavar="W,W,...",
                   help="grid columns (default 0,0.4,0.7,1)")
    o.add_argument("--grid_lora", default=None, metavar="NAME",
                   help="the run to grid when the prompt names several LoRAs (default: the first tag's)")
    o.add_argument("--save_preview", action="store_true",
                   help="also make the image the preview of the prompt's one LoRA, and its weight the card's preferred weight")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="standalone_app.py generate", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_generate_arguments(parser)


def _lora_dir(args) -> Path:
    from .output_paths import resolve_output_dir

    folder, _ = resolve_output_dir(None, args.lora_dir, args.webui_dir)
    return folder


def _grid(renderer, args, settings, seed: int, out: Path) -> Path:
    from .sample.generate import model_label
    from .sample.grid import build_grid, run_rows
    from .sample.tags import parse_prompt

    tags = parse_prompt(args.prompt).loras
    name = args.grid_lora or (tags[0].name if tags else None)
    if not name:
        raise InstantLoraError("--grid needs a LoRA: put its tag in the prompt, e.g. \"<lora:my_style:1> a cat\", or pass --grid_lora")
    entry = renderer.loras.find(name)
    run = entry.alias or entry.name
    try:
        rows = run_rows(entry.path.parent, run)
    except InstantLoraError:
        rows = run_rows(entry.path.parent, entry.name)  # a file whose alias is not its run's name
    total = len(rows) * sum(1 for w in args.grid_weights if w != 0) + (1 if 0 in args.grid_weights else 0)
    print(f"grid: {len(rows)} rows ({', '.join(r.label for r in rows)}) x {len(args.grid_weights)} weights = {total} images",
          file=sys.stderr)

    def progress(done, of, image):
        print(f"  {done}/{of}", file=sys.stderr)

    # The prompt's own tag for this run is replaced cell by cell (it may name it by its alias).
    result = build_grid(renderer, args.prompt, rows, args.grid_weights, seed=seed, settings=settings,
                        model_name=model_label(renderer.model), model_hash=getattr(renderer.model, "legacy_hash", None),
                        replace={name, entry.name, run}, progress=progress)
    return result.save(out)


def _generate(args) -> Path:
    from .models import load_sd_model
    from .sample.generate import DiffusersRenderer, pick_device, place_model, resolve_prompt
    from .sample.grid import set_preview
    from .sample.infotext import save_png
    from .sample.lora_files import LoraLibrary
    from .sample.settings import GenerationSettings
    from .sample.tags import parse_prompt

    # Without a size the family's is used (known once the model is loaded); 512 stands in for the checks.
    settings = GenerationSettings(negative_prompt=args.negative_prompt, steps=args.steps, cfg_scale=args.cfg,
                                  sampler=args.sampler, width=args.width or args.height or 512,
                                  height=args.height or args.width or 512, clip_skip=args.clip_skip).checked()
    tags = parse_prompt(args.prompt).loras  # prompt errors before the model loads
    if args.save_preview and (args.grid or len(tags) != 1):
        raise InstantLoraError("--save_preview needs a single image of exactly one <lora:...> tag (not --grid).",
                               hint="for a grid, pick the cell in the app's Test panel")
    library = LoraLibrary(_lora_dir(args)) if (tags or args.grid) else None
    resolve_prompt(args.prompt, library)  # unknown names fail now, not after the (slow) model load
    out = Path(args.out)
    if out.suffix.lower() != ".png":
        raise InstantLoraError(f"--out {out}: the output is a PNG (the settings go in its text chunk).", hint="use a .png name")
    from .model_sources import resolve_model_name

    args.pretrained_model_name_or_path = resolve_model_name(args.pretrained_model_name_or_path, webui_dir=args.webui_dir)  # a bare name, as `train`
    seed = args.seed if args.seed >= 0 else random.randint(0, 2**32 - 1)
    device, dtype = pick_device(args.device, args.precision)
    print(f"loading {args.pretrained_model_name_or_path} ({device}, {str(dtype).replace('torch.', '')}) ...", file=sys.stderr)
    model = place_model(load_sd_model(args.pretrained_model_name_or_path, config_dir=args.model_config_dir), device, dtype)
    if args.width is None and args.height is None:
        from dataclasses import replace

        size = model.family.default_resolution
        settings = replace(settings, width=size, height=size)
    print(f"{model.family.label}, {settings.width}x{settings.height}", file=sys.stderr)
    renderer = DiffusersRenderer(model, library=library)
    print(f"seed {seed}", file=sys.stderr)
    if args.grid:
        return _grid(renderer, args, settings, seed, out)
    image = renderer(args.prompt, seed, settings)
    path = save_png(image, out, image.info["parameters"])
    if args.save_preview:
        entry = library.find(tags[0].name)
        preview, sidecar = set_preview(entry.path, image, tags[0].unet_weight, image.info["parameters"])
        print(f"preview: {preview}; preferred weight {tags[0].unet_weight:g} in {sidecar}", file=sys.stderr)
    return path


def run_generate(argv: list[str]) -> int:
    """The `generate` subcommand; returns the exit status."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has already printed
        return int(e.code or 0)
    try:
        print(_generate(args))
        return 0
    except InstantLoraError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        sys.stdout.flush()
