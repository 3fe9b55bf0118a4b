"""Bradley–Terry, DPO and IPO (posttrain/algorithms/preference.py)."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.algorithms.preference import (
    PREFERENCE_LOSSES,
    bradley_terry_loss,
    dpo_loss,
    ipo_loss,
)

F64 = torch.float64
LN2 = math.log(2.0)


def _t(values, grad=False):
    return torch.tensor(values, dtype=F64, requires_grad=grad)


def test_bradley_terry_by_hand():
    out = bradley_terry_loss(_t([2.0, 0.0, -1.0]), _t([1.0, 0.0, 1.0]))
    # margins 1, 0, −2: loss = log(1 + e^{−m}) = log(1 + e^{−1}), log 2, log(1 + e^2).
    expected = [math.log1p(math.exp(-1.0)), LN2, math.log1p(math.exp(2.0))]
    torch.testing.assert_close(out.loss, _t(expected), rtol=0, atol=1e-15)
    assert out.accuracy.tolist() == [1.0, 0.0, 0.0]
    assert out.margin.tolist() == [1.0, 0.0, -2.0]
    # logsigmoid stays finite where −log(sigmoid(m)) would be log(0).
    far = bradley_terry_loss(_t([-1000.0]), _t([1000.0]))
    assert far.loss.item() == pytest.approx(2000.0, rel=1e-12)


def test_dpo_at_init_is_log2_and_gradient_raises_chosen_minus_rejected():
    beta = 0.1
    pc, pr = _t([-5.0, -12.0], grad=True), _t([-7.0, -3.0], grad=True)
    out = dpo_loss(pc, pr, pc.detach().clone(), pr.detach().clone(), beta)
    torch.testing.assert_close(out.loss, _t([LN2, LN2]), rtol=0, atol=1e-15)
    assert out.margin.tolist() == [0.0, 0.0] and out.accuracy.tolist() == [0.0, 0.0]
    out.loss.sum().backward()
    # dL/dh = −β·σ(−βh) = −β/2 at h = 0; h = pc − pr (+ const): descent raises pc, lowers pr.
    torch.testing.assert_close(pc.grad, _t([-beta / 2] * 2), rtol=0, atol=1e-15)
    torch.testing.assert_close(pr.grad, _t([beta / 2] * 2), rtol=0, atol=1e-15)


def test_dpo_by_hand_off_init():
    # log-ratios: chosen −1 − (−2) = 1, rejected −3 − (−2.5) = −0.5; h = 1.5; β = 0.5.
    out = dpo_loss(_t([-1.0]), _t([-3.0]), _t([-2.0]), _t([-2.5]), beta=0.5)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-0.75)), abs=1e-15)
    assert out.chosen_rewards.item() == pytest.approx(0.5) and out.rejected_rewards.item() == -0.25
    assert out.margin.item() == pytest.approx(0.75) and out.accuracy.item() == 1.0


def test_dpo_step_raises_margin_by_predicted_amount():
    """CORR-12 for DPO: log π(y_w) = θ, log π(y_l) = −θ (a 1-parameter policy); one SGD step
    with lr 0.5 from θ = 0 with π_ref = π: dL/dθ = −β/2 · 2 = −β, so θ' = lr·β and the margin
    h = 2θ' = 2·lr·β = 0.1 (β = 0.1)."""
    beta, lr = 0.1, 0.5
    theta = torch.zeros((), dtype=F64, requires_grad=True)
    opt = torch.optim.SGD([theta], lr=lr)
    out = dpo_loss(theta.reshape(1), -theta.reshape(1), _t([0.0]), _t([0.0]), beta)
    out.loss.sum().backward()
    opt.step()
    after = dpo_loss(theta.reshape(1), -theta.reshape(1), _t([0.0]), _t([0.0]), beta)
    assert (after.margin / beta).item() == pytest.approx(2 * lr * beta, abs=1e-15)
    assert after.loss.item() < LN2


def test_ipo_by_hand():
    # h = 1.5 as above, τ = 0.25: target 1/(2τ) = 2 → (1.5 − 2)² = 0.25.
    out = ipo_loss(_t([-1.0]), _t([-3.0]), _t([-2.0]), _t([-2.5]), tau=0.25)
    assert out.loss.item() == pytest.approx(0.25, abs=1e-15)
    assert out.chosen_rewards.item() == 0.25 and out.rejected_rewards.item() == -0.125
    assert PREFERENCE_LOSSES["ipo"] is ipo_loss and PREFERENCE_LOSSES["dpo"] is dpo_loss


def test_reference_is_detached_and_inputs_validated():
    ref = _t([-1.0], grad=True)
    dpo_loss(_t([-1.0], grad=True), _t([-2.0]), ref, _t([-2.0]), 0.1).loss.sum().backward()
    assert ref.grad is None
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(_t([0.0]), _t([0.0]), _t([0.0]), _t([0.0]), 0.0)
    with pytest.raises(ValueError, match="must all be"):
        bradley_terry_loss(_t([0.0, 1.0]), _t([0.0]))
