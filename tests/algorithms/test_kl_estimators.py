"""KL estimators and KL controllers (posttrain/algorithms/kl.py): CORR-8 and CORR-10."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.algorithms.kl import (
    K3_MAX_LOG_RATIO,
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k2,
    kl_k3,
)

F64 = torch.float64
LN2 = math.log(2.0)


def test_hand_values():
    # token 0: π = 0.5, π_ref = 0.25 → d = log π_ref − log π = −ln 2;
    # token 1: π = 0.25, π_ref = 0.5 → d = +ln 2.
    lp = torch.tensor([[math.log(0.5), math.log(0.25)]], dtype=F64)
    ref = torch.tensor([[math.log(0.25), math.log(0.5)]], dtype=F64)
    torch.testing.assert_close(kl_k1(lp, ref), torch.tensor([[LN2, -LN2]], dtype=F64))
    half_sq = 0.5 * LN2**2  # 0.240227
    torch.testing.assert_close(kl_k2(lp, ref), torch.tensor([[half_sq, half_sq]], dtype=F64))
    # k3 = e^d − d − 1: 0.5 + ln 2 − 1 = 0.193147; 2 − ln 2 − 1 = 0.306853.
    expected = torch.tensor([[LN2 - 0.5, 1.0 - LN2]], dtype=F64)
    torch.testing.assert_close(kl_k3(lp, ref), expected, rtol=0, atol=1e-15)
    assert expected.tolist()[0] == pytest.approx([0.193147, 0.306853], abs=1e-6)


def test_k3_nonnegative_and_zero_when_policies_match():
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(50, 7, generator=g, dtype=F64) * 10
    ref = -torch.rand(50, 7, generator=g, dtype=F64) * 10
    assert (kl_k3(lp, ref) >= 0).all() and (kl_k2(lp, ref) >= 0).all()
    for name, fn in KL_ESTIMATORS.items():
        assert torch.equal(fn(lp, lp), torch.zeros_like(lp)), name


def test_k1_and_k3_are_unbiased_by_exact_enumeration():
    """Σ_x π(x)·k(x) over the whole vocabulary equals KL(π‖π_ref) for k1 and k3, not k2."""
    g = torch.Generator().manual_seed(1)
    logp = torch.log_softmax(torch.randn(6, generator=g, dtype=F64), -1)
    logq = torch.log_softmax(torch.randn(6, generator=g, dtype=F64), -1)
    p = logp.exp()
    kl = (p * (logp - logq)).sum()
    for name in ("k1", "k3"):
        est = (p * KL_ESTIMATORS[name](logp[None], logq[None])[0]).sum()
        assert est.item() == pytest.approx(kl.item(), abs=1e-14), name
    k2 = (p * kl_k2(logp[None], logq[None])[0]).sum()
    assert abs(k2.item() - kl.item()) > 1e-3


def test_k3_clamp_at_its_bound():
    bound = K3_MAX_LOG_RATIO
    assert bound == 20.0
    # d = log π_ref − log π = 20 exactly, and 30 (beyond): same value e^20 − 21.
    lp = torch.tensor([[-20.0, -30.0, -19.0]], dtype=F64, requires_grad=True)
    ref = torch.zeros(1, 3, dtype=F64)
    out = kl_k3(lp, ref)
    cap = math.exp(20.0) - 21.0
    torch.testing.assert_close(out[0, :2], torch.tensor([cap, cap], dtype=F64), rtol=1e-15, atol=0)
    assert out[0, 2].item() == pytest.approx(math.exp(19.0) - 20.0, rel=1e-14)
    out.sum().backward()
    # Beyond the bound the gradient is 0; below it dk3/dlogπ = −(e^d − 1) = 1 − e^19.
    assert lp.grad[0, 1].item() == 0.0
    assert lp.grad[0, 2].item() == pytest.approx(1.0 - math.exp(19.0), rel=1e-14)
    # float32 at the bound stays finite (without the clamp it overflows near d = 88.7).
    far = kl_k3(torch.tensor([[-100.0]]), torch.tensor([[0.0]]))
    assert torch.isfinite(far).all()


def test_masked_kl_ignores_nan_and_inf():
    mask = torch.tensor([[True, False]])
    lp = torch.tensor([[-1.0, float("nan")]], dtype=F64, requires_grad=True)
    ref = torch.tensor([[-2.0, float("inf")]], dtype=F64)
    for name, fn in KL_ESTIMATORS.items():
        lp.grad = None
        out = fn(lp, ref, mask)
        out.sum().backward()
        assert out[0, 1].item() == 0.0 and lp.grad[0, 1].item() == 0.0, name
        assert torch.isfinite(lp.grad).all(), name


def test_fixed_controller():
    ctl = FixedKLController(0.05)
    ctl.update(123.0, 1000)
    assert ctl.coef == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.coef == 0.05
    with pytest.raises(ValueError, match="coef"):
        FixedKLController(-1.0)


def test_adaptive_controller_hand_numbers():
    ctl = AdaptiveKLController(init_coef=0.1, target=6.0, horizon=10000)
    # KL 9: err = 9/6 − 1 = 0.5, clipped to 0.2; β = 0.1·(1 + 0.2·256/10000) = 0.100512.
    ctl.update(9.0, 256)
    assert ctl.coef == pytest.approx(0.100512, rel=1e-14)
    # KL 5.4: err = −0.1 (inside the clip); β = 0.100512·(1 − 0.1·256/10000)
    #        = 0.100512 − 0.100512·0.00256 = 0.10025468928.
    ctl.update(5.4, 256)
    assert ctl.coef == pytest.approx(0.10025468928, rel=1e-12)
    # KL 0: err = −1 clipped to −0.2; β·(1 − 0.2·10000/10000) = 0.8·β.
    before = ctl.coef
    ctl.update(0.0, 10000)
    assert ctl.coef == pytest.approx(0.8 * before, rel=1e-14)


def test_adaptive_controller_state_round_trip_and_validation():
    ctl = AdaptiveKLController(0.2, target=3.0, horizon=500)
    ctl.update(4.0, 64)
    resumed = AdaptiveKLController(0.2, target=3.0, horizon=500)
    resumed.load_state_dict(ctl.state_dict())
    assert resumed.coef == ctl.coef and resumed.state_dict() == ctl.state_dict()
    ctl.update(1.0, 64)
    resumed.update(1.0, 64)
    assert resumed.coef == ctl.coef
    with pytest.raises(ValueError, match="target"):
        AdaptiveKLController(0.2, target=4.0, horizon=500).load_state_dict(ctl.state_dict())
    with pytest.raises(ValueError, match="kind"):
        FixedKLController(0.1).load_state_dict(ctl.state_dict())
    with pytest.raises(ValueError, match="horizon"):
        AdaptiveKLController(0.2, target=1.0, horizon=0)
    with pytest.raises(ValueError, match="current_kl"):
        ctl.update(float("nan"), 1)
