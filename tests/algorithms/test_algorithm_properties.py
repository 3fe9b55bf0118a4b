"""Property tests over random shapes and masks (hypothesis; small example counts)."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from posttrain.algorithms import (
    AGGREGATIONS,
    SEQUENCE_ADVANTAGES,
    aggregate_loss,
    aggregation_normalizer,
    gae,
    kl_k2,
    kl_k3,
    masked_mean,
    masked_sum,
    policy_loss_clipped,
    policy_loss_unclipped,
)

F64 = torch.float64
SETTINGS = settings(max_examples=25, deadline=None)
seeds = st.integers(0, 2**31 - 1)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@SETTINGS
@given(b=st.integers(1, 5), t=st.integers(1, 7), seed=seeds)
def test_masked_reductions_match_python_and_ignore_poison(b, t, seed):
    g = _gen(seed)
    x = torch.randn(b, t, generator=g, dtype=F64)
    mask = torch.rand(b, t, generator=g) < 0.6
    poisoned = torch.where(mask, x, torch.full_like(x, math.nan))
    kept = [v for v, m in zip(x.flatten().tolist(), mask.flatten().tolist(), strict=True) if m]
    assert math.isclose(masked_sum(poisoned, mask).item(), sum(kept), abs_tol=1e-12)
    expected_mean = sum(kept) / len(kept) if kept else 0.0
    assert math.isclose(masked_mean(poisoned, mask).item(), expected_mean, abs_tol=1e-12)
    rows = masked_mean(poisoned, mask, dim=1)
    assert torch.isfinite(rows).all()


@SETTINGS
@given(n=st.integers(1, 4), group=st.integers(1, 6), nan_frac=st.floats(0, 0.6), seed=seeds)
def test_group_estimators_zero_sum_and_nan_safe(n, group, nan_frac, seed):
    g = _gen(seed)
    rewards = torch.randint(0, 3, (n, group), generator=g).to(F64)  # ties and constant groups
    unscorable = torch.rand(n, group, generator=g) < nan_frac
    rewards = torch.where(unscorable, torch.full_like(rewards, math.nan), rewards)
    for name, fn in SEQUENCE_ADVANTAGES.items():
        adv = fn(rewards)
        assert adv.shape == rewards.shape and torch.isfinite(adv).all(), name
        assert (adv[unscorable] == 0).all(), name
    for name in ("mean", "group", "dr_grpo", "rloo"):
        adv = SEQUENCE_ADVANTAGES[name](rewards)
        torch.testing.assert_close(adv.sum(-1), torch.zeros(n, dtype=F64), rtol=0, atol=1e-12)
        for row in range(n):
            scorable = rewards[row][~unscorable[row]]
            if scorable.numel() < 2 or bool((scorable == scorable[0]).all()):
                assert (adv[row] == 0).all(), name


@SETTINGS
@given(
    lengths=st.lists(st.integers(0, 9), min_size=1, max_size=7),
    cuts=st.lists(st.integers(1, 6), max_size=4),
    seed=seeds,
)
def test_aggregation_is_invariant_to_any_micro_batch_split(lengths, cuts, seed):
    g = _gen(seed)
    b, t = len(lengths), 9
    mask = torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    coeffs = torch.randn(b, t, generator=g, dtype=F64)
    bounds = sorted({0, b, *[c for c in cuts if c < b]})
    for mode in AGGREGATIONS:
        w_full = torch.ones((), dtype=F64, requires_grad=True)
        n = aggregation_normalizer(mask, mode, constant=t)
        aggregate_loss(coeffs * w_full**2, mask, mode, n).backward()
        w_split = torch.ones((), dtype=F64, requires_grad=True)
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            aggregate_loss(coeffs[lo:hi] * w_split**2, mask[lo:hi], mode, n).backward()
        assert math.isclose(w_full.grad.item(), w_split.grad.item(), abs_tol=1e-12), mode


def _gae_reference(r, v, gamma, lam):
    adv, running, nxt = [0.0] * len(r), 0.0, 0.0
    for i in reversed(range(len(r))):
        running = r[i] + gamma * nxt - v[i] + gamma * lam * running
        adv[i], nxt = running, v[i]
    return adv


@SETTINGS
@given(
    lengths=st.lists(st.integers(0, 8), min_size=1, max_size=5),
    gamma=st.floats(0, 1),
    lam=st.floats(0, 1),
    seed=seeds,
)
def test_gae_matches_reference_loop(lengths, gamma, lam, seed):
    g = _gen(seed)
    b, t = len(lengths), 8
    r = torch.randn(b, t, generator=g, dtype=F64)
    v = torch.randn(b, t, generator=g, dtype=F64)
    mask = torch.arange(t).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    adv, ret = gae(r, v, mask, gamma, lam)
    for row, n in enumerate(lengths):
        ref = _gae_reference(r[row, :n].tolist(), v[row, :n].tolist(), gamma, lam)
        torch.testing.assert_close(adv[row, :n], torch.tensor(ref, dtype=F64), rtol=0, atol=1e-12)
        torch.testing.assert_close(ret[row, :n], adv[row, :n] + v[row, :n], rtol=0, atol=1e-12)
        assert (adv[row, n:] == 0).all() and (ret[row, n:] == 0).all()


@SETTINGS
@given(
    b=st.integers(1, 4),
    t=st.integers(1, 6),
    eps_low=st.floats(0.01, 0.5),
    eps_high=st.floats(0.01, 0.5),
    seed=seeds,
)
def test_clipped_loss_is_a_pessimistic_bound(b, t, eps_low, eps_high, seed):
    g = _gen(seed)
    lp = -torch.rand(b, t, generator=g, dtype=F64) * 3
    old = lp + 0.5 * torch.randn(b, t, generator=g, dtype=F64)
    adv = torch.randn(b, t, generator=g, dtype=F64)
    clipped = policy_loss_clipped(lp, old, adv, eps_low, eps_high)
    plain = policy_loss_unclipped(lp, old, adv, eps_low, eps_high)
    # We minimise: the clipped loss is never below the unclipped one, equal inside the band
    # and wherever the clip is inactive.
    assert (clipped.loss >= plain.loss - 1e-15).all()
    inside = (clipped.ratio >= 1 - eps_low) & (clipped.ratio <= 1 + eps_high)
    assert torch.equal(clipped.loss[inside], plain.loss[inside])
    assert not clipped.clipped[inside].any()
    assert torch.equal(clipped.loss[~clipped.clipped], plain.loss[~clipped.clipped])


@SETTINGS
@given(b=st.integers(1, 4), t=st.integers(1, 6), scale=st.floats(0.01, 30), seed=seeds)
def test_k2_k3_nonnegative(b, t, scale, seed):
    g = _gen(seed)
    lp = -torch.rand(b, t, generator=g, dtype=F64) * scale
    ref = -torch.rand(b, t, generator=g, dtype=F64) * scale
    assert (kl_k3(lp, ref) >= 0).all() and (kl_k2(lp, ref) >= 0).all()
    assert torch.isfinite(kl_k3(lp.float(), ref.float())).all()
