"""JSONL loaders (SAFE-6): every bad row names file:line and field; the jsonl_math task."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from posttrain.tasks.base import Status, Verdict
from posttrain.tasks.jsonl import (
    DataError,
    PreferencePair,
    load_preference_jsonl,
    load_prompt_answer_jsonl,
    make_jsonl_math_task,
)


def write(path: Path, lines: list[str | bytes]) -> Path:
    data = b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines)
    path.write_bytes(data)
    return path


def row(**fields: object) -> str:
    return json.dumps(fields)


def test_prompt_answer_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path / "qa.jsonl",
        [
            "\ufeff" + row(question="1+1?", answer="#### 2"),
            row(question="2+2?", answer="4", id=7),
            "",
            "   ",
            row(question="3+3?", answer="6", extra=[1, 2]),
        ],
    )
    examples = load_prompt_answer_jsonl(path)
    assert [(e.prompt, e.answer) for e in examples] == [
        ("1+1?", "#### 2"),
        ("2+2?", "4"),
        ("3+3?", "6"),
    ]
    assert [e.meta["line"] for e in examples] == [1, 2, 5]
    assert [e.meta["id"] for e in examples] == [None, "7", None]
    custom = write(tmp_path / "c.jsonl", [row(problem="p", solution="1")])
    assert load_prompt_answer_jsonl(custom, "problem", "solution")[0].answer == "1"


GOOD = row(question="q", answer="1")


@pytest.mark.parametrize(
    ("lines", "needles"),
    [
        ([GOOD, b'{"question": "caf\xe9", "answer": "1"}'], [":2:", "UTF-8"]),
        ([GOOD] * 6 + ['{"question": "q7", "answer": '], [":7:", "malformed JSON"]),
        ([GOOD, "[1, 2]"], [":2:", "JSON object"]),
        ([GOOD, GOOD, row(question="q")], [":3:", "field 'answer'", "missing"]),
        ([row(question="q", answer=42)], [":1:", "field 'answer'", "got int"]),
        ([GOOD, row(question=None, answer="1")], [":2:", "field 'question'", "NoneType"]),
        ([GOOD, row(question="  ", answer="1")], [":2:", "field 'question'", "empty"]),
        (
            [row(question="a", answer="1", id="x"), GOOD, row(question="b", answer="2", id="x")],
            [":3:", "field 'id'", "duplicate", "line 1"],
        ),
        ([row(question="a", answer="1", id=True)], [":1:", "field 'id'"]),
        ([GOOD, "[" * 100_000 + "]" * 100_000], [":2:"]),  # too deep for the JSON parser
    ],
)
def test_prompt_answer_errors(tmp_path: Path, lines: list[str | bytes], needles: list[str]) -> None:
    path = write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as info:
        load_prompt_answer_jsonl(path, max_line_bytes=1 << 20)
    message = str(info.value)
    assert message.startswith(str(path))
    for needle in needles:
        assert needle in message, message


def test_line_size_cap_and_empty_file(tmp_path: Path) -> None:
    long = row(question="q" * 200, answer="1")
    path = write(tmp_path / "long.jsonl", [GOOD, long])
    with pytest.raises(DataError, match=r":2: line longer than 100 bytes"):
        load_prompt_answer_jsonl(path, max_line_bytes=100)
    assert len(load_prompt_answer_jsonl(path, max_line_bytes=len(long))) == 2  # exactly at cap
    for lines in ([], ["", "  "]):
        with pytest.raises(DataError, match="empty file"):
            load_prompt_answer_jsonl(write(tmp_path / "empty.jsonl", lines))
        with pytest.raises(DataError, match="empty file"):
            load_preference_jsonl(write(tmp_path / "empty.jsonl", lines))


def test_preference_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pref.jsonl",
        [
            row(prompt="Hi", chosen="Hello!", rejected=""),
            row(prompt="p", chosen="a", rejected="b", id="r2"),
        ],
    )
    assert load_preference_jsonl(path) == [
        PreferencePair("Hi", "Hello!", ""),
        PreferencePair("p", "a", "b", id="r2"),
    ]


@pytest.mark.parametrize(
    ("lines", "needles"),
    [
        ([row(prompt="p", chosen="a", rejected="a")], [":1:", "field 'rejected'", "identical"]),
        (
            [row(prompt="p", chosen="a", rejected="b"), row(prompt="", chosen="a", rejected="b")],
            [":2:", "field 'prompt'"],
        ),
        ([row(prompt="p", rejected="b")], [":1:", "field 'chosen'", "missing"]),
        ([row(prompt="p", chosen="a", rejected=["b"])], [":1:", "field 'rejected'", "got list"]),
        (
            [
                row(prompt="p", chosen="a", rejected="b", id=1),
                row(prompt="q", chosen="a", rejected="b", id=1),
            ],
            [":2:", "field 'id'"],
        ),
        ([row(prompt="p", chosen="a", rejected="b"), b"\xff"], [":2:", "UTF-8"]),
    ],
)
def test_preference_errors(tmp_path: Path, lines: list[str | bytes], needles: list[str]) -> None:
    path = write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(DataError) as info:
        load_preference_jsonl(path)
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def gsm8k_file(path: Path, count: int) -> Path:
    lines = [
        row(
            question=f"What is {i} + {i}?",
            answer=f"{i} + {i} = <<{i}+{i}={2 * i}>>{2 * i}\n#### {2 * i}",
        )
        for i in range(count)
    ]
    return write(path, lines)


def test_jsonl_math_task_split(tmp_path: Path) -> None:
    path = gsm8k_file(tmp_path / "gsm.jsonl", 10)
    task = make_jsonl_math_task(path, num_eval=3, seed=0, chat_suffix="Answer after ####.")
    assert (task.name, len(task.train), len(task.eval)) == ("jsonl_math", 7, 3)
    train, evals = {e.prompt for e in task.train}, {e.prompt for e in task.eval}
    assert not train & evals and len(train | evals) == 10
    again = make_jsonl_math_task(path, num_eval=3, seed=0)
    assert [e.prompt for e in again.eval] == [e.prompt for e in task.eval]
    ex = task.eval[0]
    i = int(ex.prompt.split()[2])
    assert ex.meta["chat_prompt"] == f"What is {i} + {i}?\nAnswer after ####."
    assert task.verify(ex, f"Twice {i} is {2 * i}. #### {2 * i}") == Verdict(1.0, Status.OK)
    assert task.verify(ex, f"#### {2 * i + 1}") == Verdict(0.0, Status.WRONG)
    assert task.verify(ex, "I do not know") == Verdict(0.0, Status.UNPARSABLE)
    assert task.demonstration(ex) == ex.answer
    assert task.verify(ex, task.demonstration(ex)) == Verdict(1.0, Status.OK)


def test_jsonl_math_task_eval_file_overlap_is_dropped(tmp_path: Path) -> None:
    train_path = gsm8k_file(tmp_path / "train.jsonl", 5)
    eval_path = write(tmp_path / "eval.jsonl", [row(question="What is 1 + 1?", answer="#### 2")])
    with pytest.warns(UserWarning, match="dropped 1 training rows"):
        task = make_jsonl_math_task(train_path, eval_path=eval_path)
    assert len(task.train) == 4 and len(task.eval) == 1


def test_jsonl_math_task_rejects_unreadable_reference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "math_verify", None)
    path = write(
        tmp_path / "bad.jsonl",
        [row(question="q1", answer="#### 3"), row(question="q2", answer="banana")],
    )
    with pytest.raises(DataError, match=r":2: field 'answer': no final answer"):
        make_jsonl_math_task(path, num_eval=1)
    with pytest.raises(DataError, match="num_eval"):
        make_jsonl_math_task(gsm8k_file(tmp_path / "g.jsonl", 3), num_eval=3)
