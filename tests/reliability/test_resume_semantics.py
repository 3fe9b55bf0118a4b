"""What a resumed run sees: the same prompts in the same order across epoch boundaries
(CKPT-6), a first rollout sampled from the resumed weights (CKPT-9), and a reference model still
anchored to the pre-training weights (CKPT-10, CORR-9).

Crashes here are in-process (``POSTTRAIN_FAULT_MODE=raise``); `test_fault_matrix.py` does the
same with SIGKILL in separate processes.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _reliability_configs import digit_fraction, make_config, make_trainer  # noqa: E402

from posttrain.models.forward import forward_response  # noqa: E402
from posttrain.models.loading import load_model  # noqa: E402
from posttrain.models.reference import parameter_digest  # noqa: E402
from posttrain.rollout.types import Rollout  # noqa: E402
from posttrain.run.faults import InjectedFault  # noqa: E402
from posttrain.tasks.base import Example, Task  # noqa: E402
from posttrain.tasks.sorting import make_sorting_task  # noqa: E402
from posttrain.train.lm import LMTrainer  # noqa: E402
from posttrain.train.policy_gradient import PolicyGradientTrainer  # noqa: E402
from posttrain.train.rl_batch import VerifierReward  # noqa: E402

NUM_TRAIN, BATCH, STEPS = 8, 4, 4  # two epochs of two steps each


class PromptRecorder:
    """Records, per call, the prompts a trainer draws: via the task's demonstrations (SFT asks
    for one per batch slot, in order) or via the reward (RL scores G rows per prompt)."""

    def __init__(self, task: Task, group_size: int) -> None:
        self.seen: list[str] = []
        self.group_size = group_size
        self.verifier = VerifierReward(digit_fraction)
        self.task = dataclasses.replace(task, demonstration=self.demonstration)
        self._demo = task.demonstration

    def demonstration(self, example: Example) -> str:
        self.seen.append(example.prompt)
        return self._demo(example)

    def __call__(
        self, examples: Sequence[Example], texts: Sequence[str], rollout: Rollout
    ) -> tuple[torch.Tensor, Counter]:
        self.seen += [ex.prompt for ex in examples[:: self.group_size]]
        return self.verifier(examples, texts, rollout)

    def per_step(self) -> list[list[str]]:
        return [self.seen[i : i + BATCH] for i in range(0, len(self.seen), BATCH)]


def _epoch_trainer(kind: str, run_dir: Path, resume: str | None):
    """A 2-epoch run over 8 training prompts, 4 per step, a checkpoint after every step."""
    task = make_sorting_task(n=3, reward="partial", num_train=NUM_TRAIN, num_eval=4)
    cfg = make_config(kind, run_dir, resume)
    cfg.run.save_every = 1
    if kind == "sft":
        cfg.batch_size = cfg.micro_batch_size = BATCH
        recorder = PromptRecorder(task, 1)
        return LMTrainer(cfg, task=recorder.task), recorder
    cfg.batch.prompts_per_step, cfg.batch.group_size = BATCH, 2
    recorder = PromptRecorder(task, 2)
    return PolicyGradientTrainer(cfg, task=task, reward=recorder), recorder


_STRAIGHT: dict[str, list[list[str]]] = {}


def _straight(kind: str, root: Path) -> list[list[str]]:
    if kind not in _STRAIGHT:
        trainer, rec = _epoch_trainer(kind, root / f"straight-{kind}", None)
        trainer.train()
        _STRAIGHT[kind] = rec.per_step()
    return _STRAIGHT[kind]


def _adam_steps(trainer) -> set[int]:
    optimizer = trainer.optimizer
    return {int(optimizer.state[p]["step"]) for g in optimizer.param_groups for p in g["params"]}


@pytest.mark.parametrize("kind", ["sft", "grpo"])
def test_epochs_cover_every_prompt_once_in_a_new_order(kind, tmp_path_factory) -> None:
    steps = _straight(kind, tmp_path_factory.mktemp("epochs"))
    assert len(steps) == STEPS and all(len(s) == BATCH for s in steps)
    epoch0, epoch1 = steps[0] + steps[1], steps[2] + steps[3]
    assert len(set(epoch0)) == len(set(epoch1)) == NUM_TRAIN and set(epoch0) == set(epoch1)
    assert epoch0 != epoch1  # epoch 1 is reshuffled, not epoch 0 replayed


@pytest.mark.parametrize("kind", ["sft", "grpo"])
@pytest.mark.parametrize(
    "crash_step", [pytest.param(3, id="resume-at-epoch-boundary"), pytest.param(4, id="mid-epoch")]
)
def test_resume_sees_the_same_prompts_and_takes_exactly_the_remaining_steps(
    kind, crash_step, tmp_path_factory, monkeypatch
) -> None:
    """CKPT-6: checkpoints after steps 2 (end of epoch 0) and 3 (mid epoch 1)."""
    root = tmp_path_factory.mktemp("epochs")
    straight = _straight(kind, root)
    monkeypatch.setenv("POSTTRAIN_FAULT", f"step:{crash_step}")
    monkeypatch.setenv("POSTTRAIN_FAULT_MODE", "raise")
    first, rec1 = _epoch_trainer(kind, root / "run", None)
    with pytest.raises(InjectedFault):
        first.train()
    monkeypatch.delenv("POSTTRAIN_FAULT")
    resumed, rec2 = _epoch_trainer(kind, root / "run", "auto")
    assert resumed.counters.step == crash_step - 1
    resumed.train()
    seen = rec1.per_step()[: crash_step - 1] + rec2.per_step()
    assert seen == straight
    assert len(rec2.per_step()) == STEPS - (crash_step - 1)  # exactly the remaining steps
    assert resumed.counters.step == STEPS
    # Every optimizer update of the whole run happened exactly once (Adam counts them).
    updates_per_step = 1 if kind == "sft" else resumed.plan.optimizer_steps_per_batch
    assert _adam_steps(resumed) == {STEPS * updates_per_step}
    rows = [json.loads(line) for line in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "optim/lr" in r] == list(range(1, STEPS + 1))


def test_first_rollout_after_resume_uses_the_resumed_weights_and_the_reference_stays_put(
    tmp_path, monkeypatch
) -> None:
    """CKPT-9: sampling log-probs of the first post-resume rollout equal a fresh forward pass
    of the loaded weights (and not the base model's). CKPT-10 / CORR-9: the reference still
    hashes to the pre-training weights after resume and after training, frozen."""
    base, _ = load_model("tiny:tiny", seed=0)  # what the policy and the reference start from
    base_digest = parameter_digest(base)
    monkeypatch.setenv("POSTTRAIN_FAULT", "step:3")
    monkeypatch.setenv("POSTTRAIN_FAULT_MODE", "raise")
    with pytest.raises(InjectedFault):
        make_trainer("grpo", tmp_path / "run").train()
    monkeypatch.delenv("POSTTRAIN_FAULT")

    resumed = make_trainer("grpo", tmp_path / "run", resume="auto")
    assert resumed.counters.step == 2
    saved = load_file(tmp_path / "run" / "checkpoints" / "step-00000002" / "policy.safetensors")
    for name, tensor in resumed.policy.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert parameter_digest(resumed.reference) == base_digest
    assert parameter_digest(resumed.policy) != base_digest

    batch, _ = resumed.make_batch(resumed.counters.step)
    ro, mask = batch.rollout, batch.rollout.response_mask
    args = (ro.prompt_ids, ro.prompt_mask, ro.response_ids, mask)
    temp = resumed.params.temperature
    with torch.no_grad():
        loaded = forward_response(resumed.policy, *args, temperature=temp).logprobs
        original = forward_response(base, *args, temperature=temp).logprobs
    assert torch.allclose(ro.logprobs[mask], loaded[mask], atol=1e-6, rtol=0)
    assert (ro.logprobs[mask] - original[mask]).abs().max() > 1e-3

    resumed.train()
    assert parameter_digest(resumed.reference) == base_digest
    assert not any(p.requires_grad for p in resumed.reference.parameters())
    assert not resumed.reference.training


def test_half_written_log_lines_left_by_a_kill_are_dropped_on_resume(tmp_path, monkeypatch) -> None:
    """A kill while a log line is being written leaves half a line (here one that even splits
    a UTF-8 character); the resumed run drops it and both logs stay valid and contiguous."""
    monkeypatch.setenv("POSTTRAIN_FAULT", "step:3")
    monkeypatch.setenv("POSTTRAIN_FAULT_MODE", "raise")
    with pytest.raises(InjectedFault):
        make_trainer("grpo", tmp_path / "run").train()
    monkeypatch.delenv("POSTTRAIN_FAULT")
    run = tmp_path / "run"
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 3, "loss/pol')
    with open(run / "rollouts.jsonl", "ab") as f:
        f.write(b'{"step": 3, "group": 0, "prompt": "caf\xc3')
    make_trainer("grpo", run, resume="auto").train()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "optim/lr" in m] == [1, 2, 3, 4]
    rollouts = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    assert Counter(r["step"] for r in rollouts) == {s: 16 for s in (1, 2, 3, 4)}
