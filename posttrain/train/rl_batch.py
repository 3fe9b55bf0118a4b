"""From a sampled `Rollout` to what the update needs: rewards, advantages, returns, the loss mask.

Shape legend: N prompts, G group size, B = N·G rollouts (prompt-major), T response tokens.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from posttrain.algorithms.advantages import (
    SEQUENCE_ADVANTAGES,
    advantages_group,
    gae,
    terminal_rewards,
)
from posttrain.algorithms.kl import KL_ESTIMATORS
from posttrain.rollout.types import FINISH_LENGTH, Rollout
from posttrain.run.distributed import all_gather_cat, all_reduce_sum, world
from posttrain.tasks.base import Example, Status, Verdict
from posttrain.train.plan import Algorithm


@dataclass
class ScoredBatch:
    """A rollout batch with everything the inner epochs read.

    Attributes:
        rollout: the sampled batch (B rows).
        rewards: (B,) float. Task rewards; NaN where the verifier could not judge (ERROR).
        loss_mask: (B, T) bool. Response tokens that enter the loss (unjudgeable rows removed).
        advantages: (B, T) float. Per-token advantages (0 where loss_mask is False).
        returns: (B, T) float or None. Value targets when the algorithm has a value head.
        old_values: (B, T) float or None. V(s_t) at sampling time (for value clipping).
        ref_logprobs: (B, T) float or None. Reference log-probs when a KL is used.
        statuses: verifier status counts.
    """

    rollout: Rollout
    rewards: torch.Tensor
    loss_mask: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor | None
    old_values: torch.Tensor | None
    ref_logprobs: torch.Tensor | None
    statuses: Counter


class RewardSource(Protocol):
    """Scores a batch of responses: rewards (B,) (NaN = could not be judged) and status counts.

    A task's verifier (`VerifierReward`) and a learned reward model both fit here, so the loop
    does not know which one it optimises.
    """

    def __call__(
        self, examples: Sequence[Example], texts: Sequence[str], rollout: Rollout
    ) -> tuple[torch.Tensor, Counter]: ...


@dataclass
class VerifierReward:
    """A `RewardSource` from a task verifier, one response at a time."""

    verify: Callable[[Example, str], Verdict]

    def __call__(
        self, examples: Sequence[Example], texts: Sequence[str], rollout: Rollout
    ) -> tuple[torch.Tensor, Counter]:
        """Rewards (B,) and status counts; ERROR verdicts become NaN so they are excluded from
        baselines, never counted as wrong."""
        rewards, statuses = [], Counter()
        for example, text in zip(examples, texts, strict=True):
            verdict = self.verify(example, text)
            statuses[verdict.status.value] += 1
            rewards.append(math.nan if verdict.status is Status.ERROR else float(verdict.reward))
        return torch.tensor(rewards, dtype=torch.float32), statuses


def sequence_estimators(adv_eps: float) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """The (N, G) → (N, G) estimators with GRPO's ε set from the config."""
    return {**SEQUENCE_ADVANTAGES, "group": functools.partial(advantages_group, eps=adv_eps)}


def compute_advantages(
    algo: Algorithm,
    rewards: torch.Tensor,
    mask: torch.Tensor,
    group_size: int,
    *,
    kl_penalty: torch.Tensor | None,
    values: torch.Tensor | None,
    gamma: float,
    lam: float,
    adv_eps: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token advantages (B, T) and value targets (B, T) or None.

    Args:
        rewards: (B,) task rewards, NaN for unjudgeable rows (their advantage is 0).
        mask: (B, T) bool, the tokens that count.
        kl_penalty: (B, T) β·KL per token when the KL goes into the reward, else None.
        values: (B, T) V(s_t) from the value head for "gae"/"value", else None.

    Sequence estimators see R − Σ_t β·KL_t as each row's reward and broadcast the advantage to
    every token; "gae" uses per-token rewards (β·KL at each token, R at the last) with γ, λ;
    "value" is the actor-critic A_t = G_t − V(s_t), i.e. GAE with λ = 1.
    """
    valid = ~torch.isnan(rewards)
    clean = torch.where(valid, rewards, torch.zeros_like(rewards))
    if algo.advantage in ("gae", "value"):
        assert values is not None, "token-level advantages need a value head"
        token_rewards = terminal_rewards(clean, mask)  # (B, T)
        if kl_penalty is not None:
            token_rewards = token_rewards - torch.where(mask, kl_penalty, 0.0)
        adv, returns = gae(
            token_rewards, values, mask, gamma, 1.0 if algo.advantage == "value" else lam
        )
    else:
        seq = rewards
        if kl_penalty is not None:
            seq = seq - torch.where(mask, kl_penalty, 0.0).sum(dim=1)
        # Estimate over the global batch (a batch-mean baseline spans every rank), keep ours.
        grouped = all_gather_cat(seq).view(-1, group_size)  # (N, G); NaN rows are ignored
        mine = world().shard(grouped.numel())
        adv_seq = sequence_estimators(adv_eps)[algo.advantage](grouped).reshape(-1)[
            mine.start : mine.stop
        ]  # (B,)
        adv_seq = torch.where(valid, adv_seq, torch.zeros_like(adv_seq))
        adv = adv_seq[:, None].expand_as(mask).clone()  # (B, T)
        returns = None
        if values is not None:
            returns = torch.where(valid, clean, 0.0)[:, None].expand_as(mask).clone()
    keep = mask & valid[:, None]
    adv = torch.where(keep, adv, 0.0)
    if returns is not None:
        returns = torch.where(keep, returns, 0.0)
    return adv, returns


def rollout_metrics(batch: ScoredBatch, group_size: int) -> dict[str, float]:
    """`rollout/*`, `verifier/*` and `kl/ref_*` metrics of one batch, over every rank."""
    ro, r = batch.rollout, batch.rewards
    rewards = all_gather_cat(r)  # (B_global,)
    lengths = all_gather_cat(ro.response_mask.sum(dim=1).float())
    truncated = all_gather_cat((ro.finish_reason == FINISH_LENGTH).float())
    judged = rewards[~rewards.isnan()]
    grouped = rewards.view(-1, group_size)
    out = {
        "rollout/reward_mean": float(judged.mean()) if judged.numel() else math.nan,
        "rollout/reward_std": float(judged.std()) if judged.numel() > 1 else 0.0,
        "rollout/response_len": float(lengths.mean()),
        "rollout/response_len_max": float(lengths.max()),
        "rollout/truncated_frac": float(truncated.mean()),
        "rollout/zero_std_frac": float((grouped.std(dim=1, unbiased=False) == 0).float().mean()),
        "rollout/unscorable_frac": float(rewards.isnan().float().mean()),
    }
    counts = all_reduce_sum(torch.tensor([float(batch.statuses[s.value]) for s in Status]))
    out.update({f"verifier/{s.value}": float(c) for s, c in zip(Status, counts, strict=True)})
    if batch.ref_logprobs is not None:
        mask = ro.response_mask
        diff = torch.where(mask, ro.logprobs - batch.ref_logprobs, 0.0)
        k3 = torch.where(mask, KL_ESTIMATORS["k3"](ro.logprobs, batch.ref_logprobs, mask=mask), 0.0)
        sums = all_reduce_sum(torch.stack([diff.sum(), k3.sum(), mask.sum().float()]).double())
        tokens = max(float(sums[2]), 1.0)
        out["kl/ref_k1"] = float(sums[0]) / tokens
        out["kl/ref_k3"] = float(sums[1]) / tokens
    return out
