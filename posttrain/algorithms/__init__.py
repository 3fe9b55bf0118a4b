"""The formulas of RL post-training as pure tensor functions: no models, no I/O.

Modules: ``masked`` (masked reductions, token log-probs, entropy), ``advantages``
(baselines, GRPO/RLOO/Dr. GRPO, GAE), ``losses`` (policy, value, entropy), ``kl``
(k1/k2/k3, KL controllers), ``aggregation`` (per-token loss → scalar), ``preference``
(Bradley–Terry, DPO, IPO), ``presets`` (named algorithms as data).
"""

from __future__ import annotations

from posttrain.algorithms.advantages import (
    GRPO_EPS,
    SEQUENCE_ADVANTAGES,
    advantages_dr_grpo,
    advantages_group,
    advantages_max,
    advantages_mean,
    advantages_none,
    advantages_rloo,
    advantages_value,
    gae,
    group_stats,
    group_zero_std_fraction,
    terminal_rewards,
)
from posttrain.algorithms.aggregation import (
    AGGREGATIONS,
    aggregate_loss,
    aggregation_normalizer,
)
from posttrain.algorithms.kl import (
    K3_MAX_LOG_RATIO,
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    KLController,
    kl_k1,
    kl_k2,
    kl_k3,
)
from posttrain.algorithms.losses import (
    POLICY_LOSSES,
    PolicyLossOutput,
    entropy_loss,
    policy_loss_clipped,
    policy_loss_naive,
    policy_loss_unclipped,
    value_loss,
)
from posttrain.algorithms.masked import (
    as_bool_mask,
    entropy_from_logits,
    masked_mean,
    masked_normalize,
    masked_sum,
    masked_whiten,
    shifted_token_logprobs,
    token_logprobs,
)
from posttrain.algorithms.preference import (
    PREFERENCE_LOSSES,
    PreferenceOutput,
    bradley_terry_loss,
    dpo_loss,
    ipo_loss,
)
from posttrain.algorithms.presets import CRITIC_ADVANTAGES, PRESETS, AlgorithmPreset

__all__ = [
    "AGGREGATIONS",
    "CRITIC_ADVANTAGES",
    "GRPO_EPS",
    "K3_MAX_LOG_RATIO",
    "KL_ESTIMATORS",
    "POLICY_LOSSES",
    "PREFERENCE_LOSSES",
    "PRESETS",
    "SEQUENCE_ADVANTAGES",
    "AdaptiveKLController",
    "AlgorithmPreset",
    "FixedKLController",
    "KLController",
    "PolicyLossOutput",
    "PreferenceOutput",
    "advantages_dr_grpo",
    "advantages_group",
    "advantages_max",
    "advantages_mean",
    "advantages_none",
    "advantages_rloo",
    "advantages_value",
    "aggregate_loss",
    "aggregation_normalizer",
    "as_bool_mask",
    "bradley_terry_loss",
    "dpo_loss",
    "entropy_from_logits",
    "entropy_loss",
    "gae",
    "group_stats",
    "group_zero_std_fraction",
    "ipo_loss",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "masked_mean",
    "masked_normalize",
    "masked_sum",
    "masked_whiten",
    "policy_loss_clipped",
    "policy_loss_naive",
    "policy_loss_unclipped",
    "shifted_token_logprobs",
    "terminal_rewards",
    "token_logprobs",
    "value_loss",
]
