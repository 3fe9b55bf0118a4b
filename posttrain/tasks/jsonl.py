"""Prompt/answer and preference-pair JSONL files: parsed, validated, never evaluated (SAFE-6).

Every bad row raises `DataError` naming the file, the line and the field:

    data/train.jsonl:7: field 'answer': expected a string, got int

Rules shared by both loaders: one JSON object per line; blank lines are skipped; lines longer
than `max_line_bytes` (1 MiB), invalid UTF-8, malformed JSON, a non-object line, a missing,
non-string or empty required field, a string with an unpaired surrogate escape, a key given
twice in one object, and a repeated "id" (when rows carry one) are errors; so is a file with no
rows. Preference rows also need chosen != rejected.
"""

from __future__ import annotations

import json
import random
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.tasks.base import Example, Task, Verdict
from posttrain.tasks.mathgrade import (
    extract_answer,
    grade_math,
    is_safe_for_symbolic,
    load_math_verify,
)

MAX_LINE_BYTES = 1 << 20
"""Default cap on one line of a JSONL file, in bytes (newline excluded)."""


class DataError(ValueError):
    """A data file is malformed; the message starts with "<path>:<line>:"."""


@dataclass(frozen=True)
class PreferencePair:
    """One preference judgement: `chosen` is preferred to `rejected` as a reply to `prompt`.

    Attributes:
        prompt: the prompt text (non-empty).
        chosen: the preferred response text.
        rejected: the dispreferred response text (differs from `chosen`).
        id: the row's "id" field as a string, when the file has one.
    """

    prompt: str
    chosen: str
    rejected: str
    id: str | None = None


def _records(path: str | Path, max_line_bytes: int) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, JSON object) for each non-blank line; raises DataError on a bad line."""
    with open(path, "rb") as f:
        lineno = 0
        while True:
            raw = f.readline(max_line_bytes + 1)  # bounded: a 10 GB line is never read whole
            if not raw:
                return
            lineno += 1
            body = raw[:-1] if raw.endswith(b"\n") else raw
            if len(body) > max_line_bytes:
                raise DataError(f"{path}:{lineno}: line longer than {max_line_bytes} bytes")
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte {e.start})") from None
            if lineno == 1:
                text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark is not an error
            if not text.strip():
                continue
            try:
                record = json.loads(text, object_pairs_hook=_unique_keys)
            except _DuplicateKey as e:
                raise DataError(
                    f"{path}:{lineno}: field {str(e)!r}: duplicate key in one JSON object "
                    "(which value is meant?)"
                ) from None
            except json.JSONDecodeError as e:
                msg = e.msg.removesuffix(" at")  # "Invalid control character at"
                raise DataError(
                    f"{path}:{lineno}: malformed JSON: {msg} at column {e.colno}"
                ) from None
            except RecursionError:
                raise DataError(f"{path}:{lineno}: malformed JSON: nested too deeply") from None
            if not isinstance(record, dict):
                raise DataError(
                    f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}"
                )
            yield lineno, record


class _DuplicateKey(ValueError):
    """A JSON object names the same key twice (json.loads would silently keep the last)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _string(record: dict[str, Any], name: str, where: str, allow_empty: bool = False) -> str:
    if name not in record:
        raise DataError(f"{where}: field '{name}': missing")
    value = record[name]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{name}': expected a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a "\ud800" escape: no tokenizer can encode it
        raise DataError(
            f"{where}: field '{name}': unpaired UTF-16 surrogate {value[e.start]!r} at "
            f"character {e.start}"
        ) from None
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: field '{name}': empty")
    return value


def _row_id(record: dict[str, Any], where: str, seen: dict[str, int], lineno: int) -> str | None:
    if "id" not in record:
        return None
    value = record["id"]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: field 'id': expected a string or integer")
    key = str(value)
    if key in seen:
        raise DataError(f"{where}: field 'id': duplicate id {key!r} (first on line {seen[key]})")
    seen[key] = lineno
    return key


def load_prompt_answer_jsonl(
    path: str | Path,
    question_field: str = "question",
    answer_field: str = "answer",
    *,
    max_line_bytes: int = MAX_LINE_BYTES,
) -> list[Example]:
    """Load a question/answer JSONL file (e.g. GSM8K: the answer may end in "#### 42").

    Returns:
        One Example per row: prompt = the question, answer = the answer text as given,
        meta = {"line": line number, "id": the row's id or None}.
    """
    examples: list[Example] = []
    seen: dict[str, int] = {}
    for lineno, record in _records(path, max_line_bytes):
        where = f"{path}:{lineno}"
        question = _string(record, question_field, where)
        answer = _string(record, answer_field, where)
        row_id = _row_id(record, where, seen, lineno)
        examples.append(Example(question, answer, {"line": lineno, "id": row_id}))
    if not examples:
        raise DataError(f"{path}: empty file (no JSON rows)")
    return examples


def load_preference_jsonl(
    path: str | Path, *, max_line_bytes: int = MAX_LINE_BYTES
) -> list[PreferencePair]:
    """Load a preference JSONL file with string fields "prompt", "chosen", "rejected"."""
    pairs: list[PreferencePair] = []
    seen: dict[str, int] = {}
    for lineno, record in _records(path, max_line_bytes):
        where = f"{path}:{lineno}"
        prompt = _string(record, "prompt", where)
        chosen = _string(record, "chosen", where, allow_empty=True)
        rejected = _string(record, "rejected", where, allow_empty=True)
        if chosen == rejected:
            raise DataError(f"{where}: field 'rejected': identical to 'chosen'")
        pairs.append(PreferencePair(prompt, chosen, rejected, _row_id(record, where, seen, lineno)))
    if not pairs:
        raise DataError(f"{path}: empty file (no JSON rows)")
    return pairs


def _check_gradable(examples: list[Example], path: str | Path, answer_field: str) -> None:
    """Every reference answer must have a final answer the grader can read."""
    symbolic = load_math_verify() is not None
    for ex in examples:
        value, text = extract_answer(ex.answer[-4096:], deadline=float("inf"))
        if value is None and not (symbolic and text is not None and is_safe_for_symbolic(text)):
            raise DataError(
                f"{path}:{ex.meta['line']}: field '{answer_field}': no final answer the grader "
                "can read (expected e.g. '... #### 42', '\\boxed{42}' or a number)"
            )


def _with_chat_suffix(example: Example, suffix: str) -> Example:
    chat = f"{example.prompt}\n{suffix}"
    return Example(example.prompt, example.answer, {**example.meta, "chat_prompt": chat})


def make_jsonl_math_task(
    path: str | Path,
    eval_path: str | Path | None = None,
    num_eval: int = 200,
    seed: int = 0,
    question_field: str = "question",
    answer_field: str = "answer",
    chat_suffix: str = "",
    max_new_tokens: int = 512,
    deadline_s: float = 1.0,
) -> Task:
    """A math task from a prompt/answer JSONL file, graded by `grade_math`.

    Args:
        path: the training file (or the only file, split with `num_eval`).
        eval_path: a separate eval file; train rows whose question appears in it are dropped
            (with a warning) so the splits stay disjoint.
        num_eval: eval rows drawn (seeded) from `path` when `eval_path` is None.
        seed: fixes that draw.
        question_field, answer_field: the JSON field names.
        chat_suffix: appended (after a newline) to the question in meta["chat_prompt"], e.g.
            "Give the final answer after '####'."
        max_new_tokens: response budget.
        deadline_s: grading time budget per response.

    Returns:
        A Task named "jsonl_math"; demonstrations are the reference answer texts.
    """
    rows = load_prompt_answer_jsonl(path, question_field, answer_field)
    _check_gradable(rows, path, answer_field)
    if eval_path is not None:
        eval_rows = load_prompt_answer_jsonl(eval_path, question_field, answer_field)
        _check_gradable(eval_rows, eval_path, answer_field)
        train_rows = rows
    else:
        if not 0 < num_eval < len(rows):
            raise DataError(f"{path}: num_eval={num_eval} must be in [1, {len(rows) - 1}]")
        order = list(range(len(rows)))
        random.Random(seed).shuffle(order)
        eval_rows = [rows[i] for i in order[:num_eval]]
        train_rows = [rows[i] for i in order[num_eval:]]
    held_out = {ex.prompt for ex in eval_rows}
    kept = [ex for ex in train_rows if ex.prompt not in held_out]
    if len(kept) < len(train_rows):
        warnings.warn(
            f"{path}: dropped {len(train_rows) - len(kept)} training rows whose question is "
            "also in the eval split",
            stacklevel=2,
        )
    if not kept:
        raise DataError(f"{path}: no training rows left after removing eval questions")
    if chat_suffix:
        kept = [_with_chat_suffix(ex, chat_suffix) for ex in kept]
        eval_rows = [_with_chat_suffix(ex, chat_suffix) for ex in eval_rows]

    def verify(example: Example, text: str) -> Verdict:
        return grade_math(text, example.answer, deadline_s=deadline_s)

    return Task(
        name="jsonl_math",
        train=kept,
        eval=eval_rows,
        verify=verify,
        demonstration=lambda example: example.answer,
        max_new_tokens=max_new_tokens,
    )
