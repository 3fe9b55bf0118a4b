"""RLHF: the policy-gradient loop (PPO by default) against a learned reward model.

The loop is `PolicyGradientTrainer` unchanged; a `RewardModelReward` replaces the verifier as
the reward. What this adds is visibility: every step also logs the task's hidden true score of
the same samples (`true/score_mean`), and the KL to the SFT model even when the KL penalty is
off (`kl/ref_k1`, `kl/ref_k3`), so reward hacking (learned reward up, true score flat or down,
KL growing) shows in the metrics.

Shape legend: B rollouts, T response tokens.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from posttrain.algorithms.kl import KL_ESTIMATORS
from posttrain.models.forward import forward_response
from posttrain.models.reference import frozen_copy
from posttrain.tasks.base import Task
from posttrain.train.common import build_policy
from posttrain.train.policy_gradient import PolicyGradientTrainer
from posttrain.train.preference_configs import RLHFConfig
from posttrain.train.reward_model import RewardModelReward, load_reward_model
from posttrain.train.rl_batch import ScoredBatch

log = logging.getLogger("posttrain")


class RLHFTrainer(PolicyGradientTrainer):
    """`PolicyGradientTrainer` with a reward model as the reward and true-score/KL monitoring."""

    def __init__(self, cfg: RLHFConfig, task: Task | None = None) -> None:
        """Loads the reward model at `cfg.reward_model`; `task` as in PolicyGradientTrainer."""
        rm, _, stats = load_reward_model(cfg.reward_model)
        mean, std = (
            (stats.get("mean", 0.0), stats.get("std", 1.0)) if cfg.normalize_reward else (0.0, 1.0)
        )
        source = RewardModelReward(rm, mean=mean, std=std)
        super().__init__(cfg, reward=source, task=task)
        source.verify = self.task.verify
        # Score where the rollouts live (the loop may have put the policy on a GPU).
        device = next(self.policy.parameters()).device
        rm.to(device)
        vocab = getattr(getattr(self.policy, "config", None), "vocab_size", None)
        if vocab != rm.trunk.config.vocab_size:
            raise ValueError(
                f"reward_model: {cfg.reward_model} has vocabulary {rm.trunk.config.vocab_size}, "
                f"the policy {vocab}; they must share a tokenizer"
            )
        # Without a KL penalty the loop keeps no reference; keep the start model anyway (loaded
        # afresh, so a resumed run still measures the distance from the start, not the resume).
        self.monitor = None
        if self.reference is None:
            start, _ = build_policy(cfg.model)
            self.monitor = frozen_copy(start.to(device))

    def make_batch(self, step: int) -> tuple[ScoredBatch, dict[str, float]]:
        """The loop's batch, plus `true/*` from the reward source and the KL to the start."""
        batch, metrics = super().make_batch(step)
        metrics.update(self.reward.last_metrics)
        if self.monitor is not None:
            ro = batch.rollout
            mask = ro.response_mask
            with torch.no_grad(), self.amp():  # the same precision as the loop's reference
                ref = forward_response(
                    self.monitor,
                    ro.prompt_ids,
                    ro.prompt_mask,
                    ro.response_ids,
                    mask,
                    temperature=self.params.temperature,
                ).logprobs  # (B, T)
            tokens = max(float(mask.sum()), 1.0)
            k1 = torch.where(mask, ro.logprobs - ref, 0.0).sum()
            k3 = torch.where(mask, KL_ESTIMATORS["k3"](ro.logprobs, ref, mask=mask), 0.0).sum()
            metrics["kl/ref_k1"] = float(k1) / tokens
            metrics["kl/ref_k3"] = float(k3) / tokens
        return batch, metrics


def train_rlhf(cfg: RLHFConfig) -> dict[str, Any]:
    """Run the RLHF stage described by `cfg`; see `RLHFTrainer`."""
    return RLHFTrainer(cfg).train()
