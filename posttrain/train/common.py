"""What every training stage shares: the run directory, building the model and task, the
optimizer and schedule, the data order, and checkpoint save/restore of a stage's state.

A stage lists its stateful parts once (modules → safetensors; optimizer, scheduler, counters,
controllers → state.pt; generators → RNG state), and `Checkpointer` saves and restores exactly
those, so adding a stateful part means registering it, not editing save and load.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from posttrain.config import save_config, to_dict
from posttrain.run.checkpoint import (
    check_config_drift,
    config_fingerprint,
    load_checkpoint,
    load_state_dict_strict,
    module_weights,
    resolve_resume,
    save_checkpoint,
)
from posttrain.run.distributed import World
from posttrain.run.rng import capture_rng, restore_rng
from posttrain.run.sharding import gather_full_state, is_sharded, localize
from posttrain.train.configs import ModelConfig, OptimConfig, RunConfig, TaskConfig

log = logging.getLogger("posttrain")

FINAL_DIR = "final"
"""Subdirectory of a run holding the trained model and tokenizer (`save_pretrained` format)."""


class Stateful(Protocol):
    """Anything with `state_dict()` / `load_state_dict()`: optimizers, schedulers, controllers."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass
class Counters:
    """Loop counters that live in every checkpoint."""

    step: int = 0
    """Optimizer/outer steps completed."""
    nonfinite_streak: int = 0
    """Consecutive skipped steps (non-finite loss or gradient)."""
    skipped_steps: int = 0
    """All skipped steps so far."""

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in self.__dict__:
            setattr(self, key, int(state[key]))


def setup_torch(run: RunConfig, seed: int) -> None:
    """Seed every global RNG and apply the thread/determinism settings."""
    if run.threads:
        torch.set_num_threads(run.threads)
    if run.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def build_policy(cfg: ModelConfig, device: str | torch.device = "cpu") -> tuple[nn.Module, Any]:
    """Load or build the policy and its tokenizer (`posttrain.models.loading.load_model`) on
    `device`; `init_from` (an earlier stage's `final/`) wins over `spec`."""
    from posttrain.models.loading import load_model

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
    spec = cfg.init_from or cfg.spec
    return load_model(
        spec, dtype=dtype, trust_remote_code=cfg.trust_remote_code, seed=cfg.seed, device=device
    )


def build_task(cfg: TaskConfig):
    """The task named by `cfg.name`, given those `TaskConfig` fields its factory takes (a
    config section serves every task; each task reads its own fields)."""
    from posttrain.tasks.registry import TASKS, make_task

    if cfg.name not in TASKS:
        raise ValueError(f"task.name: unknown task {cfg.name!r}; known: {sorted(TASKS)}")
    accepted = inspect.signature(TASKS[cfg.name]).parameters
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k in accepted and v is not None}
    return make_task(cfg.name, **fields)


def make_optimizer(params: Sequence[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over `params`, fused (one kernel over all tensors) where torch has it.

    torch's default on CPU is a per-tensor loop; fused is ~4x faster for a ~1M-parameter model
    (the same update up to float rounding). Sharded (DTensor) parameters keep the default.
    """
    from posttrain.run.sharding import DTensor

    params = list(params)
    fused = all(
        p.device.type in ("cpu", "cuda")
        and p.is_floating_point()
        and not (DTensor is not None and isinstance(p, DTensor))
        for p in params
    )
    return torch.optim.AdamW(
        params,
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        weight_decay=cfg.weight_decay,
        fused=fused or None,
    )


def make_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `cfg.warmup_steps`, then constant or cosine to 0 at `total_steps`."""
    warmup, cosine = cfg.warmup_steps, cfg.schedule == "cosine"

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_items: int, epoch: int, seed: int) -> tuple[int, ...]:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(num_items, generator=gen).tolist())


def epoch_order(num_items: int, index: int, seed: int) -> int:
    """The item at position `index` of an endless stream of seeded per-epoch permutations.

    The data position is then just the step counter: resuming at step s replays exactly the
    order the uninterrupted run would have seen, across epoch boundaries.
    """
    epoch, offset = divmod(index, num_items)
    return _epoch_permutation(num_items, epoch, seed)[offset]


def batch_indices(num_items: int, step: int, batch_size: int, seed: int) -> list[int]:
    """Dataset indices of batch `step` (batch_size items) in the epoch stream."""
    start = step * batch_size
    return [epoch_order(num_items, start + i, seed) for i in range(batch_size)]


@dataclass
class Checkpointer:
    """Saves and restores a stage's registered state; see the module docstring."""

    run_dir: Path
    config: dict[str, Any]
    keep_last: int
    modules: dict[str, nn.Module] = field(default_factory=dict)
    stateful: dict[str, Stateful] = field(default_factory=dict)
    generators: dict[str, torch.Generator] = field(default_factory=dict)
    world: World = field(default_factory=World)

    def save(self, step: int) -> Path | None:
        """Write checkpoint `step` atomically (rank 0 only: every rank holds the same replica
        and the same generator states); older ones are rotated out afterwards. Sharded (FSDP)
        parts are first gathered to full tensors by every rank, so the format is the same."""
        if any(is_sharded(m) for m in self.modules.values()):
            weights = {name: gather_full_state(m.state_dict()) for name, m in self.modules.items()}
            state = {name: gather_full_state(s.state_dict()) for name, s in self.stateful.items()}
            if not self.world.is_main:
                return None
        else:
            if not self.world.is_main:
                return None
            weights = {name: module_weights(m) for name, m in self.modules.items()}
            state = {name: s.state_dict() for name, s in self.stateful.items()}
        state["rng"] = capture_rng(self.generators)
        return save_checkpoint(self.run_dir, step, weights, state, self.config, self.keep_last)

    def restore(self, path: Path, allow_changes: Sequence[str] = ()) -> None:
        """Load checkpoint `path` into the registered parts; refuses config drift."""
        ckpt = load_checkpoint(path)
        changed = check_config_drift(
            ckpt.config,
            self.config,
            allow=allow_changes,
            ignore=("run.resume", "run.allow_config_change"),
        )
        for name in changed:
            log.warning("resuming with a changed config field (allowed): %s", name)
        missing = set(self.modules) - set(ckpt.weights)
        if missing:
            raise RuntimeError(f"checkpoint {path} has no weights for {sorted(missing)}")
        for name, module in self.modules.items():
            weights = localize(module, ckpt.weights[name])  # identity unless sharded
            load_state_dict_strict(module, weights, f"checkpoint {path}/{name}")
        for name, part in self.stateful.items():
            if name not in ckpt.state:
                raise RuntimeError(f"checkpoint {path}/state.pt has no entry {name!r}")
            part.load_state_dict(localize(part, ckpt.state[name]))
        restore_rng(ckpt.state["rng"], self.generators)


def open_checkpointed_run(
    run_dir: Path,
    config: dict[str, Any],
    run_cfg: RunConfig,
    world: World,
    resume_from: Path | None,
    counters: Counters,
    *,
    modules: dict[str, nn.Module],
    stateful: dict[str, Stateful],
    generators: dict[str, torch.Generator] | None = None,
) -> tuple[Checkpointer, Any]:
    """Every stage's checkpointed state in one place: the Checkpointer over `modules`,
    `stateful` (+ `counters`) and `generators`, the metrics log (rank 0 only, else None) and,
    when resuming, the restore and the truncation of metric lines written after the restored
    step. Returns (checkpointer, metrics logger or None)."""
    from posttrain.run.metrics import MetricsLogger

    checkpointer = Checkpointer(
        run_dir,
        config,
        run_cfg.keep_last,
        modules=modules,
        stateful={**stateful, "counters": counters},
        generators=generators or {},
        world=world,
    )
    metrics = MetricsLogger(run_dir) if world.is_main else None
    if resume_from is not None:
        checkpointer.restore(resume_from, run_cfg.allow_config_change)
        if metrics is not None:
            metrics.truncate_after(counters.step)
        log.info("resumed from %s at step %d", resume_from, counters.step)
    return checkpointer, metrics


def prepare_run_dir(
    run: RunConfig, cfg: Any, world: World | None = None
) -> tuple[Path, Path | None, dict[str, Any]]:
    """Create the run directory, write the resolved config, and find the checkpoint to resume.

    Returns (run_dir, checkpoint path or None, the config as a dict). A fresh start in a run
    directory that already has checkpoints is refused: finished work is never overwritten.
    Every rank resolves the resume path (a shared filesystem is assumed); rank 0 writes.
    """
    run_dir = Path(run.dir)
    resume = resolve_resume(run_dir, run.resume)
    root = run_dir / "checkpoints"
    # An unfinished save (*.tmp) is debris of a killed attempt, not finished work.
    finished = [p for p in root.iterdir() if not p.name.endswith(".tmp")] if root.is_dir() else []
    if resume is None and finished:
        how = (
            "none of them is complete (the warnings above say why); name one with "
            "--run.resume=PATH to see its error, move them away,"
            if run.resume
            else "pass --run.resume=auto to continue it"
        )
        raise RuntimeError(
            f"{run_dir} already holds checkpoints; {how} or choose another --run.dir"
        )
    config = to_dict(cfg)
    if world is None or world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
        if resume is None:
            _drop_stale_logs(run_dir)
    log.info("run directory %s (config fingerprint %s)", run_dir, config_fingerprint(config)[:12])
    return run_dir, resume, config


def _drop_stale_logs(run_dir: Path) -> None:
    """A fresh start redoes every step, so lines left by an attempt killed before its first
    checkpoint would repeat steps (or make them go backwards) in the logs: drop them."""
    from posttrain.run.metrics import METRICS_FILE, MetricsLogger
    from posttrain.run.rollout_log import RolloutLog

    if (run_dir / METRICS_FILE).exists():
        with MetricsLogger(run_dir, tensorboard=False) as stale:
            if stale.truncate_after(-1):
                log.warning("fresh start: dropped the metric lines of an earlier attempt")
    RolloutLog(run_dir).truncate_after(-1)


def export_final(
    model: nn.Module, tokenizer: Any, run_dir: Path, state_dict: dict[str, Any] | None = None
) -> Path:
    """Save the trained model and tokenizer to `<run_dir>/final` for the next stage.
    `state_dict`: full weights gathered from a sharded model (`gather_full_state`)."""
    out = run_dir / FINAL_DIR
    extra = {} if state_dict is None else {"state_dict": state_dict}
    model.save_pretrained(out, safe_serialization=True, **extra)
    tokenizer.save_pretrained(out)
    return out
