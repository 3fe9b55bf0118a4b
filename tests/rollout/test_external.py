"""The external-engine seam (posttrain.rollout.external) with a fake remote engine in-process.

`FakeRemote` plays vLLM/SGLang: it holds its own copy of the model, built from the config with
other random weights and then loaded only from what `WeightSync.push` hands it, and samples
with posttrain's `HFEngine` on that copy, seeded per prompt from the seeds it is given. So:

- a GRPO run through `ExternalEngine` equals, bit for bit, the same run sampling in-process
  (same seeds) for several steps: every step samples with the weights of the previous step's
  last optimizer step, which a stale copy would not (shown too: the log-prob gap stops it);
- weights are pushed once per training step (versions 0, 1, 2), not per generate call;
- a sampler that reports filtered (top-k renormalised) log-probs trips the logprob-gap guard;
- malformed returns are refused with a ValueError naming the completion.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import Tensor

from posttrain.models.tiny import build_tiny_model
from posttrain.rollout import FINISH_EOS, FINISH_LENGTH, HFEngine, SamplingParams
from posttrain.rollout.external import (
    Completion,
    ExternalEngine,
    RemoteSampler,
    WeightSync,
    request_seeds,
)
from posttrain.tasks.base import Status, Verdict
from posttrain.train.configs import (
    AlgoConfig,
    BatchConfig,
    HealthConfig,
    ModelConfig,
    OptimConfig,
    RLConfig,
    RunConfig,
    SamplingConfig,
    TaskConfig,
)
from posttrain.train.policy_gradient import PolicyGradientTrainer, TrainingHealthError
from posttrain.train.rl_batch import VerifierReward

STEPS = 3


def _first_char_is_digit(example, text: str) -> Verdict:
    """A reward a random tiny policy earns now and then, so advantages (and updates) are not 0."""
    return Verdict(float(text[:1].isdigit()), Status.OK)


def _cfg(run_dir: Path, top_k: int = 0) -> RLConfig:
    """GRPO, 4 prompts × 4 samples, 2 mini-batches (2 optimizer steps per step), lr high
    enough that one step visibly moves the policy."""
    return RLConfig(
        model=ModelConfig(spec="tiny:tiny"),
        task=TaskConfig(name="sorting", n=3, num_eval=8),
        optim=OptimConfig(lr=1e-2),
        run=RunConfig(dir=str(run_dir), save_every=100, threads=1, log_rollouts_every=1),
        algo=AlgoConfig(preset="grpo"),
        batch=BatchConfig(prompts_per_step=4, group_size=4, micro_batch_size=8, mini_batches=2),
        sampling=SamplingConfig(top_k=top_k),
        health=HealthConfig(stop_when_all_truncated=False),
        steps=STEPS,
        eval_examples=4,
    )


def _trainer(run_dir: Path, top_k: int = 0) -> PolicyGradientTrainer:
    return PolicyGradientTrainer(_cfg(run_dir, top_k), reward=VerifierReward(_first_char_is_digit))


class FakeRemote:
    """A remote engine in-process: its own model copy, fed only by `push`; HFEngine sampling.

    `stale`: keep the first push only (a broken sync). `processed_logprobs`: report log-probs
    of the top-k filtered, renormalised distribution (vLLM's "processed" log-probs).
    """

    def __init__(self, config, stale: bool = False, processed_logprobs: bool = False) -> None:
        from transformers import LlamaForCausalLM

        with torch.random.fork_rng():  # other weights than the trainer's: pushes make them equal
            torch.manual_seed(1234)
            self.model = LlamaForCausalLM(copy.deepcopy(config)).eval()
        self.stale, self.processed = stale, processed_logprobs
        self.pushes: list[int] = []
        self.calls = 0

    def push(self, weights: Iterable[tuple[str, Tensor]], version: int) -> None:
        if self.stale and self.pushes:
            return
        state = {name: t.detach().clone() for name, t in weights}  # copy: no shared storage
        result = self.model.load_state_dict(state, strict=False)
        assert not result.unexpected_keys, result.unexpected_keys
        # Only tied aliases (lm_head.weight = embed_tokens.weight) may be left out.
        canonical = {n for n, _ in self.model.named_parameters()}
        canonical |= {n for n, _ in self.model.named_buffers()}
        assert not set(result.missing_keys) & canonical, result.missing_keys
        self.pushes.append(version)

    def sample(
        self,
        prompts: Sequence[list[int]],
        group_size: int,
        params: SamplingParams,
        seeds: Sequence[int],
    ) -> list[list[Completion]]:
        if not self.pushes:
            raise RuntimeError("FakeRemote: asked to sample before any weights were pushed")
        self.calls += 1
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), params.pad_token_id, dtype=torch.long)  # (N, P)
        mask = torch.zeros((len(prompts), width), dtype=torch.bool)
        for i, p in enumerate(prompts):  # left padding, as the trainer's prompts
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = True
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        ro = HFEngine(self.model).generate(ids, mask, group_size, params, generators)
        logprobs = ro.logprobs
        if self.processed:
            logprobs = self._processed_logprobs(ro, params)
        out = []
        for r in range(ro.batch_size):
            keep = ro.response_mask[r]
            out.append(
                Completion(
                    token_ids=ro.response_ids[r][keep].tolist(),
                    logprobs=logprobs[r][keep].tolist(),
                    stopped=bool(ro.finish_reason[r] == FINISH_EOS),
                )
            )
        return [out[i * group_size : (i + 1) * group_size] for i in range(len(prompts))]

    def _processed_logprobs(self, ro, params: SamplingParams) -> Tensor:
        """log-probs (R, T) under the top-k filtered distribution the tokens were drawn from."""
        from posttrain.rollout import filter_logits

        with torch.no_grad():
            logits = self.model(
                input_ids=ro.input_ids(),
                attention_mask=ro.attention_mask(),
                position_ids=ro.position_ids(),
            ).logits[:, ro.prompt_ids.shape[1] - 1 : -1]  # (R, T, V): position t predicts t+1
            flat = filter_logits(logits.flatten(0, 1) / params.temperature, params.top_k, 1.0)
            logp = torch.log_softmax(flat, dim=-1).view_as(logits)
        return logp.gather(-1, ro.response_ids.unsqueeze(-1)).squeeze(-1)  # (R, T)


class SeededHF:
    """The in-process HFEngine on the live policy, seeded exactly as ExternalEngine seeds a
    remote one: the reference the remote run must equal."""

    def __init__(self, model) -> None:
        self.inner = HFEngine(model)

    def generate(self, prompt_ids, prompt_mask, group_size, params, generator):
        seeds = request_seeds(generator, prompt_ids.shape[0])
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        return self.inner.generate(prompt_ids, prompt_mask, group_size, params, generators)


def _external(trainer: PolicyGradientTrainer, **fake: bool) -> FakeRemote:
    remote = FakeRemote(trainer.policy.config, **fake)
    assert isinstance(remote, RemoteSampler) and isinstance(remote, WeightSync)
    own, live = remote.model.state_dict(), trainer.policy.state_dict()
    assert not any(torch.equal(own[k], live[k]) for k in live if k.endswith("proj.weight"))
    trainer.engine = ExternalEngine(
        remote,
        remote,
        pad_token_id=trainer.tokenizer.pad_token_id,
        vocab_size=trainer.policy.config.vocab_size,
    )
    return remote


def _rows(run_dir: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """A finished in-process run (SeededHF)."""
    run_dir = tmp_path_factory.mktemp("external") / "in_process"
    trainer = _trainer(run_dir)
    trainer.engine = SeededHF(trainer.policy)
    trainer.train()
    return run_dir


@pytest.mark.slow
def test_remote_run_equals_in_process_run(reference, tmp_path) -> None:
    trainer = _trainer(tmp_path / "remote")
    remote = _external(trainer)
    trainer.train()
    # The same samples and sampler log-probs, bit for bit, at every step...
    assert _rows(tmp_path / "remote", "rollouts.jsonl") == _rows(reference, "rollouts.jsonl")
    # ...hence the same losses and the same final weights.
    got, want = _rows(tmp_path / "remote", "metrics.jsonl"), _rows(reference, "metrics.jsonl")
    assert len(got) == len(want) == STEPS + 2  # eval before, STEPS steps, eval after
    for g, w in zip(got, want, strict=True):
        assert {k: v for k, v in g.items() if not k.startswith("time/")} == {
            k: v for k, v in w.items() if not k.startswith("time/")
        }
    wa = load_file(tmp_path / "remote" / "final" / "model.safetensors")
    wb = load_file(reference / "final" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wb)
    # The updates moved the policy, so sampling from stale weights would have shown (see the
    # next test): Adam at lr 1e-2 moves every touched weight by about 1e-2 per update.
    init = build_tiny_model("tiny").state_dict()
    assert max(float((wb[k] - init[k]).abs().max()) for k in wb) > 1e-2
    # One push per training step, before its sampling, versions 0..STEPS-1; 2 optimizer steps
    # per training step do not add pushes.
    assert remote.pushes == list(range(STEPS)) and remote.calls == STEPS
    # Sampling after the last step pushes its weights once; sampling again pushes nothing.
    trainer.make_batch(trainer.counters.step)
    trainer.make_batch(trainer.counters.step)
    assert remote.pushes == list(range(STEPS + 1)) and remote.calls == STEPS + 2
    assert trainer.engine.sync_weights(trainer.policy, trainer.counters.step) is False


@pytest.mark.slow
def test_stale_remote_weights_stop_the_run(reference, tmp_path) -> None:
    trainer = _trainer(tmp_path / "stale")
    remote = _external(trainer, stale=True)
    with pytest.raises(TrainingHealthError, match="logprob_gap"):
        trainer.train()
    gaps = [
        r["policy/logprob_gap"]
        for r in _rows(tmp_path / "stale", "metrics.jsonl")
        if "policy/logprob_gap" in r
    ]
    # Step 1 samples the pushed initial weights (gap at rounding level); step 2 samples
    # weights two optimizer steps old and the guard (1e-3) fires.
    assert gaps[0] < 1e-5 and gaps[1] > 1e-3 and len(gaps) == 2
    assert remote.pushes == [0]


@pytest.mark.slow
def test_processed_logprobs_trip_the_gap_guard(tmp_path) -> None:
    trainer = _trainer(tmp_path / "processed", top_k=5)
    _external(trainer, processed_logprobs=True)
    with pytest.raises(TrainingHealthError, match="logprob_gap"):
        trainer.train()
    gap = _rows(tmp_path / "processed", "metrics.jsonl")[-1]["policy/logprob_gap"]
    # Renormalising over the top 5 of 80 near-uniform tokens adds about -log(5/80) = 2.8 nats.
    assert 1.0 < gap < 4.0


# ----------------------------------------------------------------- returns, checked one by one
PARAMS = SamplingParams(max_new_tokens=3, stop_token_ids=(2,), pad_token_id=0)
PROMPTS = torch.tensor([[0, 5, 6], [7, 8, 9]])  # (N=2, P=3), left-padded
PROMPT_MASK = torch.tensor([[False, True, True], [True, True, True]])


class Canned:
    """A RemoteSampler that returns what it was given and records what it was asked."""

    def __init__(self, groups) -> None:
        self.groups, self.asked = groups, None

    def sample(self, prompts, group_size, params, seeds):
        self.asked = (prompts, group_size, seeds)
        return self.groups


def _generate(groups, vocab_size: int | None = 16):
    engine = ExternalEngine(Canned(groups), None, pad_token_id=0, vocab_size=vocab_size)
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    return engine.generate(PROMPTS, PROMPT_MASK, 2, PARAMS, gens), engine.sampler


GOOD = [
    [Completion([4, 2], [-0.5, -1.0], True), Completion([3, 3, 3], [-1.0, -2.0, -3.0], False)],
    [Completion([2], [-0.25], True), Completion([9, 9, 2], [-0.125, -0.375, -0.75], True)],
]


def test_good_return_becomes_the_rollout() -> None:
    ro, sampler = _generate(GOOD)
    prompts, group_size, seeds = sampler.asked
    assert prompts == [[5, 6], [7, 8, 9]] and group_size == 2  # padding stripped
    # Seed i is the first draw of prompt i's generator.
    assert seeds == [
        int(torch.randint(0, 2**62, (1,), generator=torch.Generator().manual_seed(i)))
        for i in range(2)
    ]
    assert ro.response_ids.tolist() == [[4, 2, 0], [3, 3, 3], [2, 0, 0], [9, 9, 2]]
    assert ro.response_mask.tolist() == [
        [True, True, False],
        [True, True, True],
        [True, False, False],
        [True, True, True],
    ]
    assert ro.logprobs.tolist() == [
        [-0.5, -1.0, 0.0],
        [-1.0, -2.0, -3.0],
        [-0.25, 0.0, 0.0],
        [-0.125, -0.375, -0.75],  # binary fractions: exact in float32
    ]
    expected = [FINISH_EOS, FINISH_LENGTH, FINISH_EOS, FINISH_EOS]
    assert ro.finish_reason.tolist() == expected
    assert ro.group_ids.tolist() == [0, 0, 1, 1]
    assert torch.equal(ro.prompt_ids, PROMPTS.repeat_interleave(2, dim=0))
    assert torch.equal(ro.prompt_mask, PROMPT_MASK.repeat_interleave(2, dim=0))


def test_request_seeds_are_per_prompt() -> None:
    """Prompt i's seed depends only on its own generator (so not on the batch or rank)."""

    def gens(*seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    assert request_seeds(gens(3, 4), 2)[1] == request_seeds(gens(9, 4), 2)[1]
    assert request_seeds(gens(4), 1) == request_seeds(gens(7, 4), 2)[1:]
    one = request_seeds(torch.Generator().manual_seed(0), 3)
    assert len(set(one)) == 3 and all(0 <= s < 2**62 for s in one)
    with pytest.raises(ValueError, match="3 generators for 2 prompts"):
        request_seeds(gens(1, 2, 3), 2)


def _with(prompt: int, sample: int, completion) -> list[list]:
    groups = [list(g) for g in GOOD]
    groups[prompt][sample] = completion
    return groups


@pytest.mark.parametrize(
    "groups,message",
    [
        (GOOD[:1], r"\[2\] completions per prompt for 2 prompts"),
        ([GOOD[0], GOOD[1][:1]], r"\[2, 1\] completions per prompt"),
        (_with(0, 1, Completion([3, 3], [-1.0], False)), "prompt 0, sample 1 has 2 tokens but 1"),
        (_with(1, 0, Completion([3, 3, 3, 2], [-1.0] * 4, True)), "4 tokens > max_new_tokens=3"),
        (_with(1, 1, Completion([], [], False)), "prompt 1, sample 1 has no tokens"),
        (_with(0, 0, Completion([4, 2], [0.6, 0.4], True)), r"log-probs \[0.6, 0.4\]"),
        (_with(0, 0, Completion([4, 2], [-1.0, math.nan], True)), "log-probs"),
        (_with(0, 0, Completion([4, 20], [-1.0, -1.0], False)), r"token ids \[20\] outside"),
        (_with(0, 0, Completion([4, -1], [-1.0, -1.0], False)), r"token ids \[-1\] outside"),
        (
            _with(0, 0, Completion([4, 5], [-1.0, -1.0], True)),
            "stopped=True but its last token 5 is not",
        ),
        (
            _with(0, 1, Completion([3, 3, 2], [-1.0] * 3, False)),
            "stopped=False but its last token 2 is a",
        ),
        (_with(0, 0, Completion([2, 5, 6], [-1.0] * 3, False)), "after a stop token at position 0"),
        (_with(0, 0, Completion([4, 5], [-1.0, -1.0], False)), "stopped=False but only 2 of"),
        (_with(0, 0, {"token_ids": [4, 2]}), "prompt 0, sample 0 is a dict, not a Completion"),
    ],
)
def test_malformed_returns_are_refused(groups, message) -> None:
    with pytest.raises(ValueError, match=message):
        _generate(groups)
