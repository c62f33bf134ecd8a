"""Every handler of the UI in one import, for tests and hosts: plain functions of plain values (no
Gradio; torch only inside the parameter count). They live in `ui.handlers` by section and in
`ui.testing` (the Test panel); the wiring in `ui.wiring` binds them to components."""

from .fields import (ADVANCED_FIELDS, BASIC_FIELDS, FORM_FIELDS, choices_for, help_for, initial_values, label_for, read_value,
                     shown_value, starting_values, user_values)
from .handlers import error_message, problems_message
from .handlers.buckets import bucket_settings
from .handlers.dataset import (DatasetView, auto_caption, bucketed_gallery, caption_checks, caption_of, dataset_view,
                               describe_uploads, import_uploads, reg_view, save_caption, thumbnail)
from .handlers.progress import POLLED, loss_chart_svg, poll, progress_html, result_markdown
from .handlers.run import (RunForm, cancel_training, checkpoint_choices, live_plan, lora_parameter_count, preset_choices,
                           preset_form, run_request, save_form_preset, start_training)

__all__ = [
    # the form
    "BASIC_FIELDS", "ADVANCED_FIELDS", "FORM_FIELDS", "choices_for", "help_for", "initial_values", "label_for",
    "read_value", "shown_value", "starting_values", "user_values", "error_message", "problems_message",
    # 1. dataset
    "DatasetView", "dataset_view", "caption_checks", "thumbnail", "save_caption", "caption_of", "describe_uploads",
    "import_uploads", "auto_caption", "bucket_settings", "bucketed_gallery", "reg_view",
    # 2. model & LoRA, 3. train
    "RunForm", "run_request", "start_training", "cancel_training", "live_plan", "lora_parameter_count",
    "preset_choices", "preset_form", "save_form_preset", "checkpoint_choices",
    # 3. train, 4. result: what the page polls
    "POLLED", "poll", "progress_html", "loss_chart_svg", "result_markdown",
]
