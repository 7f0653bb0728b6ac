"""C++ CPU ops against their torch references at CodeGen-350M decode shapes: 16 heads, head_dim 64,
rotary_dim 32 (interleaved), hidden 1024, vocab 51200, block_size 16; batch 1..64, context 128..2048."""
from __future__ import annotations

import pytest
import torch

from kernels import cpu, reference

PROVIDERS = {"torch": reference, "cpu": cpu}
NUM_HEADS, HEAD_DIM, ROTARY_DIM, HIDDEN, VOCAB, BLOCK_SIZE = 16, 64, 32, 1024, 51200, 16
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _paged_decode_inputs(batch: int, context: int, dtype: torch.dtype):
    """One decode row per sequence, each with `context` tokens in shuffled cache blocks."""
    blocks_per_seq = context // BLOCK_SIZE
    num_blocks = batch * blocks_per_seq
    shape = (num_blocks, BLOCK_SIZE, NUM_HEADS, HEAD_DIM)
    k_cache, v_cache = torch.randn(shape).to(dtype), torch.randn(shape).to(dtype)
    tables = torch.randperm(num_blocks, dtype=torch.int32).view(batch, blocks_per_seq)
    q = torch.randn(batch, NUM_HEADS, HEAD_DIM).to(dtype)
    seq_lens = torch.full((batch,), context, dtype=torch.int32)
    cu = torch.arange(batch + 1, dtype=torch.int32)
    return q, k_cache, v_cache, tables, seq_lens, cu


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("context", [128, 512, 2048])
@pytest.mark.parametrize("batch", [1, 8, 64])
def test_paged_attention(measure, batch, context, dtype, provider):
    q, k_cache, v_cache, tables, seq_lens, cu = _paged_decode_inputs(batch, context, DTYPES[dtype])
    op = PROVIDERS[provider].paged_attention
    num_bytes = 2 * k_cache.numel() * k_cache.element_size() + 2 * q.numel() * q.element_size()
    measure("paged_attention", provider, f"{dtype} b={batch} ctx={context}",
            lambda: op(q, k_cache, v_cache, tables, seq_lens, cu, 1.0, 0), num_bytes)


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("batch", [1, 8, 64])
def test_rotary_store_kv(measure, batch, dtype, provider):
    dt = DTYPES[dtype]
    qkv = torch.randn(batch, 3 * NUM_HEADS, HEAD_DIM).to(dt)
    q, k, v = qkv.split(NUM_HEADS, dim=1)
    num_blocks = batch * 2048 // BLOCK_SIZE
    k_cache = torch.zeros(num_blocks, BLOCK_SIZE, NUM_HEADS, HEAD_DIM, dtype=dt)
    v_cache = torch.zeros_like(k_cache)
    positions = torch.randint(0, 2048, (batch,))
    slots = torch.randperm(num_blocks * BLOCK_SIZE)[:batch]
    cos_sin = reference.rotary_cos_sin(ROTARY_DIM, 2048)
    op = PROVIDERS[provider].rotary_store_kv
    # q, k read + written, v read, k and v written to the cache.
    num_bytes = 7 * batch * NUM_HEADS * HEAD_DIM * qkv.element_size()
    measure("rotary_store_kv", provider, f"{dtype} b={batch}",
            lambda: op(q, k, v, positions, cos_sin, ROTARY_DIM, True, k_cache, v_cache, slots), num_bytes)


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("batch", [1, 8, 64])
def test_gated_embedding(measure, batch, dtype, provider):
    wte = torch.randn(VOCAB, HIDDEN).to(DTYPES[dtype])
    ids = torch.randint(0, VOCAB, (batch,))
    modality = torch.zeros(batch, dtype=torch.int64)
    remap = torch.arange(VOCAB)
    positions = torch.randint(0, 2048, (batch,))
    op = PROVIDERS[provider].gated_embedding
    num_bytes = 2 * batch * HIDDEN * wte.element_size()  # rows read + written
    measure("gated_embedding", provider, f"{dtype} b={batch}",
            lambda: op(ids, modality, remap, wte, None, positions), num_bytes)


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("length", [256, 1024])
def test_paged_attention_prefill(measure, length, dtype, provider):
    """For reference next to decode: one whole prompt (compute bound, so GB/s means little)."""
    q, k_cache, v_cache, tables, seq_lens, _ = _paged_decode_inputs(1, length, DTYPES[dtype])
    q = torch.randn(length, NUM_HEADS, HEAD_DIM).to(DTYPES[dtype])
    cu = torch.tensor([0, length], dtype=torch.int32)
    op = PROVIDERS[provider].paged_attention
    num_bytes = 2 * k_cache.numel() * k_cache.element_size() + 2 * q.numel() * q.element_size()
    measure("paged_attn_prefill", provider, f"{dtype} len={length}",
            lambda: op(q, k_cache, v_cache, tables, seq_lens, cu, 1.0, 0), num_bytes)


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("context", [128, 512, 2048])
@pytest.mark.parametrize("batch", [1, 8, 64])
def test_paged_attention_int8_cache(measure, batch, context, provider):
    """kv_cache_dtype="int8": bf16 queries over int8 rows with one fp32 scale each."""
    q, k_cache, v_cache, tables, seq_lens, cu = _paged_decode_inputs(batch, context, torch.bfloat16)
    (k8, k_scale), (v8, v_scale) = reference.quantize_kv_rows(k_cache), reference.quantize_kv_rows(v_cache)
    op = PROVIDERS[provider].paged_attention
    num_bytes = 2 * (k8.numel() + 4 * k_scale.numel()) + 2 * q.numel() * q.element_size()
    measure("paged_attention", provider, f"int8 cache b={batch} ctx={context}",
            lambda: op(q, k8, v8, tables, seq_lens, cu, 1.0, 0, k_scale=k_scale, v_scale=v_scale), num_bytes)


@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("rows", [1, 32, 2048])
def test_quantize_rows(measure, rows, provider):
    """Layer norm + per-row int8 quantisation of a linear's bf16 input (dtype="int8")."""
    x = torch.randn(rows, HIDDEN).to(torch.bfloat16)
    gamma, beta = torch.randn(HIDDEN).to(torch.bfloat16), torch.randn(HIDDEN).to(torch.bfloat16)
    op = PROVIDERS[provider].quantize_rows
    measure("quantize_rows", provider, f"ln bf16 rows={rows}", lambda: op(x, gamma, beta), 3 * x.numel())




@pytest.mark.parametrize("provider", list(PROVIDERS))
@pytest.mark.parametrize("rows", [1, 32, 2048])
def test_int8_linear(measure, rows, provider):
    """fc_in of dtype="int8": ln_2 + quantisation of [rows, hidden] bf16, x [4 * hidden, hidden] int8
    weights, bias and gelu fused; bytes = the int8 weight."""
    w = torch.randint(-127, 128, (4 * HIDDEN, HIDDEN), dtype=torch.int8)
    packed, colsum = reference.pack_int8_weight(w)
    x = torch.randn(rows, HIDDEN).to(torch.bfloat16)
    gamma, beta = torch.randn(HIDDEN).to(torch.bfloat16), torch.randn(HIDDEN).to(torch.bfloat16)
    w_scales, bias = torch.rand(4 * HIDDEN) * 1e-3, torch.randn(4 * HIDDEN).to(torch.bfloat16)
    op = PROVIDERS[provider].int8_linear
    measure("int8_linear", provider, f"fc_in ln gelu rows={rows}",
            lambda: op(x, packed, colsum, w_scales, bias, None, 0, gamma, beta), w.numel())


@pytest.mark.parametrize("provider", ["torch", "cpu"])
@pytest.mark.parametrize("rows", [1, 32, 2048])
def test_bf16_linear(measure, rows, provider):
    """fc_in of a bf16 model: [rows, hidden] x [4 * hidden, hidden] bf16 with bias and gelu; "torch"
    is what the engine ran before (oneDNN's GEMM with the gelu post-op), "cpu" the packed C++ GEMM;
    bytes = the bf16 weight."""
    w = torch.randn(4 * HIDDEN, HIDDEN).to(torch.bfloat16)
    packed, bias = reference.pack_bf16_weight(w), torch.randn(4 * HIDDEN).to(torch.bfloat16)
    x = torch.randn(rows, HIDDEN).to(torch.bfloat16)
    if provider == "torch":
        fn = lambda: torch.ops.mkldnn._linear_pointwise(x, w, bias, "gelu", [], "tanh")  # noqa: E731
    else:
        fn = lambda: cpu.bf16_linear(x, packed, 4 * HIDDEN, bias, None, 0)  # noqa: E731
    measure("bf16_linear", provider, f"fc_in gelu rows={rows}", fn, 2 * w.numel())
