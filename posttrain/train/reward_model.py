"""The reward model: an LM trunk with a scalar head on the last response token, trained with
Bradley–Terry on preference pairs; and `RewardModelReward`, which plugs it into the RL loop.

    r_φ(x, y) = w · h_L(x, y) + b,   h_L the trunk's last hidden state at the last token of y
    loss      = −log σ(r_φ(x, y_chosen) − r_φ(x, y_rejected))

Shape legend: B rows (prompt + response), b pairs, P prompt tokens (left-padded), T response
tokens (right-padded), H hidden size.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from posttrain.algorithms.preference import bradley_terry_loss
from posttrain.models.forward import accepts_kwarg, call_model, positions_from_mask
from posttrain.models.value_head import ValueHead
from posttrain.rollout.types import Rollout
from posttrain.run.distributed import World, init_distributed
from posttrain.run.faults import fault_point
from posttrain.run.progress import progress
from posttrain.run.sharding import autocast, resolve_device
from posttrain.tasks.base import Example, Status, Task, Verdict
from posttrain.tasks.jsonl import PreferencePair
from posttrain.train.common import (
    Counters,
    batch_indices,
    build_policy,
    build_task,
    make_optimizer,
    make_scheduler,
    open_checkpointed_run,
    prepare_run_dir,
    setup_torch,
)
from posttrain.train.dpo import batch_to
from posttrain.train.pairs import collate_pairs, finish_pair_step, map_pair_chunks, resolve_pairs
from posttrain.train.preference_configs import RewardModelConfig, refuse_fsdp

log = logging.getLogger("posttrain")

HEAD_FILE = "reward_head.safetensors"
"""The scalar head's weights, next to the trunk in a reward model's `final/`."""
STATS_FILE = "reward_stats.json"
"""Mean and std of the reward model's scores on held-out responses (for normalising)."""


class RewardModel(nn.Module):
    """A causal-LM trunk and a `ValueHead` reading its last hidden state at the last real token
    of each response (the <eos> for complete responses), so the score has read all of x and y."""

    def __init__(self, trunk: nn.Module, head: ValueHead | None = None) -> None:
        super().__init__()
        hidden = getattr(getattr(trunk, "config", None), "hidden_size", None)
        if hidden is None:
            raise ValueError(f"RewardModel: {type(trunk).__name__} has no config.hidden_size")
        self.trunk = trunk
        self.head = head if head is not None else ValueHead(hidden)

    def forward(
        self, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor, response_mask: Tensor
    ) -> Tensor:
        """Scores (B,) of prompt (B, P) left-padded + response (B, T) right-padded."""
        ids = torch.cat([prompt_ids, response_ids], dim=1)  # (B, L)
        mask = torch.cat([prompt_mask.bool(), response_mask.bool()], dim=1)  # (B, L)
        kwargs: dict[str, Any] = {
            "attention_mask": mask.long(),
            "position_ids": positions_from_mask(mask),
            "output_hidden_states": True,
        }
        if accepts_kwarg(self.trunk, "logits_to_keep"):
            kwargs["logits_to_keep"] = 1  # the LM head is not needed; keep its cost at one token
        states = call_model(self.trunk, ids, **kwargs).hidden_states[-1]  # (B, L, H)
        lengths = response_mask.long().sum(dim=1)  # (B,)
        if bool((lengths == 0).any()):
            raise ValueError("RewardModel: a response has no tokens to score")
        last = prompt_ids.shape[1] + lengths - 1  # (B,) position of each row's last token
        rows = torch.arange(ids.shape[0], device=ids.device)
        return self.head(states[rows, last])  # (B, H) -> (B,)


def save_reward_model(model: RewardModel, tokenizer: Any, out: Path, stats: dict) -> Path:
    """Write the trunk (`save_pretrained`), tokenizer, head and score statistics to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    model.trunk.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    head = {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()}
    save_file(head, out / HEAD_FILE)
    (out / STATS_FILE).write_text(json.dumps(stats, indent=2))
    return out


def load_reward_model(path: str | Path) -> tuple[RewardModel, Any, dict]:
    """(frozen RewardModel in eval mode, tokenizer, stats) from a directory `save_reward_model`
    wrote; stats holds "mean" and "std" of held-out scores."""
    from posttrain.models.loading import load_model

    path = Path(path)
    if not (path / HEAD_FILE).is_file():
        raise FileNotFoundError(f"{path}: no {HEAD_FILE}; is this a reward model's final/?")
    trunk, tokenizer = load_model(str(path))
    model = RewardModel(trunk)
    model.head.load_state_dict(load_file(path / HEAD_FILE))
    model.requires_grad_(False)
    model.eval()
    stats = json.loads((path / STATS_FILE).read_text()) if (path / STATS_FILE).exists() else {}
    return model, tokenizer, stats


@torch.no_grad()
def score_pairs(
    model: RewardModel,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    chat: bool = False,
    world: World | None = None,
) -> tuple[Tensor, Tensor]:
    """Scores (b,) of the chosen and (b,) of the rejected responses (fp32, on the model's
    device), 128 pairs at a time. Forward passes run in whatever autocast the caller set.
    Under torchrun (`world`) every rank must call it: the chunks are spread over the ranks and
    every rank gets all scores."""
    device = next(model.parameters()).device

    def chunk(sl: slice) -> tuple[Tensor, Tensor]:
        batch = batch_to(collate_pairs(tokenizer, pairs[sl], chat), device)
        scores = model(
            batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask
        ).float()  # (2b,): fp32 even under bf16 autocast
        return scores[: batch.num_pairs], scores[batch.num_pairs :]

    return map_pair_chunks(len(pairs), 128, chunk, device, world)


def pair_metrics(
    model: RewardModel,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    chat: bool = False,
    world: World | None = None,
) -> dict[str, float]:
    """Held-out Bradley–Terry loss, accuracy (chosen scored higher) and mean margin (every rank
    gets the same figures; see `score_pairs`)."""
    chosen, rejected = score_pairs(model, tokenizer, pairs, chat, world)
    out = bradley_terry_loss(chosen, rejected)
    return {
        "loss": float(out.loss.mean()),
        "accuracy": float(out.accuracy.mean()),
        "margin": float(out.margin.mean()),
    }


class RewardModelTrainer:
    """Builds the trunk, head, pairs and optimizer from a `RewardModelConfig`; `train()` runs or
    resumes, on `run.device`. Under torchrun it is data parallel (a replica per rank, no FSDP):
    a step's pairs are sharded by rank, gradients and metric sums are summed over ranks, held-out
    scoring is spread over the ranks, and rank 0 alone writes metrics, checkpoints and `final/`.
    With `run.precision=bf16-autocast` the forward passes run in bf16 while the weights,
    gradients, AdamW state and the loss stay fp32."""

    def __init__(self, cfg: RewardModelConfig, task: Task | None = None) -> None:
        """`task` (a Task object of your own) replaces `cfg.task.name`'s built-in task."""
        refuse_fsdp(cfg.run, "reward-model")
        self.cfg = cfg
        self.world = init_distributed()
        if cfg.batch_size % (cfg.micro_batch_size * self.world.size):
            raise ValueError(
                f"batch_size: {cfg.batch_size} is not a multiple of micro_batch_size="
                f"{cfg.micro_batch_size} × {self.world.size} rank(s)"
            )
        setup_torch(cfg.run, cfg.seed)
        self.run_dir, resume_from, config_dict = prepare_run_dir(cfg.run, cfg, self.world)
        self.task = task if task is not None else build_task(cfg.task)
        self.device = resolve_device(cfg.run.device, self.world)
        self.amp = functools.partial(autocast, cfg.run.precision, self.device)
        trunk, self.tokenizer = build_policy(cfg.model, self.device)
        self.model = RewardModel(trunk).to(self.device)
        self.model.eval()  # dropout off: the score is a deterministic function (grads still flow)
        self.train_pairs, self.eval_pairs = resolve_pairs(
            cfg.pairs,
            self.run_dir,
            self.task,
            cfg.model.init_from,
            chat=cfg.task.chat,
            resuming=resume_from is not None,
            world=self.world,
        )
        self.optimizer = make_optimizer(list(self.model.parameters()), cfg.optim)
        self.scheduler = make_scheduler(self.optimizer, cfg.optim, cfg.steps)
        self.counters = Counters()
        self.checkpointer, self.metrics = open_checkpointed_run(
            self.run_dir,
            config_dict,
            cfg.run,
            self.world,
            resume_from,
            self.counters,
            modules={"trunk": trunk, "reward_head": self.model.head},
            stateful={"optimizer": self.optimizer, "scheduler": self.scheduler},
        )

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step on batch `step` of the seeded pair stream (this rank's share)."""
        cfg = self.cfg
        idx = batch_indices(len(self.train_pairs), step, cfg.batch_size, cfg.seed)
        pairs = [self.train_pairs[idx[slot]] for slot in self.world.shard(len(idx))]
        self.optimizer.zero_grad(set_to_none=True)
        sums = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0}
        for start in range(0, len(pairs), cfg.micro_batch_size):
            part = pairs[start : start + cfg.micro_batch_size]
            batch = batch_to(collate_pairs(self.tokenizer, part, cfg.task.chat), self.device)
            with self.amp():
                scores = self.model(
                    batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask
                )  # (2b,)
            scores = scores.float()  # the loss in fp32 whatever the forward's precision
            out = bradley_terry_loss(scores[: batch.num_pairs], scores[batch.num_pairs :])
            # sum over the micro-batch / pairs in the global step = the step's mean, however it is
            # split over micro-batches and ranks
            (out.loss.sum() / cfg.batch_size).backward()
            sums["loss"] += float(out.loss.detach().sum())
            sums["accuracy"] += float(out.accuracy.sum())
            sums["margin"] += float(out.margin.sum())
        params = list(self.model.parameters())
        sums, grad_norm = finish_pair_step(params, sums, cfg.optim.max_grad_norm, step)
        self.optimizer.step()
        self.scheduler.step()
        n = cfg.batch_size
        return {
            "loss/rm": sums["loss"] / n,
            "rm/accuracy": sums["accuracy"] / n,
            "rm/margin": sums["margin"] / n,
            "optim/grad_norm": grad_norm,
            "optim/lr": self.scheduler.get_last_lr()[0],
        }

    def evaluate(self) -> dict[str, float]:
        """Loss, accuracy and margin on the held-out pairs (every rank joins; all get them)."""
        with self.amp():
            return pair_metrics(
                self.model, self.tokenizer, self.eval_pairs, self.cfg.task.chat, self.world
            )

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        if self.metrics is not None:
            self.metrics.log(step, metrics)

    def train(self) -> dict[str, Any]:
        """Run (or resume) to `cfg.steps`; export the reward model to `<run_dir>/final`."""
        cfg = self.cfg
        if self.counters.step == 0:
            self._log(0, {f"eval/rm_{k}": v for k, v in self.evaluate().items()})
        bar = progress(
            range(self.counters.step, cfg.steps),
            total=cfg.steps,
            initial=self.counters.step,
            desc="rm",
        )
        for step in bar:
            t0 = time.perf_counter()
            fault_point("step", step + 1)
            metrics = self.train_step(step)
            self.counters.step = step + 1
            metrics["time/step"] = time.perf_counter() - t0
            if cfg.eval_every and self.counters.step % cfg.eval_every == 0:
                metrics.update({f"eval/rm_{k}": v for k, v in self.evaluate().items()})
            self._log(self.counters.step, metrics)
            bar.set_postfix(loss=f"{metrics['loss/rm']:.3f}", acc=f"{metrics['rm/accuracy']:.2f}")
            if self.counters.step % cfg.run.save_every == 0 or self.counters.step == cfg.steps:
                self.checkpointer.save(self.counters.step)
        result = self.evaluate()
        if not (cfg.eval_every and self.counters.step % cfg.eval_every == 0):
            self._log(self.counters.step, {f"eval/rm_{k}": v for k, v in result.items()})
        with self.amp():
            chosen, rejected = score_pairs(
                self.model, self.tokenizer, self.eval_pairs, cfg.task.chat, self.world
            )
        held = torch.cat([chosen, rejected])
        stats = {"mean": float(held.mean()), "std": float(held.std().clamp_min(1e-6))}
        final = None
        if self.metrics is not None:  # rank 0 writes; the replicas are identical
            self.metrics.close()
            final = save_reward_model(self.model, self.tokenizer, self.run_dir / "final", stats)
        return {
            "eval": result,
            "stats": stats,
            "pairs": {"train": len(self.train_pairs), "eval": len(self.eval_pairs)},
            "final": str(final) if final is not None else None,
            "run_dir": str(self.run_dir),
        }


def train_reward_model(cfg: RewardModelConfig) -> dict[str, Any]:
    """Run the reward-model stage described by `cfg`."""
    return RewardModelTrainer(cfg).train()


@dataclass
class RewardModelReward:
    """A `RewardSource` from a reward model: every rollout row scored in one batched forward.

    reward = (r_φ(x, y) − mean) / std, with mean/std the model's held-out score statistics
    (0 and 1 leave it raw). When `verify` is given (the task's hidden rule), it also scores every
    response; its statuses are returned (so `verifier/*` counts are the true judgement) and
    `last_metrics` holds `true/score_mean` and `true/full_marks_frac` for the step.
    """

    model: RewardModel
    verify: Callable[[Example, str], Verdict] | None = None
    mean: float = 0.0
    std: float = 1.0
    micro_batch_size: int = 256
    last_metrics: dict[str, float] = field(default_factory=dict)

    @torch.no_grad()
    def __call__(
        self, examples: Sequence[Example], texts: Sequence[str], rollout: Rollout
    ) -> tuple[Tensor, Counter]:
        """Rewards (B,) float32 and the true verifier's status counts (empty without one)."""
        scores = []
        for start in range(0, rollout.batch_size, self.micro_batch_size):
            part = rollout.select(slice(start, start + self.micro_batch_size))
            scores.append(
                self.model(part.prompt_ids, part.prompt_mask, part.response_ids, part.response_mask)
            )
        raw = torch.cat(scores).float()  # (B,)
        rewards = (raw - self.mean) / self.std
        statuses: Counter = Counter()
        self.last_metrics = {"reward/rm_raw_mean": float(raw.mean())}
        if self.verify is not None:
            true = []
            for example, text in zip(examples, texts, strict=True):
                verdict = self.verify(example, text)
                statuses[verdict.status.value] += 1
                if verdict.status is not Status.ERROR:
                    true.append(float(verdict.reward))
            self.last_metrics["true/score_mean"] = sum(true) / len(true) if true else math.nan
            self.last_metrics["true/full_marks_frac"] = statuses[Status.OK.value] / len(texts)
        return rewards, statuses
