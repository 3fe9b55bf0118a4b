"""Advantage estimators and GAE (posttrain/algorithms/advantages.py), against hand values."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.algorithms.advantages import (
    SEQUENCE_ADVANTAGES,
    advantages_dr_grpo,
    advantages_group,
    advantages_max,
    advantages_mean,
    advantages_none,
    advantages_rloo,
    advantages_value,
    gae,
    group_zero_std_fraction,
    terminal_rewards,
)

NAN = float("nan")
F64 = torch.float64


def t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


# --- the seed's two-state example -------------------------------------------------------


def test_two_state_example_std_and_baseline():
    """s1: a1 → 11, a2 → 9; s2: a1 → 0, a2 → 2; b(s1) = 10, b(s2) = 1.

    The lecture computes ``torch.std`` (unbiased, n − 1). Mean of [11, 9, 0, 2] is 5.5,
    squared deviations 30.25 + 12.25 + 30.25 + 12.25 = 85:
      unbiased std = sqrt(85/3) = 5.3229, population std = sqrt(85/4) = 4.6098.
    The seed page's "4.743" (= sqrt(22.5)) matches neither; the lecture code's own
    ``torch.std`` gives 5.323. With the baseline the advantages are [1, −1, −1, 1]:
      unbiased std = sqrt(4/3) = 1.1547 (the seed's "1.15"), population std = 1.
    """
    rewards = t([11.0, 9.0, 0.0, 2.0])
    assert rewards.std().item() == pytest.approx(math.sqrt(85 / 3), abs=1e-12)
    assert math.sqrt(85 / 3) == pytest.approx(5.3229, abs=5e-5)
    assert rewards.std(correction=0).item() == pytest.approx(4.6098, abs=5e-5)
    assert abs(rewards.std().item() - 4.743) > 0.5 and abs(math.sqrt(85 / 4) - 4.743) > 0.1

    # b(s) = 10 and 1 are exactly each state's mean reward: the group-mean baseline.
    grouped = advantages_mean(t([[11.0, 9.0], [0.0, 2.0]]))
    assert grouped.tolist() == [[1.0, -1.0], [-1.0, 1.0]]
    # and the actor-critic form r − V(s) with V = [10, 10, 1, 1]:
    by_value = advantages_value(rewards, t([10.0, 10.0, 1.0, 1.0]))
    assert by_value.tolist() == [1.0, -1.0, -1.0, 1.0]
    assert by_value.std().item() == pytest.approx(math.sqrt(4 / 3), abs=1e-12)
    assert math.sqrt(4 / 3) == pytest.approx(1.15, abs=5e-3)


# --- sequence estimators by hand ------------------------------------------------------


def test_estimators_by_hand():
    r = t([[1.0, 2.0, 6.0], [3.0, 1.0, 3.0]])
    assert advantages_none(r).tolist() == r.tolist()
    # group means 3 and 7/3.
    torch.testing.assert_close(
        advantages_dr_grpo(r), t([[-2.0, -1.0, 3.0], [2 / 3, -4 / 3, 2 / 3]]), rtol=0, atol=1e-15
    )
    # RLOO row 0: 1 − (2+6)/2 = −3, 2 − (1+6)/2 = −1.5, 6 − (1+2)/2 = 4.5;
    # row 1: 3 − 2 = 1, 1 − 3 = −2, 3 − 2 = 1.
    assert advantages_rloo(r).tolist() == [[-3.0, -1.5, 4.5], [1.0, -2.0, 1.0]]
    # lecture's "max_rewards": keep r where it equals the group max (ties kept).
    assert advantages_max(r).tolist() == [[0.0, 0.0, 6.0], [3.0, 0.0, 3.0]]
    # batch mean: (1+2+6+3+1+3)/6 = 16/6.
    torch.testing.assert_close(advantages_mean(r, scope="batch"), r - 16 / 6, rtol=0, atol=1e-15)
    assert SEQUENCE_ADVANTAGES["batch_mean"](r).tolist() == advantages_mean(r, "batch").tolist()


def test_grpo_by_hand_unbiased_std():
    r = t([[1.0, 0.0, 0.0, 1.0]])
    # μ = 0.5; unbiased σ = sqrt(4 · 0.25 / 3) = sqrt(1/3); A = ±0.5 / (σ + 1e-4).
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    torch.testing.assert_close(advantages_group(r), t([[a, -a, -a, a]]), rtol=0, atol=1e-15)
    a0 = 0.5 / math.sqrt(1 / 3)
    torch.testing.assert_close(advantages_group(r, eps=0.0), t([[a0, -a0, -a0, a0]]))


def test_guard4_constant_group_is_exactly_zero():
    r = t([[1.0, 1.0, 1.0, 1.0], [0.1, 0.1, 0.1, 0.1], [0.0, 1.0, 0.0, 1.0]])
    for name in ("mean", "group", "dr_grpo", "rloo"):
        adv = SEQUENCE_ADVANTAGES[name](r[:2])
        assert torch.equal(adv, torch.zeros_like(adv)), name
    # batch scope: the whole batch is one group, constant only if every reward is equal.
    assert torch.equal(advantages_mean(r[1:2], "batch"), torch.zeros(1, 4, dtype=F64))
    assert group_zero_std_fraction(r) == pytest.approx(2 / 3)
    # "none" and "max" have no baseline: a constant group keeps its reward.
    assert advantages_none(r[:1]).tolist() == [[1.0] * 4]
    assert advantages_max(r[:1]).tolist() == [[1.0] * 4]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_guard5_near_constant_rewards_do_not_amplify_noise(dtype):
    r = torch.tensor([[1.0, 1.0 + 1e-7]], dtype=dtype)
    # μ = 1 + 5e-8, σ = 1e-7/√2 ≈ 7.1e-8: |A| = 5e-8 / (7.1e-8 + 1e-4) ≈ 5e-4.
    assert advantages_group(r).abs().max().item() < 1e-2


def test_guard5_tiny_eps_would_amplify():
    # float64 only: float32 cannot even represent the mean 1 + 5e-8.
    r = torch.tensor([[1.0, 1.0 + 1e-7]], dtype=F64)
    d = r[0, 1].item() - 1.0  # the representable difference, ≈ 1e-7
    # |A| = (d/2) / (d/√2 + 1e-9) ≈ 0.697: a 1e-7 difference amplified to ±0.7.
    expected = (d / 2) / (d / math.sqrt(2) + 1e-9)
    assert expected == pytest.approx(0.697, abs=1e-3)
    assert advantages_group(r, eps=1e-9)[0, 1].item() == pytest.approx(expected, rel=1e-6)


def test_nan_rewards_are_unscorable():
    r = t([[1.0, NAN, 3.0, 5.0], [NAN, 2.0, NAN, NAN], [NAN, NAN, NAN, NAN]])
    # row 0 over [1, 3, 5]: μ = 3, unbiased σ = sqrt((4 + 0 + 4)/2) = 2.
    a = 2.0 / (2.0 + 1e-4)
    expected = t([[-a, 0.0, 0.0, a], [0.0] * 4, [0.0] * 4])
    torch.testing.assert_close(advantages_group(r), expected, rtol=0, atol=1e-15)
    # RLOO row 0: 1 − 4 = −3, 3 − 3 = 0, 5 − 2 = 3.
    assert advantages_rloo(r).tolist() == [[-3.0, 0.0, 0.0, 3.0], [0.0] * 4, [0.0] * 4]
    assert advantages_dr_grpo(r).tolist() == [[-2.0, 0.0, 0.0, 2.0], [0.0] * 4, [0.0] * 4]
    assert advantages_none(r).tolist() == [[1.0, 0.0, 3.0, 5.0], [0.0, 2.0, 0.0, 0.0], [0.0] * 4]
    assert advantages_max(r).tolist() == [[0.0, 0.0, 0.0, 5.0], [0.0, 2.0, 0.0, 0.0], [0.0] * 4]
    # rows 1 and 2 have < 2 scorable rewards: no signal.
    assert group_zero_std_fraction(r) == pytest.approx(2 / 3)
    assert advantages_value(t([NAN, 2.0]), t([1.0, 0.5])).tolist() == [0.0, 1.5]


def test_group_advantages_sum_to_zero():
    g = torch.Generator().manual_seed(0)
    r = torch.rand(5, 6, generator=g, dtype=F64)
    for name in ("mean", "group", "dr_grpo", "rloo"):
        sums = SEQUENCE_ADVANTAGES[name](r).sum(-1)
        torch.testing.assert_close(sums, torch.zeros(5, dtype=F64), rtol=0, atol=1e-12)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="rewards must be"):
        advantages_group(torch.ones(4))
    with pytest.raises(ValueError, match="scope"):
        advantages_mean(torch.ones(2, 2), scope="prompt")  # type: ignore[arg-type]


# --- GAE ---------------------------------------------------------------------------


def gae_loop(rewards: list[float], values: list[float], gamma: float, lam: float):
    """The lecture's compute_gae for one unpadded row: values get V(s_T+1) = 0 appended."""
    v = values + [0.0]
    adv = [0.0] * len(rewards)
    running = 0.0
    for i in reversed(range(len(rewards))):
        delta = rewards[i] + gamma * v[i + 1] - v[i]
        running = delta + gamma * lam * running
        adv[i] = running
    return adv, [a + vi for a, vi in zip(adv, values, strict=True)]


def test_gae_lambda1_gamma1_terminal_reward_is_R_minus_V():
    rewards, values = t([[0.0, 0.0, 1.0]]), t([[0.2, 0.5, 0.9]])
    adv, ret = gae(rewards, values, torch.ones(1, 3, dtype=torch.bool), 1.0, 1.0)
    torch.testing.assert_close(adv, t([[0.8, 0.5, 0.1]]), rtol=0, atol=1e-15)  # 1 − V(s_t)
    torch.testing.assert_close(ret, t([[1.0, 1.0, 1.0]]), rtol=0, atol=1e-15)


def test_gae_lambda0_is_td_residual():
    rewards, values = t([[0.0, 0.0, 1.0]]), t([[0.2, 0.5, 0.9]])
    adv, ret = gae(rewards, values, torch.ones(1, 3, dtype=torch.bool), 1.0, 0.0)
    # δ_0 = 0.5 − 0.2, δ_1 = 0.9 − 0.5, δ_2 = 1 + 0 − 0.9.
    torch.testing.assert_close(adv, t([[0.3, 0.4, 0.1]]), rtol=0, atol=1e-15)
    torch.testing.assert_close(ret, t([[0.5, 0.9, 1.0]]), rtol=0, atol=1e-15)


def test_gae_general_by_hand_and_padding():
    # γ = 0.9, λ = 0.5, γλ = 0.45: δ_0 = 0.9·0.5 − 0.2 = 0.25, δ_1 = 0.9·0.9 − 0.5 = 0.31,
    # δ_2 = 1 − 0.9 = 0.1; A_2 = 0.1, A_1 = 0.31 + 0.045 = 0.355, A_0 = 0.25 + 0.15975.
    expected = [0.40975, 0.355, 0.1]
    # right-padded, left-padded and holed rows, with NaN/inf in the padding.
    rewards = t([[0.0, 0.0, 1.0, NAN, 7.0], [NAN, 0.0, 0.0, 1.0, 0.0], [0.0, NAN, 0.0, 1.0, 0.0]])
    values = t(
        [[0.2, 0.5, 0.9, NAN, 3.0], [float("inf"), 0.2, 0.5, 0.9, 0.0], [0.2, 9.0, 0.5, 0.9, 0.0]]
    )
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [1, 0, 1, 1, 0]], dtype=torch.bool)
    adv, ret = gae(rewards, values, mask, 0.9, 0.5)
    for row in range(3):
        real = mask[row]
        torch.testing.assert_close(adv[row, real], t(expected), rtol=0, atol=1e-15)
        assert adv[row, ~real].tolist() == [0.0] * int((~real).sum())
        assert ret[row, ~real].tolist() == [0.0] * int((~real).sum())
    torch.testing.assert_close(ret[0, :3], t(expected) + t([0.2, 0.5, 0.9]), rtol=0, atol=1e-15)


def test_gae_matches_loop_reference_random():
    g = torch.Generator().manual_seed(3)
    B, T = 6, 9
    lengths = [9, 1, 4, 0, 7, 2]
    rewards = torch.randn(B, T, generator=g, dtype=F64)
    values = torch.randn(B, T, generator=g, dtype=F64)
    mask = torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    for gamma, lam in [(1.0, 1.0), (0.99, 0.95), (0.5, 0.0), (0.0, 0.7)]:
        adv, ret = gae(rewards, values, mask, gamma, lam)
        for b, n in enumerate(lengths):
            ref_adv, ref_ret = gae_loop(rewards[b, :n].tolist(), values[b, :n].tolist(), gamma, lam)
            torch.testing.assert_close(adv[b, :n], t(ref_adv), rtol=0, atol=1e-12)
            torch.testing.assert_close(ret[b, :n], t(ref_ret), rtol=0, atol=1e-12)
            assert adv[b, n:].abs().sum().item() == 0.0


def test_gae_unscorable_row_and_terminal_rewards():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    placed = terminal_rewards(t([2.0, NAN, 5.0]), mask)
    assert placed[0].tolist() == [0.0, 0.0, 2.0, 0.0]
    assert math.isnan(placed[1, 1].item()) and placed[1, [0, 2, 3]].tolist() == [0.0] * 3
    assert placed[2].tolist() == [0.0] * 4  # empty row: nowhere to put it
    values = t([[0.1, 0.2, 0.3, 0.0], [0.4, 0.6, 0.0, 0.0], [0.0] * 4])
    adv, ret = gae(placed, values, mask, 1.0, 1.0)
    torch.testing.assert_close(adv[0], t([1.9, 1.8, 1.7, 0.0]), rtol=0, atol=1e-15)
    # NaN reward = unscorable: advantage 0, returns = values so the value loss is 0 too.
    assert adv[1].tolist() == [0.0] * 4
    assert ret[1].tolist() == [0.4, 0.6, 0.0, 0.0]
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()


def test_gae_outputs_are_detached_and_validated():
    values = torch.zeros(1, 2, requires_grad=True)
    adv, ret = gae(torch.ones(1, 2), values, torch.ones(1, 2), 1.0, 1.0)
    assert not adv.requires_grad and not ret.requires_grad
    with pytest.raises(ValueError, match="gamma"):
        gae(torch.ones(1, 2), torch.ones(1, 2), torch.ones(1, 2), 1.5, 1.0)
    with pytest.raises(ValueError, match="same"):
        gae(torch.ones(1, 2), torch.ones(1, 3), torch.ones(1, 2), 1.0, 1.0)
