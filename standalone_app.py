"""Instant LoRA, standalone: `python standalone_app.py` (the app) or a subcommand (train, caption, selftest)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "extension"))

from instant_lora.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
