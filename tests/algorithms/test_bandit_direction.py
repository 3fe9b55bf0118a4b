"""CORR-12: direction, not just change, on a two-token bandit driven by the preset table.

Policy: logits [θ, 0] over tokens A (0) and B (1), so π(A) = σ(θ); θ = 0 at the start. One
group of two samples, A (reward 1) and B (reward 0), one token each. On-policy, with the
reference equal to the policy (so KL terms have zero gradient at this point), every preset's
loss after aggregation over 2 one-token sequences is −½ Σ_i A_i log π(a_i). With
d log σ(θ)/dθ = 1 − σ(θ) = ½ and d log(1 − σ(θ))/dθ = −σ(θ) = −½:

    dL/dθ = −(A_A − A_B)/4,   so one SGD step gives θ' = lr·(A_A − A_B)/4

and log π(A) rises by exactly log σ(θ') − log ½. A_A − A_B by hand:
    reinforce (raw reward): 1 − 0 = 1          reinforce_baseline (mean 0.5): 0.5 + 0.5 = 1
    rloo: (1 − 0) − (0 − 1) = 2                dr_grpo: 1
    grpo: 2·0.5/(σ + 1e-4), σ = sqrt(0.5) (unbiased std of [1, 0])
    actor_critic, ppo (V = 0.5 for both, γ = λ = 1): 0.5 + 0.5 = 1
"""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.algorithms import (
    KL_ESTIMATORS,
    POLICY_LOSSES,
    PRESETS,
    SEQUENCE_ADVANTAGES,
    advantages_value,
    aggregate_loss,
    aggregation_normalizer,
    gae,
    terminal_rewards,
    token_logprobs,
)

F64 = torch.float64
LR = 0.4
TOKENS = torch.tensor([[0], [1]])  # sample 0 chose A, sample 1 chose B
REWARDS = torch.tensor([[1.0, 0.0]], dtype=F64)  # one prompt, group of 2
MASK = torch.ones(2, 1, dtype=torch.bool)
GRPO_GAP = 2 * 0.5 / (math.sqrt(0.5) + 1e-4)
EXPECTED_GAP = {
    "reinforce": 1.0,
    "reinforce_baseline": 1.0,
    "rloo": 2.0,
    "dr_grpo": 1.0,
    "grpo": GRPO_GAP,
    "actor_critic": 1.0,
    "ppo": 1.0,
}


def _logprobs(theta: torch.Tensor) -> torch.Tensor:
    logits = torch.stack([theta, torch.zeros((), dtype=F64)]).expand(2, 1, 2)  # (2, 1, 2)
    return token_logprobs(logits, TOKENS)  # (2, 1)


def _advantages(name: str) -> torch.Tensor:
    """(2, 1) per-token advantages from the preset's estimator (critic ones with V = 0.5)."""
    preset = PRESETS[name]
    if preset.advantage in SEQUENCE_ADVANTAGES:
        return SEQUENCE_ADVANTAGES[preset.advantage](REWARDS).reshape(2, 1)
    values = torch.full((2, 1), 0.5, dtype=F64)
    critic = {
        "value": lambda: advantages_value(REWARDS.reshape(2), values.reshape(2)).reshape(2, 1),
        "gae": lambda: gae(
            terminal_rewards(REWARDS.reshape(2), MASK), values, MASK, preset.gamma, preset.lam
        )[0],
    }
    return critic[preset.advantage]()


@pytest.mark.parametrize("name", sorted(EXPECTED_GAP))
def test_one_step_raises_log_pi_A_by_the_predicted_amount(name):
    preset = PRESETS[name]
    adv = _advantages(name)
    assert (adv[0] - adv[1]).item() == pytest.approx(EXPECTED_GAP[name], abs=1e-12)

    theta = torch.zeros((), dtype=F64, requires_grad=True)
    opt = torch.optim.SGD([theta], lr=LR)
    lp = _logprobs(theta)
    out = POLICY_LOSSES[preset.loss](lp, lp.detach(), adv, preset.clip_eps, preset.clip_eps)
    per_token = out.loss
    if preset.kl_placement == "loss":  # zero gradient here: the reference is the policy
        per_token = per_token + preset.kl_coef * KL_ESTIMATORS[preset.kl_estimator](lp, lp.detach())
    n = aggregation_normalizer(MASK, preset.loss_agg, constant=1.0)
    aggregate_loss(per_token, MASK, preset.loss_agg, n).backward()
    assert theta.grad.item() == pytest.approx(-EXPECTED_GAP[name] / 4, abs=1e-12)
    opt.step()

    theta_new = LR * EXPECTED_GAP[name] / 4
    predicted_rise = -math.log1p(math.exp(-theta_new)) - math.log(0.5)
    rise = (_logprobs(theta.detach())[0, 0] - math.log(0.5)).item()
    assert rise > 0
    assert rise == pytest.approx(predicted_rise, abs=1e-12)
