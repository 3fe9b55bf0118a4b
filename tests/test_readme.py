"""The README's code runs as written (docs that match the code)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_opens_with_the_two_commands() -> None:
    head = README.read_text().split("\n## ")[0]
    assert "make run" in head and "make test" in head


def test_readme_python_example_runs(tmp_path, monkeypatch) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no python example"
    monkeypatch.chdir(tmp_path)  # the example writes runs/add relative to the cwd
    namespace: dict = {}
    for block in blocks:
        code = compile(block, str(README), "exec")
        exec(code, namespace)  # noqa: S102 - our own README, not model text
    after = namespace["result"]["after"]
    assert set(after) >= {"accuracy", "reward_mean"}
    assert (tmp_path / "runs" / "add" / "final" / "model.safetensors").exists()
