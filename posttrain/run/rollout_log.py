"""Sampled rollouts written to `<run_dir>/rollouts.jsonl`, for the run viewer and debugging.

One JSON line per rollout: step, group, prompt and response text, reward, and per-token
token ids, sampling log-probs, reference log-probs (when a reference exists) and advantages.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from posttrain.rollout.types import Rollout


def _row(values: torch.Tensor | None, i: int, length: int) -> list[float] | None:
    if values is None:
        return None
    return [round(float(v), 6) for v in values[i, :length]]


class RolloutLog:
    """Appends rollout records; `truncate_after(step)` keeps the file consistent on resume."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "rollouts.jsonl"

    def write(
        self,
        step: int,
        rollout: Rollout,
        prompts: Sequence[str],
        responses: Sequence[str],
        rewards: torch.Tensor,
        advantages: torch.Tensor,
        ref_logprobs: torch.Tensor | None = None,
    ) -> None:
        """Append the B rollouts of `step`: prompts (B,) and responses (B,) as text, rewards
        (B,), advantages (B, T), ref_logprobs (B, T) or None."""
        lengths = rollout.response_mask.sum(dim=1).tolist()
        with self.path.open("a", encoding="utf-8") as fh:
            for i, length in enumerate(lengths):
                record = {
                    "step": step,
                    "group": int(rollout.group_ids[i]),
                    "prompt": prompts[i],
                    "response": responses[i],
                    "reward": None if torch.isnan(rewards[i]) else float(rewards[i]),
                    "tokens": rollout.response_ids[i, :length].tolist(),
                    "logprobs": _row(rollout.logprobs, i, length),
                    "ref_logprobs": _row(ref_logprobs, i, length),
                    "advantages": _row(advantages, i, length),
                }
                fh.write(json.dumps(record) + "\n")

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after `step` (written by a run that was then interrupted)."""
        if not self.path.exists():
            return
        lines = self.path.read_bytes().split(b"\n")
        # The last piece is b"" after a complete line; otherwise a kill cut a record short
        # (possibly inside a UTF-8 character): it belongs to an unfinished step, drop it.
        kept = [
            line
            for line in lines[:-1]
            if line.strip() and json.loads(line.decode("utf-8"))["step"] <= step
        ]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(b"".join(line + b"\n" for line in kept))
        os.replace(tmp, self.path)  # a kill during the rewrite leaves the old file whole
