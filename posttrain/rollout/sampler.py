"""Sampling parameters, logit filtering, and the per-step token bookkeeping every engine shares.

Shape legend: N prompts, G samples per prompt (group size), R = N·G rollout rows
(prompt-major: row i is sample i % G of prompt i // G), P prompt tokens, T response tokens,
V vocabulary.

The recorded log-probs are log softmax(logits / temperature)[token]: the temperature-scaled
distribution *before* min-new-tokens suppression, top-k and top-p. With top-k and top-p off
they are exactly what the trainer recomputes (`posttrain.models.forward.forward_response`);
with them on, the sampling distribution differs from the recorded one by the filtering, so
keep them off during RL (CORR-3) or accept the mismatch knowingly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from posttrain.algorithms.masked import token_logprobs
from posttrain.rollout.types import FINISH_EOS, FINISH_LENGTH, Rollout


@dataclass(kw_only=True)
class SamplingParams:
    """How to sample responses. Keyword-only; `stop_token_ids` and `pad_token_id` are required
    so a pad or EOS id is never guessed."""

    max_new_tokens: int
    """Response length cap; a response that reaches it without a stop token is FINISH_LENGTH."""
    temperature: float = 1.0
    """Logits are divided by this before the softmax; > 0 (use top_k=1 for greedy)."""
    top_k: int = 0
    """Sample only among the k most likely tokens; 0 = off, 1 = greedy."""
    top_p: float = 1.0
    """Nucleus: sample from the smallest set of tokens whose probability reaches top_p; 1 = off."""
    min_new_tokens: int = 0
    """Stop tokens cannot be sampled before this many response tokens."""
    stop_token_ids: tuple[int, ...]
    """Tokens that end a response (kept in the response mask); may be empty."""
    pad_token_id: int
    """Fills response positions after the stop token (masked out); may equal an EOS id."""

    def __post_init__(self) -> None:
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the offending field."""
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(
                f"SamplingParams.max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}"
            )
        if not (isinstance(self.temperature, int | float) and math.isfinite(self.temperature)):
            raise ValueError(
                f"SamplingParams.temperature must be a finite number, got {self.temperature!r}"
            )
        if self.temperature <= 0:
            raise ValueError(
                f"SamplingParams.temperature must be > 0 (use top_k=1 for greedy), "
                f"got {self.temperature}"
            )
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"SamplingParams.top_k must be an int >= 0, got {self.top_k!r}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.min_new_tokens, int) or not (
            0 <= self.min_new_tokens <= self.max_new_tokens
        ):
            raise ValueError(
                f"SamplingParams.min_new_tokens must be an int in [0, max_new_tokens="
                f"{self.max_new_tokens}], got {self.min_new_tokens!r}"
            )
        if any(t < 0 for t in self.stop_token_ids):
            raise ValueError(
                f"SamplingParams.stop_token_ids must be token ids >= 0, got {self.stop_token_ids}"
            )
        if not isinstance(self.pad_token_id, int) or self.pad_token_id < 0:
            raise ValueError(
                f"SamplingParams.pad_token_id must be a token id >= 0, got {self.pad_token_id!r}"
            )

    def check_vocab(self, vocab_size: int) -> None:
        """Raise if a stop or pad id does not fit a vocabulary of `vocab_size` tokens."""
        bad = [t for t in (*self.stop_token_ids, self.pad_token_id) if t >= vocab_size]
        if bad:
            raise ValueError(
                f"SamplingParams: token ids {bad} (stop_token_ids/pad_token_id) are outside the "
                f"model's vocabulary of {vocab_size}"
            )


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set the logits of tokens outside the top-k and then the top-p nucleus to -inf.

    Top-k keeps every token whose logit is >= the k-th largest (ties at the boundary are kept).
    Top-p then keeps the smallest set of most likely tokens whose probability (renormalised
    after top-k) reaches `top_p`: a token is kept iff the mass strictly before it in descending
    order is < top_p, so the most likely token always survives.

    Args:
        logits: (R, V) temperature-scaled logits.
        top_k: 0 = off. top_p: 1.0 = off.
    Returns:
        (R, V) logits, a new tensor when anything is filtered (the input is never modified).
    """
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (R, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (R, V)
        probs = torch.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # exclusive cumsum, (R, V)
        drop_sorted = mass_before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocab order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


Generators = torch.Generator | Sequence[torch.Generator]
"""One generator for the whole batch, or one per prompt (rows are prompt-major, so prompt i
owns the i-th equal block of rows). Per-prompt generators make a prompt's samples independent
of which other prompts share the batch, e.g. of how a global batch is sharded over ranks."""


def uniforms(rows: int, steps: int, generator: Generators, dtype: torch.dtype) -> Tensor:
    """(steps, rows, 1) uniforms in [0, 1), on the generator's device: from one generator, or
    block by block from per-prompt ones. Drawn in one call per generator, the same numbers
    `steps` successive (rows, 1) draws would give (CPU and CUDA fill element by element)."""
    if isinstance(generator, torch.Generator):
        return torch.rand(
            (steps, rows, 1), generator=generator, device=generator.device, dtype=dtype
        )
    per = rows // len(generator)
    blocks = [
        torch.rand((steps, per, 1), generator=g, device=g.device, dtype=dtype) for g in generator
    ]
    return torch.cat([b.cpu() for b in blocks], dim=1) if len(blocks) > 1 else blocks[0]


def draw(logits: Tensor, u: Tensor) -> Tensor:
    """One token per row from softmax(logits), by inverting the CDF at the uniform `u`.

    The CDF is built in float64 (float32 on mps, which has no float64) so rare tokens keep
    their share; a token with probability 0 (filtered, logit -inf) is never returned, because
    the CDF does not rise at it.

    Args:
        logits: (R, V), -inf on banned tokens, at least one finite entry per row.
        u: (R, 1) uniforms in [0, 1), on the logits' device, in the CDF's dtype.
    Returns:
        (R,) long token ids.
    """
    cdf = torch.softmax(logits.to(u.dtype), dim=-1).cumsum(dim=-1)  # (R, V)
    total = cdf[:, -1:]  # (R, 1), 1 up to rounding
    x = u * total
    # u < 1 already; this keeps rounding in the product from landing on the total itself.
    x = torch.minimum(x, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, x, right=True).squeeze(-1)  # first index with cdf > x


class DecodeState:
    """Token bookkeeping for R rows decoded together; every engine drives one of these.

    Each `step(logits)` samples one token per row from the last-position logits, records its
    log-prob, and marks rows that emitted a stop token as finished. Finished rows stay in the
    batch (their later tokens are pad, masked, log-prob 0), so engines need no reindexing.

    Randomness: at the first sampled step, max_new_tokens uniforms per row are drawn at once
    (row r's draw for step t is the t-th of its prompt's block), whether or not rows stop
    early; greedy decoding (top_k = 1) draws none. So the generator is consumed identically
    whatever the engine and whatever was sampled, and two engines that produce the same
    logits produce the same Rollout. The uniforms cross from the generator's device once, so
    a CPU generator can drive a GPU model.
    """

    def __init__(
        self,
        num_rows: int,
        params: SamplingParams,
        generator: Generators,
        device: torch.device | str,
    ) -> None:
        self.params = params
        self.generator = generator
        max_t = params.max_new_tokens
        self.tokens = torch.full(
            (num_rows, max_t), params.pad_token_id, dtype=torch.long, device=device
        )  # (R, T_max)
        self.mask = torch.zeros((num_rows, max_t), dtype=torch.bool, device=device)
        self.logprobs = torch.zeros((num_rows, max_t), dtype=torch.float32, device=device)
        self.finished = torch.zeros(num_rows, dtype=torch.bool, device=device)  # (R,)
        self.stop_ids = torch.tensor(params.stop_token_ids, dtype=torch.long, device=device)
        self.num_steps = 0
        self._uniforms: Tensor | None = None  # (T_max, R, 1), drawn at the first sampled step

    def step(self, logits: Tensor) -> Tensor:
        """Sample the next token of every row from `logits` (R, V); returns the tokens (R,)."""
        p, t = self.params, self.num_steps
        if t >= p.max_new_tokens:
            raise RuntimeError(f"DecodeState.step: already decoded max_new_tokens={t} tokens")
        logits = logits.float()
        scaled = logits / p.temperature if p.temperature != 1.0 else logits
        sample_logits = scaled
        if t < p.min_new_tokens and self.stop_ids.numel():
            sample_logits = scaled.index_fill(-1, self.stop_ids, float("-inf"))
        sample_logits = filter_logits(sample_logits, p.top_k, p.top_p)
        if p.top_k == 1:
            new = sample_logits.argmax(dim=-1)  # greedy: no randomness consumed
        else:
            if self._uniforms is None:
                # mps has no float64: its CDF (and so its uniforms) are float32.
                wide = torch.float32 if logits.device.type == "mps" else torch.float64
                rows = self.tokens.shape[0]
                drawn = uniforms(rows, p.max_new_tokens, self.generator, wide)
                self._uniforms = drawn.to(logits.device)
            new = draw(sample_logits, self._uniforms[t])  # (R,)
        # The recorded log-prob is of the unfiltered temperature-scaled distribution, computed
        # with the trainer's own formula so the two agree to float error.
        lp = token_logprobs(logits.unsqueeze(1), new.unsqueeze(1), p.temperature).squeeze(1)
        alive = ~self.finished
        self.tokens[:, t] = torch.where(alive, new, p.pad_token_id)
        self.mask[:, t] = alive
        self.logprobs[:, t] = torch.where(alive, lp, 0.0)
        if self.stop_ids.numel():
            self.finished |= alive & torch.isin(new, self.stop_ids)
        self.num_steps = t + 1
        return self.tokens[:, t]

    def done(self) -> bool:
        """True when every row has finished or max_new_tokens tokens were decoded."""
        return self.num_steps >= self.params.max_new_tokens or bool(self.finished.all())

    def to_rollout(self, prompt_ids: Tensor, prompt_mask: Tensor, group_size: int) -> Rollout:
        """The Rollout of the decoded rows; prompts (N, P) are repeated G times, prompt-major."""
        t = self.num_steps
        num_rows = self.tokens.shape[0]
        finish = torch.where(self.finished, FINISH_EOS, FINISH_LENGTH).long()  # (R,)
        group_ids = torch.arange(num_rows, device=finish.device) // group_size
        return Rollout(
            prompt_ids=prompt_ids.repeat_interleave(group_size, dim=0),
            prompt_mask=prompt_mask.bool().repeat_interleave(group_size, dim=0),
            response_ids=self.tokens[:, :t].clone(),
            response_mask=self.mask[:, :t].clone(),
            logprobs=self.logprobs[:, :t].clone(),
            finish_reason=finish,
            group_ids=group_ids,
        )


def check_prompts(prompt_ids: Tensor, prompt_mask: Tensor, group_size: int) -> None:
    """Raise a clear error unless prompts are (N, P) long, left-padded, with a real token each."""
    if prompt_ids.dim() != 2 or prompt_ids.shape[1] == 0:
        raise ValueError(f"prompt_ids must be (N, P) with P >= 1, got {tuple(prompt_ids.shape)}")
    if prompt_mask.shape != prompt_ids.shape:
        raise ValueError(
            f"prompt_mask {tuple(prompt_mask.shape)} must match prompt_ids "
            f"{tuple(prompt_ids.shape)}"
        )
    if prompt_ids.dtype != torch.long:
        raise ValueError(f"prompt_ids must be torch.long, got {prompt_ids.dtype}")
    if not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    if not bool(prompt_mask[:, -1].all()):
        raise ValueError(
            "prompt_mask must be left-padded: its last column must be all True (every prompt "
            "needs at least one real token, and padding goes on the left)"
        )
