"""KL estimators between the policy and a frozen reference, and the KL coefficient controllers.

Shape legend: B batch, T response tokens.

With tokens sampled from π and d = log π_ref − log π at the sampled token (Schulman, "Approximating
KL divergence", 2020):
  k1 = −d                 unbiased for KL(π‖π_ref), can be negative per token;
  k2 = ½ d²               biased, low variance, always ≥ 0;
  k3 = e^d − d − 1        unbiased, always ≥ 0 (the GRPO paper's estimator; the lecture's
                          "q/p − log(q/p) − 1").
All return per-token values (B, T); ``ref_logprobs`` is detached; ``mask`` as in losses.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from posttrain.algorithms.masked import as_bool_mask

K3_MAX_LOG_RATIO = 20.0
"""k3 clamps d = log π_ref − log π at +20 (e^20 ≈ 4.9e8) before the exponential. Beyond it the
value stays at e^20 − 21 and the gradient is 0: a token the policy has made e^20 times less likely
than the reference should not produce an inf (float32 overflows at d ≈ 88.7) or a gradient that
swamps the batch. There is no lower clamp: for d → −∞, k3 grows only linearly."""


def _log_ratio(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor | None) -> Tensor:
    """d = log π_ref − log π per token, 0 at masked positions (before any arithmetic)."""
    if logprobs.shape != ref_logprobs.shape:
        raise ValueError(
            f"KL: logprobs {tuple(logprobs.shape)} != ref_logprobs {tuple(ref_logprobs.shape)}"
        )
    lp, ref = logprobs, ref_logprobs.detach()
    if mask is not None:
        m = as_bool_mask(mask).expand_as(lp)
        zero = torch.zeros((), dtype=lp.dtype, device=lp.device)
        lp, ref = torch.where(m, lp, zero), torch.where(m, ref, zero)
    return ref - lp


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor | None = None) -> Tensor:
    """k1 = log π − log π_ref per token (B, T). Unbiased; negative where π < π_ref."""
    return -_log_ratio(logprobs, ref_logprobs, mask)


def kl_k2(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor | None = None) -> Tensor:
    """k2 = ½(log π − log π_ref)² per token (B, T). Biased, ≥ 0."""
    return 0.5 * _log_ratio(logprobs, ref_logprobs, mask).square()


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor | None = None) -> Tensor:
    """k3 = exp(d) − d − 1 with d = log π_ref − log π, per token (B, T). Unbiased, ≥ 0, 0 iff
    π = π_ref at the token. d is clamped at :data:`K3_MAX_LOG_RATIO` (documented there)."""
    d = _log_ratio(logprobs, ref_logprobs, mask).clamp(max=K3_MAX_LOG_RATIO)
    # expm1(d) − d is e^d − 1 − d without cancellation when d is small.
    return torch.expm1(d) - d


KL_ESTIMATORS: dict[str, Callable[..., Tensor]] = {"k1": kl_k1, "k2": kl_k2, "k3": kl_k3}
"""All take (logprobs, ref_logprobs, mask=None) and return (B, T)."""


class KLController(Protocol):
    """What the trainer needs from a KL coefficient controller."""

    coef: float

    def update(self, current_kl: float, n_steps: int) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _check_kind(state: dict[str, Any], kind: str) -> None:
    if state.get("kind") != kind:
        raise ValueError(f"KL controller state has kind={state.get('kind')!r}, expected {kind!r}")


class FixedKLController:
    """A constant KL coefficient β."""

    def __init__(self, coef: float) -> None:
        if not (coef >= 0 and math.isfinite(coef)):
            raise ValueError(f"FixedKLController: coef must be finite and >= 0, got {coef}")
        self.coef = float(coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Does nothing: the coefficient is fixed."""

    def state_dict(self) -> dict[str, Any]:
        """The coefficient, for checkpoints."""
        return {"kind": "fixed", "coef": self.coef}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""
        _check_kind(state, "fixed")
        self.coef = float(state["coef"])


class AdaptiveKLController:
    """Adaptive β (Ziegler et al. 2019, "Fine-tuning language models from human preferences").

    err = clip(KL / target − 1, −0.2, 0.2);  β ← β·(1 + err·n_steps / horizon).
    Above target β grows, below it shrinks, by at most 20 % per ``horizon`` steps.

    Args:
        init_coef: starting β (≥ 0).
        target: the KL (nats per sequence or per token, as the trainer measures it) to hold.
        horizon: steps over which a 20 % error changes β by 20 % (e.g. 10000).
    """

    ERR_CLIP = 0.2

    def __init__(self, init_coef: float, target: float, horizon: float) -> None:
        if not (init_coef >= 0 and math.isfinite(init_coef)):
            raise ValueError(f"AdaptiveKLController: init_coef must be >= 0, got {init_coef}")
        if not target > 0:
            raise ValueError(f"AdaptiveKLController: target must be > 0, got {target}")
        if not horizon > 0:
            raise ValueError(f"AdaptiveKLController: horizon must be > 0, got {horizon}")
        self.coef = float(init_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Move β towards holding ``current_kl`` at the target; ``n_steps`` steps have passed."""
        if not math.isfinite(current_kl):
            raise ValueError(f"AdaptiveKLController.update: current_kl is {current_kl}")
        if n_steps < 0:
            raise ValueError(f"AdaptiveKLController.update: n_steps must be >= 0, got {n_steps}")
        err = min(max(current_kl / self.target - 1.0, -self.ERR_CLIP), self.ERR_CLIP)
        self.coef *= 1.0 + err * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        """β with the target and horizon it was adapted under, for checkpoints (CORR-10)."""
        return {
            "kind": "adaptive",
            "coef": self.coef,
            "target": self.target,
            "horizon": self.horizon,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore β; refuses a state saved under a different target or horizon."""
        _check_kind(state, "adaptive")
        for field in ("target", "horizon"):
            if float(state[field]) != getattr(self, field):
                raise ValueError(
                    f"AdaptiveKLController: checkpoint {field}={state[field]} differs from the "
                    f"configured {field}={getattr(self, field)}"
                )
        self.coef = float(state["coef"])
