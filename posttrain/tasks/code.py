"""Code task: write a small Python function; the verifier runs it in the sandbox on test inputs.

Trust runs one way. The child receives only the test *inputs* and the code; it calls the
function and writes one JSON line per case. The parent keeps the expected outputs (they never
enter the child's process, files or environment), parses the lines with size caps and compares
plain data after a JSON round trip on both sides, so objects with a rigged `__eq__` cannot
survive. Exit codes, asserts and printed claims decide nothing; a case without exactly one
result line scores 0. Model text is never evaluated in the parent (only `ast.parse`d).

    task = make_code_task(num_eval=6)
    ex = task.eval[0]
    task.verify(ex, "```python\\ndef add(a, b):\\n    return a + b\\n```")  # Verdict(1.0, OK)
"""

from __future__ import annotations

import ast
import json
import logging
import math
import random
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from posttrain.tasks.base import Example, Status, Task, Verdict
from posttrain.tasks.sandbox import SandboxLimits, SandboxStartError, run_sandboxed

log = logging.getLogger(__name__)

MAX_CODE_CHARS = 20_000
"""Longer responses are UNPARSABLE before any parsing (bounds the parent's work)."""

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)

# Runs as main.py in the sandbox. Results go to a private copy of stdout; the solution's own
# prints are sent to stderr so they cannot interleave with (or pad) the result lines.
_HARNESS = r"""
import json, os, runpy, sys
req = json.loads(sys.stdin.buffer.read())
out = os.fdopen(os.dup(1), "w", encoding="utf-8")
os.dup2(2, 1)
os.close(0)
with open("solution.py", "w", encoding="utf-8") as f:
    f.write(req["code"])
fn = None
try:
    fn = runpy.run_path("solution.py", run_name="solution")[req["function"]]
except MemoryError:
    raise
except Exception as e:
    print("solution failed to load: %r" % (e,), file=sys.stderr)
for i, args in enumerate(req["inputs"]):
    try:
        if fn is None:
            raise NameError(req["function"])
        line = json.dumps({"case": i, "value": fn(*args)})
    except MemoryError:
        raise
    except Exception as e:
        line = json.dumps({"case": i, "error": type(e).__name__})
    out.write(line + "\n")
    out.flush()
"""


@dataclass(frozen=True)
class CodeProblem:
    """One function-writing problem.

    Attributes:
        name: short unique name.
        prompt: the instruction, naming the function and its signature.
        function_name: the function the verifier calls.
        test_inputs: one list of positional arguments per test case (plain JSON data).
        expected: the expected return value per test case (plain JSON data).
    """

    name: str
    prompt: str
    function_name: str
    test_inputs: list[list]
    expected: list

    def __post_init__(self) -> None:
        if len(self.test_inputs) != len(self.expected) or not self.expected:
            raise ValueError(f"CodeProblem {self.name!r}: need as many inputs as expected values")


def _p(name: str, text: str, cases: list[tuple[list, Any]]) -> CodeProblem:
    return CodeProblem(
        name, f"Write a Python function {text}", name, [c[0] for c in cases], [c[1] for c in cases]
    )


# fmt: off
PROBLEMS: tuple[CodeProblem, ...] = (
    _p("add", "add(a, b) that returns the sum of the integers a and b.",
       [([2, 3], 5), ([-1, 1], 0), ([10, -4], 6), ([0, 0], 0)]),
    _p("reverse_string", "reverse_string(s) that returns the string s reversed.",
       [(["abc"], "cba"), ([""], ""), (["racecar"], "racecar"), (["ab cd"], "dc ba")]),
    _p("fizzbuzz", 'fizzbuzz(n) that returns "FizzBuzz" if n is divisible by 15, "Fizz" if by 3, '
       '"Buzz" if by 5, and otherwise str(n).',
       [([3], "Fizz"), ([5], "Buzz"), ([15], "FizzBuzz"), ([7], "7"), ([30], "FizzBuzz")]),
    _p("max_of_list", "max_of_list(xs) that returns the largest number in the non-empty list xs.",
       [([[1, 5, 3]], 5), ([[-2, -9]], -2), ([[7]], 7)]),
    _p("is_palindrome", "is_palindrome(s) that returns True if the string s reads the same "
       "backwards, else False.",
       [(["racecar"], True), (["abca"], False), ([""], True), (["aa"], True)]),
    _p("count_vowels", "count_vowels(s) that returns how many characters of s are vowels "
       "(a, e, i, o, u, either case).",
       [(["hello"], 2), (["xyz"], 0), (["AEIOU"], 5), (["banana"], 3)]),
    _p("factorial", "factorial(n) that returns n! for an integer n >= 0.",
       [([0], 1), ([1], 1), ([5], 120), ([10], 3628800)]),
    _p("gcd", "gcd(a, b) that returns the greatest common divisor of non-negative integers a "
       "and b (not both zero).",
       [([12, 18], 6), ([7, 13], 1), ([0, 5], 5), ([100, 75], 25)]),
    _p("fibonacci", "fibonacci(n) that returns the n-th Fibonacci number, with fibonacci(0) == 0 "
       "and fibonacci(1) == 1.",
       [([0], 0), ([1], 1), ([10], 55), ([20], 6765)]),
    _p("sum_of_digits", "sum_of_digits(n) that returns the sum of the decimal digits of the "
       "integer n >= 0.",
       [([0], 0), ([123], 6), ([9999], 36), ([1001], 2)]),
    _p("is_prime", "is_prime(n) that returns True if the integer n is prime, else False.",
       [([1], False), ([2], True), ([17], True), ([21], False), ([97], True)]),
    _p("count_words", "count_words(s) that returns the number of whitespace-separated words in s.",
       [(["hello world"], 2), ([""], 0), (["  a  b c "], 3)]),
    _p("second_largest", "second_largest(xs) that returns the second largest value of a list of "
       "at least two distinct integers.",
       [([[1, 2, 3]], 2), ([[5, 1, 4]], 4), ([[10, 20]], 10)]),
    _p("flatten", "flatten(xs) that concatenates a list of lists into one list.",
       [([[[1, 2], [3]]], [1, 2, 3]), ([[]], []), ([[[], [4]]], [4])]),
    _p("unique_sorted", "unique_sorted(xs) that returns the distinct values of xs in increasing "
       "order.",
       [([[3, 1, 3, 2]], [1, 2, 3]), ([[]], []), ([[5, 5]], [5])]),
    _p("capitalize_words", "capitalize_words(s) that upper-cases the first letter of every "
       "space-separated word of the lower-case string s.",
       [(["hello world"], "Hello World"), (["a"], "A"), ([""], ""),
        (["python is fun"], "Python Is Fun")]),
    _p("celsius_to_fahrenheit", "celsius_to_fahrenheit(c) that returns c * 9 / 5 + 32.",
       [([0], 32.0), ([100], 212.0), ([-40], -40.0), ([37], 98.6)]),
    _p("average", "average(xs) that returns the arithmetic mean of the non-empty list xs.",
       [([[1, 2, 3, 4]], 2.5), ([[5]], 5.0), ([[-1, 1]], 0.0)]),
    _p("product", "product(xs) that returns the product of the numbers in xs (1 for an empty list).",
       [([[1, 2, 3, 4]], 24), ([[]], 1), ([[-2, 5]], -10)]),
    _p("count_occurrences", "count_occurrences(xs, x) that returns how many times x occurs in "
       "the list xs.",
       [([[1, 2, 1, 3], 1], 2), ([[], 5], 0), ([["a", "b", "a"], "a"], 2)]),
    _p("merge_sorted", "merge_sorted(a, b) that merges two sorted lists into one sorted list.",
       [([[1, 3, 5], [2, 4]], [1, 2, 3, 4, 5]), ([[], [1]], [1]), ([[1, 1], [1]], [1, 1, 1])]),
    _p("is_anagram", "is_anagram(a, b) that returns True if the strings a and b contain the same "
       "characters with the same counts, else False.",
       [(["listen", "silent"], True), (["abc", "abd"], False), (["", ""], True),
        (["aab", "abb"], False)]),
    _p("to_binary", "to_binary(n) that returns the binary digits of the integer n >= 0 as a "
       "string without a prefix.",
       [([0], "0"), ([5], "101"), ([8], "1000"), ([255], "11111111")]),
    _p("run_length", 'run_length(s) that encodes runs of equal characters as the character '
       'followed by the run length, e.g. "aaabcc" -> "a3b1c2".',
       [(["aaabcc"], "a3b1c2"), ([""], ""), (["z"], "z1"), (["aabaa"], "a2b1a2")]),
    _p("char_frequency", "char_frequency(s) that returns a dict mapping each character of s to "
       "how many times it occurs.",
       [(["abca"], {"a": 2, "b": 1, "c": 1}), ([""], {}), (["zz"], {"z": 2})]),
    _p("transpose", "transpose(m) that returns the transpose of the rectangular matrix m "
       "(a list of rows).",
       [([[[1, 2], [3, 4]]], [[1, 3], [2, 4]]), ([[[1, 2, 3]]], [[1], [2], [3]]),
        ([[[7]]], [[7]])]),
    _p("collatz_steps", "collatz_steps(n) that returns how many Collatz steps (n -> n/2 if even, "
       "3n+1 if odd) it takes to reach 1 from n >= 1.",
       [([1], 0), ([2], 1), ([6], 8), ([7], 16)]),
    _p("reverse_integer", "reverse_integer(n) that reverses the decimal digits of the integer n, "
       "keeping its sign (e.g. -45 -> -54, 100 -> 1).",
       [([123], 321), ([-45], -54), ([100], 1), ([0], 0)]),
    _p("longest_word", "longest_word(s) that returns the first longest space-separated word "
       "of the non-empty string s.",
       [(["a bb ccc dd"], "ccc"), (["hi"], "hi"), (["ab cd"], "ab")]),
    _p("sum_even", "sum_even(xs) that returns the sum of the even integers in xs.",
       [([[1, 2, 3, 4]], 6), ([[]], 0), ([[-2, 3]], -2)]),
    _p("remove_duplicates", "remove_duplicates(xs) that returns xs without repeated values, "
       "keeping the first occurrence of each, in order.",
       [([[1, 2, 1, 3, 2]], [1, 2, 3]), ([[]], []), ([["a", "a"]], ["a"])]),
    _p("triangular", "triangular(n) that returns 1 + 2 + ... + n for an integer n >= 0.",
       [([0], 0), ([1], 1), ([4], 10), ([10], 55)]),
)
# fmt: on


def extract_code(text: str) -> str | None:
    """The code in a response: the first ```python (or bare ```) fenced block, else the whole
    text. None when it is empty or longer than MAX_CODE_CHARS."""
    if len(text) > MAX_CODE_CHARS:
        return None
    match = _FENCE.search(text)
    code = match.group(1) if match else text
    return code if code.strip() else None


def _same(got: Any, want: Any) -> bool:
    """Equality of plain JSON data; bools are not numbers, floats compare to 1e-9 relative."""
    if isinstance(want, bool) or isinstance(got, bool):
        return type(got) is type(want) and got == want
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        if isinstance(want, int) and isinstance(got, int):
            return got == want
        try:
            return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)
        except OverflowError:  # an int too large for a float
            return False
    if isinstance(want, list):
        return isinstance(got, list) and len(got) == len(want) and all(map(_same, got, want))
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(_same(got[k], want[k]) for k in want)
        )
    return type(got) is type(want) and got == want


def _results(stdout: bytes, num_cases: int) -> dict[int, list[Any]]:
    """Parse the child's result lines: case index -> every value reported for it."""
    values: dict[int, list[Any]] = {}
    for raw in stdout.split(b"\n"):
        try:
            rec = json.loads(raw)
        except (ValueError, RecursionError):  # malformed, non-UTF-8, too deep or huge ints
            continue
        case = rec.get("case") if isinstance(rec, dict) else None
        if type(case) is int and 0 <= case < num_cases and "value" in rec:
            values.setdefault(case, []).append(rec["value"])
    return values


def count_passed(problem: CodeProblem, stdout: bytes) -> int:
    """How many cases of `problem` the child's stdout answers correctly (a case passes only
    with exactly one value line, equal to the expected value after a JSON round trip)."""
    expected = json.loads(json.dumps(problem.expected))
    values = _results(stdout, len(expected))
    return sum(
        1
        for i, want in enumerate(expected)
        if len(values.get(i, ())) == 1 and _same(values[i][0], want)
    )


def verify_code(
    problem: CodeProblem, response_text: str, limits: SandboxLimits | None = None
) -> Verdict:
    """Score a response to `problem`: reward = fraction of test cases passed.

    Statuses: OK (all pass), WRONG (ran, some failed or the output went over its cap),
    TIMEOUT / MEMORY (reward 0), UNPARSABLE (no code, too long, or a syntax error), ERROR
    (reward NaN: the sandbox itself failed).
    """
    code = extract_code(response_text)
    if code is None:
        return Verdict(0.0, Status.UNPARSABLE)
    try:
        ast.parse(code)  # parsing never runs the code
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return Verdict(0.0, Status.UNPARSABLE)
    request = {"code": code, "function": problem.function_name, "inputs": problem.test_inputs}
    try:
        res = run_sandboxed(_HARNESS, json.dumps(request).encode(), limits)
    except SandboxStartError as e:
        log.error("code verifier: sandbox failed for problem %r: %s", problem.name, e)
        return Verdict(math.nan, Status.ERROR)
    if res.status == "timeout":
        return Verdict(0.0, Status.TIMEOUT)
    if res.status == "memory":
        return Verdict(0.0, Status.MEMORY)
    if res.status == "output_limit":
        return Verdict(0.0, Status.WRONG)
    passed = count_passed(problem, res.stdout)
    total = len(problem.expected)
    return Verdict(passed / total, Status.OK if passed == total else Status.WRONG)


def verify_many(
    items: Sequence[tuple[CodeProblem, str]], limits: SandboxLimits | None = None, workers: int = 2
) -> list[Verdict]:
    """`verify_code` over many (problem, response) pairs, `workers` at a time, in input order."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
        return list(pool.map(lambda item: verify_code(item[0], item[1], limits), items))


def make_code_task(
    num_eval: int = 6,
    seed: int = 0,
    limits: SandboxLimits | None = None,
    problems: Sequence[CodeProblem] = PROBLEMS,
) -> Task:
    """The code task: `num_eval` problems held out for eval (chosen by `seed`), the rest train.

    The prompt asks for the function in plain text; the verifier is `verify_code` with
    `limits`. `Example.answer` is the expected outputs as JSON, `meta["problem"]` the problem.
    """
    if not 0 < num_eval < len(problems):
        raise ValueError(f"num_eval={num_eval} must be in 1..{len(problems) - 1}")
    order = list(problems)
    random.Random(seed).shuffle(order)
    examples = [
        Example(
            prompt=f"{p.prompt}\nReply with only the code, in a ```python fenced block.\n",
            answer=json.dumps(p.expected),
            meta={"problem": p},
        )
        for p in order
    ]
    return Task(
        name="code",
        train=examples[num_eval:],
        eval=examples[:num_eval],
        verify=lambda ex, text: verify_code(ex.meta["problem"], text, limits),
        max_new_tokens=256,
    )
