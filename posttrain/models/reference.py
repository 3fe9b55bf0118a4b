"""The frozen reference policy π_ref of the KL penalty, and a digest to prove it stayed frozen.

CORR-9: after training, the reference's parameters are bitwise unchanged, none requires grad,
and the module is in eval mode. `frozen_copy` makes it so; `parameter_digest` lets a test check
it (hash before, train, hash after).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import types

import torch
from torch import nn

logger = logging.getLogger(__name__)

_FROZEN_FLAG = "_posttrain_frozen"


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    """Replacement for `nn.Module.train` on frozen modules: any mode becomes eval."""
    if mode:
        logger.debug("ignored .train() on a frozen reference module %s", type(self).__name__)
    # nn.Module.train(False) sets self.training and calls .train(False) on each child, which is
    # this same override there, so the whole subtree stays in eval.
    return nn.Module.train(self, False)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` that cannot train: no grad anywhere, eval mode, and `.train()` is
    a no-op on it and on every submodule (also when a parent module calls it).

    The copy shares no storage with the original, so optimizer steps on the original leave it
    bitwise unchanged. Never hand its parameters to an optimizer (`check_frozen` and
    `parameter_digest` make that testable). Pass the bare model, not a DDP/FSDP or
    `torch.compile` wrapper.

    Caveat: `requires_grad_(True)` called on a parent that contains the copy would reach its
    parameters; keep the reference outside the trained module (a plain attribute or a list).
    Save it as a state_dict (safetensors); pickling the whole module object is not supported.
    """
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    for module in ref.modules():
        # An instance attribute shadows the class method, also for calls that nn.Module.train of
        # a parent makes on its children. A plain function bound with MethodType survives a
        # further deepcopy (copy rebinds bound methods to the copied instance).
        module.train = types.MethodType(_stay_in_eval, module)
        object.__setattr__(module, _FROZEN_FLAG, True)
    ref.eval()
    return ref


def is_frozen(module: nn.Module) -> bool:
    """True if `module` came from `frozen_copy`."""
    return bool(getattr(module, _FROZEN_FLAG, False))


def check_frozen(module: nn.Module) -> None:
    """Raise if any parameter requires grad or any submodule is in training mode (CORR-9)."""
    for name, param in module.named_parameters():
        if param.requires_grad:
            raise RuntimeError(f"frozen reference: parameter {name!r} has requires_grad=True")
    for name, sub in module.named_modules():
        if sub.training:
            raise RuntimeError(f"frozen reference: module {name or '<root>'!r} is in train mode")


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 (hex) over the names, dtypes, shapes and raw bytes of all parameters, in name order.

    Tied parameters count once (`named_parameters` de-duplicates them). Two models share a digest
    iff their parameters are bitwise equal, whatever device they live on.
    """
    digest = hashlib.sha256()
    for name, param in sorted(model.named_parameters(), key=lambda item: item[0]):
        tensor = param.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{tensor.dtype}|{tuple(param.shape)}\n".encode())
        # A uint8 view gives the exact bytes for every dtype, bf16 included (numpy has no bf16).
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
