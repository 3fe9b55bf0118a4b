"""The one policy-gradient loop: REINFORCE, actor-critic, PPO, GRPO, Dr. GRPO and RLOO.

    for step:  sample N prompts × G responses → score → advantages
               for epoch in K:  for mini-batch:  for micro-batch:  loss.backward()
                                                  clip → optimizer step

An algorithm is only a choice of advantage estimator, policy loss, KL placement and loss
aggregation (`posttrain.algorithms.presets`); this file never asks which algorithm it runs.
Shape legend: B rollouts, T response tokens, H hidden size.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from posttrain.algorithms.kl import KL_ESTIMATORS, AdaptiveKLController, FixedKLController
from posttrain.models.forward import forward_response
from posttrain.models.reference import frozen_copy
from posttrain.models.value_head import ValueHead
from posttrain.rollout import SamplingParams, decode_responses, encode_prompts, make_engine
from posttrain.run.distributed import init_distributed
from posttrain.run.faults import fault_point
from posttrain.run.progress import progress
from posttrain.run.rollout_log import RolloutLog
from posttrain.run.sharding import (
    autocast,
    export_state,
    gathered,
    resolve_device,
    shard_model,
)
from posttrain.tasks.base import Task
from posttrain.tasks.formatting import format_prompt
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
from posttrain.train.configs import RLConfig
from posttrain.train.evaluate import evaluate
from posttrain.train.pg_update import PolicyUpdate, TrainingHealthError
from posttrain.train.plan import make_batch_plan, resolve_algorithm
from posttrain.train.rl_batch import (
    RewardSource,
    ScoredBatch,
    VerifierReward,
    compute_advantages,
    rollout_metrics,
)

__all__ = ["PolicyGradientTrainer", "TrainingHealthError", "train_rl"]

log = logging.getLogger("posttrain")


def prompt_generator(seed: int, step: int, prompt: int) -> torch.Generator:
    """The sampling generator of global prompt `prompt` at `step`: derived, not stored, so a
    prompt's G samples are the same whatever the world size and however the run was resumed."""
    digest = hashlib.sha256(f"posttrain-sample:{seed}:{step}:{prompt}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


class PolicyGradientTrainer:
    """Builds everything from an `RLConfig`, then `train()` runs (or resumes) the loop.

    Under `torchrun`, each rank samples and scores its share of the step's prompts and the
    update sums gradients over ranks (`posttrain.train.pg_update`); rank 0 writes.
    """

    def __init__(
        self, cfg: RLConfig, reward: RewardSource | None = None, task: Task | None = None
    ) -> None:
        """`task` (a Task object of your own) replaces `cfg.task.name`'s built-in task;
        `reward` (e.g. a reward model) replaces the task's verifier as the reward."""
        self.cfg = cfg
        self.world = init_distributed()
        self.algo = resolve_algorithm(cfg.algo)
        self.plan = make_batch_plan(cfg.batch, self.algo, self.world.size)
        setup_torch(cfg.run, cfg.seed)
        self.run_dir, resume_from, config_dict = prepare_run_dir(cfg.run, cfg, self.world)
        self.task = task if task is not None else build_task(cfg.task)
        self.reward = reward or VerifierReward(self.task.verify)
        self.device = resolve_device(cfg.run.device, self.world)
        self.amp = functools.partial(autocast, cfg.run.precision, self.device)
        self.policy, self.tokenizer = build_policy(cfg.model, self.device)
        # Dropout off: the trainer must score exactly the policy the sampler sampled from
        # (gradients flow in eval mode all the same).
        self.policy.eval()
        uses_kl = self.algo.kl_placement != "none" and self.algo.kl_coef > 0
        self.reference = frozen_copy(self.policy) if uses_kl else None
        hidden = getattr(getattr(self.policy, "config", None), "hidden_size", None)
        self.value_head = ValueHead(hidden).to(self.device) if self.algo.value_head else None
        if cfg.run.fsdp:  # the value head stays replicated (its grads are summed by the update)
            for module in (self.policy, self.reference):
                if module is not None:
                    shard_model(module, self.world, self.device)
        # After sharding: an engine must see the module's final parameters (and FSDP's hooks).
        self.engine = make_engine(self.policy)
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
        self.update = PolicyUpdate(
            policy=self.policy,
            value_head=self.value_head,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            algo=self.algo,
            knobs=cfg.algo,
            plan=self.plan,
            temperature=self.params.temperature,
            max_new_tokens=max_new,
            max_grad_norm=cfg.optim.max_grad_norm,
            max_nonfinite_steps=cfg.health.max_nonfinite_steps,
            shuffle_gen=self.shuffle_gen,
            kl_ctl=self.kl_ctl,
            counters=self.counters,
            amp=self.amp,
        )
        modules = {"policy": self.policy}
        if self.value_head is not None:
            modules["value_head"] = self.value_head
        if self.reference is not None and cfg.algo.ref_refresh_every:
            modules["reference"] = self.reference
        self.checkpointer, self.metrics = open_checkpointed_run(
            self.run_dir,
            config_dict,
            cfg.run,
            self.world,
            resume_from,
            self.counters,
            modules=modules,
            stateful={
                "optimizer": self.optimizer,
                "scheduler": self.scheduler,
                "kl_controller": self.kl_ctl,
            },
            generators={"shuffle": self.shuffle_gen},
        )
        self.rollout_log = RolloutLog(self.run_dir) if self.world.is_main else None
        if resume_from is not None and self.rollout_log is not None:
            self.rollout_log.truncate_after(self.counters.step)

    # ----------------------------------------------------------------- rollout and scoring
    def prompts_for_step(self, step: int) -> list:
        """The step's N training examples, in the seeded epoch order."""
        idx = batch_indices(len(self.task.train), step, self.plan.prompts_per_step, self.cfg.seed)
        return [self.task.train[i] for i in idx]

    def make_batch(self, step: int) -> tuple[ScoredBatch, dict[str, float]]:
        """Sample G responses for each of the step's prompts, score them, and compute advantages."""
        mine = self.world.shard(self.plan.prompts_per_step)
        examples = [self.prompts_for_step(step)[i] for i in mine]  # this rank's prompts
        texts = [format_prompt(ex, self.tokenizer, self.cfg.task.chat) for ex in examples]
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, texts)
        generators = [prompt_generator(self.cfg.seed, step, i) for i in mine]
        sync = getattr(self.engine, "sync_weights", None)  # an external engine (vLLM, SGLang)
        if sync is not None:  # gets the weights of the last optimizer step before it samples
            sync(self.policy, self.counters.step, self.world.is_main)
        # FSDP: full weights while sampling in-process (an external engine has its own copy).
        with gathered(self.policy) if sync is None else contextlib.nullcontext(), self.amp():
            rollout = self.engine.generate(
                prompt_ids, prompt_mask, self.plan.group_size, self.params, generators
            )
        responses = decode_responses(self.tokenizer, rollout)
        per_row = [examples[g] for g in rollout.group_ids.tolist()]
        rewards, statuses = self.reward(per_row, responses, rollout)
        mask = rollout.response_mask
        rewards = rewards.to(mask.device)
        ref_logprobs = old_values = kl_penalty = None
        with torch.no_grad(), self.amp():
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
        if self.rollout_log is not None and every and (step + 1) % every == 0:
            prompts = [texts[g] for g in rollout.group_ids.tolist()]
            self.rollout_log.write(
                step + 1, rollout, prompts, responses, rewards, advantages, ref_logprobs
            )
        return batch, rollout_metrics(batch, self.plan.group_size)

    def check_rollout(self, metrics: dict[str, float]) -> None:
        """Guards on a scored batch, before it can move the policy."""
        health = self.cfg.health
        if health.stop_when_all_truncated and metrics["rollout/truncated_frac"] >= 1.0:
            raise TrainingHealthError(
                f"step {self.counters.step}: every response hit max_new_tokens="
                f"{self.params.max_new_tokens} without a stop token; raise "
                "sampling.max_new_tokens or check the stop token"
            )
        unscorable = metrics.get("rollout/unscorable_frac", 0.0)
        if unscorable > health.max_unscorable_frac:
            raise TrainingHealthError(
                f"step {self.counters.step}: {unscorable:.0%} of the responses could not be "
                f"judged (verifier errors; > health.max_unscorable_frac="
                f"{health.max_unscorable_frac}); fix the verifier or its infrastructure"
            )

    def check_health(self, metrics: dict[str, float]) -> None:
        """Guards after the update: sampler and trainer must compute the same policy."""
        health = self.cfg.health
        gap = metrics.get("policy/logprob_gap", math.nan)
        bf16 = self.cfg.run.precision != "fp32" or self.cfg.model.dtype == "bfloat16"
        name = "max_logprob_gap_bf16" if bf16 else "max_logprob_gap"
        limit = getattr(health, name)
        if math.isfinite(gap) and gap > limit:
            raise TrainingHealthError(
                f"step {self.counters.step}: sampler and trainer log-probs differ by {gap:.2e} "
                f"on average (> health.{name}={limit}); the sampler "
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
            if self.metrics is not None:
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
        final = None
        # FSDP: every rank joins the gather; rank 0 writes the full weights.
        full = export_state(self.policy)
        if self.metrics is not None:
            self.metrics.log(self.counters.step, {f"eval/{k}": v for k, v in after.items()})
            self.metrics.close()
            final = str(export_final(self.policy, self.tokenizer, self.run_dir, full))
        return {"before": before, "after": after, "final": final, "run_dir": str(self.run_dir)}

    def step(self) -> dict[str, float]:
        """One outer step: rollout → score → update; then log, check health, checkpoint."""
        cfg, step = self.cfg, self.counters.step
        t0 = time.perf_counter()
        batch, metrics = self.make_batch(step)
        t1 = time.perf_counter()
        self.check_rollout(metrics)
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
        if self.metrics is not None:
            self.metrics.log(self.counters.step, metrics)
        self.check_health(metrics)
        if self.counters.step % cfg.run.save_every == 0 or self.counters.step == cfg.steps:
            self.checkpointer.save(self.counters.step)
        return metrics

    def evaluate(self) -> dict[str, float]:
        """Greedy accuracy and mean reward on the held-out split (rank 0 only)."""
        with gathered(self.policy), self.amp():  # FSDP: every rank unshards, rank 0 samples
            if not self.world.is_main:
                return {}
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
