"""The mini-GRPO canvas: the library's own policy-gradient trainer, live, on the lecture's task.

The lecture's sorting task (n numbers, 3 by default) and its non-autoregressive sorting model
("sorting:<n>"), trained by `PolicyGradientTrainer` one outer step per call. The lecture's
"delta modes" and loss modes map onto the trainer's two orthogonal knobs:

    raw → advantage "none",  centered → "mean",  normalized → "group" (GRPO),  max → "max"
    naive / unclipped / clipped → loss of the same name

The lecture's model speaks only numbers; ours shares the 80-character task tokenizer, so
`build_sorting_model` restricts its outputs to the digits and <eos> (every other logit −inf, in
the model itself, so the sampler and the trainer's log-probs see the same distribution).

Changing any setting rebuilds the trainer: a fresh model, optimizer and run directory (the
page says so). Each session writes an ordinary run directory (config.yaml, metrics.jsonl,
rollouts.jsonl) in a temporary folder, so the run viewer can open it too.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from posttrain.train.configs import (
    AlgoConfig,
    BatchConfig,
    HealthConfig,
    ModelConfig,
    OptimConfig,
    RLConfig,
    RunConfig,
    TaskConfig,
)
from posttrain.train.policy_gradient import PolicyGradientTrainer

DELTA_MODES = {"raw": "none", "centered": "mean", "normalized": "group", "max": "max"}
"""The lecture's delta modes → `algo.advantage`."""
LOSS_MODES = ("naive", "unclipped", "clipped")
"""The lecture's loss modes = `algo.loss` names."""
MAX_STEPS_PER_CALL = 20


@dataclass
class GrpoSettings:
    """What the canvas's controls set. Any change rebuilds the trainer."""

    delta: str = "normalized"
    """raw, centered, normalized or max (see DELTA_MODES)."""
    loss: str = "clipped"
    """naive, unclipped or clipped."""
    n: int = 3
    """Numbers to sort per prompt (the lecture uses 3)."""
    reward: str = "partial"
    """Sorting reward: exact, partial or inclusion."""
    epochs: int = 4
    """K inner epochs per rollout batch: with K = 1 the ratio is 1 and the three losses agree."""
    lr: float = 0.002
    """AdamW learning rate (0.002 with K = 4 took the mean partial reward from 0.13 to 0.7 in
    120 steps; 0.01 collapsed onto one answer)."""
    prompts: int = 16
    """Prompts per step."""
    group: int = 8
    """G responses per prompt."""
    clip_eps: float = 0.2
    """PPO ε (clipped loss only)."""
    seed: int = 0
    """Seed of the model, the prompts and the sampling."""

    @classmethod
    def from_params(cls, params: dict[str, Any], base: GrpoSettings | None = None) -> GrpoSettings:
        """`base` (or the defaults) with the fields given in `params`, checked."""
        current = base or cls()
        values = {f.name: getattr(current, f.name) for f in fields(cls)}
        for key, raw in params.items():
            if key not in values:
                raise ValueError(f"{key}: unknown setting; known: {sorted(values)}")
            kind = type(values[key])
            try:
                values[key] = kind(raw)
            except (TypeError, ValueError):
                raise ValueError(f"{key}: expected {kind.__name__}, got {raw!r}") from None
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ValueError naming the offending field."""
        if self.delta not in DELTA_MODES:
            raise ValueError(f"delta: choose one of {sorted(DELTA_MODES)}, got {self.delta!r}")
        if self.loss not in LOSS_MODES:
            raise ValueError(f"loss: choose one of {LOSS_MODES}, got {self.loss!r}")
        checks = {"n": (2, 6), "epochs": (1, 8), "prompts": (1, 32), "group": (2, 32)}
        for name, (lo, hi) in checks.items():
            if not lo <= getattr(self, name) <= hi:
                raise ValueError(f"{name}: must be in [{lo}, {hi}], got {getattr(self, name)}")
        if not 0 < self.lr <= 1:
            raise ValueError(f"lr: must be in (0, 1], got {self.lr}")
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"clip_eps: must be in (0, 1), got {self.clip_eps}")


def make_config(settings: GrpoSettings, run_dir: Path) -> RLConfig:
    """The `RLConfig` of a session: the lecture's model and task, KL off, no checkpoints."""
    never = 10**9  # steps and save_every: the canvas steps by hand and never checkpoints
    # threads=1: the tensors are tiny and thread hand-offs cost more than the math (a step
    # was 8x faster with one thread than with two on a busy 2-core machine).
    return RLConfig(
        model=ModelConfig(spec=f"sorting:{settings.n}", seed=settings.seed),
        task=TaskConfig(
            name="sorting", n=settings.n, reward=settings.reward, num_eval=50, seed=settings.seed
        ),
        optim=OptimConfig(lr=settings.lr),
        run=RunConfig(dir=str(run_dir), save_every=never, log_rollouts_every=1, threads=1),
        algo=AlgoConfig(
            preset="grpo",
            advantage=DELTA_MODES[settings.delta],
            loss=settings.loss,
            epochs=settings.epochs,
            clip_eps_low=settings.clip_eps,
            clip_eps_high=settings.clip_eps,
            kl_coef=0.0,
        ),
        batch=BatchConfig(prompts_per_step=settings.prompts, group_size=settings.group),
        # A random policy may truncate every response at first; the canvas should show that,
        # not stop.
        health=HealthConfig(stop_when_all_truncated=False),
        steps=never,
        seed=settings.seed,
    )


class GrpoSession:
    """One live trainer plus what the canvas shows; every method holds `lock`."""

    def __init__(self, settings: GrpoSettings | None = None) -> None:
        self.lock = threading.RLock()
        self.settings = settings or GrpoSettings()
        self.trainer: Any = None
        self.run_dir: Path | None = None
        self.history: list[dict[str, float]] = []
        self.samples: list[dict[str, Any]] = []
        self._offset = 0
        self.rebuilds = 0

    def _build(self) -> None:
        self.close()
        self.run_dir = Path(tempfile.mkdtemp(prefix="posttrain-lab-grpo-"))
        self.trainer = PolicyGradientTrainer(make_config(self.settings, self.run_dir))
        self.history, self.samples, self._offset = [], [], 0
        self.rebuilds += 1

    def ensure(self) -> None:
        """Build the trainer on first use."""
        with self.lock:
            if self.trainer is None:
                self._build()

    def reset(self, params: dict[str, Any]) -> dict[str, Any]:
        """Apply new settings (any subset) and rebuild the trainer from scratch."""
        with self.lock:
            self.settings = GrpoSettings.from_params(params, self.settings)
            self._build()
            return self.state()

    def step(self, count: int = 1) -> dict[str, Any]:
        """Run `count` outer steps (rollout → advantages → K epochs of updates)."""
        if not 1 <= count <= MAX_STEPS_PER_CALL:
            raise ValueError(f"count: must be in [1, {MAX_STEPS_PER_CALL}], got {count}")
        with self.lock:
            self.ensure()
            for _ in range(count):
                metrics = self.trainer.step()
                self.history.append({"step": self.trainer.counters.step, **metrics})
            self._read_new_rollouts()
            return self.state()

    def _read_new_rollouts(self) -> None:
        """Keep the newest step's rollouts from the run's rollouts.jsonl (read incrementally)."""
        path = self.run_dir / "rollouts.jsonl"
        if not path.exists():
            return
        with path.open("rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        end = data.rfind(b"\n") + 1  # only whole lines; a partial tail is read next time
        self._offset += end
        records = [json.loads(line) for line in data[:end].splitlines() if line.strip()]
        if records:
            last = max(r["step"] for r in records)
            self.samples = [r for r in records if r["step"] == last]

    def state(self) -> dict[str, Any]:
        """What the canvas draws: settings, curves, and the latest sampled responses."""
        with self.lock:
            groups: dict[int, dict[str, Any]] = {}
            for r in self.samples:
                g = groups.setdefault(r["group"], {"prompt": r["prompt"], "responses": []})
                adv = r["advantages"][0] if r.get("advantages") else 0.0
                g["responses"].append(
                    {"response": r["response"], "reward": r["reward"], "advantage": adv}
                )
            keys = ("rollout/reward_mean", "loss/policy", "policy/clipfrac", "policy/entropy")
            return {
                "settings": self.settings.__dict__,
                "step": self.trainer.counters.step if self.trainer is not None else 0,
                "history": [
                    {"step": h["step"], **{k: h.get(k) for k in keys}} for h in self.history
                ],
                "samples": [groups[k] for k in sorted(groups)],
                "run_dir": str(self.run_dir) if self.run_dir else None,
                "rebuilds": self.rebuilds,
                "delta_modes": DELTA_MODES,
                "loss_modes": list(LOSS_MODES),
            }

    def close(self) -> None:
        """Release the trainer and delete its temporary run directory."""
        with self.lock:
            if self.trainer is not None:
                self.trainer.metrics.close()
                self.trainer = None
            if self.run_dir is not None:
                shutil.rmtree(self.run_dir, ignore_errors=True)
                self.run_dir = None
