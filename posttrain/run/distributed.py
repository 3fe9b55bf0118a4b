"""Data parallelism on PyTorch's own engine: `torchrun` sets the environment, `torch.distributed`
moves the bytes (gloo on CPU, NCCL on GPU). Nothing home-made for transport.

    torchrun --nproc_per_node 2 -m posttrain.cli rl --recipe recipes/sorting_grpo.yaml

Every rank holds a full replica. A step's global batch is sharded by prompt; each rank adds its
share of the loss (already divided by the *global* normaliser), and gradients are summed across
ranks, so the update equals a single process's on the same global batch.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the ranks."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes checkpoints, metrics and reports."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """More than one rank (a process group is initialised)."""
        return self.size > 1

    def shard(self, count: int) -> range:
        """This rank's contiguous share of `count` items (count must divide evenly)."""
        if count % self.size:
            raise ValueError(f"{count} items cannot be split evenly over {self.size} ranks")
        per = count // self.size
        return range(self.rank * per, (self.rank + 1) * per)


_WORLD = World()


def init_distributed(backend: str | None = None) -> World:
    """Join the process group that `torchrun` describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT); a plain single process gets `World()` and no group."""
    global _WORLD
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        _WORLD = World()
        return _WORLD
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(local)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    _WORLD = World(rank=rank, size=size, local_rank=local)
    return _WORLD


def world() -> World:
    """The current `World` (a single process unless `init_distributed` joined a group)."""
    return _WORLD


def _all_reduce(values: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
    """In-place all-reduce; a CPU tensor (a metric or normaliser) travels through the GPU
    under NCCL, which reduces CUDA tensors only."""
    if not _WORLD.distributed:
        return values
    if values.device.type == "cpu" and dist.get_backend() == "nccl":
        on_gpu = values.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu, op=op)
        return values.copy_(on_gpu)
    dist.all_reduce(values, op=op)
    return values


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place, returned); identity in a single process."""
    return _all_reduce(values, dist.ReduceOp.SUM)


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """Element-wise max over ranks (in place, returned); identity in a single process."""
    return _all_reduce(values, dist.ReduceOp.MAX)


def all_gather_cat(values: torch.Tensor) -> torch.Tensor:
    """Concatenate equal-shaped tensors from every rank along dim 0, in rank order."""
    if not _WORLD.distributed:
        return values
    device = values.device
    if device.type == "cpu" and dist.get_backend() == "nccl":  # NCCL gathers CUDA tensors only
        values = values.to(torch.device("cuda", torch.cuda.current_device()))
    parts = [torch.empty_like(values) for _ in range(_WORLD.size)]
    dist.all_gather(parts, values.contiguous())
    return torch.cat(parts, dim=0).to(device)


def sum_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Sum every parameter's gradient over ranks, flattened into one buffer per dtype so the
    step costs one collective, not one per tensor. Missing grads count as zeros."""
    if not _WORLD.distributed:
        return
    by_dtype: dict[torch.dtype, list[torch.nn.Parameter]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        by_dtype.setdefault(p.grad.dtype, []).append(p)
    for group in by_dtype.values():
        flat = torch.cat([p.grad.reshape(-1) for p in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for p in group:
            n = p.grad.numel()
            p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
            offset += n


def global_normalizer(mask: torch.Tensor, mode: str, constant: float | None = None) -> float:
    """`aggregation_normalizer` over the global batch: every mode's normaliser is a sum over
    rows (tokens, sequences, sequences × constant), so the ranks' raw values add up; the ≥ 1
    clamp is applied once, to the total."""
    from posttrain.algorithms.aggregation import AGGREGATIONS

    raw = torch.tensor([AGGREGATIONS[mode].normalizer(mask, constant)], dtype=torch.float64)
    return max(float(all_reduce_sum(raw)), 1.0)


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if _WORLD.distributed:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group, if one was joined."""
    global _WORLD
    if dist.is_initialized():
        dist.destroy_process_group()
    _WORLD = World()
