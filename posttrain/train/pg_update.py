"""The update half of the policy-gradient loop: K inner epochs of mini-batch optimizer steps over
one scored rollout batch, each accumulated over micro-batches with the mini-batch's global
normaliser, gradients summed over data-parallel ranks.

Mini-batches are drawn by *prompt* (a seeded permutation of the step's prompts, identical on
every rank), so a mini-batch holds whole groups and is the same set of rollouts whatever the
world size: one process and N ranks take the same optimizer steps.
Shape legend: B rollouts on this rank, T response tokens.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from posttrain.algorithms.aggregation import aggregate_loss
from posttrain.algorithms.kl import KL_ESTIMATORS, KLController
from posttrain.algorithms.losses import POLICY_LOSSES, value_loss
from posttrain.models.forward import forward_response
from posttrain.run.distributed import (
    all_reduce_max,
    all_reduce_sum,
    global_normalizer,
    sum_gradients,
    world,
)
from posttrain.run.faults import fault_point
from posttrain.run.sharding import clip_grad_norm, is_sharded, replicated
from posttrain.train.common import Counters
from posttrain.train.configs import AlgoConfig
from posttrain.train.plan import Algorithm, BatchPlan
from posttrain.train.rl_batch import ScoredBatch

log = logging.getLogger("posttrain")

_SUMMED = ("policy/entropy", "policy/clipfrac", "policy/approx_kl", "policy/logprob_gap")
"""Per-token diagnostics accumulated as sums over loss tokens (divided by the token count)."""


class TrainingHealthError(RuntimeError):
    """The run was stopped by a health guard (the message says which and what to change)."""


@dataclass
class PolicyUpdate:
    """Everything one update reads and writes; `__call__(batch)` runs it and returns metrics."""

    policy: nn.Module
    value_head: nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    algo: Algorithm
    knobs: AlgoConfig
    plan: BatchPlan
    temperature: float
    max_new_tokens: int
    max_grad_norm: float
    max_nonfinite_steps: int
    shuffle_gen: torch.Generator
    kl_ctl: KLController
    counters: Counters
    amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    """Context of the forward passes (bf16 autocast or nothing); backward runs outside it."""
    fast_forward: bool | None = None
    """`forward_response(fast=...)`: None (default) runs policies `fast_llama` reproduces
    through it (each group's prompt once, fused ops) and others through their own forward;
    True requires it; False always uses the model's own forward."""

    def micro_loss(
        self, batch: ScoredBatch, rows: torch.Tensor, normalizer: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Micro-batch `rows`: its share of the mini-batch loss and sums of its diagnostics."""
        ro, mask = batch.rollout, batch.loss_mask[rows]
        fwd = forward_response(
            self.policy,
            ro.prompt_ids[rows],
            ro.prompt_mask[rows],
            ro.response_ids[rows],
            ro.response_mask[rows],
            temperature=self.temperature,
            with_entropy=True,
            with_hidden=self.value_head is not None,
            fast=self.fast_forward,
        )
        old = ro.logprobs[rows]
        pl = POLICY_LOSSES[self.algo.loss](
            fwd.logprobs,
            old,
            batch.advantages[rows],
            self.algo.clip_eps_low,
            self.algo.clip_eps_high,
            mask=mask,
        )
        per_token = pl.loss  # (b, T)
        if self.algo.kl_placement == "loss" and batch.ref_logprobs is not None:
            kl = KL_ESTIMATORS[self.algo.kl_estimator](
                fwd.logprobs, batch.ref_logprobs[rows], mask=mask
            )
            per_token = per_token + self.kl_ctl.coef * kl
        if self.knobs.entropy_coef:
            per_token = per_token - self.knobs.entropy_coef * fwd.entropy
        loss = aggregate_loss(per_token, mask, self.algo.loss_agg, normalizer)
        logp = fwd.logprobs.detach()
        diag = {
            "loss/policy": aggregate_loss(pl.loss.detach(), mask, self.algo.loss_agg, normalizer),
            "policy/entropy": torch.where(mask, fwd.entropy.detach(), 0.0).sum(),
            "policy/clipfrac": torch.where(mask, pl.clipped.float(), 0.0).sum(),
            "policy/approx_kl": torch.where(
                mask, KL_ESTIMATORS["k3"](logp, old, mask=mask), 0.0
            ).sum(),
            "policy/logprob_gap": torch.where(mask, (logp - old).abs(), 0.0).sum(),
            "policy/ratio_max": torch.where(mask, pl.ratio.detach(), 0.0).amax()
            if mask.any()
            else torch.tensor(0.0),
        }
        if self.value_head is not None:
            values = self.value_head(fwd.hidden)
            vl = value_loss(
                values,
                batch.old_values[rows],
                batch.returns[rows],
                self.knobs.value_clip_eps,
                mask=mask,
            )
            v = aggregate_loss(vl, mask, self.algo.loss_agg, normalizer)
            loss = loss + self.knobs.value_coef * v
            diag["loss/value"] = v.detach()
        return loss, diag

    def mini_batches(self, batch: ScoredBatch, epoch_perm: torch.Tensor) -> list[torch.Tensor]:
        """This rank's rows of each mini-batch: the rollouts of the prompts in each slice of the
        epoch's prompt permutation (global prompt ids) that live on this rank."""
        per = self.plan.prompts_per_step // self.plan.mini_batches
        local = world().shard(self.plan.prompts_per_step)
        row_prompt = batch.rollout.group_ids + local.start  # (B,) global prompt of each row
        out = []
        for m in range(self.plan.mini_batches):
            chosen = epoch_perm[m * per : (m + 1) * per].tolist()
            # This rank's rows of those prompts, in the permutation's prompt order.
            out.append(torch.cat([(row_prompt == p).nonzero().squeeze(1) for p in chosen]))
        return out

    def __call__(self, batch: ScoredBatch) -> dict[str, float]:
        """K inner epochs over one scored batch; returns the update's metrics (all ranks agree)."""
        plan, sums, gap = self.plan, Counter(), None
        for epoch in range(plan.epochs):
            if epoch:
                fault_point("inner_epoch", epoch)
            perm = torch.randperm(plan.prompts_per_step, generator=self.shuffle_gen)
            for m, mini in enumerate(self.mini_batches(batch, perm)):
                normalizer = global_normalizer(
                    batch.loss_mask[mini], self.algo.loss_agg, float(self.max_new_tokens)
                )
                self.optimizer.zero_grad(set_to_none=True)
                # Every rank reduces the same keys, even one that holds no rows of this batch.
                step_sums, bad = Counter(dict.fromkeys(self._keys(), 0.0)), torch.zeros(1)
                micro = [
                    mini[s : s + plan.micro_batch_size]
                    for s in range(0, len(mini), plan.micro_batch_size)
                ]
                sharded = is_sharded(self.policy)
                if sharded:  # FSDP: every rank must make the same forward/backward calls
                    most = int(all_reduce_max(torch.tensor([float(len(micro))]))[0])
                    micro += [None] * (most - len(micro))
                for rows in micro:
                    if rows is None:  # a padding pass: zero gradient, joins the collectives
                        with self.amp():
                            loss, _ = self.micro_loss(
                                batch, torch.zeros(1, dtype=torch.long), normalizer
                            )  # row 0, weighted 0
                        (loss * 0.0).backward()
                        continue
                    with self.amp():
                        loss, diag = self.micro_loss(batch, rows, normalizer)
                    if torch.isfinite(loss):
                        loss.backward()
                    else:
                        bad[0] = 1.0
                        if sharded:
                            (loss * 0.0).backward()  # the reduce-scatter needs every rank
                    step_sums["tokens"] += float(batch.loss_mask[rows].sum())
                    for key, value in diag.items():
                        if key == "policy/ratio_max":
                            step_sums[key] = max(step_sums[key], float(value))
                        else:
                            step_sums[key] += float(value)
                step_sums = self._reduce(step_sums)
                if epoch == 0 and m == 0:
                    gap = step_sums["policy/logprob_gap"] / max(step_sums["tokens"], 1.0)
                sum_gradients(replicated(self._params()))  # FSDP already summed its shards
                grad_norm = self._clip()
                if bool(all_reduce_max(bad)[0]) or not math.isfinite(grad_norm):
                    self._skip()
                    continue
                self.optimizer.step()
                self.scheduler.step()
                self.counters.nonfinite_streak = 0
                for key, value in step_sums.items():
                    sums[key] = (
                        max(sums[key], value) if key == "policy/ratio_max" else sums[key] + value
                    )
                sums["optim/grad_norm"] += grad_norm
                sums["updates"] += 1
        return self._summary(sums, gap)

    def _keys(self) -> tuple[str, ...]:
        value = ("loss/value",) if self.value_head is not None else ()
        return ("tokens", "loss/policy", *_SUMMED, "policy/ratio_max", *value)

    def _reduce(self, sums: Counter) -> Counter:
        """Diagnostics summed (ratio max: maxed) over ranks."""
        keys = sorted(k for k in sums if k != "policy/ratio_max")
        total = all_reduce_sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64))
        out = Counter(dict(zip(keys, total.tolist(), strict=True)))
        out["policy/ratio_max"] = float(all_reduce_max(torch.tensor([sums["policy/ratio_max"]]))[0])
        return out

    def _summary(self, sums: Counter, gap: float | None) -> dict[str, float]:
        n = max(sums["updates"], 1)
        out = {
            "loss/policy": sums["loss/policy"] / n,
            "optim/grad_norm": sums["optim/grad_norm"] / n,
            "optim/lr": self.scheduler.get_last_lr()[0],
            "optim/skipped_updates": float(self.plan.optimizer_steps_per_batch - sums["updates"]),
            "policy/ratio_max": sums["policy/ratio_max"],
            "policy/logprob_gap": gap if gap is not None else math.nan,
        }
        for key in _SUMMED[:3]:
            out[key] = sums[key] / max(sums["tokens"], 1.0)
        if self.value_head is not None:
            out["loss/value"] = sums["loss/value"] / n
        return out

    def _params(self) -> list[nn.Parameter]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _clip(self) -> float:
        """Global grad-norm clip over every trained parameter; returns the pre-clip norm."""
        return clip_grad_norm(self._params(), self.max_grad_norm or math.inf)

    def _skip(self) -> None:
        """Drop a non-finite update (every rank agrees); stop after too many in a row."""
        self.optimizer.zero_grad(set_to_none=True)
        self.counters.nonfinite_streak += 1
        self.counters.skipped_steps += 1
        log.warning(
            "non-finite loss or gradient: update skipped (%d in a row)",
            self.counters.nonfinite_streak,
        )
        if self.counters.nonfinite_streak >= self.max_nonfinite_steps:
            raise TrainingHealthError(
                f"{self.counters.nonfinite_streak} updates in a row had a non-finite loss or gradient; "
                "lower optim.lr, set optim.max_grad_norm, or check the rewards"
            )
