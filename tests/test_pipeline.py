"""`posttrain run` end to end at a reduced size: every stage, the report, resume, and one stage
re-run alone from its own config (posttrain/pipeline.py, posttrain/run/report.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from posttrain.cli import main
from posttrain.pipeline import PipelineConfig, pipeline_stages, stage_configs
from posttrain.run.report import markdown_table, plots_available, smooth

TINY = [
    "--pretrain_steps=3",
    "--pref_sft_steps=12",
    "--rm_steps=3",
    "--pairs=16",
    "--eval_pairs=8",
    "--ppo_steps=2",
    "--kl_coefs=[0, 0.2]",
    "--dpo_steps=2",
    "--sft_steps=2",
    "--rl_steps=2",
    "--eval_examples=8",
    "--threads=1",
]
STAGES = ["pretrain", "pref_sft", "rm", "ppo_kl0", "ppo_kl0.2", "dpo", "ipo", "sft", "rl"]


def test_stage_plan_chains_each_stage_to_the_previous_final(tmp_path) -> None:
    stages = {s.name: s for s in pipeline_stages(PipelineConfig(dir=str(tmp_path)))}
    assert list(stages) == [
        "pretrain",
        "pref_sft",
        "rm",
        "ppo_kl0",
        "ppo_kl0.05",
        "ppo_kl0.2",
        "dpo",
        "ipo",
        "sft",
        "rl",
    ]
    final = lambda name: str(tmp_path / name / "final")  # noqa: E731
    assert stages["pref_sft"].config.model.init_from == final("pretrain")
    assert stages["sft"].config.model.init_from is None  # RLVR: fresh model, as before
    assert stages["rm"].config.model.init_from == final("pref_sft")
    for name in ("ppo_kl0", "dpo", "ipo"):
        assert stages[name].config.model.init_from == final("pref_sft")
    assert stages["ppo_kl0.2"].config.reward_model == final("rm")
    assert stages["ppo_kl0.2"].config.algo.kl_coef == 0.2
    assert stages["dpo"].config.pairs.path == str(tmp_path / "rm" / "pairs_train.jsonl")
    assert stages["rl"].config.model.init_from == final("sft")
    # The RLVR pair the benchmarks use is the pipeline's own.
    sft, rl = stage_configs(PipelineConfig(dir=str(tmp_path)))
    assert sft == stages["sft"].config and rl == stages["rl"].config


@pytest.mark.parametrize(
    ("recipe", "stage"),
    [
        ("pretrain_corpus", "pretrain"),
        ("preference_sft", "sft"),
        ("preference_rm", "rm"),
        ("preference_ppo", "rlhf"),
        ("preference_dpo", "dpo"),
    ],
)
def test_preference_recipes_parse_as_their_stage(recipe: str, stage: str) -> None:
    from pathlib import Path

    from posttrain.cli import STAGES
    from posttrain.config import load_config

    path = Path(__file__).resolve().parents[1] / "recipes" / f"{recipe}.yaml"
    load_config(STAGES[stage][0](), path)


def test_report_helpers() -> None:
    assert smooth([1.0, 3.0, 5.0, 7.0], 2) == [1.0, 2.0, 4.0, 6.0]
    table = markdown_table(["a", "b"], [["x", 0.12345], ["y", None]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| x | 0.123 |", "| y | — |"]


@pytest.mark.slow
def test_pipeline_runs_end_to_end_then_resumes_without_rerunning(tmp_path) -> None:
    args = ["run", f"--dir={tmp_path}", *TINY]
    assert main(args) == 0
    for name in STAGES:
        assert (tmp_path / name / "result.json").is_file(), name
        assert (tmp_path / name / "final").is_dir(), name
    report = (tmp_path / "report.md").read_text()
    for label in (
        "SFT (preference)",
        "PPO (β=0)",
        "PPO (β=0.2)",
        "DPO (β=0.1)",
        "IPO (τ=0.1)",
        "SFT (sorting)",
        "GRPO",
        "pre-trained",
    ):
        assert f"| {label} |" in report, label
    assert "held-out accuracy" in report
    if plots_available():
        for png in ("reward_model", "ppo_learned_vs_true", "dpo_ipo", "rl", "ppo_kl0"):
            assert (tmp_path / "plots" / f"{png}.png").stat().st_size > 1000, png
    ppo = [json.loads(x) for x in (tmp_path / "ppo_kl0" / "metrics.jsonl").read_text().splitlines()]
    assert all(
        "true/score_mean" in r and "kl/ref_k3" in r for r in ppo if "rollout/reward_mean" in r
    )

    # --resume=true: every stage is finished, so none runs again.
    stamps = {n: (tmp_path / n / "metrics.jsonl").stat().st_mtime_ns for n in STAGES}
    assert main([*args, "--resume=true"]) == 0
    assert stamps == {n: (tmp_path / n / "metrics.jsonl").stat().st_mtime_ns for n in STAGES}

    # A stage alone, from the config the pipeline wrote and the previous stage's final/:
    # the same weights, bit for bit.
    alone = tmp_path / "dpo_alone"
    assert (
        main(["dpo", "--recipe", str(tmp_path / "dpo" / "config.yaml"), f"--run.dir={alone}"]) == 0
    )
    a = load_file(tmp_path / "dpo" / "final" / "model.safetensors")
    b = load_file(alone / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
