"""Text ↔ token ids at the sampler's edges: left-padded prompt batches in, response text out.

Shape legend: N prompts, P prompt tokens (left-padded), B rollouts, T response tokens.

The trainer never re-tokenises a response (CORR-6): the Rollout carries the ids, and the text
from `decode_responses` is only for verifiers and logs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from posttrain.rollout.types import FINISH_EOS, Rollout


def encode_prompts(tokenizer: Any, texts: list[str], add_bos: bool = True) -> tuple[Tensor, Tensor]:
    """Tokenise prompts and left-pad them into one batch.

    Each text is encoded with `tokenizer(text, add_special_tokens=False)`, and the BOS id is
    prepended by hand when `add_bos` and the tokenizer has one, so chat-templated text (which
    may already start with its own markers) is tokenised exactly as written.

    Args:
        tokenizer: a transformers tokenizer (or anything with `__call__` returning
            `input_ids`, `pad_token_id`, `bos_token_id`).
        texts: N prompt strings.
        add_bos: prepend `tokenizer.bos_token_id` when it is not None.
    Returns:
        (ids (N, P) long, mask (N, P) bool), left-padded with `tokenizer.pad_token_id`.
    """
    if not texts:
        raise ValueError("encode_prompts: texts is empty")
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        raise ValueError(
            f"encode_prompts: {type(tokenizer).__name__} has no pad_token_id; set one (often "
            "the EOS id) before batching prompts"
        )
    bos = getattr(tokenizer, "bos_token_id", None) if add_bos else None
    rows: list[list[int]] = []
    for i, text in enumerate(texts):
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if bos is not None:
            ids = [bos, *ids]
        if not ids:
            raise ValueError(f"encode_prompts: texts[{i}] encodes to no tokens: {text!r}")
        rows.append(ids)
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, ids in enumerate(rows):
        out[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[i, width - len(ids) :] = True
    return out, mask


def decode_responses(tokenizer: Any, rollout: Rollout) -> list[str]:
    """Response text of every row: masked positions and the final stop token dropped.

    The stop token is found by position (the last unmasked token of a row that finished with
    FINISH_EOS), not by id, so it is dropped even when it is also the pad id; other special
    tokens in the middle of a response are decoded as they are.

    Returns:
        B strings, in row order.
    """
    lengths = rollout.response_mask.sum(dim=1).tolist()  # (B,)
    ended = (rollout.finish_reason == FINISH_EOS).tolist()
    ids = rollout.response_ids.tolist()
    texts = []
    for row, n, eos in zip(ids, lengths, ended, strict=True):
        keep = row[: n - 1] if eos and n > 0 else row[:n]
        texts.append(tokenizer.decode(keep))
    return texts
