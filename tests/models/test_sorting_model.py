"""The lecture-17 non-autoregressive sorting model."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.models.sorting_model import SortingModel, build_sorting_model
from posttrain.models.tokenizer import build_task_tokenizer


def _hand_model() -> SortingModel:
    """V=4, D=2, P=2, R=2 with hand-set weights."""
    model = SortingModel(vocab_size=4, embedding_dim=2, prompt_length=2, response_length=2)
    with torch.no_grad():
        model.embedding.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]))
        model.encode_weights.copy_(
            torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
        )
        model.decode_weights.copy_(
            torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[2.0, 0.0], [0.0, 2.0]]])
        )
    return model


def test_parameter_structure():
    model = SortingModel(vocab_size=10, embedding_dim=8, prompt_length=3, response_length=4)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    assert shapes == {
        "embedding.weight": (10, 8),
        "encode_weights": (3, 8, 8),
        "decode_weights": (4, 8, 8),
    }
    assert model.supports_kv_cache is False
    assert model.config.use_cache is False and model.config.vocab_size == 10
    assert model.config.hidden_size == 8


def test_logits_by_hand():
    model = _hand_model()
    # prompt [0, 2]: e_0 = [1, 0], e_1 = [1, 1]; z = e_0·I + e_1·swap = [1, 0] + [1, 1] = [2, 1]
    # h_0 = z·I = [2, 1], h_1 = z·2I = [4, 2]
    # logits = h·Eᵀ/√2 with E rows [1,0],[0,1],[1,1],[0,0]: [2, 1, 3, 0]/√2 and [4, 2, 6, 0]/√2
    input_ids = torch.tensor([[0, 2, 3, 1]])  # prompt (P=2) then two response tokens
    logits = model(input_ids).logits
    root2 = math.sqrt(2.0)
    expected = torch.zeros(1, 4, 4)
    expected[0, 1] = torch.tensor([2.0, 1.0, 3.0, 0.0]) / root2  # position P-1+0 = 1
    expected[0, 2] = torch.tensor([4.0, 2.0, 6.0, 0.0]) / root2  # position P-1+1 = 2
    # position 0 (inside the prompt) and 3 (after the last response position) stay zero
    assert torch.allclose(logits, expected, atol=1e-6, rtol=0)


def test_matches_loops_and_places_each_response_position():
    torch.manual_seed(0)
    vocab, dim, prompt_len, resp_len = 7, 5, 3, 4
    model = SortingModel(vocab, dim, prompt_len, resp_len, seed=1)
    input_ids = torch.randint(0, vocab, (2, prompt_len + resp_len))
    logits = model(input_ids).logits
    assert logits.shape == (2, prompt_len + resp_len, vocab)
    table = model.embedding.weight.detach()
    for b in range(2):
        z = sum(table[input_ids[b, i]] @ model.encode_weights[i] for i in range(prompt_len))
        for t in range(resp_len):
            h_t = z @ model.decode_weights[t]
            expected = torch.stack([h_t @ table[v] for v in range(vocab)]) / math.sqrt(dim)
            assert torch.allclose(logits[b, prompt_len - 1 + t], expected, atol=1e-5, rtol=0)
        assert torch.equal(logits[b, : prompt_len - 1], torch.zeros(prompt_len - 1, vocab))
        assert torch.equal(logits[b, -1], torch.zeros(vocab))


def test_ignores_response_tokens_and_handles_partial_sequences():
    model = SortingModel(10, 6, prompt_length=3, response_length=3, seed=2)
    full_a = torch.tensor([[4, 1, 3, 1, 3, 4]])
    full_b = torch.tensor([[4, 1, 3, 9, 0, 0]])  # same prompt, other response
    logits_a = model(full_a).logits
    assert torch.equal(logits_a, model(full_b).logits)
    # A shorter sequence (prompt + 1 token) gets the first two response positions only.
    partial = model(full_a[:, :4]).logits
    assert partial.shape == (1, 4, 10)
    assert torch.equal(partial[:, 2:4], logits_a[:, 2:4])
    # The prompt alone: only response position 0, at position P - 1 = 2.
    assert torch.equal(model(full_a[:, :3]).logits[:, 2], logits_a[:, 2])


def test_full_recompute_greedy_decoding_equals_per_position_argmax():
    model = SortingModel(10, 6, prompt_length=3, response_length=3, seed=3)
    prompt = torch.tensor([[5, 0, 7], [2, 2, 9]])
    sequence = prompt
    for _ in range(3):  # a plain sampler: recompute everything, read the last position
        next_token = model(sequence).logits[:, -1].argmax(dim=-1, keepdim=True)
        sequence = torch.cat([sequence, next_token], dim=1)
    # One pass over the finished sequence, causal-LM slicing: position P-1+t scores token t.
    logits = model(sequence).logits[:, 2:5]
    assert torch.equal(sequence[:, 3:], logits.argmax(dim=-1))


def test_hidden_states_are_placed_like_logits_and_gradients_flow():
    model = SortingModel(10, 4, prompt_length=2, response_length=2, seed=4)
    out = model(torch.tensor([[3, 1, 1, 3]]), output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states[-1]
    assert hidden.shape == (1, 4, 4)
    assert torch.equal(hidden[:, 0], torch.zeros(1, 4)) and torch.equal(
        hidden[:, 3], torch.zeros(1, 4)
    )
    # logits = hidden · Eᵀ / √D at the filled positions
    expected = hidden[:, 1:3] @ model.embedding.weight.T / 2.0
    assert torch.allclose(out.logits[:, 1:3], expected, atol=1e-6, rtol=0)
    logprob = (
        torch.log_softmax(out.logits[0, 1], dim=-1)[1] + torch.log_softmax(out.logits[0, 2], -1)[3]
    )
    logprob.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_input_checks_name_the_problem():
    model = SortingModel(10, 4, prompt_length=3, response_length=2)
    with pytest.raises(ValueError, match="prompt_length=3"):
        model(torch.tensor([[1, 2]]))
    with pytest.raises(ValueError, match="padding"):
        model(torch.tensor([[0, 1, 2, 3]]), attention_mask=torch.tensor([[0, 1, 1, 1]]))
    # Padding after the prompt (a finished response) is fine.
    model(torch.tensor([[1, 1, 2, 3]]), attention_mask=torch.tensor([[1, 1, 1, 0]]))


def test_build_sorting_model_fits_the_plain_sorting_prompt():
    tokenizer = build_task_tokenizer()
    model = build_sorting_model(n=5, embedding_dim=8)
    assert (model.config.prompt_length, model.config.response_length) == (7, 6)
    assert model.config.vocab_size == len(tokenizer)
    prompt = torch.tensor([tokenizer.encode("31415=")])  # <bos> 3 1 4 1 5 =
    assert model(prompt).logits.shape == (1, 7, 80)
    no_bos = torch.tensor([tokenizer.encode("31415=", add_special_tokens=False)])
    with pytest.raises(ValueError, match="prompt_end_id=14"):
        model(torch.cat([no_bos, no_bos[:, :1]], dim=1))  # length 7, but '=' is not at 6


def test_built_model_emits_only_digits_and_eos() -> None:
    # The lecture's model outputs numbers only: every other logit of a response slot is −inf.
    import torch

    from posttrain.models.sorting_model import build_sorting_model
    from posttrain.models.tokenizer import EOS_ID, TASK_ALPHABET

    model = build_sorting_model(n=3)
    ids = torch.tensor([[1, 7, 5, 8, TASK_ALPHABET.index("=")]])
    logits = model(ids).logits[0, 4]  # first response slot (position P − 1 = 4)
    allowed = {TASK_ALPHABET.index(d) for d in "0123456789"} | {EOS_ID}
    finite = {i for i in range(len(TASK_ALPHABET)) if torch.isfinite(logits[i])}
    assert finite == allowed


def test_save_and_load_round_trip(tmp_path) -> None:
    import torch

    from posttrain.models.loading import load_model
    from posttrain.models.sorting_model import build_sorting_model
    from posttrain.models.tokenizer import build_task_tokenizer

    model = build_sorting_model(n=3, seed=5)
    model.save_pretrained(tmp_path)
    build_task_tokenizer().save_pretrained(tmp_path)
    loaded, tokenizer = load_model(str(tmp_path))
    ids = torch.tensor([[1, 7, 5, 8, 14]])
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert tokenizer.convert_tokens_to_ids("=") == 14
