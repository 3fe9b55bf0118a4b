"""benchmarks/gpu_figures.py (issue 7's one script for the GPU figures) runs end to end on CPU
in smoke mode, so it cannot rot between the sessions that have a GPU. Timings are not asserted;
the checks it records are: every rollout variant produced its tokens, and in fp32 each
sampler's log-probs agree with the trainer's forward (the health metric's gap)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_figures_smoke_on_cpu(tmp_path) -> None:
    out = tmp_path / "gf.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POSTTRAIN_NO_PROGRESS": "1"}
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_figures.py", "--smoke", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["device"] == "cpu"
    rollout = res["rollout"]
    for variant in ("generate", "hf_engine", "llama_engine", "graph_static_cache"):
        for precision in ("fp32", "bf16-autocast"):
            assert rollout[f"{variant}/{precision}"]["tok_s"] > 0, (variant, precision)
    for variant in ("hf_engine", "llama_engine", "graph_static_cache"):
        assert rollout[f"{variant}/fp32"]["gap_max"] < 1e-5, variant
    assert res["train"]["eager-bf16"]["s_per_step"] > 0
    steps = res["grpo"]["steps"]
    assert len(steps) >= 1 and all(s["total"] > 0 for s in steps)
