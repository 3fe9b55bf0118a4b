"""The seam for a rollout engine outside this process (vLLM, SGLang, an inference server).

Shape legend: N prompts, G samples per prompt, R = N·G rows (prompt-major), P prompt tokens
(left-padded), T response tokens.

In-process engines (`HFEngine`, `LlamaEngine`) sample from the live module, so they always see
the trainer's current weights. An external engine holds its own copy, so two things cross the
process boundary, both small interfaces defined here and implemented by the user's adapter
(neither vLLM nor SGLang is a dependency):

- `RemoteSampler.sample`: token-id prompts and one seed per prompt in, token ids and
  per-token log-probs out;
- `WeightSync.push`: the policy's full weights out, after the optimizer changed them.

`ExternalEngine` turns the first into the `Engine` contract (a `Rollout`), checking what comes
back, and owns the second: `sync_weights(model, version)` pushes only when the version (the
trainer's count of finished training steps) moved. `PolicyGradientTrainer.make_batch` calls
`sync_weights` on any engine that has it, right before sampling, so the remote engine samples
step s with the weights left by step s − 1's last optimizer step, and is pushed once per step
however many mini-batch updates that step made:

    trainer = PolicyGradientTrainer(cfg)
    trainer.engine = ExternalEngine(MyVLLMSampler(...), MyNcclOrHttpSync(...), pad_token_id=...)
    trainer.train()

Seeds: each prompt's seed is drawn from that prompt's generator (`request_seeds`), so, as with
the in-process engines, a prompt's samples do not depend on which prompts share its batch or
rank; a remote engine that seeds per request (vLLM's `SamplingParams(seed=...)`) is then
reproducible.

The log-probs the remote sampler returns must be those of the temperature-scaled, *unfiltered*
distribution (what `forward_response` recomputes); engines differ in whether the log-probs they
report are taken before or after temperature, top-k/top-p and penalties, so check the engine's
log-prob mode. The `policy/logprob_gap` health metric compares the two every step, so a
mismatch (filtered log-probs, a stale weight push, a dtype the trainer does not use) stops the
run instead of biasing it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from posttrain.rollout.sampler import Generators, SamplingParams, check_prompts
from posttrain.rollout.types import FINISH_EOS, FINISH_LENGTH, Rollout


@dataclass
class Completion:
    """One sampled response as an external engine returns it."""

    token_ids: list[int]
    """Sampled tokens, including the stop token when it ended the response."""
    logprobs: list[float]
    """log π(token) of each sampled token under softmax(logits / temperature), unfiltered."""
    stopped: bool
    """True when a stop token ended the response (FINISH_EOS), False when it hit the length."""


@runtime_checkable
class RemoteSampler(Protocol):
    """Samples from an engine outside this process (an adapter over vLLM, SGLang, a server)."""

    def sample(
        self,
        prompts: Sequence[list[int]],
        group_size: int,
        params: SamplingParams,
        seeds: Sequence[int],
    ) -> list[list[Completion]]:
        """`group_size` completions for each of N prompts (unpadded token ids); `seeds[i]`
        seeds prompt i's G samples on engines that support seeding. Returns N lists of G."""
        ...


@runtime_checkable
class WeightSync(Protocol):
    """Pushes the policy's weights into the external engine (NCCL broadcast, shared memory,
    a file or an HTTP call: the adapter decides)."""

    def push(self, weights: Iterable[tuple[str, Tensor]], version: int) -> None:
        """Replace the engine's weights with `weights` (full tensors, Hugging Face state-dict
        names, tied aliases once); `version` is the trainer's step count when they were taken.
        The tensors may be the live parameters: copy them, do not keep references."""
        ...


def full_weights(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """(name, full tensor) for every parameter and persistent buffer; gathers FSDP shards (a
    collective: every rank must call, rank 0 pushes). Tied aliases appear once."""
    from posttrain.run.sharding import export_state

    gathered = export_state(model)
    if gathered is not None:
        yield from gathered.items()
        return
    canonical = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    for name, tensor in model.state_dict().items():
        if name in canonical:
            yield name, tensor.detach()


def request_seeds(generator: Generators, num_prompts: int) -> list[int]:
    """One seed per prompt: drawn from prompt i's generator when given one per prompt (the
    trainer's case), else `num_prompts` draws from the single generator. Each draw advances
    its generator, exactly once per call."""
    if isinstance(generator, torch.Generator):
        return torch.randint(0, 2**62, (num_prompts,), generator=generator).tolist()
    if len(generator) != num_prompts:
        raise ValueError(f"{len(generator)} generators for {num_prompts} prompts")
    return [int(torch.randint(0, 2**62, (1,), generator=g)) for g in generator]


class ExternalEngine:
    """An `Engine` whose samples come from a `RemoteSampler`, kept current by a `WeightSync`."""

    def __init__(
        self,
        sampler: RemoteSampler,
        sync: WeightSync | None,
        *,
        pad_token_id: int,
        vocab_size: int | None = None,
    ) -> None:
        """`sync` None: the caller keeps the remote weights current itself. `vocab_size`, when
        given, bounds the token ids the sampler may return."""
        self.sampler, self.sync, self.pad_token_id = sampler, sync, pad_token_id
        self.vocab_size = vocab_size
        self.version: int | None = None

    def sync_weights(self, model: nn.Module, version: int, is_main: bool = True) -> bool:
        """Push `model`'s weights if `version` differs from the last push; True if pushed.
        Under torchrun every rank calls (FSDP gathers are collective); only `is_main` pushes."""
        if self.sync is None or version == self.version:
            return False
        weights = list(full_weights(model))
        if is_main:
            self.sync.push(weights, version)
        self.version = version
        return True

    def generate(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        group_size: int,
        params: SamplingParams,
        generator: Generators,
    ) -> Rollout:
        """Sample G responses per prompt remotely; see `Engine.generate`.

        Each prompt's seed comes from `request_seeds(generator, N)`; the remote samples are as
        reproducible as the remote engine's seeding. What the sampler returns is checked (counts,
        lengths, stop tokens, log-prob values) and refused with a ValueError naming the
        completion, before it can reach the loss.
        """
        check_prompts(prompt_ids, prompt_mask, group_size)
        prompts = [ids[m.bool()].tolist() for ids, m in zip(prompt_ids, prompt_mask, strict=True)]
        seeds = request_seeds(generator, len(prompts))
        groups = self.sampler.sample(prompts, group_size, params, seeds)
        if (
            not isinstance(groups, Sequence)
            or len(groups) != len(prompts)
            or any(not isinstance(g, Sequence) or len(g) != group_size for g in groups)
        ):
            got = [len(g) for g in groups] if isinstance(groups, Sequence) else type(groups)
            raise ValueError(
                f"RemoteSampler.sample returned {got} completions per prompt for "
                f"{len(prompts)} prompts; expected a list of {len(prompts)} lists of "
                f"{group_size} Completion each"
            )
        rows = [c for g in groups for c in g]  # prompt-major, R rows
        for i, c in enumerate(rows):
            self._check(c, f"prompt {i // group_size}, sample {i % group_size}", params)
        return self._to_rollout(prompt_ids, prompt_mask, group_size, rows)

    def _check(self, c: Completion, where: str, params: SamplingParams) -> None:
        """Refuse a completion the trainer would misread (ValueError naming `where`)."""
        if not isinstance(c, Completion):
            raise ValueError(
                f"RemoteSampler.sample: {where} is a {type(c).__name__}, not a Completion"
            )
        n = len(c.token_ids)
        if n == 0:
            raise ValueError(f"RemoteSampler.sample: {where} has no tokens")
        if n > params.max_new_tokens:
            raise ValueError(
                f"RemoteSampler.sample: {where} has {n} tokens > max_new_tokens="
                f"{params.max_new_tokens}"
            )
        if len(c.logprobs) != n:
            raise ValueError(
                f"RemoteSampler.sample: {where} has {n} tokens but {len(c.logprobs)} log-probs"
            )
        bad = [
            t
            for t in c.token_ids
            if t < 0 or (self.vocab_size is not None and t >= self.vocab_size)
        ]
        if bad:
            raise ValueError(
                f"RemoteSampler.sample: {where} has token ids {bad[:5]} outside "
                f"[0, {self.vocab_size if self.vocab_size is not None else 'vocab'})"
            )
        # Log-probs are <= 0; a small slack absorbs the engine's rounding of log_softmax.
        odd = [lp for lp in c.logprobs if not (math.isfinite(lp) and lp <= 1e-4)]
        if odd:
            raise ValueError(
                f"RemoteSampler.sample: {where} has log-probs {odd[:5]} (expected finite "
                "values <= 0: log π(token), not probabilities or logits)"
            )
        stops = set(params.stop_token_ids)
        early = [j for j, t in enumerate(c.token_ids[:-1]) if t in stops]
        if early:
            raise ValueError(
                f"RemoteSampler.sample: {where} continues after a stop token at position "
                f"{early[0]} (end the completion there)"
            )
        if c.stopped != (c.token_ids[-1] in stops):
            raise ValueError(
                f"RemoteSampler.sample: {where} says stopped={c.stopped} but its last token "
                f"{c.token_ids[-1]} {'is not' if c.stopped else 'is'} a stop token "
                f"{sorted(stops)}"
            )
        if not c.stopped and n < params.max_new_tokens:
            raise ValueError(
                f"RemoteSampler.sample: {where} has stopped=False but only {n} of "
                f"max_new_tokens={params.max_new_tokens} tokens (a response ends with a stop "
                "token or at the length cap)"
            )

    def _to_rollout(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        group_size: int,
        rows: list[Completion],
    ) -> Rollout:
        """The checked completions as a Rollout: responses right-padded to the longest (T)."""
        width = max(len(c.token_ids) for c in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)  # (R, T)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        logprobs = torch.zeros((len(rows), width), dtype=torch.float32)
        for i, c in enumerate(rows):
            n = len(c.token_ids)
            ids[i, :n] = torch.tensor(c.token_ids, dtype=torch.long)
            mask[i, :n] = True
            logprobs[i, :n] = torch.tensor(c.logprobs, dtype=torch.float32)
        finish = torch.tensor([FINISH_EOS if c.stopped else FINISH_LENGTH for c in rows])
        device = prompt_ids.device
        return Rollout(
            prompt_ids=prompt_ids.repeat_interleave(group_size, dim=0),
            prompt_mask=prompt_mask.bool().repeat_interleave(group_size, dim=0),
            response_ids=ids.to(device),
            response_mask=mask.to(device),
            logprobs=logprobs.to(device),
            finish_reason=finish.to(device),
            group_ids=torch.arange(len(rows), device=device) // group_size,
        )
