"""The sampler-vs-generate benchmark runs end to end in smoke mode (1 rep, 1-layer model)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sampler_vs_generate.py"


def test_benchmark_smoke(tmp_path) -> None:
    spec = importlib.util.spec_from_file_location("sampler_vs_generate_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    out = tmp_path / "bench.json"
    try:
        module.main(["--smoke", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)  # the script sets 2; leave the session as it was
    data = json.loads(out.read_text())
    tiny = data["cases"]["tiny"]
    # smoke case: 2 prompts x 2 samples x 3 new tokens = 12 tokens on each side
    assert tiny["generate"]["new_tokens"] == 12
    assert tiny["sampler"]["new_tokens"] == 12
    assert tiny["speedup_median"] > 0
