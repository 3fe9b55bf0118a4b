"""A pre-training corpus for the tiny model: the built-in tasks' text, interleaved.

Item 2i is the i-th sorting example, item 2i+1 the i-th preference example; each keeps its
task's verifier, demonstration and format-only answer (`scramble`), so `posttrain pretrain`
with `demonstrations=format` learns what prompts and well-formed answers look like for both
tasks, and none of their skill.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import overload

from posttrain.tasks.base import Example, Task, Verdict
from posttrain.tasks.preference import make_preference_task
from posttrain.tasks.sorting import make_sorting_task

_SOURCE = "source"


class _Interleaved(Sequence[Example]):
    """A lazy sequence alternating between two example sequences, tagging each with its
    task's name in meta["source"]."""

    def __init__(self, parts: list[tuple[str, Sequence[Example]]]) -> None:
        self._parts = parts
        self._each = min(len(seq) for _, seq in parts)

    def __len__(self) -> int:
        return self._each * len(self._parts)

    @overload
    def __getitem__(self, j: int) -> Example: ...
    @overload
    def __getitem__(self, j: slice) -> list[Example]: ...
    def __getitem__(self, j: int | slice) -> Example | list[Example]:
        if isinstance(j, slice):
            return [self[k] for k in range(*j.indices(len(self)))]
        if j < 0:
            j += len(self)
        if not 0 <= j < len(self):
            raise IndexError(f"index {j} out of range for {len(self)} examples")
        i, which = divmod(j, len(self._parts))
        name, seq = self._parts[which]
        ex = seq[i]
        return Example(ex.prompt, ex.answer, {**ex.meta, _SOURCE: name})

    def __iter__(self) -> Iterator[Example]:
        return (self[j] for j in range(len(self)))


def make_corpus_task(n: int = 5, num_eval: int = 200, seed: int = 0) -> Task:
    """Sorting (`n` digits, partial reward) and preference examples, interleaved.

    Args:
        n: numbers per sorting prompt.
        num_eval: held-out examples of each task (the eval split has 2 × num_eval).
        seed: fixes every split.
    """
    tasks = {
        "sorting": make_sorting_task(n=n, reward="partial", num_eval=num_eval, seed=seed),
        "preference": make_preference_task(num_eval=num_eval, seed=seed),
    }

    def sub(example: Example) -> Task:
        return tasks[example.meta[_SOURCE]]

    def verify(example: Example, text: str) -> Verdict:
        return sub(example).verify(example, text)

    def demonstration(example: Example) -> str:
        return sub(example).demonstration(example)

    def scramble(example: Example, rng: random.Random) -> str:
        return sub(example).scramble(example, rng)

    return Task(
        name="corpus",
        train=_Interleaved([(name, t.train) for name, t in tasks.items()]),
        eval=list(_Interleaved([(name, t.eval) for name, t in tasks.items()])),
        verify=verify,
        demonstration=demonstration,
        max_new_tokens=max(t.max_new_tokens for t in tasks.values()),
        scramble=scramble,
    )
