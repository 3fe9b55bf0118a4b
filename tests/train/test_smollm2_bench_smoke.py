"""benchmarks/smollm2_equations.py (issue 5, item 7) runs end to end in smoke mode (a tiny model
instead of SmolLM2, a tiny budget), so the script behind the SmolLM2 figures cannot rot; and its
flags reach the config the real run uses (recipes parse, --device cuda means bf16 autocast)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location(
        "smollm2_equations", ROOT / "benchmarks" / "smollm2_equations.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the run sets run.threads; leave the session as it was


def test_smoke_run_writes_before_and_after(tmp_path, keep_threads, capsys) -> None:
    bench = _load()
    out_path = tmp_path / "smoke.json"
    run_dir = tmp_path / "run"
    out = bench.main(
        ["--smoke", "--threads", "1", "--out", str(out_path), "--run-dir", str(run_dir)]
    )
    assert json.loads(out_path.read_text()) == json.loads(json.dumps(out, default=str))
    assert out["model"] == "tiny:tiny" and out["device"] == "cpu"
    assert out["budget"]["steps"] == 2 and out["budget"]["precision"] == "fp32"
    assert len(out["rollout_reward"]) == 2  # one rollout mean per GRPO step
    # 2 prompts × 2 samples per step: every batch mean is a multiple of 1/4
    assert all(abs(r * 4 - round(r * 4)) < 1e-9 for r in out["rollout_reward"])
    # before/after are the trainer's own evaluations on the same 4 held-out problems
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["eval/accuracy"] == out["before"]["accuracy"]
    assert rows[-1]["eval/accuracy"] == out["after"]["accuracy"]
    for side in ("before", "after"):
        fractions = [v for k, v in out[side].items() if k.startswith("status_")]
        assert sum(fractions) == pytest.approx(1.0)  # every one of the 4 problems was judged
    assert out["eval"]["examples"] == 4
    assert "greedy accuracy on 4 held-out equations" in capsys.readouterr().out


def test_flags_reach_the_config_and_both_recipes_parse(tmp_path) -> None:
    bench = _load()
    cpu = bench.build_config(bench.parse_args([]), str(tmp_path / "a"))
    assert cpu.model.spec == "smollm2-135m-instruct" and cpu.task.name == "equations"
    assert cpu.task.chat and cpu.run.device == "cpu" and cpu.run.precision == "fp32"
    assert cpu.eval_examples == 64
    gpu_args = bench.parse_args(
        [
            "--device",
            "cuda",
            "--recipe",
            str(ROOT / "recipes" / "smollm2_equations_grpo.yaml"),
            "--steps",
            "100",
            "--group",
            "16",
            "--set",
            "sampling.temperature=0.7",
        ]
    )
    gpu = bench.build_config(gpu_args, str(tmp_path / "b"))
    assert gpu.run.device == "cuda" and gpu.run.precision == "bf16-autocast"
    assert gpu.steps == 100 and gpu.batch.group_size == 16
    assert gpu.sampling.temperature == 0.7
    assert gpu.run.dir == str(tmp_path / "b")  # never the recipe's shared runs/ directory
