"""Pure-torch reference of every op. The "torch" attention backend runs these, and the tests hold the
C++ and Triton versions to them.

Shared conventions
- KV cache of one layer: `k_cache`, `v_cache` of shape [num_blocks, block_size, num_kv_heads, head_dim].
  A slot is `block * block_size + offset`; slot -1 means "do not store".
- Sequence b of a step owns query rows cu_seqlens_q[b]:cu_seqlens_q[b+1] (its new tokens) and has
  seq_lens[b] tokens of context in total, new ones included, so its i-th new token sits at position
  seq_lens[b] - q_len_b + i:

      |<------------- seq_lens[b] ------------->|
      |<-- already in cache -->|<-- q_len_b --->|
- window > 0 is local attention: a query at position i sees keys j with i - window < j <= i.
"""
from __future__ import annotations

import torch

from ._bind import closure_binders
from .int4_pack import pack_int4_weight, quantize_int4, quantize_pack_int4, unpack_int4  # noqa: F401


def gated_embedding(ids: torch.Tensor, modality: torch.Tensor, remap: torch.Tensor,
                    wte: torch.Tensor, wpe: torch.Tensor | None,
                    positions: torch.Tensor) -> torch.Tensor:
    """hidden[t] = wte[modality[t] ? remap[ids[t]] : ids[t]] (+ wpe[positions[t]]).

    ids, modality, positions: [num_tokens] int64; remap: [vocab] int64; wte: [vocab, hidden];
    wpe: [max_positions, hidden] or None. Returns [num_tokens, hidden] in wte's dtype.
    """
    rows = torch.where(modality.bool(), remap[ids], ids)
    hidden = wte[rows]
    if wpe is not None:
        hidden = (hidden.float() + wpe[positions].float()).to(wte.dtype)
    return hidden


def rotary_cos_sin(rotary_dim: int, max_positions: int, base: float = 10000.0) -> torch.Tensor:
    """[max_positions, rotary_dim] fp32 table: cos of the rotary_dim // 2 frequencies, then sin."""
    # fp32 throughout, in the order CodeGen computes it, so positions match it bit for bit.
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64) / rotary_dim))
    angles = torch.arange(max_positions, dtype=torch.float32)[:, None] * inv_freq[None, :].float()
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int,
            interleaved: bool) -> None:
    # x: [num_tokens, num_heads, head_dim]; cos, sin: [num_tokens, 1, rotary_dim // 2]
    rot = x[..., :rotary_dim].float()
    if interleaved:  # GPT-J / CodeGen: pairs (0, 1), (2, 3), ...
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
    else:  # NeoX: pairs (i, i + rotary_dim // 2)
        x1, x2 = rot.chunk(2, dim=-1)
        out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    x[..., :rotary_dim] = out.to(x.dtype)


def quantize_kv_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of an int8 KV cache: x [..., head_dim] -> (int8 [..., head_dim], fp32 scales [...]),
    symmetric per row, x ~= q * scale[..., None]; a row of zeros gets scale 0."""
    x = x.float()
    amax = x.abs().amax(dim=-1)
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    return torch.round(x * inv[..., None]).clamp_(-127, 127).to(torch.int8), amax / 127.0


def _cache_rows(cache: torch.Tensor, scale: torch.Tensor | None, blocks: torch.Tensor) -> torch.Tensor:
    """cache[blocks] in fp32, int8 rows multiplied by their scales."""
    rows = cache[blocks].float()
    return rows if scale is None else rows * scale[blocks][..., None]


def rotary_store_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                    cos_sin: torch.Tensor | None, rotary_dim: int, interleaved: bool,
                    k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                    k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> None:
    """Rotate q and k in place on their first rotary_dim dims, then store k, v in the cache.

    q: [num_tokens, num_heads, head_dim]; k, v: [num_tokens, num_kv_heads, head_dim];
    positions, slot_mapping: [num_tokens] int64; cos_sin: [max_positions, rotary_dim] fp32
    (see rotary_cos_sin), unused when rotary_dim == 0; caches: [num_blocks, block_size, kv_heads, dim].
    An int8 cache stores each (slot, kv head) row quantized (quantize_kv_rows), its scale in
    k_scale / v_scale: [num_blocks, block_size, kv_heads] fp32.
    """
    if rotary_dim > 0:
        half = rotary_dim // 2
        table = cos_sin[positions]  # [num_tokens, rotary_dim]
        cos, sin = table[:, None, :half], table[:, None, half:]
        _rotate(q, cos, sin, rotary_dim, interleaved)
        _rotate(k, cos, sin, rotary_dim, interleaved)
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    block_size = k_cache.shape[1]
    blocks, offsets = slots // block_size, slots % block_size
    if k_cache.dtype == torch.int8:
        k_cache[blocks, offsets], k_scale[blocks, offsets] = quantize_kv_rows(k[keep])
        v_cache[blocks, offsets], v_scale[blocks, offsets] = quantize_kv_rows(v[keep])
        return
    k_cache[blocks, offsets] = k[keep].to(k_cache.dtype)
    v_cache[blocks, offsets] = v[keep].to(v_cache.dtype)


def paged_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    block_tables: torch.Tensor, seq_lens: torch.Tensor,
                    cu_seqlens_q: torch.Tensor, scale: float, window: int = 0,
                    k_scale: torch.Tensor | None = None, v_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Varlen causal attention of new query rows over the paged cache (prefill chunks and decode).

    q: [num_tokens, num_heads, head_dim]; block_tables: [num_seqs, max_blocks] int32;
    seq_lens: [num_seqs] int32; cu_seqlens_q: [num_seqs + 1] int32. Scores and softmax in fp32.
    k_scale, v_scale: the row scales of an int8 cache (see rotary_store_kv).
    Returns [num_tokens, num_heads, head_dim] in q's dtype.
    """
    num_heads, head_dim = q.shape[1], q.shape[2]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty_like(q)
    for b in range(seq_lens.shape[0]):
        start, end = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        seq_len, q_len = int(seq_lens[b]), end - start
        num_blocks = (seq_len + block_size - 1) // block_size
        blocks = block_tables[b, :num_blocks].long()
        k = _cache_rows(k_cache, k_scale, blocks).reshape(-1, num_kv_heads, head_dim)[:seq_len]
        v = _cache_rows(v_cache, v_scale, blocks).reshape(-1, num_kv_heads, head_dim)[:seq_len]
        if num_kv_heads != num_heads:
            k = k.repeat_interleave(num_heads // num_kv_heads, dim=1)
            v = v.repeat_interleave(num_heads // num_kv_heads, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q[start:end].float(), k) * scale
        q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)[:, None]
        k_pos = torch.arange(seq_len, device=q.device)[None, :]
        visible = k_pos <= q_pos
        if window > 0:
            visible &= k_pos > q_pos - window
        scores.masked_fill_(~visible, float("-inf"))
        out[start:end] = torch.einsum("hqk,khd->qhd", scores.softmax(dim=-1), v).to(q.dtype)
    return out


def quantize_rows(x: torch.Tensor, gamma: torch.Tensor | None = None, beta: torch.Tensor | None = None,
                  eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8 quantisation of activations, stored as uint8 with zero point 128 (the
    input of int8_linear's u8 x s8 VNNI GEMM), optionally after a layer norm computed in fp32.

    x: [num_rows, dim] (rows may be strided); gamma, beta: [dim] or None (no layer norm).
    Returns (xq [num_rows, dim] uint8, scales [num_rows] fp32) with
    v ~= (xq - 128) * scales[:, None], v = layer_norm(x) or x. A row of zeros gets scale 0."""
    v = x.float()
    if gamma is not None:
        v = torch.nn.functional.layer_norm(v, (x.shape[1],), gamma.float(),
                                           None if beta is None else beta.float(), eps)
    xq, scales = quantize_kv_rows(v)  # the same symmetric per-row int8
    return (xq.to(torch.int32) + 128).to(torch.uint8), scales


def pack_int8_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The int8_linear layout of an int8 weight [out_features, in_features]:
    packed [ceil(out / 16), ceil(in / 4), 16, 4] int8 with packed[p, k4, c, i] = weight[16 p + c, 4 k4 + i]
    (zeros past the edges: 16 output columns per panel, 4 consecutive inputs per 32-bit lane), and
    colsum [16 * ceil(out / 16)] int32, each column's sum of weights (0 on padding)."""
    if weight.dtype != torch.int8 or weight.dim() != 2:
        raise ValueError(f"weight: expected a 2-d int8 tensor, got {list(weight.shape)} {weight.dtype}")
    out_features, in_features = weight.shape
    n_pad, k_pad = -out_features % 16, -in_features % 4
    w = torch.nn.functional.pad(weight, (0, k_pad, 0, n_pad))
    packed = w.view(w.shape[0] // 16, 16, w.shape[1] // 4, 4).permute(0, 2, 1, 3).contiguous()
    return packed, w.sum(dim=1, dtype=torch.int32)


def quantize_per_channel(weight: torch.Tensor, rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """[out, in] float -> (int8 [out, in], fp32 scales [out]) with weight ~= q * scale[:, None]:
    scale = max(max |w| / 127, 1e-12) per output channel, q = round(w / scale) (to nearest even)
    clamped to +-127. `rows` output channels at a time, so a large lm_head's fp32 temporaries stay small."""
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scale = torch.empty(weight.shape[0], device=weight.device)
    for r in range(0, weight.shape[0], rows):
        w = weight[r:r + rows].detach().float()
        s = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
        q[r:r + rows] = torch.round(w / s[:, None]).clamp_(-127, 127)
        scale[r:r + rows] = s
    return q, scale


def quantize_pack_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A float weight [out, in] -> (packed, colsum, scales) for int8_linear: quantize_per_channel,
    then pack_int8_weight (the load-time step of dtype="int8")."""
    q, scales = quantize_per_channel(weight)
    packed, colsum = pack_int8_weight(q)
    return packed, colsum, scales


def int8_linear(x: torch.Tensor, packed: torch.Tensor, colsum: torch.Tensor, w_scales: torch.Tensor,
                bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                act_start: int | None = None, gamma: torch.Tensor | None = None, beta: torch.Tensor | None = None,
                eps: float = 1e-5, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """An int8 linear layer of dtype="int8": x (through the layer norm gamma, beta when gamma is
    given) quantised per row by quantize_rows, times the int8 weight w [N, K] packed by
    pack_int8_weight, then dequantised with the epilogue fused:
        out[m, n] = act(float(acc[m, n]) * w_scales[n] * x_scales[m] + bias[n]) + residual[m, n]
    with acc[m, n] = sum_k (xq[m, k] - 128) * w[n, k] exact in int32 and act = gelu (tanh) on columns
    n >= act_start (None: none).

    x: [M, K] fp32 or bf16 (rows may be strided); gamma, beta: [K] in x's dtype; w_scales: [N] fp32;
    bias: [N] and residual: [M, N] in out_dtype (None: x's dtype; fp32 or bf16).
    Returns a new [M, N] tensor of out_dtype."""
    xq, x_scales = quantize_rows(x, gamma, beta, eps)
    return int8_gemm(xq, x_scales, packed, colsum, w_scales, bias, residual, act_start, out_dtype or x.dtype)


def int8_gemm(xq: torch.Tensor, x_scales: torch.Tensor, packed: torch.Tensor, colsum: torch.Tensor,
              w_scales: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None,
              act_start: int | None, out_dtype: torch.dtype) -> torch.Tensor:
    """The second half of int8_linear, from quantize_rows' output (xq [M, K] uint8, x_scales [M])."""
    w = _unpack(packed, w_scales.shape[0], xq.shape[1])
    acc = (xq.to(torch.int64) - 128) @ w.to(torch.int64).t()
    v = acc.to(torch.int32).float() * w_scales * x_scales[:, None]
    return _epilogue(v, bias, residual, act_start, out_dtype)


def _unpack(packed: torch.Tensor, out_features: int, in_features: int) -> torch.Tensor:
    """The [out_features, in_features] weight of a packed [panels, words, 16, per_word] layout."""
    return packed.permute(0, 2, 1, 3).reshape(packed.shape[0] * 16, -1)[:out_features, :in_features]


def _epilogue(v: torch.Tensor, bias, residual, act_start, out_dtype) -> torch.Tensor:
    """act(v + bias) + residual in fp32, act = tanh gelu on columns >= act_start; rounded once."""
    if bias is not None:
        v = v + bias.float()
    if act_start is not None:
        v[:, act_start:] = torch.nn.functional.gelu(v[:, act_start:], approximate="tanh")
    if residual is not None:
        v = v + residual.float()
    return v.to(out_dtype)


def pack_bf16_weight(weight: torch.Tensor) -> torch.Tensor:
    """The bf16_linear layout of a bf16 weight [out_features, in_features]:
    [ceil(out / 16), ceil(in / 2), 16, 2] bf16 with packed[p, k2, c, i] = weight[16 p + c, 2 k2 + i]
    (zeros past the edges: 16 output columns per panel, a pair of inputs per 32-bit word)."""
    if weight.dtype != torch.bfloat16 or weight.dim() != 2:
        raise ValueError(f"weight: expected a 2-d bfloat16 tensor, got {list(weight.shape)} {weight.dtype}")
    w = torch.nn.functional.pad(weight, (0, -weight.shape[1] % 2, 0, -weight.shape[0] % 16))
    return w.view(w.shape[0] // 16, 16, w.shape[1] // 2, 2).permute(0, 2, 1, 3).contiguous()


def bf16_linear(x: torch.Tensor, packed: torch.Tensor, out_features: int, bias: torch.Tensor | None = None,
                residual: torch.Tensor | None = None, act_start: int | None = None,
                gamma: torch.Tensor | None = None, beta: torch.Tensor | None = None, eps: float = 1e-5,
                out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """A bf16 linear layer: x (through the layer norm gamma, beta when gamma is given, in fp32) rounded
    to bf16, times the bf16 weight w [N, K] packed by pack_bf16_weight with fp32 sums, then
    out = act(h w^T + bias) + residual, act = gelu (tanh) on columns >= act_start (None: none).

    x: [M, K] fp32 or bf16 (rows may be strided); gamma, beta: [K] in x's dtype; bias: [N] and
    residual: [M, N] in out_dtype (None: x's dtype; fp32 or bf16). fp32 out_dtype gives the exact
    fp32 results of the bf16 operands (logits without bf16 rounding). Returns a new [M, N] tensor."""
    out_dtype = out_dtype or x.dtype
    h = x.float()
    if gamma is not None:
        h = torch.nn.functional.layer_norm(h, (x.shape[1],), gamma.float(), None if beta is None else beta.float(), eps)
    v = h.to(torch.bfloat16).float() @ _unpack(packed, out_features, x.shape[1]).float().t()
    return _epilogue(v, bias, residual, act_start, out_dtype)


def int4_linear(x: torch.Tensor, packed: torch.Tensor, params: torch.Tensor, out_features: int,
                bias: torch.Tensor | None = None, residual: torch.Tensor | None = None,
                act_start: int | None = None, gamma: torch.Tensor | None = None, beta: torch.Tensor | None = None,
                eps: float = 1e-5, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """An int4 linear layer of dtype="int4": x (through the layer norm gamma, beta when gamma is given)
    quantised per row to signed int8 a with scales x_scales (quantize_rows' arithmetic), times the
    group-wise 4-bit weight of quantize_pack_int4 (packed, params; kernels/int4_pack.py, unpack_int4):
        out[m, n] = act(x_scales[m] sum_k a[m, k] (scale[n, g(k)] u[n, k] + min[n, g(k)]) + bias[n]) + residual[m, n]
    act = gelu (tanh) on columns n >= act_start (None: none). Shapes and dtypes as int8_linear."""
    xq, x_scales = quantize_rows(x, gamma, beta, eps)
    return int4_gemm(xq, x_scales, packed, params, out_features, bias, residual, act_start, out_dtype or x.dtype)


def int4_gemm(xq: torch.Tensor, x_scales: torch.Tensor, packed: torch.Tensor, params: torch.Tensor,
              out_features: int, bias: torch.Tensor | None, residual: torch.Tensor | None,
              act_start: int | None, out_dtype: torch.dtype) -> torch.Tensor:
    """The second half of int4_linear, from quantize_rows' output (xq [M, K] uint8 + 128, x_scales [M])."""
    w = unpack_int4(packed, params, out_features)[:, :xq.shape[1]]
    v = ((xq.to(torch.int32) - 128).float() @ w.t()) * x_scales[:, None]
    return _epilogue(v, bias, residual, act_start, out_dtype)


def bind_int4_linear(packed: torch.Tensor, params: torch.Tensor, in_features: int, out_features: int,
                     bias: torch.Tensor | None = None, gamma: torch.Tensor | None = None,
                     beta: torch.Tensor | None = None, eps: float = 1e-5, x_dtype: torch.dtype = torch.bfloat16,
                     out_dtype: torch.dtype | None = None):
    """A layer's int4_linear with its fixed operands bound: f(x, residual=None, act_start=None)."""
    def linear(x, residual=None, act_start=None):
        return int4_linear(x, packed, params, out_features, bias, residual, act_start, gamma, beta, eps,
                           out_dtype or x_dtype)
    return linear


def bind_int8_linear(packed: torch.Tensor, colsum: torch.Tensor, w_scales: torch.Tensor, in_features: int,
                     bias: torch.Tensor | None = None, gamma: torch.Tensor | None = None,
                     beta: torch.Tensor | None = None, eps: float = 1e-5, x_dtype: torch.dtype = torch.bfloat16,
                     out_dtype: torch.dtype | None = None):
    """A layer's int8_linear with its fixed operands bound: f(x, residual=None, act_start=None)
    (the C++ backend checks those operands once here; this reference takes them per call)."""
    def linear(x, residual=None, act_start=None):
        return int8_linear(x, packed, colsum, w_scales, bias, residual, act_start, gamma, beta, eps,
                           out_dtype or x_dtype)
    return linear


def bind_bf16_linear(packed: torch.Tensor, in_features: int, out_features: int, bias: torch.Tensor | None = None,
                     gamma: torch.Tensor | None = None, beta: torch.Tensor | None = None, eps: float = 1e-5,
                     x_dtype: torch.dtype = torch.bfloat16, out_dtype: torch.dtype | None = None):
    """A layer's bf16_linear with its fixed operands bound: f(x, residual=None, act_start=None)."""
    def linear(x, residual=None, act_start=None):
        return bf16_linear(x, packed, out_features, bias, residual, act_start, gamma, beta, eps,
                           out_dtype or x_dtype)
    return linear


bind_rotary_store_kv, bind_paged_attention = closure_binders(rotary_store_kv, paged_attention)


def argmax_logsumexp(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of logits [rows, vocab] fp32: (argmax [rows] int64, the first maximal index;
    logsumexp [rows] fp32). What the sampler needs of every row: the greedy token and the
    normaliser of its logprobs."""
    return logits.argmax(dim=-1), logits.logsumexp(dim=-1)
