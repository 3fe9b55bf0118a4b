"""The hand-written Llama forward (`posttrain.models.fast_llama`) against transformers' own.

Every expected value is transformers' forward on the same weights and tokens: the fast path
must reproduce it (fp32, 1e-5) with left padding, grouped-query attention, non-unit RMSNorm
weights (folded into the matmuls), Qwen2's q/k/v biases, duplicate rows and T = 1; and its
gradients must equal autograd's through transformers' forward.
"""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from posttrain.models import fast_llama
from posttrain.models.forward import forward_response
from posttrain.models.tiny import build_tiny_model
from posttrain.rollout import HFEngine, SamplingParams, make_engine
from posttrain.rollout.llama_engine import LlamaEngine

V = 24


def _perturb_norms(model: torch.nn.Module, seed: int) -> None:
    """Non-unit RMSNorm weights, so a wrongly folded γ would show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.5 * torch.rand(p.shape, generator=gen))


def llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        pad_token_id=0,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg).eval()
    _perturb_norms(model, seed)
    return model


def qwen2(seed: int = 0) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    cfg = Qwen2Config(
        vocab_size=V,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    _perturb_norms(model, seed)
    with torch.no_grad():  # Qwen2's q/k/v biases start at 0: make them matter
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    return model


def batch(seed: int = 1):
    """4 rows: prompts of 5, 3, 5 and 1 real tokens (left-padded to 5); rows 0 and 2 are the
    same prompt AND the same response (a duplicate row); responses of 4 tokens."""
    gen = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(3, V, (4, 5), generator=gen)
    prompt_mask = torch.tensor(
        [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]], dtype=torch.bool
    )
    prompt_ids = torch.where(prompt_mask, prompt_ids, 0)
    response_ids = torch.randint(3, V, (4, 4), generator=gen)
    prompt_ids[2], response_ids[2] = prompt_ids[0], response_ids[0]
    response_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 0]]).bool()
    return prompt_ids, prompt_mask, response_ids, response_mask


@pytest.mark.parametrize("make", [llama, qwen2], ids=["llama", "qwen2"])
@pytest.mark.parametrize("num_resp", [4, 1])
def test_logprobs_and_gradients_equal_transformers_forward(make, num_resp: int) -> None:
    model = make()
    assert fast_llama.unsupported_reason(model) is None
    p_ids, p_mask, r_ids, r_mask = batch()
    r_ids, r_mask = r_ids[:, :num_resp], r_mask[:, :num_resp]
    results = {}
    for fast in (False, True):
        model.zero_grad()
        out = forward_response(
            model, p_ids, p_mask, r_ids, r_mask, temperature=0.7, with_entropy=True, fast=fast
        )
        (out.logprobs.sum() + 0.3 * out.entropy.sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[fast] = out.logprobs.detach(), out.entropy.detach(), grads
    (lp_ref, ent_ref, g_ref), (lp, ent, g) = results[False], results[True]
    torch.testing.assert_close(lp, lp_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ent_ref, atol=1e-5, rtol=1e-5)
    assert lp[~r_mask].eq(0).all()
    assert g.keys() == g_ref.keys() and len(g) > 0
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], atol=1e-5, rtol=1e-4, msg=name)


def test_default_uses_the_fast_path_only_when_it_reproduces_the_model() -> None:
    model = llama()
    p_ids, p_mask, r_ids, r_mask = batch()
    calls = []
    real = fast_llama.response_logits

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    fast_llama.response_logits = counting
    try:
        forward_response(model, p_ids, p_mask, r_ids, r_mask)  # default: fast
        assert len(calls) == 1
        forward_response(model, p_ids, p_mask, r_ids, r_mask, with_hidden=True)  # needs HF
        forward_response(model, p_ids, p_mask, r_ids, r_mask, fast=False)
        assert len(calls) == 1
        # transformers' own output-capture hooks (installed by the with_hidden call) are inert
        # and must not change which kernels later calls use (bit-exact resume depends on it).
        forward_response(model, p_ids, p_mask, r_ids, r_mask)
        assert len(calls) == 2
        handle = model.model.layers[1].mlp.register_forward_hook(lambda *_: None)
        assert "has forward hooks" in fast_llama.unsupported_reason(model)
        forward_response(model, p_ids, p_mask, r_ids, r_mask)  # a user hook: HF forward
        assert len(calls) == 2
        with pytest.raises(ValueError, match="forward hooks"):
            forward_response(model, p_ids, p_mask, r_ids, r_mask, fast=True)
        handle.remove()
    finally:
        fast_llama.response_logits = real


@pytest.mark.parametrize(
    "change, reason",
    [
        (lambda m: m.to(torch.bfloat16), "dtype is not float32"),
        (lambda m: setattr(m, "posttrain_fast_path", False), "disabled"),
        (lambda m: setattr(m.config, "hidden_act", "gelu"), "hidden_act"),
    ],
    ids=["bf16", "opt-out", "gelu"],
)
def test_models_it_cannot_reproduce_are_refused(change, reason: str) -> None:
    model = llama()
    change(model)
    assert reason in fast_llama.unsupported_reason(model)
    with pytest.raises(ValueError, match="make_engine"):
        make_engine(model, kind="llama")
    assert type(make_engine(model)) is not LlamaEngine


def test_autocast_is_refused() -> None:
    model = llama()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "autocast" in fast_llama.unsupported_reason(model)


@pytest.mark.parametrize("make", [llama, qwen2], ids=["llama", "qwen2"])
def test_llama_engine_samples_what_hf_engine_samples(make) -> None:
    """Same generator → same tokens (the logits agree to ~1e-6, far from any CDF boundary at
    this size), and the recorded log-probs equal transformers' forward on those tokens."""
    model = make()
    p_ids, p_mask, _, _ = batch()
    params = SamplingParams(
        max_new_tokens=6, min_new_tokens=2, temperature=0.9, stop_token_ids=(5,), pad_token_id=0
    )
    fast = LlamaEngine(model).generate(p_ids, p_mask, 3, params, torch.Generator().manual_seed(7))
    ref = HFEngine(model).generate(p_ids, p_mask, 3, params, torch.Generator().manual_seed(7))
    assert torch.equal(fast.response_ids, ref.response_ids)
    assert torch.equal(fast.response_mask, ref.response_mask)
    assert torch.equal(fast.finish_reason, ref.finish_reason)
    torch.testing.assert_close(fast.logprobs, ref.logprobs, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        again = forward_response(
            model,
            fast.prompt_ids,
            fast.prompt_mask,
            fast.response_ids,
            fast.response_mask,
            temperature=0.9,
            fast=False,
        )
    torch.testing.assert_close(fast.logprobs, again.logprobs, atol=1e-5, rtol=1e-5)


def test_llama_engine_reads_the_current_weights_at_every_call() -> None:
    model = llama()
    engine = LlamaEngine(model)
    p_ids, p_mask, _, _ = batch()
    params = SamplingParams(max_new_tokens=4, stop_token_ids=(), pad_token_id=0)
    before = engine.generate(p_ids, p_mask, 2, params, torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.lm_head.weight.mul_(3.0)  # tied: the embedding changes too
    after = engine.generate(p_ids, p_mask, 2, params, torch.Generator().manual_seed(0))
    ref = HFEngine(model).generate(p_ids, p_mask, 2, params, torch.Generator().manual_seed(0))
    assert not torch.allclose(before.logprobs, after.logprobs)
    torch.testing.assert_close(after.logprobs, ref.logprobs, atol=1e-5, rtol=1e-5)


def test_llama_engine_reuses_its_key_value_buffer_without_leaking_state() -> None:
    """The buffer is reused across calls of the same shape; whatever it held (here NaN, the
    worst case for slots a decode step reads past the current one, with weight 0) must not
    reach the next rollout: it equals a fresh engine's, bit for bit."""
    model = llama()
    p_ids, p_mask, _, _ = batch()
    params = SamplingParams(max_new_tokens=5, stop_token_ids=(), pad_token_id=0)
    engine = LlamaEngine(model)
    engine.generate(p_ids.flip(0), p_mask.flip(0), 2, params, torch.Generator().manual_seed(3))
    kept = engine._kv
    with torch.inference_mode():
        kept.fill_(float("nan"))
    again = engine.generate(p_ids, p_mask, 2, params, torch.Generator().manual_seed(0))
    assert engine._kv is kept  # same shape: reused, not reallocated
    fresh = LlamaEngine(model).generate(p_ids, p_mask, 2, params, torch.Generator().manual_seed(0))
    assert torch.equal(again.response_ids, fresh.response_ids)
    assert torch.equal(again.logprobs, fresh.logprobs)
    assert torch.isfinite(again.logprobs).all()


def test_a_prompts_samples_do_not_depend_on_the_batch_around_it() -> None:
    """Data-parallel ranks sample fewer prompts than one process (the data-parallel test's RL
    shape: 4 prompts × 4 samples over 2 ranks): with per-prompt generators, two prompts'
    rollouts are the same bits on their own (8 rows: below MKL's 12-column threshold for the
    gate|up product, so padded) as inside the batch of 4 (16 rows)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the data-parallel workers run
    try:
        model = build_tiny_model("tiny")
        gen = torch.Generator().manual_seed(4)
        ids = torch.randint(5, 30, (4, 6), generator=gen)
        mask = torch.ones_like(ids, dtype=torch.bool)
        params = SamplingParams(max_new_tokens=6, stop_token_ids=(), pad_token_id=0)
        engine, g = LlamaEngine(model), 4

        def gens(seeds):
            return [torch.Generator().manual_seed(s) for s in seeds]

        together = engine.generate(ids, mask, g, params, gens(range(4)))
        for i in (0, 2):
            part = engine.generate(ids[i : i + 2], mask[i : i + 2], g, params, gens([i, i + 1]))
            rows = slice(g * i, g * (i + 2))
            assert torch.equal(part.response_ids, together.response_ids[rows])
            assert torch.equal(part.logprobs, together.logprobs[rows])
    finally:
        torch.set_num_threads(threads)
