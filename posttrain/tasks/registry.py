"""Built-in tasks by name, for configs and the command line."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from posttrain.tasks.arithmetic import make_arithmetic_task
from posttrain.tasks.base import Task
from posttrain.tasks.code import make_code_task
from posttrain.tasks.corpus import make_corpus_task
from posttrain.tasks.equations import make_equations_task
from posttrain.tasks.jsonl import make_jsonl_math_task
from posttrain.tasks.preference import make_preference_task
from posttrain.tasks.sorting import make_sorting_task

TASKS: dict[str, Callable[..., Task]] = {
    "sorting": make_sorting_task,
    "equations": make_equations_task,
    "arithmetic": make_arithmetic_task,
    "jsonl_math": make_jsonl_math_task,
    "code": make_code_task,
    "preference": make_preference_task,
    "corpus": make_corpus_task,
}
"""Task factories by name; each returns a fresh Task from its keyword arguments."""


def make_task(name: str, **kwargs: Any) -> Task:
    """Build the built-in task `name` with `kwargs` passed to its factory.

    Raises:
        ValueError: for an unknown name (the message lists the known ones) or bad kwargs.
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}")
    factory = TASKS[name]
    try:
        inspect.signature(factory).bind(**kwargs)  # unknown or missing keywords, named
    except TypeError as e:
        raise ValueError(f"task {name!r}: {e}") from None
    return factory(**kwargs)
