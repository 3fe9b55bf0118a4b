"""Turning an Example into the text a policy sees: plain for tiny models, chat for instruct ones."""

from __future__ import annotations

from typing import Any

from posttrain.tasks.base import Example


def format_prompt(example: Example, tokenizer: Any, chat: bool) -> str:
    """The prompt text for `example`.

    Args:
        example: the task example.
        tokenizer: a Hugging Face tokenizer (only used when `chat`; may be None otherwise).
        chat: False -> `example.prompt` unchanged (the task's plain format); True -> the
            tokenizer's chat template applied to one user message, with the assistant turn
            opened (`add_generation_prompt=True`). The message is `meta["chat_prompt"]` when the
            example has one (a natural-language version of the prompt), else `example.prompt`.

    Returns:
        The prompt string; tokenise it without adding special tokens again in chat mode (the
        template already contains them).
    """
    if not chat:
        return example.prompt
    if tokenizer is None or not hasattr(tokenizer, "apply_chat_template"):
        raise ValueError("format_prompt(chat=True) needs a tokenizer with apply_chat_template")
    if getattr(tokenizer, "chat_template", "") is None:
        raise ValueError(
            f"tokenizer {type(tokenizer).__name__} has no chat template; use chat=False "
            "(the plain format) for base and tiny models"
        )
    content = example.meta.get("chat_prompt", example.prompt)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    if not isinstance(text, str):
        raise TypeError(f"apply_chat_template returned {type(text).__name__}, expected str")
    return text
