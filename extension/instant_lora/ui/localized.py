"""The page's words in the user's language, at build time.

The sections are written in English and receive Gradio as a parameter (`build(gr, ctx)`); what
they receive is this stand-in, which makes each component with its label, help line, placeholder
and text (a Button's or Markdown's value, an Accordion's title) passed through one function:
- a UI built for a language (`--lang zh-TW`, any Gradio): the catalogue's translation;
- the standalone app without --lang on a Gradio with `gr.I18n` (5.30+): the text wrapped for
  Gradio's own browser-language lookup;
- English (and the WebUI, whose own localization.js translates the page from the same catalogue):
  the text as it is.
Every text it sees is recorded, so a test can check that the catalogue covers the whole page.
Choices stay as they are: they are the values the handlers receive.
"""

from __future__ import annotations

import re

_TEXT_KWARGS = ("label", "info", "placeholder")
_VALUE_IS_TEXT = {"Button", "Markdown", "DownloadButton", "UploadButton"}
_FIRST_IS_LABEL = {"Accordion", "Tab", "TabItem"}
_WORDS = re.compile(r"[A-Za-z]{2,}")


class LocalizedGradio:
    """`gradio`, with every component's words passed through `text(str) -> str | I18nData`."""

    def __init__(self, gr, text=None):
        self._gr = gr
        self._text = text or (lambda s: s)
        self.seen: list[str] = []  # every text the page was built with, in English, in order

    def __getattr__(self, name):
        attr = getattr(self._gr, name)
        if isinstance(attr, type) and (name in _VALUE_IS_TEXT or name in _FIRST_IS_LABEL or _is_component(attr)):
            return self._component(name, attr)
        return attr

    def words(self, value):
        """`value` in the page's language when it is text with words (numbers and names pass)."""
        if isinstance(value, str) and _WORDS.search(value):
            self.seen.append(value)
            return self._text(value)
        return value

    def _component(self, name, cls):
        def make(*args, **kwargs):
            args = list(args)
            for key in _TEXT_KWARGS:
                if key in kwargs:
                    kwargs[key] = self.words(kwargs[key])
            if name in _FIRST_IS_LABEL and args:  # gr.Accordion("title"); a label= keyword is done above
                args[0] = self.words(args[0])
            elif name in _VALUE_IS_TEXT:
                if args:
                    args[0] = self.words(args[0])
                elif "value" in kwargs:
                    kwargs["value"] = self.words(kwargs["value"])
            return cls(*args, **kwargs)

        make.__name__ = name
        return make


def _is_component(cls) -> bool:
    """A Gradio component class (Textbox, Dropdown, Gallery ...), not Blocks, Row or a helper."""
    base_names = {b.__name__ for b in cls.__mro__}
    return ("Component" in base_names or "IOComponent" in base_names or "FormComponent" in base_names) \
        and cls.__name__ not in ("Blocks", "Row", "Column", "Group", "Box", "State")


BROWSER_LOCALES = {"zh-TW": ("zh-TW", "zh-Hant", "zh-HK")}  # browser locales that read each catalogue


def browser_i18n(gr):
    """On a Gradio with `gr.I18n` (5.30+): (the I18n object for launch(), text -> what to build the
    component with), so the page's labels follow the browser's language; None on older Gradio. A
    text with no entry shows its English key."""
    if not hasattr(gr, "I18n"):
        return None
    from ..i18n import catalogue

    tables = {locale: catalogue(lang) for lang, locales in BROWSER_LOCALES.items() for locale in locales}
    i18n = gr.I18n(**tables)
    known = set().union(*tables.values())
    return i18n, (lambda s: i18n(s) if s in known else s)


def request_language(request) -> str:
    """The language a page's request asks for (its Accept-Language), among those we speak."""
    from ..i18n import from_accept_language

    headers = getattr(request, "headers", None) or {}
    try:
        header = headers.get("accept-language")
    except Exception:
        header = None
    return from_accept_language(header)


# ---- what the page is sent while it runs ------------------------------------------------------------

TRANSLATED_TEXTBOXES = {"il_log"}  # Textboxes holding the app's words; the others hold the user's (captions, paths)


def localize_events(demo, gr, language) -> int:
    """Every event's answer in the page's language: the handlers and the trainer speak English,
    and what they send to a Markdown, an HTML or the log is translated here, on its way out, by
    the one catalogue. `language`: the page's language ("zh-TW"), or a function of the request
    (the browser's Accept-Language) for a page that follows the browser. Returns the events wrapped."""
    from ..i18n import ENGLISH, translate

    if language == ENGLISH:
        return 0
    wrapped = 0
    for block_fn in _block_fns(demo):
        kinds = [_kind(c) for c in _outputs(demo, block_fn)]
        if block_fn.fn is None or not any(kinds):
            continue
        inputs = getattr(block_fn, "inputs", None)
        block_fn.fn = _wrap(block_fn.fn, kinds, language, translate, gr, None if inputs is None else len(inputs))
        wrapped += 1
    return wrapped


def _block_fns(demo) -> list:
    fns = demo.fns
    return list(fns.values()) if isinstance(fns, dict) else list(fns)


def _outputs(demo, block_fn) -> list:
    outs = getattr(block_fn, "outputs", None) or []
    return [demo.blocks.get(o) if isinstance(o, int) else o for o in outs]


def _kind(component) -> str | None:
    name = type(component).__name__
    if name in ("Markdown", "HTML"):
        return name.lower()
    if name == "Textbox" and getattr(component, "elem_id", None) in TRANSLATED_TEXTBOXES:
        return "lines"
    return None


_TEXT_NODE = re.compile(r">([^<>]+)<")


def translate_html(html: str, lang: str, translate) -> str:
    """Each text between tags translated on its own, as the WebUI's localization.js does with a
    page's text nodes: an HTML builder keeps each sentence in one node."""
    import html as html_lib

    def one(m):
        text = m.group(1)
        stripped = text.strip()
        if not stripped or not any(ch.isalpha() for ch in stripped):
            return m.group(0)
        plain = html_lib.unescape(stripped)  # the catalogue holds the text, not its HTML escapes
        done = translate(plain, lang)
        return m.group(0) if done == plain else ">" + text.replace(stripped, html_lib.escape(done, quote=False)) + "<"

    return _TEXT_NODE.sub(one, html)


def _translated(value, kind: str, lang: str, translate):
    if isinstance(value, dict) and "value" in value:  # gr.update(value=...)
        return {**value, "value": _translated(value["value"], kind, lang, translate)}
    if not isinstance(value, str) or not value:
        return value
    if kind == "html":
        return translate_html(value, lang, translate)
    return translate(value, lang)


def _special_params(fn, gr) -> int:
    """How many arguments Gradio adds to a handler's inputs (gr.Progress defaults, event data,
    a request)."""
    import inspect

    count = 0
    for p in inspect.signature(fn).parameters.values():
        annotation = p.annotation
        if isinstance(p.default, gr.Progress) or (isinstance(annotation, type) and
                                                   issubclass(annotation, (gr.EventData, gr.Request))):
            count += 1
    return count


def _wrap(fn, kinds, language, translate, gr, n_inputs=None):
    import functools
    import inspect

    def out(result, lang):
        if len(kinds) == 1:
            return _translated(result, kinds[0], lang, translate) if kinds[0] else result
        if not isinstance(result, (tuple, list)):
            return result
        return type(result)(_translated(v, k, lang, translate) if k else v for v, k in zip(result, kinds)) \
            if len(result) == len(kinds) else result

    per_request = callable(language)

    expected = None if n_inputs is None or not per_request else n_inputs + _special_params(fn, gr)

    def split(args):  # (the page's language, the handler's own arguments)
        if not per_request:
            return language, args
        # Gradio put the request first (or None where it has none); a direct call (a test) did not.
        if args and (isinstance(args[0], gr.Request) or (args[0] is None and len(args) == (expected or -2) + 1)):
            return language(args[0]), args[1:]
        return "en", args

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            lang, args = split(args)
            for result in fn(*args, **kwargs):
                yield out(result, lang)
    else:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            lang, args = split(args)
            return out(fn(*args, **kwargs), lang)

    if per_request:  # Gradio hands a function the request in the place its signature asks for it: first here
        sig = inspect.signature(fn)
        request = inspect.Parameter("il_request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request)
        wrapper.__signature__ = sig.replace(parameters=[request, *sig.parameters.values()])
        wrapper.__annotations__ = {**getattr(fn, "__annotations__", {}), "il_request": gr.Request}
        del wrapper.__wrapped__  # its signature is the wrapper's own now
    return wrapper
