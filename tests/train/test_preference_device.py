"""run.device and run.precision in the reward-model and DPO stages (CPU): bf16 autocast reaches
their forward passes while weights, gradients and AdamW state stay fp32; run.fsdp is refused
with an error naming the field; run.device=cuda is honoured (or refused without CUDA)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_dpo import dpo_config, write_pairs
from test_reward_model import rm_config, write_separable_pairs

from posttrain.config import ConfigError, load_config
from posttrain.train.dpo import DPOTrainer, reference_cache_key
from posttrain.train.preference_configs import DPOConfig, RewardModelConfig
from posttrain.train.reward_model import RewardModelTrainer


def _rm(tmp_path: Path, precision: str, device: str = "cpu") -> RewardModelTrainer:
    cfg = rm_config(
        tmp_path / f"rm-{precision}", write_separable_pairs(tmp_path / "pairs"), steps=2
    )
    cfg.run.precision, cfg.run.device = precision, device
    return RewardModelTrainer(cfg)


def _dpo(tmp_path: Path, precision: str, device: str = "cpu") -> DPOTrainer:
    pairs = write_pairs(tmp_path / "data")
    cfg = dpo_config(tmp_path / f"dpo-{precision}", pairs, steps=2)
    cfg.ref_cache_dir = str(tmp_path / "cache")  # shared: fp32 and bf16 must not collide
    cfg.run.precision, cfg.run.device = precision, device
    return DPOTrainer(cfg)


def _fp32_state(params, optimizer) -> bool:
    state = optimizer.state_dict()["state"]
    return (
        all(p.dtype == torch.float32 for p in params)
        and bool(state)
        and all(s["exp_avg"].dtype == torch.float32 for s in state.values())
    )


def test_reward_model_forward_runs_in_bf16_with_fp32_master_weights(tmp_path) -> None:
    fp32, bf16 = _rm(tmp_path, "fp32"), _rm(tmp_path, "bf16-autocast")
    seen: list[tuple[bool, torch.dtype]] = []
    bf16.model.trunk.register_forward_pre_hook(
        lambda *_: seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
    )
    metrics = [bf16.train_step(step) for step in range(2)]
    fp32.train_step(0), fp32.train_step(1)
    assert seen and all(on and dtype == torch.bfloat16 for on, dtype in seen)
    assert all(math.isfinite(m["loss/rm"]) for m in metrics)
    # Same seed, same start weights, same pairs: after two steps (the zero-initialised head
    # scores 0 before any) the held-out loss differs only by bf16 rounding.
    loss32, loss16 = fp32.evaluate()["loss"], bf16.evaluate()["loss"]
    assert loss16 != loss32 and abs(loss16 - loss32) < 0.05
    assert _fp32_state(bf16.model.parameters(), bf16.optimizer)


def test_dpo_reference_and_policy_run_in_bf16_and_cache_apart(tmp_path) -> None:
    fp32, bf16 = _dpo(tmp_path, "fp32"), _dpo(tmp_path, "bf16-autocast")
    ref32, ref16 = fp32.ref_train[0], bf16.ref_train[0]  # (N,) chosen log-probs
    # The reference really ran in bf16 (else the two would be identical) and is close.
    assert not torch.equal(ref32, ref16)
    assert torch.allclose(ref32, ref16, atol=0.5, rtol=0.05)
    assert ref16.dtype == torch.float32
    files = sorted(p.name for p in (tmp_path / "cache").glob("ref-logprobs-*.safetensors"))
    assert len(files) == 4  # {fp32, bf16} × {train, eval}: different keys, no collision
    key = reference_cache_key(fp32.train_pairs, fp32.reference, chat=False)
    assert key == reference_cache_key(fp32.train_pairs, fp32.reference, False, "fp32")
    assert key != reference_cache_key(fp32.train_pairs, fp32.reference, False, "bf16-autocast")
    # Policy = reference at step 0: the DPO loss is log 2 up to bf16 rounding of the policy pass.
    first = bf16.train_step(0)
    assert first["loss/pref"] == pytest.approx(math.log(2), abs=0.02)
    bf16.train_step(1)
    assert _fp32_state(bf16.policy.parameters(), bf16.optimizer)


@pytest.mark.parametrize("stage", ["rm", "dpo"])
def test_fsdp_is_refused_naming_the_field(tmp_path, stage: str) -> None:
    with pytest.raises(ValueError, match=r"run\.fsdp"):
        if stage == "rm":
            cfg = rm_config(tmp_path / "rm", write_separable_pairs(tmp_path / "p"))
            cfg.run.fsdp = True
            RewardModelTrainer(cfg)
        else:
            cfg = dpo_config(tmp_path / "dpo", write_pairs(tmp_path / "p"))
            cfg.run.fsdp = True
            DPOTrainer(cfg)
    cls = RewardModelConfig if stage == "rm" else DPOConfig
    with pytest.raises(ConfigError, match=r"run\.fsdp"):  # the CLI's path: before any model
        load_config(cls, None, ["--run.fsdp=true", "--pairs.path=x.jsonl"])


@pytest.mark.parametrize("stage", ["rm", "dpo"])
def test_run_device_cuda_is_honoured(tmp_path, stage: str) -> None:
    build = _rm if stage == "rm" else _dpo
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            build(tmp_path, "fp32", device="cuda")
        return
    trainer = build(tmp_path, "bf16-autocast", device="cuda")
    model = trainer.model if stage == "rm" else trainer.policy
    assert all(p.device.type == "cuda" for p in model.parameters())
    trainer.train_step(0)
