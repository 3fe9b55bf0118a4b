"""The pipeline's report: a markdown file with tables and PNG plots read from each stage's
`metrics.jsonl`.

matplotlib is optional (the `plots` or `dev` extra): it is imported only when a plot is drawn,
and without it the report is still written, with a line saying how to get the plots.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.run.metrics import METRICS_FILE, read_metrics

log = logging.getLogger("posttrain")

NO_MATPLOTLIB = (
    "Plots skipped: matplotlib is not installed "
    "(`pip install 'posttrain[plots]'`, or `make` installs the dev extra)."
)


def _pyplot() -> Any | None:
    """matplotlib.pyplot on the file-only Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # no display needed; must precede the pyplot import
    import matplotlib.pyplot as plt

    return plt


def stage_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The rows of a stage's metrics.jsonl ([] when the stage has none)."""
    path = Path(run_dir) / METRICS_FILE
    return read_metrics(path) if path.exists() else []


def series(rows: Sequence[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of every row that has a finite `key`."""
    steps, values = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            steps.append(int(row["step"]))
            values.append(float(value))
    return steps, values


def smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average over `window` points (shorter at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


@dataclass
class Panel:
    """One subplot: a title and lines {label: (steps, values)}."""

    title: str
    lines: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    styles: dict[str, str] = field(default_factory=dict)
    """Optional matplotlib format string per line label (e.g. "--")."""


def plot_panels(panels: Sequence[Panel], out: Path, title: str = "", cols: int = 2) -> Path | None:
    """Draw `panels` on one grid figure saved as PNG at `out`; None without matplotlib or data."""
    plt = _pyplot()
    if plt is None or not any(p.lines for p in panels):
        return None
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.4 * rows), squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        for label, (steps, values) in panel.lines.items():
            ax.plot(steps, values, panel.styles.get(label, "-"), label=label, linewidth=1.4)
        ax.set_title(panel.title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if len(panel.lines) > 1:
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def rl_stage_panels(rows: Sequence[dict[str, Any]]) -> list[Panel]:
    """Reward, KL to the reference, entropy and response length of one RL stage."""
    panels = [Panel("reward (rollout mean)", {"reward": series(rows, "rollout/reward_mean")})]
    true = series(rows, "true/score_mean")
    if true[0]:
        panels[0].lines["true score (hidden rule)"] = true
    panels += [
        Panel("KL to reference (k1, per token)", {"KL": series(rows, "kl/ref_k1")}),
        Panel("policy entropy (per token)", {"entropy": series(rows, "policy/entropy")}),
        Panel("response length (tokens)", {"length": series(rows, "rollout/response_len")}),
    ]
    return panels


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; floats with 3 decimals, None as an em dash."""

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "—"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def figure_link(path: Path | None, root: Path, alt: str) -> str:
    """A markdown image link relative to `root`, or "" when the figure was not drawn."""
    return f"![{alt}]({path.relative_to(root).as_posix()})" if path is not None else ""


def plots_available() -> bool:
    """Whether matplotlib can be imported (the report says so when it cannot)."""
    return _pyplot() is not None


# ------------------------------------------------------------------ the pipeline's report
def _tail_mean(rows: Sequence[dict[str, Any]], key: str, last: int = 5) -> float | None:
    values = series(rows, key)[1][-last:]
    return sum(values) / len(values) if values else None


def _stage_figures(root: Path, stages: Sequence[Any], metrics: dict[str, list]) -> list[str]:
    """Per-stage curves: loss for LM stages, reward/KL/entropy/length for RL stages."""
    lines = []
    for stage in stages:
        rows = metrics[stage.name]
        if stage.kind in ("rl", "rlhf"):
            panels = rl_stage_panels(rows)
        elif stage.kind == "lm":
            panels = [Panel("next-token loss", {"loss": series(rows, "loss/lm")})]
        else:
            continue
        fig = plot_panels(
            panels,
            root / "plots" / f"{stage.name}.png",
            stage.label,
            cols=2 if len(panels) > 1 else 1,
        )
        if fig is not None:
            lines += [
                f"### {stage.label} (`{stage.name}/`)",
                "",
                figure_link(fig, root, stage.name),
                "",
            ]
    return lines


def write_pipeline_report(
    root: Path,
    stages: Sequence[Any],
    results: dict[str, Any],
    comparison: dict[str, dict[str, Any]],
    timing: dict[str, float],
    cfg: Any,
) -> Path:
    """Write `root/report.md` and its plots from the stages' metrics and the comparison.

    Args:
        stages: the pipeline's stages (name, kind, label, config).
        results: each stage's result dict (with "seconds").
        comparison: per policy stage, the held-out scores (see `pipeline.compare_policies`).
        timing: "comparison" and "total" wall-clock seconds of this invocation.
        cfg: the PipelineConfig (for the sizes the text quotes).
    """
    metrics = {s.name: stage_metrics(s.config.run.dir) for s in stages}
    lines = [
        "# posttrain run: pre-train → SFT → reward model → RLHF (PPO) · DPO/IPO · RLVR (GRPO)",
        "",
        f"Tiny model (`tiny:{cfg.size}`), CPU, {cfg.threads} thread(s). Two built-in tasks: "
        '*preference* ("digits abc:" → a digit string; hidden annotators like even digits, up '
        'to 6, and reject longer answers and one-digit repetition such as "4444") and '
        f"*sorting* ({cfg.n} digits, verifiable).",
        "",
    ]
    if not plots_available():
        lines += [f"> {NO_MATPLOTLIB}", ""]
    lines += ["## Stages", ""]
    rows = []
    for s in stages:
        done = results.get(s.name, {})
        rows.append(
            [
                f"`{s.name}`",
                s.label,
                s.kind,
                s.config.steps,
                done.get("seconds"),
                done.get("cpu_seconds"),
            ]
        )
    wall = sum(r[-2] for r in rows if isinstance(r[-2], float))
    cpu = sum(r[-1] for r in rows if isinstance(r[-1], float))
    for r in rows:  # whole seconds read better than milliseconds here
        r[-2:] = [f"{x:.0f}" if isinstance(x, float) else x for x in r[-2:]]
    headers = ["stage", "policy / model", "trainer", "steps", "wall s", "CPU s"]
    lines += [markdown_table(headers, rows), ""]
    lines += [
        f"Stages: {wall:.0f} s wall clock, {cpu:.0f} s CPU; final comparison: "
        f"{timing['comparison']:.0f} s; this invocation: {timing['total']:.0f} s. CPU seconds "
        "are what a stage costs on an idle machine with one thread; on a shared machine the "
        "wall clock is longer.",
        "",
        "## Policies on the held-out prompts",
        "",
        f"Preference ({cfg.eval_examples} held-out prompts): 4 samples per prompt at "
        "temperature 1, scored by the hidden annotators (true score; full marks = 6 even digits, "
        "not all the same) and by the reward model (standardised on held-out SFT samples: 0 = "
        "an average SFT answer); length in characters. Greedy decoding gives one answer per "
        "prompt, often a repeated digit the annotators reject.",
        "",
    ]
    pref_rows = [
        [
            c["label"],
            *(
                c["preference"][k]
                for k in ("true_score", "full_marks", "rm_score", "greedy_true_score", "length")
            ),
        ]
        for c in comparison.values()
        if "preference" in c
    ]
    headers = ["policy", "true score", "full marks", "RM score", "greedy true score", "length"]
    lines += [markdown_table(headers, pref_rows), ""]
    sort_rows = [
        [c["label"], c["sorting"]["accuracy"], c["sorting"]["reward"]]
        for c in comparison.values()
        if "sorting" in c
    ]
    lines += [
        f"Sorting ({cfg.n} digits, {cfg.eval_examples} held-out prompts, greedy): exact match "
        "and fraction of positions right.",
        "",
        markdown_table(["policy", "exact match", "partial reward"], sort_rows),
        "",
    ]
    rm_rows = metrics.get("rm", [])
    rm_eval = series(rm_rows, "eval/rm_accuracy")
    if rm_eval[0]:
        lines += [
            "## Reward model",
            "",
            f"Bradley–Terry on {results['rm'].get('pairs', {}).get('train', '?')} pairs of SFT "
            f"samples (label noise {cfg.label_noise:g}); held-out accuracy on "
            f"{results['rm'].get('pairs', {}).get('eval', '?')} noise-free pairs: "
            f"{rm_eval[1][0]:.3f} at step 0 → **{rm_eval[1][-1]:.3f}** at step {rm_eval[0][-1]}.",
            "",
        ]
        train_acc = series(rm_rows, "rm/accuracy")
        fig = plot_panels(
            [
                Panel(
                    "pair accuracy",
                    {
                        "train batch (smoothed)": (train_acc[0], smooth(train_acc[1], 10)),
                        "held-out": rm_eval,
                    },
                ),
                Panel(
                    "Bradley–Terry loss",
                    {
                        "train": series(rm_rows, "loss/rm"),
                        "held-out": series(rm_rows, "eval/rm_loss"),
                    },
                ),
            ],
            root / "plots" / "reward_model.png",
            "reward model",
        )
        lines += [figure_link(fig, root, "reward model accuracy"), ""]
    ppo = [s for s in stages if s.kind == "rlhf"]
    if ppo:
        learned, true, kl = (
            Panel("learned reward (RM, standardised)"),
            Panel("true score (hidden annotators)"),
            Panel("KL to SFT (k1, per token)"),
        )
        summary = []
        for s in ppo:
            r = metrics[s.name]
            learned.lines[s.label] = series(r, "rollout/reward_mean")
            true.lines[s.label] = series(r, "true/score_mean")
            kl.lines[s.label] = series(r, "kl/ref_k1")
            steps, values = true.lines[s.label]
            peak = max(range(len(values)), key=values.__getitem__, default=None)
            summary.append(
                [
                    s.label,
                    f"{values[peak]:.3f} (step {steps[peak]})" if peak is not None else None,
                    _tail_mean(r, "rollout/reward_mean"),
                    _tail_mean(r, "true/score_mean"),
                    _tail_mean(r, "true/full_marks_frac"),
                    _tail_mean(r, "kl/ref_k1"),
                    _tail_mean(r, "policy/entropy"),
                ]
            )
        fig = plot_panels(
            [learned, true, kl],
            root / "plots" / "ppo_learned_vs_true.png",
            "PPO against the reward model: learned vs true",
            cols=3,
        )
        lines += [
            "## RLHF: learned reward vs hidden true score",
            "",
            "PPO (value head, GAE, k1 KL to the SFT model in the reward) with one run per KL "
            "coefficient β. Reward hacking shows as the learned reward staying high while the "
            "true score falls. The true score's peak, then means over the last 5 steps:",
            "",
            markdown_table(
                [
                    "run",
                    "peak true score",
                    "learned reward",
                    "true score",
                    "full marks",
                    "KL (k1)",
                    "entropy",
                ],
                summary,
            ),
            "",
            figure_link(fig, root, "learned vs true score under PPO"),
            "",
        ]
    prefs = [s for s in stages if s.kind == "dpo"]
    if prefs:
        panels = [
            Panel("held-out implicit-reward accuracy"),
            Panel("loss (train)"),
            Panel("log-ratio gap h = margin / β (train)"),
        ]
        for s in prefs:
            r = metrics[s.name]
            panels[0].lines[s.label] = series(r, "eval/pref_accuracy")
            panels[1].lines[s.label] = series(r, "loss/pref")
            steps, margin = series(r, "pref/margin")  # β·h (DPO) or τ·h (IPO)
            panels[2].lines[s.label] = (steps, [m / s.config.beta for m in margin])
        fig = plot_panels(panels, root / "plots" / "dpo_ipo.png", "DPO and IPO", cols=3)
        lines += [
            "## DPO and IPO",
            "",
            "Same SFT start, same pairs, reference log-probs computed once and cached.",
            "",
            figure_link(fig, root, "DPO and IPO"),
            "",
        ]
    lines += ["## Training curves per stage", ""]
    lines += _stage_figures(root, stages, metrics)
    out = root / "report.md"
    out.write_text("\n".join(lines))
    return out
