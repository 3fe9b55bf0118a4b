"""Named algorithms as data: each paper name is a choice of orthogonal knobs.

An algorithm is (advantage estimator, policy loss, KL placement and estimator, loss
aggregation) plus a critic and a schedule. The trainer looks the knobs up in registries and
never branches on the preset name; adding a paper's variant adds a function to a registry
and a row here.

Two kinds of advantage names appear:
  * sequence estimators, (N, G) terminal rewards → (N, G): the keys of
    :data:`posttrain.algorithms.advantages.SEQUENCE_ADVANTAGES` ("none", "mean",
    "batch_mean", "group", "dr_grpo", "rloo", "max"). Pure functions of the rewards.
  * critic estimators, :data:`CRITIC_ADVANTAGES` ("value", "gae"): they need V(s) from a
    value head, which only the trainer has. "value" is r − V(s_prompt) via
    :func:`~posttrain.algorithms.advantages.advantages_value`; "gae" is per-token
    :func:`~posttrain.algorithms.advantages.gae` over (B, T). Presets using them set
    ``value_head=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from posttrain.algorithms.advantages import SEQUENCE_ADVANTAGES
from posttrain.algorithms.aggregation import AGGREGATIONS
from posttrain.algorithms.kl import KL_ESTIMATORS
from posttrain.algorithms.losses import POLICY_LOSSES

CRITIC_ADVANTAGES: tuple[str, ...] = ("value", "gae")
"""Advantage names computed by the trainer from a value head (not in SEQUENCE_ADVANTAGES)."""

KLPlacement = Literal["none", "loss", "reward"]


@dataclass(frozen=True)
class AlgorithmPreset:
    """The knob settings that make a named algorithm. Pure data."""

    advantage: str
    """Advantage estimator: a SEQUENCE_ADVANTAGES key or a CRITIC_ADVANTAGES name."""
    loss: str
    """Policy loss: a POLICY_LOSSES key ("naive", "unclipped", "clipped")."""
    kl_placement: KLPlacement
    """Where the KL to the frozen reference enters: "none"; "loss" (β·KL added to the
    per-token loss, GRPO); "reward" (−β·KL added to the per-token reward before the
    advantage, PPO-RLHF)."""
    kl_estimator: str
    """KL_ESTIMATORS key ("k1", "k2", "k3"); unused when kl_placement is "none"."""
    loss_agg: str
    """AGGREGATIONS key: how per-token losses become one scalar."""
    value_head: bool
    """Train a critic (value head + value loss); required by "value" and "gae"."""
    clip_eps: float
    """PPO clip ε (both sides); only read by the "clipped" loss. Usually 0.1 to 0.3."""
    epochs: int
    """Inner epochs K over one rollout batch (importance ratio against the sampler)."""
    kl_coef: float = 0.0
    """β, the KL coefficient (initial value if the trainer adapts it); 0 when unused."""
    gamma: float = 1.0
    """GAE discount; 1 for terminal rewards on short responses."""
    lam: float = 1.0
    """GAE λ; 1 = Monte-Carlo return minus V(s_t), 0 = one-step TD."""
    reference: str = ""
    """The paper the setting comes from."""

    def validate(self) -> None:
        """Raise ValueError naming the field whose value no registry knows."""
        known_advantages = (*SEQUENCE_ADVANTAGES, *CRITIC_ADVANTAGES)
        checks = (
            ("advantage", self.advantage, known_advantages),
            ("loss", self.loss, tuple(POLICY_LOSSES)),
            ("kl_placement", self.kl_placement, ("none", "loss", "reward")),
            ("kl_estimator", self.kl_estimator, tuple(KL_ESTIMATORS)),
            ("loss_agg", self.loss_agg, tuple(AGGREGATIONS)),
        )
        for field, value, allowed in checks:
            if value not in allowed:
                raise ValueError(f"AlgorithmPreset.{field}={value!r}; choose one of {allowed}")
        if self.advantage in CRITIC_ADVANTAGES and not self.value_head:
            raise ValueError(f"AlgorithmPreset.value_head must be True for {self.advantage!r}")
        if not (0.0 < self.clip_eps < 1.0):
            raise ValueError(f"AlgorithmPreset.clip_eps={self.clip_eps} must be in (0, 1)")
        if self.epochs < 1:
            raise ValueError(f"AlgorithmPreset.epochs={self.epochs} must be >= 1")
        if self.kl_coef < 0:
            raise ValueError(f"AlgorithmPreset.kl_coef={self.kl_coef} must be >= 0")


PRESETS: dict[str, AlgorithmPreset] = {
    # Vanilla policy gradient: raw reward times the sequence's summed log-prob.
    "reinforce": AlgorithmPreset(
        advantage="none", loss="naive", kl_placement="none", kl_estimator="k1", kl_coef=0.0,
        loss_agg="seq_mean_token_sum", value_head=False, clip_eps=0.2, epochs=1,
        reference="Williams 1992, REINFORCE",
    ),
    # REINFORCE with the per-prompt mean reward as b(s) (the lecture's centered rewards).
    "reinforce_baseline": AlgorithmPreset(
        advantage="mean", loss="naive", kl_placement="none", kl_estimator="k1", kl_coef=0.0,
        loss_agg="seq_mean_token_sum", value_head=False, clip_eps=0.2, epochs=1,
        reference="Williams 1992, REINFORCE with baseline",
    ),
    # A learned V(s) of the prompt as the baseline; the critic trains on the value loss.
    "actor_critic": AlgorithmPreset(
        advantage="value", loss="naive", kl_placement="none", kl_estimator="k1", kl_coef=0.0,
        loss_agg="seq_mean_token_sum", value_head=True, clip_eps=0.2, epochs=1,
        reference="Konda & Tsitsiklis 2000, actor-critic",
    ),
    # PPO-RLHF: per-token GAE, clipped ratio, KL penalty folded into the reward.
    "ppo": AlgorithmPreset(
        advantage="gae", loss="clipped", kl_placement="reward", kl_estimator="k1",
        kl_coef=0.05, loss_agg="token_mean", value_head=True, clip_eps=0.2, epochs=4,
        gamma=1.0, lam=0.95,
        reference="Schulman et al. 2017 (PPO); Ziegler et al. 2019 / Ouyang et al. 2022 (RLHF)",
    ),
    # GRPO: group-normalised advantage, clipped ratio, k3 KL in the loss, 1/|o_i| per sequence.
    "grpo": AlgorithmPreset(
        advantage="group", loss="clipped", kl_placement="loss", kl_estimator="k3",
        kl_coef=0.04, loss_agg="seq_mean_token_mean", value_head=False, clip_eps=0.2,
        epochs=1, reference="Shao et al. 2024, DeepSeekMath (GRPO)",
    ),
    # Dr. GRPO: no σ division, no 1/|o_i|: a constant normaliser; its objective drops the KL.
    "dr_grpo": AlgorithmPreset(
        advantage="dr_grpo", loss="clipped", kl_placement="none", kl_estimator="k3",
        kl_coef=0.0, loss_agg="token_sum_norm", value_head=False, clip_eps=0.2, epochs=1,
        reference="Liu et al. 2025, Understanding R1-Zero-Like Training (Dr. GRPO)",
    ),
    # RLOO: leave-one-out baseline, REINFORCE loss on the whole sequence, KL in the reward.
    "rloo": AlgorithmPreset(
        advantage="rloo", loss="naive", kl_placement="reward", kl_estimator="k1",
        kl_coef=0.05, loss_agg="seq_mean_token_sum", value_head=False, clip_eps=0.2,
        epochs=1, reference="Ahmadian et al. 2024, Back to Basics (RLOO)",
    ),
}  # fmt: skip
"""Named algorithms. Look up, never branch on, these names."""
