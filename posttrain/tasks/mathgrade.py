"""Safe grading of final numeric answers (GSM8K-style "#### 42", "\\boxed{42}", "answer is 42").

Model text is untrusted input: it is only ever matched with bounded regular expressions and
converted with `int`/`Fraction` on strings this module has already checked to be plain
numbers. Nothing here evaluates text as code or as a symbolic expression (VER-6).

Bounds (VER-7): only the last `max_chars` characters of a response are read (the final answer
is at the end); numbers with more than `MAX_DIGITS` digits are refused (Python's own `int`
limit is 4300 digits); brace scans stop at `MAX_DEPTH`; the parser checks a deadline and
returns TIMEOUT when it passes.

The optional `math-verify` package (SymPy-based) is used only for answers the number parser
cannot read (e.g. "\\frac{\\sqrt{3}}{2}") and only after `is_safe_for_symbolic` accepts the
extracted candidate. It runs in this process: the parent-process guard that can kill a stuck
SymPy call belongs to the reliability layer (VER-1), not to this module.
"""

from __future__ import annotations

import importlib
import math
import re
import threading
import time
from fractions import Fraction
from types import ModuleType

from posttrain.tasks.base import Status, Verdict

MAX_DIGITS = 1000
"""Longest number (in digits) the parser converts; longer ones are unparsable."""
MAX_DEPTH = 50
"""Deepest brace nesting followed inside \\boxed{...}."""

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_FRAC = rf"\\[dt]?frac\s*\{{\s*(?:{_NUM})\s*\}}\s*\{{\s*(?:{_NUM})\s*\}}"
# A number token: an optional sign not glued to a word (so "3-5" reads 3 and 5), then a
# LaTeX fraction, a/b, or a plain number with optional thousands separators and decimals.
_TOKEN_BODY = rf"-?(?:{_FRAC}|(?:{_NUM})(?:\s*/\s*(?:{_NUM}))?)(?!\d)"
_TOKEN = re.compile(rf"(?<![\w.]){_TOKEN_BODY}", re.ASCII)
_STRICT_NUMBER = re.compile(rf"[-+]?(?:{_NUM})", re.ASCII)
_STRICT_FRACTION = re.compile(rf"([-+]?(?:{_NUM}))\s*/\s*([-+]?(?:{_NUM}))", re.ASCII)
_STRICT_LATEX_FRAC = re.compile(
    rf"([-+]?)\s*\\[dt]?frac\s*\{{\s*({_NUM})\s*\}}\s*\{{\s*({_NUM})\s*\}}", re.ASCII
)
_TEXT_GROUP = re.compile(r"\\(?:text|mathrm|textbf|mbox)\s*\{([^{}]*)\}")
_NUMBER_WITH_WORDS = re.compile(rf"(?:[A-Za-z]\s*=\s*)?({_TOKEN_BODY})(?:\s+[A-Za-z]+)*", re.ASCII)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASHES = re.compile(r"####")
_ANSWER_IS = re.compile(r"answer\s*(?:is|:)", re.IGNORECASE)
_CLEANUPS = (
    ("\u2212", "-"),  # unicode minus
    ("{,}", ","),  # LaTeX thousands separator 1{,}234
    ("\\!", ""),
    ("\\,", ""),
    ("\\;", ""),
    ("\\ ", ""),
    ("\\$", ""),
    ("$", ""),
    ("\\%", ""),
    ("%", ""),
)
_SIZING = re.compile(r"\\(?:left|right)(?![A-Za-z])")  # \left( but not \leftarrow


class GradingTimeout(Exception):
    """Raised inside the parser when its deadline passes."""


def _check(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise GradingTimeout


def _cleanup_inline(text: str) -> str:
    """Drop LaTeX spacing, "$", "%" and \\text{} wrappers; keeps token boundaries."""
    text = _SIZING.sub("", _TEXT_GROUP.sub(lambda m: " " + m.group(1), text))
    for old, new in _CLEANUPS:
        text = text.replace(old, new)
    return text


def _cleanup(text: str) -> str:
    """_cleanup_inline, then strip whitespace and a final full stop."""
    return _cleanup_inline(text).strip().rstrip(".").strip()


def _to_fraction(number: str) -> Fraction | None:
    """A plain decimal string ("-1,234.50") as an exact Fraction; None if too long."""
    number = number.replace(",", "").replace(" ", "")
    if sum(ch.isdigit() for ch in number) > MAX_DIGITS:
        return None
    return Fraction(number)  # exact for decimal strings; input already matched _NUM


def _ratio(num: Fraction | None, den: Fraction | None) -> Fraction | None:
    if num is None or den is None or den == 0:
        return None
    return num / den


def parse_number(text: str) -> Fraction | None:
    """Parse a whole string as one number, exactly; None if it is anything else.

    Accepts integers, decimals, negative numbers, thousands separators ("1,234"), fractions
    "a/b" and "\\frac{a}{b}", with "$", "%" and LaTeX spacing stripped. "3/4" and "0.75" both
    give Fraction(3, 4).
    """
    if len(text) > 2 * MAX_DIGITS + 64:
        return None
    s = _cleanup(text)
    if _STRICT_NUMBER.fullmatch(s):
        return _to_fraction(s)
    m = _STRICT_FRACTION.fullmatch(s)
    if m:
        return _ratio(_to_fraction(m.group(1)), _to_fraction(m.group(2)))
    m = _STRICT_LATEX_FRAC.fullmatch(s)
    if m:
        value = _ratio(_to_fraction(m.group(2)), _to_fraction(m.group(3)))
        return -value if value is not None and m.group(1) == "-" else value
    return None


def _boxed_content(text: str, deadline: float) -> str | None:
    """The content of the last \\boxed{...} with balanced braces, or None."""
    starts = list(_BOXED.finditer(text))
    if not starts:
        return None
    begin = starts[-1].end()
    depth = 1
    for i in range(begin, len(text)):
        if i % 256 == 0:
            _check(deadline)
        ch = text[i]
        if ch == "{":
            depth += 1
            if depth > MAX_DEPTH:
                return None
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i]
    return None  # unbalanced: no trustworthy answer


def _plain_numbers(text: str, deadline: float) -> list[re.Match[str] | None]:
    """Number tokens of `text` (cleaned), each None when it sits inside a bigger expression.

    A token right after "{", "^", "_" or "\\", or right before "^", "{", "}", "_" or "\\" is a
    piece of something else ("\\sqrt{2}", "2^{10}", "2\\pi"), not a number on its own.
    """
    found: list[re.Match[str] | None] = []
    for k, m in enumerate(_TOKEN.finditer(text)):
        if k % 256 == 0:
            _check(deadline)
        before = text[: m.start()].rstrip()[-1:]
        after = text[m.end() :].lstrip()[:1]
        inside = (before and before in "{^_\\") or (after and after in "^{}_\\")
        found.append(None if inside else m)
    return found


def extract_answer(
    text: str, *, deadline: float, var: str | None = None, explicit: bool = False
) -> tuple[Fraction | None, str | None]:
    """Find the final answer of a response: (its value, the answer text it came from).

    Looks, in order, for: the last \\boxed{...}; the text after the last "####"; the text after
    the last "answer is" / "answer:"; the last "<var> = <number>" when `var` is given; the last
    number of the text. A value of None with a text means a non-numeric answer was found (e.g.
    a boxed expression); (None, None) means no answer at all.

    Args:
        text: the (already size-capped) response.
        deadline: time.monotonic() value after which GradingTimeout is raised.
        var: a variable name whose assignment counts as an answer ("x" for equations).
        explicit: no last-number fallback unless the whole text is that one number: a text
            must state its answer (boxed, "####", "answer is", "<var> =") to have one. A
            response cut off mid-explanation then has no answer instead of whatever number
            it stopped on (which a policy could learn to game).
    """
    _check(deadline)
    boxed = _boxed_content(text, deadline)
    if boxed is not None:
        value = parse_number(boxed)
        if value is None:
            # "\boxed{18 \text{ dollars}}", "\boxed{x = 5}": one number plus words is still
            # a number; "\boxed{\sqrt{2}}" or "\boxed{2x}" is not.
            m = _NUMBER_WITH_WORDS.fullmatch(_cleanup(boxed))
            value = parse_number(m.group(1)) if m else None
        return value, boxed.strip()
    for marker in (_HASHES, _ANSWER_IS):
        hits = list(marker.finditer(text))
        if hits:
            line = text[hits[-1].end() :].strip().split("\n", 1)[0]
            tokens = _plain_numbers(_cleanup_inline(line), deadline)
            if tokens:  # the first number after the marker is the answer
                first = tokens[0]
                return (parse_number(first.group(0)) if first else None), _cleanup(line)
    clean = _cleanup_inline(text)
    if var is not None:
        pattern = re.compile(rf"(?<!\w){re.escape(var)}\s*=\s*({_TOKEN_BODY})", re.ASCII)
        hits = list(pattern.finditer(clean))
        if hits:
            after = clean[hits[-1].end() :].lstrip()[:1]
            value = parse_number(hits[-1].group(1)) if after not in ("^", "\\") else None
            return value, hits[-1].group(1)
    plain = [m for m in _plain_numbers(clean, deadline) if m is not None]
    if plain and (not explicit or plain[-1].group(0).strip() == clean.strip()):
        return parse_number(plain[-1].group(0)), plain[-1].group(0)
    return None, None


# ---------------------------------------------------------------- optional math-verify backend

_SAFE_CHARS = re.compile(r"[0-9A-Za-z \t+\-*/^=(){}\[\].,\\$|<>:]*", re.ASCII)
_LATEX_COMMAND = re.compile(r"\\([A-Za-z]+)")
_ALLOWED_COMMANDS = frozenset(
    "frac dfrac tfrac sqrt pi cdot times div left right infty pm mp le leq ge geq neq ne circ "
    "text mathrm mathbf dots ldots cdots sin cos tan log ln exp in cup cap emptyset theta "
    "alpha beta".split()
)
_EXPONENT = re.compile(r"\^\s*(?:\{\s*-?(?:\d{1,3}|[A-Za-z])\s*\}|-?\d{1,3}(?!\d)|[A-Za-z])")


def is_safe_for_symbolic(candidate: str, max_len: int = 256) -> bool:
    """Whether an extracted answer may be handed to a SymPy-based checker (math-verify).

    Rejects anything that could be code or could make SymPy hang: characters outside a small
    whitelist (no quotes, underscores, '!', '#', ';', '@'), unknown LaTeX commands, "**",
    exponents other than a short number or one letter, exponent chains ("9^9^9"), nesting
    deeper than 10, and numbers longer than 50 digits.
    """
    if len(candidate) > max_len or not _SAFE_CHARS.fullmatch(candidate) or "**" in candidate:
        return False
    if any(cmd not in _ALLOWED_COMMANDS for cmd in _LATEX_COMMAND.findall(candidate)):
        return False
    if re.search(r"\d{51,}", candidate):
        return False
    depth = 0
    for ch in candidate:
        if ch in "({[":
            depth += 1
        elif ch in ")}]":
            depth -= 1
        if depth > 10:
            return False
    for i, ch in enumerate(candidate):
        if ch == "^":
            m = _EXPONENT.match(candidate, i)
            if m is None or candidate[m.end() :].lstrip().startswith("^"):
                return False
    return True


def load_math_verify() -> ModuleType | None:
    """The `math_verify` module if installed (imported lazily: it pulls in SymPy), else None."""
    try:
        return importlib.import_module("math_verify")
    except ImportError:
        return None


def _grade_symbolic(module: ModuleType, response: str, reference: str, deadline: float) -> Verdict:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return Verdict(0.0, Status.TIMEOUT)
    # math-verify times out with signal.alarm, which only works on the main thread.
    on_main = threading.current_thread() is threading.main_thread()
    seconds = max(1, math.ceil(remaining)) if on_main else None
    try:
        gold = module.parse(f"${reference}$", parsing_timeout=seconds)
        if not gold:
            return Verdict(math.nan, Status.ERROR)
        pred = module.parse(f"${response}$", parsing_timeout=seconds)
        if not pred:
            return Verdict(0.0, Status.UNPARSABLE)
        correct = bool(module.verify(gold, pred, timeout_seconds=seconds))
    except Exception:  # the grader failed, not the model: excluded, never scored as wrong
        return Verdict(math.nan, Status.ERROR)
    if time.monotonic() > deadline:
        return Verdict(0.0, Status.TIMEOUT)
    return Verdict(1.0, Status.OK) if correct else Verdict(0.0, Status.WRONG)


def grade_math(
    response: str,
    answer: str,
    *,
    max_chars: int = 4096,
    deadline_s: float = 1.0,
    backend: str = "auto",
    var: str | None = None,
    explicit: bool = False,
) -> Verdict:
    """Grade a response's final answer against a reference answer.

    Args:
        response: the model's text (untrusted; only its last `max_chars` characters are read).
        answer: the reference ("42", "... #### 42", "\\boxed{3/4}").
        max_chars: size bound applied to both texts before any parsing.
        deadline_s: time budget; when the parser passes it the verdict is TIMEOUT.
        backend: "auto" (numbers exactly; math-verify for non-numeric answers when installed),
            "builtin" (numbers only) or "math_verify" (like auto, but math-verify must exist).
        var: a variable whose assignment counts as the answer ("x" accepts "x = 5").
        explicit: the response must state its answer (see `extract_answer`); the reference
            is read as usual.

    Returns:
        OK/1.0 when the values are equal (exact rational comparison: "3/4" == "0.75"),
        WRONG/0.0 when not, UNPARSABLE/0.0 when the response has no readable answer,
        TIMEOUT/0.0 past the deadline, ERROR/NaN when the reference cannot be read.
    """
    if backend not in ("auto", "builtin", "math_verify"):
        raise ValueError(f"grade_math: unknown backend {backend!r}")
    if backend == "math_verify" and load_math_verify() is None:
        raise ImportError("grade_math(backend='math_verify') needs `pip install math-verify`")
    deadline = time.monotonic() + deadline_s
    response, answer = response[-max_chars:], answer[-max_chars:]
    try:
        ref_value, ref_text = extract_answer(answer, deadline=deadline, var=var)
        value, text = extract_answer(response, deadline=deadline, var=var, explicit=explicit)
    except GradingTimeout:
        return Verdict(0.0, Status.TIMEOUT)
    if ref_text is None:  # the reference has no answer at all: the grader cannot judge
        return Verdict(math.nan, Status.ERROR)
    if ref_value is not None and value is not None:
        return Verdict(1.0, Status.OK) if value == ref_value else Verdict(0.0, Status.WRONG)
    if ref_value is not None and text is None:
        return Verdict(0.0, Status.UNPARSABLE)
    # One side is non-numeric: only now is math-verify worth importing.
    module = None if backend == "builtin" else load_math_verify()
    if module is None:
        return (
            Verdict(math.nan, Status.ERROR)
            if ref_value is None
            else Verdict(0.0, Status.UNPARSABLE)
        )
    if not is_safe_for_symbolic(ref_text):
        return Verdict(math.nan, Status.ERROR)
    if text is None or not is_safe_for_symbolic(text):
        return Verdict(0.0, Status.UNPARSABLE)
    return _grade_symbolic(module, text, ref_text, deadline)
