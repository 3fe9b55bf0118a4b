"""Pre-training and supervised fine-tuning: next-token loss on a task's demonstrations.

`objective=pretrain` puts the loss on every token after <bos>; `objective=sft` only on the
response (and its <eos>, so the model learns to stop). Shapes: b sequences, L tokens.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from typing import Any

import torch

from posttrain.algorithms.aggregation import aggregate_loss
from posttrain.algorithms.masked import shifted_token_logprobs
from posttrain.run.distributed import (
    all_reduce_max,
    all_reduce_sum,
    global_normalizer,
    init_distributed,
    sum_gradients,
)
from posttrain.run.faults import fault_point
from posttrain.run.progress import progress
from posttrain.run.sharding import (
    autocast,
    clip_grad_norm,
    export_state,
    gathered,
    replicated,
    resolve_device,
    shard_model,
)
from posttrain.tasks.base import Example, Task
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
from posttrain.train.configs import LMConfig
from posttrain.train.evaluate import evaluate

log = logging.getLogger("posttrain")


def encode_example(tokenizer: Any, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """Token ids of a prompt (with <bos> when the tokenizer has one) and of its response
    (with <eos>). Encoded separately, so the prompt ids are an exact prefix and the loss span
    is exactly the response (no merge across the boundary)."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id, *prompt_ids]
    response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    return prompt_ids, [*response_ids, tokenizer.eos_token_id]


def collate(
    pairs: list[tuple[list[int], list[int]]], pad_id: int, response_only: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded input_ids (b, L), attention_mask (b, L) and loss_mask (b, L−1).

    loss_mask[:, t] says whether token t+1 is trained on (it aligns with
    `shifted_token_logprobs`): response tokens only for SFT, every token after the first
    for pre-training.
    """
    length = max(len(p) + len(r) for p, r in pairs)
    ids = torch.full((len(pairs), length), pad_id, dtype=torch.long)
    attn = torch.zeros((len(pairs), length), dtype=torch.long)
    loss_mask = torch.zeros((len(pairs), length - 1), dtype=torch.bool)
    for i, (p, r) in enumerate(pairs):
        seq = p + r
        ids[i, : len(seq)] = torch.tensor(seq)
        attn[i, : len(seq)] = 1
        first = len(p) - 1 if response_only else 0  # position predicting the first target
        loss_mask[i, first : len(seq) - 1] = True
    return ids, attn, loss_mask


class LMTrainer:
    """Pre-training / SFT on a task's demonstrations, resumable like every stage."""

    def __init__(self, cfg: LMConfig, task: Task | None = None) -> None:
        """`task` (a Task object of your own) replaces `cfg.task.name`'s built-in task."""
        self.cfg = cfg
        self.world = init_distributed()
        if cfg.batch_size % (cfg.micro_batch_size * self.world.size):
            raise ValueError(
                f"batch_size: {cfg.batch_size} is not a multiple of micro_batch_size="
                f"{cfg.micro_batch_size} × {self.world.size} rank(s)"
            )
        setup_torch(cfg.run, cfg.seed)
        self.run_dir, resume_from, config_dict = prepare_run_dir(cfg.run, cfg, self.world)
        self.task: Task = task if task is not None else build_task(cfg.task)
        if cfg.demonstrations == "correct" and self.task.demonstration is None:
            raise ValueError(f"demonstrations: task {self.task.name!r} has no demonstrations")
        if cfg.demonstrations == "format" and self.task.scramble is None:
            raise ValueError(f"demonstrations: task {self.task.name!r} has no format-only answers")
        self.device = resolve_device(cfg.run.device, self.world)
        self.amp = functools.partial(autocast, cfg.run.precision, self.device)
        self.model, self.tokenizer = build_policy(cfg.model, self.device)
        self.model.train()
        if cfg.run.fsdp:
            shard_model(self.model, self.world, self.device)
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
            modules={"policy": self.model},
            stateful={"optimizer": self.optimizer, "scheduler": self.scheduler},
        )

    def response_text(self, example: Example, step: int, slot: int) -> str:
        """The demonstration for one batch slot (format-only answers are seeded by position,
        so a resumed run sees the same ones)."""
        if self.cfg.demonstrations == "correct":
            return self.task.demonstration(example)
        return self.task.scramble(example, random.Random(f"{self.cfg.seed}:{step}:{slot}"))

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's share of global batch `step` of the seeded epoch stream, collated."""
        idx = batch_indices(len(self.task.train), step, self.cfg.batch_size, self.cfg.seed)
        pairs = []
        for slot in self.world.shard(len(idx)):
            i = idx[slot]
            example = self.task.train[i]
            prompt = format_prompt(example, self.tokenizer, self.cfg.task.chat)
            pairs.append(
                encode_example(self.tokenizer, prompt, self.response_text(example, step, slot))
            )
        return collate(pairs, self.tokenizer.pad_token_id, self.cfg.objective == "sft")

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step, accumulated over micro-batches with the batch's normaliser."""
        ids, attn, loss_mask = (t.to(self.device) for t in self.batch(step))
        # token_sum_norm's constant is the longest sequence of the global batch
        longest = float(all_reduce_max(torch.tensor([loss_mask.shape[1]]))[0])
        normalizer = global_normalizer(loss_mask, self.cfg.loss_agg, longest)
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for start in range(0, ids.shape[0], self.cfg.micro_batch_size):
            sl = slice(start, start + self.cfg.micro_batch_size)
            with self.amp():
                logits = self.model(input_ids=ids[sl], attention_mask=attn[sl]).logits  # (b, L, V)
                nll = -shifted_token_logprobs(logits, ids[sl])  # (b, L−1)
                loss = aggregate_loss(nll, loss_mask[sl], self.cfg.loss_agg, normalizer)
            loss.backward()
            total += float(loss.detach())
        sum_gradients(replicated(self.model.parameters()))  # FSDP already summed its shards
        total = float(all_reduce_sum(torch.tensor([total], dtype=torch.float64)))
        max_norm = self.cfg.optim.max_grad_norm or float("inf")
        grad_norm = clip_grad_norm(self.model.parameters(), max_norm)
        if not (torch.isfinite(torch.tensor(total)) and torch.isfinite(torch.tensor(grad_norm))):
            self.optimizer.zero_grad(set_to_none=True)
            self.counters.skipped_steps += 1
            raise FloatingPointError(
                f"step {step}: non-finite loss {total} or grad norm {grad_norm}"
            )
        self.optimizer.step()
        self.scheduler.step()
        return {
            "loss/lm": total,
            "optim/grad_norm": grad_norm,
            "optim/lr": self.scheduler.get_last_lr()[0],
            "data/tokens": float(loss_mask.sum()),
        }

    def train(self) -> dict[str, Any]:
        """Run (or resume) to `cfg.steps`; returns the held-out evaluation at the end."""
        cfg = self.cfg
        bar = progress(
            range(self.counters.step, cfg.steps),
            total=cfg.steps,
            initial=self.counters.step,
            desc=cfg.objective,
        )
        for step in bar:
            t0 = time.perf_counter()
            fault_point("step", step + 1)
            metrics = self.train_step(step)
            self.counters.step = step + 1
            metrics["time/step"] = time.perf_counter() - t0
            if cfg.eval_every and self.counters.step % cfg.eval_every == 0:
                metrics.update({f"eval/{k}": v for k, v in self.evaluate().items()})
            if self.metrics is not None:
                self.metrics.log(self.counters.step, metrics)
            bar.set_postfix(loss=f"{metrics['loss/lm']:.3f}")
            if self.counters.step % cfg.run.save_every == 0 or self.counters.step == cfg.steps:
                self.checkpointer.save(self.counters.step)
        result = self.evaluate()
        final = None
        # FSDP: every rank joins the gather; rank 0 writes the full weights.
        full = export_state(self.model)
        if self.metrics is not None:
            self.metrics.log(self.counters.step, {f"eval/{k}": v for k, v in result.items()})
            self.metrics.close()
            final = str(export_final(self.model, self.tokenizer, self.run_dir, full))
        return {"eval": result, "final": final, "run_dir": str(self.run_dir)}

    def evaluate(self) -> dict[str, float]:
        """Greedy accuracy and reward on up to 200 held-out examples (rank 0 only)."""
        with gathered(self.model), self.amp():  # FSDP: every rank unshards, rank 0 samples
            if not self.world.is_main:
                return {}
            return evaluate(
                self.model,
                self.tokenizer,
                self.task,
                list(self.task.eval)[:200],
                chat=self.cfg.task.chat,
            )


def train_lm(cfg: LMConfig) -> dict[str, Any]:
    """Run the pre-training or SFT stage described by `cfg`."""
    return LMTrainer(cfg).train()
