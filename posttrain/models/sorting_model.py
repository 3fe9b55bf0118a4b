"""The small non-autoregressive model of the CS336 lecture-17 sorting example.

Shape legend: B batch, L sequence length (prompt + response so far), P prompt length,
R response length, D embedding dim, V vocabulary.

The model reads a fixed-length prompt x_0..x_{P-1} and scores all R response positions at once:

    e_i   = E[x_i]                             token embedding, E (V, D)
    z     = Σ_i e_i · A_i                      one vector per prompt, A (P, D, D)
    h_t   = z · C_t                            one vector per response position, C (R, D, D)
    logit_t = h_t · Eᵀ / √D                    tied output embedding

It never looks at response tokens, so sampling it token by token with a full recompute (the
`RecomputeEngine`) samples each position independently, and the standard causal-LM slicing
("logits at position j score token j+1") applies because `forward` places logit_t at position
P − 1 + t.

In the lecture the tokens are the numbers themselves (vocab = the number range, prompt = the n
numbers): `SortingModel(vocab_size=10, embedding_dim=…, prompt_length=n, response_length=n)`.
`build_sorting_model` instead sizes it for the plain sorting task under the character-level task
tokenizer (prompt "<bos>31415=", response "11345<eos>"), so it plugs into the same trainer.

Scaling (ours): A_i ~ N(0, 1/(P·D)), C_t ~ N(0, 1/D), E ~ N(0, 1) and the 1/√D on the logits keep
every stage at unit variance, so the random-init policy has logits of std ≈ 1 and explores. An
unscaled product of unit-variance vectors would give logits of std ≈ √D·√P, i.e. an almost
deterministic initial policy.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from posttrain.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, TASK_ALPHABET


@dataclass
class SortingModelConfig:
    """What generic code may inspect on a `SortingModel` (mirrors a few `PretrainedConfig` names)."""

    vocab_size: int
    """V, the number of token ids."""
    embedding_dim: int
    """D, the width of the embedding and of every per-position matrix."""
    prompt_length: int
    """P, the fixed prompt length (no padding)."""
    response_length: int
    """R, the number of response positions scored."""
    prompt_end_id: int | None = None
    """If set, `forward` checks that the last prompt token (position P − 1) is this id, which
    catches a prompt of the wrong length (e.g. with or without <bos>)."""
    pad_token_id: int | None = None
    """Pad id of the tokenizer the model is used with (informational)."""
    bos_token_id: int | None = None
    """Bos id of the tokenizer the model is used with (informational)."""
    eos_token_id: int | None = None
    """Eos id of the tokenizer the model is used with (informational)."""
    output_ids: tuple[int, ...] | None = None
    """Token ids the model may emit (the lecture's model outputs numbers only); every other
    logit of a response position is −inf. None allows the whole vocabulary."""
    use_cache: bool = False
    """Always False: the model has no KV cache (it recomputes from the prompt)."""
    tie_word_embeddings: bool = True
    """Always True: logits use the input embedding matrix."""

    @property
    def hidden_size(self) -> int:
        """D, so a `ValueHead(model.config.hidden_size)` fits the hidden states."""
        return self.embedding_dim


@dataclass
class SortingModelOutput:
    """`forward`'s result, laid out like a causal LM's."""

    logits: torch.Tensor
    """(B, L, V): logits for response position t at sequence position P − 1 + t, zeros elsewhere."""
    hidden_states: tuple[torch.Tensor, ...] | None = None
    """With `output_hidden_states=True`: a 1-tuple holding h (B, L, D), placed like the logits."""


class SortingModel(nn.Module):
    """The lecture's non-autoregressive sorting model (see the module docstring for the math).

    Parameters: `embedding.weight` (V, D), `encode_weights` (P, D, D), `decode_weights` (R, D, D).
    """

    supports_kv_cache = False
    """The sampler must recompute from the full sequence each step (there is no cache)."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        prompt_length: int,
        response_length: int,
        seed: int | None = 0,
        *,
        prompt_end_id: int | None = None,
        pad_token_id: int | None = None,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        output_ids: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        for name, value in [
            ("vocab_size", vocab_size),
            ("embedding_dim", embedding_dim),
            ("prompt_length", prompt_length),
            ("response_length", response_length),
        ]:
            if value <= 0:
                raise ValueError(f"SortingModel: {name} must be positive, got {value}")
        self.config = SortingModelConfig(
            vocab_size=vocab_size,
            embedding_dim=embedding_dim,
            prompt_length=prompt_length,
            response_length=response_length,
            prompt_end_id=prompt_end_id,
            pad_token_id=pad_token_id,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            output_ids=tuple(output_ids) if output_ids is not None else None,
        )
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.encode_weights = nn.Parameter(torch.empty(prompt_length, embedding_dim, embedding_dim))
        self.decode_weights = nn.Parameter(
            torch.empty(response_length, embedding_dim, embedding_dim)
        )
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            self.embedding.weight.normal_(0.0, 1.0, generator=generator)
            self.encode_weights.normal_(
                0.0, 1.0 / math.sqrt(prompt_length * embedding_dim), generator=generator
            )
            self.decode_weights.normal_(0.0, 1.0 / math.sqrt(embedding_dim), generator=generator)

    @property
    def device(self) -> torch.device:
        """Where the parameters live."""
        return self.embedding.weight.device

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        **ignored: object,
    ) -> SortingModelOutput:
        """input_ids (B, L) with L ≥ P -> logits (B, L, V).

        Only input_ids[:, :P] is read. Position P − 1 + t holds the logits of response token t
        (t < R, and only where P − 1 + t < L); every other position holds zeros. `position_ids`
        and extra keywords (`use_cache`, `return_dict`, ...) are accepted and ignored so the
        model drops into code written for causal LMs. `attention_mask` (B, L) is only checked:
        the prompt part must be all ones (fixed-length prompts, no padding).
        """
        cfg = self.config
        batch, length = input_ids.shape
        if length < cfg.prompt_length:
            raise ValueError(
                f"SortingModel: input has {length} tokens, fewer than prompt_length="
                f"{cfg.prompt_length}"
            )
        prompt = input_ids[:, : cfg.prompt_length]  # (B, P)
        if attention_mask is not None and not bool(attention_mask[:, : cfg.prompt_length].all()):
            raise ValueError(
                "SortingModel: attention_mask has padding inside the first prompt_length="
                f"{cfg.prompt_length} positions; this model needs fixed-length, unpadded prompts"
            )
        if cfg.prompt_end_id is not None and not bool((prompt[:, -1] == cfg.prompt_end_id).all()):
            raise ValueError(
                f"SortingModel: token at position prompt_length-1={cfg.prompt_length - 1} is not "
                f"prompt_end_id={cfg.prompt_end_id} in every row; the prompts do not have length "
                f"{cfg.prompt_length} (with/without <bos>?)"
            )

        table = self.embedding.weight  # (V, D)
        embedded = table[prompt]  # (B, P, D)
        encoded = torch.einsum("bpd,pde->be", embedded, self.encode_weights)  # (B, D)
        decoded = torch.einsum("bd,rde->bre", encoded, self.decode_weights)  # (B, R, D)
        scores = decoded @ table.T / math.sqrt(cfg.embedding_dim)  # (B, R, V)
        if cfg.output_ids is not None:
            banned = torch.ones(cfg.vocab_size, dtype=torch.bool, device=scores.device)
            banned[list(cfg.output_ids)] = False
            scores = scores.masked_fill(banned, float("-inf"))

        # Place response position t at sequence position P - 1 + t, as far as L allows.
        start = cfg.prompt_length - 1
        count = min(cfg.response_length, length - start)
        logits = scores.new_zeros(batch, length, cfg.vocab_size)  # (B, L, V)
        logits[:, start : start + count] = scores[:, :count]
        hidden_states = None
        if output_hidden_states:
            hidden = decoded.new_zeros(batch, length, cfg.embedding_dim)  # (B, L, D)
            hidden[:, start : start + count] = decoded[:, :count]
            hidden_states = (hidden,)
        return SortingModelOutput(logits=logits, hidden_states=hidden_states)

    def save_pretrained(self, directory: str | Path, **ignored: object) -> None:
        """Write `config.json` (model_type "posttrain_sorting") and `model.safetensors`, so a
        run's `final/` works for this model as for a transformers one."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {"model_type": MODEL_TYPE, **dataclasses.asdict(self.config)}
        (directory / "config.json").write_text(json.dumps(config, indent=2))
        weights = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(weights, str(directory / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> SortingModel:
        """Load what `save_pretrained` wrote (strict: every weight present, none extra)."""
        directory = Path(directory)
        config = json.loads((directory / "config.json").read_text())
        if config.pop("model_type", None) != MODEL_TYPE:
            raise ValueError(f"{directory}/config.json: not a {MODEL_TYPE} model")
        for name in ("use_cache", "tie_word_embeddings"):  # fixed, not constructor arguments
            config.pop(name, None)
        model = cls(seed=None, **config)
        model.load_state_dict(load_file(str(directory / "model.safetensors")), strict=True)
        return model


MODEL_TYPE = "posttrain_sorting"
"""`model_type` in a saved SortingModel's config.json."""


def build_sorting_model(
    n: int = 5, embedding_dim: int = 64, seed: int = 0, *, with_bos: bool = True
) -> SortingModel:
    """A `SortingModel` for the plain sorting task of n single-digit numbers under the task
    tokenizer: prompt "<bos>31415=" (P = n + 2, or n + 1 without bos), response "11345<eos>"
    (R = n + 1). The last prompt token is checked to be '='.
    """
    if n <= 0:
        raise ValueError(f"build_sorting_model: n must be positive, got {n}")
    return SortingModel(
        vocab_size=len(TASK_ALPHABET),
        embedding_dim=embedding_dim,
        prompt_length=n + 1 + int(with_bos),
        response_length=n + 1,
        seed=seed,
        prompt_end_id=TASK_ALPHABET.index("="),
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        output_ids=tuple(TASK_ALPHABET.index(d) for d in "0123456789") + (EOS_ID,),
    )
