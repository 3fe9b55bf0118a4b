"""Fault injection hook (RELIABILITY TEST-6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.run import faults
from posttrain.run.faults import InjectedFault, fault_point, parse_faults

FAULTS_PY = Path(faults.__file__)


def test_parse_names_and_indices():
    assert parse_faults(
        "step:3, save:after_file:2 ,inner_epoch:1,,ref_cache:5,save:after_rename"
    ) == {
        ("step", 3),
        ("save:after_file", 2),
        ("inner_epoch", 1),
        ("ref_cache", 5),
        ("save:after_rename", None),
    }
    assert parse_faults("") == frozenset()


def test_no_env_is_a_no_op(monkeypatch):
    monkeypatch.delenv("POSTTRAIN_FAULT", raising=False)
    fault_point("step", 3)
    fault_point("save:after_file", 1)


def test_raise_mode_matches_name_and_index_only(monkeypatch):
    monkeypatch.setenv("POSTTRAIN_FAULT_MODE", "raise")
    monkeypatch.setenv("POSTTRAIN_FAULT", "step:3,save:after_rename")
    fault_point("step", 2)
    fault_point("step", 4)
    fault_point("inner_epoch", 3)
    fault_point("step")  # no index: only a spec without index would match
    with pytest.raises(InjectedFault, match="injected fault at step:3"):
        fault_point("step", 3)
    with pytest.raises(InjectedFault, match="save:after_rename:17"):
        fault_point("save:after_rename", 17)  # index-free spec matches any index
    # The cache follows the env value: a new value is parsed again.
    monkeypatch.setenv("POSTTRAIN_FAULT", "step:4")
    fault_point("step", 3)
    with pytest.raises(InjectedFault):
        fault_point("step", 4)


def test_kill_mode_sends_sigkill(tmp_path):
    """Default mode: the process dies of SIGKILL at the point and runs no cleanup code.
    faults.py is loaded on its own, so the child does not pay for importing torch."""
    script = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('f', {str(FAULTS_PY)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "import atexit; atexit.register(lambda: print('CLEANUP RAN'))\n"
        "for i in range(1, 6):\n"
        "    m.fault_point('step', i)\n"
        "    print('step', i, flush=True)\n"
    )
    env = {**os.environ, "POSTTRAIN_FAULT": "step:3"}
    env.pop("POSTTRAIN_FAULT_MODE", None)
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == -signal.SIGKILL
    assert proc.stdout.split("\n") == ["step 1", "step 2", ""]
    assert "injected SIGKILL at step:3" in proc.stderr
