"""One message catalogue for every language the UI speaks, English as the key.

The catalogue is `localizations/<lang>.json` at the extension's root: a flat {"English text":
"translation"} dict, the WebUI's own convention, so the same file both merges with the user's
zh_TW pack inside the WebUI (its localization.js translates the labels it finds on the page) and
serves our own lookup (the standalone app, and every message made while the app runs: plan lines,
warnings, errors, progress).

Two ways in:
- `t(template, lang, **values)`: text we write for the UI. The template is the key, its `{names}`
  are filled after the lookup; the values are not translated (translate them first if they are
  words).
- `translate(message, lang)`: a message the trainer made in English (an error, a plan line). An
  exact key first; else the keys with `{placeholders}` are tried as patterns, and what a
  placeholder matched is translated in turn (an error inside "note: {warning}"). A message with no
  entry stays English: never an empty or broken line.

Languages are named as browsers do ("zh-TW"); the files as the WebUI does (`zh_TW.json`).
"""

from __future__ import annotations

import json
import re
import string
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the extension's root: scripts/, javascript/, localizations/
LOCALIZATIONS = ROOT / "localizations"
ENGLISH = "en"
LANGUAGES = {"en": "English", "zh-TW": "正體中文 (zh-TW)"}
_ALIASES = {"zh_tw": "zh-TW", "zh-tw": "zh-TW", "zh-hant": "zh-TW", "zh-hant-tw": "zh-TW", "zh-hk": "zh-TW",
            "zh-mo": "zh-TW", "zh-hant-hk": "zh-TW", "en": ENGLISH, "en-us": ENGLISH, "en-gb": ENGLISH}


def normalize(lang: str | None) -> str:
    """'zh-TW' for zh_TW / zh-tw / zh-Hant(-TW/-HK) and a WebUI localization named zh_TW (or
    zh-TW, as older packs were); 'en' for anything we have no catalogue for."""
    if not lang:
        return ENGLISH
    key = str(lang).strip().replace("_", "-").lower()
    key = key[:-5] if key.endswith(".json") else key
    if key in _ALIASES:
        return _ALIASES[key]
    # a WebUI localization file named after a pack, e.g. "zh_TW-Chinese": its language prefix
    for alias, name in _ALIASES.items():
        if key.startswith(alias + "-") and name != ENGLISH and "-" in alias:
            return name
    return ENGLISH


def from_accept_language(header: str | None) -> str:
    """The language a browser asks for first among those we speak (its Accept-Language header)."""
    choices = []
    for i, part in enumerate((header or "").split(",")):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                q = 0.0
        if tag:
            choices.append((-q, i, tag))
    for _, _, tag in sorted(choices):
        lang = normalize(tag)
        if lang != ENGLISH or tag.lower().startswith("en"):
            return lang
    return ENGLISH


def catalogue_path(lang: str) -> Path:
    return LOCALIZATIONS / f"{lang.replace('-', '_')}.json"


@lru_cache(maxsize=8)
def catalogue(lang: str) -> dict:
    """{English: translation} for `lang` ({} for English or a language without a file)."""
    lang = normalize(lang)
    if lang == ENGLISH:
        return {}
    try:
        data = json.loads(catalogue_path(lang).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str) and v}


def t(template: str, lang: str | None = None, **values) -> str:
    """`template` in `lang`, its {names} filled with `values` (English when there is no entry)."""
    text = catalogue(normalize(lang)).get(template, template) if lang and normalize(lang) != ENGLISH else template
    if not values:
        return text
    try:
        return text.format(**values)
    except (KeyError, IndexError, ValueError):  # a translation that lost a placeholder: the English
        return template.format(**values)


# ---- messages made in English ---------------------------------------------------------------------

def placeholders(template: str) -> list[str]:
    """The {names} of a template, in order ('' for a positional {})."""
    try:
        return [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError:
        return []


@lru_cache(maxsize=8)
def _patterns(lang: str) -> list:
    """(compiled pattern, its template, translation) for every key with placeholders, the keys with
    the most literal text first (the most specific pattern wins)."""
    out = []
    for key, value in catalogue(lang).items():
        names = placeholders(key)
        if not names:
            continue
        try:
            parts = list(string.Formatter().parse(key))
        except ValueError:
            continue
        regex, literal, groups = "", 0, []
        for text, name, _, _ in parts:
            regex += re.escape(text)
            literal += len(text)
            if name is not None:
                group = f"g{len(groups)}"
                groups.append(name)
                regex += f"(?P<{group}>.*?)"
        try:
            out.append((re.compile(regex + r"\Z", re.S), groups, value, literal, ";" in key))
        except re.error:
            continue
    out.sort(key=lambda p: -p[3])
    return out


@lru_cache(maxsize=4096)  # the page sends the same lines again and again (legends, notes, labels)
def translate(message: str, lang: str | None, _depth: int = 0) -> str:
    """A message made in English, in `lang`: an exact entry, else the most specific pattern that
    matches the whole message (what its placeholders matched translated in turn), else English.
    Paragraphs (blank-line separated) and list lines are translated one by one."""
    lang = normalize(lang)
    if lang == ENGLISH or not message or _depth > 4:
        return message
    entries = catalogue(lang)
    if message in entries:
        return entries[message]
    if "\n" in message:
        return "\n".join(_translate_line(line, lang, _depth) for line in message.split("\n"))
    return _translate_one(message, lang, _depth)


_LINE = re.compile(r"^(\s*(?:[-*] |#+ |> )?)(.*?)(\s*)$", re.S)


def _translate_line(line: str, lang: str, depth: int) -> str:
    m = _LINE.match(line)
    lead, body, tail = m.group(1), m.group(2), m.group(3)
    return lead + _translate_one(body, lang, depth) + tail if body else line


def _translate_one(text: str, lang: str, depth: int) -> str:
    entries = catalogue(lang)
    if text in entries:
        return entries[text]
    if len(text) > 4 and text.startswith("**") and text.endswith("**") and "**" not in text[2:-2]:
        return "**" + _translate_one(text[2:-2], lang, depth) + "**"  # emphasis around a message
    stripped = text.strip()
    if stripped != text and stripped in entries:
        return text.replace(stripped, entries[stripped])
    for pattern, names, value, _, has_clauses in _patterns(lang):
        m = pattern.match(text)
        if not m:
            continue
        found = {}
        if not has_clauses and any("; " in (m.group(f"g{i}") or "") for i in range(len(names))):
            continue  # a value would swallow a clause of its own ("a; b"): the clauses are translated apart
        for i, name in enumerate(names):
            got = m.group(f"g{i}")
            found.setdefault(name, translate(got, lang, depth + 1) if got and not _is_data(got) else got)
        try:
            return _fill(value, found)
        except (KeyError, IndexError, ValueError):
            continue
    if depth < 4:  # several sentences or clauses made apart ("a; b", "x + y"), each its own entry
        for splitter, joiner in ((_SENTENCE_END, " "), (_CLAUSE, "; "), (_PLUS, " + ")):
            pieces = splitter.split(text)
            if len(pieces) > 1:
                done = [_translate_one(p, lang, depth + 1) for p in pieces]
                if done != pieces:
                    return joiner.join(done)
    return text


_CLAUSE = re.compile(r"; ")
_PLUS = re.compile(r" \+ ")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z*`(])")


_DATA = re.compile(r"^[\s\d.,:;%x×+\-/()~<>=]*$")


def _is_data(text: str) -> bool:
    """Numbers, sizes and the like: never looked up."""
    return bool(_DATA.match(text))


def _fill(template: str, values: dict) -> str:
    out = []
    for text, name, spec, conv in string.Formatter().parse(template):
        out.append(text)
        if name is not None:
            out.append(str(values[name]))
    return "".join(out)


def translator(lang: str | None):
    """translate() bound to one language: what a UI built for `lang` passes around as `tr`."""
    lang = normalize(lang)
    if lang == ENGLISH:
        return lambda message: message
    return lambda message: translate(message, lang) if isinstance(message, str) else message
