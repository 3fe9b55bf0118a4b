"""The lecture's comparison, made real: every RL preset from the same start, same sample budget.

    python benchmarks/preset_comparison.py [--steps 200] [--seeds 0 1] [--out benchmarks/results]

1. Format SFT once (sorting 5 digits: random permutations as answers — the format, not the
   skill), shared by every run.
2. For each preset × seed: RL from that start with the same prompts × samples per step and the
   same number of steps, greedy held-out exact match and mean reward every `--eval-every` steps.
3. Writes `preset_comparison.json` and a markdown table (held-out reward over training) to --out.

This is a benchmark, never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from posttrain.algorithms.presets import PRESETS
from posttrain.pipeline import PipelineConfig, stage_configs
from posttrain.train.configs import AlgoConfig, ModelConfig, RunConfig
from posttrain.train.lm import train_lm
from posttrain.train.policy_gradient import PolicyGradientTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-examples", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dir", default="runs/preset_comparison")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    root = Path(args.dir)
    sft_cfg, rl_template = stage_configs(PipelineConfig(dir=str(root), threads=args.threads))
    sft_final = root / "sft" / "final"
    if not sft_final.exists():
        train_lm(sft_cfg)

    results: dict[str, dict] = {}
    for preset in args.presets:
        for seed in args.seeds:
            cfg = stage_configs(PipelineConfig(dir=str(root), threads=args.threads))[1]
            cfg.model = ModelConfig(init_from=str(sft_final))
            cfg.algo = AlgoConfig(preset=preset)
            cfg.run = RunConfig(dir=str(root / f"{preset}-s{seed}"), threads=args.threads,
                                save_every=10**9, log_rollouts_every=0)
            cfg.steps, cfg.seed = args.steps, seed
            cfg.eval_every, cfg.eval_examples = args.eval_every, args.eval_examples
            t0 = time.perf_counter()
            trainer = PolicyGradientTrainer(cfg)
            curve = [(0, trainer.evaluate())]
            for _ in range(cfg.steps):
                metrics = trainer.step()
                if "eval/accuracy" in metrics:
                    curve.append((trainer.counters.step, {
                        "accuracy": metrics["eval/accuracy"],
                        "reward_mean": metrics["eval/reward_mean"]}))
            results[f"{preset}/s{seed}"] = {
                "preset": preset, "seed": seed, "seconds": time.perf_counter() - t0,
                "curve": curve,
            }
            last = curve[-1][1]
            print(f"{preset:<20} seed {seed}: exact {last['accuracy']:.3f} "
                  f"reward {last['reward_mean']:.3f} ({results[f'{preset}/s{seed}']['seconds']:.0f} s)",
                  flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "preset_comparison.json").write_text(json.dumps(results, indent=1))
    steps = [s for s, _ in next(iter(results.values()))["curve"]]
    lines = ["| preset | seed | " + " | ".join(f"step {s}" for s in steps) + " | seconds |",
             "|---|---|" + "---|" * len(steps) + "---|"]
    for r in results.values():
        cells = " | ".join(f"{m['reward_mean']:.3f} / {m['accuracy']:.2f}" for _, m in r["curve"])
        lines.append(f"| {r['preset']} | {r['seed']} | {cells} | {r['seconds']:.0f} |")
    table = "\n".join(lines)
    (out / "preset_comparison.md").write_text(
        "Held-out greedy mean reward / exact match over training (sorting 5 digits).\n\n"
        + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
