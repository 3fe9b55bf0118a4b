"""The sorting task: formats, the lecture's three rewards, the gaming of the inclusion reward."""

from __future__ import annotations

import pytest

from posttrain.tasks.base import Example, Status, Verdict
from posttrain.tasks.sorting import (
    inclusion_ordering_reward,
    make_sorting_task,
    make_sorting_verifier,
    parse_numbers,
)

ALPHABET = set("0123456789=+-*/(),.:;?! ") | set(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)
PI = Example("31415=", "11345")  # target [1, 1, 3, 4, 5]


def score(reward: str, text: str, example: Example = PI, digits: bool = True) -> Verdict:
    return make_sorting_verifier(digits, reward)(example, text)


@pytest.mark.parametrize("reward", ["exact", "partial", "inclusion"])
@pytest.mark.parametrize("text", ["11345", " 11345\n", "1,1,3,4,5", "[1, 1, 3, 4, 5]"])
def test_right_answer_scores_one_and_ok(reward: str, text: str) -> None:
    assert score(reward, text) == Verdict(1.0, Status.OK)


@pytest.mark.parametrize("reward", ["exact", "partial", "inclusion"])
@pytest.mark.parametrize(
    "text", ["", "   ", "abc", "1 1 3 4 5", "11345.", "1,,3", "1;1;3", "x=11345"]
)
def test_malformed_is_unparsable_with_zero(reward: str, text: str) -> None:
    assert score(reward, text) == Verdict(0.0, Status.UNPARSABLE)


@pytest.mark.parametrize(
    ("reward", "text", "expected"),
    [
        ("exact", "11354", 0.0),
        ("exact", "1134", 0.0),
        # partial: positions 1=1, 1=1, 3=3, 5!=4, 4!=5 -> 3/5
        ("partial", "11354", 3 / 5),
        # partial: 5!=1, 4!=1, 3=3, 1!=4, 1!=5 -> 1/5
        ("partial", "54311", 1 / 5),
        # partial, too short: 1,1,3,4 match, position 5 missing -> 4 / max(4, 5)
        ("partial", "1134", 4 / 5),
        # partial, too long: 5 matches, extra 6th number counts as wrong -> 5 / max(6, 5)
        ("partial", "113456", 5 / 6),
        # inclusion: all 5 prompt numbers present; pairs 1<=1, 1<=3, 3<=5, 5>4 -> 3; (5+3)/9
        ("inclusion", "11354", 8 / 9),
        # inclusion 5; pairs 5>4, 4>3, 3>1, 1<=1 -> 1; (5+1)/9
        ("inclusion", "54311", 6 / 9),
        # "1134" (m = 4): prompt numbers 1, 1, 3, 4 present, 5 absent -> 4; pairs 1<=1, 1<=3,
        # 3<=4 -> 3; denominator n + max(m, n) - 1 = 5 + 5 - 1 = 9 -> 7/9
        ("inclusion", "1134", 7 / 9),
        # "99": inclusion 0, one ordered pair -> 1/9
        ("inclusion", "99", 1 / 9),
    ],
)
def test_wrong_answers_partial_rewards(reward: str, text: str, expected: float) -> None:
    verdict = score(reward, text)
    assert verdict.status is Status.WRONG
    assert verdict.reward == pytest.approx(expected, abs=1e-12)


def test_inclusion_reward_is_gamed_as_documented() -> None:
    task = make_sorting_task(reward="inclusion", num_eval=200)
    for ex in task.eval:
        # every value of 0..9 in order: inclusion 5/5 and ordering 9/9 -> (5+9)/(5+10-1) = 1.0
        assert task.verify(ex, "0123456789") == Verdict(1.0, Status.WRONG)
        # constant "00000": 4 ordered pairs always, plus one point per prompt position holding 0
        zeros = ex.meta["numbers"].count(0)
        verdict = task.verify(ex, "00000")
        assert verdict.reward == pytest.approx((4 + zeros) / 9, abs=1e-12)
        assert verdict.reward >= 4 / 9  # (n - 1) / (2n - 1) for n = 5
    # inclusion ignores multiplicity: drop a duplicate 1, repeat the 3 -> still (5 + 4)/9 = 1.0
    assert score("inclusion", "13345") == Verdict(1.0, Status.WRONG)
    # the lecture's formula on raw lists, for the lab: n = 3, m = 3: inclusion 2, ordering 2 -> 4/5
    assert inclusion_ordering_reward([0, 1, 2], [0, 2, 5]) == pytest.approx(4 / 5, abs=1e-12)


def test_comma_format_for_wide_and_negative_ranges() -> None:
    ex = Example("12,3,40=", "3,12,40")
    assert score("exact", "3,12,40", ex, digits=False) == Verdict(1.0, Status.OK)
    assert score("exact", "3, 12, 40", ex, digits=False) == Verdict(1.0, Status.OK)
    # a bare digit string is one number in the comma format: [31240] vs [3, 12, 40]
    assert score("exact", "31240", ex, digits=False) == Verdict(0.0, Status.WRONG)
    # partial: 3=3, 12=12, third position missing -> 2/3
    assert score("partial", "3,12", ex, digits=False).reward == pytest.approx(2 / 3, abs=1e-12)
    # inclusion: 3 and 12 present, 40 absent -> 2; one ordered pair -> 3/(3+3-1) = 3/5
    assert score("inclusion", "3,12", ex, digits=False).reward == pytest.approx(3 / 5, abs=1e-12)
    assert parse_numbers("-3,-1,2", digits=False) == [-3, -1, 2]
    assert parse_numbers("10", digits=True) == [1, 0]
    assert parse_numbers("10", digits=False) == [10]
    assert parse_numbers("1" * 5000, digits=True) is None  # over the size cap

    task = make_sorting_task(n=3, low=-5, high=5, num_eval=20)
    assert task.max_new_tokens == 3 * 2 + 2  # widest number "-5" is 2 chars, plus 2 commas
    for ex in task.eval:
        numbers = ex.meta["numbers"]
        assert ex.prompt == ",".join(map(str, numbers)) + "="
        assert ex.answer == ",".join(map(str, sorted(numbers)))
        assert task.verify(ex, task.demonstration(ex)) == Verdict(1.0, Status.OK)


def test_default_task_plain_format_and_budget() -> None:
    task = make_sorting_task()
    assert (len(task.train), len(task.eval), task.max_new_tokens) == (10**5 - 200, 200, 5)
    for ex in list(task.eval) + task.train[:500]:
        assert len(ex.prompt) == 6 and ex.prompt.endswith("=")
        assert set(ex.prompt) <= ALPHABET and set(ex.answer) <= ALPHABET
        assert ex.answer == "".join(sorted(ex.prompt[:-1]))
        assert task.demonstration(ex) == ex.answer
        assert "separated by commas" in ex.meta["chat_prompt"]


def test_splits_disjoint_complete_and_seeded() -> None:
    task = make_sorting_task(n=3, num_eval=200, seed=1)  # space of 10**3 prompts
    train = [ex.prompt for ex in task.train]
    evals = [ex.prompt for ex in task.eval]
    assert len(set(train)) == 800 and len(set(evals)) == 200
    assert not set(train) & set(evals)
    assert set(train) | set(evals) == {f"{i:03d}=" for i in range(1000)}
    again = make_sorting_task(n=3, num_eval=200, seed=1)
    assert [ex.prompt for ex in again.eval] == evals and [ex.prompt for ex in again.train] == train
    other = make_sorting_task(n=3, num_eval=200, seed=2)
    assert [ex.prompt for ex in other.eval] != evals


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown reward 'best'"):
        make_sorting_task(reward="best")
    with pytest.raises(ValueError, match="num_train"):
        make_sorting_task(n=2, num_eval=50, num_train=51)  # 100 - 50 = 50 available
    with pytest.raises(ValueError, match="low <= high"):
        make_sorting_task(low=5, high=1)


def test_scramble_is_a_permutation_of_the_prompt_numbers() -> None:
    import random

    from posttrain.tasks.sorting import make_sorting_task

    task = make_sorting_task(n=5, num_train=10, num_eval=10)
    example = task.eval[0]
    shuffled = task.scramble(example, random.Random(0))
    # Same multiset of digits as the prompt: the format without the skill.
    assert sorted(shuffled) == sorted(example.prompt.rstrip("="))
    assert len(shuffled) == 5
