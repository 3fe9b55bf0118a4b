"""FSDP2 (run.fsdp) on CPU with gloo.

- 2 sharded ranks equal 1 sharded process for SFT, for GRPO with a sharded frozen reference
  (kl_coef > 0), and for PPO with a replicated value head: the same sampled tokens, per-step
  losses within 1e-6 and final weights within `ADAM_ATOL` (SFT: 1e-6).
- Sharded against plain (no FSDP; transformers' forward on both sides): before any update the
  first step's loss and pre-clip gradient norm agree to 1e-6 relative (a wrong gradient scale,
  e.g. averaging instead of summing, shows here: clipping and Adam hide it from the weights);
  after six steps as above.
- A sharded run killed under torchrun resumes sharded to the same weights (1e-6), and resumes
  in one plain process from the same checkpoint (single-process format: full tensors,
  optimizer state keyed by parameter index) as above.
- The helpers on a 1-rank group: gather/localize round trip, the mixed sharded/plain gradient
  clip equals torch's, and forwards inside `gathered` need no collectives.

Why `ADAM_ATOL`: 2 ranks sum a gradient in another order than 1 process (~1e-7 relative), and
Adam divides by sqrt(v)+ε with ε=1e-8, which turns that rounding into an update difference of
up to lr·O(1) in the few elements whose gradient is near ε. Measured on the GRPO run: 14 of
~1M elements differ by more than 1e-6, at most 5.2e-6, and plain data parallel (no FSDP, 2
ranks) shows the same 14 elements; 2 sharded ranks against 2 plain ones agree to 5e-7. The
tolerance, 2e-5, is 2% of one Adam step at lr 1e-3; a real fault (a lost gradient share, a
misplaced optimizer state) moves weights by whole steps and losses by far more than 1e-6.

This file is also the torchrun worker: `python tests/train/test_sharding.py JOBS_JSON` (see `runs`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
KINDS = ("sft", "rl", "ppo")
ADAM_ATOL = 2e-5
"""Final-weight tolerance between runs on different numbers of ranks (see the docstring)."""
RL_SEED = 2
"""Every sampled uniform of this GRPO run lies >= 3.6e-5 from a CDF boundary (PPO's at seed 0:
>= 5.2e-5), so rounding-level weight differences (~1e-7) cannot flip a sampled token. At seed 0
one draw lies 8.8e-9 from a boundary: rounding flips that token in step 5 and the runs part by
0.13% of the distance travelled, which no tolerance can tell from a real bug."""


def _worker(jobs: list[dict]) -> None:
    """Run `jobs` one after another in this process (one import of torch and transformers for
    all of them); a job with a "fault" sets POSTTRAIN_FAULT, so it must come last."""
    sys.path.insert(0, str(HERE.parent))
    from conftest import first_char_is_digit, lm_config, rl_config
    from transformers import LlamaForCausalLM

    import posttrain.train.policy_gradient as pg
    from posttrain.models.fast_llama import OPT_OUT_ATTR
    from posttrain.rollout import HFEngine
    from posttrain.run.distributed import shutdown
    from posttrain.train.lm import LMTrainer
    from posttrain.train.policy_gradient import PolicyGradientTrainer
    from posttrain.train.rl_batch import VerifierReward

    # Sharded and plain runs both sample with HFEngine and score with transformers' forward
    # (a hooked FSDP model gets neither fast Llama path), so sharded-vs-plain compares FSDP
    # against no FSDP, not one set of kernels against another.
    pg.make_engine = HFEngine
    setattr(LlamaForCausalLM, OPT_OUT_ATTR, False)
    torch.set_num_threads(1)
    for job in jobs:
        kind, run_dir = job["kind"], Path(job["dir"])
        if job.get("fault"):
            os.environ["POSTTRAIN_FAULT"] = job["fault"]
        if kind == "sft":
            cfg = lm_config(run_dir)
        elif kind == "ppo":  # a replicated value head next to the sharded policy
            cfg = rl_config(run_dir, preset="ppo")
        else:
            cfg = rl_config(run_dir, preset="grpo", kl_coef=0.1)  # a sharded reference too
            cfg.batch.mini_batches = 2
            cfg.seed = RL_SEED
        cfg.run.fsdp, cfg.run.device, cfg.run.resume = job["fsdp"], "cpu", job.get("resume")
        cfg.run.allow_config_change = ["run.fsdp", "run.dir"]  # resumed from a copied run
        # The process group stays up between jobs (the trainers join an existing one).
        if kind == "sft":
            LMTrainer(cfg).train()
        else:
            PolicyGradientTrainer(cfg, reward=VerifierReward(first_char_is_digit)).train()
    shutdown()


def _start(nproc: int, jobs: list[dict], log: Path) -> subprocess.Popen:
    """Start `jobs` in one process (nproc 1) or under torchrun; output goes to `log`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTTRAIN_FAULT")}
    env.update(OMP_NUM_THREADS="1", POSTTRAIN_NO_PROGRESS="1")
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    with log.open("w") as out:  # a file, not a pipe: two launches may run side by side
        return subprocess.Popen(
            [*launcher, str(HERE), json.dumps(jobs)], env=env, cwd=REPO, stdout=out, stderr=out
        )


def _finish(proc: subprocess.Popen, log: Path, expect_kill: bool = False) -> int:
    """Wait for a launch; print its log's tail when it failed unexpectedly."""
    code = proc.wait(timeout=600)
    if code and not expect_kill:
        print(log.read_text()[-8000:])
    return code


def _job(kind: str, run_dir: Path, fsdp: bool, **extra: str) -> dict:
    return {"kind": kind, "dir": str(run_dir), "fsdp": fsdp, **extra}


def _metrics(d: Path, key: str) -> list[float]:
    rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


def _weights(d: Path) -> dict[str, torch.Tensor]:
    return load_file(d / "final" / "model.safetensors")


def _sampled(d: Path) -> dict[int, list[list[int]]]:
    """Step → token ids of the rows rank 0 logs (prompts 0 and 1 on 1 or 2 ranks)."""
    rows: dict[int, list[list[int]]] = {}
    for line in (d / "rollouts.jsonl").read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["step"], []).append(row["tokens"])
    return {step: tokens[:8] for step, tokens in rows.items()}


def _assert_same_run(a: Path, b: Path, key: str, atol: float) -> None:
    """Same sampled tokens (RL), per-step `key` within 1e-6, final weights within `atol`."""
    if (a / "rollouts.jsonl").exists():
        assert _sampled(a) == _sampled(b), "a sampled token differs: see RL_SEED"
    la, lb = _metrics(a, key), _metrics(b, key)
    assert len(la) == len(lb) == 6
    torch.testing.assert_close(torch.tensor(la), torch.tensor(lb), rtol=0, atol=1e-6)
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=atol, msg=name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Every run of this file, in three launches (imports dominate a tiny run's time):

    - 2 sharded ranks: "<kind>_two" for sft / rl / ppo, then "killed" (rl, SIGKILL in step 5);
    - 2 sharded ranks: "killed" resumed (from its step-3 checkpoint) → "resumed_fsdp";
    - 1 process: "<kind>_one" sharded over a 1-rank group, "plain" (rl without FSDP), and a
      copy of "killed" resumed without FSDP → "resumed_plain".
    """
    root = tmp_path_factory.mktemp("fsdp")
    d = {n: root / n for n in ("sft_one", "rl_one", "ppo_one", "plain", "resumed_plain")}
    d.update({n: root / n for n in ("sft_two", "rl_two", "ppo_two", "killed")})
    two = [_job(k, d[f"{k}_two"], True) for k in KINDS]
    two.append(_job("rl", d["killed"], True, fault="step:5"))
    assert _finish(_start(2, two, root / "two.log"), root / "two.log", expect_kill=True) != 0
    for kind in KINDS:
        assert (d[f"{kind}_two"] / "final").exists(), kind
    assert not (d["killed"] / "final").exists()
    shutil.copytree(d["killed"], d["resumed_plain"])
    # The single-process launch runs beside the sharded resume (it needs one core, torchrun two).
    one = [_job(k, d[f"{k}_one"], True) for k in KINDS]
    one += [_job("rl", d["plain"], False), _job("rl", d["resumed_plain"], False, resume="auto")]
    one_proc = _start(1, one, root / "one.log")
    resume = _start(2, [_job("rl", d["killed"], True, resume="auto")], root / "resume.log")
    assert _finish(resume, root / "resume.log") == 0
    assert _finish(one_proc, root / "one.log") == 0
    d["resumed_fsdp"] = d.pop("killed")
    return d


@pytest.mark.slow
@pytest.mark.parametrize(
    # Measured final-weight differences: SFT 3.3e-7, GRPO 5.2e-6, PPO 1.2e-6.
    "kind,key,atol",
    [("sft", "loss/lm", 1e-6), ("rl", "loss/policy", ADAM_ATOL), ("ppo", "loss/value", ADAM_ATOL)],
)
def test_fsdp_two_ranks_equal_one_sharded_process(runs, kind, key, atol) -> None:
    _assert_same_run(runs[f"{kind}_one"], runs[f"{kind}_two"], key, atol)


@pytest.mark.slow
def test_fsdp_matches_plain_training(runs) -> None:
    plain, fsdp = runs["plain"], runs["rl_two"]
    for key in ("loss/policy", "optim/grad_norm"):  # step 1: same weights, only rounding
        assert _metrics(fsdp, key)[0] == pytest.approx(_metrics(plain, key)[0], rel=1e-6)
    _assert_same_run(plain, fsdp, "loss/policy", ADAM_ATOL)  # measured 5.2e-6


@pytest.mark.slow
def test_fsdp_killed_run_resumes_sharded_and_plain(runs) -> None:
    _assert_same_run(runs["rl_two"], runs["resumed_fsdp"], "loss/policy", 1e-6)  # measured 0
    _assert_same_run(runs["rl_two"], runs["resumed_plain"], "loss/policy", ADAM_ATOL)  # 1.2e-7


# ------------------------------------------------------------- helpers on a 1-rank group
@pytest.fixture
def one_rank_group():
    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _tiny_sharded():
    from posttrain.models.tiny import build_tiny_model
    from posttrain.run.distributed import World
    from posttrain.run.sharding import shard_model

    plain = build_tiny_model("tiny", num_hidden_layers=2)
    sharded = build_tiny_model("tiny", num_hidden_layers=2)
    shard_model(sharded, World(), torch.device("cpu"))
    return plain, sharded


def test_gather_and_localize_round_trip(one_rank_group) -> None:
    from posttrain.run.sharding import gather_full_state, is_sharded, localize

    plain, sharded = _tiny_sharded()
    assert is_sharded(sharded) and not is_sharded(plain)
    full = gather_full_state(sharded.state_dict())
    # Same keys (the tied lm_head included) and values as the unsharded twin (same seed).
    assert full.keys() == plain.state_dict().keys()
    for k, v in plain.state_dict().items():
        assert torch.equal(full[k], v), k
    # Optimizer state: index-keyed full tensors come back as DTensors placed like the params.
    opt = torch.optim.AdamW(sharded.parameters(), lr=1e-2)
    sharded(input_ids=torch.tensor([[1, 2, 3]])).logits.sum().backward()
    opt.step()
    saved = gather_full_state(opt.state_dict())
    assert all(not hasattr(v, "placements") for s in saved["state"].values() for v in s.values())
    fresh = torch.optim.AdamW(sharded.parameters(), lr=1e-2)
    fresh.load_state_dict(localize(fresh, saved))
    again = gather_full_state(fresh.state_dict())
    for i, entry in saved["state"].items():
        for k, v in entry.items():
            assert torch.equal(again["state"][i][k], v)
    # Weights: perturb, then restore from the gathered copy.
    with torch.no_grad():
        for p in sharded.parameters():
            p.add_(1.0)
    sharded.load_state_dict(localize(sharded, full))
    for k, v in gather_full_state(sharded.state_dict()).items():
        assert torch.equal(v, full[k]), k


def test_clip_grad_norm_mixes_sharded_and_plain(one_rank_group) -> None:
    from posttrain.run.sharding import clip_grad_norm

    plain, sharded = _tiny_sharded()
    head_a, head_b = torch.nn.Linear(128, 1), torch.nn.Linear(128, 1)
    head_b.load_state_dict(head_a.state_dict())
    ids = torch.tensor([[1, 5, 9, 4]])
    for model, head in ((plain, head_a), (sharded, head_b)):
        out = model(input_ids=ids, output_hidden_states=True)
        (out.logits.float().pow(2).mean() + head(out.hidden_states[-1]).sum()).backward()
    params_a = [*plain.parameters(), *head_a.parameters()]
    params_b = [*sharded.parameters(), *head_b.parameters()]
    expected = float(torch.nn.utils.clip_grad_norm_(params_a, 0.5))
    got = clip_grad_norm(params_b, 0.5)
    assert got == pytest.approx(expected, rel=1e-6)
    assert got > 0.5  # so the clip was active on both sides
    for pa, pb in zip(params_a, params_b, strict=True):
        gb = pb.grad.full_tensor() if hasattr(pb.grad, "full_tensor") else pb.grad
        torch.testing.assert_close(gb, pa.grad, rtol=1e-6, atol=1e-9)


def test_gathered_forward_matches_plain(one_rank_group) -> None:
    from posttrain.run.sharding import gathered

    plain, sharded = _tiny_sharded()
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.inference_mode(), gathered(sharded):
        got = [sharded(input_ids=ids).logits for _ in range(3)]  # local forwards
    want = plain(input_ids=ids).logits
    for g in got:
        torch.testing.assert_close(g, want, rtol=0, atol=0)


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
