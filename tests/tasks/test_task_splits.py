"""The seeded lazy permutation behind every built-in split."""

from __future__ import annotations

import pytest

from posttrain.tasks._splits import LazyExamples, Permutation, split_space
from posttrain.tasks.base import Example


@pytest.mark.parametrize("n", [1, 2, 3, 10, 97, 1000, 4096])
def test_permutation_is_a_bijection(n: int) -> None:
    perm = Permutation(n, seed=0)
    assert sorted(perm[i] for i in range(n)) == list(range(n))


def test_permutation_seeded() -> None:
    first = [Permutation(1000, 7)[i] for i in range(50)]
    assert first == [Permutation(1000, 7)[i] for i in range(50)]
    assert first != [Permutation(1000, 8)[i] for i in range(50)]
    assert first != list(range(50))
    huge = Permutation(10**60, 0)
    assert 0 <= huge[12345] < 10**60
    with pytest.raises(IndexError):
        Permutation(5, 0)[5]


def decode(i: int) -> Example:
    return Example(f"p{i}", str(i))


def test_lazy_examples_sequence_protocol() -> None:
    train, evals = split_space(20, decode, num_train=None, num_eval=5, seed=0, task="t")
    assert len(train) == 15 and len(evals) == 5
    assert train[-1] == train[14] and train[2:4] == [train[2], train[3]]
    assert sorted(int(e.answer) for e in list(train) + evals) == list(range(20))
    with pytest.raises(IndexError):
        train[15]
    with pytest.raises(ValueError, match="exceeds"):
        LazyExamples(Permutation(3, 0), 2, 2, decode)


def test_split_errors_name_the_task() -> None:
    with pytest.raises(ValueError, match="mytask: num_eval=10 leaves no training"):
        split_space(10, decode, num_train=None, num_eval=10, seed=0, task="mytask")
    with pytest.raises(ValueError, match=r"mytask: num_train=6 must be in \[1, 5\]"):
        split_space(10, decode, num_train=6, num_eval=5, seed=0, task="mytask")
