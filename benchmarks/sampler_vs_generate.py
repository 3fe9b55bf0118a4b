"""Tokens per second: posttrain's sampler against transformers' `model.generate`.

"sampler" is the engine `make_engine` picks (LlamaEngine, the hand-written decode, for the
Llama models here); "hf_engine" is HFEngine (transformers' forward with posttrain's shared
prefill), timed too so the two engines can be compared.

Same model, same prompts, same number of new tokens (EOS suppressed on both sides with
min_new_tokens = max_new_tokens), plain ancestral sampling (temperature 1, no top-k/top-p).
The two are interleaved rep by rep after a warm-up, so background load hits both alike.

    .venv/bin/python benchmarks/sampler_vs_generate.py            # tiny Llama, 15 reps
    .venv/bin/python benchmarks/sampler_vs_generate.py --smollm2  # + SmolLM2-135M chat prompt
    .venv/bin/python benchmarks/sampler_vs_generate.py --smoke    # 1 rep, seconds (a test)

Writes benchmarks/results/sampler_vs_generate.json (or --out). Never part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import transformers

if __package__ in (None, ""):  # run as a script from anywhere: make `posttrain` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from posttrain.rollout import HFEngine, SamplingParams, make_engine  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "sampler_vs_generate.json"


def tiny_llama(vocab: int = 80, layers: int = 4) -> transformers.LlamaForCausalLM:
    """~1.07M-parameter Llama: hidden 128, 4 heads, MLP 512 (the size the brief names)."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=vocab,
        hidden_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=512,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def time_pair(
    fns: dict[str, Callable[[], int]], reps: int, warmup: int
) -> dict[str, dict[str, float]]:
    """Interleave the callables `reps` times after `warmup` calls each; each returns the number
    of new tokens it produced. Returns per name: median/min/max seconds and tokens/s."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    tokens: dict[str, int] = {}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            tokens[name] = fn()
            seconds[name].append(time.perf_counter() - start)
    out = {}
    for name, secs in seconds.items():
        med = statistics.median(secs)
        out[name] = {
            "new_tokens": tokens[name],
            "median_s": med,
            "min_s": min(secs),
            "max_s": max(secs),
            "tokens_per_s_median": tokens[name] / med,
            "tokens_per_s_range": [tokens[name] / max(secs), tokens[name] / min(secs)],
        }
    return out


def compare(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    group_size: int,
    new_tokens: int,
    eos_id: int,
    pad_id: int,
    reps: int,
    warmup: int,
) -> dict[str, object]:
    """Time `model.generate`, `make_engine(model).generate` and `HFEngine.generate` on the same
    batch; check each produces N·G·new_tokens tokens."""
    engine, hf_engine = make_engine(model), HFEngine(model)
    params = SamplingParams(
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        stop_token_ids=(eos_id,),
        pad_token_id=pad_id,
    )
    rows = prompt_ids.shape[0] * group_size

    def run_generate() -> int:
        with torch.inference_mode():
            out = model.generate(
                input_ids=prompt_ids,
                attention_mask=prompt_mask.long(),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                num_return_sequences=group_size,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
            )
        return int(out.shape[0] * (out.shape[1] - prompt_ids.shape[1]))

    def sampler(eng) -> Callable[[], int]:
        def run() -> int:
            gen = torch.Generator().manual_seed(0)
            rollout = eng.generate(prompt_ids, prompt_mask, group_size, params, gen)
            return int(rollout.response_mask.sum())

        return run

    fns = {"generate": run_generate, "sampler": sampler(engine), "hf_engine": sampler(hf_engine)}
    result = time_pair(fns, reps, warmup)
    result["sampler"]["engine"] = type(engine).__name__
    for name in fns:
        if result[name]["new_tokens"] != rows * new_tokens:
            raise RuntimeError(
                f"{name} produced {result[name]['new_tokens']} tokens, expected {rows * new_tokens}"
            )
    base = result["generate"]["tokens_per_s_median"]
    return {
        **result,
        "speedup_median": result["sampler"]["tokens_per_s_median"] / base,
        "hf_engine_speedup_median": result["hf_engine"]["tokens_per_s_median"] / base,
    }


def tiny_case(args: argparse.Namespace) -> dict[str, object]:
    """The brief's case: 8 prompts x 8 tokens, 8 samples each, 10 new tokens."""
    model = tiny_llama(layers=1 if args.smoke else 4)
    num_prompts, prompt_len = (2, 4) if args.smoke else (8, 8)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 80, (num_prompts, prompt_len), generator=gen)
    mask = torch.ones_like(ids, dtype=torch.bool)
    group, new = (2, 3) if args.smoke else (8, 10)
    res = compare(
        model, ids, mask, group, new, eos_id=1, pad_id=0, reps=args.reps, warmup=args.warmup
    )
    params = sum(p.numel() for p in model.parameters())
    return {
        "model": f"tiny Llama ({params} params)",
        "prompts": num_prompts,
        "prompt_len": prompt_len,
        "group_size": group,
        "new_tokens": new,
        **res,
    }


def smollm2_case(args: argparse.Namespace) -> dict[str, object]:
    """SmolLM2-135M-Instruct with a chat prompt, if posttrain can load it here."""
    from posttrain.models.loading import load_model
    from posttrain.rollout import encode_prompts

    model, tok = load_model("smollm2-135m-instruct")
    questions = [
        "What is 17 + 25?",
        "Name a prime number above 50.",
        "Sort 3 1 2.",
        "What colour is the sky?",
    ]
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in questions
    ]
    ids, mask = encode_prompts(tok, texts, add_bos=False)
    res = compare(
        model,
        ids,
        mask,
        4,
        16,
        eos_id=tok.eos_token_id,
        pad_id=tok.pad_token_id,
        reps=max(1, args.reps // 3),
        warmup=1,
    )
    return {
        "model": "SmolLM2-135M-Instruct",
        "prompts": len(texts),
        "prompt_len": ids.shape[1],
        "group_size": 4,
        "new_tokens": 16,
        **res,
    }


def describe(name: str, res: dict[str, object]) -> str:
    """One human-readable block per case."""
    lines = [
        f"{name}: {res['model']}, {res['prompts']} prompts x {res['group_size']} samples,"
        f" {res['new_tokens']} new tokens"
    ]
    for side in ("generate", "sampler", "hf_engine"):
        r = res[side]
        lo, hi = r["tokens_per_s_range"]
        lines.append(
            f"  {side:9s} {r['tokens_per_s_median']:9.0f} tok/s median "
            f"(range {lo:.0f}-{hi:.0f}; median {r['median_s'] * 1e3:.1f} ms/call)"
        )
    lines.append(
        f"  speedup over generate (median tok/s ratio): sampler ({res['sampler']['engine']}) "
        f"{res['speedup_median']:.2f}x, hf_engine {res['hf_engine_speedup_median']:.2f}x"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the benchmark, print a summary and write the JSON; returns the results."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="1 rep on a 1-layer model, seconds")
    ap.add_argument("--reps", type=int, default=15, help="timed reps per side (interleaved)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per side first")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--smollm2", action="store_true", help="also time SmolLM2-135M-Instruct")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON results path")
    args = ap.parse_args(argv)
    if args.smoke:
        args.reps, args.warmup = 1, 1
    torch.set_num_threads(args.threads)
    results: dict[str, object] = {
        "command": "python benchmarks/sampler_vs_generate.py " + " ".join(argv or sys.argv[1:]),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": args.threads,
        "machine": platform.processor() or platform.machine(),
        "reps": args.reps,
        "cases": {"tiny": tiny_case(args)},
    }
    print(describe("tiny", results["cases"]["tiny"]))
    if args.smollm2 and not args.smoke:
        try:
            results["cases"]["smollm2"] = smollm2_case(args)
            print(describe("smollm2", results["cases"]["smollm2"]))
        except (ImportError, FileNotFoundError, OSError, ValueError) as exc:
            print(f"smollm2: skipped ({type(exc).__name__}: {exc})")
            results["cases"]["smollm2"] = {"skipped": f"{type(exc).__name__}: {exc}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
