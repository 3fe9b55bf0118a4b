"""Kill -9 anywhere, resume, and get the uninterrupted run bit for bit (CKPT-2, CKPT-3, CKPT-4).

For each trainer (SFT, GRPO, PPO with two inner epochs, DPO, reward model) a driver process
(`_fault_driver.py`) runs an uninterrupted 4-step reference and then, per scenario, a chain of
attempts in fresh forked processes: attempts with ``POSTTRAIN_FAULT`` set die by SIGKILL at
that point, and the next attempt resumes with ``run.resume=auto``. Checked per scenario:

- every killed attempt really died of SIGKILL, and the last attempt finished (rc 0);
- a kill never loses or alters a finished checkpoint (same files, same SHA-256);
- each resume starts from the newest *complete* checkpoint, never from a ``*.tmp`` dir;
- final weights, optimizer, scheduler, RNG and counters equal the reference's (torch.equal);
- metrics.jsonl has the reference's steps in order (no step twice, none skipped) with
  identical values, and rollouts.jsonl (RL) the same sampled tokens and log-probs.

Checkpoints fall at steps 2 and 4 with keep_last=1, so a kill during the step-4 save tests
that rotation never deletes the only finished checkpoint before the new one is durable.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _reliability_configs import SAVE_EVERY, STEPS  # noqa: E402

from posttrain.models.loading import load_model  # noqa: E402

FILES_PER_CHECKPOINT = {"sft": 4, "grpo": 4, "ppo": 5, "dpo": 4, "rm": 5}
"""policy (or trunk + reward_head) [+ value_head] .safetensors, state.pt, config.json,
manifest.json."""

# scenario name → faults of the successive attempts (None: the clean, final attempt).
# "step:3" first kills inside step 3, after the step-2 checkpoint, so the fault that follows
# fires during the step-4 save or step 4's inner epochs while a finished checkpoint exists.
_SAVE = {f"save:after_file:{k}": ["step:3", f"save:after_file:{k}", None] for k in range(1, 6)}
SCENARIOS: dict[str, dict[str, list[str | None]]] = {
    "sft": {
        "step:3": ["step:3", None],
        **{k: v for k, v in _SAVE.items() if int(k[-1]) <= FILES_PER_CHECKPOINT["sft"]},
        "save:after_rename": ["step:3", "save:after_rename", None],
        "save:after_latest": ["step:3", "save:after_latest", None],
        "step:2 (before any checkpoint)": ["step:2", None],
        "save:after_file:2 (first save)": ["save:after_file:2", None],
        "step:3 twice": ["step:3", "step:3", None],
    },
    "grpo": {
        "step:3": ["step:3", None],
        **{k: v for k, v in _SAVE.items() if int(k[-1]) <= FILES_PER_CHECKPOINT["grpo"]},
        "save:after_rename": ["step:3", "save:after_rename", None],
        "save:after_latest": ["step:3", "save:after_latest", None],
        "step:2 (before any checkpoint)": ["step:2", None],
        "save:after_file:2 (first save)": ["save:after_file:2", None],
    },
    "ppo": {
        "inner_epoch:1": ["step:3", "inner_epoch:1", None],
        "save:after_file:2": ["step:3", "save:after_file:2", None],
    },
    "dpo": {
        "step:3": ["step:3", None],
        **{k: v for k, v in _SAVE.items() if int(k[-1]) <= FILES_PER_CHECKPOINT["dpo"]},
        # The reference log-probs are computed (and cached) once, at the start of a fresh run.
        "ref_cache:0": ["ref_cache:0", None],
        "save:after_file:2 (first save)": ["save:after_file:2", None],
    },
    "rm": {
        "step:3": ["step:3", None],
        **{k: v for k, v in _SAVE.items() if int(k[-1]) <= FILES_PER_CHECKPOINT["rm"]},
    },
}
"""Killed attempts: sum over scenarios of the non-None faults (counted in the README)."""

# Each trainer's matrix costs 5-15 s of CPU over two processes: part of CI, not of a quick run.
pytestmark = pytest.mark.slow

_RESULTS: dict[str, dict] = {}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


def _plan(trainer: str, root: Path) -> dict:
    """The reference run and one chain of attempts per scenario, two processes at a time."""
    chains = [
        [
            {
                "id": "reference",
                "trainer": trainer,
                "run_dir": str(root / "reference"),
                "resume": None,
                "fault": None,
            }
        ]
    ]
    for name, faults in SCENARIOS[trainer].items():
        chains.append(
            [
                {
                    "id": f"{name}#{i}",
                    "trainer": trainer,
                    "run_dir": str(root / _slug(name)),
                    "resume": None if i == 0 else "auto",
                    "fault": fault,
                }
                for i, fault in enumerate(faults)
            ]
        )
    return {"jobs": 2, "chains": chains}


def _results(trainer: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Run the driver for `trainer` once per session; (root of the runs, results)."""
    if trainer not in _RESULTS:
        root = tmp_path_factory.mktemp(f"faults-{trainer}")
        (root / "plan.json").write_text(json.dumps(_plan(trainer, root)))
        proc = subprocess.run(
            [
                sys.executable,
                str(HERE / "_fault_driver.py"),
                str(root / "plan.json"),
                str(root / "result.json"),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-5000:]
        _RESULTS[trainer] = {
            "root": root,
            "results": json.loads((root / "result.json").read_text()),
            "stderr": proc.stderr,
        }
    entry = _RESULTS[trainer]
    return entry["root"], entry["results"]


def _complete(snapshot: dict) -> dict[str, dict]:
    """The finished checkpoints of a snapshot: ``step-N`` dirs that hold a manifest."""
    return {
        name: files
        for name, files in snapshot.items()
        if name.startswith("step-")
        and not name.endswith(".tmp")
        and isinstance(files, dict)
        and "manifest.json" in files
    }


def _step(name: str) -> int:
    return int(name.removeprefix("step-").removesuffix(".tmp"))


def _metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in rows]


def _assert_same(a: object, b: object, where: str) -> None:
    """Recursive equality with torch.equal (and dtype) on tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        if not torch.equal(a, b):
            diff = (a.double() - b.double()).abs().max().item() if a.is_floating_point() else None
            raise AssertionError(f"{where} differs (max |difference| {diff})")
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def _assert_killed_where_claimed(fault: str, after: dict, done: dict) -> None:
    """The debris a kill left shows it struck at the named point of the save."""
    saving = f"step-{max((_step(n) for n in done), default=0) + SAVE_EVERY:08d}"
    if fault.startswith("save:after_file:"):  # exactly k files of the save, and no manifest
        k = int(fault.rsplit(":", 1)[1])
        assert len(after[saving + ".tmp"]) == k and saving not in after, after
    elif fault == "save:after_rename":  # complete, but `latest` still names the previous one
        assert saving in _complete(after) and after["latest"] != saving + "\n", after
    elif fault == "save:after_latest":  # `latest` moved; the previous one not yet rotated out
        assert after["latest"] == saving + "\n" and set(done) <= set(after), after


def _cases() -> list:
    return [
        pytest.param(trainer, name, id=f"{trainer}-{name}")
        for trainer, scenarios in SCENARIOS.items()
        for name in scenarios
    ]


@pytest.mark.parametrize("trainer", list(SCENARIOS))
def test_reference_run_and_checkpoint_layout(trainer, tmp_path_factory) -> None:
    """The uninterrupted run finishes, and its checkpoint has the files the matrix kills after."""
    root, results = _results(trainer, tmp_path_factory)
    ref = results["reference"]
    assert ref["rc"] == 0 and ref["start_step"] == 0
    final = f"step-{STEPS:08d}"
    assert sorted(ref["checkpoints"]) == ["latest", final]  # keep_last=1 rotated step 2 out
    assert ref["checkpoints"]["latest"] == final + "\n"
    assert len(ref["checkpoints"][final]) == FILES_PER_CHECKPOINT[trainer]
    steps = [row["step"] for row in _metrics(root / "reference")]
    train_steps = [s for s in steps if s > 0]
    assert train_steps[:STEPS] == list(range(1, STEPS + 1))
    # The run learnt something, so "resumed == reference" below is not "nothing moved".
    initial, _ = load_model("tiny:tiny", seed=0)
    ckpt = root / "reference" / "checkpoints" / final
    trained = load_file(ckpt / f"{'trunk' if trainer == 'rm' else 'policy'}.safetensors")
    moved = [k for k, v in initial.state_dict().items() if not torch.equal(v, trained[k])]
    assert len(moved) > len(trained) // 2, moved


@pytest.mark.parametrize(("trainer", "scenario"), _cases())
def test_kill_then_resume_equals_the_uninterrupted_run(trainer, scenario, tmp_path_factory) -> None:
    root, results = _results(trainer, tmp_path_factory)
    faults = SCENARIOS[trainer][scenario]
    attempts = [results[f"{scenario}#{i}"] for i in range(len(faults))]
    run_dir, ref_dir = root / _slug(scenario), root / "reference"

    before: dict = {}
    for i, (fault, attempt) in enumerate(zip(faults, attempts, strict=True)):
        if fault is None:
            assert attempt["rc"] == 0, f"attempt {i} failed:\n{_RESULTS[trainer]['stderr'][-3000:]}"
        else:
            assert attempt["rc"] == -9, f"attempt {i} ({fault}) was not killed: rc={attempt['rc']}"
        # Each attempt starts from the newest finished checkpoint there was (0: none), never
        # from an unfinished *.tmp save, whatever debris the previous kill left.
        # (None: killed inside the trainer's constructor, e.g. while caching reference log-probs.)
        done = _complete(before)
        if attempt["start_step"] is not None or fault is None:
            assert attempt["start_step"] == max((_step(n) for n in done), default=0), i
        after = attempt["checkpoints"]
        if fault is not None:  # a kill never loses or alters a finished checkpoint
            for name, files in done.items():
                assert after.get(name) == files, f"{fault} lost or changed {name}"
            _assert_killed_where_claimed(fault, after, done)
        before = after

    final = f"step-{STEPS:08d}"
    # No debris left; the last checkpoint is the final one. (After "save:after_rename" the
    # resumed run has no step left to save, so step 2 is not rotated out: kept, not lost.)
    assert final in _complete(before) and max(map(_step, _complete(before))) == STEPS
    assert not [name for name in before if name.endswith(".tmp")]
    ref_ckpt, ckpt = ref_dir / "checkpoints" / final, run_dir / "checkpoints" / final
    for group in sorted(p.name for p in ref_ckpt.glob("*.safetensors")):
        _assert_same(load_file(ref_ckpt / group), load_file(ckpt / group), group)
    _assert_same(
        torch.load(ref_ckpt / "state.pt", weights_only=True),
        torch.load(ckpt / "state.pt", weights_only=True),
        "state.pt",
    )
    exported = sorted(p.relative_to(ref_dir) for p in (ref_dir / "final").rglob("*.safetensors"))
    assert exported
    for rel in exported:
        _assert_same(load_file(ref_dir / rel), load_file(run_dir / rel), str(rel))
    assert _metrics(run_dir) == _metrics(ref_dir)  # contiguous, and every value identical
    if trainer in ("grpo", "ppo"):
        assert (run_dir / "rollouts.jsonl").read_text() == (ref_dir / "rollouts.jsonl").read_text()


def count_injected_faults() -> dict[str, int]:
    """{trainer: SIGKILLs injected by this module} (for the README's figures)."""
    return {t: sum(f is not None for fs in s.values() for f in fs) for t, s in SCENARIOS.items()}
