"""The seam for a rollout engine outside this process (vLLM, SGLang, an inference server).

Shape legend: N prompts, G samples per prompt, R = N·G rows (prompt-major), P prompt tokens
(left-padded), T response tokens.

In-process engines (`HFEngine`, `LlamaEngine`) sample from the live module, so they always see
the trainer's current weights. An external engine holds its own copy, so two things cross the
process boundary, both small interfaces defined here and implemented by the user's adapter
(neither vLLM nor SGLang is a dependency):

- `RemoteSampler.sample`: token-id prompts in, token ids and per-token log-probs out;
- `WeightSync.push`: the policy's full weights out, after the optimizer changed them.

`ExternalEngine` turns the first into the `Engine` contract (a `Rollout`) and owns the second:
`sync_weights(model, version)` pushes only when the version (the trainer's optimizer-step
counter) moved. `PolicyGradientTrainer.make_batch` calls `sync_weights` on any engine that has
it, right before sampling, which is "after each optimizer step" for every step that samples:

    trainer = PolicyGradientTrainer(cfg)
    trainer.engine = ExternalEngine(MyVLLMSampler(...), MyNcclOrHttpSync(...), pad_token_id=...)
    trainer.train()

The log-probs the remote sampler returns must be those of the *unfiltered* temperature-scaled
distribution (what `forward_response` recomputes); the `policy/logprob_gap` health metric
checks that every step, so a mismatch (top-p applied, a stale weight push, a dtype the trainer
does not use) stops the run instead of biasing it.
"""

from __future__ import annotations

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
        self, prompts: Sequence[list[int]], group_size: int, params: SamplingParams, seed: int
    ) -> list[list[Completion]]:
        """`group_size` completions for each prompt (unpadded token ids); `seed` makes the call
        reproducible on engines that support seeding. Returns N lists of G completions."""
        ...


@runtime_checkable
class WeightSync(Protocol):
    """Pushes the policy's weights into the external engine (NCCL broadcast, shared memory,
    a file or an HTTP call: the adapter decides)."""

    def push(self, weights: Iterable[tuple[str, Tensor]], version: int) -> None:
        """Replace the engine's weights with `weights` (full tensors, Hugging Face state-dict
        names); `version` is the trainer's optimizer-step count when they were taken."""
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


class ExternalEngine:
    """An `Engine` whose samples come from a `RemoteSampler`, kept current by a `WeightSync`."""

    def __init__(
        self, sampler: RemoteSampler, sync: WeightSync | None, *, pad_token_id: int
    ) -> None:
        """`sync` None: the caller keeps the remote weights current itself."""
        self.sampler, self.sync, self.pad_token_id = sampler, sync, pad_token_id
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

        The seed is drawn from `generator` (the first per-prompt one when a list), so the run's
        random stream advances the same way whatever the engine; the remote samples themselves
        are only as reproducible as the remote engine's seeding.
        """
        check_prompts(prompt_ids, prompt_mask, group_size)
        first = generator if isinstance(generator, torch.Generator) else generator[0]
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=first))
        prompts = [ids[m.bool()].tolist() for ids, m in zip(prompt_ids, prompt_mask, strict=True)]
        groups = self.sampler.sample(prompts, group_size, params, seed)
        if len(groups) != len(prompts) or any(len(g) != group_size for g in groups):
            raise ValueError(
                f"RemoteSampler.sample returned {[len(g) for g in groups]} completions per "
                f"prompt for {len(prompts)} prompts; expected {group_size} each"
            )
        rows = [c for g in groups for c in g]  # prompt-major, R rows
        return self._to_rollout(prompt_ids, prompt_mask, group_size, rows, params)

    def _to_rollout(
        self,
        prompt_ids: Tensor,
        prompt_mask: Tensor,
        group_size: int,
        rows: list[Completion],
        params: SamplingParams,
    ) -> Rollout:
        width = max([len(c.token_ids) for c in rows] + [1])
        if width > params.max_new_tokens:
            raise ValueError(f"a completion has {width} tokens > max_new_tokens")
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)  # (R, T)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        logprobs = torch.zeros((len(rows), width), dtype=torch.float32)
        for i, c in enumerate(rows):
            if len(c.logprobs) != len(c.token_ids):
                raise ValueError(
                    f"completion {i}: {len(c.token_ids)} tokens but {len(c.logprobs)} log-probs"
                )
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
