"""Arithmetic "123+456=": exact results, the verifier, budgets, splits."""

from __future__ import annotations

import re

import pytest

from posttrain.tasks.arithmetic import arithmetic_example, make_arithmetic_task, verify_arithmetic
from posttrain.tasks.base import Status, Verdict

PLAIN = re.compile(r"(\d+)([+*-])(\d+)=")


def test_formats() -> None:
    assert arithmetic_example(123, "+", 456).prompt == "123+456="
    assert arithmetic_example(123, "+", 456).answer == "579"
    assert arithmetic_example(123, "-", 456).answer == "-333"
    assert arithmetic_example(12, "*", 34).answer == "408"  # 12 * 34 = 340 + 68
    assert arithmetic_example(12, "*", 34).meta["chat_prompt"] == (
        "What is 12 * 34? Give the final answer as an integer."
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("579", Verdict(1.0, Status.OK)),
        ("\\boxed{579}", Verdict(1.0, Status.OK)),
        ("123 + 456 = 579", Verdict(1.0, Status.OK)),
        ("578", Verdict(0.0, Status.WRONG)),
        ("5790", Verdict(0.0, Status.WRONG)),
        ("-579", Verdict(0.0, Status.WRONG)),
        ("", Verdict(0.0, Status.UNPARSABLE)),
        ("five hundred", Verdict(0.0, Status.UNPARSABLE)),
    ],
)
def test_verifier(text: str, expected: Verdict) -> None:
    assert verify_arithmetic(arithmetic_example(123, "+", 456), text) == expected


def test_examples_are_exact_and_sized() -> None:
    task = make_arithmetic_task(digits=3)
    assert len(task.train) == 3 * 900 * 900 - 200
    assert task.max_new_tokens == 6  # a product of two 3-digit numbers has up to 6 digits
    for ex in list(task.eval) + task.train[:300]:
        m = PLAIN.fullmatch(ex.prompt)
        assert m
        a, op, b = int(m.group(1)), m.group(2), int(m.group(3))
        assert 100 <= a <= 999 and 100 <= b <= 999
        assert int(ex.answer) == {"+": a + b, "-": a - b, "*": a * b}[op]
        assert task.verify(ex, task.demonstration(ex)) == Verdict(1.0, Status.OK)
    assert make_arithmetic_task(digits=2, ops="+").max_new_tokens == 3  # 99 + 99 = 198
    assert make_arithmetic_task(digits=2, ops="-").max_new_tokens == 3  # 10 - 99 = -89


def test_splits_disjoint_and_seeded() -> None:
    task = make_arithmetic_task(digits=1, num_eval=100, seed=5)  # 3 ops * 10 * 10 = 300
    train = [ex.prompt for ex in task.train]
    evals = [ex.prompt for ex in task.eval]
    assert len(set(train)) == 200 and len(set(evals)) == 100 and not set(train) & set(evals)
    again = make_arithmetic_task(digits=1, num_eval=100, seed=5)
    assert [ex.prompt for ex in again.eval] == evals


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ops"):
        make_arithmetic_task(ops="/")
    with pytest.raises(ValueError, match="digits"):
        make_arithmetic_task(digits=0)
