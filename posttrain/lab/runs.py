"""The run viewer: a run directory's metrics and its sampled rollouts, grouped by prompt.

A run directory (written by every training stage) holds `config.yaml`, `metrics.jsonl`
(one {"step": N, ...} object per line), `rollouts.jsonl` (one rollout per line: step, group,
prompt, response, reward, tokens, logprobs, ref_logprobs, advantages) and `final/`. The
viewer only reads them. rollouts.jsonl can be long, so it is indexed once (byte offset of
every line, by step) and re-indexed when the file changes.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import yaml

from posttrain.run.metrics import read_metrics

MAX_POINTS = 4000
"""Metric series longer than this are thinned to every k-th point for drawing."""
MAX_ROLLOUTS = 512
"""Rollouts returned for one step at most."""


def resolve_run_dir(raw: Any) -> Path:
    """The run directory named by `raw`, or a ValueError that says what is wrong with it."""
    if not isinstance(raw, str) or not raw.strip():
        raise ValueError("dir: give the path of a run directory")
    path = Path(raw.strip()).expanduser()
    if not path.is_dir():
        raise ValueError(f"dir: {path} is not a directory")
    if not any((path / name).exists() for name in ("metrics.jsonl", "rollouts.jsonl")):
        raise ValueError(f"dir: {path} has neither metrics.jsonl nor rollouts.jsonl; not a run")
    return path


class RolloutIndex:
    """Byte offsets of rollouts.jsonl's lines by step, rebuilt when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.key: tuple[int, int] | None = None
        self.by_step: dict[int, list[int]] = {}

    def refresh(self) -> None:
        """Re-scan the file if its size or mtime changed (a live run appends to it)."""
        stat = self.path.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        if key == self.key:
            return
        by_step: dict[int, list[int]] = {}
        offset = 0
        with self.path.open("rb") as fh:
            for lineno, line in enumerate(fh, 1):
                if line.strip() and line.endswith(b"\n"):  # skip a line still being written
                    try:
                        step = int(json.loads(line)["step"])
                    except (ValueError, KeyError, TypeError) as e:
                        raise ValueError(f"{self.path}:{lineno}: bad rollout record: {e}") from e
                    by_step.setdefault(step, []).append(offset)
                offset += len(line)
        self.by_step, self.key = by_step, key

    def read(self, step: int) -> list[dict[str, Any]]:
        """The records of `step` (at most MAX_ROLLOUTS), in file order."""
        out = []
        with self.path.open("rb") as fh:
            for offset in self.by_step.get(step, [])[:MAX_ROLLOUTS]:
                fh.seek(offset)
                out.append(json.loads(fh.readline()))
        return out


class RunViewer:
    """Caches rollout indexes and tokenizers per run directory (threads share it)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.indexes: dict[Path, RolloutIndex] = {}
        self.tokenizers: dict[Path, Any] = {}

    def open(self, params: dict[str, Any]) -> dict[str, Any]:
        """Summary of a run: config, metric series, the steps that have rollouts."""
        run = resolve_run_dir(params.get("dir"))
        config_text, config = "", {}
        if (run / "config.yaml").exists():
            config_text = (run / "config.yaml").read_text(encoding="utf-8")
            config = yaml.safe_load(config_text) or {}
        series: dict[str, dict[str, list]] = {}
        if (run / "metrics.jsonl").exists():
            rows = read_metrics(run / "metrics.jsonl")
            for row in rows:
                for key, value in row.items():
                    if key != "step" and isinstance(value, int | float):
                        s = series.setdefault(key, {"step": [], "value": []})
                        s["step"].append(row["step"])
                        s["value"].append(value)
            for s in series.values():
                stride = max(1, len(s["step"]) // MAX_POINTS)
                s["step"], s["value"] = s["step"][::stride], s["value"][::stride]
        steps: dict[int, int] = {}
        if (run / "rollouts.jsonl").exists():
            index = self._index(run)
            steps = {step: len(offsets) for step, offsets in sorted(index.by_step.items())}
        return {
            "dir": str(run.resolve()),
            "config_text": config_text[:20000],
            "model": (config.get("model") or {}) if isinstance(config, dict) else {},
            "metrics": series,
            "rollout_steps": [{"step": k, "count": v} for k, v in steps.items()],
            "has_final": (run / "final").is_dir(),
        }

    def rollouts(self, params: dict[str, Any]) -> dict[str, Any]:
        """One step's rollouts, grouped by prompt, with per-token text and numbers."""
        run = resolve_run_dir(params.get("dir"))
        if not (run / "rollouts.jsonl").exists():
            raise ValueError(f"dir: {run} has no rollouts.jsonl (set run.log_rollouts_every)")
        index = self._index(run)
        if not index.by_step:
            raise ValueError(f"{run / 'rollouts.jsonl'}: no complete rollout records yet")
        try:
            step = int(params.get("step", max(index.by_step)))
        except (TypeError, ValueError):
            raise ValueError(f"step: expected an integer, got {params.get('step')!r}") from None
        if step not in index.by_step:
            raise ValueError(
                f"step: no rollouts logged at step {step}; have {sorted(index.by_step)}"
            )
        tokenizer = self._tokenizer(run)
        groups: dict[int, dict[str, Any]] = {}
        for rec in index.read(step):
            tokens = rec.get("tokens") or []
            texts = [_token_text(tokenizer, t) for t in tokens]
            g = groups.setdefault(
                int(rec.get("group", 0)),
                {"group": int(rec.get("group", 0)), "prompt": rec.get("prompt"), "rollouts": []},
            )
            g["rollouts"].append(
                {
                    "response": rec.get("response"),
                    "reward": rec.get("reward"),
                    "tokens": tokens,
                    "token_text": texts,
                    "logprobs": rec.get("logprobs"),
                    "ref_logprobs": rec.get("ref_logprobs"),
                    "advantages": rec.get("advantages"),
                }
            )
        return {
            "dir": str(run.resolve()),
            "step": step,
            "groups": [groups[k] for k in sorted(groups)],
            "decoded": tokenizer is not None,
        }

    def _index(self, run: Path) -> RolloutIndex:
        with self.lock:
            index = self.indexes.setdefault(run.resolve(), RolloutIndex(run / "rollouts.jsonl"))
            index.refresh()
            return index

    def _tokenizer(self, run: Path) -> Any:
        """The run's tokenizer (final/, or the task tokenizer for built-in specs), or None."""
        key = run.resolve()
        with self.lock:
            if key not in self.tokenizers:
                self.tokenizers[key] = _load_tokenizer(run)
            return self.tokenizers[key]


def _load_tokenizer(run: Path) -> Any:
    final = run / "final"
    if (final / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(final)
    spec = ""
    if (run / "config.yaml").exists():
        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
        model = config.get("model") or {} if isinstance(config, dict) else {}
        spec = str(model.get("init_from") or model.get("spec") or "")
    if spec.split(":", 1)[0] in ("tiny", "lecture17", "sorting"):
        from posttrain.models.tokenizer import build_task_tokenizer

        return build_task_tokenizer()
    return None  # token ids are shown as they are


def _token_text(tokenizer: Any, token: int) -> str:
    if tokenizer is None:
        return f"#{token}"
    return tokenizer.decode([int(token)], skip_special_tokens=False) or f"#{token}"
