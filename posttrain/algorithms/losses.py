"""Per-token policy losses, the value loss and the entropy bonus.

Shape legend: B batch (sequences), T response tokens.

Every loss returns per-token values (B, T); reduction happens only in
:mod:`posttrain.algorithms.aggregation`. Sign convention: we *minimise*, so a loss is
the negative of the objective the lecture maximises.

``mask`` (optional, (B, T), True = real token): when given, masked positions are replaced
*before* the arithmetic, so NaN/inf there cannot leak into the gradient (GUARD-3: with
``where`` only at the final reduction, d(−A·ratio)/d logπ = −A·ratio would still be
0·nan = nan at a masked token), and the loss there is exactly 0.

``old_logprobs``, ``advantages``, ``returns`` and ``old_values`` are targets: they are
detached here, so a caller who forgot ``torch.no_grad()`` still gets the right gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from posttrain.algorithms.masked import as_bool_mask


@dataclass
class PolicyLossOutput:
    """Result of a policy loss."""

    loss: Tensor
    """(B, T) per-token loss to minimise; 0 at masked positions."""
    ratio: Tensor
    """(B, T) importance ratio exp(logπ − logπ_old), detached; 1 at masked positions."""
    clipped: Tensor
    """(B, T) bool: the clip is active (zero gradient through the ratio). Its masked mean is
    ``policy/clipfrac``. Always False for the unclipped losses."""


def _same_shape(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"shape mismatch: {shapes}")


def _clean(x: Tensor, m: Tensor | None, fill: float = 0.0) -> Tensor:
    """``x`` with masked positions replaced by ``fill`` (no-op without a mask)."""
    if m is None:
        return x
    return torch.where(m, x, torch.full((), fill, dtype=x.dtype, device=x.device))


def _prepare(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    _same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages)
    m = None if mask is None else as_bool_mask(mask).expand_as(logprobs)
    lp = _clean(logprobs, m)
    old = _clean(old_logprobs.detach(), m)  # 0 − 0: ratio exactly 1 at masked positions
    adv = _clean(advantages.detach(), m)
    return lp, old, adv, m


def _output(loss: Tensor, ratio: Tensor, clipped: Tensor, m: Tensor | None) -> PolicyLossOutput:
    return PolicyLossOutput(loss=_clean(loss, m), ratio=ratio.detach(), clipped=clipped)


def policy_loss_naive(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    mask: Tensor | None = None,
) -> PolicyLossOutput:
    """REINFORCE: −A·logπ(a_t|s_t) per token (the lecture's "naive" loss).

    Its gradient is the on-policy score-function estimator; it ignores ``old_logprobs``
    (only reported through the ratio) and the clip arguments, so reusing a batch for a
    second epoch is *not* corrected. Args are (B, T); see the module docstring for ``mask``.
    """
    lp, old, adv, m = _prepare(logprobs, old_logprobs, advantages, mask)
    ratio = torch.exp(lp - old)
    return _output(-adv * lp, ratio, torch.zeros_like(lp, dtype=torch.bool), m)


def policy_loss_unclipped(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    mask: Tensor | None = None,
) -> PolicyLossOutput:
    """Importance-sampled surrogate: −A·r_t with r_t = exp(logπ − logπ_old).

    On-policy (r = 1) its gradient equals :func:`policy_loss_naive`'s; off-policy it
    reweights by r, unbounded. Clip arguments are ignored.
    """
    lp, old, adv, m = _prepare(logprobs, old_logprobs, advantages, mask)
    ratio = torch.exp(lp - old)
    return _output(-adv * ratio, ratio, torch.zeros_like(lp, dtype=torch.bool), m)


def policy_loss_clipped(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    clip_eps_low: float = 0.2,
    clip_eps_high: float = 0.2,
    mask: Tensor | None = None,
) -> PolicyLossOutput:
    """PPO clip (Schulman et al. 2017): −min(A·r, A·clip(r, 1 − ε_low, 1 + ε_high)).

    Worked example (ε = 0.2): A = +0.5, r = 1.35 → objective min(0.675, 0.6) = 0.6 and no
    gradient through r; A = −0.5, r = 0.65 → min(−0.325, −0.4) = −0.4. ε is usually 0.1 to
    0.3 (0.2 in PPO; the CS336 code uses 0.01); a larger ε_high ("clip-higher") lets
    unlikely good tokens grow faster.
    """
    if not (0.0 <= clip_eps_low < 1.0 and clip_eps_high >= 0.0):
        raise ValueError(
            f"policy_loss_clipped: need 0 <= clip_eps_low < 1 and clip_eps_high >= 0, got "
            f"clip_eps_low={clip_eps_low}, clip_eps_high={clip_eps_high}"
        )
    lp, old, adv, m = _prepare(logprobs, old_logprobs, advantages, mask)
    ratio = torch.exp(lp - old)
    surrogate = adv * ratio
    clipped_surrogate = adv * ratio.clamp(1.0 - clip_eps_low, 1.0 + clip_eps_high)
    loss = -torch.minimum(surrogate, clipped_surrogate)
    # Active clip = the min picked the flat branch: the gradient through r is zero there.
    clipped = ((adv > 0) & (ratio > 1.0 + clip_eps_high)) | (
        (adv < 0) & (ratio < 1.0 - clip_eps_low)
    )
    if m is not None:
        clipped = clipped & m
    return _output(loss, ratio, clipped, m)


PolicyLoss = Callable[..., PolicyLossOutput]

POLICY_LOSSES: dict[str, PolicyLoss] = {
    "naive": policy_loss_naive,
    "unclipped": policy_loss_unclipped,
    "clipped": policy_loss_clipped,
}
"""All take (logprobs, old_logprobs, advantages, clip_eps_low, clip_eps_high, mask=None)."""


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    clip_eps: float | None,
    mask: Tensor | None = None,
) -> Tensor:
    """Critic regression loss per token, (B, T).

    ``clip_eps`` None: ½(V − R)². Otherwise PPO's clipped form
    ½·max((V − R)², (V_old + clip(V − V_old, −ε, ε) − R)²), which keeps the critic from
    moving further than ε from the values it had at rollout time. Note ε is in reward
    units, unlike the policy clip.
    """
    _same_shape(values=values, old_values=old_values, returns=returns)
    m = None if mask is None else as_bool_mask(mask).expand_as(values)
    v = _clean(values, m)
    old = _clean(old_values.detach(), m)
    ret = _clean(returns.detach(), m)
    err = (v - ret).square()
    if clip_eps is None:
        return _clean(0.5 * err, m)
    if not clip_eps > 0:
        raise ValueError(f"value_loss: clip_eps must be > 0 or None, got {clip_eps}")
    v_clipped = old + (v - old).clamp(-clip_eps, clip_eps)
    return _clean(0.5 * torch.maximum(err, (v_clipped - ret).square()), m)


def entropy_loss(entropy: Tensor, mask: Tensor | None = None) -> Tensor:
    """−entropy per token (B, T): minimising ``coef · entropy_loss`` raises the entropy.

    Aggregate it with the same mode as the policy loss, so the bonus is not scaled
    differently from the term it regularises.
    """
    m = None if mask is None else as_bool_mask(mask).expand_as(entropy)
    return -_clean(entropy, m)
