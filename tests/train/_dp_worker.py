"""Worker for the data-parallel tests: `python -m torch.distributed.run ... _dp_worker.py KIND DIR [RESUME]`."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from conftest import first_char_is_digit, lm_config, rl_config  # noqa: E402

from posttrain.run.distributed import shutdown  # noqa: E402
from posttrain.train.configs import ModelConfig, OptimConfig, RunConfig  # noqa: E402
from posttrain.train.dpo import DPOTrainer  # noqa: E402
from posttrain.train.lm import LMTrainer  # noqa: E402
from posttrain.train.policy_gradient import PolicyGradientTrainer  # noqa: E402
from posttrain.train.preference_configs import (  # noqa: E402
    DPOConfig,
    PairsConfig,
    RewardModelConfig,
)
from posttrain.train.reward_model import RewardModelTrainer  # noqa: E402
from posttrain.train.rl_batch import VerifierReward  # noqa: E402


def pair_files(root: Path) -> PairsConfig:
    """72 training pairs (two 64-pair reference chunks for DPO, so both ranks compute one) and
    16 held-out ones: chosen even digits, rejected odd. Every rank writes the same bytes
    through its own temporary file, so concurrent writers cannot tear a file."""
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    paths = root / "train.jsonl", root / "eval.jsonl"
    for path, n in zip(paths, (72, 16), strict=True):
        rows = [
            {
                "prompt": f"digits {rng.choice('abc')}{rng.choice('xyz')}q:",
                "chosen": "".join(rng.choice("02468") for _ in range(rng.randint(2, 5))),
                "rejected": "".join(rng.choice("13579") for _ in range(rng.randint(2, 5))),
            }
            for _ in range(n)
        ]
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, path)
    return PairsConfig(path=str(paths[0]), eval_path=str(paths[1]))


def preference_fields(run_dir: Path) -> dict:
    """What the rm and dpo runs share: 6 steps of 8 pairs in micro-batches of 4 (one rank's
    share at world size 2, so the sums are bit-equal; see the RL note below), a held-out pass
    every 3 steps."""
    return {
        "model": ModelConfig(spec="tiny:tiny"),
        "pairs": pair_files(run_dir.parent / "pairs"),
        "optim": OptimConfig(lr=1e-3),
        "run": RunConfig(dir=str(run_dir), save_every=3, keep_last=5, threads=1),
        "steps": 6,
        "batch_size": 8,
        "micro_batch_size": 4,
        "eval_every": 3,
    }


def main() -> None:
    kind, run_dir = sys.argv[1], Path(sys.argv[2])
    resume = sys.argv[3] if len(sys.argv) > 3 else None
    torch.set_num_threads(1)
    if kind == "sft":
        cfg = lm_config(run_dir)
        cfg.run.resume = resume
        LMTrainer(cfg).train()
    elif kind == "rm":
        cfg = RewardModelConfig(**preference_fields(run_dir))
        cfg.run.resume = resume
        RewardModelTrainer(cfg).train()
    elif kind == "dpo":
        cfg = DPOConfig(**preference_fields(run_dir), eval_examples=4)
        cfg.run.resume = resume
        DPOTrainer(cfg).train()
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
