"""The resolved algorithm (a preset plus overrides) and the batch plan, both checked up front.

Nothing here branches on a preset's name: a preset is a row of data, and the loop reads the
resolved knobs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from posttrain.algorithms.advantages import SEQUENCE_ADVANTAGES
from posttrain.algorithms.aggregation import AGGREGATIONS
from posttrain.algorithms.kl import KL_ESTIMATORS
from posttrain.algorithms.losses import POLICY_LOSSES
from posttrain.algorithms.presets import CRITIC_ADVANTAGES, PRESETS, AlgorithmPreset
from posttrain.config import ConfigError
from posttrain.train.configs import AlgoConfig, BatchConfig

TOKEN_ADVANTAGES = CRITIC_ADVANTAGES
"""Per-token estimators computed from a value head (see `posttrain.train.rl_batch`)."""

GROUP_BASELINES = frozenset({"mean", "group", "dr_grpo", "rloo", "max"})
"""Sequence estimators whose baseline is a statistic of the prompt's group: they need G >= 2."""


@dataclass(frozen=True)
class Algorithm:
    """The knobs the loop reads: a preset with the config's overrides applied."""

    advantage: str
    loss: str
    loss_agg: str
    epochs: int
    clip_eps_low: float
    clip_eps_high: float
    kl_placement: str
    kl_estimator: str
    kl_coef: float
    gamma: float
    lam: float
    value_head: bool


def resolve_algorithm(cfg: AlgoConfig) -> Algorithm:
    """The preset named by `cfg.preset` with every non-None override applied, validated."""
    preset: AlgorithmPreset = PRESETS[cfg.preset]

    def pick(name: str, preset_value):
        value = getattr(cfg, name)
        return preset_value if value is None else value

    low = pick("clip_eps_low", preset.clip_eps)
    algo = Algorithm(
        advantage=pick("advantage", preset.advantage),
        loss=pick("loss", preset.loss),
        loss_agg=pick("loss_agg", preset.loss_agg),
        epochs=pick("epochs", preset.epochs),
        clip_eps_low=low,
        clip_eps_high=pick("clip_eps_high", low),
        kl_placement=pick("kl_placement", preset.kl_placement),
        kl_estimator=pick("kl_estimator", preset.kl_estimator),
        kl_coef=pick("kl_coef", preset.kl_coef),
        gamma=pick("gamma", preset.gamma),
        lam=pick("lam", preset.lam),
        value_head=preset.value_head,
    )
    choices = {
        "advantage": (*SEQUENCE_ADVANTAGES, *TOKEN_ADVANTAGES),
        "loss": tuple(POLICY_LOSSES),
        "loss_agg": tuple(AGGREGATIONS),
        "kl_estimator": tuple(KL_ESTIMATORS),
    }
    for name, allowed in choices.items():
        if getattr(algo, name) not in allowed:
            raise ConfigError(
                f"algo.{name}: unknown {getattr(algo, name)!r}; choose from {allowed}"
            )
    if algo.advantage in TOKEN_ADVANTAGES and not algo.value_head:
        # A critic estimator needs a critic, whatever the preset said.
        algo = dataclasses.replace(algo, value_head=True)
    return algo


@dataclass(frozen=True)
class BatchPlan:
    """How one rollout batch is consumed.

    rollouts = prompts_per_step × group_size, sharded by prompt over `world_size` ranks. Each
    inner epoch splits the step's prompts into `mini_batches` optimizer steps (whole groups, a
    seeded permutation of prompts); on each rank a mini-batch's rows are accumulated over
    micro-batches of at most `micro_batch_size` rollouts.
    """

    prompts_per_step: int
    group_size: int
    rollouts: int
    epochs: int
    mini_batches: int
    mini_batch_size: int
    micro_batch_size: int
    world_size: int = 1

    @property
    def micro_steps(self) -> int:
        """Micro-batches per mini-batch on one rank when its prompts are spread evenly."""
        per_rank = self.mini_batch_size // self.world_size
        return max(1, -(-per_rank // self.micro_batch_size))

    @property
    def optimizer_steps_per_batch(self) -> int:
        """Optimizer steps taken on one rollout batch (epochs × mini-batches)."""
        return self.epochs * self.mini_batches

    def describe(self) -> str:
        """One line for the start of a run."""
        return (
            f"batch plan: {self.prompts_per_step} prompts × {self.group_size} samples = "
            f"{self.rollouts} rollouts/step over {self.world_size} rank(s) → {self.epochs} "
            f"epoch(s) × {self.mini_batches} mini-batch(es) of {self.mini_batch_size} → "
            f"~{self.micro_steps} micro-batch(es) of ≤ {self.micro_batch_size} per rank"
        )


def make_batch_plan(batch: BatchConfig, algo: Algorithm, world_size: int = 1) -> BatchPlan:
    """Check the batch arithmetic and return the plan; errors name the field to change."""
    if algo.advantage in GROUP_BASELINES and batch.group_size < 2:
        raise ConfigError(
            f"batch.group_size: the {algo.advantage!r} advantage needs a group of at least 2 "
            f"samples per prompt (got {batch.group_size}); raise batch.group_size or pick "
            "algo.advantage=none/batch_mean"
        )
    if batch.prompts_per_step % batch.mini_batches:
        raise ConfigError(
            f"batch.mini_batches: {batch.mini_batches} does not divide prompts_per_step="
            f"{batch.prompts_per_step} (mini-batches hold whole groups)"
        )
    if batch.prompts_per_step % world_size:
        raise ConfigError(
            f"batch.prompts_per_step: {batch.prompts_per_step} prompts cannot be split evenly "
            f"over {world_size} ranks; use a multiple of the world size"
        )
    rollouts = batch.prompts_per_step * batch.group_size
    return BatchPlan(
        prompts_per_step=batch.prompts_per_step,
        group_size=batch.group_size,
        rollouts=rollouts,
        epochs=algo.epochs,
        mini_batches=batch.mini_batches,
        mini_batch_size=rollouts // batch.mini_batches,
        micro_batch_size=batch.micro_batch_size,
        world_size=world_size,
    )
