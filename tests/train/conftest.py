"""Small, fast configs for the training-loop tests (tiny models, a few steps, 1 thread)."""

from __future__ import annotations

from pathlib import Path

import pytest

from posttrain.tasks.base import Example, Status, Verdict
from posttrain.train.configs import (
    AlgoConfig,
    BatchConfig,
    HealthConfig,
    LMConfig,
    ModelConfig,
    OptimConfig,
    RLConfig,
    RunConfig,
    TaskConfig,
)


def first_char_is_digit(example: Example, text: str) -> Verdict:
    """A toy reward a random 80-token policy earns about 10/80 of the time: learnable in a few
    steps from random init, unlike sorting."""
    return Verdict(float(text[:1].isdigit()), Status.OK)


def rl_config(run_dir: Path, **algo: object) -> RLConfig:
    """GRPO-shaped RL on sorting 3 digits with the ~1M tiny model: 4 prompts × 4 samples."""
    return RLConfig(
        model=ModelConfig(spec="tiny:tiny"),
        task=TaskConfig(name="sorting", n=3, reward="partial", num_eval=16),
        optim=OptimConfig(lr=1e-3),
        run=RunConfig(dir=str(run_dir), save_every=3, keep_last=5, threads=1, log_rollouts_every=1),
        algo=AlgoConfig(**algo),
        batch=BatchConfig(prompts_per_step=4, group_size=4, micro_batch_size=8),
        # A random-init model rarely emits <eos>: truncation is expected here, not a fault.
        health=HealthConfig(stop_when_all_truncated=False),
        steps=6,
        eval_examples=8,
    )


def lm_config(run_dir: Path) -> LMConfig:
    """SFT on sorting 3 digits, batch 8, 6 steps."""
    return LMConfig(
        model=ModelConfig(spec="tiny:tiny"),
        task=TaskConfig(name="sorting", n=3, num_eval=16),
        optim=OptimConfig(lr=3e-3),
        run=RunConfig(dir=str(run_dir), save_every=3, keep_last=5, threads=1),
        steps=6,
        batch_size=8,
        micro_batch_size=4,
    )


@pytest.fixture
def make_rl_config():
    return rl_config


@pytest.fixture
def make_lm_config():
    return lm_config
