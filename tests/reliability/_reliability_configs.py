"""Tiny, deterministic trainer configs shared by the reliability tests and the fault driver.

Four optimizer steps, a checkpoint every two (so a run has a first and a second save), one
kept checkpoint (rotation is exercised: a crash must never cost the only finished one), one
thread and deterministic kernels so that resumed and uninterrupted runs compare bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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

STEPS = 4
SAVE_EVERY = 2

TRAINERS = ("sft", "grpo", "ppo", "dpo", "rm")
"""sft: `LMTrainer`; grpo: one inner epoch; ppo: value head and two inner epochs; dpo:
`DPOTrainer` (cached reference log-probs); rm: `RewardModelTrainer` (trunk + head)."""

DATA = Path(__file__).resolve().parent / "data"
PAIRS = (DATA / "pairs_train.jsonl", DATA / "pairs_eval.jsonl")
"""16 + 4 preference pairs: even digits chosen over odd ones."""


def _run(run_dir: str | Path, resume: str | None) -> RunConfig:
    return RunConfig(
        dir=str(run_dir),
        resume=resume,
        save_every=SAVE_EVERY,
        keep_last=1,
        threads=1,
        log_rollouts_every=1,
        deterministic=True,
    )


def make_config(trainer: str, run_dir: str | Path, resume: str | None = None) -> Any:
    """The config of `trainer` (one of `TRAINERS`) writing to `run_dir`."""
    if trainer == "sft":
        return LMConfig(
            model=ModelConfig(spec="tiny:tiny"),
            task=TaskConfig(name="sorting", n=3, num_eval=8),
            optim=OptimConfig(lr=3e-3),
            run=_run(run_dir, resume),
            steps=STEPS,
            batch_size=8,
            micro_batch_size=4,
        )
    if trainer in ("dpo", "rm"):
        from posttrain.train.preference_configs import DPOConfig, PairsConfig, RewardModelConfig

        common = {
            "model": ModelConfig(spec="tiny:tiny"),
            "task": TaskConfig(name="preference", num_eval=4),
            "pairs": PairsConfig(path=str(PAIRS[0]), eval_path=str(PAIRS[1])),
            "optim": OptimConfig(lr=1e-3),
            "run": _run(run_dir, resume),
            "steps": STEPS,
            "batch_size": 4,
            "micro_batch_size": 2,
            "eval_every": 0,
        }
        if trainer == "dpo":
            return DPOConfig(**common, eval_examples=4)
        return RewardModelConfig(**common)
    algo = {
        "grpo": AlgoConfig(preset="grpo", kl_coef=0.05),
        "ppo": AlgoConfig(preset="ppo", epochs=2),
    }
    if trainer not in algo:
        raise ValueError(f"trainer: expected one of {TRAINERS}, got {trainer!r}")
    return RLConfig(
        model=ModelConfig(spec="tiny:tiny"),
        task=TaskConfig(name="sorting", n=3, reward="partial", num_eval=8),
        optim=OptimConfig(lr=1e-3),
        run=_run(run_dir, resume),
        algo=algo[trainer],
        batch=BatchConfig(prompts_per_step=4, group_size=4, mini_batches=2, micro_batch_size=4),
        # A random-init model rarely emits <eos>: truncation is expected here, not a fault.
        health=HealthConfig(stop_when_all_truncated=False),
        steps=STEPS,
        eval_examples=4,
    )


def digit_fraction(example: Example, text: str) -> Verdict:
    """Reward = share of digits in the response. A random policy earns different amounts on
    each sample (sorting's own reward is 0 for all of them, so nothing would be learnt and
    the weights of a resumed run would match the reference trivially)."""
    return Verdict(sum(c.isdigit() for c in text) / max(len(text), 1), Status.OK)


def make_trainer(trainer: str, run_dir: str | Path, resume: str | None = None, **kwargs: Any):
    """Build the trainer for `make_config(trainer, run_dir, resume)`; `kwargs` go to its
    constructor (``task=``, ``reward=``; RL trainers default to the `digit_fraction` reward)."""
    cfg = make_config(trainer, run_dir, resume)
    if trainer == "sft":
        from posttrain.train.lm import LMTrainer

        return LMTrainer(cfg, **kwargs)
    if trainer == "dpo":
        from posttrain.train.dpo import DPOTrainer

        return DPOTrainer(cfg, **kwargs)
    if trainer == "rm":
        from posttrain.train.reward_model import RewardModelTrainer

        return RewardModelTrainer(cfg, **kwargs)
    from posttrain.train.policy_gradient import PolicyGradientTrainer
    from posttrain.train.rl_batch import VerifierReward

    kwargs.setdefault("reward", VerifierReward(digit_fraction))
    return PolicyGradientTrainer(cfg, **kwargs)
