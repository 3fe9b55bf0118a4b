"""DPO and IPO: preference pairs straight into the policy, against a frozen reference.

    h    = (log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))
    DPO  = −log σ(β·h)           IPO = (h − 1/(2τ))²        (posttrain.algorithms.preference)

log π(y|x) is the sum of the response's token log-probs, <eos> included. The reference never
changes, so its log-probs are computed once, before training, and cached on disk under a key
made of the pairs' hash and the reference weights' hash: a different dataset or model gets a
different key, hence a fresh computation (RELIABILITY CORR-11). Under torchrun the chunks of that
pass are spread over the ranks and gathered to all of them; rank 0 alone writes the file.

Shape legend: b pairs, N pairs in a dataset, T response tokens.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from posttrain.algorithms.preference import PREFERENCE_LOSSES
from posttrain.models.forward import forward_response
from posttrain.models.reference import frozen_copy, parameter_digest
from posttrain.run.distributed import World, all_reduce_sum, init_distributed
from posttrain.run.faults import fault_point
from posttrain.run.progress import progress
from posttrain.run.sharding import autocast, resolve_device
from posttrain.tasks.base import Task
from posttrain.tasks.jsonl import PreferencePair
from posttrain.train.common import (
    Counters,
    batch_indices,
    build_policy,
    build_task,
    export_final,
    make_optimizer,
    make_scheduler,
    open_checkpointed_run,
    prepare_run_dir,
    setup_torch,
)
from posttrain.train.evaluate import evaluate
from posttrain.train.pairs import (
    PairBatch,
    collate_pairs,
    finish_pair_step,
    map_pair_chunks,
    pairs_digest,
    resolve_pairs,
)
from posttrain.train.preference_configs import DPOConfig, refuse_fsdp

log = logging.getLogger("posttrain")

_CHUNK = 64  # pairs per reference forward pass


def batch_to(batch: PairBatch, device: torch.device) -> PairBatch:
    """The same (2b)-row pair batch with every tensor on `device`."""
    return dataclasses.replace(
        batch, **{f.name: getattr(batch, f.name).to(device) for f in dataclasses.fields(batch)}
    )


def sequence_logprobs(
    model: nn.Module, tokenizer: Any, pairs: Sequence[PreferencePair], chat: bool = False
) -> tuple[Tensor, Tensor]:
    """log π(chosen|prompt) (b,) and log π(rejected|prompt) (b,): summed token log-probs at
    temperature 1, <eos> included, fp32 on the model's device whatever autocast the caller set.
    Differentiable (call under no_grad for a reference)."""
    batch = batch_to(collate_pairs(tokenizer, pairs, chat), next(model.parameters()).device)
    logprobs = forward_response(
        model, batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask
    ).logprobs  # (2b, T), 0 on padding
    seq = logprobs.float().sum(dim=1)  # (2b,)
    return seq[: batch.num_pairs], seq[batch.num_pairs :]


def reference_cache_key(
    pairs: Sequence[PreferencePair], reference: nn.Module, chat: bool, precision: str = "fp32"
) -> str:
    """SHA-256 over the pairs' digest, the reference weights' digest, the prompt format and the
    forward precision (bf16 log-probs differ from fp32 ones, so they are cached apart)."""
    parts = f"{pairs_digest(pairs)}:{parameter_digest(reference)}:chat={chat}"
    if precision != "fp32":  # fp32 keeps the key it always had (existing caches stay valid)
        parts += f":precision={precision}"
    return hashlib.sha256(parts.encode()).hexdigest()


def reference_logprobs(
    reference: nn.Module,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    cache_dir: Path,
    chat: bool = False,
    precision: str = "fp32",
    amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    world: World | None = None,
) -> tuple[Tensor, Tensor]:
    """Reference log-probs of every pair's chosen (N,) and rejected (N,) response (fp32, on
    CPU), computed once and cached in `cache_dir/ref-logprobs-<key>.safetensors` (atomic
    write). A file whose stored key or size does not match is ignored and recomputed. `amp` is
    the forward-pass context of `precision` (`posttrain.run.sharding.autocast`); `precision`
    is part of the key. Under torchrun (`world`) every rank must call it: the file is used only
    if every rank can read it, else the chunks are computed across the ranks, every rank gets
    all N values, and rank 0 alone writes the file."""
    world = world or World()
    key = reference_cache_key(pairs, reference, chat, precision)
    path = cache_dir / f"ref-logprobs-{key[:16]}.safetensors"
    device = next(reference.parameters()).device
    cached = _read_cache(path, key, len(pairs))
    misses = all_reduce_sum(torch.tensor([float(cached is None)], device=device))
    if cached is not None and float(misses[0]) == 0:  # the same choice on every rank
        log.info("reference log-probs: cache hit %s", path)
        return cached

    def chunk(sl: slice) -> tuple[Tensor, Tensor]:
        fault_point("ref_cache", sl.start // _CHUNK)
        return sequence_logprobs(reference, tokenizer, pairs[sl], chat)

    with torch.no_grad(), amp():
        chosen, rejected = map_pair_chunks(len(pairs), _CHUNK, chunk, device, world)
    out = {"chosen": chosen.cpu().contiguous(), "rejected": rejected.cpu().contiguous()}
    if world.is_main:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
        save_file(out, tmp, metadata={"key": key, "pairs": str(len(pairs))})
        os.replace(tmp, path)
    return out["chosen"], out["rejected"]


def _read_cache(path: Path, key: str, num_pairs: int) -> tuple[Tensor, Tensor] | None:
    """The cached (chosen, rejected) at `path` if its stored key and size match, else None."""
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        if (f.metadata() or {}).get("key") == key:
            chosen, rejected = f.get_tensor("chosen"), f.get_tensor("rejected")
            if chosen.shape == rejected.shape == (num_pairs,):
                return chosen, rejected
    log.warning("reference log-probs: %s does not match; recomputing", path)
    return None


class DPOTrainer:
    """Builds policy, frozen reference, pairs and the reference cache from a `DPOConfig`;
    `train()` runs or resumes, on `run.device`. Under torchrun it is data parallel (a replica
    per rank, no FSDP): a step's pairs are sharded by rank, gradients and metric sums are summed
    over ranks, the reference and held-out passes are spread over the ranks (every rank gets
    all values), and rank 0 alone writes the cache, metrics, checkpoints, `final/` and runs the
    closing greedy task evaluation. With `run.precision=bf16-autocast` the forward passes
    (reference included) run in bf16 while the weights, gradients, AdamW state and the loss
    stay fp32."""

    def __init__(self, cfg: DPOConfig, task: Task | None = None) -> None:
        """`task` (a Task object of your own) replaces `cfg.task.name`'s built-in task."""
        refuse_fsdp(cfg.run, cfg.loss.upper())
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
        self.policy, self.tokenizer = build_policy(cfg.model, self.device)
        self.policy.eval()  # dropout off, so policy = reference exactly at step 0
        # Copied before any checkpoint is restored: the reference is always the start model.
        self.reference = frozen_copy(self.policy)
        self.loss_fn = PREFERENCE_LOSSES[cfg.loss]
        chat = cfg.task.chat
        self.train_pairs, self.eval_pairs = resolve_pairs(
            cfg.pairs,
            self.run_dir,
            self.task,
            cfg.model.init_from,
            chat=chat,
            resuming=resume_from is not None,
            world=self.world,
        )
        cache = Path(cfg.ref_cache_dir) if cfg.ref_cache_dir else self.run_dir
        ref = functools.partial(
            reference_logprobs,
            self.reference,
            self.tokenizer,
            cache_dir=cache,
            chat=chat,
            precision=cfg.run.precision,
            amp=self.amp,
            world=self.world,
        )  # (N,) chosen and (N,) rejected, cached on CPU; kept beside the policy for the loss
        self.ref_train = tuple(t.to(self.device) for t in ref(self.train_pairs))
        self.ref_eval = tuple(t.to(self.device) for t in ref(self.eval_pairs))
        self.optimizer = make_optimizer(list(self.policy.parameters()), cfg.optim)
        self.scheduler = make_scheduler(self.optimizer, cfg.optim, cfg.steps)
        self.counters = Counters()
        self.checkpointer, self.metrics = open_checkpointed_run(
            self.run_dir,
            config_dict,
            cfg.run,
            self.world,
            resume_from,
            self.counters,
            modules={"policy": self.policy},
            stateful={"optimizer": self.optimizer, "scheduler": self.scheduler},
        )

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step on batch `step` of the seeded pair stream (this rank's share)."""
        cfg = self.cfg
        idx = batch_indices(len(self.train_pairs), step, cfg.batch_size, cfg.seed)
        idx = [idx[slot] for slot in self.world.shard(len(idx))]
        self.optimizer.zero_grad(set_to_none=True)
        keys = (
            "loss",
            "accuracy",
            "margin",
            "chosen_reward",
            "rejected_reward",
            "chosen_logp",
            "rejected_logp",
        )
        sums = dict.fromkeys(keys, 0.0)
        for start in range(0, len(idx), cfg.micro_batch_size):
            mb = idx[start : start + cfg.micro_batch_size]
            with self.amp():
                pc, pr = sequence_logprobs(
                    self.policy, self.tokenizer, [self.train_pairs[i] for i in mb], cfg.task.chat
                )  # (b,), (b,) fp32
            rc, rr = self.ref_train[0][mb], self.ref_train[1][mb]
            out = self.loss_fn(pc, pr, rc, rr, cfg.beta)
            # the global step's mean, however it is split over micro-batches and ranks
            (out.loss.sum() / cfg.batch_size).backward()
            sums["loss"] += float(out.loss.detach().sum())
            sums["accuracy"] += float(out.accuracy.sum())
            sums["margin"] += float(out.margin.sum())
            sums["chosen_reward"] += float(out.chosen_rewards.sum())
            sums["rejected_reward"] += float(out.rejected_rewards.sum())
            sums["chosen_logp"] += float(pc.detach().sum())
            sums["rejected_logp"] += float(pr.detach().sum())
        params = list(self.policy.parameters())
        sums, grad_norm = finish_pair_step(params, sums, cfg.optim.max_grad_norm, step)
        self.optimizer.step()
        self.scheduler.step()
        n = cfg.batch_size
        out = {f"pref/{k}": v / n for k, v in sums.items() if k != "loss"}
        out.update(
            {
                "loss/pref": sums["loss"] / n,
                "optim/grad_norm": grad_norm,
                "optim/lr": self.scheduler.get_last_lr()[0],
            }
        )
        return out

    @torch.no_grad()
    def evaluate_pairs(self) -> dict[str, float]:
        """Held-out loss, implicit-reward accuracy and margin (every rank joins: the chunks are
        spread over the ranks and every rank gets the same figures)."""
        pairs, (rc, rr) = self.eval_pairs, self.ref_eval

        def chunk(sl: slice) -> tuple[Tensor, Tensor]:
            return sequence_logprobs(self.policy, self.tokenizer, pairs[sl], self.cfg.task.chat)

        with self.amp():
            chosen, rejected = map_pair_chunks(len(pairs), _CHUNK, chunk, self.device, self.world)
        out = self.loss_fn(chosen, rejected, rc, rr, self.cfg.beta)
        return {
            "pref_loss": float(out.loss.mean()),
            "pref_accuracy": float(out.accuracy.mean()),
            "pref_margin": float(out.margin.mean()),
        }

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        if self.metrics is not None:
            self.metrics.log(step, metrics)

    def train(self) -> dict[str, Any]:
        """Run (or resume) to `cfg.steps`; export the policy to `<run_dir>/final`."""
        cfg = self.cfg
        if self.counters.step == 0:
            self._log(0, {f"eval/{k}": v for k, v in self.evaluate_pairs().items()})
        bar = progress(
            range(self.counters.step, cfg.steps),
            total=cfg.steps,
            initial=self.counters.step,
            desc=cfg.loss,
        )
        for step in bar:
            t0 = time.perf_counter()
            fault_point("step", step + 1)
            metrics = self.train_step(step)
            self.counters.step = step + 1
            metrics["time/step"] = time.perf_counter() - t0
            if cfg.eval_every and self.counters.step % cfg.eval_every == 0:
                metrics.update({f"eval/{k}": v for k, v in self.evaluate_pairs().items()})
            self._log(self.counters.step, metrics)
            bar.set_postfix(loss=f"{metrics['loss/pref']:.3f}")
            if self.counters.step % cfg.run.save_every == 0 or self.counters.step == cfg.steps:
                self.checkpointer.save(self.counters.step)
        pairs = self.evaluate_pairs()
        if self.metrics is None:  # not rank 0: the replicas are identical, rank 0 reports
            return {"pairs": pairs, "after": {}, "final": None, "run_dir": str(self.run_dir)}
        with self.amp():
            task_eval = evaluate(
                self.policy,
                self.tokenizer,
                self.task,
                list(self.task.eval)[: cfg.eval_examples],
                chat=cfg.task.chat,
            )
        self.metrics.log(
            self.counters.step,
            {
                **{f"eval/{k}": v for k, v in pairs.items()},
                **{f"eval/{k}": v for k, v in task_eval.items()},
            },
        )
        self.metrics.close()
        final = export_final(self.policy, self.tokenizer, self.run_dir)
        return {
            "pairs": pairs,
            "after": task_eval,
            "final": str(final),
            "run_dir": str(self.run_dir),
        }


def train_dpo(cfg: DPOConfig) -> dict[str, Any]:
    """Run the DPO/IPO stage described by `cfg`."""
    return DPOTrainer(cfg).train()
