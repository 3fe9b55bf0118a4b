"""From rewards to per-token advantages: hand-computed values for each path of the loop."""

from __future__ import annotations

import math

import torch

from posttrain.train.configs import AlgoConfig
from posttrain.train.plan import resolve_algorithm
from posttrain.train.rl_batch import compute_advantages


def _adv(preset: str, rewards, mask, group, **kw):
    algo = resolve_algorithm(AlgoConfig(preset=preset, **kw.pop("algo", {})))
    return compute_advantages(
        algo,
        torch.tensor(rewards, dtype=torch.float32),
        torch.tensor(mask, dtype=torch.bool),
        group,
        kl_penalty=kw.get("kl_penalty"),
        values=kw.get("values"),
        gamma=kw.get("gamma", 1.0),
        lam=kw.get("lam", 1.0),
        adv_eps=1e-4,
    )


def test_grpo_group_advantage_broadcast_to_tokens() -> None:
    # Group [1, 0, 0]: μ = 1/3, unbiased σ = sqrt(((2/3)² + 2·(1/3)²) / 2) = sqrt(1/3) = 0.57735.
    # A = (1 − 1/3) / (0.57735 + 1e-4) = 1.15450 and (0 − 1/3) / 0.57745 = −0.57725.
    # Group [1, 1, 1] has no signal: A = 0.
    mask = [[1, 1], [1, 0], [1, 1], [1, 1], [1, 1], [1, 1]]
    adv, returns = _adv("grpo", [1, 0, 0, 1, 1, 1], mask, 3)
    assert returns is None
    s = math.sqrt(1 / 3) + 1e-4
    expected = torch.tensor(
        [[2 / 3 / s] * 2, [-1 / 3 / s, 0.0], [-1 / 3 / s] * 2, [0.0] * 2, [0.0] * 2, [0.0] * 2]
    )
    torch.testing.assert_close(adv, expected, rtol=1e-6, atol=1e-7)


def test_unjudgeable_rows_are_left_out_of_the_baseline_and_get_zero() -> None:
    # Group [1, NaN, 0]: the baseline uses [1, 0]: μ = 0.5, σ = sqrt(0.5) = 0.70711.
    adv, _ = _adv("grpo", [1, float("nan"), 0], [[1], [1], [1]], 3)
    s = math.sqrt(0.5) + 1e-4
    torch.testing.assert_close(adv[:, 0], torch.tensor([0.5 / s, 0.0, -0.5 / s]))


def test_actor_critic_advantage_is_return_minus_value_per_token() -> None:
    # Terminal reward R = 1 with γ = 1: G_t = 1 at every token, A_t = 1 − V(s_t).
    values = torch.tensor([[0.2, 0.5, 0.9]])
    adv, returns = _adv("actor_critic", [1.0], [[1, 1, 1]], 1, values=values)
    torch.testing.assert_close(adv, torch.tensor([[0.8, 0.5, 0.1]]))
    torch.testing.assert_close(returns, torch.ones(1, 3))


def test_kl_in_the_reward_for_a_sequence_estimator() -> None:
    # Raw reward minus the summed per-token penalty over real tokens:
    # row 0: 1 − (0.1 + 0.2) = 0.7; row 1: 0 − 0.3 = −0.3 (its second token is padding).
    kl = torch.tensor([[0.1, 0.2], [0.3, 5.0]])
    adv, _ = _adv("reinforce", [1.0, 0.0], [[1, 1], [1, 0]], 1, kl_penalty=kl)
    torch.testing.assert_close(adv, torch.tensor([[0.7, 0.7], [-0.3, 0.0]]))


def test_kl_in_the_reward_for_gae() -> None:
    # Per-token rewards: [−0.1, 1 − 0.2] with V = 0, γ = λ = 1:
    # A_1 = 0.8, A_0 = −0.1 + 0.8 = 0.7; returns = A + V.
    kl = torch.tensor([[0.1, 0.2]])
    adv, returns = _adv("ppo", [1.0], [[1, 1]], 1, kl_penalty=kl, values=torch.zeros(1, 2), lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.7, 0.8]]))
    torch.testing.assert_close(returns, torch.tensor([[0.7, 0.8]]))


def test_gae_lambda_zero_is_the_td_residual() -> None:
    # λ = 0: A_t = r_t + V(s_{t+1}) − V(s_t); rewards [0, 1], V = [0.3, 0.6] (terminal V = 0):
    # A_0 = 0 + 0.6 − 0.3 = 0.3; A_1 = 1 + 0 − 0.6 = 0.4.
    adv, _ = _adv(
        "ppo", [1.0], [[1, 1]], 1, values=torch.tensor([[0.3, 0.6]]), lam=0.0, algo={"lam": 0.0}
    )
    torch.testing.assert_close(adv, torch.tensor([[0.3, 0.4]]))
