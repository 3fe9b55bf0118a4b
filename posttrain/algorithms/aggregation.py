"""Loss aggregation: the one place where per-token losses (B, T) become a scalar.

Shape legend: B sequences in the mini-batch (the optimizer step), b sequences in one
micro-batch, T response tokens.

Every mode is "a sum over the micro-batch, divided by one normaliser computed once from the
whole mini-batch". That is what makes gradient accumulation exact (CORR-4): summing
``aggregate_loss`` over micro-batches gives the full-batch loss, whatever the split, because
the normaliser never depends on which sequences share a micro-batch.

Modes (``AGGREGATIONS``):
  token_mean           Σ loss over all real tokens / #real tokens of the mini-batch
                       (PPO practice, DAPO). Long responses weigh more.
  seq_mean_token_mean  mean over sequences of each sequence's token-mean (GRPO paper).
                       Each sequence weighs the same; its tokens weigh 1/length.
  seq_mean_token_sum   mean over sequences of each sequence's token-sum (the REINFORCE
                       estimator: −A·Σ_t log π per sequence).
  token_sum_norm       Σ loss / (#sequences × constant), constant = max response length
                       (Dr. GRPO): no length-dependent weight at all.
"#sequences" counts every row of the mini-batch, empty responses included (they add 0
loss): the normaliser must not depend on response lengths. Every normaliser is clamped
≥ 1, so a mini-batch of only empty responses gives loss 0 and zero gradient (GUARD-8).

Data parallel: compute the normaliser over the global batch (all ranks) and multiply by
the world size, because DDP averages gradients over ranks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor

from posttrain.algorithms.masked import as_bool_mask, masked_sum


def _tokens(mask: Tensor, constant: float | None) -> float:
    return float(as_bool_mask(mask).sum().item())


def _sequences(mask: Tensor, constant: float | None) -> float:
    return float(mask.shape[0])


def _sequences_times_constant(mask: Tensor, constant: float | None) -> float:
    length = float(mask.shape[-1]) if constant is None else float(constant)
    if not length > 0:
        raise ValueError(f"token_sum_norm: constant must be > 0, got {constant}")
    return float(mask.shape[0]) * length


def _sum_of_tokens(loss: Tensor, mask: Tensor) -> Tensor:
    return masked_sum(loss, mask)


def _sum_of_token_means(loss: Tensor, mask: Tensor) -> Tensor:
    m = as_bool_mask(mask)
    per_seq = masked_sum(loss, m, dim=-1)  # (b,)
    lengths = m.sum(dim=-1).to(per_seq.dtype).clamp_min(1)  # (b,); empty rows add 0
    return (per_seq / lengths).sum()


@dataclass(frozen=True)
class Aggregation:
    """One aggregation mode: numerator over a micro-batch, normaliser over the mini-batch."""

    numerator: Callable[[Tensor, Tensor], Tensor]
    """(loss (b, T), mask (b, T)) → scalar: the micro-batch's summed contribution."""
    normalizer: Callable[[Tensor, float | None], float]
    """(mask (B, T) of the whole mini-batch, constant) → the divisor, before the ≥ 1 clamp."""


AGGREGATIONS: dict[str, Aggregation] = {
    "token_mean": Aggregation(_sum_of_tokens, _tokens),
    "seq_mean_token_mean": Aggregation(_sum_of_token_means, _sequences),
    "seq_mean_token_sum": Aggregation(_sum_of_tokens, _sequences),
    "token_sum_norm": Aggregation(_sum_of_tokens, _sequences_times_constant),
}


def _lookup(mode: str) -> Aggregation:
    try:
        return AGGREGATIONS[mode]
    except KeyError:
        raise ValueError(
            f"unknown loss aggregation {mode!r}; choose one of {sorted(AGGREGATIONS)}"
        ) from None


def aggregation_normalizer(mask: Tensor, mode: str, constant: float | None = None) -> float:
    """The global normaliser for ``mode``, computed once from the whole mini-batch's mask.

    Args:
        mask: (B, T) response mask of the whole mini-batch (all micro-batches).
        mode: a key of :data:`AGGREGATIONS`.
        constant: only for "token_sum_norm": the fixed length (pass ``max_new_tokens``);
            None uses T, the padded width of ``mask``. Ignored by the other modes.
    Returns:
        a float ≥ 1.
    """
    if mask.dim() != 2:
        raise ValueError(f"aggregation_normalizer: mask must be (B, T), got {tuple(mask.shape)}")
    return max(_lookup(mode).normalizer(mask, constant), 1.0)


def aggregate_loss(loss: Tensor, mask: Tensor, mode: str, normalizer: float) -> Tensor:
    """One micro-batch's share of the aggregated loss (a scalar).

    Σ over micro-batches of ``aggregate_loss(loss_i, mask_i, mode, N)`` equals the full
    mini-batch's aggregate, with ``N = aggregation_normalizer(full_mask, mode)``.

    Args:
        loss: (b, T) per-token loss; NaN/inf at masked positions are ignored.
        mask: (b, T).
        mode: a key of :data:`AGGREGATIONS`.
        normalizer: from :func:`aggregation_normalizer` on the whole mini-batch.
    """
    if loss.shape != mask.shape or loss.dim() != 2:
        raise ValueError(
            f"aggregate_loss: loss {tuple(loss.shape)} and mask {tuple(mask.shape)} must be "
            "the same (b, T)"
        )
    if not (normalizer >= 1 and math.isfinite(normalizer)):
        raise ValueError(f"aggregate_loss: normalizer must be finite and >= 1, got {normalizer}")
    return _lookup(mode).numerator(loss, mask) / normalizer
