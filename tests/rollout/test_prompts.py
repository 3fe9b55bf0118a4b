"""encode_prompts / decode_responses with a small word-level tokenizer built in memory."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import PreTrainedTokenizerFast

from posttrain.rollout import FINISH_EOS, FINISH_LENGTH, Rollout, decode_responses, encode_prompts

VOCAB = {"<pad>": 0, "<bos>": 1, "<eos>": 2, "a": 3, "b": 4, "c": 5, "<|user|>": 6}


def _tokenizer(pad: str | None = "<pad>", bos: str | None = "<bos>") -> PreTrainedTokenizerFast:
    core = Tokenizer(WordLevel(VOCAB, unk_token="<pad>"))
    core.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=pad, bos_token=bos, eos_token="<eos>"
    )


def test_encode_left_pads_and_prepends_bos() -> None:
    ids, mask = encode_prompts(_tokenizer(), ["a b c", "c"])
    assert ids.tolist() == [[1, 3, 4, 5], [0, 0, 1, 5]]
    assert mask.tolist() == [[True] * 4, [False, False, True, True]]
    assert ids.dtype == torch.long and mask.dtype == torch.bool


def test_encode_without_bos_and_chat_markers_kept() -> None:
    ids, mask = encode_prompts(_tokenizer(), ["<|user|> a", "b"], add_bos=False)
    assert ids.tolist() == [[6, 3], [0, 4]]
    assert mask.tolist() == [[True, True], [False, True]]
    # A tokenizer without a BOS token gets none even with add_bos=True.
    ids, _ = encode_prompts(_tokenizer(bos=None), ["a"])
    assert ids.tolist() == [[3]]


def test_encode_errors() -> None:
    with pytest.raises(ValueError, match="pad_token_id"):
        encode_prompts(_tokenizer(pad=None), ["a"])
    with pytest.raises(ValueError, match=r"texts\[1\] encodes to no tokens"):
        encode_prompts(_tokenizer(bos=None), ["a", ""])


def test_decode_drops_mask_and_stop_token_even_when_pad_is_eos() -> None:
    rollout = Rollout(
        prompt_ids=torch.ones(3, 1, dtype=torch.long),
        prompt_mask=torch.ones(3, 1, dtype=torch.bool),
        # row 0: "a b" then EOS; row 1: truncated "c c c"; row 2: EOS at once, pad = EOS = 2
        response_ids=torch.tensor([[3, 4, 2], [5, 5, 5], [2, 2, 2]]),
        response_mask=torch.tensor([[True, True, True], [True, True, True], [True, False, False]]),
        logprobs=torch.zeros(3, 3),
        finish_reason=torch.tensor([FINISH_EOS, FINISH_LENGTH, FINISH_EOS]),
        group_ids=torch.tensor([0, 1, 2]),
    )
    assert decode_responses(_tokenizer(), rollout) == ["a b", "c c c", ""]
