"""Worker for the data-parallel tests: `python -m torch.distributed.run ... _dp_worker.py KIND DIR [RESUME]`."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from conftest import first_char_is_digit, lm_config, rl_config  # noqa: E402

from posttrain.run.distributed import shutdown  # noqa: E402
from posttrain.train.lm import LMTrainer  # noqa: E402
from posttrain.train.policy_gradient import PolicyGradientTrainer  # noqa: E402
from posttrain.train.rl_batch import VerifierReward  # noqa: E402


def main() -> None:
    kind, run_dir = sys.argv[1], Path(sys.argv[2])
    resume = sys.argv[3] if len(sys.argv) > 3 else None
    torch.set_num_threads(1)
    if kind == "sft":
        cfg = lm_config(run_dir)
        cfg.run.resume = resume
        LMTrainer(cfg).train()
    else:
        cfg = rl_config(run_dir, preset="grpo")
        cfg.batch.mini_batches = 2  # whole groups per mini-batch, identical for any world size
        # Micro-batches of 4 rows: one rank's share of a mini-batch at world size 2, so one
        # process accumulates the same two partial gradients the all-reduce sums (bit-equal
        # here; with 8-row micro-batches the one-GEMM sum rounds differently, ~1e-5 after Adam).
        cfg.batch.micro_batch_size = 4
        cfg.run.resume = resume
        PolicyGradientTrainer(cfg, reward=VerifierReward(first_char_is_digit)).train()
    shutdown()


if __name__ == "__main__":
    main()
