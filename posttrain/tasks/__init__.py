"""Tasks: prompt sources with a disjoint eval split and exact, safe verifiers.

Built in: "sorting" (the lecture's task), "equations" ("3x+7=22;x="), "arithmetic"
("123+456="), "jsonl_math" (GSM8K-style question/answer files); preference-pair files load
with `load_preference_jsonl`. A task of your own is a prompt source plus a verifier function:

    from posttrain.tasks import Example, Status, Task, Verdict

    def verify(example: Example, text: str) -> Verdict:
        if not text.strip().isdigit():
            return Verdict(0.0, Status.UNPARSABLE)
        ok = text.strip() == example.answer
        return Verdict(float(ok), Status.OK if ok else Status.WRONG)

    examples = [Example(f"{a}+{b}=", str(a + b)) for a in range(10) for b in range(10)]
    task = Task("add", train=examples[:80], eval=examples[80:], verify=verify,
                demonstration=lambda ex: ex.answer, max_new_tokens=2)
    print(task.eval[0].prompt, task.verify(task.eval[0], "8").status)  # 8+0= Status.OK
"""

from __future__ import annotations

from posttrain.tasks.arithmetic import make_arithmetic_task
from posttrain.tasks.base import Example, Status, Task, Verdict, Verifier
from posttrain.tasks.equations import make_equations_task
from posttrain.tasks.formatting import format_prompt
from posttrain.tasks.jsonl import (
    DataError,
    PreferencePair,
    load_preference_jsonl,
    load_prompt_answer_jsonl,
    make_jsonl_math_task,
)
from posttrain.tasks.mathgrade import grade_math
from posttrain.tasks.registry import TASKS, make_task
from posttrain.tasks.sorting import make_sorting_task

__all__ = [
    "TASKS",
    "DataError",
    "Example",
    "PreferencePair",
    "Status",
    "Task",
    "Verdict",
    "Verifier",
    "format_prompt",
    "grade_math",
    "load_preference_jsonl",
    "load_prompt_answer_jsonl",
    "make_arithmetic_task",
    "make_equations_task",
    "make_jsonl_math_task",
    "make_sorting_task",
    "make_task",
]
