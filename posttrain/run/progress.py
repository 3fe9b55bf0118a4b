"""Progress bars for every long loop, quiet enough for CI logs.

On a terminal the bar redraws freely. When stderr is not a TTY (CI, a log file) it still
prints, but at most once a second (``mininterval=1.0``), so a 10-minute job adds a few
hundred short lines rather than thousands. ``POSTTRAIN_NO_PROGRESS=1`` turns all bars off,
and so does a non-zero ``RANK`` (under torchrun only rank 0 draws).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable

from tqdm import tqdm

NO_PROGRESS_ENV = "POSTTRAIN_NO_PROGRESS"
_TRUE = {"1", "true", "yes", "on"}


def progress_disabled() -> bool:
    """True when bars are switched off by ``POSTTRAIN_NO_PROGRESS`` or a non-zero ``RANK``."""
    if os.environ.get(NO_PROGRESS_ENV, "").strip().lower() in _TRUE:
        return True
    return os.environ.get("RANK", "0").strip() not in ("", "0")


def progress(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    disable: bool | None = None,
    **kwargs,
) -> tqdm:
    """A tqdm bar over `iterable` (or a manual one: call ``.update(n)``).

    Args:
        iterable: what to iterate; None for a bar driven by ``update``.
        total: number of items, when ``len(iterable)`` is unknown or no iterable is given.
        desc: label printed before the bar.
        disable: True/False forces the bar off/on; None follows `progress_disabled`.
        **kwargs: passed to tqdm (e.g. ``unit="step"``, ``leave=False``).

    Returns:
        The tqdm object; ``set_postfix(...)``, ``update``, ``close`` work even when disabled.
    """
    if disable is None:
        disable = progress_disabled()
    stream = kwargs.pop("file", sys.stderr)
    is_tty = bool(getattr(stream, "isatty", lambda: False)())
    kwargs.setdefault("mininterval", 0.1 if is_tty else 1.0)
    kwargs.setdefault("dynamic_ncols", is_tty)
    return tqdm(iterable, total=total, desc=desc, disable=disable, file=stream, **kwargs)
