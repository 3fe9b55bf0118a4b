"""Per-step metrics: one JSON line per `log` call in ``<run_dir>/metrics.jsonl``, plus TensorBoard.

Each line is ``{"step": N, "loss/policy": 0.12, ...}`` with keys in the order given. The file
stays valid JSON Lines: non-finite floats, which JSON cannot hold, are written as the strings
``"nan"``, ``"inf"`` and ``"-inf"``, and `read_metrics` turns them back into floats (a
metric whose real value is one of those strings would come back as a float too).

On resume, ``truncate_after(step)`` drops the lines written after the checkpoint, so a
run that crashed and resumed has exactly one line set per step (RELIABILITY CKPT-3). Steps
must not go backwards within a file; that error is how a step applied twice shows up.
"""

from __future__ import annotations

import json
import logging
import math
import os
from numbers import Number
from pathlib import Path

import torch

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


class MetricsLogger:
    """Append metrics to ``metrics.jsonl`` (flushed every call) and to TensorBoard.

    Args:
        run_dir: directory of the run (created if missing).
        tensorboard: True = required (ImportError if ``tensorboard`` is missing); False = off;
            None = on when ``torch.utils.tensorboard`` imports.
    """

    def __init__(self, run_dir: Path, *, tensorboard: bool | None = None) -> None:
        available = _tensorboard_available() if tensorboard is not False else False
        if tensorboard and not available:
            raise ImportError(
                "tensorboard=True but `torch.utils.tensorboard` cannot be imported; "
                "pip install 'posttrain[tensorboard]' or pass tensorboard=False"
            )
        self._tb_wanted = available
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        self._drop_partial_tail()
        self._last_step = _last_step(self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None  # created on first use, so truncate_after can set purge_step first
        self._purge_step: int | None = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Write one line ``{"step": step, **metrics}``.

        Args:
            step: global step (int >= 0, not smaller than the last logged step).
            metrics: {name: value}; values may be Python/numpy numbers, bools, 0-d tensors
                or strings. Strings go to the JSON line only.

        Raises:
            ValueError: a step smaller than the last one, a "step" key or a non-scalar value.
        """
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        if self._last_step is not None and step < self._last_step:
            raise ValueError(
                f"step {step} logged after step {self._last_step} in {self.path}; on resume "
                "call truncate_after(resumed_step) first"
            )
        row: dict[str, object] = {"step": step}
        for key, value in metrics.items():
            if key == "step":
                raise ValueError("'step' is reserved in metrics; pass it as the step argument")
            row[key] = _scalar(key, value)
        line = json.dumps({k: _encode(v) for k, v in row.items()}, allow_nan=False)
        self._file.write(line + "\n")
        self._file.flush()
        self._last_step = step
        if self._tb_wanted:
            writer = self._writer()
            for key, value in row.items():
                if key != "step" and not isinstance(value, str):
                    writer.add_scalar(key, float(value), step)

    def truncate_after(self, step: int) -> int:
        """Drop every line with ``step > step`` (resume from a checkpoint taken at `step`).

        Returns:
            How many lines were dropped. TensorBoard events after `step` are purged too
            (``purge_step``) by the next writer.
        """
        self._file.close()
        kept, dropped = [], 0
        for lineno, raw in enumerate(self.path.read_text(encoding="utf-8").splitlines(), 1):
            if not raw.strip():
                continue
            try:
                row_step = json.loads(raw)["step"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{self.path}:{lineno}: not a metrics line ({e})") from e
            if row_step <= step:
                kept.append(raw)
            else:
                dropped += 1
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        os.replace(tmp, self.path)
        self._file = open(self.path, "a", encoding="utf-8")
        self._last_step = _last_step(self.path)
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self._purge_step = step + 1
        if dropped:
            log.info("dropped %d metric lines after step %d from %s", dropped, step, self.path)
        return dropped

    def close(self) -> None:
        """Flush and close the JSONL file and the TensorBoard writer."""
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _writer(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                str(self.run_dir / TENSORBOARD_DIR), purge_step=self._purge_step
            )
        return self._tb

    def _drop_partial_tail(self) -> None:
        """A kill during `log` can leave half a line; cut it so the next line stays valid."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        log.warning("%s ends in a partial line; dropping %d bytes", self.path, len(data) - cut)
        with open(self.path, "r+b") as f:
            f.truncate(cut)


def _tensorboard_available() -> bool:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def _scalar(key: str, value: object) -> object:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"metric {key!r} is a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, (bool, str)):
        return value
    if hasattr(value, "item") and not isinstance(value, (int, float)):  # numpy scalars
        value = value.item()
    if isinstance(value, int):  # bool included
        return value
    if isinstance(value, Number):
        return float(value)
    raise ValueError(f"metric {key!r} has unsupported type {type(value).__name__}")


def _encode(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _last_step(path: Path) -> int | None:
    """Step of the last line of `path` (reads only the tail of the file)."""
    if not path.exists():
        return None
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        chunk = min(size, 65536)
        while True:
            f.seek(size - chunk)
            lines = f.read(chunk).splitlines()
            lines = [ln for ln in lines if ln.strip()]
            # With one line in a partial chunk it may be cut at the front: read more.
            if chunk == size or len(lines) > 1:
                if not lines:
                    return None
                try:
                    return int(json.loads(lines[-1])["step"])
                except (ValueError, KeyError, TypeError) as e:
                    raise ValueError(f"{path}: last line is not a metrics line ({e})") from e
            chunk = min(size, chunk * 4)


def read_metrics(path: Path) -> list[dict]:
    """Read a ``metrics.jsonl`` (or a run dir holding one) into a list of dicts.

    ``"nan"``/``"inf"``/``"-inf"`` strings become floats. A partial last line (the writer
    was killed mid-line) is skipped with a warning; any other bad line raises.

    Raises:
        ValueError: naming ``file:line`` of a malformed line.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    rows = []
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError as e:
            if lineno == len(lines):  # no trailing newline: interrupted write
                log.warning("%s:%d: skipping partial last line", path, lineno)
                continue
            raise ValueError(f"{path}:{lineno}: malformed metrics line: {e}") from e
        rows.append({k: _NONFINITE.get(v, v) if isinstance(v, str) else v for k, v in row.items()})
    return rows
