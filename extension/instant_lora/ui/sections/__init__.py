"""The page's sections, top to bottom: dataset, model (& LoRA), train, result, test. Each module's
`build(gr, ctx)` lays out its components inside the open Blocks and returns them in a small
dataclass; nothing here handles an event (that is `ui.wiring`). Gradio is passed in, never
imported here, so importing the UI package stays cheap."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BuildContext:
    host: object  # host.base.Host
    job: object  # jobs.TrainingJob
    demo: object  # the gr.Blocks being built (hosts look components up by elem_id in it)
    form: dict  # initial form values (fields.initial_values())
    fields: dict = field(default_factory=dict)  # config field name -> component, filled in by the sections
    lang: str = "en"  # the page's language: messages made while it runs are shown in it

    def tr(self, message):
        """A message made in English (a handler's, the trainer's), in the page's language."""
        from ...i18n import translate

        return translate(message, self.lang) if isinstance(message, str) else message
