"""Typed configs of the preference stages: reward model, DPO/IPO, and RLHF (PPO against a reward
model). Defaults live here and only here; the shared sections come from `configs.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from posttrain.train.configs import (
    AlgoConfig,
    ModelConfig,
    OptimConfig,
    RLConfig,
    RunConfig,
    TaskConfig,
)


@dataclass
class PairsConfig:
    """Where the preference pairs come from: a JSONL file, or samples labelled by a task's
    hidden annotators (the "preference" task)."""

    path: str | None = None
    """Training pairs: a JSONL file with "prompt", "chosen", "rejected". None: sample them from
    `sample_from` on the task's training prompts and label them with the task's annotators."""
    eval_path: str | None = None
    """Held-out pairs JSONL. None: the last `eval_fraction` of `path`, or (when sampling)
    pairs sampled on the task's held-out prompts."""
    eval_fraction: float = 0.1
    """Share of `path` held out when `eval_path` is None."""
    sample_from: str | None = None
    """Model directory that samples the pairs (None: this stage's `model.init_from`)."""
    num_train: int = 2000
    """Training pairs to sample (ties are skipped)."""
    num_eval: int = 200
    """Held-out pairs to sample."""
    label_noise: float = 0.1
    """Probability that a sampled *training* pair's label is flipped (annotators disagree);
    held-out pairs are labelled without noise, so their accuracy measures the rule learned."""
    temperature: float = 1.0
    """Sampling temperature of the two responses of a pair."""
    seed: int = 0
    """Seed of the sampling and of the label noise."""

    def validate(self) -> None:
        if not 0.0 <= self.label_noise <= 1.0:
            raise ValueError(f"label_noise: must be in [0, 1], got {self.label_noise}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction: must be in (0, 1), got {self.eval_fraction}")
        if self.num_train < 1 or self.num_eval < 1:
            raise ValueError("num_train and num_eval: must be >= 1")
        if self.temperature <= 0:
            raise ValueError(f"temperature: must be > 0, got {self.temperature}")


def refuse_fsdp(run: RunConfig, stage: str) -> None:
    """The reward-model and DPO stages honour `run.device` and `run.precision` and run data
    parallel under torchrun (a full replica per rank), but do not shard: refuse `run.fsdp`
    rather than silently ignore it."""
    if run.fsdp:
        raise ValueError(
            f"run.fsdp: the {stage} stage keeps a full replica on every rank and does not shard; "
            "set run.fsdp=false (it still runs data parallel under torchrun; FSDP is for the RL "
            "and LM stages)"
        )


def _preference_task() -> TaskConfig:
    return TaskConfig(name="preference")


@dataclass
class RewardModelConfig:
    """A Bradley–Terry reward model: an LM trunk with a scalar head on the last response token."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The trunk: usually the SFT model (`init_from`), whose hidden states the head reads."""
    task: TaskConfig = field(default_factory=_preference_task)
    """The task whose prompts (and annotators) the sampled pairs use."""
    pairs: PairsConfig = field(default_factory=PairsConfig)
    """The preference pairs."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-4))
    """Optimizer and learning-rate schedule (trunk and head together)."""
    run: RunConfig = field(default_factory=lambda: RunConfig(dir="runs/rm"))
    """Run directory, checkpoints and resume."""
    steps: int = 200
    """Optimizer steps."""
    batch_size: int = 32
    """Pairs per optimizer step."""
    micro_batch_size: int = 32
    """Pairs per forward/backward (gradient accumulation when smaller)."""
    eval_every: int = 50
    """Held-out pair accuracy every this many steps (0: only at the end)."""
    seed: int = 0
    """Seed of the pair order."""

    def validate(self) -> None:
        for name in ("steps", "batch_size", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"micro_batch_size: {self.micro_batch_size} does not divide batch_size="
                f"{self.batch_size}"
            )
        if self.eval_every < 0:
            raise ValueError(f"eval_every: must be >= 0, got {self.eval_every}")
        refuse_fsdp(self.run, "reward-model")


@dataclass
class DPOConfig:
    """DPO or IPO: preference pairs straight into the policy, against a frozen reference."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy; the frozen reference is a copy of it at the start (usually the SFT model)."""
    task: TaskConfig = field(default_factory=_preference_task)
    """The task: prompts for sampled pairs, and the held-out split scored at the end."""
    pairs: PairsConfig = field(default_factory=PairsConfig)
    """The preference pairs."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4))
    """Optimizer and learning-rate schedule."""
    run: RunConfig = field(default_factory=lambda: RunConfig(dir="runs/dpo"))
    """Run directory, checkpoints and resume."""
    loss: Literal["dpo", "ipo"] = "dpo"
    """dpo: −log σ(β·h) (Rafailov et al. 2023); ipo: (h − 1/(2τ))² (Azar et al. 2023)."""
    beta: float = 0.1
    """β of DPO, or τ of IPO: usually 0.1 to 0.5; larger keeps the policy nearer the reference."""
    ref_cache_dir: str | None = None
    """Where reference log-probs are cached, keyed by the pairs' and the reference's hashes
    (None: the run directory). Runs sharing pairs and reference can share one directory."""
    steps: int = 200
    """Optimizer steps."""
    batch_size: int = 32
    """Pairs per optimizer step."""
    micro_batch_size: int = 32
    """Pairs per forward/backward (gradient accumulation when smaller)."""
    eval_every: int = 50
    """Held-out implicit-reward accuracy every this many steps (0: only at the end)."""
    eval_examples: int = 200
    """Held-out prompts scored with the task's verifier at the end (greedy)."""
    seed: int = 0
    """Seed of the pair order."""

    def validate(self) -> None:
        if not self.beta > 0:
            raise ValueError(f"beta: must be > 0, got {self.beta}")
        for name in ("steps", "batch_size", "micro_batch_size", "eval_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"micro_batch_size: {self.micro_batch_size} does not divide batch_size="
                f"{self.batch_size}"
            )
        if self.eval_every < 0:
            raise ValueError(f"eval_every: must be >= 0, got {self.eval_every}")
        refuse_fsdp(self.run, self.loss.upper())


@dataclass
class RLHFConfig(RLConfig):
    """PPO (or any preset) against a learned reward model instead of a verifier. The task's
    verifier still runs on every sample, logged as `true/*`: the hidden score the reward model
    stands in for."""

    task: TaskConfig = field(default_factory=_preference_task)
    """The task: prompts, and the hidden true score logged beside the learned reward."""
    algo: AlgoConfig = field(default_factory=lambda: AlgoConfig(preset="ppo"))
    """The algorithm (PPO: value head, GAE, KL to the reference in the reward)."""
    reward_model: str = ""
    """The reward model directory written by `posttrain rm` (its `final/`)."""
    normalize_reward: bool = True
    """Standardise the reward model's scores with the mean and std it had on held-out
    responses, so kl_coef means the same whatever the reward model's scale."""

    def validate(self) -> None:
        super().validate()
        if not self.reward_model:
            raise ValueError("reward_model: give the reward model's directory (rm run's final/)")
