"""Auto-captioning by CLIP interrogation: label banks ranked against each image's CLIP embedding.

    options.py      CaptionOptions: every setting, with its one-line help
    banks.py        label banks (label_banks/<category>.txt), the phrases captions are made of
    weights.py      find CLIP weights on disk (or download), read any checkpoint format
    clip_model.py   build/load/free the model; weights identity; fast label encoding
    embed_cache.py  label embeddings cached on disk per weights identity
    compose.py      ranked labels -> caption: top-k, de-duplication, 75-token cap
    interrogate.py  caption_folder(): batches, progress, report
    lint.py         lint_captions(): empty/duplicate/trigger/constant-tag/too-long checks
    cli.py          the `caption` subcommand

Importing this package does not import torch or open_clip; they load on first use.
"""

from .cli import add_caption_subcommand, run_caption_command
from .clip_model import free_clip_model
from .interrogate import CaptionedImage, CaptionReport, caption_folder
from .lint import LintIssue, LintReport, lint_captions
from .options import CaptionOptions

__all__ = [
    "CaptionOptions", "CaptionReport", "CaptionedImage", "caption_folder",
    "LintIssue", "LintReport", "lint_captions",
    "add_caption_subcommand", "run_caption_command", "free_clip_model",
]
