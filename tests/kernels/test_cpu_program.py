"""kernels.cpu_program.LayerProgram: a recorded layer gives bit-identical results to calling its ops
one by one (same kernels, same argument templates), over odd row counts, several sequences, a
windowed layer, float and int8 caches and every packed linear kind; and every bad build or call
argument is refused with an error naming it, before any C++ runs."""
from __future__ import annotations

import pytest
import torch

from kernel_helpers import random_block_tables
from kernels import cpu
from kernels.cpu_program import LayerProgram

HIDDEN, HEADS, INNER, BLOCK = 96, 3, 160, 8
HEAD_DIM = HIDDEN // HEADS


def _linear(kind: str, n: int, k: int, norm: bool = False, bias: bool = True):
    w = torch.randn(n, k) * 0.05
    b = torch.randn(n).to(torch.bfloat16) if bias else None
    gamma, beta = (torch.randn(k).to(torch.bfloat16), torch.randn(k).to(torch.bfloat16)) if norm else (None, None)
    if kind == "int8":
        packed, colsum, scales = cpu.quantize_pack_int8(w)
        return cpu.bind_int8_linear(packed, colsum, scales, k, b, gamma, beta)
    if kind == "int4":
        packed, params = cpu.quantize_pack_int4(w, 32)
        return cpu.bind_int4_linear(packed, params, k, n, b, gamma, beta)
    from kernels.reference import pack_bf16_weight
    return cpu.bind_bf16_linear(pack_bf16_weight(w.to(torch.bfloat16)), k, n, b, gamma, beta)


def _cache(num_blocks: int, cache_dtype: torch.dtype):
    shape = (num_blocks, BLOCK, HEADS, HEAD_DIM)
    k_cache, v_cache = torch.zeros(shape, dtype=cache_dtype), torch.zeros(shape, dtype=cache_dtype)
    scales = (torch.zeros(shape[:3]), torch.zeros(shape[:3])) if cache_dtype == torch.int8 else (None, None)
    return k_cache, v_cache, scales


def _step(seqs: list[tuple[int, int]]):
    """Metadata of one step: seqs = [(seq_len, q_len)], the q_len new tokens last."""
    seq_lens = [s for s, _ in seqs]
    tables, num_blocks = random_block_tables(seq_lens, BLOCK)
    positions, slots = [], []
    for b, (s, q) in enumerate(seqs):
        for p in range(s - q, s):
            positions.append(p)
            slots.append(int(tables[b, p // BLOCK]) * BLOCK + p % BLOCK)
    cu = torch.tensor([0] + [q for _, q in seqs]).cumsum(0).to(torch.int32)
    return (torch.tensor(positions), torch.tensor(slots), tables, torch.tensor(seq_lens, dtype=torch.int32),
            cu), num_blocks


class _Layer:
    """A CodeGen-style layer (merged in_proj, rotary, parallel residual) and a GPT-Neo-style one
    (separate fc_in after ln_2, a window, no rotary) over one cache."""

    def __init__(self, kind: str, cache, window: int, rotary: bool):
        k_cache, v_cache, (k_scale, v_scale) = cache
        self.rotary = rotary
        cos_sin = cpu_cos_sin = None
        if rotary:
            from kernels.reference import rotary_cos_sin
            cpu_cos_sin = cos_sin = rotary_cos_sin(8, 512)
        self.store = cpu.bind_rotary_store_kv(cpu_cos_sin, 8 if rotary else 0, True, k_cache, v_cache, k_scale,
                                              v_scale)
        self.attend = cpu.bind_paged_attention(k_cache, v_cache, HEAD_DIM ** -0.5, window, k_scale, v_scale)
        self.cos_sin = cos_sin
        if rotary:  # in_proj = [qkv | fc_in] with gelu on the fc_in columns
            self.in_proj = _linear(kind, 3 * HIDDEN + INNER, HIDDEN, norm=True)
        else:
            self.in_proj = _linear(kind, 3 * HIDDEN, HIDDEN, norm=True, bias=False)
            self.fc_in = _linear(kind, INNER, HIDDEN, norm=True)
        self.out_proj = _linear(kind, HIDDEN, HIDDEN)
        self.fc_out = _linear(kind, HIDDEN, INNER)

    def one_by_one(self, x, meta):
        positions, slots, tables, seq_lens, cu = meta
        if self.rotary:
            y = self.in_proj(x, None, 3 * HIDDEN)
        else:
            y = self.in_proj(x)
        qkv = y[:, :3 * HIDDEN].unflatten(1, (3, HEADS, HEAD_DIM))
        q, k, v = qkv.unbind(1)
        self.store(q, k, v, positions, slots)
        a = self.attend(q, tables, seq_lens, cu).flatten(1)
        x1 = self.out_proj(a, x)
        if self.rotary:
            return self.fc_out(y[:, 3 * HIDDEN:], x1)
        return self.fc_out(self.fc_in(x1, None, 0), x1)

    def record(self, program: LayerProgram, bufs: dict) -> None:
        y = bufs["y"] if self.rotary else bufs["qkv"]
        program.linear(self.in_proj, src=0, dst=y, act_start=3 * HIDDEN if self.rotary else None)
        program.store_kv(self.store, y, HEADS, q_col=0, k_col=HIDDEN, v_col=2 * HIDDEN)
        program.attend(self.attend, y, HEADS, q_col=0, dst=bufs["a"])
        program.linear(self.out_proj, src=bufs["a"], dst=bufs["x1"], residual=0)
        if self.rotary:
            program.linear(self.fc_out, src=y, dst=0, residual=bufs["x1"], src_col=3 * HIDDEN)
        else:
            program.linear(self.fc_in, src=bufs["x1"], dst=bufs["m"], act_start=0)
            program.linear(self.fc_out, src=bufs["m"], dst=0, residual=bufs["x1"])


@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.int8], ids=["bf16-cache", "int8-cache"])
@pytest.mark.parametrize("kind", ["int8", "bf16", "int4"])
@pytest.mark.parametrize("seqs", [[(1, 1)], [(40, 1), (7, 1), (23, 1)], [(33, 33)], [(50, 7), (300, 1), (9, 2)]],
                         ids=["one", "decode3", "prefill33", "mixed"])
def test_program_equals_ops_one_by_one(seqs, kind, cache_dtype):
    meta, num_blocks = _step(seqs)
    caches = [_cache(num_blocks, cache_dtype) for _ in range(2)]
    layers = [_Layer(kind, caches[0], window=0, rotary=True), _Layer(kind, caches[1], window=16, rotary=False)]
    x = torch.randn(int(meta[4][-1]), HIDDEN).to(torch.bfloat16)

    expected = x
    for layer in layers:
        expected = layer.one_by_one(expected, meta)
    expected_kv = [(c[0].clone(), c[1].clone()) for c in caches]
    for c in caches:  # the program must write the cache again, not find it written
        c[0].zero_(), c[1].zero_()

    program = LayerProgram(HIDDEN, torch.bfloat16)
    bufs = {"y": program.buffer(3 * HIDDEN + INNER, torch.bfloat16), "a": program.buffer(HIDDEN, torch.bfloat16),
            "x1": program.buffer(HIDDEN, torch.bfloat16), "m": program.buffer(INNER, torch.bfloat16),
            "qkv": program.buffer(3 * HIDDEN, torch.bfloat16)}
    for layer in layers:
        layer.record(program, bufs)
    assert program.num_ops == 11
    actual = x.clone()
    assert program(actual, *meta) is actual
    assert torch.equal(actual, expected)
    for c, (k, v) in zip(caches, expected_kv):
        assert torch.equal(c[0], k) and torch.equal(c[1], v)
    # A second, smaller step reuses the scratch buffers of the first.
    small_meta, _ = _step([(1, 1)])
    one = x[:1].clone()
    program(one, *small_meta)
    assert torch.isfinite(one.float()).all()
    # The first layer's ops only (a prefill step's program stops before the last layer).
    first = x.clone()
    assert program(first, *meta, num_ops=5) is first
    assert torch.equal(first, layers[0].one_by_one(x, meta))


def _small_program():
    program = LayerProgram(HIDDEN, torch.bfloat16)
    out = program.buffer(HIDDEN, torch.bfloat16)
    return program, out, _linear("int8", HIDDEN, HIDDEN)


def test_build_errors_name_the_argument():
    program, out, linear = _small_program()
    with pytest.raises(TypeError, match="op"):
        program.linear(lambda x: x, src=0, dst=out)
    with pytest.raises(ValueError, match="dst: buffer 0 is also"):
        program.linear(linear, src=0, dst=0)
    with pytest.raises(ValueError, match="dst: buffer 1 is also"):
        program.linear(linear, src=0, dst=out, residual=out)
    with pytest.raises(ValueError, match="src: no buffer 7"):
        program.linear(linear, src=7, dst=out)
    with pytest.raises(ValueError, match="src: columns 10:106"):
        program.linear(linear, src=0, dst=out, src_col=10)
    with pytest.raises(ValueError, match="act_start"):
        program.linear(linear, src=0, dst=out, act_start=HIDDEN + 1)
    wide = program.buffer(2 * HIDDEN, torch.bfloat16)
    with pytest.raises(ValueError, match="dst: buffer 2 is 192 wide"):
        program.linear(linear, src=0, dst=wide)
    fp32 = program.buffer(HIDDEN, torch.float32)
    with pytest.raises(TypeError, match="dst: buffer 3 holds torch.float32"):
        program.linear(linear, src=0, dst=fp32)
    with pytest.raises(TypeError, match="dtype"):
        program.buffer(4, torch.int8)
    k_cache, v_cache, _ = _cache(4, torch.bfloat16)
    attend = cpu.bind_paged_attention(k_cache, v_cache, 1.0)
    with pytest.raises(ValueError, match="num_heads"):
        program.attend(attend, 0, 2, q_col=0, dst=out)
    with pytest.raises(ValueError, match="dst: buffer 2 is 192 wide"):
        program.attend(attend, 0, HEADS, q_col=0, dst=wide)
    with pytest.raises(TypeError, match="RotaryStoreKV"):
        program.store_kv(attend, 0, HEADS, 0, 0, 0)
    assert program.num_ops == 0  # nothing refused was recorded


def test_call_errors_name_the_argument():
    program, out, linear = _small_program()
    program.linear(linear, src=0, dst=out)
    meta, _ = _step([(5, 2)])
    x = torch.randn(2, HIDDEN).to(torch.bfloat16)
    with pytest.raises(ValueError, match="x: expected a contiguous"):
        program(x.float(), *meta)
    with pytest.raises(ValueError, match="x: expected a contiguous"):
        program(torch.randn(HIDDEN, 2).to(torch.bfloat16).t(), *meta)
    with pytest.raises(ValueError, match="positions"):
        program(x, meta[0][:1], *meta[1:])
    with pytest.raises(ValueError, match="block_tables"):
        program(x, *meta[:2], meta[2][0], *meta[3:])
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        program(x, *meta[:4], meta[4][:1])
    with pytest.raises(ValueError, match="cpu"):
        program(x.to("meta"), *meta)
    for bad in (-1, 2):
        with pytest.raises(ValueError, match="num_ops"):
            program(x, *meta, num_ops=bad)
    same = x.clone()
    program(same, *meta, num_ops=0)
    assert torch.equal(same, x)
