"""SamplingParams, logit filtering, stop/length bookkeeping and the sampled distribution.

Most tests use a hand-set bigram table (conftest `tiny.BigramLM`), so every probability and
log-prob is known by hand.
"""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.rollout import (
    FINISH_EOS,
    FINISH_LENGTH,
    RecomputeEngine,
    SamplingParams,
    filter_logits,
    make_engine,
    sample,
)

NEG = -30.0  # "never" logit: exp(-30) ~ 1e-13


def _params(**kw) -> SamplingParams:
    base = {"max_new_tokens": 4, "stop_token_ids": (0,), "pad_token_id": 0}
    base.update(kw)
    return SamplingParams(**base)


def _chain_table() -> torch.Tensor:
    """V = 4, EOS = pad = 0. Deterministic chain 3 -> 1 -> 2 -> 0 (EOS), 0 -> 0.

    Row v holds the logits after token v: 0 on the successor, NEG elsewhere, except row 2,
    where EOS has logit 0 and token 1 logit -1 (used by the min_new_tokens test).
    """
    t = torch.full((4, 4), NEG)
    t[3, 1] = 0.0
    t[1, 2] = 0.0
    t[2, 0] = 0.0
    t[2, 1] = -1.0
    t[0, 0] = 0.0
    return t


def _run(model, prompt, params, group_size=1, seed=0):
    ids = torch.tensor([prompt])
    return sample(
        model,
        ids,
        torch.ones_like(ids, dtype=torch.bool),
        group_size=group_size,
        params=params,
        generator=torch.Generator().manual_seed(seed),
    )


# --- SamplingParams ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 0.0),
        ("temperature", -1.0),
        ("temperature", float("nan")),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("max_new_tokens", 0),
        ("min_new_tokens", 5),  # > max_new_tokens = 4
        ("pad_token_id", -1),
        ("stop_token_ids", (-2,)),
    ],
)
def test_params_validation_names_the_field(field, value) -> None:
    with pytest.raises(ValueError, match=f"SamplingParams.{field}"):
        _params(**{field: value})


def test_params_require_stop_and_pad_and_keep_tuple() -> None:
    with pytest.raises(TypeError):
        SamplingParams(max_new_tokens=3)  # stop_token_ids and pad_token_id are required
    p = _params(stop_token_ids=[5, 6])
    assert p.stop_token_ids == (5, 6)


def test_out_of_vocab_stop_id_is_rejected(tiny) -> None:
    model = tiny.llama(vocab=32)
    with pytest.raises(ValueError, match="outside the model's vocabulary of 32"):
        _run(model, [1, 2], _params(stop_token_ids=(40,)))


# --- filtering on hand-built logits -----------------------------------------------------


def test_top_k_keeps_the_k_largest() -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    out = filter_logits(logits, top_k=2)
    assert torch.isfinite(out).tolist() == [[False, True, True, False]]
    assert out[0, 1].item() == 3.0 and out[0, 2].item() == 2.0  # kept logits untouched


@pytest.mark.parametrize(
    ("top_p", "kept"),
    [
        # probs by token: [0.15, 0.5, 0.05, 0.3]; descending 0.5 (t1), 0.3 (t3), 0.15 (t0), 0.05.
        (0.4, [False, True, False, False]),  # 0.5 alone reaches 0.4
        (0.75, [False, True, False, True]),  # 0.5 < 0.75 <= 0.5 + 0.3
        (0.9, [True, True, False, True]),  # 0.8 < 0.9 <= 0.95
        (1.0, [True, True, True, True]),  # off
    ],
)
def test_top_p_keeps_the_smallest_nucleus(top_p, kept) -> None:
    logits = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log()
    out = filter_logits(logits, top_p=top_p)
    assert torch.isfinite(out).tolist() == [kept]


def test_top_p_applies_after_top_k_renormalisation() -> None:
    # top_k=2 keeps t1 (0.5) and t3 (0.3): renormalised 0.625, 0.375. top_p = 0.6 is then
    # reached by t1 alone (0.625 >= 0.6), though before renormalising 0.5 < 0.6.
    logits = torch.tensor([[0.15, 0.5, 0.05, 0.3]]).log()
    out = filter_logits(logits, top_k=2, top_p=0.6)
    assert torch.isfinite(out).tolist() == [[False, True, False, False]]


# --- stop tokens, masks and finish reasons ----------------------------------------------


def test_eos_kept_in_mask_when_pad_equals_eos(tiny) -> None:
    model = tiny.BigramLM(_chain_table())
    # Chain from prompt token 3: 1, 2, then EOS (= pad = 0). Greedy via top_k = 1.
    r = _run(model, [3], _params(max_new_tokens=6, top_k=1))
    # Every row finished at step 3, so the loop stopped there: T = 3 columns.
    assert r.response_ids.tolist() == [[1, 2, 0]]
    assert r.response_mask.tolist() == [[True, True, True]]  # the EOS keeps its weight (CORR-5)
    assert r.finish_reason.tolist() == [FINISH_EOS]
    # log-probs: after 3, token 1 has logit 0 vs three NEG; after 2 EOS has 0 vs -1 and 2x NEG.
    lp1 = -math.log(1 + 3 * math.exp(NEG))
    lp_eos = -math.log(1 + math.exp(-1.0) + 2 * math.exp(NEG))
    torch.testing.assert_close(r.logprobs, torch.tensor([[lp1, lp1, lp_eos]]), atol=1e-6, rtol=0)


def test_tokens_after_eos_are_masked_in_a_mixed_batch(tiny) -> None:
    table = _chain_table()
    model = tiny.BigramLM(table)
    # Two prompts: from 2 the chain emits EOS at once; from 3 it takes three tokens.
    ids = torch.tensor([[2], [3]])
    r = sample(
        model,
        ids,
        torch.ones_like(ids, dtype=torch.bool),
        group_size=1,
        params=_params(max_new_tokens=5, top_k=1),
        generator=torch.Generator().manual_seed(0),
    )
    assert r.response_ids.tolist() == [[0, 0, 0], [1, 2, 0]]
    assert r.response_mask.tolist() == [[True, False, False], [True, True, True]]
    assert r.logprobs[0, 1:].tolist() == [0.0, 0.0]
    assert r.finish_reason.tolist() == [FINISH_EOS, FINISH_EOS]


@pytest.mark.parametrize(
    ("max_new", "ids", "reason"),
    [
        (2, [1, 2], FINISH_LENGTH),  # cut before the EOS: truncated
        (3, [1, 2, 0], FINISH_EOS),  # EOS exactly at the last position: not truncation
        (4, [1, 2, 0], FINISH_EOS),
    ],
)
def test_finish_reason_boundary(tiny, max_new, ids, reason) -> None:
    model = tiny.BigramLM(_chain_table())
    r = _run(model, [3], _params(max_new_tokens=max_new, top_k=1))
    assert r.response_ids.tolist() == [ids]
    assert r.response_mask.tolist() == [[True] * len(ids)]
    assert r.finish_reason.tolist() == [reason]


def test_min_new_tokens_suppresses_stop_tokens(tiny) -> None:
    model = tiny.BigramLM(_chain_table())
    # From 3: 1, 2; after 2 the argmax is EOS, but min_new_tokens = 4 bans it at steps 2, 3,
    # so greedy takes the runner-up, token 1 (logit -1), then 2, then EOS at step 4.
    r = _run(model, [3], _params(max_new_tokens=8, top_k=1, min_new_tokens=4))
    assert r.response_ids.tolist() == [[1, 2, 1, 2, 0]]
    assert r.finish_reason.tolist() == [FINISH_EOS]
    # The recorded log-prob of the forced token 1 is under the *unsuppressed* distribution:
    # logits after 2 are [0, -1, NEG, NEG] -> log p(1) = -1 - log(1 + e^-1 + 2 e^NEG).
    expected = -1.0 - math.log(1 + math.exp(-1.0) + 2 * math.exp(NEG))
    assert r.logprobs[0, 2].item() == pytest.approx(expected, abs=1e-6)


def test_no_stop_tokens_means_length(tiny) -> None:
    model = tiny.BigramLM(_chain_table())
    r = _run(model, [3], _params(max_new_tokens=5, top_k=1, stop_token_ids=()))
    assert r.response_ids.tolist() == [[1, 2, 0, 0, 0]]
    assert r.response_mask.all() and r.finish_reason.tolist() == [FINISH_LENGTH]


# --- randomness -------------------------------------------------------------------------


def test_same_seed_same_samples(tiny) -> None:
    model = tiny.llama(vocab=32)
    params = _params(max_new_tokens=6, stop_token_ids=(1, 2, 3))
    a = _run(model, [5, 6, 7], params, group_size=8, seed=11)
    b = _run(model, [5, 6, 7], params, group_size=8, seed=11)
    for name in ("response_ids", "response_mask", "logprobs", "finish_reason"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    # Eight samples of six tokens from 32 tokens: a seed that repeated one row 8 times would
    # mean the rows share randomness.
    assert len({tuple(row) for row in a.response_ids.tolist()}) > 1


def test_generator_consumption_does_not_depend_on_what_was_sampled(tiny) -> None:
    # The chain stops every row at step 3 of 6; the generator must still have advanced by
    # exactly max_new_tokens uniforms per row, so what follows a call is the same stream
    # whatever the call sampled. Greedy draws nothing.
    table = _chain_table()
    table[2, 1] = NEG  # after 2 only EOS: every sampled row stops at step 3
    model = tiny.BigramLM(table)
    rows, max_new = 3, 6
    r = _run(model, [3], _params(max_new_tokens=max_new), group_size=rows, seed=5)
    assert r.response_ids.shape[1] == 3  # stopped early: every row hit EOS
    gen = torch.Generator().manual_seed(5)
    sample(
        model,
        torch.tensor([[3]]),
        torch.ones((1, 1), dtype=torch.bool),
        group_size=rows,
        params=_params(max_new_tokens=max_new),
        generator=gen,
    )
    expected = torch.Generator().manual_seed(5)
    torch.rand((max_new * rows,), generator=expected, dtype=torch.float64)
    assert torch.equal(gen.get_state(), expected.get_state())
    greedy = torch.Generator().manual_seed(5)
    sample(
        model,
        torch.tensor([[3]]),
        torch.ones((1, 1), dtype=torch.bool),
        group_size=rows,
        params=_params(max_new_tokens=max_new, top_k=1),
        generator=greedy,
    )
    assert torch.equal(greedy.get_state(), torch.Generator().manual_seed(5).get_state())


def test_per_prompt_generators_draw_step_by_step_streams(tiny) -> None:
    # Row r of prompt i at step t uses the t-th (G,)-block of prompt i's generator: the same
    # tokens as sampling each prompt alone with its own generator.
    model = tiny.llama(vocab=32)
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    mask = torch.ones_like(ids, dtype=torch.bool)
    params = _params(max_new_tokens=5, stop_token_ids=())
    together = sample(
        model,
        ids,
        mask,
        group_size=4,
        params=params,
        generator=[torch.Generator().manual_seed(s) for s in (1, 2)],
    )
    for i, seed in enumerate((1, 2)):
        alone = sample(
            model,
            ids[i : i + 1],
            mask[i : i + 1],
            group_size=4,
            params=params,
            generator=torch.Generator().manual_seed(seed),
        )
        assert torch.equal(together.response_ids[4 * i : 4 * i + 4], alone.response_ids)


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    return float(((counts - expected) ** 2 / expected).sum())


def test_first_token_frequencies_match_the_softmax(tiny) -> None:
    # Bigram row after token 0: probabilities 0.1, 0.2, 0.3, 0.4 at T = 1, sampled at T = 0.7:
    # the sampler must follow softmax(log p / 0.7) (CORR-3).
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4])
    table = probs.log().expand(4, 4).clone()
    model = tiny.BigramLM(table)
    n = 4000
    r = _run(model, [0], _params(max_new_tokens=1, stop_token_ids=(), temperature=0.7), n, seed=3)
    counts = torch.bincount(r.response_ids[:, 0], minlength=4).double()
    target = torch.softmax(probs.log().double() / 0.7, dim=0)
    # Upper 0.1% point of chi-square with 3 degrees of freedom: 16.266 (standard table, e.g.
    # NIST/SEMATECH e-Handbook 1.3.6.7.4; re-checked by integrating the gamma CDF).
    assert _chi_square(counts, target) < 16.266
    # and the recorded log-probs are exactly the temperature-scaled ones
    torch.testing.assert_close(
        r.logprobs[:, 0], target.log().float()[r.response_ids[:, 0]], atol=1e-6, rtol=0
    )


def test_llama_first_token_matches_its_softmax(tiny) -> None:
    model = tiny.llama(vocab=8, seed=4)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)  # a peaked distribution (min prob ~0.013), not ~uniform
    prompt = torch.tensor([[3, 5, 2]])
    with torch.no_grad():
        logits = model(input_ids=prompt).logits[0, -1].double()
    target = torch.softmax(logits / 1.3, dim=0)
    n = 3000
    params = _params(max_new_tokens=1, stop_token_ids=(), temperature=1.3)
    r = _run(model, [3, 5, 2], params, n, seed=5)
    counts = torch.bincount(r.response_ids[:, 0], minlength=8).double()
    # Upper 0.1% point of chi-square with 7 degrees of freedom: 24.322 (same table).
    assert _chi_square(counts, target) < 24.322
    # The test has power: the same counts are far from the T = 1 distribution (~200 here).
    assert _chi_square(counts, torch.softmax(logits, dim=0)) > 24.322


def test_top_k_one_is_greedy_on_a_real_model(tiny) -> None:
    model = tiny.llama(vocab=32, seed=2)
    r = _run(model, [4, 9, 1], _params(max_new_tokens=5, top_k=1, stop_token_ids=()), 3, seed=0)
    assert torch.equal(r.response_ids[0], r.response_ids[1])  # no randomness left
    full = torch.cat([torch.tensor([4, 9, 1]), r.response_ids[0]])
    with torch.no_grad():
        logits = model(input_ids=full.unsqueeze(0)).logits[0]  # (8, V)
    # Each response token is the argmax of the logits one position before it.
    assert r.response_ids[0].tolist() == logits[2:7].argmax(-1).tolist()


def test_engine_choice(tiny) -> None:
    assert isinstance(make_engine(tiny.BigramLM(torch.zeros(2, 2))), RecomputeEngine)
    # A plain fp32 Llama gets the hand-written decode; one it cannot reproduce (here: hooked)
    # gets transformers' forward with a KV cache.
    llama = tiny.llama()
    assert type(make_engine(llama)).__name__ == "LlamaEngine"
    assert type(make_engine(llama, kind="hf")).__name__ == "HFEngine"
    llama.model.layers[0].register_forward_hook(lambda *_: None)
    assert type(make_engine(llama)).__name__ == "HFEngine"
    assert isinstance(make_engine(tiny.NoCacheWrapper(tiny.llama())), RecomputeEngine)
