"""The batch plan and algorithm resolution: errors name the field to change."""

from __future__ import annotations

import pytest

from posttrain.config import ConfigError
from posttrain.train.configs import AlgoConfig, BatchConfig
from posttrain.train.plan import make_batch_plan, resolve_algorithm


def test_group_size_one_is_rejected_for_group_estimators() -> None:
    algo = resolve_algorithm(AlgoConfig(preset="grpo"))
    with pytest.raises(ConfigError, match="batch.group_size"):
        make_batch_plan(BatchConfig(prompts_per_step=8, group_size=1), algo)


def test_group_size_one_is_fine_for_raw_reward() -> None:
    algo = resolve_algorithm(AlgoConfig(preset="reinforce"))
    plan = make_batch_plan(BatchConfig(prompts_per_step=8, group_size=1, micro_batch_size=4), algo)
    assert plan.rollouts == 8 and plan.micro_steps == 2  # 8 rollouts in micro-batches of 4


def test_mini_batches_must_divide_the_prompts() -> None:
    algo = resolve_algorithm(AlgoConfig(preset="grpo"))
    with pytest.raises(ConfigError, match="batch.mini_batches"):
        make_batch_plan(BatchConfig(prompts_per_step=3, group_size=4, mini_batches=2), algo)


def test_prompts_must_split_evenly_over_ranks() -> None:
    algo = resolve_algorithm(AlgoConfig(preset="grpo"))
    with pytest.raises(ConfigError, match="batch.prompts_per_step"):
        make_batch_plan(BatchConfig(prompts_per_step=3, group_size=4), algo, world_size=2)


def test_plan_arithmetic_and_description() -> None:
    algo = resolve_algorithm(AlgoConfig(preset="ppo", epochs=2))
    # 8 prompts × 4 samples = 32 rollouts; 2 mini-batches of 16; micro 8 → 2 micro-steps.
    plan = make_batch_plan(
        BatchConfig(prompts_per_step=8, group_size=4, mini_batches=2, micro_batch_size=8), algo
    )
    assert (plan.rollouts, plan.mini_batch_size, plan.micro_steps) == (32, 16, 2)
    assert plan.optimizer_steps_per_batch == 4  # 2 epochs × 2 mini-batches
    assert "8 prompts × 4 samples = 32 rollouts" in plan.describe()


def test_overrides_win_over_the_preset_and_clip_high_defaults_to_low() -> None:
    algo = resolve_algorithm(
        AlgoConfig(preset="grpo", advantage="max", loss="unclipped", clip_eps_low=0.1)
    )
    assert (algo.advantage, algo.loss, algo.clip_eps_low, algo.clip_eps_high) == (
        "max",
        "unclipped",
        0.1,
        0.1,
    )
    assert algo.kl_estimator == "k3"  # untouched knobs keep the preset's value


def test_a_critic_estimator_brings_a_value_head() -> None:
    assert resolve_algorithm(AlgoConfig(preset="grpo", advantage="gae")).value_head


def test_unknown_knob_value_is_an_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="algo.loss"):
        resolve_algorithm(AlgoConfig(preset="grpo", loss="clipped_twice"))
