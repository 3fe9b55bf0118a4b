"""Masked reductions and log-probabilities of chosen tokens.

Shape legend: B batch, T response tokens, L full sequence length (prompt + response),
V vocabulary. A mask is bool (or 0/1) and True marks a real token.

Every masked reduction selects with ``torch.where`` before any arithmetic, never
``x * mask``: a NaN or inf in a masked position would survive a multiply (0 * nan = nan)
and would poison the gradient even when the forward value looks right (GUARD-3).
"""

from __future__ import annotations

import torch
from torch import Tensor

Dim = int | tuple[int, ...] | None


def as_bool_mask(mask: Tensor) -> Tensor:
    """Return ``mask`` as a bool tensor (True = real token); 0/1 float or int masks accepted."""
    return mask if mask.dtype == torch.bool else mask != 0


def _select(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Broadcast ``mask`` to ``x`` and zero the masked entries. Returns (kept, mask)."""
    m = as_bool_mask(mask)
    m = torch.broadcast_to(m, torch.broadcast_shapes(m.shape, x.shape))
    kept = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return kept, m


def masked_sum(x: Tensor, mask: Tensor, dim: Dim = None) -> Tensor:
    """Sum of ``x`` over real positions, over ``dim`` (or everything when ``dim`` is None).

    Args:
        x: any shape, e.g. (B, T).
        mask: broadcastable to ``x``; True = keep.
        dim: dimension(s) to reduce; None reduces all to a scalar.
    Returns:
        ``x`` summed where ``mask`` is True; masked entries (even NaN/inf) contribute 0.
    """
    kept, _ = _select(x, mask)
    return kept.sum() if dim is None else kept.sum(dim=dim)


def masked_mean(x: Tensor, mask: Tensor, dim: Dim = None) -> Tensor:
    """Mean of ``x`` over real positions; an all-masked slice gives 0, not NaN.

    Args:
        x: any shape, e.g. (B, T).
        mask: broadcastable to ``x``.
        dim: dimension(s) to average over; None averages over the whole tensor (batch).
    Returns:
        masked_sum / max(#real, 1).
    """
    kept, m = _select(x, mask)
    if dim is None:
        total, count = kept.sum(), m.sum()
    else:
        total, count = kept.sum(dim=dim), m.sum(dim=dim)
    # The clamp only matters when nothing is real: then the sum is 0 and so is the mean.
    return total / count.to(kept.dtype).clamp_min(1)


def masked_normalize(x: Tensor, mask: Tensor, constant: float, dim: Dim = None) -> Tensor:
    """Masked sum divided by a fixed ``constant`` (Dr. GRPO's length-independent normaliser).

    Unlike :func:`masked_mean` the divisor does not depend on how many tokens are real, so
    long and short responses weigh each token the same.
    """
    if not constant > 0:
        raise ValueError(f"masked_normalize: constant must be > 0, got {constant}")
    return masked_sum(x, mask, dim=dim) / constant


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Whiten ``x`` with the mean and unbiased variance of its real entries.

    Args:
        x: any shape, e.g. advantages (B, T).
        mask: broadcastable to ``x``.
        shift_mean: if False the mean is added back (only the scale changes).
        eps: added to the variance before the square root.
    Returns:
        same shape as ``x``; masked positions are 0.
    """
    kept, m = _select(x, mask)
    n = m.sum().to(kept.dtype)
    mean = kept.sum() / n.clamp_min(1)
    centred = torch.where(m, kept - mean, torch.zeros((), dtype=kept.dtype, device=kept.device))
    var = centred.square().sum() / (n - 1).clamp_min(1)
    out = centred * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(m, out, torch.zeros((), dtype=out.dtype, device=out.device))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """bf16/fp16 logits are upcast to float32; float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-probability of each given token under ``softmax(logits / temperature)``.

    Already aligned: ``logits[:, t]`` scores ``tokens[:, t]``. Computed as the gathered
    logit minus the logsumexp, in float32 or wider, without building the full log-softmax.

    Args:
        logits: (B, T, V).
        tokens: (B, T) token ids.
        temperature: the sampling temperature (CORR-3: use the one the sampler used).
    Returns:
        logprobs (B, T), float32 (float64 if the logits are float64).
    """
    if logits.shape[:-1] != tokens.shape:
        raise ValueError(
            f"token_logprobs: logits {tuple(logits.shape)} must be tokens {tuple(tokens.shape)}"
            " plus a vocabulary dimension"
        )
    _check_temperature(temperature)
    z = logits.to(_compute_dtype(logits.dtype))
    if temperature != 1.0:
        z = z / temperature
    picked = z.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(z, dim=-1)


def shifted_token_logprobs(logits: Tensor, input_ids: Tensor, temperature: float = 1.0) -> Tensor:
    """Log-probs of tokens 1..L-1 of ``input_ids`` from a causal LM's logits.

    Position t of the logits predicts token t+1, so ``out[:, t] =
    log_softmax(logits[:, t] / temperature)[input_ids[:, t + 1]]``. The first response token
    is therefore scored by the last prompt position (CORR-1).

    Args:
        logits: (B, L, V) from a forward pass over ``input_ids``.
        input_ids: (B, L).
    Returns:
        (B, L - 1).
    """
    if logits.dim() != 3 or logits.shape[:2] != input_ids.shape:
        raise ValueError(
            f"shifted_token_logprobs: logits {tuple(logits.shape)} must be (B, L, V) with "
            f"(B, L) = input_ids {tuple(input_ids.shape)}"
        )
    return token_logprobs(logits[:, :-1], input_ids[:, 1:], temperature)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Entropy of ``softmax(logits / temperature)`` over the last dimension.

    H = logsumexp(z) − Σ p·z, evaluated after subtracting the row maximum (H is
    shift-invariant) so huge logits do not cancel catastrophically; −inf logits (banned
    tokens) contribute exactly 0 with a finite gradient, never log(0). A row whose logits
    are all −inf has no distribution and gives NaN.

    Args:
        logits: (..., V).
    Returns:
        (...), float32 or wider.
    """
    _check_temperature(temperature)
    z = logits.to(_compute_dtype(logits.dtype))
    if temperature != 1.0:
        z = z / temperature
    z = z - z.amax(dim=-1, keepdim=True).detach()  # max entry is 0; others <= 0
    p = torch.softmax(z, dim=-1)
    # p is exactly 0 where z is -inf; replacing z there keeps 0 * -inf (= nan) out of both
    # the forward and the backward pass.
    z_finite = torch.where(torch.isneginf(z), torch.zeros((), dtype=z.dtype, device=z.device), z)
    return torch.logsumexp(z, dim=-1) - (p * z_finite).sum(dim=-1)
