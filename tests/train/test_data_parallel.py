"""Data parallel under torchrun (gloo, 2 CPU processes) equals one process on the same global
batch: the same per-step losses and final weights (fp32, 1e-6) for SFT, RL, the reward model and
DPO, and a run killed under torchrun resumes to the same weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

WORKER = Path(__file__).with_name("_dp_worker.py")
REPO = Path(__file__).resolve().parents[2]


def _run(
    kind: str, run_dir: Path, nproc: int, resume: str | None = None, fault: str | None = None
) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTTRAIN_FAULT")}
    env.update(OMP_NUM_THREADS="1", POSTTRAIN_NO_PROGRESS="1")
    if fault:
        env["POSTTRAIN_FAULT"] = fault
    args = [str(WORKER), kind, str(run_dir)] + ([resume] if resume else [])
    if nproc == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            *args,
        ]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    if proc.returncode and not fault:
        print(proc.stdout[-3000:], proc.stderr[-6000:])
    return proc.returncode


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    weights = load_file(run_dir / "final" / "model.safetensors")
    head = run_dir / "final" / "reward_head.safetensors"  # a reward model's scalar head
    if head.exists():
        weights.update({f"head.{k}": v for k, v in load_file(head).items()})
    return weights


def _losses(run_dir: Path, key: str) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)[key] for line in lines if key in json.loads(line)]


def _assert_close(a: Path, b: Path, key: str) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=1e-6, msg=name)
    la, lb = _losses(a, key), _losses(b, key)
    assert len(la) == len(lb) > 0
    torch.testing.assert_close(torch.tensor(la), torch.tensor(lb), rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind,key",
    [("sft", "loss/lm"), ("rl", "loss/policy"), ("rm", "loss/rm"), ("dpo", "loss/pref")],
)
def test_two_ranks_equal_one_process(tmp_path, kind, key) -> None:
    assert _run(kind, tmp_path / "one", 1) == 0
    assert _run(kind, tmp_path / "two", 2) == 0
    _assert_close(tmp_path / "one", tmp_path / "two", key)


@pytest.mark.slow
@pytest.mark.parametrize("kind,key", [("rl", "loss/policy"), ("dpo", "loss/pref")])
def test_killed_under_torchrun_resumes_and_matches(tmp_path, kind, key) -> None:
    assert _run(kind, tmp_path / "one", 1) == 0
    assert _run(kind, tmp_path / "two", 2, fault="step:5") != 0  # every rank SIGKILLed in step 5
    assert not (tmp_path / "two" / "final").exists()
    # DPO: both ranks read the reference log-probs rank 0 cached before the kill; computing
    # them again would hit the ref_cache fault point and kill the run.
    fault = "ref_cache" if kind == "dpo" else None
    assert _run(kind, tmp_path / "two", 2, resume="auto", fault=fault) == 0
    _assert_close(tmp_path / "one", tmp_path / "two", key)
