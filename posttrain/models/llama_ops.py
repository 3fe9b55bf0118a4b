"""The functional pieces of posttrain's Llama forward, over the live module's weights.

Shape legend: N token rows, H hidden size, I MLP size, nh query heads, nkv key/value heads, hd
head dim, V vocabulary.

`weights_of` fuses a transformers Llama/Qwen2 model's weights (q|k|v and gate|up concatenated,
RMSNorm weights and the attention scaling folded into the next matmul, q/k rows reordered so
RoPE's pairs sit side by side); the functions below compute HF's math over them with few,
large ops, and hand-written backward passes where autograd's chain of nodes costs more than the
math (RMSNorm, SwiGLU). `posttrain.models.fast_llama` assembles them into decoding and
training forwards and decides which models qualify.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class LayerWeights:
    """One decoder layer. q|k|v and gate|up are fused along the output dimension, and the
    RMSNorm weights (and the attention scaling, on q) are folded into the matmul that follows:
    (x̂·γ) @ Wᵀ = x̂ @ (W·γ)ᵀ, and (s·q)·k = s·(q·k), RoPE being linear."""

    wqkv: Tensor  # ((nh + 2·nkv)·hd, H), columns scaled by the input norm's γ
    bqkv: Tensor | None  # ((nh + 2·nkv)·hd,)
    wo: Tensor  # (H, nh·hd)
    bo: Tensor | None  # (H,)
    wgu: Tensor  # (2·I, H), columns scaled by the post-attention norm's γ
    bgu: Tensor | None  # (2·I,)
    wd: Tensor  # (H, I)
    bd: Tensor | None  # (H,)


@dataclass
class Weights:
    """Everything the functional forward reads; built by `weights_of`."""

    embed: Tensor  # (V, H)
    padding_idx: int | None
    layers: list[LayerWeights]
    head: Tensor  # (V, H), columns scaled by the final norm's γ
    inv_freq: Tensor  # (hd / 2,)
    rope_scale: float
    eps: Tensor  # () RMSNorm epsilon, on the weights' device
    num_heads: int
    num_kv_heads: int
    head_dim: int


def _bias(*parts: Tensor | None) -> Tensor | None:
    return None if parts[0] is None else torch.cat(parts)


def weights_of(model: nn.Module) -> Weights:
    """The model's weights in fused, norm-folded form. Differentiable when grad mode is on:
    the fused tensors are products and concatenations of the parameters, so gradients reach
    every parameter (norm weights included)."""
    cfg, inner = model.config, model.model
    hd = inner.layers[0].self_attn.head_dim
    order = _qkv_row_order(
        cfg.num_attention_heads, cfg.num_key_value_heads, hd, model.lm_head.weight.device
    )
    layers = []
    for layer in inner.layers:
        att, mlp = layer.self_attn, layer.mlp
        s = float(att.scaling)
        q_b = None if att.q_proj.bias is None else att.q_proj.bias * s
        wqkv = torch.cat([att.q_proj.weight * s, att.k_proj.weight, att.v_proj.weight])
        bqkv = _bias(q_b, att.k_proj.bias, att.v_proj.bias)
        wgu = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])
        layers.append(
            LayerWeights(
                wqkv=wqkv.index_select(0, order) * layer.input_layernorm.weight,
                bqkv=None if bqkv is None else bqkv.index_select(0, order),
                wo=att.o_proj.weight,
                bo=att.o_proj.bias,
                wgu=wgu * layer.post_attention_layernorm.weight,
                bgu=_bias(mlp.gate_proj.bias, mlp.up_proj.bias),
                wd=mlp.down_proj.weight,
                bd=mlp.down_proj.bias,
            )
        )
    return Weights(
        embed=inner.embed_tokens.weight,
        padding_idx=inner.embed_tokens.padding_idx,
        layers=layers,
        head=model.lm_head.weight * inner.norm.weight,
        inv_freq=inner.rotary_emb.inv_freq,
        rope_scale=float(inner.rotary_emb.attention_scaling),
        eps=torch.tensor(
            inner.norm.variance_epsilon,
            dtype=model.lm_head.weight.dtype,
            device=model.lm_head.weight.device,
        ),
        num_heads=cfg.num_attention_heads,
        num_kv_heads=cfg.num_key_value_heads,
        head_dim=hd,
    )


_ROW_ORDERS: dict[tuple[int, int, int, torch.device], Tensor] = {}


def _qkv_row_order(num_heads: int, num_kv_heads: int, head_dim: int, device) -> Tensor:
    """Row order of the fused q|k|v weight that puts RoPE's pairs side by side within each q
    and k head (rows 0, hd/2, 1, hd/2 + 1, ...) and leaves v alone. A function of the shapes
    only, so it is built once per shape and device."""
    key = (num_heads, num_kv_heads, head_dim, torch.device(device))
    if key not in _ROW_ORDERS:
        with torch.inference_mode(False):  # a normal tensor: autograd saves it as an index
            _ROW_ORDERS[key] = _build_row_order(num_heads, num_kv_heads, head_dim).to(device)
    return _ROW_ORDERS[key]


def _build_row_order(num_heads: int, num_kv_heads: int, head_dim: int) -> Tensor:
    """(rows,) long: see `_qkv_row_order`."""
    qk_rows, half = (num_heads + num_kv_heads) * head_dim, head_dim // 2
    paired = torch.arange(qk_rows).view(-1, 2, half).transpose(1, 2).reshape(-1)
    v_rows = torch.arange(qk_rows, qk_rows + num_kv_heads * head_dim)
    return torch.cat([paired, v_rows])


def rope_tables(w: Weights, positions: Tensor) -> Tensor:
    """RoPE rotations at `positions` (any shape) → complex (*positions.shape, hd/2):
    scale·(cos θ + i·sin θ), θ = position·inv_freq, the angles HF's tables hold."""
    freqs = positions.float()[..., None] * w.inv_freq.float()  # (..., hd/2)
    return torch.polar(torch.full_like(freqs, w.rope_scale), freqs)


def rope(x: Tensor, rot: Tensor) -> Tensor:
    """Rotate each adjacent pair of x's last dim (the paired layout) by `rot`.

    x (..., hd) real, contiguous in its last dim; rot (..., hd/2) complex, broadcast against
    x's leading dims. Equal to HF's x·cos + rotate_half(x)·sin in the original row order.
    """
    pairs = torch.view_as_complex(x.unflatten(-1, (-1, 2)))  # (..., hd/2)
    return torch.view_as_real(pairs * rot).flatten(-2)


def norm(w: Weights, x: Tensor) -> Tensor:
    """RMSNorm without its weight (folded into the next matmul): x · rsqrt(‖x‖²/H + eps).

    One fused `vector_norm` instead of F.rms_norm's pow/mean/add/rsqrt chain: about half the
    time on (64, 128) rows, equal to ~1e-7 relative. When a gradient is needed, `_RMSNorm`'s
    hand-written backward replaces autograd's chain of six nodes (2x faster on 640 rows).
    """
    if torch.is_grad_enabled() and x.requires_grad:
        return _RMSNorm.apply(x, w.eps)
    n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # (..., 1)
    return x * torch.addcmul(w.eps, n, n, value=1.0 / x.shape[-1]).rsqrt()


class _RMSNorm(torch.autograd.Function):
    """y = x · r, r = rsqrt(‖x‖²/H + eps), over the last dim. Backward:
    dx = r · (dy - y · mean(dy · y)), which is 0 + r·dy at a zero row, as autograd's is."""

    @staticmethod
    def forward(ctx, x: Tensor, eps: Tensor) -> Tensor:
        n = torch.linalg.vector_norm(x, dim=-1, keepdim=True)  # (..., 1)
        r = torch.addcmul(eps, n, n, value=1.0 / x.shape[-1]).rsqrt()
        y = x * r
        ctx.save_for_backward(y, r)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, None]:
        y, r = ctx.saved_tensors
        m = (dy * y).mean(dim=-1, keepdim=True)
        return (dy - y * m) * r, None


def _swiglu(gu: Tensor) -> Tensor:
    """silu(gate) · up from the fused (N, 2·I) gate|up product → (N, I); in place when no
    gradient is needed."""
    if torch.is_grad_enabled() and gu.requires_grad:
        return _SwiGLU.apply(gu)
    gate, up = gu.chunk(2, dim=-1)
    return F.silu(gate, inplace=True).mul_(up)


class _SwiGLU(torch.autograd.Function):
    """`_swiglu` with a backward that writes d(gate|up) into one (N, 2·I) tensor: autograd's
    would build the two halves separately and concatenate them (measured 1.14 → 0.96 ms
    forward + backward on 640 rows, bit-identical)."""

    @staticmethod
    def forward(ctx, gu: Tensor) -> Tensor:
        gate, up = gu.chunk(2, dim=-1)
        silu = F.silu(gate)
        ctx.save_for_backward(gu, silu)
        return silu * up

    @staticmethod
    def backward(ctx, dh: Tensor) -> Tensor:
        gu, silu = ctx.saved_tensors
        gate, up = gu.chunk(2, dim=-1)
        d = torch.empty_like(gu)
        d_gate, d_up = d.chunk(2, dim=-1)
        torch.mul(dh, silu, out=d_up)
        torch.ops.aten.silu_backward.grad_input(dh * up, gate, grad_input=d_gate)
        return d


def qkv(w: Weights, layer: LayerWeights, x: Tensor, rot: Tensor):
    """(N, H) rows → rotated q (N, nh, hd) (pre-scaled), rotated k and v (N, nkv, hd);
    rot (N, 1, hd/2) complex.

    `split` rather than slicing: its backward is one `cat`, where each slice's backward
    would fill a full-size zero gradient.
    """
    nh, nkv, hd = w.num_heads, w.num_kv_heads, w.head_dim
    qkv = F.linear(norm(w, x), layer.wqkv, layer.bqkv)  # (N, (nh + 2·nkv)·hd)
    qk, v = qkv.split([(nh + nkv) * hd, nkv * hd], dim=-1)
    q, k = rope(qk.view(-1, nh + nkv, hd), rot).split([nh, nkv], dim=1)
    return q, k, v.view(-1, nkv, hd)


def mlp_block(w: Weights, layer: LayerWeights, x: Tensor, attn: Tensor) -> Tensor:
    """x + o(attn), then + MLP(norm(.)) over (N, H) rows; the residual adds fold into addmm.

    Rows stay the outer dimension of every matmul and elementwise op, so a row's result does
    not depend on how many rows share the call (a data-parallel rank holds fewer). Computing
    gate|up as W·xᵀ instead was ~25% faster at 64 rows, but then MKL rounds below 12 columns
    differently and the SiLU's vectorised body and scalar tail split the rows at a place that
    moves with N: measured, it broke the bit-equality of data-parallel and single-process
    runs, so it is not used.
    """
    x = _addmm(x, attn, layer.wo, layer.bo)
    gu = F.linear(norm(w, x), layer.wgu, layer.bgu)  # (N, 2·I)
    return _addmm(x, _swiglu(gu), layer.wd, layer.bd)


def _addmm(x: Tensor, a: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """x + a @ weightᵀ (+ bias): the residual add folded into the matmul."""
    out = torch.addmm(x, a, weight.t())
    return out if bias is None else out + bias


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """Softmax attention, q pre-scaled. q (B, nh, Lq, hd); k, v (B, nkv, Lk, hd); bias
    (B, 1, Lq, Lk) additive (0 or dtype-min, so a row with every key masked stays finite).
    → (B, nh, Lq, hd)."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:  # grouped-query attention: each kv head serves `groups` query heads
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    if q.device.type == "cpu" and q.shape[2] * k.shape[2] <= SMALL_ATTENTION:
        # Small CPU problems: two batched matmuls and a softmax run forward + backward ~3.5x
        # faster than the flash kernel (measured: (64, 4, 9, 17) scores, 3.5 ms → 0.9 ms).
        scores = torch.matmul(q, k.transpose(-1, -2)) + bias  # (B, nh, Lq, Lk)
        return torch.matmul(torch.softmax(scores, dim=-1), v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)


SMALL_ATTENTION = 128 * 128
"""Up to this many scores per (row, head), CPU attention materialises them (cheap at this
size); beyond it the fused kernel, which does not, is used."""


def key_bias(allowed: Tensor, dtype: torch.dtype) -> Tensor:
    """Additive attention bias: 0 where `allowed`, the dtype's minimum elsewhere."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def logits(w: Weights, x: Tensor) -> Tensor:
    """Final norm and head: (..., H) → (..., V)."""
    return F.linear(norm(w, x), w.head)
