"""Equations "3x+7=22;x=": integer solutions, the answer extractor, disjoint seeded splits."""

from __future__ import annotations

import re

import pytest

from posttrain.tasks.base import Status, Verdict
from posttrain.tasks.equations import equation_example, make_equations_task, verify_equation

ALPHABET = set("0123456789=+-*/(),.:;?! ") | set(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
PLAIN = re.compile(r"(-?\d*)x(?:([+-])(\d+))?=(-?\d+);x=")


def solve_plain(prompt: str) -> int:
    """Solve the printed equation independently of the generator."""
    m = PLAIN.fullmatch(prompt)
    assert m, prompt
    a = {"": 1, "-": -1}.get(m.group(1), None) or int(m.group(1))
    b = 0 if m.group(2) is None else int(m.group(3)) * (1 if m.group(2) == "+" else -1)
    c = int(m.group(4))
    assert (c - b) % a == 0, prompt  # an integer solution
    return (c - b) // a


def test_seed_form_and_formats() -> None:
    ex = equation_example(3, 7, 5)
    assert ex.prompt == "3x+7=22;x=" and ex.answer == "5"
    assert (
        ex.meta["chat_prompt"] == "What is x if 3x + 7 = 22? Give the final answer as an integer."
    )
    assert equation_example(1, 2, 8).prompt == "x+2=10;x="
    assert equation_example(-1, 2, 8).prompt == "-x+2=-6;x="
    assert equation_example(3, -7, 5).prompt == "3x-7=8;x="
    assert equation_example(3, 0, 5).prompt == "3x=15;x="
    with pytest.raises(ValueError, match="non-zero"):
        equation_example(0, 1, 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("5", Verdict(1.0, Status.OK)),
        (" 5\n", Verdict(1.0, Status.OK)),
        ("x = 5", Verdict(1.0, Status.OK)),
        ("\\boxed{5}", Verdict(1.0, Status.OK)),
        ("The answer is 5.", Verdict(1.0, Status.OK)),
        ("3x = 15, so x = 5", Verdict(1.0, Status.OK)),
        # "x = 5" wins over the last number 22 of the check
        ("x = 5. Check: 3*5+7=22", Verdict(1.0, Status.OK)),
        ("5.0", Verdict(1.0, Status.OK)),  # the same value
        ("6", Verdict(0.0, Status.WRONG)),
        ("-5", Verdict(0.0, Status.WRONG)),
        ("5.5", Verdict(0.0, Status.WRONG)),
        ("x = 4", Verdict(0.0, Status.WRONG)),
        ("", Verdict(0.0, Status.UNPARSABLE)),
        ("x", Verdict(0.0, Status.UNPARSABLE)),
        ("\\boxed{x}", Verdict(0.0, Status.UNPARSABLE)),
        # Text that never states its answer has none: a response cut off mid-explanation is
        # not credited with the number it stopped on (SmolLM2 did exactly this: "subtract 5
        # from both sides" for x = 5). Before this rule both scored 1.0.
        ("To solve, first subtract 5", Verdict(0.0, Status.UNPARSABLE)),
        (
            "We have 3x + 7 = 22. Subtracting 7 from both sides gives 3x = 15, then 5",
            Verdict(0.0, Status.UNPARSABLE),
        ),
        ("5 apples", Verdict(0.0, Status.UNPARSABLE)),
        ("x=5", Verdict(1.0, Status.OK)),
    ],
)
def test_verifier(text: str, expected: Verdict) -> None:
    assert verify_equation(equation_example(3, 7, 5), text) == expected


def test_every_equation_has_its_integer_solution() -> None:
    task = make_equations_task()
    assert len(task.train) + len(task.eval) == 9 * 20 * 21
    assert task.max_new_tokens == 2
    for ex in list(task.eval) + list(task.train):
        assert solve_plain(ex.prompt) == int(ex.answer) == ex.meta["x"]
        assert set(ex.prompt) <= ALPHABET
        assert task.verify(ex, task.demonstration(ex)) == Verdict(1.0, Status.OK)


def test_negative_solutions_and_constants() -> None:
    task = make_equations_task(a_range=(-3, 3), b_range=(-5, 5), x_range=(-9, 9), num_eval=50)
    assert task.max_new_tokens == 2  # "-9"
    for ex in task.eval:
        assert ex.meta["a"] != 0
        assert solve_plain(ex.prompt) == int(ex.answer)


def test_splits_disjoint_and_seeded() -> None:
    task = make_equations_task(num_eval=200, seed=3)
    train = {ex.prompt for ex in task.train}
    evals = [ex.prompt for ex in task.eval]
    assert len(train) == 3580 and len(set(evals)) == 200 and not train & set(evals)
    assert [ex.prompt for ex in make_equations_task(num_eval=200, seed=3).eval] == evals
    assert [ex.prompt for ex in make_equations_task(num_eval=200, seed=4).eval] != evals
    assert len(make_equations_task(num_train=100).train) == 100
