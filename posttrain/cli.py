"""`posttrain <stage>`: one subcommand per stage over the typed configs.

    posttrain sft --recipe recipes/sorting_sft.yaml --optim.lr=3e-4
    posttrain rl  --recipe recipes/sorting_grpo.yaml --algo.preset=ppo --run.resume=auto
    posttrain rm  --recipe recipes/preference_rm.yaml      # then rlhf / dpo on the same pairs
    posttrain eval --model.init_from=runs/grpo/final --k=8
    posttrain run            # the whole default pipeline (what `make run` runs)
    posttrain lab --run runs/pipeline/rl   # the canvases and the run viewer on 127.0.0.1

A recipe is YAML with the config's sections; `--section.key=value` overrides it. Unknown keys
and wrong types are errors that name the field. `posttrain <stage> --help` lists every field.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from posttrain.config import ConfigError, load_config
from posttrain.config_help import format_help
from posttrain.train.configs import LMConfig, ModelConfig, RLConfig, TaskConfig


@dataclass
class EvalConfig:
    """Evaluate a model on a task's held-out split."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    k: int = 1
    """Samples per prompt: 1 is greedy; k > 1 samples at `temperature` and reports pass@k."""
    temperature: float = 1.0
    """Sampling temperature when k > 1."""
    examples: int = 200
    """Held-out prompts to evaluate."""
    max_new_tokens: int = 0
    """Response budget (0: the task's own + 1)."""

    def validate(self) -> None:
        if self.k < 1 or self.examples < 1:
            raise ValueError("k and examples: must be >= 1")


def _pretrain(cfg: LMConfig) -> dict[str, Any]:
    from posttrain.train.lm import train_lm

    cfg.objective = "pretrain"
    return train_lm(cfg)


def _sft(cfg: LMConfig) -> dict[str, Any]:
    from posttrain.train.lm import train_lm

    return train_lm(cfg)


def _rl(cfg: RLConfig) -> dict[str, Any]:
    from posttrain.train.policy_gradient import train_rl

    return train_rl(cfg)


def _rm(cfg: Any) -> dict[str, Any]:
    from posttrain.train.reward_model import train_reward_model

    return train_reward_model(cfg)


def _dpo(cfg: Any) -> dict[str, Any]:
    from posttrain.train.dpo import train_dpo

    return train_dpo(cfg)


def _rlhf(cfg: Any) -> dict[str, Any]:
    from posttrain.train.rlhf import train_rlhf

    return train_rlhf(cfg)


def _preference_config(name: str) -> Callable[[], type]:
    def get() -> type:
        from posttrain.train import preference_configs

        return getattr(preference_configs, name)

    return get


def _eval(cfg: EvalConfig) -> dict[str, Any]:
    from posttrain.train.common import build_policy, build_task
    from posttrain.train.evaluate import evaluate

    model, tokenizer = build_policy(cfg.model)
    task = build_task(cfg.task)
    return evaluate(
        model,
        tokenizer,
        task,
        list(task.eval)[: cfg.examples],
        chat=cfg.task.chat,
        k=cfg.k,
        temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens or None,
    )


def _pipeline(cfg: Any) -> dict[str, Any]:
    from posttrain.pipeline import run_pipeline

    return run_pipeline(cfg)


def _pipeline_config() -> type:
    from posttrain.pipeline import PipelineConfig

    return PipelineConfig


STAGES: dict[str, tuple[Callable[[], type], Callable[[Any], dict[str, Any]], str]] = {
    "pretrain": (lambda: LMConfig, _pretrain, "next-token loss on a task corpus"),
    "sft": (lambda: LMConfig, _sft, "supervised fine-tuning on demonstrations"),
    "rl": (lambda: RLConfig, _rl, "the policy-gradient loop (REINFORCE … PPO, GRPO)"),
    "rm": (_preference_config("RewardModelConfig"), _rm, "a Bradley–Terry reward model on pairs"),
    "rlhf": (_preference_config("RLHFConfig"), _rlhf, "PPO (or any preset) against a reward model"),
    "dpo": (_preference_config("DPOConfig"), _dpo, "DPO or IPO on preference pairs"),
    "eval": (lambda: EvalConfig, _eval, "accuracy, mean reward and pass@k on held-out prompts"),
    "run": (_pipeline_config, _pipeline, "the whole default pipeline, with a report"),
}


def _usage() -> str:
    lines = ["usage: posttrain <stage> [--recipe FILE.yaml] [--section.key=value ...]", ""]
    lines += [f"  {name:<9} {desc}" for name, (_, _, desc) in STAGES.items()]
    lines.append(
        f"  {'lab':<9} the lecture's five live canvases and a run viewer (a local web page)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `posttrain` command; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    if not args or args[0] in ("-h", "--help"):
        print(_usage())
        return 0 if args else 2
    stage, rest = args[0], args[1:]
    if stage == "lab":
        from posttrain.lab import lab_main

        return lab_main(rest)
    if stage not in STAGES:
        print(f"posttrain: unknown stage {stage!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    config_cls, runner, _ = STAGES[stage]
    cls = config_cls()
    if "-h" in rest or "--help" in rest:
        print(format_help(cls, prog=f"posttrain {stage}"))
        return 0
    recipe = None
    if "--recipe" in rest:
        i = rest.index("--recipe")
        if i + 1 >= len(rest):
            print("posttrain: --recipe needs a file", file=sys.stderr)
            return 2
        recipe, rest = rest[i + 1], rest[:i] + rest[i + 2 :]
    try:
        cfg = load_config(cls, recipe, rest)
        # A stage's set-up checks (batch plan, algorithm knobs) raise ConfigError too, before
        # any model is built: the same exit status and one line, not a traceback.
        result = runner(cfg)
    except ConfigError as err:
        where = f" (recipe {recipe})" if recipe and not err.source else ""
        print(f"posttrain {stage}: {err}{where}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
