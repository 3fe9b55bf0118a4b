"""The one policy-gradient loop: REINFORCE, actor-critic, PPO, GRPO, Dr. GRPO and RLOO.

    for step:  sample N prompts × G responses → score → advantages
               for epoch in K:  for mini-batch:  for micro-batch:  loss.backward()
                                                  clip → optimizer step

An algorithm is only a choice of advantage estimator, policy loss, KL placement and loss
aggregation (`posttrain.algorithms.presets`); this file never asks which algorithm it runs.
Shape legend: B rollouts, T response tokens, H hidden size.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch

from posttrain.algorithms.aggregation import aggregate_loss, aggregation_normalizer
from posttrain.algorithms.kl import KL_ESTIMATORS, AdaptiveKLController, FixedKLController
from posttrain.algorithms.losses import POLICY_LOSSES, value_loss
from posttrain.algorithms.masked import masked_mean
from posttrain.models.forward import forward_response
from posttrain.models.reference import frozen_copy
from posttrain.models.value_head import ValueHead
from posttrain.rollout import SamplingParams, decode_responses, encode_prompts, make_engine
from posttrain.rollout.types import FINISH_LENGTH
from posttrain.run.faults import fault_point
from posttrain.run.metrics import MetricsLogger
from posttrain.run.progress import progress
from posttrain.run.rollout_log import RolloutLog
from posttrain.tasks.formatting import format_prompt
from posttrain.train.common import (
    Checkpointer,
    Counters,
    batch_indices,
    build_policy,
    build_task,
    export_final,
    make_optimizer,
    make_scheduler,
    prepare_run_dir,
    setup_torch,
)
from posttrain.train.configs import RLConfig
from posttrain.train.evaluate import evaluate
from posttrain.train.plan import make_batch_plan, resolve_algorithm
from posttrain.train.rl_batch import RewardSource, ScoredBatch, VerifierReward, compute_advantages

log = logging.getLogger("posttrain")


class TrainingHealthError(RuntimeError):
    """The run was stopped by a health guard (the message says which and what to change)."""


class PolicyGradientTrainer:
    """Builds everything from an `RLConfig`, then `train()` runs (or resumes) the loop."""

    def __init__(self, cfg: RLConfig, reward: RewardSource | None = None) -> None:
        self.cfg = cfg
        self.algo = resolve_algorithm(cfg.algo)
        self.plan = make_batch_plan(cfg.batch, self.algo)
        setup_torch(cfg.run, cfg.seed)
        self.run_dir, resume_from, config_dict = prepare_run_dir(cfg.run, cfg)
        self.task = build_task(cfg.task)
        self.reward = reward or VerifierReward(self.task.verify)
        self.policy, self.tokenizer = build_policy(cfg.model)
        # Dropout off: the trainer must score exactly the policy the sampler sampled from
        # (gradients flow in eval mode all the same).
        self.policy.eval()
        self.engine = make_engine(self.policy)
        uses_kl = self.algo.kl_placement != "none" and self.algo.kl_coef > 0
        self.reference = frozen_copy(self.policy) if uses_kl else None
        hidden = getattr(getattr(self.policy, "config", None), "hidden_size", None)
        self.value_head = ValueHead(hidden) if self.algo.value_head else None
        params = list(self.policy.parameters())
        if self.value_head is not None:
            params += list(self.value_head.parameters())
        self.optimizer = make_optimizer(params, cfg.optim)
        total_updates = cfg.steps * self.plan.optimizer_steps_per_batch
        self.scheduler = make_scheduler(self.optimizer, cfg.optim, total_updates)
        self.kl_ctl = (
            AdaptiveKLController(self.algo.kl_coef, cfg.algo.kl_target, cfg.algo.kl_horizon)
            if cfg.algo.kl_target is not None
            else FixedKLController(self.algo.kl_coef)
        )
        self.counters = Counters()
        self.sample_gen = torch.Generator().manual_seed(cfg.seed)
        self.shuffle_gen = torch.Generator().manual_seed(cfg.seed + 1)
        max_new = cfg.sampling.max_new_tokens or self.task.max_new_tokens + 1
        self.params = SamplingParams(
            max_new_tokens=max_new,
            temperature=cfg.sampling.temperature,
            top_k=cfg.sampling.top_k,
            top_p=cfg.sampling.top_p,
            min_new_tokens=cfg.sampling.min_new_tokens,
            stop_token_ids=(self.tokenizer.eos_token_id,),
            pad_token_id=self.tokenizer.pad_token_id,
        )
        modules = {"policy": self.policy}
        if self.value_head is not None:
            modules["value_head"] = self.value_head
        if self.reference is not None and cfg.algo.ref_refresh_every:
            modules["reference"] = self.reference
        self.checkpointer = Checkpointer(
            self.run_dir,
            config_dict,
            cfg.run.keep_last,
            modules=modules,
            stateful={
                "optimizer": self.optimizer,
                "scheduler": self.scheduler,
                "kl_controller": self.kl_ctl,
                "counters": self.counters,
            },
            generators={"sample": self.sample_gen, "shuffle": self.shuffle_gen},
        )
        self.metrics = MetricsLogger(self.run_dir)
        self.rollout_log = RolloutLog(self.run_dir)
        if resume_from is not None:
            self.checkpointer.restore(resume_from, cfg.run.allow_config_change)
            self.metrics.truncate_after(self.counters.step)
            self.rollout_log.truncate_after(self.counters.step)
            log.info("resumed from %s at step %d", resume_from, self.counters.step)

    # ----------------------------------------------------------------- rollout and scoring
    def prompts_for_step(self, step: int) -> list:
        """The step's N training examples, in the seeded epoch order."""
        idx = batch_indices(len(self.task.train), step, self.plan.prompts_per_step, self.cfg.seed)
        return [self.task.train[i] for i in idx]

    def make_batch(self, step: int) -> tuple[ScoredBatch, dict[str, float]]:
        """Sample G responses for each of the step's prompts, score them, and compute advantages."""
        examples = self.prompts_for_step(step)
        texts = [format_prompt(ex, self.tokenizer, self.cfg.task.chat) for ex in examples]
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, texts)
        rollout = self.engine.generate(
            prompt_ids, prompt_mask, self.plan.group_size, self.params, self.sample_gen
        )
        responses = decode_responses(self.tokenizer, rollout)
        per_row = [examples[g] for g in rollout.group_ids.tolist()]
        rewards, statuses = self.reward(per_row, responses, rollout)
        mask = rollout.response_mask
        ref_logprobs = old_values = kl_penalty = None
        with torch.no_grad():
            if self.reference is not None:
                ref_logprobs = forward_response(
                    self.reference,
                    rollout.prompt_ids,
                    rollout.prompt_mask,
                    rollout.response_ids,
                    mask,
                    temperature=self.params.temperature,
                ).logprobs
                if self.algo.kl_placement == "reward":
                    kl = KL_ESTIMATORS[self.algo.kl_estimator](rollout.logprobs, ref_logprobs)
                    kl_penalty = self.kl_ctl.coef * kl
            if self.value_head is not None:
                hidden = forward_response(
                    self.policy,
                    rollout.prompt_ids,
                    rollout.prompt_mask,
                    rollout.response_ids,
                    mask,
                    temperature=self.params.temperature,
                    with_hidden=True,
                ).hidden
                old_values = self.value_head(hidden)
        advantages, returns = compute_advantages(
            self.algo,
            rewards,
            mask,
            self.plan.group_size,
            kl_penalty=kl_penalty,
            values=old_values,
            gamma=self.algo.gamma,
            lam=self.algo.lam,
            adv_eps=self.cfg.algo.adv_eps,
        )
        loss_mask = mask & ~torch.isnan(rewards)[:, None]
        batch = ScoredBatch(
            rollout, rewards, loss_mask, advantages, returns, old_values, ref_logprobs, statuses
        )
        every = self.cfg.run.log_rollouts_every
        if every and (step + 1) % every == 0:
            prompts = [texts[g] for g in rollout.group_ids.tolist()]
            self.rollout_log.write(
                step + 1, rollout, prompts, responses, rewards, advantages, ref_logprobs
            )
        return batch, self.rollout_metrics(batch)

    def rollout_metrics(self, batch: ScoredBatch) -> dict[str, float]:
        """`rollout/*` and `verifier/*` metrics of one batch."""
        r, mask = batch.rewards, batch.rollout.response_mask
        grouped = r.view(-1, self.plan.group_size)
        out = {
            "rollout/reward_mean": float(torch.nanmean(r)) if (~r.isnan()).any() else math.nan,
            "rollout/reward_std": float(r[~r.isnan()].std()) if (~r.isnan()).sum() > 1 else 0.0,
            "rollout/response_len": float(mask.sum(1).float().mean()),
            "rollout/response_len_max": float(mask.sum(1).max()),
            "rollout/truncated_frac": float(
                (batch.rollout.finish_reason == FINISH_LENGTH).float().mean()
            ),
            "rollout/zero_std_frac": float(
                (grouped.std(dim=1, unbiased=False) == 0).float().mean()
            ),
            "rollout/unscorable_frac": float(r.isnan().float().mean()),
        }
        for status, count in batch.statuses.items():
            out[f"verifier/{status}"] = float(count)
        if batch.ref_logprobs is not None:
            out["kl/ref_k1"] = float(masked_mean(batch.rollout.logprobs - batch.ref_logprobs, mask))
            out["kl/ref_k3"] = float(
                masked_mean(KL_ESTIMATORS["k3"](batch.rollout.logprobs, batch.ref_logprobs), mask)
            )
        out["kl/coef"] = float(self.kl_ctl.coef)
        return out

    # ------------------------------------------------------------------------- the update
    def micro_loss(
        self, batch: ScoredBatch, rows: torch.Tensor, normalizer: float
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of micro-batch `rows` (its share of the mini-batch's aggregate) and sums of
        its per-token diagnostics."""
        ro, mask = batch.rollout, batch.loss_mask[rows]
        fwd = forward_response(
            self.policy,
            ro.prompt_ids[rows],
            ro.prompt_mask[rows],
            ro.response_ids[rows],
            ro.response_mask[rows],
            temperature=self.params.temperature,
            with_entropy=True,
            with_hidden=self.value_head is not None,
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
        if self.cfg.algo.entropy_coef:
            per_token = per_token - self.cfg.algo.entropy_coef * fwd.entropy
        loss = aggregate_loss(per_token, mask, self.algo.loss_agg, normalizer)
        diag = {
            "loss/policy": aggregate_loss(pl.loss.detach(), mask, self.algo.loss_agg, normalizer),
            "policy/entropy": torch.where(mask, fwd.entropy.detach(), 0.0).sum(),
            "policy/clipfrac": torch.where(mask, pl.clipped.float(), 0.0).sum(),
            "policy/approx_kl": torch.where(
                mask, KL_ESTIMATORS["k3"](fwd.logprobs.detach(), old), 0.0
            ).sum(),
            "policy/logprob_gap": torch.where(mask, (fwd.logprobs.detach() - old).abs(), 0.0).sum(),
            "policy/ratio_max": torch.where(mask, pl.ratio.detach(), 0.0).max()
            if mask.any()
            else torch.tensor(1.0),
        }
        if self.value_head is not None:
            values = self.value_head(fwd.hidden)
            vl = value_loss(
                values,
                batch.old_values[rows],
                batch.returns[rows],
                self.cfg.algo.value_clip_eps,
                mask=mask,
            )
            v = aggregate_loss(vl, mask, self.algo.loss_agg, normalizer)
            loss = loss + self.cfg.algo.value_coef * v
            diag["loss/value"] = v.detach()
        return loss, diag

    def update(self, batch: ScoredBatch) -> dict[str, float]:
        """K inner epochs of mini-batch optimizer steps over one scored batch."""
        plan, sums, tokens = self.plan, Counter(), 0.0
        gap = None
        for epoch in range(plan.epochs):
            if epoch:
                fault_point("inner_epoch", epoch)
            order = torch.randperm(plan.rollouts, generator=self.shuffle_gen)
            for m in range(plan.mini_batches):
                mini = order[m * plan.mini_batch_size : (m + 1) * plan.mini_batch_size]
                normalizer = aggregation_normalizer(
                    batch.loss_mask[mini], self.algo.loss_agg, float(self.params.max_new_tokens)
                )
                self.optimizer.zero_grad(set_to_none=True)
                first = epoch == 0 and m == 0
                step_sums, step_tokens, finite = Counter(), 0.0, True
                for start in range(0, plan.mini_batch_size, plan.micro_batch_size):
                    rows = mini[start : start + plan.micro_batch_size]
                    loss, diag = self.micro_loss(batch, rows, normalizer)
                    finite &= bool(torch.isfinite(loss))
                    if finite:
                        loss.backward()
                    step_tokens += float(batch.loss_mask[rows].sum())
                    for key, value in diag.items():
                        step_sums[key] = (
                            max(step_sums[key], float(value))
                            if key == "policy/ratio_max"
                            else step_sums[key] + float(value)
                        )
                if first:
                    gap = step_sums["policy/logprob_gap"] / max(step_tokens, 1.0)
                grad_norm = self.clip_gradients()
                finite &= math.isfinite(grad_norm)
                if not finite:
                    self.skip_step()
                    continue
                self.optimizer.step()
                self.scheduler.step()
                self.counters.nonfinite_streak = 0
                for key, value in step_sums.items():
                    sums[key] = (
                        max(sums[key], value) if key == "policy/ratio_max" else sums[key] + value
                    )
                tokens += step_tokens
                sums["optim/grad_norm"] += grad_norm
        n_updates = plan.optimizer_steps_per_batch
        out = {
            "loss/policy": sums["loss/policy"] / n_updates,
            "optim/grad_norm": sums["optim/grad_norm"] / n_updates,
            "optim/lr": self.scheduler.get_last_lr()[0],
            "policy/ratio_max": sums["policy/ratio_max"],
        }
        for key in ("policy/entropy", "policy/clipfrac", "policy/approx_kl"):
            out[key] = sums[key] / max(tokens, 1.0)
        if "loss/value" in sums:
            out["loss/value"] = sums["loss/value"] / n_updates
        out["policy/logprob_gap"] = gap if gap is not None else math.nan
        return out

    def clip_gradients(self) -> float:
        """Global grad-norm clip over every trained parameter; returns the pre-clip norm."""
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return 0.0
        max_norm = self.cfg.optim.max_grad_norm or float("inf")
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))

    def skip_step(self) -> None:
        """Drop a non-finite update; stop after `max_nonfinite_steps` in a row."""
        self.optimizer.zero_grad(set_to_none=True)
        self.counters.nonfinite_streak += 1
        self.counters.skipped_steps += 1
        log.warning(
            "non-finite loss or gradient: update skipped (%d in a row)",
            self.counters.nonfinite_streak,
        )
        if self.counters.nonfinite_streak >= self.cfg.health.max_nonfinite_steps:
            raise TrainingHealthError(
                f"{self.counters.nonfinite_streak} updates in a row had a non-finite loss or "
                "gradient; lower optim.lr, set optim.max_grad_norm, or check the rewards"
            )

    def check_health(self, metrics: dict[str, float]) -> None:
        """The guards that stop a run instead of letting it drift."""
        health = self.cfg.health
        if health.stop_when_all_truncated and metrics["rollout/truncated_frac"] >= 1.0:
            raise TrainingHealthError(
                f"step {self.counters.step}: every response hit max_new_tokens="
                f"{self.params.max_new_tokens} without a stop token; raise "
                "sampling.max_new_tokens or check the stop token"
            )
        gap = metrics.get("policy/logprob_gap", math.nan)
        if math.isfinite(gap) and gap > health.max_logprob_gap:
            raise TrainingHealthError(
                f"step {self.counters.step}: sampler and trainer log-probs differ by {gap:.2e} "
                f"on average (> health.max_logprob_gap={health.max_logprob_gap}); the sampler "
                "and the trainer do not compute the same policy (temperature? dtype? top-k?)"
            )

    # --------------------------------------------------------------------------- the loop
    def train(self) -> dict[str, Any]:
        """Run (or resume) to `cfg.steps`; returns the before/after evaluation."""
        cfg = self.cfg
        log.info(self.plan.describe())
        before = None
        if self.counters.step == 0:
            before = self.evaluate()
            self.metrics.log(0, {f"eval/{k}": v for k, v in before.items()})
        bar = progress(
            range(self.counters.step, cfg.steps),
            total=cfg.steps,
            initial=self.counters.step,
            desc=f"rl:{cfg.algo.preset}",
        )
        for _ in bar:
            metrics = self.step()
            bar.set_postfix(reward=f"{metrics['rollout/reward_mean']:.3f}")
        after = self.evaluate()
        self.metrics.log(self.counters.step, {f"eval/{k}": v for k, v in after.items()})
        self.metrics.close()
        final = export_final(self.policy, self.tokenizer, self.run_dir)
        return {"before": before, "after": after, "final": str(final), "run_dir": str(self.run_dir)}

    def step(self) -> dict[str, float]:
        """One outer step: rollout → score → update; then log, check health, checkpoint."""
        cfg, step = self.cfg, self.counters.step
        t0 = time.perf_counter()
        batch, metrics = self.make_batch(step)
        t1 = time.perf_counter()
        fault_point("step", step + 1)
        metrics.update(self.update(batch))
        self.counters.step = step + 1
        self.kl_ctl.update(
            metrics.get("kl/ref_k1", 0.0) * metrics["rollout/response_len"], self.plan.rollouts
        )
        if (
            self.reference is not None
            and cfg.algo.ref_refresh_every
            and (self.counters.step % cfg.algo.ref_refresh_every == 0)
        ):
            self.reference.load_state_dict(self.policy.state_dict())
        metrics["time/rollout"] = t1 - t0
        metrics["time/step"] = time.perf_counter() - t0
        if cfg.eval_every and self.counters.step % cfg.eval_every == 0:
            metrics.update({f"eval/{k}": v for k, v in self.evaluate().items()})
        self.metrics.log(self.counters.step, metrics)
        self.check_health(metrics)
        if self.counters.step % cfg.run.save_every == 0 or self.counters.step == cfg.steps:
            self.checkpointer.save(self.counters.step)
        return metrics

    def evaluate(self) -> dict[str, float]:
        """Greedy accuracy and mean reward on the held-out split."""
        examples = list(self.task.eval)[: self.cfg.eval_examples]
        return evaluate(
            self.policy,
            self.tokenizer,
            self.task,
            examples,
            chat=self.cfg.task.chat,
            max_new_tokens=self.params.max_new_tokens,
        )


def train_rl(cfg: RLConfig) -> dict[str, Any]:
    """Run the RL stage described by `cfg`; see `PolicyGradientTrainer`."""
    return PolicyGradientTrainer(cfg).train()


def rl_result_path(run_dir: str | Path) -> Path:
    """Where a finished RL stage's model lives."""
    return Path(run_dir) / "final"
