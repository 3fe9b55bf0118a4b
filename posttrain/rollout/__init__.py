"""Batched sampling with a KV cache into a typed `Rollout`; the engine behind it is replaceable.

`sample(model, prompt_ids, prompt_mask, group_size=G, params=..., generator=...)` is the
entry point; `make_engine` picks `HFEngine` (KV cache, shared prefill) or `RecomputeEngine`.
"""

from __future__ import annotations

from posttrain.rollout.engine import (
    Engine,
    HFEngine,
    RecomputeEngine,
    make_engine,
    sample,
    sampling_mode,
)
from posttrain.rollout.prompts import decode_responses, encode_prompts
from posttrain.rollout.sampler import DecodeState, SamplingParams, filter_logits
from posttrain.rollout.types import FINISH_EOS, FINISH_LENGTH, Rollout

__all__ = [
    "FINISH_EOS",
    "FINISH_LENGTH",
    "DecodeState",
    "Engine",
    "HFEngine",
    "RecomputeEngine",
    "Rollout",
    "SamplingParams",
    "decode_responses",
    "encode_prompts",
    "filter_logits",
    "make_engine",
    "sample",
    "sampling_mode",
]
