"""Advantage estimators: the lecture's "delta modes", GAE and their helpers.

Shape legend: N prompts, G group size (samples per prompt), B batch (= N·G flattened),
T response tokens.

Sequence-level estimators take terminal rewards laid out as (N, G), one row per prompt,
and return advantages of the same shape. The trainer broadcasts a sequence's advantage to
its tokens. Per-token estimators (GAE) work on (B, T).

NaN rewards mean "unscorable" (GUARD-9: the verifier timed out or crashed; that is not
the same as "wrong"). Group statistics ignore them and their advantage is exactly 0. A
group whose scorable rewards are all equal, or that has fewer than two of them, carries
no relative signal: every baselined estimator gives it exactly 0 (GUARD-4), not a
rounding residue.

The standard deviation is the unbiased (n − 1) one, as ``torch.std`` in the lecture code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from posttrain.algorithms.masked import as_bool_mask

GRPO_EPS = 1e-4
"""The lecture's (r − μ)/(σ + 1e-4). The CS336 code uses 1e-5; the notes and DESIGN 1e-4."""


class GroupStats(NamedTuple):
    """Statistics of each row's scorable rewards, all (N, 1) except ``valid`` (N, G)."""

    valid: Tensor  # (N, G) bool: reward is not NaN
    count: Tensor  # (N, 1) number of scorable rewards, in the rewards' dtype
    total: Tensor  # (N, 1) sum of scorable rewards
    mean: Tensor  # (N, 1) mean of scorable rewards (0 if none)
    std: Tensor  # (N, 1) unbiased std of scorable rewards (0 if fewer than two)
    no_signal: Tensor  # (N, 1) bool: < 2 scorable rewards, or all of them equal


def _check_grouped(rewards: Tensor, name: str = "rewards") -> None:
    if rewards.dim() != 2:
        raise ValueError(f"{name} must be (N prompts, G group), got shape {tuple(rewards.shape)}")
    if not rewards.is_floating_point():
        raise ValueError(
            f"{name} must be a float tensor (NaN marks unscorable), got {rewards.dtype}"
        )


def group_stats(rewards: Tensor) -> GroupStats:
    """Per-row statistics over scorable (non-NaN) rewards.

    Args:
        rewards: (N, G), NaN = unscorable.
    """
    _check_grouped(rewards)
    valid = ~torch.isnan(rewards)
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    r = torch.where(valid, rewards, zero)  # (N, G)
    count = valid.sum(dim=-1, keepdim=True).to(rewards.dtype)  # (N, 1)
    total = r.sum(dim=-1, keepdim=True)
    mean = total / count.clamp_min(1)
    sq = torch.where(valid, (r - mean).square(), zero)
    std = (sq.sum(dim=-1, keepdim=True) / (count - 1).clamp_min(1)).sqrt()
    hi = torch.where(valid, rewards, -torch.inf).amax(dim=-1, keepdim=True)
    lo = torch.where(valid, rewards, torch.inf).amin(dim=-1, keepdim=True)
    no_signal = (count < 2) | (hi == lo)
    return GroupStats(valid, count, total, mean, std, no_signal)


def _finish(adv: Tensor, stats: GroupStats) -> Tensor:
    """Exact 0 for unscorable entries and for groups without relative signal."""
    keep = stats.valid & ~stats.no_signal
    return torch.where(keep, adv, torch.zeros((), dtype=adv.dtype, device=adv.device))


def advantages_none(rewards: Tensor) -> Tensor:
    """Raw reward as advantage (vanilla REINFORCE, Williams 1992). (N, G) → (N, G).

    No baseline, so a constant group keeps its reward; only NaN entries become 0.
    """
    _check_grouped(rewards)
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    return torch.where(torch.isnan(rewards), zero, rewards)


def advantages_mean(rewards: Tensor, scope: Literal["group", "batch"] = "group") -> Tensor:
    """r − mean(r): the mean-reward baseline ("centered_rewards" in the lecture code).

    Args:
        rewards: (N, G).
        scope: "group" subtracts each prompt's mean (b(s) per prompt); "batch" subtracts the
            mean over the whole batch (one b for all prompts).
    Returns:
        (N, G). Same as :func:`advantages_dr_grpo` when scope is "group".
    """
    if scope not in ("group", "batch"):
        raise ValueError(f"advantages_mean: scope must be 'group' or 'batch', got {scope!r}")
    _check_grouped(rewards)
    # Batch scope is the group rule applied to the batch flattened into one group.
    flat = rewards.reshape(1, -1) if scope == "batch" else rewards  # (1, N·G) or (N, G)
    stats = group_stats(flat)
    return _finish(flat - stats.mean, stats).reshape(rewards.shape)


def advantages_group(rewards: Tensor, eps: float = GRPO_EPS) -> Tensor:
    """GRPO (Shao et al. 2024): (r − μ)/(σ + eps), μ and unbiased σ over the group.

    ``eps`` keeps near-constant groups from amplifying noise (GUARD-5): with 1e-4,
    rewards [1, 1 + 1e-7] give |A| ≈ 5e-4, with 1e-9 they would give ≈ 0.7.
    """
    if not eps >= 0:
        raise ValueError(f"advantages_group: eps must be >= 0, got {eps}")
    stats = group_stats(rewards)
    return _finish((rewards - stats.mean) / (stats.std + eps), stats)


def advantages_dr_grpo(rewards: Tensor) -> Tensor:
    """Dr. GRPO (Liu et al. 2025): r − μ, GRPO without the σ division."""
    stats = group_stats(rewards)
    return _finish(rewards - stats.mean, stats)


def advantages_rloo(rewards: Tensor) -> Tensor:
    """RLOO (Ahmadian et al. 2024): r_i − mean of the other scorable rewards of the group.

    Equals n/(n − 1)·(r_i − μ); the baseline excludes r_i, so it is independent of a_i.
    """
    stats = group_stats(rewards)
    others = (stats.total - torch.where(stats.valid, rewards, 0.0)) / (stats.count - 1).clamp_min(1)
    return _finish(rewards - others, stats)


def advantages_max(rewards: Tensor) -> Tensor:
    """The lecture code's fourth delta mode, "max_rewards": keep r where it is its group's maximum.

    δ_i = r_i if r_i == max_j r_j else 0 (ties all keep their reward). Not a baseline: a
    constant group keeps its reward, and the estimator is biased towards the best sample.
    """
    stats = group_stats(rewards)
    best = torch.where(stats.valid, rewards, -torch.inf).amax(dim=-1, keepdim=True)  # (N, 1)
    keep = stats.valid & (rewards == best)
    return torch.where(keep, rewards, torch.zeros((), dtype=rewards.dtype, device=rewards.device))


def advantages_value(rewards: Tensor, values: Tensor) -> Tensor:
    """Actor-critic: r − V(s), with V(s) a learned value of the prompt. (B,), (B,) → (B,).

    NaN rewards give 0. ``values`` is detached: the critic learns from the value loss only.
    """
    if rewards.shape != values.shape:
        raise ValueError(
            f"advantages_value: rewards {tuple(rewards.shape)} != values {tuple(values.shape)}"
        )
    valid = ~torch.isnan(rewards)
    adv = rewards - values.detach()
    return torch.where(valid, adv, torch.zeros((), dtype=adv.dtype, device=adv.device))


SEQUENCE_ADVANTAGES: dict[str, Callable[[Tensor], Tensor]] = {
    "none": advantages_none,
    "mean": advantages_mean,
    "batch_mean": lambda rewards: advantages_mean(rewards, scope="batch"),
    "group": advantages_group,
    "dr_grpo": advantages_dr_grpo,
    "rloo": advantages_rloo,
    "max": advantages_max,
}
"""(N, G) → (N, G) estimators by name. "value" and "gae" need a critic; see presets.py."""


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2015) over response tokens.

    δ_t = r_t + γ V(s_{t+1}) − V(s_t),  A_t = δ_t + γλ A_{t+1},  returns_t = A_t + V(s_t).
    λ = 1 gives the Monte-Carlo return minus V(s_t); λ = 0 the one-step TD residual.

    Args:
        rewards: (B, T) per-token rewards (often :func:`terminal_rewards` plus a KL term).
        values: (B, T); values[:, t] = V(s_t), the state before token t is emitted.
        mask: (B, T) True on real tokens. Masked positions are skipped, so right-, left-
            padding and holes all work; the value after a row's last real token is 0
            (terminal).
        gamma: discount in [0, 1]. lam: GAE λ in [0, 1].
    Returns:
        (advantages, returns), both (B, T) and detached; 0 at masked positions. A row with a
        NaN reward on a real token is unscorable (GUARD-9): advantages 0, returns = values
        (so the value loss there is 0 too).
    """
    if not (rewards.shape == values.shape == mask.shape) or rewards.dim() != 2:
        raise ValueError(
            f"gae: rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and mask "
            f"{tuple(mask.shape)} must all be the same (B, T)"
        )
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gae: gamma and lam must be in [0, 1], got gamma={gamma}, lam={lam}")
    m = as_bool_mask(mask)
    r, v = rewards.detach(), values.detach()
    zero = torch.zeros((), dtype=r.dtype, device=r.device)
    unscorable = (torch.isnan(r) & m).any(dim=-1, keepdim=True)  # (B, 1)
    r = torch.where(m & ~torch.isnan(r), r, zero)
    v = torch.where(m, v, zero)
    adv = torch.zeros_like(r)
    next_value = torch.zeros_like(r[:, 0])  # (B,) V of the next real state; 0 past the end
    next_adv = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        real = m[:, t]
        a_t = r[:, t] + gamma * next_value - v[:, t] + gamma * lam * next_adv
        adv[:, t] = torch.where(real, a_t, zero)
        # Masked positions leave the running state alone: they are not steps.
        next_value = torch.where(real, v[:, t], next_value)
        next_adv = torch.where(real, a_t, next_adv)
    adv = torch.where(unscorable, zero, adv)
    returns = torch.where(m, adv + v, zero)
    return adv, returns


def terminal_rewards(rewards: Tensor, mask: Tensor) -> Tensor:
    """Place each row's scalar reward on its last real token. (B,), (B, T) → (B, T).

    A row without real tokens gets nothing. NaN rewards are placed as NaN (see :func:`gae`).
    """
    if rewards.dim() != 1 or mask.dim() != 2 or rewards.shape[0] != mask.shape[0]:
        raise ValueError(
            f"terminal_rewards: rewards {tuple(rewards.shape)} must be (B,) and mask "
            f"{tuple(mask.shape)} (B, T)"
        )
    m = as_bool_mask(mask)
    pos = torch.arange(m.shape[1], device=m.device)  # (T,)
    last = torch.where(m, pos, -1).amax(dim=-1)  # (B,); -1 for an empty row
    at_last = pos.unsqueeze(0) == last.unsqueeze(1)  # (B, T)
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    return torch.where(at_last, rewards.unsqueeze(1), zero)


def group_zero_std_fraction(rewards: Tensor) -> float:
    """Fraction of groups (rows of (N, G)) without relative signal: all scorable rewards equal,
    or fewer than two scorable. Logged as ``rollout/frac_zero_std`` (GUARD-4)."""
    stats = group_stats(rewards)
    if stats.no_signal.numel() == 0:
        return 0.0
    return stats.no_signal.to(torch.float64).mean().item()
