"""Checkpoint round trips, layout, config drift and mmap safety (RELIABILITY CKPT-1/7/13)."""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest
import torch
from torch import nn

import posttrain
from posttrain.run.checkpoint import (
    CheckpointError,
    ConfigDriftError,
    check_config_drift,
    config_fingerprint,
    load_checkpoint,
    load_state_dict_strict,
    module_weights,
    save_checkpoint,
)
from posttrain.run.rng import capture_rng, restore_rng

CONFIG = {"seed": 1, "train": {"lr": 1e-2, "batch_size": 4}, "rl": {"group_size": 8}}


def assert_same(a: object, b: object, where: str = "state", ordered: bool = True) -> None:
    """Nested equality: tensors with torch.equal and equal dtype, everything else with ==.
    `ordered=False` ignores dict key order (safetensors files store names sorted)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        ka, kb = (list(a), list(b)) if ordered else (sorted(a), sorted(b))
        assert ka == kb, f"{where}: keys {ka} vs {kb}"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]", ordered)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]", ordered)
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def _models(seed: int) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)), nn.Linear(2, 1)


def _train(policy, value, opt, sched, n: int, gen: torch.Generator) -> None:
    for _ in range(n):
        x = torch.randn(5, 3, generator=gen)
        loss = (value(policy(x)) ** 2).mean() + policy(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _setup(seed: int = 0):
    policy, value = _models(seed)
    opt = torch.optim.AdamW([*policy.parameters(), *value.parameters()], lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return policy, value, opt, sched


def test_every_component_kind_round_trips_and_training_continues_bitwise(tmp_path):
    """CKPT-1: optimizer (nested AdamW state), scheduler, RNG, KL controller, counters,
    running stats and a rollout buffer come back equal; continuing from the restored
    objects gives bitwise the same parameters as continuing the originals."""
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    gen = torch.Generator().manual_seed(7)
    policy, value, opt, sched = _setup()
    _train(policy, value, opt, sched, 3, gen)
    state = {
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "rng": capture_rng({"sampler": gen}),
        "kl_controller": {"kl_coef": 0.05, "target": 6.0, "horizon": 10000, "history": [0.1]},
        "counters": {"global_step": 3, "micro_step": 12, "epoch": 1, "sampler_pos": 5},
        "reward_stats": {"mean": torch.tensor(0.25, dtype=torch.float64), "count": 40},
        "buffer": {"response_ids": torch.arange(6).view(2, 3), "mask": torch.ones(2, 3) > 0},
        "empty": {},
        "nothing": None,
    }
    weights = {"policy": module_weights(policy), "value_head": module_weights(value)}
    path = save_checkpoint(tmp_path, 3, weights, state, CONFIG)
    ck = load_checkpoint(path)

    assert ck.step == 3 and ck.path == path and ck.config == CONFIG
    assert_same(state, ck.state)
    assert_same(weights, ck.weights, "weights", ordered=False)
    # Nested AdamW slots are really there (step, exp_avg, exp_avg_sq per parameter).
    assert set(ck.state["optimizer"]["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}

    # Restore into fresh objects (other init seed), then take 2 more steps on both sides.
    policy2, value2, opt2, sched2 = _setup(seed=123)
    load_state_dict_strict(policy2, ck.weights["policy"], "policy")
    load_state_dict_strict(value2, ck.weights["value_head"], "value_head")
    opt2.load_state_dict(ck.state["optimizer"])
    sched2.load_state_dict(ck.state["scheduler"])
    gen2 = torch.Generator()
    restore_rng(ck.state["rng"], {"sampler": gen2})
    _train(policy, value, opt, sched, 2, gen)
    _train(policy2, value2, opt2, sched2, 2, gen2)
    for (name, p), p2 in zip(policy.named_parameters(), policy2.parameters(), strict=True):
        assert torch.equal(p, p2), name
    for p, p2 in zip(value.parameters(), value2.parameters(), strict=True):
        assert torch.equal(p, p2)
    assert_same(opt.state_dict(), opt2.state_dict(), "optimizer after 2 more steps")
    assert sched.get_last_lr() == sched2.get_last_lr()


def test_layout_manifest_and_latest_pointer(tmp_path):
    """The dir holds exactly the promised files; the manifest's sizes and hashes match an
    independent hashlib pass; `latest` names the new dir."""
    path = save_checkpoint(
        tmp_path, 42, {"policy": {"w": torch.ones(3)}}, {"step": 42}, CONFIG, keep_last=2
    )
    assert path == tmp_path / "checkpoints" / "step-00000042"
    names = sorted(p.name for p in path.iterdir())
    assert names == ["config.json", "manifest.json", "policy.safetensors", "state.pt"]
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["step"] == 42
    assert manifest["config_fingerprint"] == config_fingerprint(CONFIG)
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["versions"]["posttrain"] == posttrain.__version__
    assert {"transformers", "safetensors"} <= set(manifest["versions"])
    assert sorted(manifest["files"]) == ["config.json", "policy.safetensors", "state.pt"]
    for name, entry in manifest["files"].items():
        data = (path / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert json.loads((path / "config.json").read_text()) == CONFIG
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step-00000042\n"
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))


def test_rotation_keeps_last_and_never_overwrites(tmp_path):
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, {"p": {"w": torch.full((2,), float(step))}}, {}, {})
    dirs = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert dirs == ["latest", "step-00000003", "step-00000004"]
    with pytest.raises(CheckpointError, match="step-00000004 already exists"):
        save_checkpoint(tmp_path, 4, {"p": {"w": torch.zeros(2)}}, {}, {})
    # The refused save changed nothing.
    kept = load_checkpoint(tmp_path / "checkpoints" / "step-00000004")
    assert torch.equal(kept.weights["p"]["w"], torch.full((2,), 4.0))


def test_rotation_spares_newer_checkpoints_of_an_abandoned_timeline(tmp_path):
    """Resuming from step 1 while step 5 exists: saving step 2 with keep_last=1 deletes
    step 1 (older) but not step 5, which is the user's to judge."""
    for step in (1, 5):
        save_checkpoint(tmp_path, step, {"p": {"w": torch.zeros(1)}}, {}, {}, keep_last=5)
    save_checkpoint(tmp_path, 2, {"p": {"w": torch.zeros(1)}}, {}, {}, keep_last=1)
    dirs = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir())
    assert dirs == ["step-00000002", "step-00000005"]


def test_tied_embedding_transformers_model_round_trips(tmp_path):
    """Tied input/output embeddings share storage, which safetensors refuses; module_weights
    and save_checkpoint copy the second name so the save works and the tie survives a load."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    raw = model.state_dict()
    assert raw["lm_head.weight"].data_ptr() == raw["model.embed_tokens.weight"].data_ptr()

    ready = module_weights(model)
    assert ready["lm_head.weight"].data_ptr() != ready["model.embed_tokens.weight"].data_ptr()
    save_checkpoint(tmp_path, 1, {"policy": ready}, {}, {})
    path = save_checkpoint(tmp_path, 2, {"policy": raw}, {}, {})  # the raw dict works too

    torch.manual_seed(1)
    fresh = LlamaForCausalLM(cfg)
    load_state_dict_strict(fresh, load_checkpoint(path).weights["policy"], "policy")
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight
    for (name, p), q in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_config_fingerprint_is_canonical_sha256():
    # Canonical JSON of {"b": {"c": [1, 2]}, "a": 1}: sorted keys, no spaces.
    text = '{"a":1,"b":{"c":[1,2]}}'
    expected = hashlib.sha256(text.encode()).hexdigest()
    assert config_fingerprint({"b": {"c": [1, 2]}, "a": 1}) == expected
    assert config_fingerprint({"a": 1, "b": {"c": [1, 2]}}) == expected
    assert config_fingerprint({"a": 1, "b": {"c": [2, 1]}}) != expected


SAVED = {
    "seed": 1,
    "world_size": 2,
    "train": {"lr": 1e-3, "batch_size": 8},
    "rl": {"group_size": 8},
    "data": {"hash": "abc"},
    "output_dir": "runs/a",
}


@pytest.mark.parametrize(
    ("field", "value", "line"),
    [
        ("seed", 2, "seed: 1 -> 2"),
        ("world_size", 1, "world_size: 2 -> 1"),
        ("train.lr", 5e-4, "train.lr: 0.001 -> 0.0005"),
        ("train.batch_size", 4, "train.batch_size: 8 -> 4"),
        ("rl.group_size", 4, "rl.group_size: 8 -> 4"),
        ("data.hash", "abd", 'data.hash: "abc" -> "abd"'),
    ],
)
def test_config_drift_names_the_field(field, value, line):
    """CKPT-7: each changed field raises with its dotted name and both values."""
    current = json.loads(json.dumps(SAVED))
    node = current
    *parents, leaf = field.split(".")
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ConfigDriftError) as info:
        check_config_drift(SAVED, current)
    assert line in str(info.value)
    # Allowed explicitly: no error, and the change is returned for the caller to log.
    assert check_config_drift(SAVED, current, allow=[field]) == [line]


def test_config_drift_lists_every_field_and_honours_ignore_and_prefixes():
    current = {**SAVED, "seed": 3, "rl": {"group_size": 4, "new_knob": True}, "output_dir": "b"}
    del current["data"]
    with pytest.raises(ConfigDriftError) as info:
        check_config_drift(SAVED, current, ignore=["output_dir"])
    msg = str(info.value)
    for line in (
        "seed: 1 -> 3",
        "rl.group_size: 8 -> 4",
        "rl.new_knob: <absent> -> true",
        'data.hash: "abc" -> <absent>',
    ):
        assert line in msg
    assert "output_dir" not in msg
    # A prefix allows its whole subtree; the rest still fails.
    with pytest.raises(ConfigDriftError) as info:
        check_config_drift(SAVED, current, allow=["rl"], ignore=["output_dir"])
    assert "rl." not in str(info.value) and "seed: 1 -> 3" in str(info.value)
    # Same settings written differently are not drift: tuple vs list, 8 vs 8.0.
    same = {**SAVED, "train": {"lr": 1e-3, "batch_size": 8.0}, "x": (1, 2)}
    assert check_config_drift({**SAVED, "x": [1, 2]}, same) == []
    # True and 1 are different settings.
    with pytest.raises(ConfigDriftError, match="flag: 1 -> true"):
        check_config_drift({"flag": 1}, {"flag": True})


def test_expected_fingerprint_mismatch_raises(tmp_path):
    path = save_checkpoint(tmp_path, 1, {"p": {"w": torch.zeros(1)}}, {}, CONFIG)
    load_checkpoint(path, expected_fingerprint=config_fingerprint(CONFIG))
    with pytest.raises(ConfigDriftError, match="fingerprint"):
        load_checkpoint(path, expected_fingerprint=config_fingerprint({**CONFIG, "seed": 2}))


def test_mmap_load_then_save_next_leaves_old_files_untouched(tmp_path):
    """CKPT-13: with step 1 loaded via mmap, saving steps 2 and 3 never rewrites step 1's
    files; after rotation deletes step 1, the mapped tensors still read the right values."""
    w = torch.arange(4096, dtype=torch.float32)
    state = {"exp_avg": torch.linspace(0, 1, 4096), "step": 1}
    path1 = save_checkpoint(tmp_path, 1, {"policy": {"w": w}}, state, CONFIG, keep_last=2)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in path1.iterdir()}
    ck = load_checkpoint(path1, mmap=True)

    save_checkpoint(tmp_path, 2, {"policy": {"w": w + 1}}, {**state, "step": 2}, CONFIG)
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in path1.iterdir()}
    assert after == before
    assert torch.equal(ck.state["exp_avg"], state["exp_avg"])

    save_checkpoint(tmp_path, 3, {"policy": {"w": w + 2}}, {**state, "step": 3}, CONFIG)
    assert not path1.exists()  # rotated out while mapped
    assert torch.equal(ck.state["exp_avg"], state["exp_avg"])
    assert torch.equal(ck.weights["policy"]["w"], w)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_model_and_optimizer_round_trip(tmp_path):
    """[GPU] twin of the CKPT-1 round trip: CUDA weights (with a tied pair) and CUDA
    optimizer slots save to CPU files and continue on CUDA to atol 1e-6."""

    def build(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 10, bias=False)).cuda()
        model[1].weight = model[0].weight  # tie, as LMs do
        return model, torch.optim.AdamW(model.parameters(), lr=1e-2)

    def step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
        ids = torch.arange(6, device="cuda") % 10
        loss = nn.functional.cross_entropy(model(ids), (ids + 1) % 10)
        opt.zero_grad()
        loss.backward()
        opt.step()

    model, opt = build(0)
    step(model, opt)
    state = {"optimizer": opt.state_dict(), "rng": capture_rng()}
    path = save_checkpoint(tmp_path, 1, {"policy": module_weights(model)}, state, CONFIG)
    ck = load_checkpoint(path)
    assert all(t.device.type == "cpu" for t in ck.weights["policy"].values())
    model2, opt2 = build(1)
    load_state_dict_strict(model2, ck.weights["policy"], "policy")
    opt2.load_state_dict(ck.state["optimizer"])
    assert model2[1].weight is model2[0].weight
    step(model, opt)
    step(model2, opt2)
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
