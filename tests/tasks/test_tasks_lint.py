"""VER-6 / TEST-7: nothing in posttrain/tasks evaluates text as code."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import posttrain.tasks

NAMES = {"eval", "exec", "sympify", "parse_expr"}
FORBIDDEN = re.compile(r"\b(?:eval|exec|sympify|parse_expr)\(")
FILES = sorted(Path(posttrain.tasks.__file__).parent.glob("*.py"))


def test_grep_finds_no_forbidden_call_text() -> None:
    assert len(FILES) >= 8
    offenders = [
        f"{path.name}:{lineno}: {line.strip()}"
        for path in FILES
        for lineno, line in enumerate(path.read_text().splitlines(), start=1)
        if FORBIDDEN.search(line)
    ]
    assert offenders == []


def test_syntax_tree_has_no_forbidden_calls() -> None:
    """Also catches `eval (x)` or `sympy.sympify(x)` that a text grep could miss."""
    offenders = []
    for path in FILES:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
                if name in NAMES:
                    offenders.append(f"{path.name}:{node.lineno}: {name}")
    assert offenders == []


def test_the_grep_pattern_catches_what_it_should() -> None:
    for bad in ["eval(x)", "builtins.exec(code)", "sympy.sympify(s)", "parse_expr(s)"]:
        assert FORBIDDEN.search(bad), bad
    for fine in ["num_eval=200", "retrieval(x)", "self.eval_rows", "executor(x)"]:
        assert not FORBIDDEN.search(fine), fine
