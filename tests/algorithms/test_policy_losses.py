"""Policy, value and entropy losses (posttrain/algorithms/losses.py)."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.algorithms.losses import (
    POLICY_LOSSES,
    entropy_loss,
    policy_loss_clipped,
    policy_loss_naive,
    policy_loss_unclipped,
    value_loss,
)
from posttrain.algorithms.masked import masked_mean, token_logprobs

F64 = torch.float64
NAN, INF = float("nan"), float("inf")


def _leaf(values) -> torch.Tensor:
    return torch.tensor(values, dtype=F64).requires_grad_(True)


def test_ppo_clip_worked_examples():
    """ε = 0.2. A = +0.5, r = 1.35: min(0.675, 1.2·0.5 = 0.6) = 0.6, clip active, no gradient.
    A = −0.5, r = 0.65: min(−0.325, 0.8·−0.5 = −0.4) = −0.4, clip active, no gradient.
    A = +0.5, r = 0.9: min(0.45, 0.45) = 0.45, inside the clip: d(−A·r)/d logπ = −A·r = −0.45."""
    ratios = torch.tensor([[1.35, 0.65, 0.9]], dtype=F64)
    old = torch.zeros(1, 3, dtype=F64)
    logprobs = ratios.log().requires_grad_(True)
    adv = torch.tensor([[0.5, -0.5, 0.5]], dtype=F64)
    out = policy_loss_clipped(logprobs, old, adv, 0.2, 0.2)
    torch.testing.assert_close(out.loss, -torch.tensor([[0.6, -0.4, 0.45]], dtype=F64))
    assert out.clipped.tolist() == [[True, True, False]]
    torch.testing.assert_close(out.ratio, ratios, rtol=0, atol=1e-15)
    out.loss.sum().backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, 0.0, -0.45]], dtype=F64))


def test_clip_higher_is_asymmetric():
    # ε_low = 0.2, ε_high = 0.28, A = 1: r = 1.25 is inside (objective 1.25), r = 1.3 clips to
    # 1.28; A = −1: r = 0.85 is inside (−0.85), r = 0.7 clips to 0.8 (objective −0.8).
    ratios = torch.tensor([[1.25, 1.3, 0.85, 0.7]], dtype=F64)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=F64)
    out = policy_loss_clipped(ratios.log(), torch.zeros(1, 4, dtype=F64), adv, 0.2, 0.28)
    torch.testing.assert_close(out.loss, torch.tensor([[-1.25, -1.28, 0.85, 0.8]], dtype=F64))
    assert out.clipped.tolist() == [[False, True, False, True]]
    with pytest.raises(ValueError, match="clip_eps_low"):
        policy_loss_clipped(ratios.log(), ratios.log(), adv, 1.0, 0.2)


def test_on_policy_ratio_one_and_all_gradients_equal_reinforce():
    g = torch.Generator().manual_seed(0)
    lp_values = -torch.rand(3, 5, generator=g, dtype=F64) * 3
    adv = torch.randn(3, 5, generator=g, dtype=F64)
    grads = {}
    for name, fn in POLICY_LOSSES.items():
        lp = lp_values.clone().requires_grad_(True)
        out = fn(lp, lp.detach(), adv, 0.2, 0.2)
        assert torch.equal(out.ratio, torch.ones_like(lp_values)), name
        assert not out.clipped.any(), name
        out.loss.sum().backward()
        grads[name] = lp.grad
    # d(−A·logπ)/d logπ = −A; d(−A·r)/d logπ = −A·r = −A at r = 1.
    for name, grad in grads.items():
        torch.testing.assert_close(grad, -adv, rtol=0, atol=1e-15, msg=name)


def test_off_policy_ratio_is_exp_of_logprob_difference():
    # π = 0.3, π_old = 0.6 at the sampled token: ratio = 0.5 exactly.
    lp = _leaf([[math.log(0.3)]])
    old = torch.tensor([[math.log(0.6)]], dtype=F64)
    adv = torch.tensor([[2.0]], dtype=F64)
    out = policy_loss_unclipped(lp, old, adv, 0.2, 0.2)
    assert out.ratio.item() == pytest.approx(0.5, abs=1e-15)
    assert out.loss.item() == pytest.approx(-1.0, abs=1e-15)  # −A·r
    out.loss.backward()
    assert lp.grad.item() == pytest.approx(-1.0, abs=1e-15)  # d(−A·e^{lp−old})/dlp = −A·r
    # What the classic mistakes would give instead, so the assertions above can fail:
    assert abs(math.log(0.3) / math.log(0.6) - 0.5) > 1.0  # a ratio of log-probs
    assert abs(math.exp(0.3 - 0.6) - 0.5) > 0.2  # probabilities passed as "log-probs"
    # naive ignores the ratio in its loss but still reports it.
    naive = policy_loss_naive(lp, old, adv, 0.2, 0.2)
    assert naive.ratio.item() == pytest.approx(0.5, abs=1e-15)
    assert naive.loss.item() == pytest.approx(-2.0 * math.log(0.3), abs=1e-15)


def test_old_logprobs_and_advantages_are_detached():
    w = torch.tensor(0.3, dtype=F64, requires_grad=True)
    lp = (w * torch.ones(1, 2, dtype=F64)).log()
    # Same expression for old_logprobs, still attached to w: the loss must treat it as constant.
    out = policy_loss_unclipped(lp, lp, torch.ones(1, 2, dtype=F64), 0.2, 0.2)
    out.loss.sum().backward()
    # d/dw of −Σ exp(log w − const) = −2/w at r = 1.
    assert w.grad.item() == pytest.approx(-2 / 0.3, abs=1e-12)


def test_masked_positions_cannot_poison_losses():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    clean = {
        "lp": torch.tensor([[-1.0, -0.5, 0.0], [-2.0, 0.0, 0.0]], dtype=F64),
        "old": torch.tensor([[-1.1, -0.4, 0.0], [-1.5, 0.0, 0.0]], dtype=F64),
        "adv": torch.tensor([[1.0, -1.0, 0.0], [0.5, 0.0, 0.0]], dtype=F64),
    }
    dirty = {k: v.clone() for k, v in clean.items()}
    dirty["lp"][0, 2], dirty["lp"][1, 1], dirty["lp"][1, 2] = NAN, INF, -INF
    dirty["old"][0, 2], dirty["old"][1, 1] = INF, NAN
    dirty["adv"][0, 2], dirty["adv"][1, 2] = NAN, INF
    for name, fn in POLICY_LOSSES.items():
        results = []
        for data in (clean, dirty):
            lp = data["lp"].clone().requires_grad_(True)
            out = fn(lp, data["old"], data["adv"], 0.2, 0.2, mask=mask)
            masked_mean(out.loss, mask).backward()
            results.append((out.loss.detach(), lp.grad, out.ratio, out.clipped))
        for a, b in zip(*results, strict=True):
            assert torch.equal(a, b), name
        assert results[1][1][~mask].abs().sum().item() == 0.0


def test_value_loss_by_hand():
    v = _leaf([[1.0, 0.5]])
    old = torch.tensor([[0.5, 0.0]], dtype=F64)
    ret = torch.tensor([[0.5, 1.0]], dtype=F64)
    # unclipped: ½(1 − 0.5)² = 0.125, ½(0.5 − 1)² = 0.125.
    assert value_loss(v, old, ret, None).tolist() == [[0.125, 0.125]]
    # clipped ε = 0.2: token 0: V_clip = 0.7, max(0.25, 0.04) → 0.125 with gradient V − R = 0.5;
    # token 1: V_clip = 0.2, max(0.25, 0.64) → 0.32, gradient 0 (the clamp is saturated).
    out = value_loss(v, old, ret, 0.2)
    torch.testing.assert_close(out, torch.tensor([[0.125, 0.32]], dtype=F64), rtol=0, atol=1e-15)
    out.sum().backward()
    torch.testing.assert_close(v.grad, torch.tensor([[0.5, 0.0]], dtype=F64), rtol=0, atol=1e-15)


def test_value_loss_mask_and_entropy_loss():
    mask = torch.tensor([[True, False]])
    v = _leaf([[1.0, NAN]])
    old = torch.tensor([[INF, INF]], dtype=F64)
    out = value_loss(v, old, torch.tensor([[0.0, NAN]], dtype=F64), 0.2, mask)
    # Only masked positions are cleaned: an inf old value at a real token is a real error and
    # must show (V_clip = inf + clip(−inf) = inf), while the masked token gives exactly 0.
    assert math.isinf(out[0, 0].item())
    assert out[0, 1].item() == 0.0
    clean = value_loss(v, torch.zeros(1, 2, dtype=F64), torch.zeros(1, 2, dtype=F64), None, mask)
    clean.sum().backward()
    assert clean.tolist() == [[0.5, 0.0]] and v.grad.tolist() == [[1.0, 0.0]]
    ent = torch.tensor([[0.7, NAN]], dtype=F64)
    assert entropy_loss(ent, mask).tolist() == [[-0.7, 0.0]]
    assert entropy_loss(torch.tensor([[0.7]])).tolist() == [[pytest.approx(-0.7)]]


def test_guard12_recomputed_logprobs_in_any_micro_batch_size_give_ratio_one():
    """K = 1: old log-probs recomputed in micro-batches of 1, 3 and 8 equal the training
    forward pass's, so ratio − 1 and the clip fraction are 0 (float32, 1e-6)."""
    torch.manual_seed(0)
    vocab, dim, B, T = 11, 8, 8, 6
    emb = torch.nn.Embedding(vocab, dim)
    head = torch.nn.Linear(dim, vocab)
    tokens = torch.randint(0, vocab, (B, T + 1))
    mask = torch.arange(T).unsqueeze(0) < torch.tensor([6, 1, 3, 6, 2, 5, 4, 6]).unsqueeze(1)
    adv = torch.randn(B, 1).expand(B, T)

    def logprobs_of(rows: slice) -> torch.Tensor:
        logits = head(torch.tanh(emb(tokens[rows, :-1])))  # (b, T, V)
        return token_logprobs(logits, tokens[rows, 1:], temperature=0.7)

    for micro in (1, 3, 8):
        with torch.no_grad():
            old = torch.cat([logprobs_of(slice(i, i + micro)) for i in range(0, B, micro)])
        for start in range(0, B, 4):  # training micro-batches of 4
            rows = slice(start, start + 4)
            out = policy_loss_clipped(logprobs_of(rows), old[rows], adv[rows], 0.2, 0.2)
            assert (out.ratio - 1).abs().max().item() <= 1e-6
            assert masked_mean(out.clipped.float(), mask[rows]).item() == 0.0
