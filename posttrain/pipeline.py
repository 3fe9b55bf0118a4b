"""`posttrain run`: the default pipeline on the built-in sorting task, on CPU, in minutes.

    format SFT (well-formed but unsorted answers: the format, not the skill)
      → GRPO with the verifier's reward → an eval table, before vs after

Each stage writes its own run directory under `<dir>/` and starts from the previous stage's
`final/` model, so any stage can be re-run alone. `--resume=true` skips finished stages and
resumes an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.train.common import FINAL_DIR
from posttrain.train.configs import (
    AlgoConfig,
    BatchConfig,
    LMConfig,
    ModelConfig,
    OptimConfig,
    RLConfig,
    RunConfig,
    TaskConfig,
)

log = logging.getLogger("posttrain")


@dataclass
class PipelineConfig:
    """The default pipeline's knobs (each stage's full config is built from these)."""

    dir: str = "runs/pipeline"
    """Parent directory: one sub-directory per stage, plus report.md."""
    size: str = "tiny"
    """Tiny model size: tiny (≈1M parameters) or small (≈10M)."""
    n: int = 5
    """Numbers to sort per prompt."""
    sft_steps: int = 150
    """Format-SFT optimizer steps."""
    rl_steps: int = 300
    """GRPO steps."""
    preset: str = "grpo"
    """RL algorithm preset."""
    seed: int = 0
    """Seed of every stage."""
    resume: bool = False
    """Skip finished stages and resume an interrupted one."""
    threads: int = 2
    """torch CPU threads."""

    def validate(self) -> None:
        if self.sft_steps < 1 or self.rl_steps < 1:
            raise ValueError("sft_steps and rl_steps: must be >= 1")


def stage_configs(cfg: PipelineConfig) -> tuple[LMConfig, RLConfig]:
    """The format-SFT and RL stage configs the pipeline runs."""
    root = Path(cfg.dir)
    task = TaskConfig(name="sorting", n=cfg.n, reward="partial", seed=cfg.seed)
    resume = "auto" if cfg.resume else None
    sft = LMConfig(
        model=ModelConfig(spec=f"tiny:{cfg.size}", seed=cfg.seed),
        task=task,
        optim=OptimConfig(lr=3e-3, warmup_steps=10),
        run=RunConfig(dir=str(root / "sft"), resume=resume, threads=cfg.threads),
        objective="sft",
        demonstrations="format",
        steps=cfg.sft_steps,
        batch_size=64,
        micro_batch_size=64,
        seed=cfg.seed,
    )
    rl = RLConfig(
        model=ModelConfig(init_from=str(root / "sft" / FINAL_DIR)),
        task=task,
        optim=OptimConfig(lr=1e-3),
        run=RunConfig(dir=str(root / "rl"), resume=resume, threads=cfg.threads),
        algo=AlgoConfig(preset=cfg.preset),
        batch=BatchConfig(prompts_per_step=16, group_size=8, micro_batch_size=128),
        steps=cfg.rl_steps,
        seed=cfg.seed,
    )
    return sft, rl


def _finished(run_dir: str) -> dict[str, Any] | None:
    result = Path(run_dir) / "result.json"
    return json.loads(result.read_text()) if result.exists() else None


def run_pipeline(cfg: PipelineConfig) -> dict[str, Any]:
    """Run every stage (skipping finished ones when resuming) and write `<dir>/report.md`."""
    from posttrain.train.lm import train_lm
    from posttrain.train.policy_gradient import train_rl

    sft_cfg, rl_cfg = stage_configs(cfg)
    results: dict[str, Any] = {}
    for name, stage_cfg, runner in (("sft", sft_cfg, train_lm), ("rl", rl_cfg, train_rl)):
        done = _finished(stage_cfg.run.dir) if cfg.resume else None
        if done is not None:
            log.info("stage %s already finished: skipping", name)
            results[name] = done
            continue
        log.info("stage %s → %s", name, stage_cfg.run.dir)
        results[name] = runner(stage_cfg)
        Path(stage_cfg.run.dir, "result.json").write_text(json.dumps(results[name], indent=2))
    report = write_report(cfg, results)
    print(f"\nreport: {report}\nmodels: {sft_cfg.run.dir}/final, {rl_cfg.run.dir}/final")
    return {"report": str(report), **results}


def write_report(cfg: PipelineConfig, results: dict[str, Any]) -> Path:
    """A markdown table of held-out greedy accuracy and reward, before vs after RL."""
    before, after = results["rl"]["before"] or results["sft"]["eval"], results["rl"]["after"]
    lines = [
        f"# posttrain run: sorting {cfg.n} numbers, {cfg.size} model",
        "",
        "Held-out prompts, greedy decoding. Accuracy = exact match; reward = fraction of",
        "positions right.",
        "",
        "| policy | accuracy | mean reward |",
        "|---|---|---|",
        f"| format SFT (start) | {before['accuracy']:.3f} | {before['reward_mean']:.3f} |",
        f"| after {cfg.preset} ({cfg.rl_steps} steps) | {after['accuracy']:.3f} | "
        f"{after['reward_mean']:.3f} |",
        "",
    ]
    out = Path(cfg.dir) / "report.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    return out
