"""The `Rollout` batch: the one thing that crosses from sampling to training.

Shape legend: B rollouts (= prompts × group size, prompt-major), P prompt tokens
(left-padded), T response tokens (right-padded).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

FINISH_EOS = 0
"""`finish_reason` code: the response ended with a stop token (kept in the response mask)."""
FINISH_LENGTH = 1
"""`finish_reason` code: the response hit `max_new_tokens` without a stop token (truncated)."""


@dataclass
class Rollout:
    """A batch of sampled responses, laid out prompt-major: row i is sample i % G of prompt i // G.

    Attributes:
        prompt_ids: (B, P) long. Prompt tokens, left-padded with the pad id.
        prompt_mask: (B, P) bool. True on real prompt tokens.
        response_ids: (B, T) long. Sampled tokens, right-padded with the pad id after the
            first stop token.
        response_mask: (B, T) bool. True on sampled tokens up to and including the first stop
            token; False on padding after it.
        logprobs: (B, T) float32. log π_sample(token) under the sampling distribution (logits
            divided by the temperature, before top-k/top-p); 0 where the mask is False.
        finish_reason: (B,) long. FINISH_EOS or FINISH_LENGTH.
        group_ids: (B,) long. Index of the row's prompt within the batch (0 .. B/G - 1).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    finish_reason: torch.Tensor
    group_ids: torch.Tensor

    @property
    def batch_size(self) -> int:
        """B, the number of rollouts."""
        return self.response_ids.shape[0]

    @property
    def group_size(self) -> int:
        """G, the samples per prompt (rows are prompt-major, so this is B / #prompts)."""
        num_prompts = int(self.group_ids.max().item()) + 1 if self.batch_size else 1
        return self.batch_size // num_prompts

    def input_ids(self) -> torch.Tensor:
        """(B, P + T) prompt then response tokens."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    def attention_mask(self) -> torch.Tensor:
        """(B, P + T) long attention mask: 1 on real prompt and response tokens."""
        return torch.cat([self.prompt_mask, self.response_mask], dim=1).long()

    def position_ids(self) -> torch.Tensor:
        """(B, P + T) positions counted over real tokens only (cumsum(mask) - 1, clamped at 0),
        so a left-padded prompt gets the same positions as the same prompt unpadded."""
        mask = self.attention_mask()
        return (mask.cumsum(dim=1) - 1).clamp(min=0)

    def to(self, device: torch.device | str) -> Rollout:
        """A copy with every tensor moved to `device`."""
        return Rollout(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, index: torch.Tensor | slice) -> Rollout:
        """Rows `index` of every field (for mini/micro-batching). Group ids are kept as they
        were, so group bookkeeping survives any shuffling."""
        return Rollout(**{f.name: getattr(self, f.name)[index] for f in fields(self)})
