"""`--help` for typed configs: per-field docstrings read from the source, and the help text."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import json
import textwrap
from collections.abc import Iterator
from typing import Any

from posttrain.config import _hints, _join, _plain, _section_type, _type_name


@functools.cache
def _class_docs(klass: type) -> dict[str, str]:
    """`{field: docstring}` for the string literals right after annotated assignments."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
    except (OSError, TypeError, SyntaxError):  # no source (REPL, exec) or odd indentation
        return {}
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
    body = node.body if node is not None else []
    docs = {}
    for stmt, nxt in zip(body, body[1:], strict=False):
        is_doc = isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
        literal = nxt.value.value if is_doc else None  # type: ignore[attr-defined]
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            if isinstance(literal, str):
                docs[stmt.target.id] = inspect.cleandoc(literal)
    return docs


def field_docs(cls: type, _seen: frozenset = frozenset()) -> dict[str, str]:
    """Every field's docstring by dotted name (`""` where a field has none), nested sections
    (`Sub` or `Sub | None`) included recursively; inherited fields take the nearest docstring."""
    own: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        own.update(_class_docs(klass) if dataclasses.is_dataclass(klass) else {})
    hints, docs = _hints(cls), {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        docs[f.name] = own.get(f.name, "")
        sub = _section_type(hints[f.name])
        if sub is not None and sub not in _seen | {cls}:  # a recursive config stops here
            for key, doc in field_docs(sub, _seen | {cls}).items():
                docs[f"{f.name}.{key}"] = doc
    return docs


_REQUIRED = object()


def _walk(cls: type, prefix: str, defaults: Any, seen: frozenset) -> Iterator[tuple[str, Any, Any]]:
    """(dotted name, annotation, default) of every settable leaf field, in declaration order."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init:
            continue
        name = _join(prefix, f.name)
        if defaults is not None:
            default = getattr(defaults, f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = _REQUIRED
        sub = _section_type(hints[f.name])
        if sub is None or sub in seen:
            yield name, hints[f.name], default
            continue
        if not isinstance(default, sub) and default is not _REQUIRED:
            yield name, hints[f.name], default  # e.g. an optional section, off by default
        yield from _walk(sub, name, default if isinstance(default, sub) else None, seen | {cls})


def format_help(cls: type, prog: str) -> str:
    """`--help` text: every dotted field with its type, default and docstring."""
    lines = [f"usage: {prog} [--section.key=VALUE | --section.key VALUE ...]", ""]
    doc = inspect.getdoc(cls) or ""
    if doc and not doc.startswith(cls.__name__ + "("):  # not dataclass's generated signature
        lines += [doc.split("\n\n")[0], ""]
    lines.append("options (defaults shown):")
    docs = field_docs(cls)
    for name, tp, default in _walk(cls, "", None, frozenset()):
        if default is _REQUIRED:
            shown = "required"
        else:
            try:
                shown = "default: " + json.dumps(_plain(default, name), ensure_ascii=False)
            except TypeError:
                shown = "default: " + repr(default)
        lines.append(f"  --{name}  {_type_name(tp)}  ({shown})")
        for para in docs.get(name, "").splitlines():
            lines += textwrap.wrap(
                para, width=98, initial_indent=" " * 6, subsequent_indent=" " * 6
            )
    return "\n".join(lines) + "\n"
