"""Typed configs of the training stages. Defaults live here and only here.

Every field has a one-line docstring (shown by `posttrain <stage> --help`); every section has
one `validate()` that raises with the field's name. A recipe YAML and `--section.key=value`
overrides fill them (see `posttrain.config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class ModelConfig:
    """Which policy to train and where its weights come from."""

    spec: str = "tiny:tiny"
    """"tiny:<size>" (fresh from a config: tiny ≈1M, small ≈10M), "sorting:<n>" (the lecture-17
    non-autoregressive sorting model), a local HF model directory,
    a .gguf file, or "smollm2-135m-instruct"."""
    init_from: str | None = None
    """A model directory written by an earlier stage (its `final/`), loaded instead of `spec`."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Parameter dtype. fp32 on CPU; bf16 is for GPUs."""
    trust_remote_code: bool = False
    """Run a model directory's own Python code. Off unless you trust the directory."""
    seed: int = 0
    """Seed of a freshly built tiny model's weights."""

    def validate(self) -> None:
        if not self.spec and not self.init_from:
            raise ValueError("spec: give a model spec or init_from")


@dataclass
class TaskConfig:
    """The task: prompts and the verifier. Fields not used by the chosen task are ignored."""

    name: str = "sorting"
    """Registered task (posttrain.tasks.registry): sorting, equations, arithmetic, jsonl_math,
    code (sandboxed Python), preference (hidden annotators: the rm, dpo and rlhf stages'
    default) or corpus (sorting and preference text interleaved, for pre-training)."""
    n: int = 5
    """sorting and corpus: how many numbers per sorting prompt."""
    low: int = 0
    """sorting: smallest number."""
    high: int = 9
    """sorting: largest number."""
    reward: str = "partial"
    """sorting: exact (all or nothing), partial (fraction of positions), inclusion (lecture's)."""
    digits: int = 2
    """arithmetic: digits per operand."""
    path: str | None = None
    """jsonl_math: the question/answer JSONL file."""
    num_eval: int = 200
    """Held-out prompts (disjoint from training prompts)."""
    seed: int = 0
    """Seed of the task's train/eval split."""
    chat: bool = False
    """Wrap prompts in the tokenizer's chat template (instruct models such as SmolLM2)."""

    def validate(self) -> None:
        if self.num_eval < 1:
            raise ValueError(f"num_eval: must be >= 1, got {self.num_eval}")
        if self.high < self.low:
            raise ValueError(f"high: {self.high} is below low={self.low}")


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then a constant or cosine learning rate."""

    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    beta1: float = 0.9
    """AdamW β1."""
    beta2: float = 0.99
    """AdamW β2."""
    warmup_steps: int = 0
    """Linear warm-up from 0 over this many optimizer steps."""
    schedule: Literal["constant", "cosine"] = "constant"
    """Learning-rate shape after warm-up."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip (0 disables). The logged norm is the pre-clip norm."""

    def validate(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"lr: must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps: must be >= 0, got {self.warmup_steps}")
        if self.max_grad_norm < 0:
            raise ValueError(f"max_grad_norm: must be >= 0, got {self.max_grad_norm}")


@dataclass
class RunConfig:
    """Where outputs go, and checkpointing."""

    dir: str = "runs/default"
    """Run directory: config, metrics.jsonl, checkpoints/, final/ (the trained model)."""
    resume: str | None = None
    """None: start fresh (refuses a non-empty run dir); "auto": resume if a checkpoint exists;
    "must" or a checkpoint path: resume or fail."""
    save_every: int = 50
    """Checkpoint every this many steps (and at the end)."""
    keep_last: int = 2
    """Complete checkpoints kept; older ones are deleted only after a newer one is complete."""
    allow_config_change: list[str] = field(default_factory=list)
    """Dotted fields that may differ from the checkpoint's config on resume (logged)."""
    threads: int = 0
    """torch CPU threads (0: leave torch's default)."""
    log_rollouts_every: int = 10
    """Write sampled rollouts (text, per-token log-probs, advantages, rewards) to
    rollouts.jsonl every this many steps (0: never)."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms(True) (slower; for bit-exact checks)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the model and batches live: auto (CUDA when available, else CPU), cpu or cuda.
    Under torchrun each rank takes cuda:<LOCAL_RANK>."""
    precision: Literal["fp32", "bf16-autocast"] = "fp32"
    """fp32, or bf16 autocast for forward passes (sampling, reference, trainer) with fp32 master
    weights, gradients and AdamW state. bf16 is for GPUs; it loosens the sampler/trainer
    log-prob agreement (health.max_logprob_gap_bf16)."""
    fsdp: bool = False
    """Shard parameters, gradients and optimizer state over ranks with FSDP2 (fully_shard per
    decoder block), for models that do not fit one device. The reference is sharded too; a
    value head stays replicated. Checkpoints keep the single-process format."""

    def validate(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device: expected auto, cpu or cuda, got {self.device!r}")
        if self.precision not in ("fp32", "bf16-autocast"):
            raise ValueError(f"precision: expected fp32 or bf16-autocast, got {self.precision!r}")
        if self.save_every < 1:
            raise ValueError(f"save_every: must be >= 1, got {self.save_every}")
        if self.keep_last < 1:
            raise ValueError(f"keep_last: must be >= 1, got {self.keep_last}")


@dataclass
class LMConfig:
    """Pre-training (loss on every token) or SFT (loss on response tokens only)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy: which model and where its weights come from."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """The task: prompts, held-out split and verifier."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule."""
    run: RunConfig = field(default_factory=RunConfig)
    """Run directory, checkpoints and resume."""
    objective: Literal["pretrain", "sft"] = "sft"
    """pretrain: next-token loss on prompt and response; sft: on response tokens only."""
    demonstrations: Literal["correct", "format"] = "correct"
    """correct: the task's right answers; format: well-formed but unskilled answers (e.g. a
    random permutation for sorting), to teach the format and leave the skill to RL."""
    loss_agg: str = "token_mean"
    """How token losses reduce (posttrain.algorithms.aggregation): token_mean (mean over the
    batch's loss tokens), seq_mean_token_mean (per-sequence mean), token_sum_norm (sum over a
    constant: batch × longest sequence)."""
    steps: int = 300
    """Optimizer steps."""
    batch_size: int = 64
    """Sequences per optimizer step."""
    micro_batch_size: int = 64
    """Sequences per forward/backward (gradient accumulation when smaller)."""
    eval_every: int = 0
    """Evaluate on the held-out split every this many steps (0: only at the end)."""
    seed: int = 0
    """Seed of data order."""

    def validate(self) -> None:
        for name in ("steps", "batch_size", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"micro_batch_size: {self.micro_batch_size} does not divide batch_size="
                f"{self.batch_size}; pick a divisor"
            )


@dataclass
class SamplingConfig:
    """How rollouts are sampled. Trainer log-probs use the same temperature."""

    temperature: float = 1.0
    """Softmax temperature (> 0)."""
    top_k: int = 0
    """Keep the k most likely tokens (0: off). Off during RL keeps the ratio exact."""
    top_p: float = 1.0
    """Nucleus sampling mass (1.0: off)."""
    max_new_tokens: int = 0
    """Response budget including the stop token (0: the task's own budget + 1)."""
    min_new_tokens: int = 0
    """Stop tokens are suppressed before this many tokens."""

    def validate(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature: must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p}")
        if self.top_k < 0 or self.max_new_tokens < 0 or self.min_new_tokens < 0:
            raise ValueError("top_k, max_new_tokens and min_new_tokens must be >= 0")


@dataclass
class AlgoConfig:
    """The algorithm: a preset, and any knob overridden on top of it (None keeps the preset's)."""

    preset: str = "grpo"
    """reinforce, reinforce_baseline, actor_critic, ppo, grpo, dr_grpo or rloo."""
    advantage: str | None = None
    """Advantage estimator: none, mean, batch_mean, group, dr_grpo, rloo, max, value, gae."""
    loss: str | None = None
    """Policy loss: naive (−A·log π), unclipped (−A·ratio), clipped (PPO)."""
    loss_agg: str | None = None
    """token_mean, seq_mean_token_mean, seq_mean_token_sum, token_sum_norm."""
    epochs: int | None = None
    """K inner epochs over each rollout batch (importance ratio vs the sampling policy)."""
    clip_eps_low: float | None = None
    """PPO clip: ratio floor 1 − clip_eps_low. Usually 0.1 to 0.3."""
    clip_eps_high: float | None = None
    """PPO clip: ratio ceiling 1 + clip_eps_high (≥ clip_eps_low widens exploration)."""
    kl_placement: Literal["none", "loss", "reward"] | None = None
    """Where the KL to the reference goes: nowhere, a loss term, or a per-token reward."""
    kl_estimator: Literal["k1", "k2", "k3"] | None = None
    """KL estimator per token (k3 is unbiased and ≥ 0)."""
    kl_coef: float | None = None
    """β, the KL coefficient (initial value when adaptive); 0 disables the reference."""
    kl_target: float | None = None
    """Adaptive β (Ziegler et al. 2019): target KL per sequence; None keeps β fixed."""
    kl_horizon: int = 10000
    """Adaptive β horizon in samples."""
    ref_refresh_every: int = 0
    """Copy the policy into the reference every this many steps (0: never)."""
    value_coef: float = 0.5
    """Weight of the value loss (actor-critic, PPO)."""
    value_clip_eps: float | None = None
    """Clip value updates to ± this around the rollout's values (None: unclipped)."""
    gamma: float | None = None
    """GAE discount γ."""
    lam: float | None = None
    """GAE λ (1: Monte Carlo return minus V; 0: one-step TD residual)."""
    adv_eps: float = 1e-4
    """GRPO's ε in (r − μ)/(σ + ε); the lecture's 1e-4."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient (entropy is always logged)."""

    def validate(self) -> None:
        from posttrain.algorithms.presets import PRESETS

        if self.preset not in PRESETS:
            raise ValueError(f"preset: unknown {self.preset!r}; choose from {sorted(PRESETS)}")
        for name in ("clip_eps_low", "clip_eps_high"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1:
                raise ValueError(f"{name}: must be in (0, 1), got {value}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs: must be >= 1, got {self.epochs}")
        if self.kl_coef is not None and self.kl_coef < 0:
            raise ValueError(f"kl_coef: must be >= 0, got {self.kl_coef}")
        if self.kl_target is not None and (self.kl_target <= 0 or self.kl_horizon <= 0):
            raise ValueError("kl_target and kl_horizon: must be > 0 for an adaptive KL")
        for name in ("gamma", "lam"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name}: must be in [0, 1], got {value}")


@dataclass
class BatchConfig:
    """The batch plan: prompts × group → mini-batches → micro-batches."""

    prompts_per_step: int = 8
    """Distinct prompts per rollout batch."""
    group_size: int = 8
    """Samples per prompt (G). Group estimators need G >= 2."""
    mini_batches: int = 1
    """Optimizer steps per inner epoch (the rollout batch is split into this many)."""
    micro_batch_size: int = 64
    """Rollouts per forward/backward; gradients accumulate with the mini-batch's normaliser."""

    def validate(self) -> None:
        for name in ("prompts_per_step", "group_size", "mini_batches", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")


@dataclass
class HealthConfig:
    """Guards that stop a run going bad rather than letting it drift."""

    max_nonfinite_steps: int = 3
    """Consecutive steps with a non-finite loss or gradient (each skipped) before stopping."""
    max_logprob_gap: float = 1e-3
    """Stop when mean |sampler − trainer| log-prob on the first inner epoch exceeds this
    (fp32 weights and forward passes)."""
    max_logprob_gap_bf16: float = 5e-2
    """The same guard when forward passes run in bf16 (run.precision=bf16-autocast or
    model.dtype=bfloat16): the sampler's one-token decode and the trainer's full forward round
    differently (a bf16 logit near 20 is only resolved to 0.125)."""
    stop_when_all_truncated: bool = True
    """Stop when every response of a batch hit max_new_tokens without a stop token."""
    max_unscorable_frac: float = 0.1
    """Stop when more than this fraction of a batch could not be judged (verifier ERROR): an
    outage must not turn into a batch of zero rewards."""


@dataclass
class RLConfig:
    """One policy-gradient loop: every algorithm is a preset of its knobs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy: which model and where its weights come from."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """The task: prompts, held-out split and verifier."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4))
    """Optimizer and learning-rate schedule."""
    run: RunConfig = field(default_factory=RunConfig)
    """Run directory, checkpoints and resume."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How rollouts are sampled."""
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    """The algorithm: preset and knob overrides."""
    batch: BatchConfig = field(default_factory=BatchConfig)
    """The batch plan."""
    health: HealthConfig = field(default_factory=HealthConfig)
    """Guards that stop a run going bad."""
    steps: int = 200
    """Rollout batches (outer steps)."""
    eval_every: int = 0
    """Evaluate on the held-out split every this many steps (0: only before and after)."""
    eval_examples: int = 200
    """Held-out prompts per evaluation (greedy)."""
    seed: int = 0
    """Seed of prompt order, sampling and shuffling."""

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps: must be >= 1, got {self.steps}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every: must be >= 0, got {self.eval_every}")
