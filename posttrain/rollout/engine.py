"""Engines: the replaceable thing that turns prompts into a Rollout.

Shape legend: N prompts, G samples per prompt, R = N·G rows (prompt-major), P prompt tokens
(left-padded), T response tokens, V vocabulary.

An engine has one method, `generate`. `LlamaEngine` (`posttrain.rollout.llama_engine`) decodes
Llama-family models with a hand-written forward and is what `make_engine` picks for them.
`HFEngine` drives a transformers causal LM with a KV
cache: the N distinct prompts are prefilled once, the cache is repeated G times along the
batch, and the R rows decode together. `RecomputeEngine` serves models without a cache by
running the whole sequence every step. Both feed the same `DecodeState`, so given the same
logits and generator they return the same Rollout.

Weights: in-process engines (these two and `LlamaEngine`) sample from the live module, so they
always see the trainer's current weights. An engine outside this process (vLLM, SGLang, a
server) receives them instead: `posttrain.rollout.external.ExternalEngine.sync_weights`, which
the trainer calls before sampling whenever an optimizer step has changed them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from posttrain.models.forward import accepts_kwarg, call_model, positions_from_mask
from posttrain.rollout.sampler import DecodeState, SamplingParams, check_prompts
from posttrain.rollout.types import Rollout


@runtime_checkable
class Engine(Protocol):
    """Samples `group_size` responses per prompt and returns them as a Rollout.

    In-process engines share the live module; an engine outside this process also has
    `sync_weights(model, version)` (see `posttrain.rollout.external`), which the trainer calls
    before sampling.
    """

    def generate(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        group_size: int,
        params: SamplingParams,
        generator: torch.Generator,
    ) -> Rollout:
        """Sample G responses for each of N prompts.

        Args:
            prompt_ids: (N, P) long, left-padded. prompt_mask: (N, P) bool.
            group_size: G. params: how to sample. generator: the only source of randomness.
        Returns:
            Rollout with R = N·G rows, prompt-major (row i is sample i % G of prompt i // G).
        """
        ...


@contextmanager
def sampling_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and inference mode for the duration; each submodule's train/eval flag is put
    back afterwards (a blanket `model.train()` would wake frozen submodules)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for module, training in modes:
            module.training = training


def _device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a parameter-free module)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def _prepare(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    group_size: int,
    params: SamplingParams,
) -> tuple[Tensor, Tensor, torch.device]:
    """Validate the call and move the prompts to the model's device."""
    check_prompts(prompt_ids, prompt_mask, group_size)
    device = _device_of(model)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int):
        params.check_vocab(vocab)
    return prompt_ids.to(device), prompt_mask.to(device).bool(), device


class HFEngine:
    """KV-cache sampling with a transformers causal LM (any PreTrainedModel with a cache).

    Prefill runs once on the N distinct prompts; its cache and last logits are repeated G
    times (`repeat_interleave` on the batch), then R = N·G rows decode one token per step
    through the model's own forward with `past_key_values`. Rows that finished stay in the
    batch fed with pad (their outputs are ignored); the loop exits when all have finished.

    Left padding: position ids count real tokens only (cumsum(mask) - 1) and every decode step
    extends the 2-D attention mask; a batch without padding passes no mask at all, which
    skips transformers' per-step mask construction.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._logits_to_keep = accepts_kwarg(model, "logits_to_keep")

    def _forward(self, input_ids: Tensor, **kwargs: object) -> Tensor:
        """Last-position logits (rows, V) of one forward call that extends the cache."""
        if self._logits_to_keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(input_ids=input_ids, use_cache=True, **kwargs)
        return out.logits[:, -1]

    def generate(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        group_size: int,
        params: SamplingParams,
        generator: torch.Generator,
    ) -> Rollout:
        """Sample G responses per prompt with a shared prefill; see `Engine.generate`."""
        from transformers import DynamicCache

        ids, mask, device = _prepare(self.model, prompt_ids, prompt_mask, group_size, params)
        num_prompt = ids.shape[1]
        rows = ids.shape[0] * group_size
        padded = not bool(mask.all())
        state = DecodeState(rows, params, generator, device)
        with sampling_mode(self.model):
            cache = DynamicCache(config=self.model.config)
            logits = self._forward(
                ids,
                attention_mask=mask.long() if padded else None,
                position_ids=positions_from_mask(mask),
                past_key_values=cache,
            )  # (N, V)
            # Share the prefill: row i continues prompt i // G.
            logits = logits.repeat_interleave(group_size, dim=0)  # (R, V)
            cache.batch_repeat_interleave(group_size)
            attn = None
            if padded:
                attn = torch.ones(
                    (rows, num_prompt + params.max_new_tokens), dtype=torch.long, device=device
                )  # (R, P + T_max), filled in place of a torch.cat per step
                attn[:, :num_prompt] = mask.repeat_interleave(group_size, dim=0)
            next_pos = mask.sum(dim=1).repeat_interleave(group_size).unsqueeze(1)  # (R, 1)
            while True:
                tokens = state.step(logits)  # (R,)
                if state.done():
                    break
                t = state.num_steps  # tokens decoded so far; the new one sits at P + t - 1
                logits = self._forward(
                    tokens.unsqueeze(1),
                    attention_mask=None if attn is None else attn[:, : num_prompt + t],
                    position_ids=next_pos + (t - 1),
                    past_key_values=cache,
                )  # (R, V)
        return state.to_rollout(ids, mask, group_size)


class RecomputeEngine:
    """Sampling without a cache: each step runs the whole prompt + response so far.

    For models that declare `supports_kv_cache = False` (a minimal forward returning `.logits`);
    `attention_mask`/`position_ids` are passed only if the forward can take them. Quadratic in
    length, so meant for small models and tests.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def _last_logits(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        """(rows, V) logits at the last position of a full forward pass."""
        out = call_model(
            self.model,
            input_ids,
            attention_mask=mask.long(),
            position_ids=positions_from_mask(mask),
        )
        return out.logits[:, -1]

    def generate(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        group_size: int,
        params: SamplingParams,
        generator: torch.Generator,
    ) -> Rollout:
        """Sample G responses per prompt by full recomputation; see `Engine.generate`."""
        ids, mask, device = _prepare(self.model, prompt_ids, prompt_mask, group_size, params)
        rows = ids.shape[0] * group_size
        state = DecodeState(rows, params, generator, device)
        with sampling_mode(self.model):
            # The first step depends only on the prompt: compute it once per prompt.
            logits = self._last_logits(ids, mask).repeat_interleave(group_size, dim=0)
            full_ids = ids.repeat_interleave(group_size, dim=0)  # (R, P)
            full_mask = mask.repeat_interleave(group_size, dim=0)  # (R, P)
            ones = torch.ones((rows, 1), dtype=torch.bool, device=device)
            while True:
                tokens = state.step(logits)
                if state.done():
                    break
                full_ids = torch.cat([full_ids, tokens.unsqueeze(1)], dim=1)  # (R, P + t)
                full_mask = torch.cat([full_mask, ones], dim=1)
                logits = self._last_logits(full_ids, full_mask)
        return state.to_rollout(ids, mask, group_size)


ENGINE_KINDS = ("auto", "llama", "hf", "recompute")
"""`make_engine` choices: auto picks; the others force that engine."""


def make_engine(model: nn.Module, kind: str = "auto") -> Engine:
    """The engine for `model`.

    auto: `LlamaEngine` (the hand-written decode) for models `fast_llama.unsupported_reason`
    accepts, else `HFEngine` for models with a KV cache, else `RecomputeEngine` for
    `supports_kv_cache = False` or forwards that take no `past_key_values`.
    "llama", "hf", "recompute" force that engine (ValueError when the model cannot use it).
    """
    from posttrain.models.fast_llama import unsupported_reason
    from posttrain.rollout.llama_engine import LlamaEngine

    if kind not in ENGINE_KINDS:
        raise ValueError(f"make_engine: kind must be one of {ENGINE_KINDS}, got {kind!r}")
    reason = unsupported_reason(model)
    if kind == "llama" and reason is not None:
        raise ValueError(f"make_engine(kind='llama'): {reason}")
    if kind in ("auto", "llama") and reason is None:
        return LlamaEngine(model)
    has_cache = (
        getattr(model, "supports_kv_cache", True) is not False
        and hasattr(model, "config")
        and accepts_kwarg(model, "past_key_values")
    )
    if kind != "recompute" and has_cache:
        return HFEngine(model)
    if kind == "hf":
        raise ValueError(f"make_engine(kind='hf'): {type(model).__name__} takes no KV cache")
    return RecomputeEngine(model)


def sample(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    *,
    group_size: int,
    params: SamplingParams,
    generator: torch.Generator,
    engine: Engine | None = None,
) -> Rollout:
    """Sample G responses per prompt with `engine` (default: `make_engine(model)`).

    Args:
        prompt_ids: (N, P) long, left-padded. prompt_mask: (N, P) bool.
    Returns:
        Rollout of N·G rows, prompt-major, group_ids = row // G.
    """
    engine = engine if engine is not None else make_engine(model)
    return engine.generate(prompt_ids, prompt_mask, group_size, params, generator)
