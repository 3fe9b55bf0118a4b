"""What a task is: a prompt source plus a verifier.

A task yields `Example`s (a prompt and what the verifier needs to check an answer) and
scores a response text with a `Verdict`. Writing a new task takes a few lines:

    task = Task(name="echo", train=[Example("say 7=", "7")], eval=[...],
                verify=lambda ex, text: Verdict(float(text.strip() == ex.answer), Status.OK))
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


class Status(str, enum.Enum):
    """How a verifier judged a response. Only OK and WRONG are *scored* outcomes; the others
    mean the response could not be judged and must never be counted as wrong silently."""

    OK = "ok"
    """Parsed and correct (possibly partially: the reward says how much)."""
    WRONG = "wrong"
    """Parsed and incorrect."""
    UNPARSABLE = "unparsable"
    """No answer could be extracted from the response (the model's fault: scored as 0)."""
    TIMEOUT = "timeout"
    """The response (or grading it) ran out of time: scored as 0 (the model's fault)."""
    MEMORY = "memory"
    """Code from the response exceeded its memory limit: scored as 0 (the model's fault)."""
    ERROR = "error"
    """The grader itself failed (infrastructure): reward is NaN and the row is excluded."""


@dataclass(frozen=True)
class Verdict:
    """A verifier's judgement of one response.

    Attributes:
        reward: the scalar reward (NaN when status is ERROR).
        status: how the response was judged.
    """

    reward: float
    status: Status


@dataclass(frozen=True)
class Example:
    """One prompt of a task.

    Attributes:
        prompt: the prompt text in the task's plain format (chat templating happens later).
        answer: what the verifier checks against (the reference answer, as text).
        meta: task-specific extras (e.g. the numbers to sort), never shown to the policy.
    """

    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict)


Verifier = Callable[[Example, str], Verdict]


@dataclass
class Task:
    """A prompt source with a disjoint eval split and a verifier.

    Attributes:
        name: short name used in configs and reports.
        train: training examples (sampled with replacement by the trainer's own RNG).
        eval: held-out examples, disjoint from `train`.
        verify: scores a response text against an example.
        demonstration: a correct response text for an example, for SFT (None if the task has
            no demonstrations).
        max_new_tokens: a sensible response budget for the task's plain format.
        scramble: a well-formed but unskilled response (e.g. a random permutation of the
            numbers to sort), to teach a model the format and leave the skill to RL.
    """

    name: str
    train: Sequence[Example]
    eval: Sequence[Example]
    verify: Verifier
    demonstration: Callable[[Example], str] | None = None
    max_new_tokens: int = 16
    scramble: Callable[[Example, random.Random], str] | None = None
