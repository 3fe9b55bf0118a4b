"""forward_response: alignment (CORR-1), padding invariance (CORR-2), temperature (CORR-3),
masking, hidden-state positions and gradients."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from posttrain.models.forward import forward_response, forward_rollout
from posttrain.rollout.types import FINISH_EOS, Rollout


class BigramLM(nn.Module):
    """Lookup-table "model": the logits at a position depend only on that position's token,
    so the log-prob of every next token is known by hand. Ignores masks and positions."""

    supports_kv_cache = False

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = nn.Parameter(table.clone())  # (V, V): row = current token

    def forward(self, input_ids: torch.Tensor, **kwargs: object) -> SimpleNamespace:
        return SimpleNamespace(logits=self.table[input_ids])  # (B, L, V)


def _llama(vocab: int = 16) -> LlamaForCausalLM:
    torch.manual_seed(0)
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


def _gpt2(vocab: int = 16) -> GPT2LMHeadModel:
    torch.manual_seed(0)
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


def test_bigram_alignment_by_hand() -> None:
    # V = 3. Row v of the table is the logits after token v. Prompt [2, 0], response [1, 2]:
    #   response token 0 (=1) is scored by the logits at the last prompt token (0): row 0,
    #   response token 1 (=2) by the logits at response token 0 (=1): row 1.
    table = torch.tensor(
        [
            [0.0, math.log(3.0), 0.0],  # after 0: probs 1/5, 3/5, 1/5
            [0.0, 0.0, math.log(2.0)],  # after 1: probs 1/4, 1/4, 2/4
            [5.0, 5.0, 5.0],  # after 2: uniform
        ]
    )
    model = BigramLM(table)
    out = forward_response(
        model,
        torch.tensor([[2, 0]]),
        torch.tensor([[True, True]]),
        torch.tensor([[1, 2]]),
        torch.tensor([[True, True]]),
    )
    expected = torch.tensor([[math.log(3 / 5), math.log(2 / 4)]])
    torch.testing.assert_close(out.logprobs, expected, atol=1e-6, rtol=0)
    assert out.entropy is None and out.hidden is None


def test_bigram_temperature_entropy_and_mask() -> None:
    # After token 0 the logits are [0, ln 4]; at T = 2 they become [0, ln 2]: probs 1/3, 2/3.
    table = torch.tensor([[0.0, math.log(4.0)], [0.0, 0.0]])
    model = BigramLM(table)
    out = forward_response(
        model,
        torch.tensor([[0]]),
        torch.tensor([[True]]),
        torch.tensor([[1, 0]]),
        torch.tensor([[True, False]]),  # second response position is padding
        temperature=2.0,
        with_entropy=True,
    )
    h = -(1 / 3) * math.log(1 / 3) - (2 / 3) * math.log(2 / 3)  # = 0.6365
    torch.testing.assert_close(out.logprobs, torch.tensor([[math.log(2 / 3), 0.0]]))
    torch.testing.assert_close(out.entropy, torch.tensor([[h, 0.0]]))


def test_bigram_gradient_flows_only_to_scored_rows() -> None:
    table = torch.randn(4, 4, generator=torch.Generator().manual_seed(1))
    model = BigramLM(table)
    out = forward_response(
        model,
        torch.tensor([[3, 1]]),
        torch.tensor([[True, True]]),
        torch.tensor([[2, 0]]),
        torch.tensor([[True, False]]),
    )
    out.logprobs.sum().backward()
    # Only the logits after token 1 (row 1) score an unmasked response token:
    # d log softmax(z)[2] / dz = onehot(2) - softmax(z).
    expected_row = torch.nn.functional.one_hot(torch.tensor(2), 4) - torch.softmax(table[1], -1)
    torch.testing.assert_close(model.table.grad[1], expected_row)
    assert model.table.grad[[0, 2, 3]].abs().max().item() == 0.0


def _reference_logprobs(model: nn.Module, ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """Plain full-sequence log-softmax, shifted by one: (L - 1,) log-probs of tokens 1..L-1."""
    logits = model(input_ids=ids.unsqueeze(0)).logits[0] / temperature  # (L, V)
    logp = torch.log_softmax(logits, dim=-1)[:-1]
    return logp.gather(1, ids[1:].unsqueeze(1)).squeeze(1)


@pytest.mark.parametrize("build", [_llama, _gpt2], ids=["llama-rope", "gpt2-learned-pos"])
def test_padding_invariance_and_plain_forward(build) -> None:
    model = build()
    temperature = 0.7
    seq_a = ([3, 4, 5], [6, 7, 8, 9])  # (prompt, response)
    seq_b = ([1, 2, 3, 4, 5], [10, 11])
    # Batch: prompts left-padded to 5, responses right-padded to 4 (pad id 0).
    prompt_ids = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 3, 4, 5]])
    prompt_mask = prompt_ids.ne(0) | torch.tensor([[False] * 5, [True] * 5])
    response_ids = torch.tensor([[6, 7, 8, 9], [10, 11, 0, 0]])
    response_mask = torch.tensor([[True] * 4, [True, True, False, False]])
    with torch.no_grad():
        batch = forward_response(
            model,
            prompt_ids,
            prompt_mask,
            response_ids,
            response_mask,
            temperature=temperature,
            with_entropy=True,
            with_hidden=True,
        )
        for row, (prompt, resp) in enumerate((seq_a, seq_b)):
            alone = forward_response(
                model,
                torch.tensor([prompt]),
                torch.ones(1, len(prompt), dtype=torch.bool),
                torch.tensor([resp]),
                torch.ones(1, len(resp), dtype=torch.bool),
                temperature=temperature,
                with_entropy=True,
                with_hidden=True,
            )
            n = len(resp)
            torch.testing.assert_close(
                batch.logprobs[row, :n], alone.logprobs[0], atol=1e-5, rtol=0
            )
            torch.testing.assert_close(batch.entropy[row, :n], alone.entropy[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(batch.hidden[row, :n], alone.hidden[0], atol=1e-5, rtol=0)
            # The unpadded sequence against a plain shifted log-softmax (no slicing tricks).
            ref = _reference_logprobs(model, torch.tensor(prompt + resp), temperature)
            torch.testing.assert_close(alone.logprobs[0], ref[len(prompt) - 1 :], atol=1e-5, rtol=0)
    assert batch.logprobs[1, 2:].abs().max().item() == 0.0
    assert batch.entropy[1, 2:].abs().max().item() == 0.0
    assert batch.hidden[1, 2:].abs().max().item() == 0.0


def test_hidden_is_the_state_that_predicts_each_token() -> None:
    model = _llama()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        full = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]  # (1, 5, H)
        out = forward_response(
            model,
            ids[:, :3],
            torch.ones(1, 3, dtype=torch.bool),
            ids[:, 3:],
            torch.ones(1, 2, dtype=torch.bool),
            with_hidden=True,
        )
    # Response tokens 8, 9 sit at positions 3, 4; the states before them are positions 2, 3.
    torch.testing.assert_close(out.hidden[0], full[0, 2:4], atol=1e-6, rtol=0)


def test_gradient_flows_through_a_real_model() -> None:
    model = _llama()
    out = forward_response(
        model,
        torch.tensor([[1, 2, 3]]),
        torch.ones(1, 3, dtype=torch.bool),
        torch.tensor([[4, 5]]),
        torch.ones(1, 2, dtype=torch.bool),
    )
    out.logprobs.sum().backward()
    assert model.lm_head.weight.grad is not None
    assert model.lm_head.weight.grad.abs().sum().item() > 0.0


def test_forward_rollout_matches_forward_response() -> None:
    model = _llama()
    rollout = Rollout(
        prompt_ids=torch.tensor([[0, 1, 2]]),
        prompt_mask=torch.tensor([[False, True, True]]),
        response_ids=torch.tensor([[3, 4]]),
        response_mask=torch.tensor([[True, True]]),
        logprobs=torch.zeros(1, 2),
        finish_reason=torch.tensor([FINISH_EOS]),
        group_ids=torch.tensor([0]),
    )
    with torch.no_grad():
        a = forward_rollout(model, rollout, temperature=0.5)
        b = forward_response(
            model,
            rollout.prompt_ids,
            rollout.prompt_mask,
            rollout.response_ids,
            rollout.response_mask,
            temperature=0.5,
        )
    assert torch.equal(a.logprobs, b.logprobs)


def test_errors_name_the_problem() -> None:
    model = _llama()
    with pytest.raises(ValueError, match="left-padded"):
        forward_response(
            model,
            torch.tensor([[1, 0]]),
            torch.tensor([[True, False]]),  # right-padded prompt
            torch.tensor([[2]]),
            torch.tensor([[True]]),
        )
    with pytest.raises(ValueError, match="response_mask"):
        forward_response(
            model,
            torch.tensor([[1]]),
            torch.tensor([[True]]),
            torch.tensor([[2, 3]]),
            torch.tensor([[True]]),
        )
    with pytest.raises(ValueError, match="hidden_states"):
        forward_response(
            BigramLM(torch.zeros(4, 4)),
            torch.tensor([[1]]),
            torch.tensor([[True]]),
            torch.tensor([[2]]),
            torch.tensor([[True]]),
            with_hidden=True,
        )
