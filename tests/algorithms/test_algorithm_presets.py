"""Presets as data (posttrain/algorithms/presets.py) and the purity of the algorithms package."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import posttrain.algorithms as algorithms
from posttrain.algorithms import (
    AGGREGATIONS,
    CRITIC_ADVANTAGES,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    PRESETS,
    SEQUENCE_ADVANTAGES,
    AlgorithmPreset,
)

PACKAGE_DIR = Path(algorithms.__file__).parent

# (advantage, loss, kl_placement, kl_estimator-if-used, loss_agg, value_head) per the issue.
EXPECTED = {
    "reinforce": ("none", "naive", "none", None, "seq_mean_token_sum", False),
    "reinforce_baseline": ("mean", "naive", "none", None, "seq_mean_token_sum", False),
    "actor_critic": ("value", "naive", "none", None, "seq_mean_token_sum", True),
    "ppo": ("gae", "clipped", "reward", "k1", "token_mean", True),
    "grpo": ("group", "clipped", "loss", "k3", "seq_mean_token_mean", False),
    "dr_grpo": ("dr_grpo", "clipped", "none", None, "token_sum_norm", False),
    "rloo": ("rloo", "naive", "reward", "k1", "seq_mean_token_sum", False),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_preset_table(name):
    preset = PRESETS[name]
    adv, loss, placement, estimator, agg, value_head = EXPECTED[name]
    assert (preset.advantage, preset.loss, preset.kl_placement) == (adv, loss, placement)
    assert (preset.loss_agg, preset.value_head) == (agg, value_head)
    if estimator is not None:
        assert preset.kl_estimator == estimator and preset.kl_coef > 0
    else:
        assert preset.kl_coef == 0.0
    assert preset.reference
    preset.validate()


def test_every_preset_name_resolves_in_a_registry():
    assert set(PRESETS) == set(EXPECTED)
    for name, p in PRESETS.items():
        assert p.advantage in SEQUENCE_ADVANTAGES or p.advantage in CRITIC_ADVANTAGES, name
        assert p.loss in POLICY_LOSSES and p.kl_estimator in KL_ESTIMATORS, name
        assert p.loss_agg in AGGREGATIONS, name
    assert not set(CRITIC_ADVANTAGES) & set(SEQUENCE_ADVANTAGES)


def test_presets_are_frozen_and_validate_names_the_field():
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS["grpo"].clip_eps = 0.3  # type: ignore[misc]
    bad = dataclasses.replace(PRESETS["grpo"], loss_agg="token_avg")
    with pytest.raises(ValueError, match="loss_agg"):
        bad.validate()
    with pytest.raises(ValueError, match="value_head"):
        dataclasses.replace(PRESETS["ppo"], value_head=False).validate()
    assert isinstance(PRESETS["ppo"], AlgorithmPreset)


def _modules():
    for path in sorted(PACKAGE_DIR.glob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def test_no_branching_on_algorithm_or_mode_names():
    """No ``x == "grpo"``-style comparisons against a preset, loss, estimator or mode name."""
    names = (set(PRESETS) | set(POLICY_LOSSES) | set(KL_ESTIMATORS) | set(AGGREGATIONS)) | set(
        SEQUENCE_ADVANTAGES
    )
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                for operand in [node.left, *node.comparators]:
                    if isinstance(operand, ast.Constant) and operand.value in names:
                        raise AssertionError(
                            f"{path.name}:{node.lineno} compares to {operand.value!r}"
                        )


FORBIDDEN_IMPORTS = (
    "transformers",
    "safetensors",
    "posttrain.models",
    "posttrain.train",
    "posttrain.run",
    "posttrain.rollout",
    "posttrain.tasks",
)


def test_algorithms_are_pure_no_forbidden_imports_or_io():
    for path, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "open":
                    raise AssertionError(f"{path.name}:{node.lineno} opens a file")
                continue
            for mod in mods:
                assert not mod.startswith(FORBIDDEN_IMPORTS), f"{path.name} imports {mod}"


def test_init_reexports_everything_it_lists():
    for name in algorithms.__all__:
        assert hasattr(algorithms, name), name
