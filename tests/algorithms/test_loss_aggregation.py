"""Loss aggregation (posttrain/algorithms/aggregation.py): hand values, CORR-4, GUARD-3, GUARD-8."""

from __future__ import annotations

import pytest
import torch

from posttrain.algorithms.advantages import advantages_group, gae, terminal_rewards
from posttrain.algorithms.aggregation import AGGREGATIONS, aggregate_loss, aggregation_normalizer
from posttrain.algorithms.kl import kl_k3
from posttrain.algorithms.losses import entropy_loss, policy_loss_clipped, value_loss

F64 = torch.float64
NAN, INF = float("nan"), float("inf")


def _hand_batch():
    loss = torch.tensor(
        [[1.0, 2.0, 3.0, 4.0], [5.0, NAN, INF, 0.0], [NAN, NAN, NAN, NAN]], dtype=F64
    )
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    return loss, mask


@pytest.mark.parametrize(
    ("mode", "constant", "normalizer", "value"),
    [
        # 5 real tokens summing to 15 → 3.
        ("token_mean", None, 5.0, 3.0),
        # token-means 2.5, 5 and (empty) 0 over 3 sequences → 7.5/3 = 2.5.
        ("seq_mean_token_mean", None, 3.0, 2.5),
        # token-sums 10, 5, 0 over 3 sequences → 5.
        ("seq_mean_token_sum", None, 3.0, 5.0),
        # Σ = 15 over 3 sequences × constant 10 → 0.5; default constant = T = 4 → 15/12.
        ("token_sum_norm", 10.0, 30.0, 0.5),
        ("token_sum_norm", None, 12.0, 1.25),
    ],
)
def test_modes_by_hand(mode, constant, normalizer, value):
    loss, mask = _hand_batch()
    n = aggregation_normalizer(mask, mode, constant)
    assert n == normalizer
    assert aggregate_loss(loss, mask, mode, n).item() == pytest.approx(value, abs=1e-15)


def test_unknown_mode_and_bad_normalizer_are_named():
    loss, mask = _hand_batch()
    with pytest.raises(ValueError, match="token_means"):
        aggregation_normalizer(mask, "token_means")
    with pytest.raises(ValueError, match="normalizer"):
        aggregate_loss(loss, mask, "token_mean", 0.0)


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
def test_guard8_only_empty_responses_give_zero_loss_and_grads(mode):
    logprobs = torch.full((4, 6), -1.0, dtype=F64, requires_grad=True)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    out = policy_loss_clipped(logprobs, logprobs.detach() + NAN, torch.ones(4, 6), mask=mask)
    n = aggregation_normalizer(mask, mode, 6.0)
    assert n >= 1.0
    loss = aggregate_loss(out.loss, mask, mode, n)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logprobs.grad, torch.zeros_like(logprobs))


# --- CORR-4: micro-batch invariance ---------------------------------------------------

LENGTHS = [1, 12, 3, 0, 7, 2, 12, 5]  # very different lengths, one empty response
B, T, D = 8, 12, 5


def _problem(dtype):
    """A tiny policy: per-token log-prob = logsigmoid(x_t · w), off-policy old log-probs."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(B, T, D, generator=g, dtype=dtype)
    w0 = torch.randn(D, generator=g, dtype=dtype) * 0.5
    old = torch.nn.functional.logsigmoid(x @ (w0 + 0.3 * torch.randn(D, generator=g, dtype=dtype)))
    mask = torch.arange(T).unsqueeze(0) < torch.tensor(LENGTHS).unsqueeze(1)
    adv = torch.randn(B, 1, generator=g, dtype=dtype).expand(B, T)
    return x, w0, old, adv, mask


def _grad(mode, split, dtype, normalizer_from_micro=False):
    x, w0, old, adv, mask = _problem(dtype)
    w = w0.clone().requires_grad_(True)
    n_full = aggregation_normalizer(mask, mode, constant=T)
    size = B // split
    for i in range(split):
        rows = slice(i * size, (i + 1) * size)
        lp = torch.nn.functional.logsigmoid(x[rows] @ w)  # (b, T)
        out = policy_loss_clipped(lp, old[rows], adv[rows], 0.2, 0.2, mask=mask[rows])
        per_token = out.loss + 0.1 * kl_k3(lp, old[rows], mask[rows])
        n = aggregation_normalizer(mask[rows], mode, T) if normalizer_from_micro else n_full
        (aggregate_loss(per_token, mask[rows], mode, n)).backward()
    return w.grad


@pytest.mark.parametrize("mode", sorted(AGGREGATIONS))
@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 1e-13), (torch.float32, 1e-6)])
def test_corr4_same_gradient_for_every_micro_batch_split(mode, dtype, atol):
    full = _grad(mode, 1, dtype)
    assert full.abs().max().item() > 1e-2  # a real gradient, not a trivial zero
    for split in (2, 8):  # 2×4 and 8×1 against 1×8
        torch.testing.assert_close(_grad(mode, split, dtype), full, rtol=0, atol=atol)


def test_corr4_would_catch_a_per_micro_batch_normaliser():
    """The setup is sensitive: normalising each micro-batch by its own token count (the
    classic accumulation bug) changes the gradient by far more than the tolerance."""
    full = _grad("token_mean", 1, torch.float64)
    wrong = _grad("token_mean", 8, torch.float64, normalizer_from_micro=True) / 8
    assert (wrong - full).abs().max().item() > 1e-3


# --- GUARD-3: NaN/inf in masked positions change nothing -------------------------------


def test_guard3_full_pipeline_with_poisoned_padding():
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    mask = mask.bool()
    g = torch.Generator().manual_seed(5)
    clean = {
        "lp": -torch.rand(4, 5, generator=g, dtype=F64),
        "old": -torch.rand(4, 5, generator=g, dtype=F64),
        "ref": -torch.rand(4, 5, generator=g, dtype=F64),
        "values": torch.rand(4, 5, generator=g, dtype=F64),
        "entropy": torch.rand(4, 5, generator=g, dtype=F64),
    }
    dirty = {k: torch.where(mask, v, torch.full_like(v, NAN)) for k, v in clean.items()}
    dirty["old"] = torch.where(mask, clean["old"], torch.full_like(clean["old"], INF))
    dirty["values"][0, 4] = -INF
    rewards = torch.tensor([[1.0, 0.0], [0.5, 1.0]], dtype=F64)  # 2 prompts × 2 samples

    def run(data):
        lp = data["lp"].clone().requires_grad_(True)
        values = data["values"].clone().requires_grad_(True)
        seq_adv = advantages_group(rewards).reshape(4, 1).expand(4, 5)
        token_r = terminal_rewards(rewards.reshape(4), mask) - 0.05 * kl_k3(lp, data["ref"], mask)
        gae_adv, returns = gae(token_r, values, mask, 1.0, 0.95)
        pol = policy_loss_clipped(lp, data["old"], seq_adv + gae_adv, 0.2, 0.2, mask=mask)
        total = (
            pol.loss
            + 0.5 * value_loss(values, data["values"], returns, 0.2, mask)
            + 0.01 * entropy_loss(data["entropy"], mask)
            + 0.04 * kl_k3(lp, data["ref"], mask)
        )
        results = []
        for mode in sorted(AGGREGATIONS):
            lp.grad, values.grad = None, None
            n = aggregation_normalizer(mask, mode, 5)
            loss = aggregate_loss(total, mask, mode, n)
            loss.backward(retain_graph=True)
            results.append((loss.detach(), lp.grad.clone(), values.grad.clone()))
        return results

    for (l1, g1, v1), (l2, g2, v2) in zip(run(clean), run(dirty), strict=True):
        assert torch.isfinite(l2) and torch.isfinite(g2).all() and torch.isfinite(v2).all()
        assert torch.equal(l1, l2) and torch.equal(g1, g2) and torch.equal(v1, v2)
