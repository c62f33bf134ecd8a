"""Regenerate the committed golden key lists for SDXL and SD2.x (sdxl_lora_keys.txt,
sd2_lora_keys.txt): the sorted LoRA module names of the reference trainer's default targets,
made by the writer's own naming over skeletons of the full-size models (bundled configs, no
weights). tests/test_lora_keys_families.py checks every environment against these files.

    python tests/data/make_golden_keys.py            # rewrite both lists
    python tests/data/make_golden_keys.py --check    # exit 1 when a list differs

Only rewrite them on purpose: a change in these names breaks every LoRA file already written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent
sys.path[:0] = [str(TESTS), str(TESTS.parent / "extension")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)

    import test_lora_keys_families as keys

    status = 0
    for family, folder in (("sdxl", keys.SDXL_CONFIG), ("sd2", keys.SD2_CONFIG)):
        if not (folder / "unet" / "config.json").is_file():
            print(f"{family}: bundled configs missing ({folder}); skipped", file=sys.stderr)
            status = 1
            continue
        unet, encoders = keys.build_skeleton(family, folder)
        text = "\n".join(sorted(keys.family_names(unet, encoders))) + "\n"
        path = keys.GOLDEN[family]
        if args.check:
            same = path.is_file() and path.read_text() == text
            print(f"{path.name}: {'up to date' if same else 'DIFFERS'}")
            status |= 0 if same else 1
        else:
            path.write_text(text)
            print(f"{path.name}: {text.count(chr(10))} names written")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
