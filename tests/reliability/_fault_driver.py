"""Run a plan of training attempts, each in its own forked process, some killed by SIGKILL.

    python _fault_driver.py PLAN.json RESULT.json

PLAN is ``{"jobs": J, "chains": [[{"id", "trainer", "run_dir", "resume", "fault"}, ...], ...]}``:
the attempts of a chain run in order, up to J chains at a time. The driver imports torch and
the trainers once, then forks one child per attempt: the
child sets ``POSTTRAIN_FAULT`` (kill mode: `fault_point` sends itself SIGKILL), trains, and
leaves with ``os._exit``. Forking after the imports saves ~5 s of interpreter start per attempt;
the child is still a separate process that the kernel kills outright, and a resume always
forks afresh from the driver, so nothing of a killed attempt survives in memory.

RESULT maps each attempt id to ``{"rc", "start_step", "checkpoints"}``: the exit status
(-9 for SIGKILL), the step the trainer started from (what it resumed), and a snapshot of
``checkpoints/`` after the attempt: {dir name: {file: sha256}} for every entry ("latest"
maps to its text).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

os.environ["POSTTRAIN_NO_PROGRESS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _reliability_configs import make_trainer  # noqa: E402

import posttrain.train.dpo  # noqa: E402, F401  (imported before forking: the slow part)
import posttrain.train.lm  # noqa: E402, F401
import posttrain.train.policy_gradient  # noqa: E402, F401
import posttrain.train.reward_model  # noqa: E402, F401


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(run_dir: Path) -> dict[str, object]:
    """{entry of checkpoints/: {file: sha256}} ("latest": its text)."""
    root = run_dir / "checkpoints"
    out: dict[str, object] = {}
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if entry.is_dir():
            out[entry.name] = {f.name: _sha256(f) for f in sorted(entry.iterdir()) if f.is_file()}
        else:
            out[entry.name] = entry.read_text()
    return out


def _child(attempt: dict, start_file: Path) -> None:
    """Body of a forked attempt; never returns."""
    code = 0
    try:
        for key in ("POSTTRAIN_FAULT", "POSTTRAIN_FAULT_MODE"):
            os.environ.pop(key, None)
        if attempt["fault"]:
            os.environ["POSTTRAIN_FAULT"] = attempt["fault"]
        trainer = make_trainer(attempt["trainer"], attempt["run_dir"], attempt["resume"])
        start_file.write_text(str(trainer.counters.step))
        trainer.train()
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _start(attempt: dict, scratch: Path) -> int:
    """Fork a child that runs `attempt`; returns its pid."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(attempt, scratch / f"{attempt['id']}.start")
    return pid


def _finish(attempt: dict, status: int, started: float, scratch: Path) -> dict[str, object]:
    """Exit status, start step, duration and checkpoint snapshot of a finished attempt."""
    rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    start_file = scratch / f"{attempt['id']}.start"
    return {
        "rc": rc,
        "start_step": int(start_file.read_text()) if start_file.exists() else None,
        "seconds": round(time.perf_counter() - started, 2),
        "checkpoints": snapshot(Path(attempt["run_dir"])),
    }


def run_chains(chains: list[list[dict]], jobs: int, scratch: Path) -> dict[str, dict]:
    """Run each chain's attempts in order, up to `jobs` chains at a time (chains are
    independent run directories, so they may overlap; attempts of one chain never do)."""
    waiting = list(reversed(chains))
    active: dict[int, tuple[list[dict], int, float]] = {}  # pid → (chain, attempt index, t0)
    results: dict[str, dict] = {}
    while waiting or active:
        while waiting and len(active) < jobs:
            chain = waiting.pop()
            active[_start(chain[0], scratch)] = (chain, 0, time.perf_counter())
        pid, status, usage = os.wait4(-1, 0)
        chain, index, started = active.pop(pid)
        result = _finish(chain[index], status, started, scratch)
        result["cpu_seconds"] = round(usage.ru_utime + usage.ru_stime, 2)
        results[chain[index]["id"]] = result
        if index + 1 < len(chain):
            active[_start(chain[index + 1], scratch)] = (chain, index + 1, time.perf_counter())
    return results


def warm_up(scratch: Path) -> None:
    """Pay once, before forking, for what every child would otherwise redo: transformers
    compiles ~1000 regexes on a process's first `save_pretrained` (0.7 s)."""
    from posttrain.models.tiny import build_tiny_model

    build_tiny_model("tiny").save_pretrained(scratch / "warm-up")


def main(plan_path: str, result_path: str) -> int:
    """Run every chain of the plan and write the results."""
    torch.set_num_threads(1)
    plan = json.loads(Path(plan_path).read_text())
    scratch = Path(result_path).parent / "driver-scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    warm_up(scratch)
    results = run_chains(plan["chains"], int(plan.get("jobs", 1)), scratch)
    Path(result_path).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*sys.argv[1:]))
