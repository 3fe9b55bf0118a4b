"""Tiny Llama-style causal LMs built from a config: no download, seconds to train on a CPU.

They are ordinary `transformers.LlamaForCausalLM`s (RoPE, RMSNorm, SiLU-gated MLP, SDPA
attention), so everything that works on them works on a real Hugging Face model, and they save
with `save_pretrained` and reload with plain `AutoModelForCausalLM.from_pretrained`.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from posttrain.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, TASK_ALPHABET, TASK_MAX_LENGTH

TINY_SIZES: dict[str, dict[str, Any]] = {
    # 4 layers × (4·128² attention + 3·128·512 MLP + 2·128 norms) = 1,049,600
    # + 80·128 tied embedding + 128 final norm = 1,059,968 parameters (vocab 80).
    "tiny": {
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 512,
    },
    # 10 layers × (4·256² + 3·256·1024 + 2·256) = 10,490,880
    # + 80·256 + 256 = 10,511,616 parameters (vocab 80).
    "small": {
        "hidden_size": 256,
        "num_hidden_layers": 10,
        "num_attention_heads": 8,
        "intermediate_size": 1024,
    },
}
"""Named sizes for `build_tiny_model`: "tiny" (~1.06M parameters), "small" (~10.5M)."""

_COMMON: dict[str, Any] = {
    "max_position_embeddings": TASK_MAX_LENGTH,
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "attention_dropout": 0.0,
    "bos_token_id": BOS_ID,
    "eos_token_id": EOS_ID,
    "pad_token_id": PAD_ID,
    "attn_implementation": "sdpa",
}


def build_tiny_model(
    size: str = "tiny",
    vocab_size: int = len(TASK_ALPHABET),
    seed: int = 0,
    **overrides: Any,
) -> LlamaForCausalLM:
    """A freshly initialised fp32 Llama-style causal LM of a named size.

    Args:
        size: a key of `TINY_SIZES`.
        vocab_size: V; the default fits `build_task_tokenizer()`.
        seed: seeds the weight initialisation only; the global RNG is left as it was.
        **overrides: any `LlamaConfig` field, applied last (e.g. `num_hidden_layers=2`).

    Returns:
        The model (train mode, as `nn.Module`s start), with the task tokenizer's bos/eos/pad ids in
        its config and generation config. Forward: input_ids (B, L) -> logits (B, L, V).
    """
    if size not in TINY_SIZES:
        raise ValueError(f"unknown tiny model size {size!r}; sizes: {sorted(TINY_SIZES)}")
    fields = {**_COMMON, **TINY_SIZES[size], "vocab_size": vocab_size, **overrides}
    fields.setdefault("num_key_value_heads", fields["num_attention_heads"])
    config = LlamaConfig(**fields)
    # fork_rng: building a model must not move the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (a tied embedding counts once)."""
    return sum(p.numel() for p in model.parameters())
