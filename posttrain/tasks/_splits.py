"""Seeded, lazy, disjoint train/eval splits over an enumerable prompt space.

A built-in task's prompts are the integers 0..N-1 of a space (e.g. every 5-digit sequence),
each decoded to one distinct prompt. A seeded pseudo-random permutation of 0..N-1 orders the
space; eval is its first `num_eval` entries and train the next `num_train`. Train and eval are
therefore disjoint by construction, and neither is materialised: train can be "all but eval"
of a space of millions at no memory cost.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from typing import overload

from posttrain.tasks.base import Example

_ROUNDS = 4


class Permutation:
    """A seeded bijection of range(n), evaluated lazily (a keyed Feistel network).

    The network permutes range(4**k) for the smallest 4**k >= n; "cycle walking" (re-applying
    it until the value lands below n) restricts it to range(n). As 4**k < 4n, fewer than four
    applications are expected per lookup. Keys come from blake2b, so the order is the same on
    every platform and Python version (unlike `hash`).
    """

    def __init__(self, n: int, seed: int) -> None:
        if n < 1:
            raise ValueError(f"Permutation: n must be >= 1, got {n}")
        self.n = n
        self._half_bits = max(1, ((n - 1).bit_length() + 1) // 2)
        self._mask = (1 << self._half_bits) - 1
        self._key = hashlib.blake2b(f"posttrain.tasks:{seed}".encode(), digest_size=32).digest()
        # Enough digest bytes to cover a half of the domain (huge spaces, e.g. 10**60).
        self._digest_size = min(64, max(8, (self._half_bits + 7) // 8))

    def _round(self, r: int, value: int) -> int:
        digest = hashlib.blake2b(
            f"{r}:{value}".encode(), key=self._key, digest_size=self._digest_size
        ).digest()
        return int.from_bytes(digest, "little") & self._mask

    def _feistel(self, x: int) -> int:
        left, right = x >> self._half_bits, x & self._mask
        for r in range(_ROUNDS):
            left, right = right, left ^ self._round(r, right)
        return (left << self._half_bits) | right

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(f"Permutation index {i} out of range(0, {self.n})")
        x = self._feistel(i)
        while x >= self.n:
            x = self._feistel(x)
        return x


class LazyExamples(Sequence[Example]):
    """A read-only sequence whose item j is `decode(order[offset + j])`, built on demand."""

    def __init__(
        self, order: Permutation, offset: int, length: int, decode: Callable[[int], Example]
    ) -> None:
        if offset < 0 or length < 0 or offset + length > len(order):
            raise ValueError(f"LazyExamples: [{offset}, {offset + length}) exceeds the space")
        self._order, self._offset, self._length, self._decode = order, offset, length, decode

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, j: int) -> Example: ...
    @overload
    def __getitem__(self, j: slice) -> list[Example]: ...
    def __getitem__(self, j: int | slice) -> Example | list[Example]:
        if isinstance(j, slice):
            return [self[k] for k in range(*j.indices(self._length))]
        if j < 0:
            j += self._length
        if not 0 <= j < self._length:
            raise IndexError(f"index {j} out of range for {self._length} examples")
        return self._decode(self._order[self._offset + j])

    def __iter__(self) -> Iterator[Example]:
        return (self[j] for j in range(self._length))


def split_space(
    size: int,
    decode: Callable[[int], Example],
    *,
    num_train: int | None,
    num_eval: int,
    seed: int,
    task: str,
) -> tuple[LazyExamples, list[Example]]:
    """Disjoint (train, eval) over a space of `size` distinct prompts.

    Args:
        size: the number of distinct prompts; `decode` must be injective on range(size).
        decode: index -> Example.
        num_train: training examples, or None for "all but eval".
        num_eval: held-out examples (materialised: the evaluator walks all of them).
        seed: fixes the order, hence both splits.
        task: the task name, for error messages.

    Returns:
        (train, eval): train lazy, eval a list; no prompt is in both.
    """
    if num_eval < 0:
        raise ValueError(f"{task}: num_eval must be >= 0, got {num_eval}")
    if num_eval >= size:
        raise ValueError(f"{task}: num_eval={num_eval} leaves no training prompts (space {size})")
    available = size - num_eval
    if num_train is None:
        num_train = available
    if not 1 <= num_train <= available:
        raise ValueError(
            f"{task}: num_train={num_train} must be in [1, {available}] "
            f"(space of {size} prompts minus num_eval={num_eval})"
        )
    order = Permutation(size, seed)
    eval_examples = list(LazyExamples(order, 0, num_eval, decode))
    return LazyExamples(order, num_eval, num_train, decode), eval_examples
