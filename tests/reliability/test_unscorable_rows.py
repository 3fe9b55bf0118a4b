"""Verifier statuses flow into the metrics, and "could not judge" is never scored as "wrong"
(GUARD-9, VER-9, issue 9 item 3) — at the level of one GRPO training step.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


from posttrain.tasks.base import Example, Status, Verdict  # noqa: E402
from posttrain.train.rl_batch import VerifierReward  # noqa: E402

OK, WRONG, ERROR = Status.OK, Status.WRONG, Status.ERROR
# One batch: 4 prompts × G=4 rows, prompt-major. The grader fails (ERROR) on 4 rows; TIMEOUT,
# MEMORY and UNPARSABLE are the model's fault and score 0 like WRONG.
TABLE = [
    Verdict(0.0, WRONG),
    Verdict(math.nan, ERROR),
    Verdict(math.nan, ERROR),
    Verdict(1.0, OK),
    Verdict(0.5, OK),
    Verdict(math.nan, ERROR),
    Verdict(0.0, Status.TIMEOUT),
    Verdict(0.0, Status.UNPARSABLE),
    Verdict(1.0, OK),
    Verdict(0.0, Status.MEMORY),
    Verdict(0.0, WRONG),
    Verdict(1.0, OK),
    Verdict(0.75, OK),
    Verdict(0.75, OK),
    Verdict(0.75, OK),
    Verdict(math.nan, ERROR),
]
G = 4


class TableVerifier:
    """Returns TABLE[i mod 16] for the i-th response it is asked to grade."""

    def __init__(self, table: list[Verdict]) -> None:
        self.table, self.calls = table, 0

    def __call__(self, example: Example, text: str) -> Verdict:
        verdict = self.table[self.calls % len(self.table)]
        self.calls += 1
        return verdict


def expected_advantages() -> list[float]:
    """GRPO advantages computed with the statistics module over the judged rows only:
    (r − mean) / (stdev + 1e-4), stdev with n − 1, 0 for ERROR rows and constant groups.

    E.g. prompt 1 judges [0.5, 0, 0]: mean 1/6, stdev sqrt((1/9 + 2/36) / 2) = 0.288675,
    so row 4 gets (0.5 − 1/6) / 0.288775 = 1.154300.
    """
    out = []
    for g in range(0, len(TABLE), G):
        group = TABLE[g : g + G]
        judged = [v.reward for v in group if v.status is not ERROR]
        mean, std = statistics.mean(judged), statistics.stdev(judged)
        for v in group:
            constant = max(judged) == min(judged)
            out.append(0.0 if v.status is ERROR or constant else (v.reward - mean) / (std + 1e-4))
    return out


def _trainer(tmp_path: Path, table: list[Verdict], max_unscorable: float = 0.5):
    from _reliability_configs import make_config

    from posttrain.train.policy_gradient import PolicyGradientTrainer

    cfg = make_config("grpo", tmp_path / "run")
    # The batch below has 25% grader failures: allowed here, so the step runs and we can check
    # what those rows get. The 100%-failure test keeps the default threshold (10%).
    cfg.health.max_unscorable_frac = max_unscorable
    return PolicyGradientTrainer(cfg, reward=VerifierReward(TableVerifier(table)))


def test_unjudged_rows_get_no_reward_no_advantage_and_no_loss(tmp_path) -> None:
    trainer = _trainer(tmp_path, TABLE)
    batch, metrics = trainer.make_batch(0)
    mask = batch.rollout.response_mask
    errors = torch.tensor([v.status is ERROR for v in TABLE])
    assert torch.isnan(batch.rewards).tolist() == errors.tolist()
    assert not batch.loss_mask[errors].any()
    assert torch.equal(batch.loss_mask[~errors], mask[~errors])
    for i, want in enumerate(expected_advantages()):
        row = batch.advantages[i]
        assert torch.allclose(row[mask[i]], torch.full_like(row[mask[i]], want), atol=1e-5), i
        assert not row[~batch.loss_mask[i]].any(), i  # exactly 0 off the loss mask
    # Scoring group 1's ERROR row as 0 (what GUARD-9 forbids) would give row 4 1.4994 instead:
    # [0.5, 0, 0, 0] has mean 1/8, stdev sqrt((9/64 + 3/64) / 3) = 0.25, 0.375 / 0.2501.
    assert abs(expected_advantages()[4] - 1.154300) < 1e-5


def test_status_counts_and_unscorable_fraction_reach_metrics_jsonl(tmp_path) -> None:
    trainer = _trainer(tmp_path, TABLE)
    trainer.step()
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["step"] == 1
    counts = {s.value: float(sum(v.status is s for v in TABLE)) for s in Status}
    assert counts == {
        "ok": 7.0,
        "wrong": 2.0,
        "unparsable": 1.0,
        "timeout": 1.0,
        "memory": 1.0,
        "error": 4.0,
    }
    for status, count in counts.items():
        assert row[f"verifier/{status}"] == count, status
    assert row["rollout/unscorable_frac"] == 4 / 16
    # The reward mean is over the 12 judged rows: (0+1+0.5+0+0+1+0+0+1+0.75·3) / 12 = 5.75/12.
    assert row["rollout/reward_mean"] == pytest.approx(5.75 / 12, abs=1e-6)


def test_a_batch_with_no_judged_row_aborts_the_step(tmp_path) -> None:
    trainer = _trainer(tmp_path, [Verdict(math.nan, ERROR)], max_unscorable=0.1)
    before = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    with pytest.raises(Exception, match="(?i)unscorable|error|judg"):
        trainer.step()
    # The check runs before the update: an outage never moves the policy.
    for key, value in trainer.policy.state_dict().items():
        assert torch.equal(value, before[key]), key
