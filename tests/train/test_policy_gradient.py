"""The RL loop end to end on a tiny model: direction of learning, guards, and exact resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from posttrain.models.reference import parameter_digest
from posttrain.run.faults import InjectedFault
from posttrain.tasks.base import Status, Verdict
from posttrain.train.policy_gradient import PolicyGradientTrainer, TrainingHealthError
from posttrain.train.rl_batch import VerifierReward

REPO = Path(__file__).resolve().parents[2]


def _first_char_is_digit(example, text: str) -> Verdict:
    # A toy reward a random 80-token policy earns about 10/80 of the time (learnable from
    # random init in a few steps, unlike sorting). Same as conftest.first_char_is_digit, which
    # the subprocess workers import; a test module cannot import `conftest` reliably.
    return Verdict(float(text[:1].isdigit()), Status.OK)


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_reward_rises_on_a_toy_task(tmp_path, make_rl_config) -> None:
    cfg = make_rl_config(tmp_path / "run")
    cfg.steps, cfg.optim.lr = 15, 1e-2
    cfg.run.save_every = 100
    trainer = PolicyGradientTrainer(cfg, reward=VerifierReward(_first_char_is_digit))
    rewards = [trainer.step()["rollout/reward_mean"] for _ in range(cfg.steps)]
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    assert last > first + 0.3, rewards


def test_on_policy_first_epoch_has_ratio_one_and_no_clipping(tmp_path, make_rl_config) -> None:
    cfg = make_rl_config(tmp_path / "run")  # grpo: one epoch, one mini-batch
    trainer = PolicyGradientTrainer(cfg)
    metrics = trainer.step()
    assert metrics["policy/logprob_gap"] < 1e-5
    assert metrics["policy/clipfrac"] == 0.0
    assert abs(metrics["policy/ratio_max"] - 1.0) < 1e-5


def test_reference_stays_frozen(tmp_path, make_rl_config) -> None:
    cfg = make_rl_config(tmp_path / "run", preset="grpo", kl_coef=0.1)
    trainer = PolicyGradientTrainer(cfg, reward=VerifierReward(_first_char_is_digit))
    before = parameter_digest(trainer.reference)
    for _ in range(2):
        trainer.step()
    assert parameter_digest(trainer.reference) == before
    assert not any(p.requires_grad for p in trainer.reference.parameters())
    assert parameter_digest(trainer.policy) != before


@pytest.mark.parametrize(
    "preset", ["reinforce", "reinforce_baseline", "actor_critic", "ppo", "grpo", "dr_grpo", "rloo"]
)
def test_every_preset_runs_a_step_with_finite_metrics(tmp_path, make_rl_config, preset) -> None:
    cfg = make_rl_config(tmp_path / "run", preset=preset)
    metrics = PolicyGradientTrainer(cfg).step()
    for key in ("loss/policy", "policy/entropy", "optim/grad_norm"):
        assert torch.isfinite(torch.tensor(metrics[key])), (key, metrics[key])
    assert ("loss/value" in metrics) == (preset in ("actor_critic", "ppo"))


def test_all_truncated_batch_stops_the_run(tmp_path, make_rl_config) -> None:
    cfg = make_rl_config(tmp_path / "run")
    cfg.sampling.max_new_tokens = 1
    cfg.sampling.min_new_tokens = 1  # the stop token is suppressed: every response truncates
    cfg.health.stop_when_all_truncated = True
    trainer = PolicyGradientTrainer(cfg)
    with pytest.raises(TrainingHealthError, match="max_new_tokens"):
        trainer.step()


def test_non_finite_updates_are_skipped_then_stop_the_run(tmp_path, make_rl_config) -> None:
    cfg = make_rl_config(tmp_path / "run", preset="reinforce")
    trainer = PolicyGradientTrainer(
        cfg, reward=VerifierReward(lambda ex, text: Verdict(float("inf"), Status.OK))
    )
    weights = {k: v.clone() for k, v in trainer.policy.state_dict().items()}
    trainer.step()
    trainer.step()
    assert trainer.counters.nonfinite_streak == 2
    for key, value in trainer.policy.state_dict().items():
        assert torch.equal(value, weights[key]), key  # skipped updates change nothing
    with pytest.raises(TrainingHealthError, match="non-finite"):
        trainer.step()


def test_fresh_start_refuses_a_run_dir_with_checkpoints(tmp_path, make_rl_config) -> None:
    cfg = make_rl_config(tmp_path / "run")
    cfg.steps = cfg.run.save_every = 1
    PolicyGradientTrainer(cfg).train()
    with pytest.raises(RuntimeError, match="resume"):
        PolicyGradientTrainer(cfg)


def test_resume_with_a_changed_config_names_the_field(tmp_path, make_rl_config) -> None:
    cfg = make_rl_config(tmp_path / "run")
    cfg.steps = cfg.run.save_every = 1
    PolicyGradientTrainer(cfg).train()
    cfg.batch.group_size, cfg.run.resume = 2, "auto"
    with pytest.raises(Exception, match="batch.group_size"):
        PolicyGradientTrainer(cfg)


def test_explicit_resume_without_a_checkpoint_is_an_error(tmp_path, make_rl_config) -> None:
    cfg = make_rl_config(tmp_path / "run")
    cfg.run.resume = "must"
    with pytest.raises(Exception, match="checkpoint"):
        PolicyGradientTrainer(cfg)


def test_interrupted_and_resumed_equals_uninterrupted(
    tmp_path, make_rl_config, monkeypatch
) -> None:
    straight = PolicyGradientTrainer(make_rl_config(tmp_path / "a", preset="ppo"))
    straight.train()
    # Crash inside step 5 (after the step-3 checkpoint), then resume in a fresh trainer.
    monkeypatch.setenv("POSTTRAIN_FAULT", "step:5")
    monkeypatch.setenv("POSTTRAIN_FAULT_MODE", "raise")
    with pytest.raises(InjectedFault):
        PolicyGradientTrainer(make_rl_config(tmp_path / "b", preset="ppo")).train()
    monkeypatch.delenv("POSTTRAIN_FAULT")
    cfg = make_rl_config(tmp_path / "b", preset="ppo")
    cfg.run.resume = "auto"
    resumed = PolicyGradientTrainer(cfg)
    assert resumed.counters.step == 3
    resumed.train()
    for name, tensor in straight.policy.state_dict().items():
        assert torch.equal(tensor, resumed.policy.state_dict()[name]), name
    for name, tensor in straight.value_head.state_dict().items():
        assert torch.equal(tensor, resumed.value_head.state_dict()[name]), name
    # The metric log is contiguous and the per-step numbers match exactly.
    a, b = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    assert [m["step"] for m in a] == [m["step"] for m in b]
    assert [m.get("rollout/reward_mean") for m in a] == [m.get("rollout/reward_mean") for m in b]


_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from conftest import rl_config
    from posttrain.train.policy_gradient import PolicyGradientTrainer
    cfg = rl_config({run!r}, preset="grpo")
    cfg.run.resume = {resume!r}
    PolicyGradientTrainer(cfg).train()
""")


def _child(run_dir: Path, resume: str | None, fault: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTTRAIN_FAULT")}
    if fault:
        env["POSTTRAIN_FAULT"] = fault
    code = _CHILD.format(tests=str(Path(__file__).parent), run=str(run_dir), resume=resume)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, timeout=300
    ).returncode


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_matches_bit_for_bit(tmp_path) -> None:
    assert _child(tmp_path / "a", None, None) == 0
    assert _child(tmp_path / "b", None, "step:5") == -9  # killed by SIGKILL inside step 5
    assert not (tmp_path / "b" / "final").exists()
    assert _child(tmp_path / "b", "auto", None) == 0
    wa = load_file(tmp_path / "a" / "final" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name
