"""A baseline does not bias the policy gradient: proved by exact enumeration, no sampling.

A tabular softmax policy over 2 steps × 3 actions: θ0 (3 logits at the root state s0) and
θ1 (3 logits at each of the 3 states s1 = (a0)). There are 9 trajectories; the terminal reward
R(a0, a1) is a fixed table. For every trajectory the one-sample estimator is

    g(τ) = Σ_t ∇ log π(a_t | s_t) · (R(τ) − b(s_t)),

built with the library's own pieces (token_logprobs, gae/terminal_rewards, policy_loss_naive,
aggregation). Its exact mean Σ_τ p(τ) g(τ) must equal ∇ Σ_τ p(τ) R(τ) for every state-dependent
b; its exact variance Σ_τ p(τ) ‖g(τ) − E g‖² is lower with b = V.
"""

from __future__ import annotations

import itertools

import torch

from posttrain.algorithms.advantages import advantages_none, gae, terminal_rewards
from posttrain.algorithms.aggregation import aggregate_loss, aggregation_normalizer
from posttrain.algorithms.losses import policy_loss_naive
from posttrain.algorithms.masked import token_logprobs

F64 = torch.float64
N_ACTIONS = 3
TRAJ = torch.tensor(list(itertools.product(range(N_ACTIONS), repeat=2)))  # (9, 2): a0, a1
REWARD = torch.tensor([[11.0, 9.0, 3.0], [0.0, 2.0, 5.0], [4.0, 4.5, 7.0]], dtype=F64)
R = REWARD[TRAJ[:, 0], TRAJ[:, 1]]  # (9,)
MASK = torch.ones(9, 2, dtype=torch.bool)


def _theta() -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return torch.randn(N_ACTIONS + N_ACTIONS * N_ACTIONS, generator=g, dtype=F64)


def _logprobs(theta: torch.Tensor) -> torch.Tensor:
    """(9, 2) log π(a_t | s_t) of every trajectory's two actions."""
    theta0, theta1 = theta[:N_ACTIONS], theta[N_ACTIONS:].reshape(N_ACTIONS, N_ACTIONS)
    logits = torch.stack([theta0.expand(9, N_ACTIONS), theta1[TRAJ[:, 0]]], dim=1)  # (9, 2, 3)
    return token_logprobs(logits, TRAJ)


def _values(theta: torch.Tensor) -> torch.Tensor:
    """(9, 2) exact V(s_t): V(s0) = E[R], V(s1 = a0) = Σ_a1 π(a1|a0) R(a0, a1)."""
    with torch.no_grad():
        theta0, theta1 = theta[:N_ACTIONS], theta[N_ACTIONS:].reshape(N_ACTIONS, N_ACTIONS)
        p0, p1 = torch.softmax(theta0, -1), torch.softmax(theta1, -1)  # (3,), (3, 3)
        v1 = (p1 * REWARD).sum(-1)  # (3,)
        v0 = (p0 * v1).sum()
    return torch.stack([v0.expand(9), v1[TRAJ[:, 0]]], dim=1)


def _per_trajectory_gradients(advantages: torch.Tensor) -> torch.Tensor:
    """(9, P): g(τ) = −∇ loss(τ), with the loss a sequence token-sum (one trajectory)."""
    theta = _theta()

    def losses(th: torch.Tensor) -> torch.Tensor:
        lp = _logprobs(th)
        out = policy_loss_naive(lp, lp.detach(), advantages, mask=MASK)
        n = aggregation_normalizer(MASK[:1], "seq_mean_token_sum")  # 1: one sequence
        return torch.stack(
            [
                aggregate_loss(out.loss[i : i + 1], MASK[:1], "seq_mean_token_sum", n)
                for i in range(9)
            ]
        )

    return -torch.autograd.functional.jacobian(losses, theta)


def _trajectory_probs() -> torch.Tensor:
    return _logprobs(_theta()).sum(-1).exp().detach()  # (9,)


def _exact_gradient() -> torch.Tensor:
    theta = _theta().requires_grad_(True)
    objective = (_logprobs(theta).sum(-1).exp() * R).sum()
    (grad,) = torch.autograd.grad(objective, theta)
    return grad


def _mean_and_variance(g: torch.Tensor) -> tuple[torch.Tensor, float]:
    p = _trajectory_probs()
    mean = (p[:, None] * g).sum(0)
    var = (p * (g - mean).square().sum(-1)).sum().item()
    return mean, var


def _gae_advantages(values: torch.Tensor) -> torch.Tensor:
    # γ = λ = 1 with the reward at the last step: A_t = R − b(s_t).
    adv, _ = gae(terminal_rewards(R, MASK), values, MASK, gamma=1.0, lam=1.0)
    return adv


def test_probabilities_sum_to_one():
    assert abs(_trajectory_probs().sum().item() - 1.0) < 1e-14


def test_expected_gradient_is_the_same_with_and_without_baselines():
    exact = _exact_gradient()
    assert exact.abs().max().item() > 0.1
    no_baseline = advantages_none(R.reshape(9, 1)).expand(9, 2)
    value = _values(_theta())
    torch.testing.assert_close(_gae_advantages(value)[:, 1], R - value[:, 1], rtol=0, atol=1e-14)
    arbitrary = torch.stack(  # any b(s): 100 at the root, a different number per s1
        [
            torch.full((9,), 100.0, dtype=F64),
            torch.tensor([-7.0, 3.0, 50.0], dtype=F64)[TRAJ[:, 0]],
        ],
        dim=1,
    )
    for advantages in (no_baseline, _gae_advantages(value), _gae_advantages(arbitrary)):
        mean, _ = _mean_and_variance(_per_trajectory_gradients(advantages))
        torch.testing.assert_close(mean, exact, rtol=0, atol=1e-10)


def test_value_baseline_has_lower_exact_variance():
    _, var_none = _mean_and_variance(
        _per_trajectory_gradients(advantages_none(R.reshape(9, 1)).expand(9, 2))
    )
    _, var_value = _mean_and_variance(_per_trajectory_gradients(_gae_advantages(_values(_theta()))))
    assert var_value < 0.5 * var_none, (var_value, var_none)
