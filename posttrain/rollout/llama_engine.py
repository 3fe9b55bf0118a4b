"""LlamaEngine: sampling with a hand-written decode for Llama-family models.

Shape legend: N prompts, G samples per prompt, R = N·G rows (prompt-major), P prompt tokens
(left-padded), T response tokens, V vocabulary.

Same contract and same `DecodeState` as `HFEngine`, so given the same generator it returns the
same Rollout up to float rounding in the logits (a token can differ only when a uniform draw
lands within rounding of a CDF boundary). What differs is the forward: `posttrain.models.
fast_llama` runs the N prompts once, writes their keys/values G times into one preallocated
buffer, and decodes each step with a few fused ops per layer instead of transformers' generic
forward with a growing cache. Weights are read from the live module at every call, so samples
always come from the trainer's current policy.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from posttrain.models import fast_llama, llama_ops
from posttrain.rollout.engine import HFEngine
from posttrain.rollout.sampler import DecodeState, Generators, SamplingParams, check_prompts
from posttrain.rollout.types import Rollout

log = logging.getLogger("posttrain")


class LlamaEngine:
    """KV-cache sampling for models `fast_llama.unsupported_reason` accepts.

    Construction raises ValueError for a model that does not qualify. A model that stops
    qualifying later (hooked, FSDP-sharded, sampled under autocast) is sampled by `HFEngine`
    for that call, with one log line saying why.
    """

    def __init__(self, model: nn.Module) -> None:
        reason = fast_llama.unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"LlamaEngine cannot sample {type(model).__name__}: {reason}")
        self.model = model
        self._fallback = HFEngine(model)
        self._warned = False
        self._kv: torch.Tensor | None = None  # the key/value buffer, reused while shapes match

    def generate(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        group_size: int,
        params: SamplingParams,
        generator: Generators,
    ) -> Rollout:
        """Sample G responses per prompt with a shared prefill; see `Engine.generate`."""
        reason = fast_llama.unsupported_reason(self.model)
        if reason is not None:
            if not self._warned:
                log.info("LlamaEngine: sampling with HFEngine instead (%s)", reason)
                self._warned = True
            return self._fallback.generate(prompt_ids, prompt_mask, group_size, params, generator)
        check_prompts(prompt_ids, prompt_mask, group_size)
        params.check_vocab(self.model.config.vocab_size)
        device = self.model.lm_head.weight.device
        ids, mask = prompt_ids.to(device), prompt_mask.to(device).bool()
        num_prompt = ids.shape[1]
        state = DecodeState(ids.shape[0] * group_size, params, generator, device)
        # No module runs, so train/eval flags are irrelevant: the fast path has no dropout
        # (`unsupported_reason` refuses attention dropout in train mode).
        with torch.inference_mode():
            w = llama_ops.weights_of(self.model)
            # The last sampled token is never fed, so P + T_max - 1 slots suffice.
            slots = num_prompt + params.max_new_tokens - 1
            shape = fast_llama.kv_shape(w, ids.shape[0] * group_size, slots)
            kv = self._kv
            if kv is None or kv.shape != shape or kv.device != device or kv.dtype != w.embed.dtype:
                kv = self._kv = torch.empty(shape, dtype=w.embed.dtype, device=device)
            logits, buf = fast_llama.prefill(w, ids, mask, group_size, slots, kv)  # (R, V)
            first_pos = mask.sum(dim=1).repeat_interleave(group_size)  # (R,)
            if buf.bias is None:  # no left padding: every row sits at the same position
                first_pos = num_prompt
            while True:
                tokens = state.step(logits)  # (R,)
                if state.done():
                    break
                t = state.num_steps  # tokens so far; the new one is token t - 1
                logits = fast_llama.decode_step(
                    w, tokens, first_pos + (t - 1), num_prompt + t - 1, buf
                )
        return state.to_rollout(ids, mask, group_size)
