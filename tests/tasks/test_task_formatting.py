"""format_prompt: plain text unchanged; chat via the tokenizer's template with the chat prompt."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

from posttrain.tasks.base import Example
from posttrain.tasks.formatting import format_prompt
from posttrain.tasks.sorting import make_sorting_task

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tokenizer(template: str | None) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>"))
    )
    tok.chat_template = template
    return tok


def test_plain_is_the_prompt() -> None:
    ex = make_sorting_task(n=3).eval[0]
    assert format_prompt(ex, None, chat=False) == ex.prompt


def test_chat_uses_chat_prompt_and_opens_the_assistant_turn() -> None:
    ex = Example("31415=", "11345", {"chat_prompt": "Sort 3, 1, 4, 1, 5."})
    assert format_prompt(ex, tokenizer(TEMPLATE), chat=True) == (
        "<|user|>Sort 3, 1, 4, 1, 5.<|end|><|assistant|>"
    )
    plain = Example("What is 2 + 2?", "4")
    assert format_prompt(plain, tokenizer(TEMPLATE), chat=True) == (
        "<|user|>What is 2 + 2?<|end|><|assistant|>"
    )


def test_chat_without_template_is_a_clear_error() -> None:
    ex = Example("1+1=", "2")
    with pytest.raises(ValueError, match="no chat template"):
        format_prompt(ex, tokenizer(None), chat=True)
    with pytest.raises(ValueError, match="apply_chat_template"):
        format_prompt(ex, None, chat=True)
