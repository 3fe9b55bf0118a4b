"""The hidden-annotator preference task and the pre-training corpus (posttrain/tasks/preference.py,
posttrain/tasks/corpus.py)."""

from __future__ import annotations

import random

import pytest

from posttrain.tasks.base import Status, Verdict
from posttrain.tasks.preference import (
    MAX_LEN,
    MIN_LEN,
    annotator_score,
    label_pair,
    make_preference_task,
    random_answer,
)
from posttrain.tasks.registry import make_task


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2468", Verdict(4 / 6, Status.WRONG)),  # 4 even digits of the 6 that earn full marks
        ("246802", Verdict(1.0, Status.OK)),  # 6 even, not all the same: full marks
        ("2", Verdict(1 / 6, Status.WRONG)),  # one digit is not "repetition"
        ("1357", Verdict(0.0, Status.WRONG)),  # no even digit
        ("2222", Verdict(0.0, Status.WRONG)),  # one digit repeated: rejected
        ("2468024", Verdict(0.0, Status.WRONG)),  # 7 digits: too long, rejected
        (" 246 ", Verdict(0.5, Status.WRONG)),  # surrounding spaces are stripped: 3/6
        ("13a", Verdict(0.0, Status.UNPARSABLE)),
        ("", Verdict(0.0, Status.UNPARSABLE)),
    ],
)
def test_annotator_score_by_hand(text: str, expected: Verdict) -> None:
    assert annotator_score(text) == expected


def test_label_pair_prefers_the_higher_score_and_skips_ties() -> None:
    rng = random.Random(0)
    pair = label_pair("p:", "1357", "2468", rng)  # 0 vs 4/6
    assert (pair.chosen, pair.rejected) == ("2468", "1357")
    assert label_pair("p:", "24", "68", rng) is None  # 2/6 each: a tie gives no pair
    flipped = label_pair("p:", "1357", "2468", rng, label_noise=1.0)
    assert (flipped.chosen, flipped.rejected) == ("1357", "2468")


def test_label_noise_flips_exactly_the_draws_below_the_rate() -> None:
    # Each non-tied pair draws once from the rng: replaying the same seed predicts every flip.
    rng, replay = random.Random(11), random.Random(11)
    flips = 0
    for _ in range(500):
        pair = label_pair("p:", "13", "24", rng, label_noise=0.3)
        expect_flip = replay.random() < 0.3
        assert (pair.chosen == "13") == expect_flip
        flips += expect_flip
    assert 100 < flips < 200  # about 150 of 500: the rate is used, not ignored
    with pytest.raises(ValueError, match="label_noise"):
        label_pair("p:", "1", "2", rng, label_noise=1.5)


def test_task_splits_formats_and_answers() -> None:
    task = make_task("preference", num_eval=50, seed=3)
    assert task is not None and task.name == "preference"
    train_prompts = {task.train[i].prompt for i in range(2000)}
    eval_prompts = {ex.prompt for ex in task.eval}
    assert len(eval_prompts) == 50 and not train_prompts & eval_prompts
    assert len(task.train) == 26**3 - 50
    ex = task.eval[0]
    assert ex.prompt.startswith("digits ") and ex.prompt.endswith(":") and len(ex.prompt) == 11
    assert task.verify(ex, task.demonstration(ex)) == Verdict(1.0, Status.OK)
    assert task.max_new_tokens == MAX_LEN + 2  # room to be "too long"
    rng = random.Random(0)
    answers = [task.scramble(ex, rng) for _ in range(300)]
    assert {len(a) for a in answers} == set(range(MIN_LEN, MAX_LEN + 1))
    assert all(a.isdigit() for a in answers)
    # the format answers score about 2.5 / 6 on average (half the digits even, mean length 4.5)
    mean = sum(annotator_score(a).reward for a in answers) / len(answers)
    assert 0.3 < mean < 0.5


def test_random_answer_respects_its_bounds() -> None:
    rng = random.Random(1)
    assert all(2 <= len(random_answer(rng, 2, 3)) <= 3 for _ in range(50))
    assert make_preference_task(num_train=10, num_eval=5).train[9].prompt.startswith("digits ")


def test_corpus_interleaves_sorting_and_preference() -> None:
    corpus = make_task("corpus", n=5, num_eval=20)
    sources = [corpus.train[i].meta["source"] for i in range(6)]
    assert sources == ["sorting", "preference"] * 3
    assert len(corpus.eval) == 40
    for ex in corpus.eval[:4]:
        assert corpus.verify(ex, corpus.demonstration(ex)) == Verdict(1.0, Status.OK)
    sort_ex, pref_ex = corpus.train[0], corpus.train[1]
    rng = random.Random(0)
    assert sorted(corpus.scramble(sort_ex, rng)) == sorted(sort_ex.answer)  # a permutation
    assert corpus.scramble(pref_ex, rng).isdigit()
    assert corpus.max_new_tokens == MAX_LEN + 2
