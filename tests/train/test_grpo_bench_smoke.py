"""The TRL comparison scripts (issue 8) run end to end in smoke mode, so they cannot rot.

The timings themselves are never asserted (they belong to benchmarks/, not to tests); what is
checked is that both sides ran W's exact work and the bookkeeping adds up. TRL is the `bench`
extra: without it the scripts time posttrain alone, and the TRL checks are skipped.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
HAVE_TRL = importlib.util.find_spec("trl") is not None


def _load(name: str):
    sys.path.insert(0, str(BENCH))  # grpo_time_to_target imports its sibling
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the scripts set W's 2 threads; leave the session as it was


def test_w_reward_by_hand() -> None:
    w = _load("grpo_vs_trl")
    digits = torch.tensor([[3, 1, 4, 1, 5, 9]])  # sorted: 1 1 3 4 5 9 → tokens 5 5 7 8 9 13
    right = torch.tensor([[5, 5, 7, 8, 9, 13, 0, 0, 0, 0]])
    half = torch.tensor([[5, 5, 7, 2, 2, 2, 5, 5, 7, 8]])  # 3 of 6 leading positions right
    assert w.w_reward(digits, right).tolist() == [1.0]
    assert w.w_reward(digits, half).tolist() == [0.5]
    model = w.w_model()
    n = sum(p.numel() for p in model.parameters())
    # 4 layers × (q,k,v,o 4·128² + MLP 3·128·512 + 2 norms 2·128) + embed 16·128 + final norm
    assert n == 4 * (4 * 128 * 128 + 3 * 128 * 512 + 2 * 128) + 16 * 128 + 128


@pytest.mark.slow
def test_step_time_script_smoke(tmp_path, keep_threads) -> None:
    w = _load("grpo_vs_trl")
    out = tmp_path / "bench.json"
    res = w.main(["--smoke", "--threads", "1", "--out", str(out)])
    assert json.loads(out.read_text())["reps"] == 1
    sides = ["posttrain"] + (["trl"] if HAVE_TRL else [])
    for side in sides:
        r = res[side]
        assert len(r["steps"]) == 1 and r["median_s"] > 0
        phases = r["phases_median_s"]
        assert set(phases) >= {"generation", "log-probs", "backward", "optimizer", "rest"}
        # one step: the phases partition it (the rest is what no phase claimed)
        assert sum(phases.values()) == pytest.approx(r["median_s"], rel=1e-6)
    if HAVE_TRL:
        assert res["speedup_median"] == pytest.approx(
            res["trl"]["median_s"] / res["posttrain"]["median_s"]
        )


@pytest.mark.slow
def test_time_to_target_script_smoke(tmp_path, keep_threads) -> None:
    ttt = _load("grpo_time_to_target")
    res = ttt.main(["--smoke", "--threads", "1", "--out", str(tmp_path / "ttt.json")])
    sides = {r["side"] for r in res["runs"]}
    assert sides == ({"posttrain", "trl"} if HAVE_TRL else {"posttrain"})
    for run in res["runs"]:
        assert run["steps"] == 2 and len(run["curve"]) == 2  # eval after each smoke step
        assert all(0.0 <= score <= 1.0 for _, _, score in run["curve"])
    # an untrained policy samples near chance: ~1/16 per position of a 16-token vocabulary
    assert 0.0 <= res["initial_held_out"] < 0.25
