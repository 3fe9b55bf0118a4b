"""The help text of `task.name` lists every registered task (it had fallen behind the registry:
preference and corpus were missing), in every stage's `--help`."""

from __future__ import annotations

import re

import pytest

from posttrain.cli import main
from posttrain.config_help import field_docs
from posttrain.tasks.registry import TASKS
from posttrain.train.configs import LMConfig, RLConfig
from posttrain.train.preference_configs import DPOConfig, RewardModelConfig, RLHFConfig


@pytest.mark.parametrize("cls", [LMConfig, RLConfig, RewardModelConfig, DPOConfig, RLHFConfig])
def test_task_name_doc_lists_every_registered_task(cls) -> None:
    words = set(re.findall(r"[a-z_]+", field_docs(cls)["task.name"]))
    assert set(TASKS) <= words, sorted(set(TASKS) - words)


def test_rm_help_shows_the_task_list(capsys) -> None:
    assert main(["rm", "--help"]) == 0
    out = capsys.readouterr().out
    doc = out[out.index("--task.name") :].split("--task.", 2)[1]  # the field's own lines
    assert all(name in doc for name in TASKS)
