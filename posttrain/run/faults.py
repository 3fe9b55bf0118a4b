"""Fault injection for crash tests: kill (or raise) at a named point of the code.

Tests set ``POSTTRAIN_FAULT`` to a comma-separated list of ``name[:index]`` specs, e.g.
``POSTTRAIN_FAULT="save:after_file:2,step:5"``. Code calls ``fault_point("step", 5)`` at the
spots where a crash is interesting; on a match the process sends itself ``SIGKILL``, which no
handler, ``finally`` or ``atexit`` can intercept: exactly what a preempted job or an OOM kill
does. With ``POSTTRAIN_FAULT_MODE=raise`` it raises `InjectedFault` instead, so a test can
exercise the same path in-process.

The name is everything before the last ``:`` when that last piece is an integer, else the whole
spec, which then matches every index of that name ("save:after_rename" fires on any step).

Points used by the library (keep this list in sync with the calls):
    step:N               before optimizer step N is applied (trainer)
    inner_epoch:K        between the K inner epochs of one rollout batch (trainer)
    ref_cache:N          while precomputing reference log-probs (trainer)
    save:after_file:K    after the K-th file of a checkpoint is written (checkpoint.py)
    save:after_rename:N  after step-N.tmp/ became step-N/, before the ``latest`` pointer
    save:after_latest:N  after the ``latest`` pointer, before old checkpoints are rotated out
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "POSTTRAIN_FAULT"
MODE_ENV = "POSTTRAIN_FAULT_MODE"

# (env value it was parsed from, parsed specs); re-parsed only when the env value changes.
_cache: tuple[str, frozenset[tuple[str, int | None]]] = ("", frozenset())


class InjectedFault(RuntimeError):
    """Raised by `fault_point` instead of SIGKILL when ``POSTTRAIN_FAULT_MODE=raise``."""


def parse_faults(spec: str) -> frozenset[tuple[str, int | None]]:
    """Parse ``"save:after_file:2,step"`` into ``{("save:after_file", 2), ("step", None)}``.

    Args:
        spec: comma-separated ``name[:index]`` items; blanks are ignored.

    Returns:
        The set of (name, index) pairs; index None matches every index of that name.
    """
    out: set[tuple[str, int | None]] = set()
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        head, sep, tail = item.rpartition(":")
        if sep and head and _is_int(tail):
            out.add((head, int(tail)))
        else:
            out.add((item, None))
    return frozenset(out)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def active_faults() -> frozenset[tuple[str, int | None]]:
    """The faults requested by the current ``POSTTRAIN_FAULT`` value (cached per value)."""
    global _cache
    spec = os.environ.get(FAULT_ENV, "")
    if spec != _cache[0]:
        _cache = (spec, parse_faults(spec))
    return _cache[1]


def fault_point(name: str, index: int | None = None) -> None:
    """Crash here if ``POSTTRAIN_FAULT`` names this point; a no-op otherwise.

    Args:
        name: the point's name, e.g. ``"step"`` or ``"save:after_file"``.
        index: which occurrence (step number, file number...); None when the point has none.

    Raises:
        InjectedFault: on a match when ``POSTTRAIN_FAULT_MODE=raise``. Without that variable a
            match kills the process with SIGKILL and this function never returns.
    """
    if not os.environ.get(FAULT_ENV):  # the common case: one dict lookup
        return
    faults = active_faults()
    if (name, index) not in faults and (name, None) not in faults:
        return
    where = name if index is None else f"{name}:{index}"
    if os.environ.get(MODE_ENV, "").strip().lower() == "raise":
        raise InjectedFault(f"injected fault at {where} (POSTTRAIN_FAULT={_cache[0]!r})")
    # A line on stderr so a crash test's log says why the child died; os.write is unbuffered.
    os.write(2, f"posttrain: injected SIGKILL at {where}\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)
