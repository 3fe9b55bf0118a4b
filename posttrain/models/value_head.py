"""A scalar head on a language model's last hidden state: V_φ(s_t) for actor-critic/PPO, and
the score r_φ(x, y) of a reward model.

Shape legend: B batch, T positions, H hidden size.
"""

from __future__ import annotations

import torch
from torch import nn


class ValueHead(nn.Module):
    """A linear map from a hidden state to one number: value(h) = w·h + b.

    The weight and bias start at zero. Then every state's value is 0 at step 0, so the first
    advantages A = r − V are the raw rewards instead of rewards minus random noise from an untrained
    critic, and a reward model starts by scoring every response 0 (Bradley–Terry probability ½).
    A zero weight also means no value-loss gradient reaches a shared trunk on the very first
    step; the head's own gradient (∂value/∂w = h) is non-zero, so it learns from step one.

    The head keeps its own dtype (fp32 by default) and casts the hidden state to it, so a value
    computed on a bf16 model is still regressed in fp32. Its parameters are two plain tensors
    (`proj.weight` (1, H), `proj.bias` (1,)), safe to save with safetensors.
    """

    def __init__(self, hidden_size: int, *, zero_init: bool = True) -> None:
        super().__init__()
        if hidden_size <= 0:
            raise ValueError(f"ValueHead: hidden_size must be positive, got {hidden_size}")
        self.hidden_size = hidden_size
        self.proj = nn.Linear(hidden_size, 1)
        if zero_init:
            nn.init.zeros_(self.proj.weight)
            nn.init.zeros_(self.proj.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (B, T, H) (or any (..., H)) -> values (B, T) (or (...))."""
        if hidden.shape[-1] != self.hidden_size:
            raise ValueError(
                f"ValueHead: hidden state has size {hidden.shape[-1]} in its last dimension, "
                f"expected hidden_size={self.hidden_size}"
            )
        return self.proj(hidden.to(self.proj.weight.dtype)).squeeze(-1)  # (B, T, 1) -> (B, T)
