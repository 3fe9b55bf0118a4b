"""The numbers behind three of the lab's canvases, computed with the library's own functions.

Shape legend: S states, A actions per state, N rollouts (samples), K actions of the
variance explorer's policy, R ratio grid points.

- :func:`two_state`: the lecture's two-state baseline example (rewards 11, 9 | 0, 2).
- :func:`clip_curve`: PPO's clipped objective over a grid of ratios, one vectorised call of
  :func:`~posttrain.algorithms.policy_loss_clipped`.
- :func:`variance_explorer`: single-rollout REINFORCE gradient estimates of a small softmax
  policy, against its exact gradient by enumeration.

Every function takes plain Python values and returns a JSON-ready dict; the server maps
them to endpoints and the page only draws what they return.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from posttrain.algorithms import (
    advantages_mean,
    advantages_none,
    advantages_value,
    policy_loss_clipped,
    policy_loss_naive,
    policy_loss_unclipped,
    token_logprobs,
)

F64 = torch.float64

LECTURE_TWO_STATE = {"rewards": [[11.0, 9.0], [0.0, 2.0]], "baseline": [10.0, 1.0]}
"""The lecture's example: s1: a1 → 11, a2 → 9; s2: a1 → 0, a2 → 2; b(s1) = 10, b(s2) = 1."""

LECTURE_PRINTED_STD = {"no_baseline": 4.743, "baseline": 1.15}
"""The std values the lecture notes print. They are quoted, never used in a computation:
torch.std([11, 9, 0, 2]) is sqrt(85/3) = 5.323 (sqrt(85/4) = 4.610 with n), so the printed
4.743 (= sqrt(22.5)) matches no std of these rewards; 1.15 is sqrt(4/3) = 1.1547."""


def number_param(params: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    """A finite float parameter in [lo, hi], or a ValueError naming it."""
    raw = params.get(name, default)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number, got {raw!r}") from None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"{name}: must be in [{lo}, {hi}], got {value}")
    return value


def _matrix(raw: Any, name: str, rows: int, cols: int) -> torch.Tensor:
    """A (rows, cols) float64 tensor from nested lists, or a ValueError naming the field."""
    try:
        m = torch.tensor(raw, dtype=F64)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a {rows}x{cols} list of numbers, got {raw!r}") from None
    if tuple(m.shape) != (rows, cols) or not bool(torch.isfinite(m).all()):
        raise ValueError(f"{name}: expected {rows}x{cols} finite numbers, got {raw!r}")
    return m


# --------------------------------------------------------------------- two states, baseline


def per_sample_gradients(logits: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor):
    """Gradient of the objective w·log π(a) for each sample separately, by autograd.

    Each sample gets its own copy of the logits, so one backward pass of the summed
    :func:`policy_loss_naive` (loss = −w·log π) yields every sample's own gradient.

    Args:
        logits: (N, K) the policy's logits each sample was drawn from.
        actions: (N,) the sampled action ids.
        weights: (N,) the advantage (or raw reward) of each sample.
    Returns:
        (N, K) ∂(w·log π(a))/∂logits per sample (the objective's gradient: −∂loss).
    """
    leaf = logits.detach().clone().requires_grad_(True)  # (N, K), one row per sample
    logprobs = token_logprobs(leaf.unsqueeze(1), actions.view(-1, 1))  # (N, 1)
    out = policy_loss_naive(logprobs, logprobs.detach(), weights.view(-1, 1).to(logprobs.dtype))
    out.loss.sum().backward()
    return -leaf.grad  # (N, K)


def two_state(params: dict[str, Any]) -> dict[str, Any]:
    """The two-state example: gradient weights, their std, and each sample's push.

    Params: ``rewards`` 2x2 (state × action), ``baseline`` "on"/"off", ``b`` [b(s1), b(s2)].
    The policy is tabular and uniform (logits 0), as in the lecture; each (s, a) is one
    sample. The std is ``torch.std`` (n − 1) of the four weights, as in the lecture's code.
    """
    rewards = _matrix(params.get("rewards", LECTURE_TWO_STATE["rewards"]), "rewards", 2, 2)
    use_baseline = params.get("baseline", "on") in ("on", True, "true", 1)
    b = _matrix([params.get("b", LECTURE_TWO_STATE["baseline"])], "b", 1, 2)[0]  # (S,)
    flat = rewards.reshape(-1)  # (S·A,) = (s1,a1), (s1,a2), (s2,a1), (s2,a2)
    if use_baseline:
        values = b.repeat_interleave(2)  # (S·A,) b(s) for each sample of state s
        weights = advantages_value(flat, values)
    else:
        weights = advantages_none(rewards).reshape(-1)
    raw_std = float(advantages_none(rewards).reshape(-1).std())
    logits = torch.zeros(4, 2, dtype=F64)  # (S·A, A): uniform π(·|s) in both states
    actions = torch.tensor([0, 1, 0, 1])
    grads = per_sample_gradients(logits, actions, weights)  # (S·A, A)
    # Expected update per state: Σ_a π(a|s)·g(s, a); a baseline must leave it unchanged.
    probs = torch.softmax(logits, dim=-1).gather(1, actions.view(-1, 1))  # (S·A, 1)
    expected = (probs * grads).view(2, 2, 2).sum(dim=1)  # (S, A)
    samples = []
    for i in range(4):
        s, a = divmod(i, 2)
        samples.append(
            {
                "state": s,
                "action": a,
                "reward": float(flat[i]),
                "baseline": float(b[s]) if use_baseline else 0.0,
                "weight": float(weights[i]),
                "push": grads[i].tolist(),
            }
        )
    return {
        "baseline": use_baseline,
        "b": b.tolist(),
        "rewards": rewards.tolist(),
        "weights": weights.tolist(),
        "std": float(weights.std()),
        "std_population": float(weights.std(correction=0)),
        "std_no_baseline": raw_std,
        # Centered: the lecture's b(s) is each state's mean reward (the group-mean baseline).
        "state_mean_baseline": advantages_mean(rewards).reshape(-1).tolist(),
        "samples": samples,
        "expected_push": expected.tolist(),
        "lecture_printed_std": LECTURE_PRINTED_STD,
    }


# ------------------------------------------------------------------------------ PPO clip


def clip_curve(params: dict[str, Any]) -> dict[str, Any]:
    """PPO's per-sample objective min(A·r, A·clip(r, 1 − ε, 1 + ε)) over a ratio grid.

    Params: ``advantage`` A, ``eps`` ε (``eps_high`` optional, defaults to ε), ``ratio`` a
    probe ratio, ``r_min``/``r_max``/``points`` the grid. One vectorised call of
    :func:`policy_loss_clipped` on logprobs = log r, old_logprobs = 0 gives the objective
    (−loss), the clip mask (zero-gradient region) and, by autograd, dObjective/dr.
    """
    adv = number_param(params, "advantage", 0.5, -10.0, 10.0)
    eps = number_param(params, "eps", 0.2, 0.0, 0.99)
    eps_high = number_param(params, "eps_high", eps, 0.0, 10.0)
    probe = number_param(params, "ratio", 1.35, 1e-3, 100.0)
    r_min = number_param(params, "r_min", 0.0, 0.0, 100.0)
    r_max = number_param(params, "r_max", 2.0, 1e-3, 100.0)
    points = int(number_param(params, "points", 401, 2, 5001))
    if r_max <= r_min:
        raise ValueError(f"r_max: must exceed r_min={r_min}, got {r_max}")
    grid = torch.linspace(max(r_min, 1e-4), r_max, points, dtype=F64)  # (R,)
    ratios = torch.cat([grid, torch.tensor([probe], dtype=F64)])  # (R + 1,); last = probe
    logprobs = ratios.log().view(1, -1).requires_grad_(True)  # (1, R + 1)
    old = torch.zeros_like(logprobs)
    advantages = torch.full_like(logprobs, adv)
    out = policy_loss_clipped(logprobs, old, advantages, eps, eps_high)
    objective = -out.loss  # we minimise the loss; the lecture plots the objective
    (d_logprob,) = torch.autograd.grad(objective.sum(), logprobs)
    d_ratio = (d_logprob / ratios).view(-1)  # chain rule: d/dr = d/dlog r · 1/r
    unclipped = -policy_loss_unclipped(logprobs.detach(), old, advantages).loss.view(-1)
    objective, clipped = objective.detach().view(-1), out.clipped.view(-1)
    return {
        "advantage": adv,
        "eps": eps,
        "eps_high": eps_high,
        "ratio": grid.tolist(),
        "objective": objective[:-1].tolist(),
        "unclipped": unclipped[:-1].tolist(),
        "gradient": d_ratio[:-1].tolist(),
        "clipped": clipped[:-1].tolist(),
        "probe": {
            "ratio": probe,
            "objective": float(objective[-1]),
            "unclipped": float(unclipped[-1]),
            "gradient": float(d_ratio[-1]),
            "clipped": bool(clipped[-1]),
        },
        "bounds": [1.0 - eps, 1.0 + eps_high],
    }
