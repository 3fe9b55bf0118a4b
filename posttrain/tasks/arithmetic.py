"""Multi-digit arithmetic: a + b, a - b, a * b with `digits`-digit operands.

Plain format (the tiny tokenizer's alphabet): prompt "123+456=", ideal response "579";
subtraction may be negative ("123-456=" -> "-333"). Chat format (meta["chat_prompt"]):
"What is 123 + 456? Give the final answer as an integer." Graded by the safe number parser of
`posttrain.tasks.mathgrade` (final \\boxed{...} / "answer is" / last number), exact match.
"""

from __future__ import annotations

from posttrain.tasks._splits import split_space
from posttrain.tasks.base import Example, Task, Verdict
from posttrain.tasks.mathgrade import grade_math

_APPLY = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def arithmetic_example(a: int, op: str, b: int) -> Example:
    """The example "a<op>b=" with its exact integer result."""
    if op not in _APPLY:
        raise ValueError(f"arithmetic: unknown operator {op!r}; choose from '+', '-', '*'")
    result = _APPLY[op](a, b)
    chat = f"What is {a} {op} {b}? Give the final answer as an integer."
    return Example(
        prompt=f"{a}{op}{b}=",
        answer=str(result),
        meta={"a": a, "op": op, "b": b, "chat_prompt": chat},
    )


def verify_arithmetic(example: Example, text: str) -> Verdict:
    """1.0/OK when the response's final number equals the result, else WRONG or UNPARSABLE."""
    return grade_math(text, example.answer, backend="builtin")


def make_arithmetic_task(
    digits: int = 3,
    ops: str = "+-*",
    num_train: int | None = None,
    num_eval: int = 200,
    seed: int = 0,
) -> Task:
    """Arithmetic on two operands of exactly `digits` digits (0..9 when digits == 1).

    Args:
        digits: operand length in digits (>= 1).
        ops: the operators to draw from, a subset of "+-*".
        num_train: training problems; None means every problem of the space not in eval
            (3 * 900 * 900 for the default; generated lazily).
        num_eval: held-out problems, disjoint from train.
        seed: fixes both splits.

    Returns:
        A Task named "arithmetic".
    """
    if digits < 1:
        raise ValueError(f"arithmetic: digits must be >= 1, got {digits}")
    op_list = sorted(set(ops))
    if not op_list or any(op not in _APPLY for op in op_list):
        raise ValueError(f"arithmetic: ops must be a non-empty subset of '+-*', got {ops!r}")
    low = 0 if digits == 1 else 10 ** (digits - 1)
    count = 10**digits - low

    def decode(index: int) -> Example:
        index, io = divmod(index, len(op_list))
        ib, ia = divmod(index, count)
        return arithmetic_example(low + ia, op_list[io], low + ib)

    train, eval_examples = split_space(
        len(op_list) * count * count,
        decode,
        num_train=num_train,
        num_eval=num_eval,
        seed=seed,
        task="arithmetic",
    )
    # longest result: a product has up to 2*digits digits; a sum digits+1; a difference a sign
    budget = max({"+": digits + 1, "-": digits + 1, "*": 2 * digits}[op] for op in op_list)
    return Task(
        name="arithmetic",
        train=train,
        eval=eval_examples,
        verify=verify_arithmetic,
        demonstration=lambda example: example.answer,
        max_new_tokens=budget,
    )
