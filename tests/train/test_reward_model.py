"""The reward model (posttrain/train/reward_model.py) and PPO against it (posttrain/train/rlhf.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from posttrain.models.tiny import build_tiny_model
from posttrain.models.tokenizer import build_task_tokenizer
from posttrain.rollout.types import FINISH_EOS, Rollout
from posttrain.run.faults import InjectedFault
from posttrain.tasks.jsonl import PreferencePair
from posttrain.tasks.preference import annotator_score
from posttrain.train.configs import (
    AlgoConfig,
    BatchConfig,
    HealthConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
)
from posttrain.train.pairs import collate_pairs
from posttrain.train.preference_configs import PairsConfig, RewardModelConfig, RLHFConfig
from posttrain.train.reward_model import (
    RewardModel,
    RewardModelReward,
    RewardModelTrainer,
    load_reward_model,
    score_pairs,
)
from posttrain.train.rlhf import RLHFTrainer


def write_separable_pairs(
    root: Path, seed: int = 0, n_train: int = 256, n_eval: int = 100
) -> tuple[Path, Path]:
    """Chosen: 3-6 even digits; rejected: 3-6 odd digits. Separable by content alone."""
    rng = random.Random(seed)

    def row() -> dict:
        tag = "".join(rng.choice("abcdefgh") for _ in range(3))
        even = "".join(rng.choice("02468") for _ in range(rng.randint(3, 6)))
        odd = "".join(rng.choice("13579") for _ in range(rng.randint(3, 6)))
        return {"prompt": f"digits {tag}:", "chosen": even, "rejected": odd}

    root.mkdir(parents=True, exist_ok=True)
    paths = root / "train.jsonl", root / "eval.jsonl"
    for path, n in zip(paths, (n_train, n_eval), strict=True):
        path.write_text("".join(json.dumps(row()) + "\n" for _ in range(n)))
    return paths


def rm_config(
    run_dir: Path, pairs: tuple[Path, Path], steps: int = 10, batch: int = 16
) -> RewardModelConfig:
    return RewardModelConfig(
        model=ModelConfig(spec="tiny:tiny"),
        pairs=PairsConfig(path=str(pairs[0]), eval_path=str(pairs[1])),
        optim=OptimConfig(lr=1e-3),
        run=RunConfig(dir=str(run_dir), save_every=3, keep_last=5, threads=1),
        steps=steps,
        batch_size=batch,
        micro_batch_size=batch // 2,  # two micro-batches: accumulation is part of what resumes
        eval_every=0,
    )


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory) -> tuple[RewardModelTrainer, dict]:
    root = tmp_path_factory.mktemp("rm")
    trainer = RewardModelTrainer(rm_config(root / "run", write_separable_pairs(root)))
    return trainer, trainer.train()


def test_reward_model_learns_a_separable_preference(trained_rm) -> None:
    trainer, result = trained_rm
    rows = [json.loads(x) for x in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["step"] == 0 and rows[0]["eval/rm_accuracy"] == 0.0  # zero head: all ties
    assert result["eval"]["accuracy"] >= 0.9, result
    # The exported model scores exactly like the trained one.
    loaded, tokenizer, stats = load_reward_model(result["final"])
    ours = score_pairs(trainer.model, trainer.tokenizer, trainer.eval_pairs)
    theirs = score_pairs(loaded, tokenizer, trainer.eval_pairs)
    assert torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])
    held = torch.cat(ours)
    assert stats["mean"] == pytest.approx(float(held.mean()), abs=1e-6)
    assert stats["std"] == pytest.approx(float(held.std()), abs=1e-6)


def test_score_is_the_head_at_the_last_response_token_whatever_the_padding() -> None:
    torch.manual_seed(0)
    model = RewardModel(build_tiny_model("tiny", num_hidden_layers=1, seed=1))
    torch.nn.init.normal_(model.head.proj.weight)
    model.eval()
    tok = build_task_tokenizer()
    pairs = [PreferencePair("digits abc:", "24", "1357913"), PreferencePair("digits x:", "8", "9")]
    batch = collate_pairs(tok, pairs)  # prompts of 12 and 10 tokens, responses of 2..8
    scores = model(batch.prompt_ids, batch.prompt_mask, batch.response_ids, batch.response_mask)
    for row, (prompt, response) in enumerate(
        [(p.prompt, p.chosen) for p in pairs] + [(p.prompt, p.rejected) for p in pairs]
    ):
        ids = [1, *tok(prompt + response, add_special_tokens=False)["input_ids"], 2]  # bos … eos
        with torch.no_grad():
            out = model.trunk(input_ids=torch.tensor([ids]), output_hidden_states=True)
            expected = model.head(out.hidden_states[-1][0, -1])  # the <eos> position, unpadded
        torch.testing.assert_close(scores[row], expected, rtol=0, atol=1e-5)


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch) -> None:
    pairs = write_separable_pairs(tmp_path / "data", n_train=32, n_eval=8)
    straight = RewardModelTrainer(rm_config(tmp_path / "a", pairs, steps=6, batch=8))
    straight.train()
    monkeypatch.setenv("POSTTRAIN_FAULT", "step:5")
    monkeypatch.setenv("POSTTRAIN_FAULT_MODE", "raise")
    with pytest.raises(InjectedFault):
        RewardModelTrainer(rm_config(tmp_path / "b", pairs, steps=6, batch=8)).train()
    monkeypatch.delenv("POSTTRAIN_FAULT")
    cfg = rm_config(tmp_path / "b", pairs, steps=6, batch=8)
    cfg.run.resume = "auto"
    resumed = RewardModelTrainer(cfg)
    assert resumed.counters.step == 3
    resumed.train()
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    for name, tensor in straight.optimizer.state_dict()["state"].items():
        for key, value in tensor.items():
            assert torch.equal(value, resumed.optimizer.state_dict()["state"][name][key]), name

    def losses(run: str) -> list:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r.get("loss/rm")) for r in map(json.loads, lines)]

    assert losses("a") == losses("b")


def _rollout(tok, prompts: list[str], responses: list[str]) -> Rollout:
    pairs = [PreferencePair(p, r, r + "0") for p, r in zip(prompts, responses, strict=True)]
    batch = collate_pairs(tok, pairs)
    n = len(prompts)
    ids, mask = batch.response_ids[:n], batch.response_mask[:n]
    ids = ids[:, : int(mask.sum(1).max())]
    mask = mask[:, : ids.shape[1]]
    return Rollout(
        prompt_ids=batch.prompt_ids[:n],
        prompt_mask=batch.prompt_mask[:n],
        response_ids=ids,
        response_mask=mask,
        logprobs=torch.zeros(ids.shape),
        finish_reason=torch.full((n,), FINISH_EOS),
        group_ids=torch.arange(n),
    )


def test_reward_source_normalises_and_logs_the_true_score(trained_rm) -> None:
    trainer, _ = trained_rm
    tok = trainer.tokenizer
    prompts, texts = ["digits abc:"] * 3, ["2468", "135", "246802"]
    rollout = _rollout(tok, prompts, texts)
    raw = trainer.model(
        rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask
    ).detach()
    source = RewardModelReward(
        trainer.model, verify=lambda ex, t: annotator_score(t), mean=0.5, std=2.0
    )
    rewards, statuses = source([None] * 3, texts, rollout)
    torch.testing.assert_close(rewards, (raw - 0.5) / 2.0, rtol=0, atol=1e-6)
    # true scores 4/6, 0, 1 → mean 5/9; one full-marks answer of three
    assert source.last_metrics["true/score_mean"] == pytest.approx(5 / 9)
    assert source.last_metrics["true/full_marks_frac"] == pytest.approx(1 / 3)
    assert statuses == {"ok": 1, "wrong": 2}


def test_ppo_against_the_reward_model_raises_its_score(trained_rm, tmp_path) -> None:
    _, result = trained_rm
    cfg = RLHFConfig(
        model=ModelConfig(spec="tiny:tiny"),
        optim=OptimConfig(lr=3e-3),
        run=RunConfig(dir=str(tmp_path / "ppo"), save_every=100, threads=1, log_rollouts_every=0),
        algo=AlgoConfig(preset="ppo", kl_coef=0.0, epochs=2),
        batch=BatchConfig(prompts_per_step=4, group_size=4, micro_batch_size=16),
        health=HealthConfig(stop_when_all_truncated=False),
        steps=12,
        eval_examples=4,
        reward_model=result["final"],
    )
    trainer = RLHFTrainer(cfg)
    assert trainer.reference is None and trainer.monitor is not None  # KL still measured
    metrics = [trainer.step() for _ in range(cfg.steps)]
    rewards = [m["rollout/reward_mean"] for m in metrics]
    assert sum(rewards[-3:]) / 3 > sum(rewards[:3]) / 3 + 0.5, rewards
    assert metrics[0]["kl/ref_k1"] == pytest.approx(0.0, abs=1e-5)  # on-policy at step 1
    assert metrics[-1]["kl/ref_k3"] > 0.0 and "true/score_mean" in metrics[-1]
