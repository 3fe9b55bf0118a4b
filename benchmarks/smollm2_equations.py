"""RLVR on a real model (issue 5, item 7): SmolLM2-135M-Instruct, linear equations, GRPO.

Greedy accuracy on a fixed held-out set (the equations task's eval split, seed 0; the first
`--eval-examples` of it) before and after one GRPO run of the given budget. The run is the
ordinary `posttrain rl` trainer over a recipe; the flags below override the recipe's budget.

    # CPU, the small budget of recipes/smollm2_equations.yaml (about 20 min on 2 busy cores)
    .venv/bin/python benchmarks/smollm2_equations.py --threads 2
    # GPU, a longer budget (bf16 autocast, fp32 master weights)
    .venv/bin/python benchmarks/smollm2_equations.py --device cuda \
        --recipe recipes/smollm2_equations_grpo.yaml --out benchmarks/results/smollm2_equations_cuda.json
    # seconds, a tiny model instead of SmolLM2 (what the test suite runs)
    .venv/bin/python benchmarks/smollm2_equations.py --smoke --out /tmp/smoke.json

Writes benchmarks/results/smollm2_equations.json (before/after, budget, device, wall-clock,
per-step rollout reward) and prints a summary line.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from posttrain.config import load_config, to_dict  # noqa: E402
from posttrain.train.configs import RLConfig  # noqa: E402
from posttrain.train.policy_gradient import train_rl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = ROOT / "recipes" / "smollm2_equations.yaml"
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "smollm2_equations.json"
SMOKE = [  # a tiny model in the plain prompt format: the same code path, seconds on CPU
    "--model.spec=tiny:tiny",
    "--task.chat=false",
    "--task.num_eval=8",
    "--steps=2",
    "--batch.prompts_per_step=2",
    "--batch.group_size=2",
    "--batch.micro_batch_size=4",
    "--sampling.max_new_tokens=4",
    "--eval_examples=4",
    "--optim.lr=1e-3",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--recipe", default=str(DEFAULT_RECIPE), help="an RLConfig recipe")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16-autocast"],
        default=None,
        help="default: bf16-autocast on cuda, fp32 on cpu",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: recipe's)")
    p.add_argument("--steps", type=int, default=None, help="GRPO steps (default: recipe's)")
    p.add_argument("--prompts", type=int, default=None, help="prompts per step")
    p.add_argument("--group", type=int, default=None, help="samples per prompt (G)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="response budget")
    p.add_argument("--lr", type=float, default=None, help="AdamW peak learning rate")
    p.add_argument("--eval-examples", type=int, default=None, help="held-out problems")
    p.add_argument("--run-dir", default=None, help="default: a fresh temporary directory")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="any other RLConfig override (repeatable)",
    )
    p.add_argument("--smoke", action="store_true", help="tiny model, tiny budget (a test)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    return p.parse_args(argv)


def build_config(args: argparse.Namespace, run_dir: str) -> RLConfig:
    """The recipe with the flags on top (flags win; --smoke's budget wins over the recipe's)."""
    precision = args.precision or ("bf16-autocast" if args.device == "cuda" else "fp32")
    overrides = list(SMOKE) if args.smoke else []
    flags = {
        "steps": args.steps,
        "batch.prompts_per_step": args.prompts,
        "batch.group_size": args.group,
        "sampling.max_new_tokens": args.max_new_tokens,
        "optim.lr": args.lr,
        "eval_examples": args.eval_examples,
        "run.threads": args.threads or None,
    }
    overrides += [f"--{k}={v}" for k, v in flags.items() if v is not None]
    overrides += [f"--run.device={args.device}", f"--run.precision={precision}"]
    overrides += [f"--run.dir={run_dir}", "--run.log_rollouts_every=1"]
    overrides += [s if s.startswith("--") else f"--{s}" for s in args.set]
    cfg = load_config(RLConfig, args.recipe, overrides)
    # Every rollout batch of G samples needs a micro-batch plan that divides it.
    rows = cfg.batch.prompts_per_step * cfg.batch.group_size
    cfg.batch.micro_batch_size = min(cfg.batch.micro_batch_size, rows)
    if cfg.task.num_eval < cfg.eval_examples:
        cfg.task.num_eval = cfg.eval_examples
    return cfg


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The run's metrics.jsonl rows (one per logged step)."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def first_responses(run_dir: Path, count: int = 3) -> list[dict[str, Any]]:
    """A few sampled responses of the last logged step (what the policy writes), for the JSON."""
    path = run_dir / "rollouts.jsonl"
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    last = [r for r in rows if r.get("step") == rows[-1].get("step")]
    keep = ("prompt", "response", "reward")
    return [{k: r[k] for k in keep if k in r} for r in last[:count]]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Train once, evaluate before and after, and return the figures (also written to --out)."""
    with tempfile.TemporaryDirectory(prefix="smollm2_eq_") as tmp:
        run_dir = Path(args.run_dir or Path(tmp) / "run")
        cfg = build_config(args, str(run_dir))
        t0 = time.perf_counter()
        result = train_rl(cfg)
        wall = time.perf_counter() - t0
        rows = read_metrics(run_dir)
        samples = first_responses(run_dir)
    steps = [r for r in rows if "rollout/reward_mean" in r]
    device = cfg.run.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    out = {
        "command": "benchmarks/smollm2_equations.py " + " ".join(sys.argv[1:]),
        "model": cfg.model.spec,
        "device": device,
        "device_name": torch.cuda.get_device_name(0)
        if device == "cuda"
        else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "budget": {
            "steps": cfg.steps,
            "prompts_per_step": cfg.batch.prompts_per_step,
            "group_size": cfg.batch.group_size,
            "max_new_tokens": cfg.sampling.max_new_tokens,
            "lr": cfg.optim.lr,
            "schedule": cfg.optim.schedule,
            "precision": cfg.run.precision,
        },
        "eval": {"examples": cfg.eval_examples, "split_seed": cfg.task.seed, "decoding": "greedy"},
        "before": result["before"],
        "after": result["after"],
        "wall_s": wall,
        "step_s_mean": sum(r["time/step"] for r in steps) / max(len(steps), 1),
        "rollout_reward": [r["rollout/reward_mean"] for r in steps],
        "rollout_response_len": [r["rollout/response_len"] for r in steps],
        "rollout_truncated_frac": [r["rollout/truncated_frac"] for r in steps],
        "last_samples": samples,
        "config": to_dict(cfg),
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return out


def summary(out: dict[str, Any]) -> str:
    """One line: model, device, budget, accuracy before → after, wall-clock."""
    b = out["budget"]
    return (
        f"{out['model']} on {out['device']}: GRPO {b['steps']} steps × {b['prompts_per_step']} "
        f"prompts × {b['group_size']} samples, ≤{b['max_new_tokens']} tokens, lr {b['lr']:g}; "
        f"greedy accuracy on {out['eval']['examples']} held-out equations "
        f"{out['before']['accuracy']:.3f} → {out['after']['accuracy']:.3f}; "
        f"{out['wall_s'] / 60:.1f} min"
    )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    out = run(parse_args(argv))
    print(summary(out))
    return out


if __name__ == "__main__":
    main()
