"""Atomic saves and resume resolution (RELIABILITY CKPT-4, CKPT-5)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from posttrain.run.checkpoint import (
    CheckpointError,
    find_latest_checkpoint,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from posttrain.run.faults import InjectedFault

REPO = Path(__file__).resolve().parents[2]
CONFIG = {"seed": 1}


def _weights(step: int) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "policy": {"w": torch.full((1024,), float(step))},
        "value_head": {"v": torch.full((2,), -float(step))},
    }


def _save(run: Path, step: int, keep_last: int = 1) -> Path:
    return save_checkpoint(run, step, _weights(step), {"step": step}, CONFIG, keep_last=keep_last)


def _assert_loads_step(path: Path, step: int) -> None:
    ck = load_checkpoint(path)
    assert ck.step == step and ck.state == {"step": step}
    assert torch.equal(ck.weights["policy"]["w"], torch.full((1024,), float(step)))


# The child saves step 2 of a run whose step 1 the parent wrote (keep_last=1).
CHILD = """
import sys, torch
from pathlib import Path
from posttrain.run.checkpoint import save_checkpoint
run = Path(sys.argv[1])
w = {"policy": {"w": torch.full((1024,), 2.0)}, "value_head": {"v": torch.full((2,), -2.0)}}
if len(sys.argv) > 2:  # simulate a full disk: files may not grow beyond N bytes
    import resource, signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))
try:
    save_checkpoint(run, 2, w, {"step": 2}, {"seed": 1}, keep_last=1)
except Exception as e:
    print("SAVE FAILED", type(e).__name__, e)
    sys.exit(3)
print("SAVED")
"""


def _child(run: Path, *args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTTRAIN_FAULT")}
    if fault:
        env["POSTTRAIN_FAULT"] = fault
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(run), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path):
    """CKPT-4: keep_last=1, SIGKILL after the 2nd file of step 2 → step 1 still loads, is
    what auto-resume picks, and `latest` still names it; the next save of step 2 works."""
    _save(tmp_path, 1)
    proc = _child(tmp_path, fault="save:after_file:2")
    assert proc.returncode == -signal.SIGKILL, proc.stdout + proc.stderr
    assert "injected SIGKILL at save:after_file:2" in proc.stderr
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == [
        "latest",
        "step-00000001",
        "step-00000002.tmp",
    ]
    # The killed save got exactly two files out, and no manifest.
    assert sorted(p.name for p in (root / "step-00000002.tmp").iterdir()) == [
        "policy.safetensors",
        "value_head.safetensors",
    ]
    assert (root / "latest").read_text() == "step-00000001\n"
    assert find_latest_checkpoint(tmp_path) == root / "step-00000001"
    assert resolve_resume(tmp_path, "auto") == root / "step-00000001"
    _assert_loads_step(root / "step-00000001", 1)

    # Resumed run saves step 2 again: the stale tmp is replaced, then step 1 rotated out.
    _save(tmp_path, 2)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000002"]
    _assert_loads_step(root / "step-00000002", 2)


def test_disk_full_during_save_keeps_previous_checkpoint(tmp_path):
    """CKPT-4 with RLIMIT_FSIZE = 2000 bytes: the 4 KiB policy file cannot be written; the
    save raises, removes its tmp dir, and step 1 is intact and picked by auto-resume."""
    _save(tmp_path, 1)
    proc = _child(tmp_path, "2000")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "SAVE FAILED" in proc.stdout
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000001"]
    assert resolve_resume(tmp_path, "auto") == root / "step-00000001"
    _assert_loads_step(root / "step-00000001", 1)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_failure_after_each_file_keeps_previous_checkpoint(tmp_path, monkeypatch, k):
    """The same crash, in-process, after each of the 5 files (2 weights, state, config,
    manifest): nothing of step 2 becomes visible, step 1 is untouched."""
    _save(tmp_path, 1)
    monkeypatch.setenv("POSTTRAIN_FAULT", f"save:after_file:{k}")
    monkeypatch.setenv("POSTTRAIN_FAULT_MODE", "raise")
    with pytest.raises(InjectedFault):
        _save(tmp_path, 2)
    monkeypatch.delenv("POSTTRAIN_FAULT")
    root = tmp_path / "checkpoints"
    assert len(list((root / "step-00000002.tmp").iterdir())) == k
    assert find_latest_checkpoint(tmp_path) == root / "step-00000001"
    _assert_loads_step(root / "step-00000001", 1)


def test_failure_after_rename_keeps_both_and_resumes_from_new(tmp_path, monkeypatch):
    """Killed after step 2's rename but before `latest` and rotation: both are complete;
    auto-resume takes the newer, and the next save rotates the older out."""
    _save(tmp_path, 1)
    monkeypatch.setenv("POSTTRAIN_FAULT", "save:after_rename")
    monkeypatch.setenv("POSTTRAIN_FAULT_MODE", "raise")
    with pytest.raises(InjectedFault):
        _save(tmp_path, 2)
    monkeypatch.delenv("POSTTRAIN_FAULT")
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text() == "step-00000001\n"
    assert resolve_resume(tmp_path, "auto") == root / "step-00000002"
    _save(tmp_path, 3)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-00000003"]


def _three_dirs(run: Path) -> Path:
    """step 1 complete, step 2 with a truncated safetensors file, step 3 unfinished (.tmp)."""
    _save(run, 1, keep_last=5)
    step2 = _save(run, 2, keep_last=5)
    f = step2 / "policy.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    shutil.copytree(step2, run / "checkpoints" / "step-00000003.tmp")
    return step2


def test_auto_resume_skips_truncated_and_tmp_and_logs_its_pick(tmp_path, caplog):
    """CKPT-5: auto picks the complete step 1 and says so; the truncated step 2 is skipped
    with a warning naming the file."""
    _three_dirs(tmp_path)
    with caplog.at_level(logging.INFO, logger="posttrain.run.checkpoint"):
        picked = resolve_resume(tmp_path, "auto")
    assert picked == tmp_path / "checkpoints" / "step-00000001"
    assert "latest complete checkpoint" in caplog.text and "step-00000001" in caplog.text
    assert "skipping" in caplog.text and "policy.safetensors" in caplog.text
    assert resolve_resume(tmp_path, "must") == picked


def test_explicit_resume_of_truncated_checkpoint_raises_naming_the_file(tmp_path):
    step2 = _three_dirs(tmp_path)
    with pytest.raises(CheckpointError, match=r"step-00000002.*policy\.safetensors.*100 bytes"):
        resolve_resume(tmp_path, str(step2))
    with pytest.raises(CheckpointError, match=r"policy\.safetensors"):
        load_checkpoint(step2)
    with pytest.raises(CheckpointError, match="incomplete checkpoint .*step-00000003.tmp"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoints" / "step-00000003.tmp"))


def test_resume_never_silently_starts_fresh(tmp_path):
    assert resolve_resume(tmp_path, None) is None
    assert resolve_resume(tmp_path, "auto") is None  # nothing there yet: fresh by request
    with pytest.raises(CheckpointError, match="resume='must'.*no complete checkpoint"):
        resolve_resume(tmp_path, "must")
    missing = tmp_path / "nope" / "step-00000009"
    with pytest.raises(CheckpointError, match=f"{missing} does not exist"):
        resolve_resume(tmp_path, str(missing))
    with pytest.raises(CheckpointError, match="holds no complete checkpoint"):
        resolve_resume(tmp_path, str(tmp_path))
    # A step dir whose manifest was never written is incomplete, even without ".tmp".
    bare = tmp_path / "checkpoints" / "step-00000004"
    bare.mkdir(parents=True)
    with pytest.raises(CheckpointError, match="incomplete checkpoint .*no manifest.json"):
        resolve_resume(tmp_path, str(bare))
    with pytest.raises(CheckpointError, match="incomplete checkpoint .*no manifest.json"):
        load_checkpoint(bare)
    with pytest.raises(CheckpointError, match="resume='must'"):
        resolve_resume(tmp_path, "must")


def test_explicit_run_dir_and_latest_pointer_resolve_to_the_newest(tmp_path):
    _save(tmp_path, 1, keep_last=3)
    newest = _save(tmp_path, 2, keep_last=3)
    assert resolve_resume(tmp_path, str(tmp_path)) == newest
    assert resolve_resume(tmp_path, str(tmp_path / "checkpoints")) == newest
    assert resolve_resume(tmp_path, str(tmp_path / "checkpoints" / "latest")) == newest
    older = tmp_path / "checkpoints" / "step-00000001"
    assert resolve_resume(tmp_path / "elsewhere", str(older)) == older
