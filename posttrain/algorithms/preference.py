"""Preference losses: Bradley–Terry reward modelling, DPO and IPO.

Shape legend: B preference pairs. Every input is (B,): a scalar reward, or a sequence
log-probability (the sum of the response's token log-probs) of the chosen or rejected
response under the policy or the frozen reference. We minimise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor


@dataclass
class PreferenceOutput:
    """Per-pair loss and metrics, all (B,)."""

    loss: Tensor
    """(B,) per-pair loss to minimise (average it for the step)."""
    accuracy: Tensor
    """(B,) float 1.0 where the chosen response's reward beats the rejected one's, else 0."""
    margin: Tensor
    """(B,) chosen reward − rejected reward, detached."""
    chosen_rewards: Tensor
    """(B,) reward (or implicit reward) of the chosen response, detached."""
    rejected_rewards: Tensor
    """(B,) reward (or implicit reward) of the rejected response, detached."""


def _check_pairs(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1 or next(iter(tensors.values())).dim() != 1:
        raise ValueError(f"preference inputs must all be (B,), got {shapes}")


def _metrics(loss: Tensor, chosen: Tensor, rejected: Tensor) -> PreferenceOutput:
    chosen, rejected = chosen.detach(), rejected.detach()
    margin = chosen - rejected
    return PreferenceOutput(
        loss=loss,
        accuracy=(margin > 0).to(margin.dtype),
        margin=margin,
        chosen_rewards=chosen,
        rejected_rewards=rejected,
    )


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor) -> PreferenceOutput:
    """Reward-model loss −log σ(r_chosen − r_rejected) (Bradley & Terry 1952; Ouyang et al. 2022).

    Uses logsigmoid, finite for any margin. Returns per-pair loss, accuracy and margin (B,).
    """
    _check_pairs(chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards)
    loss = -F.logsigmoid(chosen_rewards - rejected_rewards)
    return _metrics(loss, chosen_rewards, rejected_rewards)


def _log_ratio_difference(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
) -> tuple[Tensor, Tensor]:
    """(log π − log π_ref) of the chosen and the rejected response; the reference is detached."""
    _check_pairs(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    chosen = policy_chosen_logps - ref_chosen_logps.detach()
    rejected = policy_rejected_logps - ref_rejected_logps.detach()
    return chosen, rejected


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float,
) -> PreferenceOutput:
    """DPO (Rafailov et al. 2023): −log σ(β·h), h = (log π − log π_ref)(y_w) − (…)(y_l).

    The implicit rewards β(log π − log π_ref) are reported as chosen/rejected rewards; at
    initialisation (π = π_ref) the loss is log 2. β is usually 0.1 to 0.5; larger keeps
    the policy closer to the reference.
    """
    if not beta > 0:
        raise ValueError(f"dpo_loss: beta must be > 0, got {beta}")
    chosen, rejected = _log_ratio_difference(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    loss = -F.logsigmoid(beta * (chosen - rejected))
    return _metrics(loss, beta * chosen, beta * rejected)


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    tau: float,
) -> PreferenceOutput:
    """IPO (Azar et al. 2023): (h − 1/(2τ))², h the same log-ratio difference as DPO.

    Unlike DPO it regresses h to a finite target instead of pushing it to +∞, so it does
    not overfit deterministic preferences. Implicit rewards are reported as τ·(log π −
    log π_ref), τ playing β's role.
    """
    if not tau > 0:
        raise ValueError(f"ipo_loss: tau must be > 0, got {tau}")
    chosen, rejected = _log_ratio_difference(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    )
    loss = (chosen - rejected - 1.0 / (2.0 * tau)).square()
    return _metrics(loss, tau * chosen, tau * rejected)


PREFERENCE_LOSSES: dict[
    str, Callable[[Tensor, Tensor, Tensor, Tensor, float], PreferenceOutput]
] = {
    "dpo": dpo_loss,
    "ipo": ipo_loss,
}
"""Policy-vs-reference pair losses; the fifth positional argument is β (DPO) or τ (IPO)."""
