"""Capture and restore every random number generator that can influence a run.

The captured state holds only tensors, lists, ints, floats, strings and None, so it can go
into ``state.pt`` and come back with ``torch.load(weights_only=True)`` (RELIABILITY CKPT-8):
no numpy arrays, no tuples of unknown classes.

Layout of the returned dict:
    torch_cpu:  uint8 tensor, the default CPU generator
    torch_cuda: list of uint8 tensors, one per visible CUDA device (empty without CUDA)
    python:     {"version": int, "internal": list[int] (625 ints), "gauss_next": float | None}
    numpy:      {"kind": "MT19937", "keys": list[int] (624), "pos": int, "has_gauss": int,
                 "cached_gaussian": float}
    generators: {name: uint8 tensor} for each named `torch.Generator` (e.g. the sampler's)
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

log = logging.getLogger(__name__)


def capture_rng(generators: dict[str, torch.Generator] | None = None) -> dict:
    """Snapshot torch (CPU and CUDA), python ``random``, numpy and the named generators.

    Args:
        generators: extra generators to save by name, e.g. ``{"sampler": rollout_gen}``.

    Returns:
        A dict of plain data (see the module docstring), safe for ``weights_only`` loading.
    """
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    cuda = []
    if torch.cuda.is_available():
        cuda = [s.clone() for s in torch.cuda.get_rng_state_all()]
    return {
        "torch_cpu": torch.get_rng_state().clone(),
        "torch_cuda": cuda,
        "python": {"version": int(version), "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "kind": str(kind),
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "generators": {name: g.get_state().clone() for name, g in (generators or {}).items()},
    }


def restore_rng(state: dict, generators: dict[str, torch.Generator] | None = None) -> None:
    """Put every generator back to the snapshot taken by `capture_rng`.

    Args:
        state: the dict `capture_rng` returned (possibly after a save/load round trip).
        generators: the live generators to restore, by the same names they were saved under.

    Raises:
        KeyError: when a named generator is missing from `state`, or `state` holds one that
            was not passed (a silently unrestored sampler breaks bit-exact resume).
    """
    torch.set_rng_state(state["torch_cpu"])
    _restore_cuda(state.get("torch_cuda", []))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    npst = state["numpy"]
    keys = np.asarray(npst["keys"], dtype=np.uint32)
    np.random.set_state(
        (npst["kind"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    saved = state.get("generators", {})
    live = generators or {}
    if set(saved) != set(live):
        raise KeyError(
            f"RNG generators differ: saved {sorted(saved)}, given {sorted(live)}; "
            "missing in checkpoint: "
            f"{sorted(set(live) - set(saved))}, not restored: {sorted(set(saved) - set(live))}"
        )
    for name, gen in live.items():
        gen.set_state(saved[name])


def _restore_cuda(states: list[torch.Tensor]) -> None:
    """Restore per-device CUDA states; warn (not fail) when the device count changed."""
    if not states:
        return
    if not torch.cuda.is_available():
        log.warning("checkpoint has %d CUDA RNG states but CUDA is unavailable", len(states))
        return
    n = torch.cuda.device_count()
    if n != len(states):
        # Resuming on a different machine: exact equality is lost anyway; restore what matches.
        log.warning("checkpoint has %d CUDA RNG states, %d devices visible", len(states), n)
    for device, s in enumerate(states[:n]):
        torch.cuda.set_rng_state(s, device)
