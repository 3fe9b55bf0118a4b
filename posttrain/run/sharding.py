"""Where the model lives and how it is split: device choice, bf16 autocast, and FSDP2.

Three independent knobs of `RunConfig` (posttrain.train.configs):

- `run.device` ("auto" | "cpu" | "cuda"): `resolve_device` picks the local device; under
  torchrun each rank takes `cuda:<LOCAL_RANK>`.
- `run.precision` ("fp32" | "bf16-autocast"): the weights and the optimizer stay fp32 (the
  master copy); `autocast` runs the forward passes (sampling, reference, trainer) in bf16.
- `run.fsdp` (bool): `shard_model` applies PyTorch's FSDP2 (`fully_shard`) to every decoder
  block and then to the root, so each rank keeps 1/world of the parameters, gradients and
  optimizer state. Gradients are *summed* over ranks (each rank's loss is already divided by
  the global normaliser, see posttrain.run.distributed), exactly like data parallel.

FSDP needs every rank to make the same forward/backward calls, which sampling (rows finish at
different steps) and rank-0-only evaluation do not. `gathered` therefore unshards the whole model
once (one all-gather per block) and disables resharding for the duration: inside it a forward
is purely local, so ranks may run different numbers of them. The full weights exist only while
sampling; gradients and optimizer state stay sharded, which is where most memory goes.

Checkpoints keep the single-process format: `gather_full_state` turns every DTensor into its
full CPU tensor (a collective: every rank calls it, rank 0 writes), and `localize` turns full
tensors read back from a checkpoint into DTensors placed like the live model's (params and
AdamW moments alike). A sharded run's checkpoint therefore resumes in one process and back.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

from posttrain.run.distributed import World

try:  # FSDP2 and DTensor; present in torch >= 2.6 (the project needs >= 2.10)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, fully_shard
    from torch.distributed.tensor import DTensor, distribute_tensor
except ImportError:  # a torch built without distributed support
    DTensor = FSDPModule = None  # type: ignore[assignment,misc]

PRECISIONS = ("fp32", "bf16-autocast")
"""Accepted values of `run.precision`."""


# ------------------------------------------------------------------ device and precision
def resolve_device(name: str, world: World | None = None) -> torch.device:
    """The device of this process for `run.device`.

    "auto" is CUDA when available, else CPU; "cuda" fails clearly without CUDA. Under torchrun
    a CUDA rank uses `cuda:<local_rank>` (the device `init_distributed` already selected).
    """
    if name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"run.device: expected 'auto', 'cpu' or 'cuda', got {name!r}")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("run.device='cuda' but torch sees no CUDA device (use 'auto' or 'cpu')")
    local = world.local_rank if world is not None else int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device("cuda", local)


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward-pass context of `run.precision`: bf16 autocast, or nothing for fp32.

    Only forward passes go inside it; backward and the optimizer step stay outside, so the fp32
    parameters receive fp32 gradients and AdamW updates an fp32 master copy.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"run.precision: expected one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


# --------------------------------------------------------------------------------- FSDP2
def _require_fsdp() -> None:
    if FSDPModule is None:
        raise RuntimeError("run.fsdp: this torch build has no torch.distributed FSDP2 support")


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks to shard one by one: classes named in transformers'
    `_no_split_modules` (LlamaDecoderLayer, ...), else the children of the first ModuleList."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    found = [m for m in model.modules() if type(m).__name__ in names]
    if found:
        return found
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            return list(module)
    return []


def shard_model(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """Apply FSDP2 in place: each block, then the root (embeddings, final norm, a tied head).

    Args:
        model: the bare model (make a `frozen_copy` reference *before* sharding, then shard it
            too). Its parameters must already be on `device`.
        world: the process group's shape; a single process is sharded over a 1-rank mesh,
            which keeps the code path testable without torchrun.
        device: where the shards live (the mesh's device type).
    Returns:
        The same module, now an `FSDPModule` whose parameters are DTensors (Shard(0)).
    """
    _require_fsdp()
    if not torch.distributed.is_initialized():
        if world.size > 1:
            raise RuntimeError("run.fsdp: world size > 1 but no process group (use torchrun)")
        # One process: a private 1-rank group, so FSDP runs (and is testable) without torchrun.
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(
            backend, store=torch.distributed.HashStore(), rank=0, world_size=1
        )
    mesh = init_device_mesh(device.type, (world.size,))
    for block in _blocks(model):
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    # Sum, don't average: the loss on each rank is already its share of the global mean.
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            if hasattr(module, "set_force_sum_reduction_for_comms"):
                module.set_force_sum_reduction_for_comms(True)  # plain SUM: gloo has no PREMUL_SUM
    return model


def is_sharded(obj: nn.Module | torch.optim.Optimizer) -> bool:
    """Whether a module (or an optimizer's parameters) holds DTensor parameters."""
    if DTensor is None:
        return False
    if isinstance(obj, torch.optim.Optimizer):
        params: Iterable[torch.Tensor] = (p for g in obj.param_groups for p in g["params"])
    else:
        params = obj.parameters()
    return any(isinstance(p, DTensor) for p in params)


def replicated(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters FSDP does not manage (plain tensors, e.g. a value head): these still need
    `sum_gradients`; FSDP's reduce-scatter already summed the sharded ones."""
    return [p for p in params if DTensor is None or not isinstance(p, DTensor)]


@contextlib.contextmanager
def gathered(*modules: nn.Module | None) -> Iterator[None]:
    """Full weights on every rank for the duration (sampling, rank-0 evaluation, export).

    Unshards every FSDP unit (a collective: all ranks enter together) and turns resharding after
    forward off, so forwards inside are local and ranks may make different numbers of them;
    on exit everything is resharded (local, no communication). A no-op for unsharded modules.
    """
    units = [
        m
        for mod in modules
        if mod is not None
        for m in mod.modules()
        if FSDPModule is not None and isinstance(m, FSDPModule)
    ]
    with torch.inference_mode(False):  # FSDP's all-gather buffers must be normal tensors
        for unit in units:
            unit.unshard()
            unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def gather_full_state(state: Any) -> Any:
    """A copy of a (nested) state dict with every DTensor replaced by its full tensor on CPU.

    A collective when DTensors are present: every rank must call it with the same structure.
    Plain tensors come back detached, on CPU, contiguous and unshared (safe for safetensors).
    """
    if DTensor is not None and isinstance(state, DTensor):
        # copy=True: with one rank full_tensor() may alias the live shard.
        return state.full_tensor().detach().to("cpu", copy=True).contiguous()
    if isinstance(state, torch.Tensor):
        return state.detach().cpu().contiguous().clone()
    if isinstance(state, Mapping):
        return {k: gather_full_state(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(gather_full_state(v) for v in state)
    return state


def export_state(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Full weights of a sharded model for `save_pretrained(state_dict=...)`, tied aliases
    (e.g. lm_head.weight = embed_tokens.weight) dropped as save_pretrained itself would; None
    for an unsharded model (save it as usual). A collective when sharded: every rank calls."""
    if not is_sharded(model):
        return None
    full = gather_full_state(model.state_dict())
    canonical = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    return {k: v for k, v in full.items() if k in canonical}


def _place_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`full` as a DTensor with `like`'s mesh and placements (each rank keeps its shard)."""
    return distribute_tensor(
        full.to(device=like.device_mesh.device_type, dtype=like.dtype),
        like.device_mesh,
        like.placements,
    )


def localize(part: nn.Module | torch.optim.Optimizer | Any, state: Any) -> Any:
    """Full-tensor `state` (from a checkpoint) shaped for `part`'s `load_state_dict`.

    A sharded module gets each tensor as a DTensor placed like its own; a sharded optimizer gets
    each per-parameter tensor of the parameter's shape (AdamW's exp_avg, exp_avg_sq) placed like
    that parameter (states are keyed by the parameter's index in `param_groups`, as in
    `optimizer.state_dict()`). Anything else is returned unchanged.
    """
    if isinstance(part, nn.Module) and is_sharded(part):
        live = part.state_dict()
        return {
            k: _place_like(v, live[k]) if k in live and isinstance(live[k], DTensor) else v
            for k, v in state.items()
        }
    if isinstance(part, torch.optim.Optimizer) and is_sharded(part):
        params = [p for g in part.param_groups for p in g["params"]]
        per_param = {}
        for index, entry in state["state"].items():
            p = params[int(index)]
            per_param[index] = {
                k: _place_like(v, p)
                if isinstance(p, DTensor) and isinstance(v, torch.Tensor) and v.shape == p.shape
                else v
                for k, v in entry.items()
            }
        return {**state, "state": per_param}
    return state


def clip_grad_norm(params: Iterable[nn.Parameter], max_norm: float) -> float:
    """Clip the global gradient norm over `params` to `max_norm`; returns the pre-clip norm.

    Without DTensors this is `torch.nn.utils.clip_grad_norm_` (bit-identical to before). With
    FSDP, torch's version cannot mix sharded and plain (replicated) gradients, so the squared
    norm is summed here: each rank's shards all-reduced, plus the replicated ones once.
    """
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    if DTensor is None or not any(isinstance(p.grad, DTensor) for p in params):
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    sharded = [p.grad for p in params if isinstance(p.grad, DTensor)]
    plain = [p.grad for p in params if not isinstance(p.grad, DTensor)]
    local = torch.stack([g.to_local().float().pow(2).sum() for g in sharded]).sum()
    torch.distributed.all_reduce(local)  # Σ over ranks of Σ over this rank's shards
    if plain:
        local = local + torch.stack([g.float().pow(2).sum() for g in plain]).sum().to(local)
    total = float(local.sqrt())
    coef = max_norm / (total + 1e-6)
    if math.isfinite(total) and coef < 1.0:
        for p in params:
            p.grad.mul_(coef)
    return total
