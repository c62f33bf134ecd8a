"""The English messages the trainer and the UI handlers make, found in the source: the catalogue's
message keys. Run it to see which have no entry in a language yet:

    python localizations/messages.py zh-TW        # the missing keys, as a JSON skeleton on stdout

A message is what reaches the user: an error's text and hint, a problem or warning appended to a
list, a Status or Warn event, a plan line, what a UI handler returns, and every `t("...")`
template. An f-string becomes a template whose {placeholders} are named after their expressions
(`{path.name}` -> `{path_name}`); `i18n.translate` matches the finished message against it and
translates what a placeholder matched in turn. A message shorter than two words, a docstring, a
log line for developers and what the command line prints are not keys.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "extension" / "instant_lora"
SKIP_FILES = {"selftest.py", "tiny.py"}  # developer tools, not the user's words
# Modules whose returned and appended strings are what the UI shows.
SHOWN_MODULES = ("ui/", "host/", "model_family.py", "train/plan.py", "train/data.py", "train/estimate.py", "train/memory_estimate.py",
                 "request.py", "presets.py", "model_sources.py", "model_download.py")
ERROR_CALLS = re.compile(r"(Error|Exception|Warn|Status|Failed|Unsupported\w*|Issue|Problem|ModelFamily)$")  # ModelFamily: its reason
MESSAGE_KWARGS = ("hint", "message", "title")
LIST_NAMES = re.compile(r"(problems|warnings|lines|notes|messages|parts|out|hints|reasons|tips|sentences)$")
TEMPLATE_MARK = "\0"
_WORDS = re.compile(r"[A-Za-z]{2,}[^{}]*\s[^{}]*[A-Za-z]{2,}")


def _name(expr: ast.AST, used: dict) -> str:
    src = ast.unparse(expr)
    name = re.sub(r"\W+", "_", src).strip("_")[:32] or "value"
    if name[0].isdigit():
        name = "v" + name
    key = used.setdefault(src, name if name not in used.values() else f"{name}_{len(used)}")
    return key


def template_of(node: ast.AST, used: dict | None = None, found: list | None = None) -> str | None:
    """The template a string expression makes, or None when it is not made of text. IfExp and
    other expressions inside become placeholders; string branches are collected into `found`."""
    used = {} if used is None else used
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.replace("{", "{{").replace("}", "}}")
    if isinstance(node, ast.JoinedStr):
        out = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                out.append(str(value.value).replace("{", "{{").replace("}", "}}"))
            elif isinstance(value, ast.FormattedValue):
                _collect_branches(value.value, found)
                out.append("{" + _name(value.value, used) + "}")
        return "".join(out)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = template_of(node.left, used, found), template_of(node.right, used, found)
        if left is None and right is None:
            return None
        return (left if left is not None else "{" + _name(node.left, used) + "}") + \
               (right if right is not None else "{" + _name(node.right, used) + "}")
    if isinstance(node, ast.IfExp):
        _collect_branches(node, found)
        return None
    return None


def _collect_branches(node: ast.AST, found: list | None) -> None:
    if found is None:
        return
    for sub in ast.walk(node):
        if isinstance(sub, (ast.JoinedStr, ast.Constant)) and isinstance(getattr(sub, "value", None), (str, list)):
            t = template_of(sub, {}, found)
            if t is not None:
                found.append(t)


def _strings(node: ast.AST, found: list) -> None:
    """Templates of a message expression (and of its conditional parts)."""
    if node is None:
        return
    if isinstance(node, ast.IfExp):
        _strings(node.body, found)
        _strings(node.orelse, found)
        return
    if isinstance(node, ast.BoolOp):
        for v in node.values:
            _strings(v, found)
        return
    if isinstance(node, (ast.ListComp, ast.GeneratorExp, ast.SetComp)):  # [f"..." for x in xs]
        _strings(node.elt, found)
        return
    if isinstance(node, (ast.Tuple, ast.List)):  # (field, message) problems: the words are in its strings
        for v in node.elts:
            _strings(v, found)
        return
    t = template_of(node, {}, found)
    if t is not None:
        found.append(t)


def _func_name(call: ast.Call) -> str:
    f = call.func
    return f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""


def messages_in(path: Path) -> list[str]:
    rel = path.relative_to(PACKAGE).as_posix()
    shown = rel.startswith(SHOWN_MODULES)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _func_name(node)
            if name == "t" and node.args and isinstance(node.args[0], ast.Constant):
                found.append(TEMPLATE_MARK + node.args[0].value)  # written for the catalogue: even one word
                continue
            if ERROR_CALLS.search(name):
                for arg in node.args[:3]:  # the message, or (kind, message) as a lint issue has it
                    _strings(arg, found)
                for kw in node.keywords:
                    if kw.arg in MESSAGE_KWARGS:
                        _strings(kw.value, found)
            elif shown and name == "join" and node.args:  # "; ".join(f"..." for ...)
                _strings(node.args[0], found)
            elif shown and name in ("append", "extend", "insert") and isinstance(node.func, ast.Attribute):
                owner = ast.unparse(node.func.value)
                if LIST_NAMES.search(owner):
                    for arg in node.args[-1:]:
                        items = arg.elts if isinstance(arg, (ast.List, ast.Tuple)) else [arg]
                        for item in items:
                            _strings(item, found)
            else:
                for kw in node.keywords:
                    if kw.arg in ("hint",):
                        _strings(kw.value, found)
        elif shown and isinstance(node, ast.Return) and node.value is not None:
            values = node.value.elts if isinstance(node.value, (ast.Tuple, ast.List)) else [node.value]
            for v in values:
                if id(v) not in docstrings:
                    _strings(v, found)
        elif shown and isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and node.value is not None:
            # words kept in a variable or a list on their way to a message: `seed = "a random seed" if ...`,
            # `lines = [f"..."]`, `lines += [...]`, NOT_STARTED = "..."
            value = node.value
            items = value.elts if isinstance(value, (ast.List, ast.Tuple)) else \
                value.values if isinstance(value, ast.Dict) else [value]
            if isinstance(value, ast.Dict) and isinstance(node, ast.Assign) and rel.startswith("ui/") and \
                    all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets):
                # a constant table of words (STATES, STAGES): every value is shown, even one word
                found += [TEMPLATE_MARK + v.value for v in value.values
                          if isinstance(v, ast.Constant) and isinstance(v.value, str)]
                continue
            for item in items:
                if isinstance(item, (ast.Constant, ast.JoinedStr, ast.BinOp, ast.IfExp)):
                    _strings(item, found)
    return found


def is_message(text: str) -> bool:
    """Words a user reads: two or more words; not a path, a URL, a regex or an HTML/SVG fragment."""
    plain = re.sub(r"\{[^{}]*\}", "", text)
    if not _WORDS.search(plain):
        return False
    if plain.lstrip().startswith(("<", "http", "#!", "^", "(?", "pip install ")) or "\\d" in text or "<svg" in text \
            or (plain.lstrip().startswith("--") and " " not in plain.strip()) \
            or re.search(r"\d+px|rgba?\(|:\s*\d+px|;\s*[a-z-]+:", text):  # CSS
        return False
    return True


def all_messages() -> list[str]:
    """Every message key in the package, in a stable order, without repeats."""
    out: dict[str, None] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in SKIP_FILES or "__pycache__" in path.parts:
            continue
        for text in messages_in(path):
            forced = text.startswith(TEMPLATE_MARK)
            text = text.lstrip(TEMPLATE_MARK).strip()
            if text and (forced or is_message(text)):
                out.setdefault(text, None)
    return list(out)


def main(argv: list[str]) -> int:
    lang = argv[0] if argv else "zh-TW"
    sys.path.insert(0, str(PACKAGE.parent))
    from instant_lora.i18n import catalogue

    have = catalogue(lang)
    missing = {m: "" for m in all_messages() if m not in have}
    json.dump(missing, sys.stdout, ensure_ascii=False, indent=1)
    print(f"\n{len(missing)} of {len(all_messages())} messages have no {lang} entry", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
