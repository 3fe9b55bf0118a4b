"""The code task and its verifier (RELIABILITY.md VER-1…VER-5, VER-8; TEST-5 corpus).

The adversarial corpus lives in tests/tasks/adversarial/: one model answer per file with a
header `# expect: <status>`, `# problem: secret|add`, `# standin: yes` for programs that
attack the parent (those run under a stand-in trainer process, so a failure cannot take
pytest down with it), and `# needs: uid | landlock>=6` for the few that only a given
isolation layer stops (they are left out, and named, where the machine lacks it). The "secret" problem's expected outputs are fresh random tokens that
exist only in this process's memory, its environment and a world-readable answers file in
/tmp: any reward above 0 means the child read one of them.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import secrets
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from posttrain.tasks import Status, Verdict
from posttrain.tasks.code import (
    PROBLEMS,
    CodeProblem,
    count_passed,
    extract_code,
    make_code_task,
    verify_code,
    verify_many,
)
from posttrain.tasks.sandbox import SandboxLimits, probe_isolation, sandbox_pids

ADVERSARIAL = Path(__file__).parent / "adversarial"
LIMITS = SandboxLimits(wall_s=0.75, grace_s=0.25)
SECRETS = [f"tok-{secrets.token_hex(8)}" for _ in range(3)]
SECRET = CodeProblem("secret", "Write solve(x).", "solve", [[0], [1], [2]], SECRETS)
BY_NAME = {p.name: p for p in PROBLEMS}
ESCAPES = [
    "/tmp/posttrain_escape_tmp",
    "/var/tmp/posttrain_escape_var_tmp",
    "/dev/shm/posttrain_escape_shm",
    "/tmp/posttrain_pwned_os_system",
    "/tmp/posttrain_pwned_subprocess",
    "/tmp/posttrain_pwned_exec",
]

# Independent reference solutions: each must score 1.0 on the hand-written expected values.
REFERENCE = {
    "add": "def add(a, b):\n    return a + b",
    "reverse_string": "def reverse_string(s):\n    return s[::-1]",
    "fizzbuzz": "def fizzbuzz(n):\n    return 'Fizz' * (n % 3 == 0) + 'Buzz' * (n % 5 == 0) or str(n)",
    "max_of_list": "def max_of_list(xs):\n    return max(xs)",
    "is_palindrome": "def is_palindrome(s):\n    return s == s[::-1]",
    "count_vowels": "def count_vowels(s):\n    return sum(c in 'aeiouAEIOU' for c in s)",
    "factorial": "import math\ndef factorial(n):\n    return math.factorial(n)",
    "gcd": "import math\ndef gcd(a, b):\n    return math.gcd(a, b)",
    "fibonacci": "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
    "sum_of_digits": "def sum_of_digits(n):\n    return sum(map(int, str(n)))",
    "is_prime": "def is_prime(n):\n    return n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))",
    "count_words": "def count_words(s):\n    return len(s.split())",
    "second_largest": "def second_largest(xs):\n    return sorted(set(xs))[-2]",
    "flatten": "def flatten(xs):\n    return [y for x in xs for y in x]",
    "unique_sorted": "def unique_sorted(xs):\n    return sorted(set(xs))",
    "capitalize_words": "def capitalize_words(s):\n    return ' '.join(w[:1].upper() + w[1:] for w in s.split(' '))",
    "celsius_to_fahrenheit": "def celsius_to_fahrenheit(c):\n    return c * 9 / 5 + 32",
    "average": "def average(xs):\n    return sum(xs) / len(xs)",
    "product": "import math\ndef product(xs):\n    return math.prod(xs)",
    "count_occurrences": "def count_occurrences(xs, x):\n    return xs.count(x)",
    "merge_sorted": "def merge_sorted(a, b):\n    return sorted(a + b)",
    "is_anagram": "def is_anagram(a, b):\n    return sorted(a) == sorted(b)",
    "to_binary": "def to_binary(n):\n    return bin(n)[2:]",
    "run_length": (
        "import itertools\ndef run_length(s):\n"
        "    return ''.join(k + str(len(list(g))) for k, g in itertools.groupby(s))"
    ),
    "char_frequency": "import collections\ndef char_frequency(s):\n    return dict(collections.Counter(s))",
    "transpose": "def transpose(m):\n    return [list(r) for r in zip(*m)]",
    "collatz_steps": (
        "def collatz_steps(n):\n    k = 0\n    while n != 1:\n"
        "        n = n // 2 if n % 2 == 0 else 3 * n + 1\n        k += 1\n    return k"
    ),
    "reverse_integer": "def reverse_integer(n):\n    r = int(str(abs(n))[::-1])\n    return -r if n < 0 else r",
    "longest_word": "def longest_word(s):\n    return max(s.split(), key=len)",
    "sum_even": "def sum_even(xs):\n    return sum(x for x in xs if x % 2 == 0)",
    "remove_duplicates": "def remove_duplicates(xs):\n    return list(dict.fromkeys(xs))",
    "triangular": "def triangular(n):\n    return n * (n + 1) // 2",
}


def assert_nothing_left() -> None:
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)
    assert sandbox_pids() == []


def load_corpus() -> list[tuple[str, dict[str, str], str]]:
    """(file name, header fields, text) for every corpus file; the header is validated."""
    corpus = []
    for path in sorted(ADVERSARIAL.iterdir()):
        text = path.read_text()
        header = dict(re.findall(r"^# (expect|problem|standin|needs|why): (.*)$", text, re.M))
        if header.get("expect") not in {s.value for s in Status} or header.get("problem") not in (
            "secret",
            "add",
        ):
            raise ValueError(f"{path}: needs '# expect: <status>' and '# problem: secret|add'")
        corpus.append((path.name, header, text))
    return corpus


def protected(needs: str | None, layers: dict) -> bool:
    """Whether `layers` (from probe_isolation) satisfy a `# needs:` header: alternatives
    separated by "|", each "uid", "netns", "landlock" or "landlock>=N"."""
    if needs is None:
        return True
    for alt in (a.strip() for a in needs.split("|")):
        name, _, version = alt.partition(">=")
        if name == "landlock" and layers["landlock"] >= int(version or 1):
            return True
        if name in ("uid", "netns") and layers[name]:
            return True
    return False


def corpus_for_this_machine(standin: bool) -> list[tuple[str, dict[str, str], str]]:
    layers = probe_isolation(LIMITS)
    chosen = [c for c in load_corpus() if (c[1].get("standin") == "yes") == standin]
    left_out = [name for name, h, _ in chosen if not protected(h.get("needs"), layers)]
    if left_out:
        warnings.warn(f"isolation {layers} does not cover {left_out}; not run here", stacklevel=2)
    return [c for c in chosen if c[0] not in left_out]


@pytest.fixture
def planted_secrets(monkeypatch: pytest.MonkeyPatch):
    """Put the secret answers where a child might look: our env and a world-readable file."""
    monkeypatch.setenv("POSTTRAIN_TEST_SENTINEL", SECRETS[0])
    answers = Path(f"/tmp/posttrain_answers_{os.getpid()}.json")
    answers.write_text(json.dumps({"expected": SECRETS}))
    answers.chmod(0o644)
    yield
    answers.unlink()
    for path in ESCAPES:
        assert not os.path.exists(path), f"a sandboxed program wrote {path}"


def test_builtin_problems_are_well_formed_and_solvable() -> None:
    assert len(PROBLEMS) >= 30 and len(BY_NAME) == len(PROBLEMS)
    assert all(3 <= len(p.expected) <= 6 for p in PROBLEMS)
    assert set(REFERENCE) == set(BY_NAME)
    items = [(BY_NAME[n], f"```python\n{code}\n```") for n, code in REFERENCE.items()]
    verdicts = verify_many(items, LIMITS, workers=2)
    bad = [(n, v) for n, v in zip(REFERENCE, verdicts, strict=True) if v != Verdict(1.0, Status.OK)]
    assert bad == []


def test_partial_credit_is_the_fraction_of_cases() -> None:
    # add cases (2,3)->5, (-1,1)->0, (10,-4)->6, (0,0)->0; a*b gives 6, -1, -40, 0: 1 of 4
    v = verify_code(BY_NAME["add"], "def add(a, b):\n    return a * b", LIMITS)
    assert (v.reward, v.status) == (0.25, Status.WRONG)
    # fizzbuzz cases 3, 5, 15, 7, 30: always "Fizz" is right only for 3: 1 of 5
    v = verify_code(BY_NAME["fizzbuzz"], "def fizzbuzz(n):\n    return 'Fizz'", LIMITS)
    assert (v.reward, v.status) == (0.2, Status.WRONG)
    # a crash on the third of four cases still keeps the two answered before it
    code = "import os\ndef add(a, b):\n    if a == 10: os._exit(0)\n    return a + b"
    v = verify_code(BY_NAME["add"], code, LIMITS)
    assert (v.reward, v.status) == (0.5, Status.WRONG)


def test_comparison_is_on_plain_json_data() -> None:
    # is_prime expects booleans; 1/0 are numbers, not booleans: 0 of 5
    v = verify_code(
        BY_NAME["is_prime"], "def is_prime(n):\n    return int(n in (2, 17, 97))", LIMITS
    )
    assert (v.reward, v.status) == (0.0, Status.WRONG)
    # numbers compare by value: factorial as floats is accepted (120.0 == 120)
    v = verify_code(
        BY_NAME["factorial"],
        "import math\ndef factorial(n):\n    return float(math.factorial(n))",
        LIMITS,
    )
    assert v == Verdict(1.0, Status.OK)
    # tuples become lists on both sides; a tuple answer for transpose passes
    v = verify_code(BY_NAME["transpose"], "def transpose(m):\n    return tuple(zip(*m))", LIMITS)
    assert v.reward == 1.0


def test_count_passed_needs_exactly_one_value_per_case() -> None:
    p = BY_NAME["add"]  # expected 5, 0, 6, 0
    out = b'{"case": 0, "value": 5}\n{"case": 1, "value": 0}\n{"case": 1, "value": 7}\n'
    out += (
        b'{"case": 2, "value": 6}\n{"case": 3, "error": "X"}\nALL PASSED\n{"case": 9, "value": 0}\n'
    )
    assert count_passed(p, out) == 2  # case 1 is ambiguous, case 3 has no value


def test_extract_code() -> None:
    assert extract_code("Here:\n```python\nx = 1\n```\nand ```py\ny\n```") == "x = 1\n"
    assert extract_code("```\nx = 2\n```") == "x = 2\n"
    assert extract_code("def f():\n    return 1") == "def f():\n    return 1"
    assert extract_code("   \n") is None
    assert extract_code("x" * 20_001) is None


def test_unparsable_answers() -> None:
    for text in ("def add(a, b) return a", "", "(" * 10_000, "```python\n```", "x" * 30_000):
        assert verify_code(BY_NAME["add"], text, LIMITS) == Verdict(0.0, Status.UNPARSABLE)


def test_sandbox_failure_is_an_error_with_nan_reward(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/nonexistent/python3")
    v = verify_code(BY_NAME["add"], "def add(a, b):\n    return a + b", LIMITS)
    assert v.status == Status.ERROR and math.isnan(v.reward)


def test_make_code_task_splits_by_problem() -> None:
    task = make_code_task(num_eval=6, seed=0)
    names = lambda xs: {ex.meta["problem"].name for ex in xs}
    assert len(task.eval) == 6 and len(task.train) == len(PROBLEMS) - 6
    assert names(task.eval).isdisjoint(names(task.train))
    assert names(make_code_task(num_eval=6, seed=0).eval) == names(task.eval)
    assert names(make_code_task(num_eval=6, seed=1).eval) != names(task.eval)
    ex = task.eval[0]
    p = ex.meta["problem"]
    assert p.function_name in ex.prompt and "```python" in ex.prompt
    assert json.loads(ex.answer) == p.expected
    assert task.verify(ex, f"```python\n{REFERENCE[p.name]}\n```").reward == 1.0
    with pytest.raises(ValueError, match="num_eval"):
        make_code_task(num_eval=0)


def test_adversarial_corpus(planted_secrets) -> None:
    assert len(load_corpus()) >= 40
    corpus = corpus_for_this_machine(standin=False)

    def timed(item):
        name, header, text = item
        start = time.monotonic()
        v = verify_code(SECRET if header["problem"] == "secret" else BY_NAME["add"], text, LIMITS)
        return name, header["expect"], v, time.monotonic() - start

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(timed, corpus))
    got = {name: (v.status.value, v.reward) for name, _, v, _ in results}
    want = {name: (expect, 0.0) for name, expect, _, _ in results}
    assert got == want
    slow = {name: round(s, 2) for name, _, _, s in results if s >= LIMITS.wall_s + 1.0}
    assert slow == {}
    assert_nothing_left()


_STANDIN = """
import json, sys
from posttrain.tasks.code import CodeProblem, verify_code
from posttrain.tasks.sandbox import SandboxLimits
req = json.load(sys.stdin)
problem = CodeProblem("secret", "", "solve", [[0], [1], [2]], req["secrets"])
limits = SandboxLimits(wall_s=req["wall_s"], grace_s=req["grace_s"])
verdicts = [verify_code(problem, open(path).read(), limits) for path in req["files"]]
print("STANDIN " + json.dumps([[v.status.value, v.reward] for v in verdicts]))
"""


def test_programs_that_attack_the_parent_leave_the_trainer_alive(planted_secrets) -> None:
    """A stand-in trainer process grades the signal-sending programs; it must finish."""
    standins = corpus_for_this_machine(standin=True)
    if not standins:
        pytest.skip("no layer here stops a child from signalling its parent")
    req = {
        "secrets": SECRETS,
        "files": [str(ADVERSARIAL / name) for name, _, _ in standins],
        "wall_s": LIMITS.wall_s,
        "grace_s": LIMITS.grace_s,
    }
    proc = subprocess.run(
        [sys.executable, "-c", _STANDIN],
        input=json.dumps(req),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    verdicts = json.loads(proc.stdout.split("STANDIN ", 1)[1])
    assert verdicts == [[h["expect"], 0.0] for _, h, _ in standins]


@pytest.mark.slow
def test_200_mixed_jobs_on_two_workers_all_finish_and_nothing_leaks() -> None:
    """VER-5: correct, wrong, infinite loop, fork bomb and crash, 200 jobs on 2 workers."""
    limits = SandboxLimits(wall_s=0.4, grace_s=0.2)
    p = BY_NAME["add"]
    kinds = {
        "correct": ("def add(a, b):\n    return a + b", (1.0, Status.OK)),
        "wrong": ("def add(a, b):\n    return a - b", (0.25, Status.WRONG)),  # only (0, 0)
        "crash": ("import os\nos.abort()", (0.0, Status.WRONG)),
        "loop": ("def add(a, b):\n    while True: pass", (0.0, Status.TIMEOUT)),
        "bomb": (
            "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass",
            (0.0, Status.TIMEOUT),
        ),
    }
    plan = ["correct"] * 100 + ["wrong"] * 40 + ["crash"] * 40 + ["loop"] * 10 + ["bomb"] * 10
    random.Random(0).shuffle(plan)
    assert set(plan[:20]) == set(kinds)  # the non-main-thread run below gets every kind too

    def run_all(jobs: list[str]) -> list:
        return verify_many([(p, kinds[k][0]) for k in jobs], limits, workers=2)

    start = time.monotonic()
    verdicts = run_all(plan)
    elapsed = time.monotonic() - start
    assert [(v.reward, v.status) for v in verdicts] == [kinds[k][1] for k in plan]
    # 20 jobs run to the wall clock (0.6 s) on 2 workers: ~6 s; 180 more at ~0.1 s: ~9 s
    assert elapsed < 45, elapsed
    assert_nothing_left()

    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(v=run_all(plan[:20])))
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert [(v.reward, v.status) for v in box["v"]] == [kinds[k][1] for k in plan[:20]]
    assert_nothing_left()


def test_rewards_are_deterministic_serial_and_parallel() -> None:
    """VER-8: the same (problem, answer) 20 times, serially and on 2 workers."""
    p = BY_NAME["fizzbuzz"]
    # right for multiples of 3 only: cases 3, 15, 30 of (3, 5, 15, 7, 30) -> 3/5
    answer = "def fizzbuzz(n):\n    return 'FizzBuzz' if n % 15 == 0 else 'Fizz'"
    serial = [verify_code(p, answer, LIMITS) for _ in range(20)]
    parallel = verify_many([(p, answer)] * 20, LIMITS, workers=2)
    assert {(v.reward, v.status) for v in serial + parallel} == {(0.6, Status.WRONG)}
