"""Tiny models for the rollout tests, built from configs (no download, no tokenizer)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


class BigramLM(nn.Module):
    """A model without a KV cache whose next-token logits depend only on the current token:
    `logits[b, t] = table[input_ids[b, t]]`. Every probability is known by hand."""

    supports_kv_cache = False

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone())  # (V, V)

    def forward(self, input_ids: torch.Tensor, **kwargs: object) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids])  # (B, L, V)


class NoCacheWrapper(nn.Module):
    """The same transformers model seen through a cache-less forward that returns `.logits`."""

    supports_kv_cache = False

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> SimpleNamespace:
        out = self.inner(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
        return SimpleNamespace(logits=out.logits)


def make_llama(vocab: int = 32, seed: int = 0) -> LlamaForCausalLM:
    """A ~30k-parameter RoPE Llama in eval mode."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


def make_gpt2(vocab: int = 32, seed: int = 0) -> GPT2LMHeadModel:
    """A tiny GPT-2 with learned absolute positions (where position bugs show)."""
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=vocab,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=1,
    )
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture
def tiny() -> SimpleNamespace:
    """The model factories above, as a fixture (test modules do not import conftest)."""
    return SimpleNamespace(
        BigramLM=BigramLM, NoCacheWrapper=NoCacheWrapper, llama=make_llama, gpt2=make_gpt2
    )
