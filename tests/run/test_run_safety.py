"""Safe, strict, verified checkpoint loading (RELIABILITY SAFE-1, SAFE-4, SAFE-5, CKPT-8)."""

from __future__ import annotations

import ast
import hashlib
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from posttrain.run.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_state_dict_strict,
    module_weights,
    save_checkpoint,
)
from posttrain.run.rng import capture_rng

PACKAGE = Path(__file__).resolve().parents[2] / "posttrain"


class Payload:
    """Unpickling this calls open(sentinel, "w"): the file appears if the code runs."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (str(self.sentinel), "w"))


def _checkpoint(run: Path, step: int = 3) -> Path:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng": capture_rng({"sampler": torch.Generator()})}
    return save_checkpoint(run, step, {"policy": module_weights(model)}, state, {"seed": 1})


def _rehash(path: Path, name: str) -> None:
    """Make the manifest agree with a replaced file, as an attacker controlling the dir would."""
    manifest = json.loads((path / "manifest.json").read_text())
    data = (path / name).read_bytes()
    manifest["files"][name] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("fmt", ["torch_zip", "plain_pickle"])
def test_malicious_state_file_is_refused_and_never_runs(tmp_path, fmt):
    """SAFE-1: a state.pt whose unpickling would create a sentinel file → CheckpointError
    naming state.pt, sentinel absent. The manifest is rehashed so only weights_only stops it."""
    path = _checkpoint(tmp_path / "run")
    sentinel = tmp_path / "PWNED"
    evil = {"optimizer": Payload(sentinel)}
    if fmt == "torch_zip":
        torch.save(evil, path / "state.pt")
    else:
        (path / "state.pt").write_bytes(pickle.dumps(evil, protocol=2))
    _rehash(path, "state.pt")

    with pytest.raises(CheckpointError, match=r"state\.pt.*weights_only=True"):
        load_checkpoint(path)
    assert not sentinel.exists()

    # The payload is live: calling what unpickling would call creates the file.
    fn, args = Payload(tmp_path / "PROOF").__reduce__()
    fn(*args).close()
    assert (tmp_path / "PROOF").exists()


def test_every_non_weight_file_loads_weights_only(tmp_path):
    """CKPT-8: state.pt loads with weights_only=True and no safe_globals; the RNG state
    inside is tensors, lists and numbers only; config and manifest are plain JSON."""
    path = _checkpoint(tmp_path)
    for f in sorted(path.iterdir()):
        if f.suffix == ".safetensors":
            continue
        if f.suffix == ".json":
            json.loads(f.read_text())
        else:
            assert f.name == "state.pt"
            state = torch.load(f, weights_only=True)
    allowed = (torch.Tensor, dict, list, str, int, float, type(None))

    def walk(obj: object, where: str) -> None:
        assert isinstance(obj, allowed), f"{where} is a {type(obj).__name__}"
        children = (
            obj.items()
            if isinstance(obj, dict)
            else enumerate(obj)
            if isinstance(obj, list)
            else []
        )
        for k, v in children:
            walk(v, f"{where}[{k!r}]")

    walk(state["rng"], "rng")
    assert state["rng"]["torch_cpu"].dtype == torch.uint8


def test_save_refuses_state_that_weights_only_could_not_load(tmp_path):
    with pytest.raises(CheckpointError, match=r"state\['rng'\]\['np'\] is a numpy.ndarray"):
        save_checkpoint(tmp_path, 1, {}, {"rng": {"np": np.zeros(3)}}, {})
    with pytest.raises(CheckpointError, match=r"state\['sched'\]\[1\] is a .*Linear"):
        save_checkpoint(tmp_path, 1, {}, {"sched": [1, nn.Linear(1, 1)]}, {})
    with pytest.raises(CheckpointError, match=r"weights\['policy'\]: 'w' is a list"):
        save_checkpoint(tmp_path, 1, {"policy": {"w": [1.0]}}, {}, {})
    with pytest.raises(CheckpointError, match="not a safe file name"):
        save_checkpoint(tmp_path, 1, {"../evil": {"w": torch.zeros(1)}}, {}, {})
    # Nothing was left behind by the refused saves.
    root = tmp_path / "checkpoints"
    assert not root.exists() or list(root.iterdir()) == []


@pytest.mark.parametrize("name", ["policy.safetensors", "state.pt", "config.json"])
def test_flipped_byte_is_caught_naming_the_file(tmp_path, name):
    """SAFE-5: one flipped byte, same size → SHA-256 mismatch naming the file."""
    path = _checkpoint(tmp_path)
    f = path / name
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"{name} fails its SHA-256 check"):
        load_checkpoint(path)


@pytest.mark.parametrize("name", ["policy.safetensors", "state.pt"])
def test_truncated_or_missing_file_is_caught_naming_the_file(tmp_path, name):
    path = _checkpoint(tmp_path)
    f = path / name
    size = f.stat().st_size
    f.write_bytes(f.read_bytes()[: size - 1])
    with pytest.raises(
        CheckpointError, match=rf"{name} has {size - 1} bytes, manifest says {size}"
    ):
        load_checkpoint(path)
    f.unlink()
    with pytest.raises(CheckpointError, match=rf"{name} is missing"):
        load_checkpoint(path)


def test_missing_or_corrupt_manifest(tmp_path):
    path = _checkpoint(tmp_path)
    (path / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"corrupt .*manifest\.json"):
        load_checkpoint(path)
    (path / "manifest.json").unlink()
    with pytest.raises(
        CheckpointError, match=r"incomplete checkpoint .*step-00000003: no manifest"
    ):
        load_checkpoint(path)


def test_strict_load_lists_missing_and_unexpected_keys(tmp_path):
    """SAFE-4: a checkpoint missing one key and carrying an extra one → both listed, with
    where the weights came from."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
    weights = module_weights(model)
    del weights["1.bias"]
    weights["2.weight"] = torch.zeros(1)
    path = save_checkpoint(tmp_path, 3, {"policy": weights}, {}, {})
    what = "checkpoint step-00000003/policy.safetensors"
    with pytest.raises(CheckpointError) as info:
        load_state_dict_strict(model, load_checkpoint(path).weights["policy"], what)
    msg = str(info.value)
    assert what in msg and "Sequential" in msg
    assert "missing keys (1): 1.bias" in msg
    assert "unexpected keys (1): 2.weight" in msg


def test_strict_load_reports_shape_mismatch_and_leaves_module_unchanged():
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad = {"weight": torch.zeros(3, 4), "bias": torch.zeros(3)}
    with pytest.raises(CheckpointError, match=r"weight: \(3, 4\) in ckpt, \(3, 2\) in the model"):
        load_state_dict_strict(model, bad, "ckpt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def _forbidden_loads(tree: ast.AST) -> list[str]:
    bad = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        kwargs = {k.arg: k.value for k in node.keywords}
        wo = kwargs.get("weights_only")
        if isinstance(wo, ast.Constant) and wo.value is False:
            bad.append(f"line {node.lineno}: weights_only=False")
        if func == "torch.load" and not (isinstance(wo, ast.Constant) and wo.value is True):
            bad.append(f"line {node.lineno}: torch.load without weights_only=True")
        if func in ("pickle.load", "pickle.loads", "pickle.Unpickler", "dill.load"):
            bad.append(f"line {node.lineno}: {func}")
    return bad


def test_lint_no_unsafe_deserialisation_in_the_package():
    """SAFE-1 lint: no `weights_only=False`, no `torch.load` without `weights_only=True`, no
    `pickle.load` anywhere in posttrain/."""
    sample = "torch.load(p)\ntorch.load(p, weights_only=False)\npickle.load(f)\n"
    assert len(_forbidden_loads(ast.parse(sample))) == 4  # the checker itself catches all four
    problems = []
    for f in sorted(PACKAGE.rglob("*.py")):
        for p in _forbidden_loads(ast.parse(f.read_text(), filename=str(f))):
            problems.append(f"{f.relative_to(PACKAGE.parent)} {p}")
    assert problems == []


def test_manifest_cannot_point_outside_the_checkpoint(tmp_path):
    path = _checkpoint(tmp_path / "run")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["../../outside.safetensors"] = {"size": 1, "sha256": "0" * 64}
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"corrupt .*manifest\.json: bad entry '\.\./"):
        load_checkpoint(path)
