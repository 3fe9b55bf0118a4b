"""The variance explorer: single-rollout REINFORCE estimates of a small softmax policy.

Shape legend: K actions (complete responses), N rollouts, D = 2 policy parameters.

The policy is π_θ(a) = softmax(Φθ)_a with K fixed feature vectors Φ (K, D) and θ ∈ R²,
so every gradient is a point in the plane. A rollout is one action a ~ π_θ with a 0/1
reward: the rewarded actions are the first ones along a fixed direction of feature space,
as many as it takes for P(reward = 1) to reach the requested level (the sparsity knob).

Each dot is one rollout's estimate (R − b)·∇_θ log π(a), computed by autograd through the
library's :func:`~posttrain.algorithms.token_logprobs` and
:func:`~posttrain.algorithms.policy_loss_naive`. The true gradient ∇J = Σ_a π(a) R(a)
∇ log π(a) is exact: K is small enough to enumerate.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from posttrain.algorithms import (
    advantages_mean,
    advantages_none,
    advantages_value,
    policy_loss_naive,
    token_logprobs,
)
from posttrain.lab.canvases import number_param

F64 = torch.float64
NUM_ACTIONS = 256
"""K: few enough to enumerate, enough for distinct dots and a finely adjustable P(reward)."""
THETA = (0.4, -0.3)
"""The policy's parameters θ where the gradient is taken."""
BASELINES = ("none", "mean", "value")
"""none: raw reward; mean: the mean reward of the N rollouts (advantages_mean);
value: the exact V = E[R] (advantages_value)."""


def _features(seed: int = 0) -> torch.Tensor:
    """Φ (K, D): fixed features, the same on every call (seeded, private generator)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(NUM_ACTIONS, 2, generator=gen, dtype=F64)


def score_vectors(
    theta: torch.Tensor, features: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Per-rollout estimates w·∇_θ log π(a) for each (action, weight), by autograd.

    Args:
        theta: (D,) parameters. features: (K, D). actions: (N,) ids. weights: (N,) advantages.
    Returns:
        (N, D), row i = ∂(w_i·log π(a_i))/∂θ (each rollout has its own copy of θ).
    """
    leaf = theta.detach().expand(actions.shape[0], -1).clone().requires_grad_(True)  # (N, D)
    logits = leaf @ features.T  # (N, K)
    logprobs = token_logprobs(logits.unsqueeze(1), actions.view(-1, 1))  # (N, 1)
    out = policy_loss_naive(logprobs, logprobs.detach(), weights.view(-1, 1))
    out.loss.sum().backward()
    return -leaf.grad  # objective gradient = −loss gradient


def _rewarded(probs: torch.Tensor, features: torch.Tensor, level: float) -> torch.Tensor:
    """(K,) 0/1 rewards: the actions furthest along (1, 1) until their mass reaches `level`."""
    order = torch.argsort(features @ torch.tensor([1.0, 1.0], dtype=F64), descending=True)
    mass = torch.cumsum(probs[order], dim=0)  # (K,)
    count = int((mass < level).sum()) + 1  # smallest prefix with mass >= level
    rewards = torch.zeros(NUM_ACTIONS, dtype=F64)
    rewards[order[: min(count, NUM_ACTIONS)]] = 1.0
    return rewards


def _stats(dots: torch.Tensor, truth: torch.Tensor) -> dict[str, Any]:
    """Mean, total variance (trace of the covariance) and the N-average's error."""
    mean = dots.mean(dim=0)  # (D,)
    var = float(dots.var(dim=0).sum()) if dots.shape[0] > 1 else 0.0
    return {
        "mean": mean.tolist(),
        "variance": var,
        "error": float((mean - truth).norm()),
        "zero_fraction": float((dots.norm(dim=1) == 0).to(F64).mean()),
    }


def variance_explorer(params: dict[str, Any]) -> dict[str, Any]:
    """N single-rollout gradient estimates, with and without a baseline, and the truth.

    Params: ``n`` rollouts (1..2000), ``p`` target P(reward = 1) (sparsity), ``baseline``
    one of :data:`BASELINES`, ``seed`` of the rollouts.
    """
    n = int(number_param(params, "n", 100, 1, 2000))
    level = number_param(params, "p", 0.2, 0.001, 1.0)
    seed = int(number_param(params, "seed", 0, 0, 2**31 - 1))
    baseline = str(params.get("baseline", "value"))
    if baseline not in BASELINES:
        raise ValueError(f"baseline: choose one of {BASELINES}, got {baseline!r}")
    features = _features()
    theta = torch.tensor(THETA, dtype=F64)
    probs = torch.softmax(features @ theta, dim=0)  # (K,)
    rewards = _rewarded(probs, features, level)  # (K,)
    value = float((probs * rewards).sum())  # V = J(θ) = P(reward = 1)

    # Exact gradient and per-rollout variance by enumerating every action.
    every = torch.arange(NUM_ACTIONS)
    scores = score_vectors(theta, features, every, torch.ones(NUM_ACTIONS, dtype=F64))  # (K, D)
    truth = (probs[:, None] * rewards[:, None] * scores).sum(dim=0)  # (D,)

    def exact_variance(b: float) -> float:
        second = (probs * (rewards - b).square() * scores.square().sum(dim=1)).sum()
        return float(second - truth.square().sum())

    gen = torch.Generator().manual_seed(seed)
    actions = torch.multinomial(probs, n, replacement=True, generator=gen)  # (N,)
    r = rewards[actions]  # (N,)
    raw = advantages_none(r.view(1, -1)).view(-1)
    dots_none = score_vectors(theta, features, actions, raw)  # (N, D)
    out: dict[str, Any] = {
        "n": n,
        "p_target": level,
        "p_reward": value,
        "rewarded_actions": int(rewards.sum()),
        "num_actions": NUM_ACTIONS,
        "baseline": baseline,
        "true_gradient": truth.tolist(),
        "rewards": r.tolist(),
        "none": {
            "dots": dots_none.tolist(),
            **_stats(dots_none, truth),
            "exact_variance": exact_variance(0.0),
        },
    }
    if baseline != "none":
        if baseline == "mean":
            adv = advantages_mean(r.view(1, -1)).view(-1)  # b = mean of the N rewards
            exact = math.nan  # depends on N through the sample mean; not enumerated
        else:
            adv = advantages_value(r, torch.full_like(r, value))
            exact = exact_variance(value)
        dots = score_vectors(theta, features, actions, adv)
        out["with_baseline"] = {
            "dots": dots.tolist(),
            **_stats(dots, truth),
            "exact_variance": exact,
        }
    return out
