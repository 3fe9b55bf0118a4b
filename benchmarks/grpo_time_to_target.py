"""Time to target on W (issue 8): wall-clock until held-out mean reward ≥ 0.9, posttrain vs TRL.

Same starting model (W's `torch.manual_seed(0)` Llama), same prompts, same batch (8 prompts ×
8 samples × 10 new tokens), same per-step work as `grpo_vs_trl.py`; each side runs with each
learning rate in `--lrs` and the best (fastest to target) is reported, so neither side is held
back by a learning rate chosen for the other. At each learning rate the two sides run
interleaved step by step in one process (TRL's loop drives; a callback runs one posttrain step
after each TRL step), so background load hits both alike. Everything else is each library's GRPO default
with W's settings (no reference model, one optimizer step per batch, constant lr).

Held-out evaluation is identical for both sides and excluded from the clock: every
`--eval-every` steps the clock stops, one completion per held-out prompt (256 prompts, seed 2,
disjoint from training) is sampled at temperature 1 with posttrain's `HFEngine` from a fixed
generator, and its mean W reward is the held-out score. A run that has not reached the target
after `--max-steps` counts as not reaching it.

    .venv/bin/python benchmarks/grpo_time_to_target.py                  # lrs 5e-4 1e-3 2e-3 4e-3
    .venv/bin/python benchmarks/grpo_time_to_target.py --smoke          # seconds (a test)

Writes benchmarks/results/grpo_time_to_target.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers

if __package__ in (None, ""):  # run as a script from anywhere: make the siblings importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpo_vs_trl as w  # noqa: E402

from posttrain.rollout import HFEngine, SamplingParams  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "grpo_time_to_target.json"


class HeldOut:
    """W's held-out prompts and the shared evaluator (the same code scores both sides)."""

    def __init__(self, count: int = 256) -> None:
        self.digits = torch.tensor(w.w_digits(count, seed=2))  # (N, 6), disjoint from train
        bos = torch.full((count, 1), 1)
        self.prompt_ids = torch.cat([bos, self.digits + w.DIGIT0, torch.full((count, 1), 14)], 1)
        self.prompt_mask = torch.ones_like(self.prompt_ids, dtype=torch.bool)  # (N, 8)
        self.params = SamplingParams(
            max_new_tokens=w.NEW_TOKENS,
            min_new_tokens=w.NEW_TOKENS,
            temperature=1.0,
            stop_token_ids=(2,),
            pad_token_id=0,
        )

    def score(self, model: torch.nn.Module) -> float:
        """Mean W reward of one temperature-1 sample per held-out prompt."""
        was_training = model.training
        model.eval()
        try:
            ro = HFEngine(model).generate(
                self.prompt_ids,
                self.prompt_mask,
                1,
                self.params,
                torch.Generator().manual_seed(1234),
            )
        finally:
            model.train(was_training)
        return float(w.w_reward(self.digits, ro.response_ids).mean())


class Racer:
    """One side's run: its own clock (evaluation excluded), step count and held-out curve."""

    def __init__(self, side: str, lr: float, args: argparse.Namespace, held: HeldOut) -> None:
        self.side, self.lr, self.args, self.held = side, lr, args, held
        self.elapsed, self.steps, self.reached = 0.0, 0, None
        self.curve: list[tuple[int, float, float]] = []  # (step, seconds, held-out reward)

    @property
    def done(self) -> bool:
        return self.reached is not None or self.steps >= self.args.max_steps

    def stepped(self, seconds: float, model: torch.nn.Module) -> None:
        """Count one step of `seconds`; evaluate (off the clock) every `eval_every` steps."""
        self.elapsed += seconds
        self.steps += 1
        if self.steps % self.args.eval_every == 0:
            score = self.held.score(model)
            self.curve.append((self.steps, self.elapsed, score))
            if score >= self.args.target:
                self.reached = self.elapsed

    def result(self) -> dict[str, object]:
        return {
            "side": self.side,
            "lr": self.lr,
            "steps": self.steps,
            "train_seconds": self.elapsed,
            "seconds_to_target": self.reached,
            "curve": self.curve,
        }


def race(lr: float, args: argparse.Namespace, held: HeldOut, tmp: Path) -> list[dict]:
    """posttrain (and TRL) at `lr`, interleaved step by step so background load hits both
    alike; each runs until the held-out target or `args.max_steps`."""
    model_dir = w.save_w_model(tmp / f"model_{lr}")
    pt = Racer("posttrain", lr, args, held)
    trainer = w.posttrain_trainer(model_dir, tmp / f"run_{lr}", lr=lr)

    def posttrain_step() -> None:
        if not pt.done:
            start = time.perf_counter()
            trainer.step()
            pt.stepped(time.perf_counter() - start, trainer.policy)

    if args.trl:
        from transformers import TrainerCallback

        trl = Racer("trl", lr, args, held)

        class Interleave(TrainerCallback):
            """TRL's clock runs from step end to step end (its data loading included, as in
            grpo_vs_trl.py), stopped around evaluation and around posttrain's step."""

            started = 0.0

            def on_train_begin(self, *_, **__):
                self.started = time.perf_counter()

            def on_step_end(self, _args, _state, control, model=None, **__):
                trl.stepped(time.perf_counter() - self.started, model)
                posttrain_step()
                if trl.done:
                    control.should_training_stop = True
                self.started = time.perf_counter()

        w.trl_trainer(model_dir, tmp / f"trl_{lr}", args.max_steps, [Interleave()], lr=lr).train()
    while not pt.done:  # TRL finished first (or is absent)
        posttrain_step()
    return [pt.result()] + ([trl.result()] if args.trl else [])


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Race both sides over the learning rates; print and write the summary."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lrs", type=float, nargs="+", default=[5e-4, 1e-3, 2e-3, 4e-3])
    ap.add_argument("--target", type=float, default=0.9, help="held-out mean reward to reach")
    ap.add_argument("--max-steps", type=int, default=600)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-trl", dest="trl", action="store_false", help="posttrain alone")
    ap.add_argument("--smoke", action="store_true", help="2 steps, one lr, no target")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    if args.smoke:
        args.lrs, args.max_steps, args.eval_every = [args.lrs[0]], 2, 1
    if args.trl and not w.trl_available():
        print("TRL is not installed (pip install 'posttrain[bench]'): racing posttrain alone")
        args.trl = False
    torch.set_num_threads(args.threads)
    held = HeldOut()
    sides = ["posttrain"] + (["trl"] if args.trl else [])
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for lr in args.lrs:
            for run in race(lr, args, held, Path(tmp)):
                runs.append(run)
                got, best = run["seconds_to_target"], max(c[2] for c in run["curve"])
                print(
                    f"{run['side']:9s} lr {lr:g}: "
                    + (
                        f"target at {got:.1f} s ({run['steps']} steps)"
                        if got is not None
                        else f"not reached in {run['steps']} steps (best {best:.3f})"
                    )
                )
    results: dict[str, object] = {
        "command": "python benchmarks/grpo_time_to_target.py " + " ".join(argv or sys.argv[1:]),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": args.threads,
        "target": args.target,
        "max_steps": args.max_steps,
        "eval_every": args.eval_every,
        "initial_held_out": held.score(w.w_model()),
        "runs": runs,
    }
    for side in sides:
        done = [r for r in runs if r["side"] == side and r["seconds_to_target"] is not None]
        results[f"best_{side}"] = min(done, key=lambda r: r["seconds_to_target"]) if done else None
    best_pt, best_trl = results.get("best_posttrain"), results.get("best_trl")
    if best_pt and best_trl:
        results["speedup"] = best_trl["seconds_to_target"] / best_pt["seconds_to_target"]
        print(
            f"time to {args.target}: posttrain {best_pt['seconds_to_target']:.1f} s "
            f"(lr {best_pt['lr']:g}) vs TRL {best_trl['seconds_to_target']:.1f} s "
            f"(lr {best_trl['lr']:g}): {results['speedup']:.2f}x"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
