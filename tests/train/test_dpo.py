"""DPO and IPO (posttrain/train/dpo.py): the loss at initialisation, the direction and size of
one step, the cached reference log-probs (CORR-11), and exact resume (CKPT-2)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch

from posttrain.models.tiny import build_tiny_model
from posttrain.models.tokenizer import build_task_tokenizer
from posttrain.run.faults import InjectedFault
from posttrain.tasks.jsonl import PreferencePair, load_preference_jsonl
from posttrain.train.common import batch_indices
from posttrain.train.configs import ModelConfig, OptimConfig, RunConfig
from posttrain.train.dpo import DPOTrainer, reference_logprobs, sequence_logprobs
from posttrain.train.preference_configs import DPOConfig, PairsConfig


def write_pairs(root: Path, n_train: int = 32, n_eval: int = 8) -> tuple[Path, Path]:
    """Chosen: even digits; rejected: odd digits; 2-5 of each."""
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    paths = root / "train.jsonl", root / "eval.jsonl"
    for path, n in zip(paths, (n_train, n_eval), strict=True):
        rows = [
            {
                "prompt": f"digits {rng.choice('abc')}{rng.choice('xyz')}q:",
                "chosen": "".join(rng.choice("02468") for _ in range(rng.randint(2, 5))),
                "rejected": "".join(rng.choice("13579") for _ in range(rng.randint(2, 5))),
            }
            for _ in range(n)
        ]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return paths


def dpo_config(run_dir: Path, pairs: tuple[Path, Path], **kw) -> DPOConfig:
    cfg = DPOConfig(
        model=ModelConfig(spec="tiny:tiny"),
        pairs=PairsConfig(path=str(pairs[0]), eval_path=str(pairs[1])),
        optim=OptimConfig(lr=1e-3),
        run=RunConfig(dir=str(run_dir), save_every=3, keep_last=5, threads=1),
        steps=6,
        batch_size=8,
        micro_batch_size=4,
        eval_every=0,
        eval_examples=4,
    )
    for key, value in kw.items():
        setattr(cfg, key, value)
    return cfg


def test_dpo_at_init_is_log2_and_one_step_raises_the_margin_by_the_predicted_amount(
    tmp_path,
) -> None:
    pairs = write_pairs(tmp_path / "data")
    lr, beta = 1e-5, 0.1
    cfg = dpo_config(tmp_path / "run", pairs, beta=beta)
    cfg.optim = OptimConfig(lr=lr, max_grad_norm=0.0)
    trainer = DPOTrainer(cfg)
    batch = [trainer.train_pairs[i] for i in batch_indices(32, 0, cfg.batch_size, cfg.seed)]
    params = [p for p in trainer.policy.parameters() if p.requires_grad]

    def mean_margin() -> torch.Tensor:  # mean over the batch of log π(y_w) − log π(y_l)
        chosen, rejected = sequence_logprobs(trainer.policy, trainer.tokenizer, batch)
        return (chosen - rejected).mean()

    margin = mean_margin()
    grads = torch.autograd.grad(margin, params)
    metrics = trainer.train_step(0)
    # Policy = reference: h = 0 for every pair, so the loss is −log σ(0) = log 2.
    assert metrics["loss/pref"] == pytest.approx(math.log(2.0), abs=1e-6)
    # dLoss/dθ = −β σ(0) ∇(mean margin) = −(β/2)·∇m. Adam's first step (bias-corrected m = g,
    # v = g²) moves each parameter by −lr·g/(|g| + ε) = +lr·sign(∇m)·|g|/(|g| + ε), so to first
    # order the margin rises by lr · Σ |∇m|·|g|/(|g| + ε) with |g| = (β/2)|∇m|.
    predicted = sum(
        float((lr * g.abs() * (beta / 2 * g.abs()) / (beta / 2 * g.abs() + 1e-8)).sum())
        for g in grads
    )
    with torch.no_grad():
        rise = float(mean_margin() - margin)
    assert predicted > 0 and rise == pytest.approx(predicted, rel=0.02), (rise, predicted)


def test_ipo_at_init_is_its_squared_target(tmp_path) -> None:
    # h = 0 at init, so (h − 1/(2τ))² = (1/(2·0.25))² = 4.
    cfg = dpo_config(tmp_path / "run", write_pairs(tmp_path / "data"), loss="ipo", beta=0.25)
    assert DPOTrainer(cfg).train_step(0)["loss/pref"] == pytest.approx(4.0, abs=1e-5)


def _on_the_fly(model, tok, pair: PreferencePair, response: str) -> float:
    """log π(response + <eos> | <bos> prompt) from one unpadded forward pass."""
    prompt = [1, *tok(pair.prompt, add_special_tokens=False)["input_ids"]]
    body = [*tok(response, add_special_tokens=False)["input_ids"], 2]
    ids = torch.tensor([prompt + body])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)  # (L, V)
    return sum(float(logp[len(prompt) - 1 + t, tok_id]) for t, tok_id in enumerate(body))


def test_reference_cache_matches_on_the_fly_and_is_keyed_by_data_and_model(
    tmp_path, monkeypatch
) -> None:
    tok = build_task_tokenizer()
    model = build_tiny_model("tiny", num_hidden_layers=2, seed=3).eval()
    pairs = load_preference_jsonl(write_pairs(tmp_path / "data", n_train=70)[0])
    chosen, rejected = reference_logprobs(model, tok, pairs, tmp_path / "cache")  # 2 chunks
    # What the trainer would compute on the fly, in its own micro-batches of 4 (CORR-11: 1e-6).
    with torch.no_grad():
        fly = [sequence_logprobs(model, tok, pairs[i : i + 4]) for i in range(0, 70, 4)]
    torch.testing.assert_close(torch.cat([c for c, _ in fly]), chosen, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat([r for _, r in fly]), rejected, rtol=0, atol=1e-6)
    # And an independent float64 pass over each unpadded sequence, to float32 precision
    # (sums reach ~30 nats, where one float32 ulp is ~2e-6).
    for i in (0, 1, 64, 69):
        for got, text in ((chosen[i], pairs[i].chosen), (rejected[i], pairs[i].rejected)):
            assert float(got) == pytest.approx(_on_the_fly(model, tok, pairs[i], text), rel=1e-6)
    # Same data, same model: read back bit for bit, nothing recomputed (a recompute would hit
    # the ref_cache fault point and raise).
    monkeypatch.setenv("POSTTRAIN_FAULT", "ref_cache")
    monkeypatch.setenv("POSTTRAIN_FAULT_MODE", "raise")
    again = reference_logprobs(model, tok, pairs, tmp_path / "cache")
    assert torch.equal(again[0], chosen) and torch.equal(again[1], rejected)
    # A changed pair, or changed weights: a different key, so it is recomputed.
    edited = [*pairs[:-1], PreferencePair(pairs[-1].prompt, "000000", pairs[-1].rejected)]
    with pytest.raises(InjectedFault):
        reference_logprobs(model, tok, edited, tmp_path / "cache")
    with torch.no_grad():
        next(model.parameters())[0, 0] += 1e-3
    with pytest.raises(InjectedFault):
        reference_logprobs(model, tok, pairs, tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")] == []


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch) -> None:
    pairs = write_pairs(tmp_path / "data")
    straight = DPOTrainer(dpo_config(tmp_path / "a", pairs))
    straight.train()
    monkeypatch.setenv("POSTTRAIN_FAULT_MODE", "raise")
    monkeypatch.setenv("POSTTRAIN_FAULT", "step:5")
    with pytest.raises(InjectedFault):
        DPOTrainer(dpo_config(tmp_path / "b", pairs)).train()
    # The resumed run reads its reference log-probs back from the cache: computing them again
    # would hit the ref_cache fault point.
    monkeypatch.setenv("POSTTRAIN_FAULT", "ref_cache")
    cfg = dpo_config(tmp_path / "b", pairs)
    cfg.run.resume = "auto"
    resumed = DPOTrainer(cfg)
    assert resumed.counters.step == 3
    resumed.train()
    for name, tensor in straight.policy.state_dict().items():
        assert torch.equal(tensor, resumed.policy.state_dict()[name]), name

    def losses(run: str) -> list:
        lines = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r.get("loss/pref")) for r in map(json.loads, lines)]

    assert losses("a") == losses("b")


def test_a_kill_while_caching_leaves_no_cache_and_the_rerun_completes(
    tmp_path, monkeypatch
) -> None:
    pairs = write_pairs(tmp_path / "data")
    monkeypatch.setenv("POSTTRAIN_FAULT", "ref_cache:0")
    monkeypatch.setenv("POSTTRAIN_FAULT_MODE", "raise")
    with pytest.raises(InjectedFault):
        DPOTrainer(dpo_config(tmp_path / "run", pairs))
    assert not list((tmp_path / "run").glob("ref-logprobs-*"))
    monkeypatch.delenv("POSTTRAIN_FAULT")
    cfg = dpo_config(tmp_path / "run", pairs, steps=2)
    result = DPOTrainer(cfg).train()
    assert len(list((tmp_path / "run").glob("ref-logprobs-*.safetensors"))) == 2  # train, eval
    assert set(result["pairs"]) == {"pref_loss", "pref_accuracy", "pref_margin"}
