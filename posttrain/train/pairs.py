"""Preference pairs for the reward-model and DPO stages: sampled from a policy and labelled by a
task's hidden annotators, or read from JSONL; then tokenised into batches.

Under torchrun both stages are data parallel (`posttrain.run.distributed`): rank 0 resolves the
pairs and writes them, the others read the files back; a step's pairs are sharded by rank with
the loss divided by the *global* pair count; whole-dataset passes (reference log-probs, held-out
scores) go chunk by chunk, chunk k on rank k mod N, gathered to every rank.

Shape legend: b pairs, N pairs in a dataset, P prompt tokens (left-padded), T response tokens
(right-padded). A batch puts the b chosen responses in rows 0..b-1 and the b rejected ones in
rows b..2b-1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from posttrain.rollout import SamplingParams, decode_responses, encode_prompts, make_engine
from posttrain.run.distributed import (
    World,
    all_gather_cat,
    all_reduce_sum,
    barrier,
    sum_gradients,
)
from posttrain.run.sharding import clip_grad_norm
from posttrain.tasks.base import Example, Task
from posttrain.tasks.formatting import format_prompt
from posttrain.tasks.jsonl import PreferencePair, load_preference_jsonl
from posttrain.tasks.preference import label_pair
from posttrain.train.common import batch_indices
from posttrain.train.preference_configs import PairsConfig

log = logging.getLogger("posttrain")

TRAIN_FILE = "pairs_train.jsonl"
"""The training pairs a stage used, written into its run directory."""
EVAL_FILE = "pairs_eval.jsonl"
"""The held-out pairs a stage used, written into its run directory."""


@dataclass
class PairBatch:
    """Chosen and rejected responses of b pairs, stacked: rows [0, b) chosen, [b, 2b) rejected.

    Attributes:
        prompt_ids: (2b, P) long, left-padded. prompt_mask: (2b, P) bool.
        response_ids: (2b, T) long, right-padded, each ending with <eos>.
        response_mask: (2b, T) bool.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor

    @property
    def num_pairs(self) -> int:
        """b."""
        return self.prompt_ids.shape[0] // 2


def write_pairs(path: Path, pairs: Sequence[PreferencePair]) -> None:
    """Write pairs as JSONL (prompt, chosen, rejected), atomically (tmp file + rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for p in pairs:
            row = {"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def pairs_digest(pairs: Sequence[PreferencePair]) -> str:
    """SHA-256 (hex) over every pair's prompt, chosen and rejected text, in order."""
    digest = hashlib.sha256()
    for p in pairs:
        digest.update(json.dumps([p.prompt, p.chosen, p.rejected]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


@torch.no_grad()
def sample_pairs(
    model: torch.nn.Module,
    tokenizer: Any,
    task: Task,
    examples: Sequence,
    num_pairs: int,
    *,
    label_noise: float,
    temperature: float,
    seed: int,
    chat: bool = False,
    prompts_per_batch: int = 64,
) -> list[PreferencePair]:
    """Sample two responses per prompt from `model` and label them with `task`'s annotators.

    Prompts are taken in a seeded order from `examples` (cycling if needed); tied or identical
    responses give no pair. Stops at `num_pairs`, or raises after 50 batches give none.
    """
    if task.name != "preference":
        raise ValueError(
            f"pairs: sampling needs the 'preference' task's annotators, not {task.name!r}; "
            "give pairs.path (a JSONL file) instead"
        )
    engine = make_engine(model)
    gen = torch.Generator().manual_seed(seed)
    noise_rng = random.Random(seed)
    params = SamplingParams(
        max_new_tokens=task.max_new_tokens + 1,
        temperature=temperature,
        stop_token_ids=(tokenizer.eos_token_id,),
        pad_token_id=tokenizer.pad_token_id,
    )
    pairs: list[PreferencePair] = []
    batch, barren = 0, 0
    while len(pairs) < num_pairs:
        idx = batch_indices(len(examples), batch, prompts_per_batch, seed)
        chunk = [examples[i] for i in idx]
        texts = [format_prompt(ex, tokenizer, chat) for ex in chunk]
        ids, mask = encode_prompts(tokenizer, texts)
        responses = decode_responses(tokenizer, engine.generate(ids, mask, 2, params, gen))
        before = len(pairs)
        for i, ex in enumerate(chunk):
            a, b = responses[2 * i], responses[2 * i + 1]
            pair = label_pair(ex.prompt, a, b, noise_rng, label_noise) if a != b else None
            if pair is not None and len(pairs) < num_pairs:
                pairs.append(pair)
        barren = barren + 1 if len(pairs) == before else 0
        if barren >= 50:
            raise RuntimeError(f"pairs: 50 batches without a non-tied pair ({len(pairs)} so far)")
        batch += 1
    return pairs


def resolve_pairs(
    cfg: PairsConfig,
    run_dir: Path,
    task: Task,
    sampler: str | None,
    *,
    chat: bool = False,
    resuming: bool = False,
    world: World | None = None,
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """The (train, held-out) pairs of a stage, also written to `run_dir` as JSONL.

    A resumed stage reads back the files it wrote, so it sees exactly the same pairs. Otherwise
    pairs come from `cfg.path`/`cfg.eval_path`, or are sampled from the model at `sampler`
    (`cfg.sample_from` or the stage's init_from) and labelled by `task`'s annotators. Under
    torchrun only rank 0 reads or samples them and writes the files; the other ranks wait, then
    read those files (sampling on every rank could differ, and two writers would race).
    """
    world = world or World()
    train_file, eval_file = run_dir / TRAIN_FILE, run_dir / EVAL_FILE
    if resuming and train_file.exists() and eval_file.exists():
        return load_preference_jsonl(train_file), load_preference_jsonl(eval_file)
    if not world.is_main:
        barrier()  # rank 0 has written both files
        return load_preference_jsonl(train_file), load_preference_jsonl(eval_file)
    train, held = _read_or_sample(cfg, task, sampler, chat)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_pairs(train_file, train)
    write_pairs(eval_file, held)
    barrier()
    return train, held


def _read_or_sample(
    cfg: PairsConfig, task: Task, sampler: str | None, chat: bool
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held-out) pairs from `cfg.path`/`cfg.eval_path`, or sampled and labelled."""
    if cfg.path is not None:
        rows = load_preference_jsonl(cfg.path)
        if cfg.eval_path is not None:
            train, held = rows, load_preference_jsonl(cfg.eval_path)
        else:
            cut = len(rows) - max(1, round(cfg.eval_fraction * len(rows)))
            if cut < 1:
                raise ValueError(f"pairs.path: {cfg.path} has too few rows to hold some out")
            train, held = rows[:cut], rows[cut:]
    else:
        source = cfg.sample_from or sampler
        if not source:
            raise ValueError("pairs: give pairs.path, pairs.sample_from or model.init_from")
        from posttrain.models.loading import load_model

        model, tokenizer = load_model(source)
        kw = {"label_noise": cfg.label_noise, "temperature": cfg.temperature, "chat": chat}
        log.info("sampling %d + %d preference pairs from %s", cfg.num_train, cfg.num_eval, source)
        train = sample_pairs(model, tokenizer, task, task.train, cfg.num_train, seed=cfg.seed, **kw)
        kw["label_noise"] = 0.0  # held-out labels are the annotators' rule itself
        held = sample_pairs(
            model, tokenizer, task, task.eval, cfg.num_eval, seed=cfg.seed + 1, **kw
        )
    return train, held


def map_pair_chunks(
    num_pairs: int,
    chunk: int,
    fn: Callable[[slice], tuple[Tensor, Tensor]],
    device: torch.device,
    world: World | None = None,
) -> tuple[Tensor, Tensor]:
    """Chosen (N,) and rejected (N,) values of a whole dataset, `fn(slice)` giving those of one
    chunk of `chunk` pairs (fp32, on `device`). Chunk k runs on rank k mod world size and every
    rank gets all N values. The chunk boundaries are a single process's, so each forward sees
    the same padded batch and the values are bit-equal to one process's."""
    world = world or World()
    n_chunks = math.ceil(num_pairs / chunk)
    slices = [slice(k * chunk, min(num_pairs, (k + 1) * chunk)) for k in range(n_chunks)]
    if not world.distributed:
        parts = [fn(sl) for sl in slices]
        return torch.cat([c for c, _ in parts]), torch.cat([r for _, r in parts])
    per = math.ceil(n_chunks / world.size)  # chunks per rank, the last ranks padded with zeros
    mine = torch.zeros((per, chunk, 2), dtype=torch.float32, device=device)
    for j, k in enumerate(range(world.rank, n_chunks, world.size)):
        c, r = fn(slices[k])
        mine[j, : c.shape[0]] = torch.stack([c, r], dim=1).float()  # (b, 2)
    everyone = all_gather_cat(mine).view(world.size, per, chunk, 2)  # rank r, slot j: chunk j·N+r
    rows = everyone.transpose(0, 1).reshape(-1, 2)[:num_pairs]  # chunk order; padding at the end
    return rows[:, 0].contiguous(), rows[:, 1].contiguous()


def finish_pair_step(
    params: Sequence[torch.nn.Parameter], sums: dict[str, float], max_norm: float, step: int
) -> tuple[dict[str, float], float]:
    """After this rank's backward passes: sum gradients and the metric sums over ranks, clip
    the global gradient norm (0: no clip) and refuse a non-finite loss or gradient. Returns the
    global sums (same keys) and the pre-clip norm. Parameters without a gradient (an unused LM
    head) are left out on every rank, so AdamW skips them as it would in one process."""
    with_grad = [p for p in params if p.grad is not None]
    sum_gradients(with_grad)
    device = with_grad[0].device if with_grad else torch.device("cpu")  # NCCL: tensors on GPU
    total = all_reduce_sum(torch.tensor(list(sums.values()), dtype=torch.float64, device=device))
    sums = dict(zip(sums, total.tolist(), strict=True))
    grad_norm = clip_grad_norm(with_grad, max_norm or float("inf"))
    if not (math.isfinite(sums["loss"]) and math.isfinite(grad_norm)):
        raise FloatingPointError(
            f"step {step}: non-finite loss {sums['loss']} or grad norm {grad_norm}"
        )
    return sums, grad_norm


def _pad_rows(rows: list[list[int]], pad: int, left: bool) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        span = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = True
    return ids, mask


def collate_pairs(tokenizer: Any, pairs: Sequence[PreferencePair], chat: bool = False) -> PairBatch:
    """Tokenise b pairs into one (2b)-row batch: prompts left-padded (with <bos> when the
    tokenizer has one), responses right-padded and ending with <eos>."""
    prompts, responses = [], []
    for side in ("chosen", "rejected"):
        for p in pairs:
            text = format_prompt(Example(p.prompt, ""), tokenizer, chat) if chat else p.prompt
            ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            if tokenizer.bos_token_id is not None:
                ids = [tokenizer.bos_token_id, *ids]
            prompts.append(ids)
            body = tokenizer(getattr(p, side), add_special_tokens=False)["input_ids"]
            responses.append([*body, tokenizer.eos_token_id])
    prompt_ids, prompt_mask = _pad_rows(prompts, tokenizer.pad_token_id, left=True)
    response_ids, response_mask = _pad_rows(responses, tokenizer.pad_token_id, left=False)
    return PairBatch(prompt_ids, prompt_mask, response_ids, response_mask)
