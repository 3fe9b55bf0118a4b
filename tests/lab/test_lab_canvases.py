"""The numbers behind the baseline, clip and variance canvases, checked by hand and by
enumeration (no browser, no server)."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.lab import variance as var
from posttrain.lab.canvases import LECTURE_PRINTED_STD, clip_curve, two_state

# --- two states ------------------------------------------------------------------------


def test_two_state_lecture_example_with_and_without_baseline():
    on = two_state({"baseline": "on"})
    off = two_state({"baseline": "off"})
    # b(s1) = 10, b(s2) = 1: weights 11−10, 9−10, 0−1, 2−1.
    assert on["weights"] == [1.0, -1.0, -1.0, 1.0]
    # std with n − 1: sum of squares 4, / 3 → sqrt(4/3) = 1.1547 (the lecture's 1.15).
    assert on["std"] == pytest.approx(math.sqrt(4 / 3), abs=1e-12)
    assert f"{on['std']:.2f}" == "1.15"
    # Raw rewards: mean 5.5, squared deviations 30.25 + 12.25 + 30.25 + 12.25 = 85.
    assert off["weights"] == [11.0, 9.0, 0.0, 2.0]
    assert off["std"] == pytest.approx(math.sqrt(85 / 3), abs=1e-12)
    assert off["std_population"] == pytest.approx(math.sqrt(85 / 4), abs=1e-12)
    assert on["std_no_baseline"] == off["std"]
    # The printed 4.743 is quoted, not computed: no std of these rewards gives it.
    assert LECTURE_PRINTED_STD["no_baseline"] == 4.743
    assert abs(off["std"] - 4.743) > 0.5 and abs(off["std_population"] - 4.743) > 0.1
    # The lecture's b(s) is each state's mean reward.
    assert on["state_mean_baseline"] == on["weights"]


def test_two_state_pushes_and_unbiasedness():
    """Uniform π over two actions: ∇_logits log π(a1) = (1 − ½, −½) = (½, −½)."""
    off = two_state({"baseline": "off"})
    on = two_state({"baseline": "on"})
    # Sample (s1, a1) without a baseline: 11 · (½, −½).
    assert off["samples"][0]["push"] == [5.5, -5.5]
    # Sample (s2, a2) with b(s2) = 1: (2 − 1) · (−½, ½).
    assert on["samples"][3]["push"] == [-0.5, 0.5]
    # Expected push in s1 without baseline: ½·11·(½, −½) + ½·9·(−½, ½) = (0.5, −0.5);
    # in s2: ½·0·(½, −½) + ½·2·(−½, ½) = (−0.5, 0.5). The baseline leaves both unchanged.
    assert off["expected_push"] == [[0.5, -0.5], [-0.5, 0.5]]
    assert on["expected_push"] == off["expected_push"]
    # Any b(s) is unbiased, even a bad one.
    odd = two_state({"baseline": "on", "b": [-3.0, 7.5]})
    assert odd["expected_push"] == off["expected_push"]


def test_two_state_rejects_bad_rewards():
    with pytest.raises(ValueError, match="rewards"):
        two_state({"rewards": [[1, 2, 3]]})
    with pytest.raises(ValueError, match="rewards"):
        two_state({"rewards": [["a", 1], [0, 2]]})


# --- PPO clip ---------------------------------------------------------------------------


def test_clip_lecture_examples():
    # A = 0.5, r = 1.35, ε = 0.2: min(0.675, 0.5 · 1.2 = 0.6) = 0.6; the clip is active.
    one = clip_curve({"advantage": 0.5, "eps": 0.2, "ratio": 1.35})["probe"]
    assert one["objective"] == pytest.approx(0.6, abs=1e-12)
    assert one["unclipped"] == pytest.approx(0.675, abs=1e-12)
    assert one["clipped"] and one["gradient"] == 0.0
    # A = −0.5, r = 0.65: min(−0.325, −0.5 · 0.8 = −0.4) = −0.4.
    two = clip_curve({"advantage": -0.5, "eps": 0.2, "ratio": 0.65})["probe"]
    assert two["objective"] == pytest.approx(-0.4, abs=1e-12)
    assert two["clipped"] and two["gradient"] == 0.0
    # Inside the trust region the objective is A·r and its slope is A: 0.5 · 1.1 = 0.55.
    mid = clip_curve({"advantage": 0.5, "eps": 0.2, "ratio": 1.1})["probe"]
    assert mid["objective"] == pytest.approx(0.55, abs=1e-12)
    assert mid["gradient"] == pytest.approx(0.5, abs=1e-12) and not mid["clipped"]


@pytest.mark.parametrize("adv", [0.7, -0.3])
def test_clip_curve_matches_closed_form(adv):
    """A > 0: A·min(r, 1 + ε); A < 0: A·max(r, 1 − ε); slope A inside, 0 where clipped."""
    eps = 0.25
    out = clip_curve({"advantage": adv, "eps": eps, "points": 201})
    r = torch.tensor(out["ratio"], dtype=torch.float64)
    expected = adv * (torch.clamp(r, max=1 + eps) if adv > 0 else torch.clamp(r, min=1 - eps))
    torch.testing.assert_close(
        torch.tensor(out["objective"], dtype=torch.float64), expected, rtol=0, atol=1e-12
    )
    flat = (r > 1 + eps) if adv > 0 else (r < 1 - eps)
    assert out["clipped"] == flat.tolist()
    slope = torch.where(flat, torch.zeros_like(r), torch.full_like(r, adv))
    torch.testing.assert_close(
        torch.tensor(out["gradient"], dtype=torch.float64), slope, rtol=0, atol=1e-9
    )
    assert out["bounds"] == [1 - eps, 1 + eps]


def test_clip_rejects_bad_params():
    with pytest.raises(ValueError, match="eps"):
        clip_curve({"eps": 1.5})
    with pytest.raises(ValueError, match="advantage"):
        clip_curve({"advantage": "lots"})
    with pytest.raises(ValueError, match="r_max"):
        clip_curve({"r_min": 1.0, "r_max": 0.5})


# --- variance explorer -----------------------------------------------------------------


def _policy():
    features = var._features()
    theta = torch.tensor(var.THETA, dtype=torch.float64)
    return features, theta, torch.softmax(features @ theta, dim=0)


def test_true_gradient_is_autograd_of_expected_reward():
    out = var.variance_explorer({"n": 10, "p": 0.3})
    features, theta, probs = _policy()
    rewards = var._rewarded(probs, features, 0.3)
    leaf = theta.clone().requires_grad_(True)
    expected_reward = (torch.softmax(features @ leaf, dim=0) * rewards).sum()  # J(θ), enumerated
    expected_reward.backward()
    torch.testing.assert_close(
        torch.tensor(out["true_gradient"], dtype=torch.float64), leaf.grad, rtol=0, atol=1e-12
    )
    assert out["p_reward"] == pytest.approx(expected_reward.item(), abs=1e-12)


def test_reward_level_is_the_smallest_prefix_reaching_p():
    for level in (0.01, 0.2, 0.6):
        out = var.variance_explorer({"n": 5, "p": level})
        assert out["p_reward"] >= level
        features, _, probs = _policy()
        order = torch.argsort(
            features @ torch.tensor([1.0, 1.0], dtype=torch.float64), descending=True
        )
        k = out["rewarded_actions"]
        assert float(probs[order[: k - 1]].sum()) < level  # one fewer would not reach it


def test_each_dot_is_the_score_function_estimate():
    """Softmax of linear logits: ∇_θ log π(a) = φ(a) − Σ_b π(b) φ(b)."""
    out = var.variance_explorer({"n": 50, "p": 0.3, "baseline": "value", "seed": 3})
    features, _, probs = _policy()
    mean_feature = probs @ features  # (D,)
    gen = torch.Generator().manual_seed(3)
    actions = torch.multinomial(probs, 50, replacement=True, generator=gen)
    scores = features[actions] - mean_feature  # (N, D)
    r = torch.tensor(out["rewards"], dtype=torch.float64)
    torch.testing.assert_close(
        torch.tensor(out["none"]["dots"], dtype=torch.float64),
        r[:, None] * scores,
        rtol=0,
        atol=1e-12,
    )
    base = r - out["p_reward"]
    torch.testing.assert_close(
        torch.tensor(out["with_baseline"]["dots"], dtype=torch.float64),
        base[:, None] * scores,
        rtol=0,
        atol=1e-12,
    )


def test_baseline_lowers_variance_without_bias():
    out = var.variance_explorer({"n": 2000, "p": 0.2, "baseline": "value", "seed": 0})
    truth = torch.tensor(out["true_gradient"])
    for key in ("none", "with_baseline"):
        c = out[key]
        # Unbiased: the mean of 2000 estimates is within 4 standard errors of the truth.
        se = math.sqrt(c["exact_variance"] / 2000)
        assert float((torch.tensor(c["mean"]) - truth).norm()) < 4 * se
        # The sample variance estimates the enumerated one (2000 draws: within 15%).
        assert c["variance"] == pytest.approx(c["exact_variance"], rel=0.15)
    assert out["with_baseline"]["exact_variance"] < out["none"]["exact_variance"]


def test_mean_baseline_zero_when_no_reward_varies():
    # One rollout: its own mean is its reward, so the estimate is exactly 0.
    out = var.variance_explorer({"n": 1, "p": 0.5, "baseline": "mean"})
    assert out["with_baseline"]["dots"] == [[0.0, 0.0]]
    with pytest.raises(ValueError, match="baseline"):
        var.variance_explorer({"baseline": "median"})
    with pytest.raises(ValueError, match="n"):
        var.variance_explorer({"n": 0})
