"""The trainer's forward pass over sampled responses: log-probs, entropy and hidden states.

Shape legend: B batch (rollouts), P prompt tokens (left-padded), T response tokens
(right-padded), L = P + T, V vocabulary, H hidden size.

Alignment (CORR-1): the logits at position i score token i + 1, so the logits at positions
P-1 .. P+T-2 score response tokens 0 .. T-1. The slice is taken on the logits *before* any
softmax, so the (B, L, V) log-softmax over the prompt is never built.

Positions (CORR-2): `position_ids = cumsum(mask) - 1` (clamped at 0 on left padding), so a
left-padded sequence sees the same positions as it would alone; the sampler uses the same rule.

Fast path: for Llama-family models `posttrain.models.fast_llama` computes the same logits with
fewer FLOPs (a prompt shared by several rows runs once; the last response token, which scores
nothing, is not fed) and fewer, larger ops. `fast=False` forces the model's own forward.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from posttrain.algorithms.masked import entropy_from_logits, token_logprobs

if TYPE_CHECKING:  # a runtime import would cycle: posttrain.rollout imports this module
    from posttrain.rollout.types import Rollout


@dataclass
class ResponseForward:
    """What the trainer needs from one forward pass over prompt + response.

    Attributes:
        logprobs: (B, T) float32. log softmax(logits / temperature)[token] of each response
            token; 0 where the response mask is False. Differentiable.
        entropy: (B, T) float32 or None. Entropy of softmax(logits / temperature) at the
            position that predicts each response token; 0 where masked.
        hidden: (B, T, H) or None. Last hidden state at the position that *predicts* response
            token t (position P-1+t): the state s_t before token t is emitted, which is what a
            value head V(s_t) scores. 0 where masked.
    """

    logprobs: Tensor
    entropy: Tensor | None = None
    hidden: Tensor | None = None


@functools.lru_cache(maxsize=64)
def _forward_params(forward_type: type) -> tuple[frozenset[str], bool]:
    """(named parameters, takes **kwargs) of a module class's forward, computed once per class."""
    sig = inspect.signature(forward_type.forward)
    names = frozenset(sig.parameters)
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    return names, var_kw


def accepts_kwarg(model: nn.Module, name: str) -> bool:
    """Whether `model.forward` names the keyword `name` explicitly (not just via **kwargs)."""
    return name in _forward_params(type(model))[0]


def call_model(model: nn.Module, input_ids: Tensor, **kwargs: Any) -> Any:
    """Call `model(input_ids=..., **kwargs)`, dropping keywords its forward cannot take.

    A keyword is passed when the forward names it or takes **kwargs; `None` values are never
    passed. This lets a minimal model (a forward returning only `.logits`) ignore
    `attention_mask`/`position_ids`, while a transformers model receives them.
    """
    names, var_kw = _forward_params(type(model))
    kept = {k: v for k, v in kwargs.items() if v is not None and (var_kw or k in names)}
    return model(input_ids=input_ids, **kept)


def positions_from_mask(mask: Tensor) -> Tensor:
    """(B, L) long position ids counted over real tokens: cumsum(mask) - 1, clamped at 0."""
    return (mask.long().cumsum(dim=1) - 1).clamp(min=0)


def _check_inputs(
    prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor, response_mask: Tensor
) -> None:
    """Raise a clear error on shapes or padding sides the alignment below relies on."""
    if prompt_ids.dim() != 2 or response_ids.dim() != 2:
        raise ValueError(
            f"forward_response: prompt_ids {tuple(prompt_ids.shape)} and response_ids "
            f"{tuple(response_ids.shape)} must both be 2-D (B, P) and (B, T)"
        )
    if prompt_mask.shape != prompt_ids.shape:
        raise ValueError(
            f"forward_response: prompt_mask {tuple(prompt_mask.shape)} must match prompt_ids "
            f"{tuple(prompt_ids.shape)}"
        )
    if response_mask.shape != response_ids.shape:
        raise ValueError(
            f"forward_response: response_mask {tuple(response_mask.shape)} must match "
            f"response_ids {tuple(response_ids.shape)}"
        )
    if prompt_ids.shape[0] != response_ids.shape[0]:
        raise ValueError(
            f"forward_response: batch sizes differ: prompt_ids {prompt_ids.shape[0]}, "
            f"response_ids {response_ids.shape[0]}"
        )
    if prompt_ids.shape[1] == 0:
        raise ValueError("forward_response: prompt_ids has no columns; a response needs a prompt")
    if not bool(prompt_mask[:, -1].all()):
        # With right-padded prompts the last prompt column would be padding, and the logits
        # there would not be the ones that predicted the first response token.
        raise ValueError(
            "forward_response: prompt_mask must be left-padded (its last column all True)"
        )


def forward_response(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    with_hidden: bool = False,
    fast: bool | None = None,
) -> ResponseForward:
    """One forward pass over prompt + response; log-probs (and optionally entropy, hidden) of
    the response tokens under softmax(logits / temperature).

    Gradients flow (no inference_mode here); the model is used in whatever train/eval mode it
    is in. With top-k/top-p off and the sampling temperature, `logprobs` are exactly what the
    sampler recorded (CORR-3), up to float error.

    Args:
        model: a causal LM whose output has `.logits` (B, L, V); transformers models also get
            `attention_mask`, `position_ids` (and `logits_to_keep` when they name it).
        prompt_ids: (B, P) long, left-padded. prompt_mask: (B, P) bool.
        response_ids: (B, T) long, right-padded. response_mask: (B, T) bool.
        temperature: the sampling temperature.
        with_entropy: also return the entropy at each response position.
        with_hidden: also return the last hidden state at each predicting position (needs a
            model that returns `hidden_states` when asked with `output_hidden_states=True`).
        fast: None (default) = use `posttrain.models.fast_llama` when the model qualifies
            (`fast_llama.unsupported_reason` is None) and `with_hidden` is off: each distinct
            prompt runs once and the last response token is never fed; True = require it
            (ValueError when it cannot be used); False = always the model's own forward.
    Returns:
        ResponseForward with (B, T) logprobs, (B, T) entropy or None, (B, T, H) hidden or None;
        all 0 where response_mask is False.
    """
    _check_inputs(prompt_ids, prompt_mask, response_ids, response_mask)
    num_prompt, num_resp = prompt_ids.shape[1], response_ids.shape[1]
    if _use_fast_path(model, fast, with_hidden, num_resp):
        from posttrain.models import fast_llama, llama_ops  # fast_llama imports this module

        logits = fast_llama.response_logits(
            llama_ops.weights_of(model), prompt_ids, prompt_mask, response_ids
        )  # (B, T, V)
        return _score(logits, response_ids, response_mask, temperature, with_entropy, None)
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)  # (B, L)
    mask = torch.cat([prompt_mask.bool(), response_mask.bool()], dim=1)  # (B, L)
    kwargs: dict[str, Any] = {
        "attention_mask": mask.long(),
        "position_ids": positions_from_mask(mask),
    }
    if accepts_kwarg(model, "logits_to_keep"):
        # Keep only the last T + 1 positions (P-1 .. L-1); the head never runs on the prompt.
        kwargs["logits_to_keep"] = num_resp + 1
    if with_hidden:
        kwargs["output_hidden_states"] = True
    out = call_model(model, input_ids, **kwargs)

    logits = out.logits
    if logits.shape[1] == input_ids.shape[1]:
        logits = logits[:, num_prompt - 1 : num_prompt + num_resp - 1]  # (B, T, V)
    elif logits.shape[1] == num_resp + 1:
        logits = logits[:, :-1]  # (B, T, V): positions P-1 .. L-2
    else:
        raise ValueError(
            f"forward_response: model returned logits for {logits.shape[1]} positions; expected "
            f"{input_ids.shape[1]} (all) or {num_resp + 1} (logits_to_keep)"
        )
    hidden = None
    if with_hidden:
        states = getattr(out, "hidden_states", None)
        if not states:
            raise ValueError(
                f"forward_response(with_hidden=True): {type(model).__name__} returned no "
                "hidden_states; it must honour output_hidden_states=True"
            )
        hidden = states[-1][:, num_prompt - 1 : num_prompt + num_resp - 1]  # (B, T, H)
    return _score(logits, response_ids, response_mask, temperature, with_entropy, hidden)


def _use_fast_path(model: nn.Module, fast: bool | None, with_hidden: bool, num_resp: int) -> bool:
    """Whether `forward_response` runs `fast_llama` (see its `fast` argument)."""
    if fast is False:
        return False
    if with_hidden or num_resp == 0:
        if fast:
            raise ValueError("forward_response(fast=True) needs with_hidden=False and T >= 1")
        return False
    from posttrain.models.fast_llama import unsupported_reason

    reason = unsupported_reason(model)
    if fast and reason is not None:
        raise ValueError(f"forward_response(fast=True): {reason}")
    return reason is None


def _score(
    logits: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    temperature: float,
    with_entropy: bool,
    hidden: Tensor | None,
) -> ResponseForward:
    """Masked log-probs (and entropy, hidden) from the (B, T, V) logits that score each token."""
    resp_mask = response_mask.bool()
    zero = torch.zeros((), dtype=torch.float32, device=logits.device)
    logprobs = token_logprobs(logits, response_ids, temperature)
    logprobs = torch.where(resp_mask, logprobs, zero.to(logprobs.dtype))  # (B, T)
    entropy = None
    if with_entropy:
        entropy = entropy_from_logits(logits, temperature)
        entropy = torch.where(resp_mask, entropy, zero.to(entropy.dtype))  # (B, T)
    if hidden is not None:
        hidden = torch.where(resp_mask.unsqueeze(-1), hidden, torch.zeros_like(hidden))
    return ResponseForward(logprobs=logprobs, entropy=entropy, hidden=hidden)


def forward_rollout(model: nn.Module, rollout: Rollout, **kwargs: Any) -> ResponseForward:
    """`forward_response` over a Rollout's prompt and response tensors; kwargs pass through."""
    return forward_response(
        model,
        rollout.prompt_ids,
        rollout.prompt_mask,
        rollout.response_ids,
        rollout.response_mask,
        **kwargs,
    )
