"""GPU figures in one run: builds, checks and times every rollout and training variant.

    python benchmarks/gpu_figures.py --model PATH.gguf|DIR|random [--out FILE] [--sections ...]
    python benchmarks/gpu_figures.py --smoke          # CPU, a 2-layer SmolLM2-shaped model

Sections (each guarded: a failure is recorded and the run goes on; the JSON is rewritten after
every section, so a run cut short still reports what it finished):

- rollout: tokens/s on one batch (N prompts × G samples, T new tokens, EOS suppressed so every
  variant makes the same number of tokens) for `model.generate`, posttrain's HFEngine, the
  hand-written LlamaEngine when it accepts the model, and a static-KV-cache decoder whose decode
  step is one CUDA graph (defined here, benchmark only), in fp32 and bf16 autocast.
- check: for each variant, mean/max |sampler − trainer| log-prob over the sampled tokens
  (`forward_response` under the same precision): the health metric's gap.
- train: forward + backward + fused AdamW on B × L random tokens, eager and torch.compile, bf16
  autocast with fp32 master weights; tokens/s and MFU = 6·N·tokens/s / peak (N = all
  parameters, the tied embedding once; attention FLOPs not counted; peak: H100 SXM dense bf16,
  989 TFLOP/s, and the measured 8192³ bf16 matmul rate for reference).
- grpo: one GRPO step of the real trainer (PolicyGradientTrainer on this device, bf16 autocast)
  split into generate / reference log-probs / policy forward / backward / optimizer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from posttrain.models.forward import forward_response, positions_from_mask  # noqa: E402
from posttrain.rollout import HFEngine, SamplingParams  # noqa: E402
from posttrain.rollout.sampler import DecodeState  # noqa: E402

PEAK_BF16 = 989.4e12
"""H100 SXM dense bf16 tensor-core peak (NVIDIA datasheet), the MFU denominator."""
SMOLLM2 = dict(  # SmolLM2-135M's config.json (for --model random and --smoke)
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    vocab_size=49152,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, reps: int, warmup: int = 1) -> tuple[float, list[float], object]:
    """Median wall seconds of `fn()` over `reps` runs after `warmup`, synchronised."""
    out = None
    for _ in range(warmup):
        out = fn()
    times = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def amp(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


# --------------------------------------------------------- static cache + CUDA graph decode
def _rms(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))  # fp32, as HF


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class GraphDecoder:
    """A Llama decode over a preallocated KV cache; on CUDA one decode step is a CUDA graph.

    Mirrors transformers under autocast: residual stream and norms in fp32, matmuls and
    attention in `dtype`. Weights are cast once per `generate` (a trainer would re-cast after
    each optimizer step, ~1 ms). Sampling stays in `DecodeState`, outside the graph.
    Shapes: R rows, n new tokens per call, S cache slots, H hidden, hd head dim.
    """

    def __init__(self, model, rows: int, slots: int, dtype: torch.dtype) -> None:
        cfg, inner = model.config, model.model
        self.device = model.lm_head.weight.device
        self.dtype, self.rows, self.slots = dtype, rows, slots
        self.nh, self.nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.hd = inner.layers[0].self_attn.head_dim
        self.eps = float(inner.norm.variance_epsilon)
        self.model = model
        shape = (len(inner.layers), rows, self.nkv, slots, self.hd)
        self.k = torch.zeros(shape, dtype=dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=dtype, device=self.device)
        self.valid = torch.zeros((rows, slots), dtype=torch.bool, device=self.device)
        self.tok = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.pos = torch.zeros(rows, dtype=torch.long, device=self.device)
        self.slot = torch.zeros(1, dtype=torch.long, device=self.device)
        self.graph = self.out = None
        self.refresh()

    @torch.no_grad()
    def refresh(self) -> None:
        """Re-read (and cast) the live module's weights: call after each optimizer step."""
        inner, d = self.model.model, self.dtype
        self.layers = [
            dict(
                ln1=layer.input_layernorm.weight.float(),
                ln2=layer.post_attention_layernorm.weight.float(),
                wqkv=torch.cat(
                    [
                        layer.self_attn.q_proj.weight,
                        layer.self_attn.k_proj.weight,
                        layer.self_attn.v_proj.weight,
                    ]
                ).to(d),
                wo=layer.self_attn.o_proj.weight.to(d),
                wgu=torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]).to(d),
                wd=layer.mlp.down_proj.weight.to(d),
            )
            for layer in inner.layers
        ]
        self.emb, self.norm = inner.embed_tokens.weight.float(), inner.norm.weight.float()
        self.head = self.model.lm_head.weight.to(d)
        self.inv_freq = inner.rotary_emb.inv_freq.float()

    def forward(self, tokens, pos, slots, mask) -> torch.Tensor:
        """tokens, pos (R, n); slots (n,) cache slots to write; mask (R, 1, n, S) bool →
        last-position logits (R, V) in `dtype`."""
        rows, n = tokens.shape
        x = F.embedding(tokens, self.emb)  # (R, n, H) fp32
        freqs = pos[..., None].float() * self.inv_freq  # (R, n, hd/2)
        ang = torch.cat([freqs, freqs], dim=-1)[:, None]  # (R, 1, n, hd)
        cos, sin = ang.cos(), ang.sin()
        q_end, k_end = self.nh * self.hd, (self.nh + self.nkv) * self.hd
        for i, w in enumerate(self.layers):
            h = _rms(x, w["ln1"], self.eps).to(self.dtype)
            qkv = h @ w["wqkv"].T  # (R, n, (nh + 2 nkv) hd)
            q = qkv[..., :q_end].view(rows, n, self.nh, self.hd).transpose(1, 2)
            k = qkv[..., q_end:k_end].view(rows, n, self.nkv, self.hd).transpose(1, 2)
            v = qkv[..., k_end:].view(rows, n, self.nkv, self.hd).transpose(1, 2)
            q = _rope(q.float(), cos, sin).to(self.dtype)  # HF: fp32 cos/sin promote q, k
            k = _rope(k.float(), cos, sin).to(self.dtype)
            self.k[i].index_copy_(2, slots, k)
            self.v[i].index_copy_(2, slots, v)
            att = F.scaled_dot_product_attention(
                q, self.k[i], self.v[i], attn_mask=mask, enable_gqa=True
            )  # (R, nh, n, hd)
            x = x + (att.transpose(1, 2).reshape(rows, n, q_end) @ w["wo"].T).float()
            gate, up = (_rms(x, w["ln2"], self.eps).to(self.dtype) @ w["wgu"].T).chunk(2, -1)
            x = x + ((F.silu(gate) * up) @ w["wd"].T).float()
        return _rms(x[:, -1], self.norm, self.eps).to(self.dtype) @ self.head.T  # (R, V)

    def _decode(self) -> torch.Tensor:
        self.valid.index_fill_(1, self.slot, True)
        return self.forward(
            self.tok[:, None], self.pos[:, None], self.slot, self.valid[:, None, None, :]
        )

    def capture(self) -> None:
        """Record one decode step as a CUDA graph (static buffers: tok, pos, slot, cache)."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(2):
                self._decode()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.out = self._decode()

    @torch.no_grad()
    def generate(self, ids, mask, group, params, generator):
        """Same contract as `Engine.generate` (rows = N·G must equal this decoder's rows)."""
        ids, mask = ids.to(self.device), mask.to(self.device).bool()
        ids_r, mask_r = ids.repeat_interleave(group, 0), mask.repeat_interleave(group, 0)
        num_prompt = ids.shape[1]
        self.refresh()
        self.valid.zero_()
        self.valid[:, :num_prompt] = mask_r
        slots = torch.arange(num_prompt, device=self.device)
        causal = slots[None, :] <= slots[:, None]  # (P, P)
        allowed = (causal[None] & mask_r[:, None, :]) | torch.eye(
            num_prompt, dtype=torch.bool, device=self.device
        )
        pmask = torch.zeros(
            (ids_r.shape[0], 1, num_prompt, self.slots), dtype=torch.bool, device=self.device
        )
        pmask[:, 0, :, :num_prompt] = allowed  # a pad query sees itself: no all-masked row
        logits = self.forward(ids_r, positions_from_mask(mask_r), slots, pmask)
        state = DecodeState(ids_r.shape[0], params, generator, self.device)
        first = mask_r.sum(1)
        while True:
            tokens = state.step(logits)
            if state.done():
                break
            t = state.num_steps - 1  # the token just sampled is fed at slot P + t
            self.tok.copy_(tokens)
            self.pos.copy_(first + t)
            self.slot.fill_(num_prompt + t)
            if self.graph is not None:
                self.graph.replay()
                logits = self.out
            else:
                logits = self._decode()
        return state.to_rollout(ids, mask, group)


# ------------------------------------------------------------------------------ sections
def load(args, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.model in ("random", "smoke"):
        fields = dict(SMOLLM2, attn_implementation="sdpa")
        if args.model == "smoke":
            fields.update(num_hidden_layers=2, vocab_size=512)
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(**fields)).to(device).eval()
        return model, None
    from posttrain.models.loading import load_model

    return load_model(args.model, device=device)


def prompts(args, tokenizer, vocab: int, device):
    """N left-padded prompts: the equations task in chat form, or random ids."""
    if tokenizer is None:
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(3, vocab, (args.prompts, args.prompt_len), generator=gen)
        return ids, torch.ones_like(ids, dtype=torch.bool)
    from posttrain.rollout import encode_prompts
    from posttrain.tasks.formatting import format_prompt
    from posttrain.tasks.registry import make_task

    task = make_task("equations", num_eval=200)
    texts = [format_prompt(ex, tokenizer, True) for ex in task.train[: args.prompts]]
    return encode_prompts(tokenizer, texts)


def section_rollout(args, model, tokenizer, device, res):
    ids, mask = prompts(args, tokenizer, model.config.vocab_size, device)
    n, g, t = ids.shape[0], args.group, args.new_tokens
    rows = n * g
    params = SamplingParams(max_new_tokens=t, min_new_tokens=t, stop_token_ids=(2,), pad_token_id=2)
    out = res.setdefault(
        "rollout",
        {"prompts": n, "group": g, "rows": rows, "prompt_len": ids.shape[1], "new_tokens": t},
    )
    engines = {"hf_engine": lambda: HFEngine(model)}
    try:
        from posttrain.models.fast_llama import unsupported_reason
        from posttrain.rollout.llama_engine import LlamaEngine

        reason = unsupported_reason(model)
        if reason is None:
            engines["llama_engine"] = lambda: LlamaEngine(model)
        else:
            out["llama_engine_refused"] = reason
    except ImportError as e:
        out["llama_engine_refused"] = f"not importable: {e}"
    rows_ids = ids.repeat_interleave(g, 0).to(device)
    rows_mask = mask.repeat_interleave(g, 0).to(device).long()
    for precision in args.precisions:
        dt = torch.bfloat16 if precision != "fp32" else torch.float32
        engines_p = dict(engines)
        engines_p["graph_static_cache"] = lambda dt=dt: _graph(
            model, rows, ids.shape[1] + t, dt, device
        )

        def hf_generate():
            torch.manual_seed(0)
            return model.generate(
                input_ids=rows_ids,
                attention_mask=rows_mask,
                do_sample=True,
                max_new_tokens=t,
                min_new_tokens=t,
                top_k=0,
                top_p=1.0,
                temperature=1.0,
                pad_token_id=2,
                eos_token_id=2,
            )

        with amp(precision, device):
            sec, times, _ = timed(hf_generate, device, args.reps)
        out[f"generate/{precision}"] = {"s": sec, "times": times, "tok_s": rows * t / sec}
        for name, make in engines_p.items():
            key = f"{name}/{precision}"
            try:
                eng = make()
                with amp(precision, device):
                    sec, times, ro = timed(
                        lambda eng=eng: eng.generate(
                            ids, mask, g, params, torch.Generator().manual_seed(0)
                        ),
                        device,
                        args.reps,
                    )
                    gap = check_gap(model, ro, precision, device)
                out[key] = {
                    "s": sec,
                    "times": times,
                    "tok_s": rows * t / sec,
                    "speedup_vs_generate": out[f"generate/{precision}"]["s"] / sec,
                    **gap,
                }
            except Exception as e:  # noqa: BLE001 - record and go on
                out[key] = {"error": repr(e), "trace": traceback.format_exc()[-1500:]}
            print(
                key, {k: v for k, v in out[key].items() if k not in ("times", "trace")}, flush=True
            )


def _graph(model, rows, slots, dtype, device):
    dec = GraphDecoder(model, rows, slots, dtype)
    if device.type == "cuda":
        dec.capture()
    return dec


@torch.no_grad()
def check_gap(model, ro, precision, device) -> dict[str, float]:
    """Sampler vs trainer log-probs on the sampled tokens (the health metric), in chunks."""
    gaps = []
    for s in range(0, ro.response_ids.shape[0], 32):
        sl = slice(s, s + 32)
        with amp(precision, device):
            lp = forward_response(
                model,
                ro.prompt_ids[sl],
                ro.prompt_mask[sl],
                ro.response_ids[sl],
                ro.response_mask[sl],
            ).logprobs
        gaps.append((lp - ro.logprobs[sl]).abs()[ro.response_mask[sl]])
    gap = torch.cat(gaps)
    return {
        "gap_mean": float(gap.mean()),
        "gap_max": float(gap.max()),
        "gap_p99": float(gap.float().quantile(0.99)),
    }


def section_train(args, model, device, res):
    from posttrain.algorithms.masked import shifted_token_logprobs

    out = res.setdefault(
        "train", {"batch": args.train_batch, "seq_len": args.train_len, "peak_flops": PEAK_BF16}
    )
    n_params = sum(p.numel() for p in model.parameters())
    out["params"] = n_params
    if device.type == "cuda":
        a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
        sec, _, _ = timed(lambda: a @ a, device, 10, 3)
        out["matmul_8192_bf16_tflops"] = 2 * 8192**3 / sec / 1e12
    ids = torch.randint(
        3, model.config.vocab_size, (args.train_batch, args.train_len), device=device
    )
    for variant in args.train_variants:
        m = type(model)(model.config).to(device)
        m.load_state_dict(model.state_dict())
        m.train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-5, fused=device.type == "cuda")
        fwd = torch.compile(m) if variant.startswith("compiled") else m
        precision = "fp32" if variant.endswith("fp32") else "bf16-autocast"

        def step(fwd=fwd, opt=opt, precision=precision):
            with amp(precision, device):
                logits = fwd(input_ids=ids).logits
                loss = -shifted_token_logprobs(logits, ids).mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            return loss

        try:
            t0 = time.perf_counter()
            step()
            sync(device)
            first = time.perf_counter() - t0
            sec, times, _ = timed(step, device, args.reps + 2, 1)
            tok_s = ids.numel() / sec
            out[variant] = {
                "s_per_step": sec,
                "first_step_s": first,
                "tok_s": tok_s,
                "mfu": 6 * n_params * tok_s / PEAK_BF16,
                "times": times,
            }
        except Exception as e:  # noqa: BLE001
            out[variant] = {"error": repr(e), "trace": traceback.format_exc()[-1500:]}
        print(
            variant,
            {k: v for k, v in out[variant].items() if k not in ("times", "trace")},
            flush=True,
        )
        del m, opt, fwd
        if device.type == "cuda":
            torch.cuda.empty_cache()


def section_grpo(args, device, res):
    """One real GRPO step of the trainer, timed by component (each wrapper synchronises)."""
    import posttrain.train.policy_gradient as pg
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

    spans: dict[str, float] = {}

    def wrap(obj, name, bucket):
        fn = getattr(obj, name)

        def inner(*a, **k):
            sync(device)
            t0 = time.perf_counter()
            r = fn(*a, **k)
            sync(device)
            spans[bucket] = spans.get(bucket, 0.0) + time.perf_counter() - t0
            return r

        setattr(obj, name, inner)

    real = args.model not in ("random", "smoke")
    cfg = RLConfig(
        model=ModelConfig(spec=args.model if real else "tiny:tiny"),
        task=TaskConfig(name="equations", chat=real),
        optim=OptimConfig(lr=1e-6),
        run=RunConfig(
            dir=args.grpo_dir,
            device=device.type,
            precision="bf16-autocast",
            save_every=10**6,
            log_rollouts_every=0,
        ),
        sampling=SamplingConfig(max_new_tokens=args.new_tokens),
        algo=AlgoConfig(preset="grpo"),
        batch=BatchConfig(
            prompts_per_step=args.prompts,
            group_size=args.group,
            micro_batch_size=args.prompts * args.group,
        ),
        health=HealthConfig(stop_when_all_truncated=False),
        steps=100,
        eval_examples=8,
    )
    trainer = pg.PolicyGradientTrainer(cfg)
    out = res.setdefault(
        "grpo",
        {
            "engine": type(trainer.engine).__name__,
            "rollouts": args.prompts * args.group,
            "max_new_tokens": args.new_tokens,
        },
    )
    wrap(trainer.engine, "generate", "generate")
    wrap(pg, "forward_response", "ref_logprobs")
    wrap(trainer.update, "micro_loss", "policy_forward")
    wrap(trainer.optimizer, "step", "optimizer")
    wrap(trainer.update, "_clip", "optimizer")
    steps = []
    for i in range(3):
        spans.clear()
        sync(device)
        t0 = time.perf_counter()
        try:
            metrics = trainer.step()
        except Exception as e:  # noqa: BLE001 - e.g. a health stop: record it
            out[f"step{i}_error"] = repr(e)
            break
        sync(device)
        total = time.perf_counter() - t0
        row = dict(
            spans,
            total=total,
            response_len=metrics["rollout/response_len"],
            logprob_gap=metrics["policy/logprob_gap"],
            update=metrics["time/step"] - metrics["time/rollout"],
        )
        row["backward_and_rest"] = (
            row["update"] - row.get("policy_forward", 0) - row.get("optimizer", 0)
        )
        steps.append(row)
        print("grpo step", i, {k: round(v, 4) for k, v in row.items()}, flush=True)
    out["steps"] = steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="random")
    ap.add_argument("--out", default="benchmarks/results/gpu_figures.json")
    ap.add_argument("--sections", default="rollout,train,grpo")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=48)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--precisions", default="bf16-autocast,fp32")
    ap.add_argument("--train-batch", type=int, default=32)
    ap.add_argument("--train-len", type=int, default=1024)
    ap.add_argument("--train-variants", default="eager-bf16,compiled-bf16")
    ap.add_argument("--grpo-dir", default="/tmp/gpu_figures_grpo")
    ap.add_argument("--smoke", action="store_true", help="CPU, 2 layers, tiny sizes")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.prompts, args.group, args.new_tokens, args.reps = "smoke", 2, 2, 4, 1
        args.train_batch, args.train_len, args.train_variants = 2, 16, "eager-bf16"
    args.precisions = args.precisions.split(",")
    args.train_variants = args.train_variants.split(",")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    res = {
        "command": " ".join(sys.argv),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "model": args.model,
    }
    import transformers

    res["transformers"] = transformers.__version__
    model, tokenizer = load(args, device)
    res["attn_implementation"] = model.config._attn_implementation
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.sections.split(","):
        t0 = time.perf_counter()
        try:
            if name == "rollout":
                section_rollout(args, model, tokenizer, device, res)
            elif name == "train":
                section_train(args, model, device, res)
            elif name == "grpo":
                section_grpo(args, device, res)
        except Exception as e:  # noqa: BLE001
            res[f"{name}_error"] = {"error": repr(e), "trace": traceback.format_exc()[-2000:]}
            print(name, "FAILED", repr(e), flush=True)
        res.setdefault("section_seconds", {})[name] = time.perf_counter() - t0
        out.write_text(json.dumps(res, indent=2))
    print("wrote", out)


if __name__ == "__main__":
    main()
