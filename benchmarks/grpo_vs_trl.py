"""GRPO step time on the fixed CPU workload W (issue 8): posttrain against TRL's GRPOTrainer.

W: `LlamaForCausalLM` from config (vocab 16, hidden 128, 4 layers, 4 heads, MLP 512, tied
embeddings, fp32, SDPA, `torch.manual_seed(0)` init); prompts `<bos> d1..d6 =` (digits uniform);
reward = fraction of the first 6 response tokens equal to the sorted digits; per step 8 prompts
× 8 samples of exactly 10 new tokens (EOS suppressed), temperature 1, one AdamW step
(lr 5e-4), no reference model, `torch.set_num_threads(2)`.

Both trainers run in one process, interleaved step by step: TRL's own `train()` loop drives,
and a callback runs one posttrain step after each TRL step, so background load hits both
alike. Each step is split into phases by timing the same kinds of calls on both sides:
generation (TRL: `model.generate`; posttrain: `engine.generate`), log-probs (the trainer's
forward: TRL `_get_per_token_logps_and_entropies`, posttrain `forward_response`), backward
(`Tensor.backward`), optimizer (`clip_grad_norm_` + `Optimizer.step`), and the rest.

    .venv/bin/python benchmarks/grpo_vs_trl.py                # 30 timed steps each
    .venv/bin/python benchmarks/grpo_vs_trl.py --smoke        # 2 steps, seconds (a test)
    .venv/bin/python benchmarks/grpo_vs_trl.py --no-trl       # posttrain alone

TRL is the `bench` extra (`pip install trl`), never a posttrain dependency; without it the
script times posttrain alone and says so. Writes benchmarks/results/grpo_vs_trl.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import transformers

if __package__ in (None, ""):  # run as a script from anywhere: make `posttrain` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from posttrain.models.loading import save_pretrained_pair  # noqa: E402
from posttrain.rollout.types import Rollout  # noqa: E402
from posttrain.tasks.base import Example, Status, Task, Verdict  # noqa: E402
from posttrain.train.configs import RLConfig  # noqa: E402
from posttrain.train.policy_gradient import PolicyGradientTrainer  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "grpo_vs_trl.json"
W_VOCAB = ("<pad>", "<bos>", "<eos>", "<unk>", *"0123456789", "=")
"""W's tokens: ids 0..14 (the model has 16 embedding rows; id 15 is never a prompt token)."""
DIGIT0, N_DIGITS, NEW_TOKENS, PROMPTS, GROUP, LR = 4, 6, 10, 8, 8, 5e-4


# ----------------------------------------------------------------------------- workload W
def w_model(layers: int = 4) -> transformers.LlamaForCausalLM:
    """W's policy, freshly initialised with `torch.manual_seed(0)` (~1.05M parameters)."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=16, hidden_size=128, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=4, intermediate_size=512, hidden_act="silu", rms_norm_eps=1e-6,
        max_position_embeddings=64, tie_word_embeddings=True, attn_implementation="sdpa",
        pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    return transformers.LlamaForCausalLM(cfg).to(torch.float32)


def w_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """Word-level W tokenizer: "3 1 4 1 5 9 =" → [<bos>, 7, 5, 8, 5, 9, 13, 14]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    backend = Tokenizer(models.WordLevel({t: i for i, t in enumerate(W_VOCAB)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", 1)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>",
    )


def w_digits(count: int, seed: int) -> list[list[int]]:
    """`count` prompts' digits, uniform 0-9, from their own seeded stream."""
    rng = random.Random(seed)
    return [[rng.randrange(10) for _ in range(N_DIGITS)] for _ in range(count)]


def w_text(digits: list[int]) -> str:
    """The prompt text (the tokenizer adds <bos>)."""
    return " ".join(map(str, digits)) + " ="


def w_reward(digits: torch.Tensor, response_ids: torch.Tensor) -> torch.Tensor:
    """(B,) fraction of the first 6 response tokens equal to the sorted digits.

    digits: (B, 6) ints 0-9. response_ids: (B, T) token ids (digit d is token d + 4).
    """
    target = digits.sort(dim=1).values + DIGIT0  # (B, 6)
    got = response_ids[:, :N_DIGITS]
    return (got == target[:, : got.shape[1]]).float().sum(dim=1) / N_DIGITS


class WReward:
    """posttrain `RewardSource` for W: scores token ids, so no text round trip."""

    def __call__(self, examples, texts, rollout: Rollout) -> tuple[torch.Tensor, Counter]:
        digits = torch.tensor([ex.meta["digits"] for ex in examples])
        rewards = w_reward(digits, rollout.response_ids)
        return rewards, Counter({Status.OK.value: len(examples)})


def w_task(train: int = 4096, held_out: int = 256) -> Task:
    """W's prompts as a posttrain Task (the verifier is unused: `WReward` scores ids)."""

    def example(d: list[int]) -> Example:
        return Example(w_text(d), " ".join(map(str, sorted(d))), {"digits": d})

    return Task(
        name="w_sort6",
        train=[example(d) for d in w_digits(train, seed=1)],
        eval=[example(d) for d in w_digits(held_out, seed=2)],
        verify=lambda ex, text: Verdict(0.0, Status.OK),
        max_new_tokens=NEW_TOKENS,
    )


def posttrain_trainer(model_dir: Path, run_dir: Path, lr: float = LR) -> PolicyGradientTrainer:
    """posttrain's GRPO on W: the default `grpo` preset with kl_coef 0 (no reference), and the
    default engine and forward (`LlamaEngine` and `fast_llama` for this Llama model)."""
    cfg = RLConfig()
    cfg.model.spec = str(model_dir)
    cfg.run.dir, cfg.run.save_every, cfg.run.log_rollouts_every = str(run_dir), 10**9, 0
    cfg.steps = 10**6  # never reached: no final checkpoint inside the timed loop
    cfg.sampling.max_new_tokens = cfg.sampling.min_new_tokens = NEW_TOKENS
    cfg.batch.prompts_per_step, cfg.batch.group_size = PROMPTS, GROUP
    cfg.batch.micro_batch_size = PROMPTS * GROUP
    cfg.algo.preset, cfg.algo.kl_coef = "grpo", 0.0
    cfg.optim.lr = lr
    cfg.health.stop_when_all_truncated = False  # W's responses never stop: that is the point
    return PolicyGradientTrainer(cfg, reward=WReward(), task=w_task())


def save_w_model(directory: Path) -> Path:
    """W's initial model and tokenizer as a directory both trainers load."""
    return save_pretrained_pair(w_model(), w_tokenizer(), directory)


# --------------------------------------------------------------------------------- TRL side
def trl_available() -> bool:
    """Whether the `bench` extra (TRL) is installed."""
    import importlib.util

    return importlib.util.find_spec("trl") is not None


def trl_trainer(model_dir: Path, out_dir: Path, steps: int, callbacks: list, lr: float = LR):
    """TRL's GRPOTrainer on W with the issue's settings (fp32 on CPU, no reference, no
    gradient checkpointing) and a constant learning rate like posttrain's."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    digits = w_digits(4096, seed=1)
    data = Dataset.from_list([{"prompt": w_text(d), "digits": d} for d in digits])

    def reward(prompts, completions, completion_ids, digits, **_):
        ids = torch.tensor([list(c) + [0] * (NEW_TOKENS - len(c)) for c in completion_ids])
        return w_reward(torch.tensor(digits), ids).tolist()

    args = GRPOConfig(
        output_dir=str(out_dir), per_device_train_batch_size=PROMPTS * GROUP,
        num_generations=GROUP, max_completion_length=NEW_TOKENS, temperature=1.0,
        generation_kwargs={"min_new_tokens": NEW_TOKENS}, learning_rate=lr, beta=0.0,
        lr_scheduler_type="constant", bf16=False, use_cpu=True, gradient_checkpointing=False,
        report_to="none", max_steps=steps, logging_steps=10**6, save_strategy="no",
        disable_tqdm=True, seed=0,
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    return GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data,
                       processing_class=tok, callbacks=callbacks)


# ------------------------------------------------------------------------ timing machinery
PHASES = ("generation", "log-probs", "backward", "optimizer")
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
"""wall: what W asks for. cpu: this process's CPU time, a proxy that background load inflates
less; meaningful with --threads 1 only (with 2 threads it also counts OpenMP spinning)."""
clock_fn: Callable[[], float] = time.perf_counter


class PhaseClock:
    """Seconds per phase for whichever side is running (`side`), step by step."""

    def __init__(self) -> None:
        self.side = ""
        self.current: dict[str, float] = defaultdict(float)

    def timed(self, phase: str, fn: Callable) -> Callable:
        """`fn` with its wall time added to `phase` of the running side's current step."""

        def wrapper(*args, **kwargs):
            start = clock_fn()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[phase] += clock_fn() - start

        return wrapper

    def take(self) -> dict[str, float]:
        """The phase times since the last `take`."""
        out, self.current = dict(self.current), defaultdict(float)
        return out


@contextlib.contextmanager
def patched_phases(clock: PhaseClock) -> Iterator[None]:
    """Time backward, gradient clipping and optimizer steps of both sides for the duration."""
    from torch.optim.optimizer import (
        register_optimizer_step_post_hook,
        register_optimizer_step_pre_hook,
    )

    saved = (torch.Tensor.backward, torch.nn.utils.clip_grad_norm_)
    torch.Tensor.backward = clock.timed("backward", saved[0])
    torch.nn.utils.clip_grad_norm_ = clock.timed("optimizer", saved[1])
    started: list[float] = []
    pre = register_optimizer_step_pre_hook(lambda *_: started.append(clock_fn()))

    def post(*_) -> None:
        clock.current["optimizer"] += clock_fn() - started.pop()

    post_handle = register_optimizer_step_post_hook(post)
    try:
        yield
    finally:
        torch.Tensor.backward, torch.nn.utils.clip_grad_norm_ = saved
        pre.remove()
        post_handle.remove()


def peak_gflops(threads: int, size: int = 2048, reps: int = 5) -> float:
    """fp32 matmul throughput of a size² @ size² mm on `threads` threads (best of `reps`)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = math.inf
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def step_flops(config: transformers.PretrainedConfig, side: str) -> float:
    """Matmul FLOPs of one W step (projections and head; attention, <2% here, left out).

    TRL generates from the prompts repeated G times (prefill N·G·P tokens, logits of the
    last position) then 9 single-token steps, and trains on N·G·(P + T) tokens (logits of
    the last T + 1); posttrain prefills the N distinct prompts once, decodes 9 steps, and
    trains on N·P prompt tokens + N·G·(T - 1) response tokens (logits of T per row).
    Backward = 2 × forward.
    """
    h, inter, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    per_token = 2 * layers * (4 * h * h + 3 * h * inter)  # q, k, v, o + gate, up, down
    head = 2 * h * config.vocab_size
    rows, prompt_len = PROMPTS * GROUP, 1 + N_DIGITS + 1
    decode = (NEW_TOKENS - 1) * rows * (per_token + head)
    if side == "trl":
        gen = rows * prompt_len * per_token + rows * head + decode
        fwd = rows * (prompt_len + NEW_TOKENS) * per_token + rows * (NEW_TOKENS + 1) * head
    else:
        gen = PROMPTS * prompt_len * per_token + rows * head + decode
        fwd = (PROMPTS * prompt_len + rows * (NEW_TOKENS - 1)) * per_token
        fwd += rows * NEW_TOKENS * head
    return gen + 3 * fwd


def summarize(records: list[tuple[float, dict[str, float]]]) -> dict[str, object]:
    """Median, min, max seconds per step and the median of each phase (+ the rest)."""
    steps = [s for s, _ in records]
    phases = {p: statistics.median(ph.get(p, 0.0) for _, ph in records) for p in PHASES}
    phases["rest"] = statistics.median(s - sum(ph.get(p, 0.0) for p in PHASES)
                                       for s, ph in records)
    return {"median_s": statistics.median(steps), "min_s": min(steps), "max_s": max(steps),
            "steps": steps, "phases_median_s": phases}


def load_average() -> list[float]:
    """1/5/15-minute load averages (other work on the machine), or [] where unknown."""
    try:
        return list(os.getloadavg())
    except OSError:
        return []


def run(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    """Warm up, then time `args.reps` interleaved steps of each side; returns the records."""
    import posttrain.train.pg_update as pg_update

    clock = PhaseClock()
    model_dir = save_w_model(workdir / "w_model")
    pt = posttrain_trainer(model_dir, workdir / "posttrain_run")
    pt.engine.generate = clock.timed("generation", pt.engine.generate)
    forward_response = pg_update.forward_response
    pg_update.forward_response = clock.timed("log-probs", forward_response)
    total = args.warmup + args.reps
    records: dict[str, list] = {"trl": [], "posttrain": []}

    def posttrain_step() -> None:
        clock.take()
        start = clock_fn()
        pt.step()
        records["posttrain"].append((clock_fn() - start, clock.take()))

    try:
        with patched_phases(clock):
            if args.trl:
                from transformers import TrainerCallback

                class Interleave(TrainerCallback):
                    """After each TRL step, one posttrain step; TRL's clock excludes it."""

                    resumed = 0.0

                    def on_train_begin(self, *_, **__):
                        clock.take()
                        self.resumed = clock_fn()

                    def on_step_end(self, *_, **__):
                        records["trl"].append((clock_fn() - self.resumed, clock.take()))
                        posttrain_step()
                        self.resumed = clock_fn()

                trl = trl_trainer(model_dir, workdir / "trl_run", total, [Interleave()])
                trl.model.generate = clock.timed("generation", trl.model.generate)
                trl._get_per_token_logps_and_entropies = clock.timed(
                    "log-probs", trl._get_per_token_logps_and_entropies
                )
                trl.train()
            else:
                for _ in range(total):
                    posttrain_step()
    finally:
        pg_update.forward_response = forward_response
    return {side: recs[args.warmup :] for side, recs in records.items()}, pt.policy.config


def describe(results: dict[str, object]) -> str:
    """The human-readable summary printed at the end."""
    lines = [
        f"W on {results['threads']} threads, peak {results['peak_gflops']:.1f} GFLOP/s "
        f"(2048² mm), load average {results['load_average_before']} → "
        f"{results['load_average_after']}",
    ]
    for side in ("trl", "posttrain"):
        r = results.get(side)
        if not r:
            continue
        ph = ", ".join(f"{k} {v * 1e3:.0f}" for k, v in r["phases_median_s"].items())
        lines.append(
            f"  {side:9s} {r['median_s'] * 1e3:7.1f} ms/step median (range "
            f"{r['min_s'] * 1e3:.1f}–{r['max_s'] * 1e3:.1f}), {r['fraction_of_peak']:.0%} of "
            f"peak; phases (ms, medians): {ph}"
        )
    if "speedup_median" in results:
        lines.append(f"  posttrain speed-up over TRL (ratio of medians): "
                     f"{results['speedup_median']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the comparison, print the summary and write the JSON; returns the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=30, help="timed steps per side (interleaved)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per side first")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (W: 2)")
    ap.add_argument("--no-trl", dest="trl", action="store_false", help="time posttrain alone")
    ap.add_argument("--smoke", action="store_true", help="1 warm-up + 1 timed step each")
    ap.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="see CLOCKS")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    args = ap.parse_args(argv)
    if args.smoke:
        args.reps, args.warmup = 1, 1
    if args.trl and not trl_available():
        print("TRL is not installed (pip install 'posttrain[bench]'): timing posttrain alone")
        args.trl = False
    torch.set_num_threads(args.threads)
    global clock_fn
    clock_fn = CLOCKS[args.clock]
    results: dict[str, object] = {
        "command": "python benchmarks/grpo_vs_trl.py " + " ".join(argv or sys.argv[1:]),
        "python": platform.python_version(), "torch": torch.__version__,
        "transformers": transformers.__version__, "threads": args.threads, "clock": args.clock,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "reps": args.reps, "warmup": args.warmup, "load_average_before": load_average(),
    }
    if args.trl:
        import trl

        results["trl_version"] = trl.__version__
    peaks = [peak_gflops(args.threads)]
    with tempfile.TemporaryDirectory() as tmp:
        records, config = run(args, Path(tmp))
    peaks.append(peak_gflops(args.threads))
    results["load_average_after"] = load_average()
    results["peak_gflops_samples"] = peaks
    results["peak_gflops"] = peak = statistics.median(peaks)
    for side, recs in records.items():
        if recs:
            summary = summarize(recs)
            summary["gflop_per_step"] = step_flops(config, side) / 1e9
            summary["fraction_of_peak"] = summary["gflop_per_step"] / (summary["median_s"] * peak)
            results[side] = summary
    if args.trl:
        results["speedup_median"] = results["trl"]["median_s"] / results["posttrain"]["median_s"]
    print(describe(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
