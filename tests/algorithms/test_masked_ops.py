"""Masked reductions, token log-probs and entropy (posttrain/algorithms/masked.py)."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.algorithms.masked import (
    entropy_from_logits,
    masked_mean,
    masked_normalize,
    masked_sum,
    masked_whiten,
    shifted_token_logprobs,
    token_logprobs,
)

NAN, INF = float("nan"), float("inf")


def _x_and_mask():
    x = torch.tensor([[1.0, 2.0, NAN], [4.0, INF, -INF]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    return x, mask


def test_masked_sum_and_mean_by_hand_ignore_nan_and_inf():
    x, mask = _x_and_mask()
    # real entries: row 0 → 1 + 2 = 3, row 1 → 4; all: 7 over 3 tokens.
    assert masked_sum(x, mask).item() == 7.0
    assert masked_sum(x, mask, dim=1).tolist() == [3.0, 4.0]
    assert masked_sum(x, mask, dim=0).tolist() == [5.0, 2.0, 0.0]
    assert masked_mean(x, mask).item() == pytest.approx(7.0 / 3.0, abs=1e-15)
    assert masked_mean(x, mask, dim=1).tolist() == [1.5, 4.0]
    # column 2 has no real entry: mean 0, not NaN.
    assert masked_mean(x, mask, dim=0).tolist() == [2.5, 2.0, 0.0]


def test_float_mask_and_broadcast_mask():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert masked_sum(x, torch.tensor([[1.0, 0.0], [0.0, 1.0]])).item() == 5.0
    # a (1, 2) mask broadcasts over rows: keeps column 0 → 1 + 3 = 4 over 2 entries.
    assert masked_mean(x, torch.tensor([[True, False]])).item() == 2.0


def test_all_masked_mean_is_zero_with_zero_grad():
    x = torch.tensor([[NAN, 3.0]], requires_grad=True)
    out = masked_mean(x, torch.zeros(1, 2, dtype=torch.bool))
    out.backward()
    assert out.item() == 0.0
    assert x.grad.tolist() == [[0.0, 0.0]]


def test_masked_gradient_is_zero_at_nan_positions():
    x, mask = _x_and_mask()
    x.requires_grad_(True)
    masked_mean(x, mask).backward()
    # d/dx of (x00 + x01 + x10)/3 is 1/3 there, exactly 0 elsewhere (no NaN leaks).
    third = 1.0 / 3.0
    assert torch.equal(
        x.grad, torch.tensor([[third, third, 0.0], [third, 0.0, 0.0]], dtype=torch.float64)
    )


def test_masked_normalize_divides_by_constant_not_count():
    x, mask = _x_and_mask()
    assert masked_normalize(x, mask, constant=10.0).item() == pytest.approx(0.7, abs=1e-15)
    assert masked_normalize(x, mask, 4.0, dim=1).tolist() == [0.75, 1.0]
    with pytest.raises(ValueError, match="constant"):
        masked_normalize(x, mask, 0.0)


def test_masked_whiten_by_hand():
    x = torch.tensor([[1.0, 3.0, NAN], [5.0, 99.0, 7.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 1]], dtype=torch.bool)
    # real: 1, 3, 5, 7 → mean 4, unbiased var (9 + 1 + 1 + 9)/3 = 20/3.
    s = math.sqrt(20.0 / 3.0 + 1e-8)
    out = masked_whiten(x, mask)
    expected = torch.tensor([[-3 / s, -1 / s, 0.0], [1 / s, 0.0, 3 / s]], dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-14)
    kept_mean = masked_whiten(x, mask, shift_mean=False)
    expected_kept = torch.where(mask, expected + 4.0, torch.zeros(()))
    torch.testing.assert_close(kept_mean, expected_kept.to(torch.float64), rtol=0, atol=1e-14)


def test_token_logprobs_against_log_softmax_and_float32_upcast():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, generator=g, dtype=torch.float64) * 3
    tokens = torch.randint(0, 5, (2, 3), generator=g)
    ref = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, tokens), ref, rtol=0, atol=1e-14)
    # temperature divides the logits before the softmax.
    ref_t = torch.log_softmax(logits / 0.7, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, tokens, 0.7), ref_t, rtol=0, atol=1e-14)
    out16 = token_logprobs(logits.to(torch.bfloat16), tokens)
    assert out16.dtype == torch.float32
    with pytest.raises(ValueError, match="tokens"):
        token_logprobs(logits, tokens[:, :2])
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(logits, tokens, temperature=0.0)


def test_shifted_logprobs_position_t_scores_token_t_plus_1():
    # A lookup-table "model": logits[:, t] puts probability 1/2 on token (t + 1) % 4 and
    # 1/6 on each other token, so the right alignment gives log(1/2) everywhere.
    L, V = 5, 4
    probs = torch.full((1, L, V), 1.0 / 6.0, dtype=torch.float64)
    for t in range(L):
        probs[0, t, (t + 1) % V] = 0.5
    logits = probs.log()
    input_ids = torch.tensor([[3, 1, 2, 3, 0]])  # token t+1 = (t + 1) % 4 for t = 0..3
    out = shifted_token_logprobs(logits, input_ids)
    assert out.shape == (1, L - 1)
    torch.testing.assert_close(out, torch.full((1, 4), math.log(0.5), dtype=torch.float64))
    # The unshifted (wrong) alignment scores token t with logits t: log(1/6) at t = 1..3.
    wrong = token_logprobs(logits[:, 1:], input_ids[:, 1:])
    assert torch.all(wrong < math.log(0.5) - 1.0)


def test_entropy_uniform_and_reference():
    assert entropy_from_logits(torch.zeros(3, 8)).tolist() == pytest.approx([math.log(8)] * 3)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, generator=g, dtype=torch.float64)
    p = torch.softmax(logits, -1)
    ref = -(p * p.log()).sum(-1)
    torch.testing.assert_close(entropy_from_logits(logits), ref, rtol=0, atol=1e-14)
    ref_t = entropy_from_logits(logits / 2.0)
    torch.testing.assert_close(entropy_from_logits(logits, 2.0), ref_t, rtol=0, atol=1e-14)


def test_entropy_stable_for_huge_and_neg_inf_logits():
    logits = torch.tensor([[1e4, 0.0, -1e4], [0.0, 0.0, -INF], [5.0, -INF, -INF]])
    logits.requires_grad_(True)
    h = entropy_from_logits(logits)
    # row 0: essentially one-hot → 0; row 1: two equal tokens → log 2; row 2: one token → 0.
    torch.testing.assert_close(h.detach(), torch.tensor([0.0, math.log(2), 0.0]), atol=1e-6, rtol=0)
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()
