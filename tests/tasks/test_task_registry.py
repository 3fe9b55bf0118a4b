"""make_task by name, and the README example of a hand-written task."""

from __future__ import annotations

import contextlib
import io
import json
import textwrap
from pathlib import Path

import pytest

import posttrain.tasks
from posttrain.tasks.base import Status, Task, Verdict
from posttrain.tasks.registry import TASKS, make_task


def test_builtin_names(tmp_path: Path) -> None:
    assert sorted(TASKS) == [
        "arithmetic",
        "code",
        "corpus",
        "equations",
        "jsonl_math",
        "preference",
        "sorting",
    ]
    path = tmp_path / "qa.jsonl"
    path.write_text(
        "\n".join(json.dumps({"question": f"q{i}", "answer": str(i)}) for i in range(5))
    )
    tasks = [
        make_task("sorting", reward="inclusion"),
        make_task("equations", num_eval=10),
        make_task("arithmetic", digits=2),
        make_task("jsonl_math", path=path, num_eval=2),
    ]
    for task in tasks:
        assert isinstance(task, Task)
        ex = task.eval[0]
        assert task.demonstration is not None
        assert task.verify(ex, task.demonstration(ex)) == Verdict(1.0, Status.OK)


def test_unknown_name_and_keyword() -> None:
    with pytest.raises(
        ValueError,
        match="known tasks: arithmetic, code, corpus, equations, jsonl_math, preference, sorting",
    ):
        make_task("sort")
    with pytest.raises(ValueError, match="task 'sorting'.*numbers"):
        make_task("sorting", numbers=3)


def test_readme_example_runs() -> None:
    doc = posttrain.tasks.__doc__
    assert doc is not None
    block = doc.split("verifier function:\n\n", 1)[1]
    code = textwrap.dedent(block)
    assert len(code.strip().splitlines()) <= 12
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<posttrain.tasks docstring>", "exec"), {})
    assert out.getvalue() == "8+0= Status.OK\n"
