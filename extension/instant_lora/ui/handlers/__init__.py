"""What the UI's controls do, as plain functions of plain values: no Gradio, no torch at import.
One module per section (dataset, run = model & LoRA + train, progress = train + result); the test
panel's are in `ui.testing`. The wiring calls them and turns their results into component updates."""

from __future__ import annotations

from ...errors import InstantLoraError
from ...i18n import t


def error_message(e: Exception) -> str:
    """An error as the user reads it: ours with its hint, anything else named (never "see console")."""
    from ...request import RequestError

    if isinstance(e, RequestError):
        return problems_message(e.problems, e.hint)
    if isinstance(e, InstantLoraError):
        return f"**{e.message}**" + (f"\n\n{e.hint}" if e.hint else "")
    return f"**Unexpected error:** {type(e).__name__}: {e}"


def problems_message(problems, hint: str | None = None, title: str = "Cannot start; fix these settings:") -> str:
    """Each (field, message) problem as a line naming the form's label and the setting."""
    from ..fields import label_for

    lines = [f"**{title}**"]
    for name, message in problems:
        lines.append("- " + (t("**{label}** (`{name}`) {message}", label=label_for(name), name=name, message=message)
                             if name else message))
    if hint:
        lines.append(f"\n{hint}")
    return "\n".join(lines)
