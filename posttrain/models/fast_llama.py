"""A hand-written forward of Llama-family decoders, over the live Hugging Face module's weights.

Shape legend: B rows, U distinct prompts, P prompt tokens (left-padded), T response tokens,
S key slots, H hidden size, I MLP size, nh query heads, nkv key/value heads, hd head dim,
V vocabulary.

Why: on a small model, transformers' forward spends most of its time on per-op overhead
(mask construction, cache bookkeeping, three q/k/v and two gate/up matmuls, rotary
recomputation per call). Here each layer is a handful of large ops: one fused q|k|v matmul, one
fused gate|up matmul, rotary tables computed once per call, and residual adds folded into
`addmm`; the pieces live in `posttrain.models.llama_ops`. Two uses:

- decoding (`posttrain.rollout.llama_engine`): `prefill` then `decode_step` into a preallocated
  key/value buffer written in place;
- training (`response_logits`, used by `forward_response`): rows that share a prompt (a GRPO
  group) run that prompt once; the response tokens attend to its keys and values, and the
  gradient of the shared prompt is the sum over the group, as it would be for G copies.

The math is HF's (RMSNorm in float32, rotate-half RoPE, softmax attention scaled by
`self_attn.scaling`, SiLU-gated MLP), so logits agree with the module's own forward to float
rounding. One internal layout differs: each head's q and k rows are reordered so the pairs
RoPE rotates together, (i, i + hd/2), sit side by side; RoPE is then one complex multiply
(`llama_ops.rope`) instead of a roll, a multiply and an add. Dot products q·k are unchanged by a
permutation applied to both, so only the (internal) key cache sees the new order.

The weights are read from the module at every call (`llama_ops.weights_of`; the fused copies
cost ~1 ms per rollout on the ~1M model), so they never go stale after an optimizer step. Anything not Llama-shaped
is refused by `unsupported_reason`, and callers fall back to transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from posttrain.models import llama_ops as ops
from posttrain.models.forward import positions_from_mask
from posttrain.models.llama_ops import Weights

SUPPORTED_CLASSES = ("LlamaForCausalLM", "Qwen2ForCausalLM")
"""transformers classes whose forward this module reproduces (Qwen2: q/k/v biases)."""

OPT_OUT_ATTR = "posttrain_fast_path"
"""Set `model.posttrain_fast_path = False` to make every caller use transformers' forward."""


def unsupported_reason(model: nn.Module) -> str | None:
    """None when the fast path reproduces `model`'s forward; otherwise why not (one line).

    Refused: other classes (FSDP-sharded models included: their class is renamed), a patched
    `forward`, any registered module hook (the fast path would skip it), autocast being on,
    float dtypes other than float32, RoPE scaling, sliding windows, non-SiLU MLPs, attention
    dropout in train mode, and layers that are not plain `nn.Linear`. Cheap (a walk over the
    modules), so callers ask at every use: a model can be hooked or sharded after an engine
    was built for it.
    """
    if getattr(model, OPT_OUT_ATTR, True) is False:
        return f"disabled by model.{OPT_OUT_ATTR} = False"
    name = type(model).__name__
    if name not in SUPPORTED_CLASSES or not type(model).__module__.startswith("transformers."):
        return f"{name} is not one of transformers' {SUPPORTED_CLASSES}"
    if "forward" in vars(model):
        return "model.forward is patched on the instance"
    from torch.nn.modules import module as module_mod

    if module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks:
        return "global module hooks are registered"
    for sub in model.modules():
        if not (sub._forward_hooks or sub._forward_pre_hooks):
            continue  # the common case, kept cheap: callers ask at every rollout and forward
        hooks = [*sub._forward_hooks.values(), *sub._forward_pre_hooks.values()]
        if any(not _is_output_capture_hook(h) for h in hooks):
            return f"{type(sub).__name__} has forward hooks"
    device_type = model.lm_head.weight.device.type
    if torch.is_autocast_enabled(device_type):
        return f"autocast is enabled on {device_type}"
    cfg = model.config
    rope = getattr(getattr(model.model, "rotary_emb", None), "rope_type", None)
    problems = {
        "dtype is not float32": model.lm_head.weight.dtype != torch.float32,
        f"hidden_act {cfg.hidden_act!r} is not silu": cfg.hidden_act != "silu",
        f"rope_type {rope!r} is not default": rope != "default",
        "sliding-window layers": any(
            t != "full_attention" for t in (getattr(cfg, "layer_types", None) or [])
        ),
        "pretraining_tp != 1": (getattr(cfg, "pretraining_tp", 1) or 1) != 1,
        "attention dropout in train mode": model.training and cfg.attention_dropout > 0,
        "lm_head has a bias": model.lm_head.bias is not None,
    }
    for what, bad in problems.items():
        if bad:
            return what
    for i, layer in enumerate(model.model.layers):
        att, mlp = layer.self_attn, layer.mlp
        linears = (att.q_proj, att.k_proj, att.v_proj, att.o_proj)
        linears += (mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        if any(type(m) is not nn.Linear for m in linears):
            return f"layer {i} has projections that are not plain nn.Linear (adapters?)"
        if len({m.bias is None for m in linears[:3]}) != 1:
            return f"layer {i}: q/k/v projections disagree on having a bias"
    return None


def _is_output_capture_hook(hook: object) -> bool:
    """transformers' own output-capturing hooks: installed on the first call that asks for
    hidden states, inert unless a forward collects outputs, and the fast path never asks for
    any. Ignoring them keeps eligibility a property of the model, not of its call history
    (which would otherwise change kernels mid-run and break bit-exact resume)."""
    return getattr(hook, "__module__", "") == "transformers.utils.output_capturing"


# --------------------------------------------------------------------------------- decoding
MIN_KEY_WINDOW = 16
"""A decode step attends over at least this many key slots (masked past the current one)."""


@dataclass
class KVBuffer:
    """Preallocated keys and values of every layer, filled in place.

    `kv` (L, 2, R, nkv, S_max, hd): index 0 keys (paired layout), 1 values, so a decode step
    writes both with one copy. `bias` (R, 1, 1, S_max) masks left padding (None when no row is
    padded). `rot` (S_max, hd/2) complex: RoPE rotations of positions 0..S_max-1.
    """

    kv: Tensor
    bias: Tensor | None
    rot: Tensor
    slot_ids: Tensor  # (S_max,) 0..S_max-1, for masking slots past the current one


def kv_shape(w: Weights, rows: int, max_slots: int) -> tuple[int, ...]:
    """Shape of the key/value buffer `prefill` fills: (L, 2, R, nkv, S_max, hd)."""
    return (len(w.layers), 2, rows, w.num_kv_heads, max_slots, w.head_dim)


def prefill(
    w: Weights,
    ids: Tensor,
    mask: Tensor,
    group_size: int,
    max_slots: int,
    kv: Tensor | None = None,
) -> tuple[Tensor, KVBuffer]:
    """Run N distinct prompts once and lay their keys/values out for R = N·G decoding rows.

    Args:
        ids: (N, P) left-padded prompt ids. mask: (N, P) bool. max_slots: S_max ≥ P.
        kv: a buffer of `kv_shape(w, R, S_max)` to fill (its old contents are overwritten),
            so a caller can reuse one across calls; None allocates one.
    Returns:
        last-position logits (R, V), row i those of prompt i // G, and a KVBuffer for the R
        rows (row i continues prompt i // G) with slots 0..P-1 filled and the rest zero.
    """
    n, p = ids.shape
    g, nkv, hd, dtype = group_size, w.num_kv_heads, w.head_dim, w.embed.dtype
    rows, device = n * g, ids.device
    shape = kv_shape(w, rows, max_slots)
    if kv is None:
        kv = torch.empty(shape, dtype=dtype, device=device)
    elif kv.shape != shape or kv.dtype != dtype or kv.device != device:
        raise ValueError(f"prefill: kv buffer {tuple(kv.shape)} {kv.dtype} must be {shape} {dtype}")
    # Slots a decode step may read before they are written (`decode_step` rounds its key
    # window up) must hold finite numbers: their attention weight is exactly 0.
    kv[..., p:, :].zero_()
    bias = None
    if not bool(mask.all()):
        bias = torch.zeros((rows, 1, 1, max_slots), dtype=dtype, device=device)
        bias[:, 0, 0, :p] = ops.key_bias(mask, dtype).repeat_interleave(g, dim=0)
    rot_t = ops.rope_tables(w, torch.arange(max_slots, device=device))  # (S_max, hd/2)
    rot = rot_t[positions_from_mask(mask).reshape(-1)][:, None]  # (N·P, 1, hd/2)
    causal = torch.ones((p, p), dtype=torch.bool, device=device).tril()
    self_bias = ops.key_bias(causal & mask[:, None, :], dtype)[:, None]  # (N, 1, P, P)
    x = F.embedding(ids.reshape(-1), w.embed, w.padding_idx)  # (N·P, H)
    for i, layer in enumerate(w.layers):
        q, k, v = (z.view(n, p, -1, hd).transpose(1, 2) for z in ops.qkv(w, layer, x, rot))
        # The group's G copies in one broadcast copy: view the rows as (N, G).
        kv[i].view(2, n, g, nkv, max_slots, hd)[:, :, :, :, :p] = torch.stack([k, v])[:, :, None]
        attn = ops.attend(q, k, v, self_bias)  # (N, nh, P, hd)
        x = ops.mlp_block(w, layer, x, attn.transpose(1, 2).reshape(n * p, -1))
    # (R, H): left padding puts every prompt's end at P-1. The head runs on all R rows, not
    # the N distinct ones: MKL rounds matmuls of fewer than 8 rows differently, and a row's
    # logits must not depend on how many prompts share its batch (data-parallel ranks).
    last = x.view(n, p, -1)[:, -1].repeat_interleave(g, dim=0)
    slot_ids = torch.arange(max_slots, device=device)
    return ops.logits(w, last), KVBuffer(kv=kv, bias=bias, rot=rot_t, slot_ids=slot_ids)


def decode_step(
    w: Weights, tokens: Tensor, positions: Tensor | int, slot: int, buf: KVBuffer
) -> Tensor:
    """Feed one token per row at key slot `slot`; returns the next-token logits (R, V).

    Inference only (writes its intermediates in place).

    Args:
        tokens: (R,) ids. positions: (R,) RoPE positions of those tokens, or one int when
            every row is at the same position (no left padding).
        slot: the buffer column the new keys/values go to (the same for every row).
    """
    rows = tokens.shape[0]
    nh, nkv, hd = w.num_heads, w.num_kv_heads, w.head_dim
    # Attend over at least MIN_KEY_WINDOW slots: the slots past `slot` are zero and masked
    # (weight exactly 0), and batched matmuls with an inner size of 9-12 ran 3-5x slower
    # than at 13-16 (MKL, measured: (256, 1, 10) @ (256, 10, 32) 180 µs vs 31 µs at 16).
    window = min(buf.kv.shape[4], max(slot + 1, MIN_KEY_WINDOW))
    bias = None if buf.bias is None else buf.bias[..., :window]  # (R, 1, 1, S)
    if window > slot + 1:
        future = ops.key_bias(buf.slot_ids[:window] <= slot, buf.kv.dtype)  # (S,)
        bias = future if bias is None else bias + future
    rot = buf.rot[positions]  # (R, hd/2) or (hd/2,)
    if rot.dim() == 2:
        rot = rot[:, None]  # (R, 1, hd/2): broadcast over heads
    x = F.embedding(tokens, w.embed, w.padding_idx)  # (R, H)
    for i, layer in enumerate(w.layers):
        qkv = F.linear(ops.norm(w, x), layer.wqkv, layer.bqkv)  # (R, (nh + 2·nkv)·hd)
        qk = qkv[:, : (nh + nkv) * hd].view(rows, nh + nkv, hd // 2, 2)
        torch.view_as_complex(qk).mul_(rot)  # RoPE in place, as `rope` computes it
        # k|v sit side by side in each qkv row: one copy writes both into the buffer.
        buf.kv[i, :, :, :, slot] = qkv[:, nh * hd :].view(rows, 2, nkv, hd).transpose(0, 1)
        # One query per row: 3-D bmm over (row, kv head) pairs beats SDPA and 4-D matmul
        # at this size; the (R, nkv) dims of the buffer merge into one batch dim as a view.
        keys, values = buf.kv[i, :, :, :, :window].flatten(1, 2)  # (R·nkv, S, hd) each
        q = qkv[:, : nh * hd].reshape(rows * nkv, nh // nkv, hd)  # a small copy
        scores = torch.bmm(q, keys.transpose(1, 2))  # (R·nkv, groups, S)
        if bias is not None:  # in place through a (R, nkv, groups, S) view
            scores.view(rows, nkv, -1, window).add_(bias)
        attn = torch.bmm(torch.softmax(scores, dim=-1), values)  # (R·nkv, groups, hd)
        x = ops.mlp_block(w, layer, x, attn.view(rows, nh * hd))
    return ops.logits(w, x)


# --------------------------------------------------------------------------------- training
def response_logits(
    w: Weights, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor
) -> Tensor:
    """Logits that score each response token (position P-1+t scores token t), computing each
    distinct prompt, and each distinct row, once.

    Rows whose prompt ids and mask are equal share that prompt's keys and values; rows equal
    in prompt and in all fed response tokens (a sharpened policy samples many) run once and
    their logits are indexed back, so autograd sums their gradients exactly as it would for
    copies. The last response token is never fed (nothing it predicts is scored).
    Differentiable.

    Args:
        prompt_ids: (B, P) left-padded. prompt_mask: (B, P) bool. response_ids: (B, T), T ≥ 1.
    Returns:
        (B, T, V) logits.
    """
    mask = prompt_mask.bool()
    fed = response_ids[:, :-1]
    rows = torch.cat([torch.where(mask, prompt_ids, -1), mask.long(), fed], dim=1)
    uniq, inv = torch.unique(rows, dim=0, return_inverse=True)
    if uniq.shape[0] == rows.shape[0]:
        return _distinct_rows_logits(w, prompt_ids, mask, response_ids)
    first = torch.empty(uniq.shape[0], dtype=torch.long, device=inv.device)
    first[inv] = torch.arange(inv.shape[0], device=inv.device)  # a row of each distinct key
    logits = _distinct_rows_logits(w, prompt_ids[first], mask[first], response_ids[first])
    return logits[inv]  # (B, T, V); the gather's backward sums the duplicates' gradients


def _distinct_rows_logits(
    w: Weights, prompt_ids: Tensor, prompt_mask: Tensor, response_ids: Tensor
) -> Tensor:
    """`response_logits` for rows assumed distinct; prompts are still shared."""
    b, p = prompt_ids.shape
    tr = response_ids.shape[1] - 1  # response tokens fed: 0 .. T-2
    device, dtype, hd = prompt_ids.device, w.embed.dtype, w.head_dim
    mask = prompt_mask.bool()
    # Distinct prompts (ids under the mask + the mask itself), and row → prompt.
    key = torch.cat([torch.where(mask, prompt_ids, -1), mask.long()], dim=1)
    uniq, inv = torch.unique(key, dim=0, return_inverse=True)
    u_ids, u_mask = uniq[:, :p].clamp(min=0), uniq[:, p:].bool()  # (U, P)
    u = u_ids.shape[0]
    n_prompt, n_resp = u * p, b * tr

    # Positions: prompt tokens by cumsum; response token j of row b sits at len(prompt_b) + j.
    pos = torch.cat(
        [
            positions_from_mask(u_mask).reshape(-1),
            (mask.sum(dim=1, keepdim=True) + torch.arange(tr, device=device)).reshape(-1),
        ]
    )  # (U·P + B·(T-1),)
    rot = ops.rope_tables(w, pos)[:, None]  # (N_tok, 1, hd/2)
    causal_p = torch.ones((p, p), dtype=torch.bool, device=device).tril()
    bias_p = ops.key_bias(causal_p & u_mask[:, None, :], dtype)[:, None]  # (U, 1, P, P)
    causal_r = torch.ones((tr, tr), dtype=torch.bool, device=device).tril()
    allowed_r = torch.cat(
        [mask[:, None, :].expand(b, tr, p), causal_r.expand(b, tr, tr)], dim=2
    )  # (B, T-1, P + T-1)
    bias_r = ops.key_bias(allowed_r, dtype)[:, None]

    ids = torch.cat([u_ids.reshape(-1), response_ids[:, :tr].reshape(-1)])
    x = F.embedding(ids, w.embed, w.padding_idx)  # (N_tok, H): prompts, then responses
    for layer in w.layers:
        q, k, v = ops.qkv(w, layer, x, rot)  # (N_tok, heads, hd)
        (qp, qr), (kp, kr), (vp, vr) = (z.split([n_prompt, n_resp]) for z in (q, k, v))
        qp, kp, vp = (z.view(u, p, -1, hd).transpose(1, 2) for z in (qp, kp, vp))
        out_p = ops.attend(qp, kp, vp, bias_p).transpose(1, 2).reshape(n_prompt, -1)
        if tr:
            qr, kr, vr = (z.view(b, tr, -1, hd).transpose(1, 2) for z in (qr, kr, vr))
            keys = torch.cat([kp[inv], kr], dim=2)  # (B, nkv, P + T-1, hd)
            values = torch.cat([vp[inv], vr], dim=2)
            out_r = ops.attend(qr, keys, values, bias_r).transpose(1, 2).reshape(n_resp, -1)
            out_p = torch.cat([out_p, out_r])
        x = ops.mlp_block(w, layer, x, out_p)
    # Keep the rows that predict response tokens: each prompt's last position, then responses.
    xp, xr = x.split([n_prompt, n_resp])
    last = xp.view(u, p, -1)[:, -1][inv]  # (B, H)
    return ops.logits(
        w, torch.cat([last[:, None], xr.view(b, tr, x.shape[-1])], dim=1)
    )  # (B, T, V)
