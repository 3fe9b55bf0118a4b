"""The `posttrain` command: unknown keys and wrong types are errors naming the field."""

from __future__ import annotations

import pytest

from posttrain.cli import main


def test_unknown_key_names_it_and_suggests(capsys) -> None:
    assert main(["rl", "--algo.presett=grpo"]) == 2
    err = capsys.readouterr().err
    assert "algo.presett" in err and "preset" in err


def test_wrong_type_names_the_field(capsys) -> None:
    assert main(["rl", "--batch.group_size=four"]) == 2
    assert "batch.group_size" in capsys.readouterr().err


def test_validate_errors_name_the_field(capsys) -> None:
    assert main(["rl", "--sampling.temperature=0"]) == 2
    assert "temperature" in capsys.readouterr().err


def test_unknown_recipe_file_is_named(capsys, tmp_path) -> None:
    missing = tmp_path / "nope.yaml"
    assert main(["sft", "--recipe", str(missing)]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_help_lists_every_field_with_its_doc(capsys) -> None:
    assert main(["rl", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--algo.clip_eps_low" in out and "PPO clip" in out
    assert "--batch.group_size" in out


def test_unknown_stage(capsys) -> None:
    assert main(["fly"]) == 2
    assert "unknown stage" in capsys.readouterr().err


@pytest.mark.parametrize(
    "recipe", ["sorting_format_sft", "sorting_grpo", "lecture17_sorting", "sorting_acceptance"]
)
def test_shipped_recipes_parse(recipe) -> None:
    from pathlib import Path

    from posttrain.config import load_config
    from posttrain.train.configs import LMConfig, RLConfig

    path = Path(__file__).resolve().parents[1] / "recipes" / f"{recipe}.yaml"
    cls = LMConfig if "sft" in recipe else RLConfig
    load_config(cls, path)
