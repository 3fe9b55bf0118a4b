"""The lecture's sorting task (CS336 lecture 17): sort n numbers drawn from a range.

Plain format (the tiny tokenizer's alphabet only):
- numbers in 0..9 are written as digits with no separator: prompt "31415=", ideal response
  "11345";
- wider ranges are comma-separated: prompt "12,3,40=", ideal response "3,12,40".

A response is parsed as a string of single digits (0..9 ranges only) or a comma list of
integers (spaces around commas and one pair of enclosing brackets are allowed, for chat
models); anything else is UNPARSABLE with reward 0. The status is OK only for the exact sorted
list; the reward depends on the chosen reward function (below), so a WRONG response may still
earn a partial reward.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from posttrain.tasks._splits import split_space
from posttrain.tasks.base import Example, Status, Task, Verdict

_MAX_RESPONSE_CHARS = 4096  # parse nothing longer: no sorting answer is anywhere near this
_DIGITS = re.compile(r"\d+", re.ASCII)
_COMMA_LIST = re.compile(r"-?\d{1,30}(?:[ \t]*,[ \t]*-?\d{1,30})*", re.ASCII)

SortingReward = Callable[[list[int], list[int]], float]


def exact_match_reward(response: list[int], target: list[int]) -> float:
    """Lecture reward (1): 1.0 if response == sorted(prompt) else 0.0."""
    return float(response == target)


def partial_reward(response: list[int], target: list[int]) -> float:
    """Lecture reward (2): the fraction of positions where response[i] == sorted(prompt)[i].

    reward = #{i < min(m, n) : response[i] == target[i]} / max(m, n), with m = len(response),
    n = len(target). Dividing by max(m, n) (the lecture divides by n) makes extra numbers count
    as wrong positions, so 1.0 is reached only by the exact answer.
    """
    hits = sum(1 for r, t in zip(response, target, strict=False) if r == t)
    return hits / max(len(response), len(target))


def inclusion_ordering_reward(response: list[int], target: list[int]) -> float:
    """Lecture reward (3): inclusion plus ordering, normalised to [0, 1].

    With n = len(target) (the prompt's numbers, sorted) and m = len(response):

        inclusion = #{i < n : target[i] appears anywhere in response}           (0..n)
        ordering  = #{j < m - 1 : response[j] <= response[j + 1]}                (0..m-1)
        reward    = (inclusion + ordering) / (n + max(m, n) - 1)

    The denominator is the best score any response of length max(m, n) can reach, so the
    reward is in [0, 1] and the exact answer scores 1.0.

    How it is gamed (a teaching point of the lecture; keep it): the reward checks membership
    and local order, never the multiset, so
    - a constant output listing every value of the range in order ("0123456789" for 0..9)
      scores (n + 9) / (n + 9) = 1.0 on *every* prompt while being wrong (status WRONG); the
      default budget of n new tokens is what stops it;
    - within n tokens, any constant non-decreasing output scores >= (n - 1) / (2n - 1) on every
      prompt (4/9 for n = 5) from ordering alone, e.g. "00000" scores (4 + #zeros) / 9;
    - dropping a duplicate and repeating another number keeps 1.0: "13345" for "31415=".
    """
    n, m = len(target), len(response)
    present = set(response)
    inclusion = sum(1 for t in target if t in present)
    ordering = sum(1 for a, b in zip(response, response[1:], strict=False) if a <= b)
    return (inclusion + ordering) / (n + max(m, n) - 1)


REWARDS: dict[str, SortingReward] = {
    "exact": exact_match_reward,
    "partial": partial_reward,
    "inclusion": inclusion_ordering_reward,
}


def format_numbers(numbers: list[int], digits: bool) -> str:
    """The plain text of a number list: "31415" when `digits`, else "3,1,4,1,5"."""
    return "".join(map(str, numbers)) if digits else ",".join(map(str, numbers))


def parse_numbers(text: str, digits: bool) -> list[int] | None:
    """Parse a sorting response; None when it is not a digit string or a comma list.

    Args:
        text: the response text.
        digits: whether a bare digit string means one number per digit (0..9 ranges).
    """
    if len(text) > _MAX_RESPONSE_CHARS:
        return None
    s = text.strip()
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1].strip()
    if digits and _DIGITS.fullmatch(s):
        return [int(c) for c in s]
    if _COMMA_LIST.fullmatch(s):
        return [int(x) for x in s.split(",")]
    return None


def make_sorting_verifier(digits: bool, reward: str = "exact") -> Callable[[Example, str], Verdict]:
    """A verifier for sorting examples (the target is `example.answer`, the sorted list)."""
    if reward not in REWARDS:
        raise ValueError(f"sorting: unknown reward {reward!r}; choose one of {sorted(REWARDS)}")
    reward_fn = REWARDS[reward]

    def verify(example: Example, text: str) -> Verdict:
        target = parse_numbers(example.answer, digits)
        if target is None:  # a broken example, not the model's fault: excluded, not scored 0
            return Verdict(math.nan, Status.ERROR)
        response = parse_numbers(text, digits)
        if response is None:
            return Verdict(0.0, Status.UNPARSABLE)
        status = Status.OK if response == target else Status.WRONG
        return Verdict(reward_fn(response, target), status)

    return verify


def make_sorting_task(
    n: int = 5,
    low: int = 0,
    high: int = 9,
    reward: str = "exact",
    num_train: int | None = None,
    num_eval: int = 200,
    seed: int = 0,
) -> Task:
    """The sorting task: n numbers drawn (with repetition) from low..high.

    Args:
        n: how many numbers per prompt.
        low, high: the inclusive range of the numbers (may be negative in the comma format).
        reward: "exact", "partial" or "inclusion" (the lecture's three reward functions).
        num_train: training prompts; None means every prompt of the space not in eval.
        num_eval: held-out prompts, disjoint from train.
        seed: fixes both splits.

    Returns:
        A Task named "sorting" whose examples carry meta["numbers"] and meta["chat_prompt"].
    """
    if n < 1 or low > high:
        raise ValueError(f"sorting: need n >= 1 and low <= high, got n={n}, [{low}, {high}]")
    if reward not in REWARDS:
        raise ValueError(f"sorting: unknown reward {reward!r}; choose one of {sorted(REWARDS)}")
    digits = 0 <= low and high <= 9
    base = high - low + 1

    def decode(index: int) -> Example:
        numbers = []
        for _ in range(n):  # mixed-radix digits of the index: distinct indices, distinct prompts
            index, rem = divmod(index, base)
            numbers.append(low + rem)
        shown = ", ".join(map(str, numbers))
        chat = (
            f"Sort these numbers in non-decreasing order: {shown}. "
            "Reply with only the sorted numbers, separated by commas."
        )
        return Example(
            prompt=format_numbers(numbers, digits) + "=",
            answer=format_numbers(sorted(numbers), digits),
            meta={"numbers": numbers, "chat_prompt": chat},
        )

    train, eval_examples = split_space(
        base**n, decode, num_train=num_train, num_eval=num_eval, seed=seed, task="sorting"
    )
    width = max(len(str(low)), len(str(high)))
    return Task(
        name="sorting",
        train=train,
        eval=eval_examples,
        verify=make_sorting_verifier(digits, reward),
        demonstration=lambda example: example.answer,
        max_new_tokens=n if digits else n * width + n - 1,
        scramble=lambda example, rng: format_numbers(
            rng.sample(example.meta["numbers"], k=n), digits
        ),
    )
