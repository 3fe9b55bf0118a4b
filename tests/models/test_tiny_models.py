"""Tiny Llama-style models: sizes, config contract, exact save/reload, seeding."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from posttrain.models.tiny import TINY_SIZES, build_tiny_model, count_parameters


@pytest.mark.parametrize(("size", "target"), [("tiny", 1_000_000), ("small", 10_000_000)])
def test_parameter_count_near_target(size, target):
    model = build_tiny_model(size)
    count = count_parameters(model)
    assert 0.7 * target <= count <= 1.3 * target
    # Hand count for vocab 80, tied embeddings, no biases; per layer 4·H² attention,
    # 3·H·I MLP, 2·H norms; plus V·H embedding and H final norm.
    hidden = TINY_SIZES[size]["hidden_size"]
    inter = TINY_SIZES[size]["intermediate_size"]
    layers = TINY_SIZES[size]["num_hidden_layers"]
    expected = layers * (4 * hidden * hidden + 3 * hidden * inter + 2 * hidden) + 80 * hidden
    assert count == expected + hidden


def test_tiny_config_contract():
    model = build_tiny_model("tiny")
    cfg = model.config
    assert isinstance(model, LlamaForCausalLM)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (128, 4, 4)
    assert cfg.intermediate_size == 512
    assert cfg.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert cfg.max_position_embeddings == 256 and cfg.hidden_act == "silu"
    assert cfg._attn_implementation == "sdpa"
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, 0)
    gen = model.generation_config
    assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (1, 2, 0)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_unknown_size_lists_the_sizes():
    with pytest.raises(ValueError, match="huge.*'small'.*'tiny'"):
        build_tiny_model("huge")


def test_overrides_apply():
    model = build_tiny_model("tiny", vocab_size=16, num_hidden_layers=2)
    assert model.config.num_hidden_layers == 2 and len(model.model.layers) == 2
    assert model.model.embed_tokens.weight.shape == (16, 128)


def test_seed_determines_weights_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = build_tiny_model("tiny", seed=7, num_hidden_layers=1)
    assert torch.equal(torch.rand(3), expected_next)  # global stream untouched
    second = build_tiny_model("tiny", seed=7, num_hidden_layers=1)
    other = build_tiny_model("tiny", seed=8, num_hidden_layers=1)
    for (name, a), b in zip(first.named_parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(first.model.embed_tokens.weight, other.model.embed_tokens.weight)


def test_save_and_reload_gives_identical_logits(tmp_path):
    model = build_tiny_model("tiny", seed=3).eval()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(reloaded, LlamaForCausalLM)
    input_ids = torch.randint(0, 80, (3, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(input_ids).logits
        got = reloaded(input_ids).logits
    assert got.shape == (3, 9, 80)
    assert torch.equal(got, expected)
