"""run.device and run.precision: device choice, bf16 autocast with fp32 master weights, and the
health guard's bf16 tolerance. CPU tests use the ~1M tiny model; the `gpu` test runs the same
loop on CUDA."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.run.sharding import autocast, resolve_device
from posttrain.train.configs import RunConfig
from posttrain.train.pg_update import TrainingHealthError
from posttrain.train.policy_gradient import PolicyGradientTrainer


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="run.device"):
        resolve_device("tpu")


def test_autocast_runs_matmuls_in_bf16_and_fp32_is_untouched() -> None:
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast("fp32", torch.device("cpu")):
        assert (a @ b).dtype == torch.float32
    with autocast("bf16-autocast", torch.device("cpu")):
        assert (a @ b).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="run.precision"):
        autocast("fp16", torch.device("cpu"))


def test_run_config_rejects_unknown_precision_and_device() -> None:
    with pytest.raises(ValueError, match="precision"):
        RunConfig(precision="fp8").validate()
    with pytest.raises(ValueError, match="device"):
        RunConfig(device="tpu").validate()


def _grpo(tmp_path, make_rl_config, precision: str, device: str = "cpu"):
    cfg = make_rl_config(tmp_path / precision, preset="grpo")
    cfg.run.precision, cfg.run.device = precision, device
    cfg.steps = 2
    return PolicyGradientTrainer(cfg)


def test_bf16_autocast_keeps_fp32_master_weights_and_passes_the_health_gap(
    tmp_path, make_rl_config
) -> None:
    trainer = _grpo(tmp_path, make_rl_config, "bf16-autocast")
    gaps = [trainer.step()["policy/logprob_gap"] for _ in range(2)]
    # Sampler and trainer both ran in bf16; they round differently (one-token decode against
    # a full forward) but stay inside the bf16 tolerance, which the step itself enforced.
    assert all(0 <= g <= trainer.cfg.health.max_logprob_gap_bf16 for g in gaps)
    assert all(p.dtype == torch.float32 for p in trainer.policy.parameters())
    state = trainer.optimizer.state_dict()["state"]
    assert state and all(s["exp_avg"].dtype == torch.float32 for s in state.values())
    assert all(p.dtype == torch.float32 for p in trainer.reference.parameters())


def test_fp32_gap_is_float_rounding(tmp_path, make_rl_config) -> None:
    trainer = _grpo(tmp_path, make_rl_config, "fp32")
    assert trainer.step()["policy/logprob_gap"] < 1e-5


def test_health_guard_uses_the_tolerance_of_the_precision(tmp_path, make_rl_config) -> None:
    metrics = {"rollout/truncated_frac": 0.0, "policy/logprob_gap": 0.01}
    bf16 = _grpo(tmp_path, make_rl_config, "bf16-autocast")
    bf16.check_health(metrics)  # 0.01 < max_logprob_gap_bf16 = 0.05: fine
    fp32 = _grpo(tmp_path, make_rl_config, "fp32")
    with pytest.raises(TrainingHealthError, match="max_logprob_gap=0.001"):
        fp32.check_health(metrics)  # the fp32 default (1e-3) is not loosened
    with pytest.raises(TrainingHealthError, match="max_logprob_gap_bf16"):
        bf16.check_health({**metrics, "policy/logprob_gap": 0.2})
    bf16.check_health({**metrics, "policy/logprob_gap": math.nan})  # no tokens: no verdict


def test_hf_models_attend_with_sdpa(tmp_path) -> None:
    from posttrain.models.loading import load_model, save_pretrained_pair

    model, tok = load_model("tiny:tiny")
    save_pretrained_pair(model, tok, tmp_path / "m")
    again, _ = load_model(str(tmp_path / "m"))
    assert again.config._attn_implementation == "sdpa"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_grpo_on_cuda(tmp_path, make_rl_config) -> None:
    trainer = _grpo(tmp_path, make_rl_config, "bf16-autocast", device="cuda")
    assert next(trainer.policy.parameters()).device.type == "cuda"
    gaps = [trainer.step()["policy/logprob_gap"] for _ in range(2)]
    assert all(0 <= g <= trainer.cfg.health.max_logprob_gap_bf16 for g in gaps)
    assert all(p.dtype == torch.float32 for p in trainer.policy.parameters())
