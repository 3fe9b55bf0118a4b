"""Linear equations of the lecture seed's form "3x + 7 = 22", always with an integer solution.

Plain format (the tiny tokenizer's alphabet): prompt "3x+7=22;x=", ideal response "5".
Chat format (meta["chat_prompt"]): "What is x if 3x + 7 = 22? Give the final answer as an
integer." The verifier extracts the final answer with the safe number parser of
`posttrain.tasks.mathgrade`: a final \\boxed{5}, "answer is 5" or "x = 5"; a response that is
only a number (the plain format's "5") is that number; any other text without a stated answer
is UNPARSABLE, so a response cut off mid-explanation is never credited with whatever number it
stopped on. It never evaluates the text.
"""

from __future__ import annotations

from posttrain.tasks._splits import split_space
from posttrain.tasks.base import Example, Task, Verdict
from posttrain.tasks.mathgrade import grade_math


def _lhs(a: int, b: int, spaced: bool) -> str:
    """The left side: 3x+7 or 3x + 7 (x, -x, 3x-7, 3x when a = 1, a = -1, b < 0, b = 0)."""
    coef = "" if a == 1 else "-" if a == -1 else str(a)
    if b == 0:
        return f"{coef}x"
    sign = "+" if b > 0 else "-"
    return f"{coef}x {sign} {abs(b)}" if spaced else f"{coef}x{sign}{abs(b)}"


def equation_example(a: int, b: int, x: int) -> Example:
    """The example for a*x + b = c with solution x (c = a*x + b)."""
    if a == 0:
        raise ValueError("equations: the coefficient a must be non-zero")
    c = a * x + b
    chat = f"What is x if {_lhs(a, b, True)} = {c}? Give the final answer as an integer."
    return Example(
        prompt=f"{_lhs(a, b, False)}={c};x=",
        answer=str(x),
        meta={"a": a, "b": b, "c": c, "x": x, "chat_prompt": chat},
    )


def verify_equation(example: Example, text: str) -> Verdict:
    """1.0/OK when the response's stated answer equals x, else WRONG or UNPARSABLE (reward 0)."""
    return grade_math(text, example.answer, var="x", backend="builtin", explicit=True)


def make_equations_task(
    a_range: tuple[int, int] = (1, 9),
    b_range: tuple[int, int] = (1, 20),
    x_range: tuple[int, int] = (0, 20),
    num_train: int | None = None,
    num_eval: int = 200,
    seed: int = 0,
) -> Task:
    """Solve a*x + b = c for the integer x.

    Args:
        a_range: inclusive range of the coefficient a (0 is skipped).
        b_range: inclusive range of the constant b (negative b prints as "3x-7=8").
        x_range: inclusive range of the solution x, so every equation has an integer solution.
        num_train: training equations; None means every equation of the space not in eval.
        num_eval: held-out equations, disjoint from train.
        seed: fixes both splits.

    Returns:
        A Task named "equations" (default space: 9 * 20 * 21 = 3780 equations).
    """
    a_values = [a for a in range(a_range[0], a_range[1] + 1) if a != 0]
    b_values = list(range(b_range[0], b_range[1] + 1))
    x_values = list(range(x_range[0], x_range[1] + 1))
    if not (a_values and b_values and x_values):
        raise ValueError(f"equations: empty range in a={a_range}, b={b_range}, x={x_range}")

    def decode(index: int) -> Example:
        # mixed radix: distinct (a, b, x) give distinct (a, b, c), hence distinct prompts
        index, ia = divmod(index, len(a_values))
        ix, ib = divmod(index, len(b_values))
        return equation_example(a_values[ia], b_values[ib], x_values[ix])

    size = len(a_values) * len(b_values) * len(x_values)
    train, eval_examples = split_space(
        size, decode, num_train=num_train, num_eval=num_eval, seed=seed, task="equations"
    )
    return Task(
        name="equations",
        train=train,
        eval=eval_examples,
        verify=verify_equation,
        demonstration=lambda example: example.answer,
        max_new_tokens=max(len(str(x_range[0])), len(str(x_range[1]))),
    )
