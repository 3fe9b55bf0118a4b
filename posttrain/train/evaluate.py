"""Evaluation on a task's held-out split: greedy accuracy, mean reward, and pass@k."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from posttrain.rollout import SamplingParams, decode_responses, encode_prompts, make_engine
from posttrain.tasks.base import Example, Status, Task
from posttrain.tasks.formatting import format_prompt


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 − C(n−c, k) / C(n, k) for n samples, c correct."""
    if num_samples - num_correct < k:
        return 1.0
    return 1.0 - math.comb(num_samples - num_correct, k) / math.comb(num_samples, k)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    task: Task,
    examples: Sequence[Example],
    *,
    chat: bool = False,
    max_new_tokens: int | None = None,
    k: int = 1,
    temperature: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
) -> dict[str, float]:
    """Score `examples`: greedy when k == 1, else k samples each at `temperature`.

    Returns accuracy (fraction fully correct; with k > 1 the mean over samples), mean reward
    (unjudgeable responses excluded), pass@k, and the fraction of each verifier status.
    Uses its own generator, so evaluating never moves the training run's RNG.
    """
    engine = make_engine(model)
    gen = torch.Generator().manual_seed(seed)
    params = SamplingParams(
        max_new_tokens=max_new_tokens or task.max_new_tokens + 1,
        temperature=1.0 if k == 1 else temperature,
        top_k=1 if k == 1 else 0,
        stop_token_ids=(tokenizer.eos_token_id,),
        pad_token_id=tokenizer.pad_token_id,
    )
    rewards: list[float] = []
    statuses: Counter = Counter()
    pass_k: list[float] = []
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        texts = [format_prompt(ex, tokenizer, chat) for ex in chunk]
        ids, mask = encode_prompts(tokenizer, texts)
        rollout = engine.generate(ids, mask, k, params, gen)
        responses = decode_responses(tokenizer, rollout)
        for i, ex in enumerate(chunk):
            correct = 0
            for text in responses[i * k : (i + 1) * k]:
                verdict = task.verify(ex, text)
                statuses[verdict.status.value] += 1
                correct += verdict.status is Status.OK
                if verdict.status is not Status.ERROR:
                    rewards.append(verdict.reward)
            pass_k.append(pass_at_k(k, correct, k))
    total = max(sum(statuses.values()), 1)
    out = {
        "accuracy": statuses[Status.OK.value] / total,
        "reward_mean": sum(rewards) / max(len(rewards), 1),
        f"pass@{k}": sum(pass_k) / max(len(pass_k), 1),
    }
    out.update({f"status_{s}": c / total for s, c in statuses.items()})
    return out
