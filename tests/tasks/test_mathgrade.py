"""The safe math grader: number formats, markers, adversarial inputs, bounds, determinism."""

from __future__ import annotations

import math
import sys
import time
import types
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import pytest

from posttrain.tasks.base import Status, Verdict
from posttrain.tasks.mathgrade import grade_math, is_safe_for_symbolic, parse_number

OK, WRONG = Verdict(1.0, Status.OK), Verdict(0.0, Status.WRONG)
UNPARSABLE = Verdict(0.0, Status.UNPARSABLE)
GSM8K = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nIn all she sold 48+24 = <<48+24=72>>72.\n#### 72"


@pytest.fixture(autouse=True)
def _no_math_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    """Grade with the built-in parser only, whether or not math-verify is installed."""
    monkeypatch.setitem(sys.modules, "math_verify", None)  # makes `import math_verify` fail


@pytest.mark.parametrize(
    ("response", "answer", "expected"),
    [
        ("#### 1,234", "1234", OK),
        ("1234", "#### 1,234", OK),
        ("3/4", "0.75", OK),
        ("0.75", "3/4", OK),
        ("\\frac{3}{4}", "0.75", OK),
        ("\\boxed{\\dfrac{3}{4}}", "3/4", OK),
        ("0.7", "3/4", WRONG),
        ("\\boxed{-5}", "-5", OK),
        ("\\boxed{-5}", "5", WRONG),
        ("\\boxed{1{,}234}", "1234", OK),
        ("\\boxed{18 \\text{ dollars}}", "18", OK),
        ("The answer is 72.", GSM8K, OK),
        ("So she sold 72 clips. #### 72", GSM8K, OK),
        ("The answer is 71.", GSM8K, WRONG),
        ("First 3, then 7, so 10", "10", OK),  # last number
        ("-1,234.50", "-1234.5", OK),
        ("It costs $18.00.", "18", OK),
        ("\u22125", "-5", OK),  # unicode minus
        ("3-5", "-5", WRONG),  # a minus glued to a number is subtraction: last number is 5
        ("7 apples", "007", OK),
        ("no idea", "42", UNPARSABLE),
        ("", "42", UNPARSABLE),
        ("\\boxed{\\sqrt{2}}", "42", UNPARSABLE),  # non-numeric and no math-verify
        ("The answer is \\sqrt{2}.", "2", UNPARSABLE),  # the 2 is inside a root
        ("The answer is 2^{10}.", "2", UNPARSABLE),  # not 2: a power
        ("#### 10 \\text{ cm}", "10", OK),
        ("so x^2 = 9", "9", OK),  # the last *plain* number
        ("so it is 2\\pi", "2", UNPARSABLE),
    ],
)
def test_grades(response: str, answer: str, expected: Verdict) -> None:
    assert grade_math(response, answer) == expected


def test_parse_number_exact() -> None:
    assert parse_number("1,234") == 1234
    assert parse_number("-0.125") == Fraction(-1, 8)
    assert parse_number("\\frac{6}{8}") == Fraction(3, 4)
    assert parse_number("-\\frac{1}{3}") == Fraction(-1, 3)
    assert parse_number("1/0") is None
    assert parse_number("1,23") is None  # not a thousands separator
    assert parse_number("2+2") is None
    assert parse_number("9" * 1001) is None  # over MAX_DIGITS


def test_unreadable_reference_is_an_error_not_wrong() -> None:
    verdict = grade_math("42", "banana")
    assert verdict.status is Status.ERROR and math.isnan(verdict.reward)


ATTACKS = [
    ("__import__('os').system('touch X')", UNPARSABLE),
    ("[__import__('os').getpid()]", UNPARSABLE),
    ("\\pi+__import__('os').system('touch X')", UNPARSABLE),
    ('Symbol(\'__import__("os").system("touch X")\')', UNPARSABLE),
    ("\\boxed{__import__('os').system('touch X')}", UNPARSABLE),
    ("9^9^9^9", UNPARSABLE),  # every 9 is part of a power: no plain number, never evaluated
    ("10**10**10", WRONG),  # the last number, 10
    ("\\boxed{9^{9^{9^{9}}}}", UNPARSABLE),
    ("(" * 10_000, UNPARSABLE),
    ("\\boxed{" + "{" * 10_000, UNPARSABLE),
    ("1" * 1_000_000, UNPARSABLE),  # 1 MB; its last 4096 digits exceed MAX_DIGITS
    ("7" * 5000, UNPARSABLE),
    ("x" * 1_000_000 + " #### 42", OK),  # a correct answer still passes
]


@pytest.mark.parametrize(("response", "expected"), ATTACKS)
def test_adversarial_inputs_bounded_and_inert(
    response: str, expected: Verdict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # "touch X" would land here
    start = time.perf_counter()
    verdict = grade_math(response, "42")
    assert time.perf_counter() - start < 1.0
    assert verdict == expected
    assert not (tmp_path / "X").exists()
    # the same inputs as the *reference* are an ERROR or a plain comparison, never code
    start = time.perf_counter()
    grade_math("42", response)
    assert time.perf_counter() - start < 1.0
    assert not (tmp_path / "X").exists()


def test_size_cap_reads_only_the_tail() -> None:
    response = "#### 42" + " filler" * 1000  # 7007 chars: the marker is outside the last 4096
    assert grade_math(response, "42") == UNPARSABLE
    assert grade_math(response, "42", max_chars=10_000) == OK


def test_deadline_gives_timeout() -> None:
    assert grade_math("42", "42", deadline_s=-1.0) == Verdict(0.0, Status.TIMEOUT)


def test_deterministic_serial_and_parallel() -> None:
    cases = [("The answer is 72.", GSM8K), ("3/4", "0.75"), ("10**10**10", "3"), ("x", "1")]
    for response, answer in cases:
        first = grade_math(response, answer)
        assert all(grade_math(response, answer) == first for _ in range(20))
        with ThreadPoolExecutor(4) as pool:
            verdicts = list(pool.map(grade_math, [response] * 20, [answer] * 20))
        assert all(v == first for v in verdicts)


@pytest.mark.parametrize(
    "candidate", ["\\frac{\\sqrt{3}}{2}", "x^2+1", "2^{10}", "\\pi", "(1, 2]", "3\\sqrt{2}"]
)
def test_symbolic_guard_accepts_plain_math(candidate: str) -> None:
    assert is_safe_for_symbolic(candidate)


@pytest.mark.parametrize(
    "candidate",
    [
        "__import__('os')",
        "Symbol('x')",
        "9^9^9",
        "9^{9^{9}}",
        "2^{10^{10}}",
        "2^12345",
        "10**10",
        "(99!)!",
        "\\def\\x{1}",
        "(" * 11 + "1" + ")" * 11,
        "1" * 51,
        "x" * 300,
        "1;2",
    ],
)
def test_symbolic_guard_rejects(candidate: str) -> None:
    assert not is_safe_for_symbolic(candidate)


class FakeMathVerify(types.ModuleType):
    """Stands in for math-verify: compares strings, records what it was given."""

    def __init__(self) -> None:
        super().__init__("math_verify")
        self.calls: list[str] = []

    def parse(self, text: str, parsing_timeout: int | None = None) -> list[str]:
        self.calls.append(text)
        return [text]

    def verify(self, gold: list[str], pred: list[str], timeout_seconds: int | None = None) -> bool:
        return gold == pred


def test_math_verify_backend_only_sees_guarded_non_numeric_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeMathVerify()
    monkeypatch.setitem(sys.modules, "math_verify", fake)
    sqrt = "\\boxed{\\frac{\\sqrt{3}}{2}}"
    assert grade_math(f"so {sqrt}", sqrt) == OK
    assert fake.calls == ["$\\frac{\\sqrt{3}}{2}$", "$\\frac{\\sqrt{3}}{2}$"]
    assert grade_math("\\boxed{\\sqrt{2}}", sqrt) == WRONG
    assert grade_math("The answer is \\sqrt{2}.", sqrt) == WRONG
    assert fake.calls[-1] == "$\\sqrt{2}$"
    fake.calls.clear()
    assert grade_math("\\boxed{42}", "42") == OK  # numbers never reach it
    assert grade_math("\\boxed{__import__('os').system('touch X')}", sqrt) == UNPARSABLE
    assert grade_math("\\boxed{9^{9^{9}}}", sqrt) == UNPARSABLE
    assert grade_math("\\boxed{\\sqrt{2}}", sqrt, backend="builtin").status is Status.ERROR
    assert fake.calls == []


def test_math_verify_backend_must_exist_when_asked() -> None:
    with pytest.raises(ImportError, match="math-verify"):
        grade_math("\\boxed{\\sqrt{2}}", "\\boxed{\\sqrt{2}}", backend="math_verify")
    with pytest.raises(ValueError, match="backend"):
        grade_math("1", "1", backend="sympy")
