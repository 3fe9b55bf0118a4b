"""posttrain: post-train language models with reinforcement learning, from first principles."""

from __future__ import annotations

import torch as _torch

__version__ = "0.1.0"

_MIN_TORCH = (2, 10)


def _check_torch_floor(version: str) -> None:
    """Refuse torch releases with known unsafe-deserialisation CVEs (< 2.10)."""
    parts = []
    for piece in version.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    if tuple(parts) < _MIN_TORCH:
        raise ImportError(
            f"posttrain needs torch >= {_MIN_TORCH[0]}.{_MIN_TORCH[1]} "
            f"(older releases load checkpoints unsafely); found torch {version}"
        )


_check_torch_floor(_torch.__version__)
