"""JSONL metrics with resume truncation (RELIABILITY CKPT-3 contiguous step log)."""

from __future__ import annotations

import json
import math
import sys
import types

import numpy as np
import pytest
import torch

from posttrain.run import metrics as metrics_mod
from posttrain.run.metrics import MetricsLogger, read_metrics


def _strict_json(line: str) -> dict:
    """json.loads that rejects NaN/Infinity tokens, which are not JSON."""

    def refuse(token: str) -> None:
        raise ValueError(f"non-JSON token {token}")

    return json.loads(line, parse_constant=refuse)


def test_one_valid_json_line_per_call(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as m:
        m.log(1, {"loss/policy": 0.5, "rollout/reward_mean": np.float32(0.25), "n": 3})
        m.log(2, {"loss/policy": torch.tensor(0.125), "ok": True, "note": "warmup"})
        m.log(2, {"policy/approx_kl": 0.0})  # a second line for the same step is fine
        # Flushed after every call: a reader sees the lines before close.
        assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [_strict_json(x) for x in lines] == [
        {"step": 1, "loss/policy": 0.5, "rollout/reward_mean": 0.25, "n": 3},
        {"step": 2, "loss/policy": 0.125, "ok": True, "note": "warmup"},
        {"step": 2, "policy/approx_kl": 0.0},
    ]
    assert list(_strict_json(lines[0])) == ["step", "loss/policy", "rollout/reward_mean", "n"]


def test_non_finite_values_stay_valid_json_and_read_back_as_floats(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as m:
        m.log(0, {"a": math.nan, "b": math.inf, "c": -math.inf, "d": torch.tensor(float("nan"))})
    line = (tmp_path / "metrics.jsonl").read_text().strip()
    assert _strict_json(line) == {"step": 0, "a": "nan", "b": "inf", "c": "-inf", "d": "nan"}
    (row,) = read_metrics(tmp_path)
    assert math.isnan(row["a"]) and math.isnan(row["d"])
    assert row["b"] == math.inf and row["c"] == -math.inf


def test_bad_inputs_raise(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as m:
        m.log(5, {"x": 1.0})
        with pytest.raises(ValueError, match="step 4 logged after step 5"):
            m.log(4, {"x": 1.0})
        with pytest.raises(ValueError, match="reserved"):
            m.log(6, {"step": 1})
        with pytest.raises(ValueError, match=r"'v' is a tensor of shape \(2,\)"):
            m.log(6, {"v": torch.zeros(2)})
        with pytest.raises(ValueError, match="unsupported type list"):
            m.log(6, {"v": [1]})
    # A new logger on the same file remembers the last step.
    with MetricsLogger(tmp_path, tensorboard=False) as m, pytest.raises(ValueError):
        m.log(3, {"x": 1.0})


def test_truncate_after_resume_keeps_the_log_contiguous(tmp_path):
    """Crash after step 5 with a checkpoint at step 3: the resumed run drops steps 4-5,
    logs them again, and the file has each step exactly once, in order."""
    with MetricsLogger(tmp_path, tensorboard=False) as m:
        for step in range(1, 6):
            m.log(step, {"loss": float(step)})
    with MetricsLogger(tmp_path, tensorboard=False) as m:
        assert m.truncate_after(3) == 2
        for step in range(4, 7):
            m.log(step, {"loss": step + 0.5})
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in rows] == [1.0, 2.0, 3.0, 4.5, 5.5, 6.5]


def test_partial_last_line_from_a_kill_is_repaired(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "x": 1.0}\n{"step": 2, "x": 2.0}\n{"step": 3, "x"')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]  # reader skips the fragment
    with MetricsLogger(tmp_path, tensorboard=False) as m:
        m.log(3, {"x": 3.0})
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    assert path.read_text().endswith('{"step": 3, "x": 3.0}\n')
    # A malformed line in the middle is an error naming file:line.
    path.write_text('{"step": 1}\ngarbage\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2"):
        read_metrics(path)


def test_last_step_is_found_in_a_file_larger_than_one_read_chunk(tmp_path):
    with MetricsLogger(tmp_path, tensorboard=False) as m:
        for step in range(2000):  # ~100 kB, above the 64 kB tail chunk
            m.log(step, {"padding/" + "x" * 30: 1.0})
    with MetricsLogger(tmp_path, tensorboard=False) as m:
        with pytest.raises(ValueError, match="after step 1999"):
            m.log(1998, {})


class _FakeWriter:
    made: list[_FakeWriter] = []

    def __init__(self, log_dir: str, purge_step: int | None = None) -> None:
        self.log_dir, self.purge_step, self.scalars, self.closed = log_dir, purge_step, [], False
        _FakeWriter.made.append(self)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars.append((tag, value, step))

    def close(self) -> None:
        self.closed = True


def test_tensorboard_scalars_and_purge_on_resume(tmp_path, monkeypatch):
    """With tensorboard importable (faked here), numeric metrics go to SummaryWriter; after
    truncate_after(3) the next writer purges events from step 4 on."""
    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = _FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    _FakeWriter.made.clear()
    with MetricsLogger(tmp_path) as m:
        m.log(1, {"loss": 0.5, "note": "text is not a scalar", "ok": True})
        m.log(5, {"loss": 0.25})
        m.truncate_after(3)
        m.log(4, {"loss": 0.75})
    first, second = _FakeWriter.made
    assert first.log_dir == str(tmp_path / "tensorboard") and first.purge_step is None
    assert first.scalars == [("loss", 0.5, 1), ("ok", 1.0, 1), ("loss", 0.25, 5)]
    assert second.purge_step == 4 and second.scalars == [("loss", 0.75, 4)]
    assert first.closed and second.closed


def test_tensorboard_required_but_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics_mod, "_tensorboard_available", lambda: False)
    with pytest.raises(ImportError, match="tensorboard=False"):
        MetricsLogger(tmp_path, tensorboard=True)
    with MetricsLogger(tmp_path) as m:  # auto: quietly JSONL only
        m.log(0, {"x": 1.0})
        assert m._tb is None
