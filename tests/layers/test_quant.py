"""dtype="int8": Int8Linear (fused layer norm, gelu and residual) stays close to the float math on
both of its paths, an int8 model keeps teacher-forced next-token agreement with fp32, and batched
int8 greedy decoding gives the tokens of one-at-a-time decoding."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine import LLM, SamplingParams
from engine.layers.linear import activation, project
from engine.layers.quant import Int8Linear
from engine.tools.bench_quality import agreement
from tests.layers.quant_helpers import assert_batched_equals_single, norm_gelu_residual_case, relative_error


@pytest.fixture(params=["packed", "dequantized"])
def int8_path(request):
    """Which Int8Linear path a test runs: the CPU int8 GEMM on packed weights or the
    dequantized-weight path of other devices."""
    return request.param


def _int8(linear, path):
    return Int8Linear.from_linear(linear, packed=path == "packed")


@pytest.mark.parametrize("rows", [1, 7, 33, 300])
@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_close_to_float(rows, bias, int8_path):
    linear = nn.Linear(96, 80, bias=bias).to(torch.bfloat16)
    x = torch.randn(rows, 96).to(torch.bfloat16)
    ref = F.linear(x.float(), linear.weight.float(), None if linear.bias is None else linear.bias.float())
    out = _int8(linear, int8_path)(x)
    assert out.dtype == torch.bfloat16 and out.shape == (rows, 80)
    assert relative_error(out, ref) < 0.03, f"at {rows} rows"


@pytest.mark.parametrize("rows", [1, 33, 300])
def test_int8_linear_fuses_norm_gelu_residual(rows, int8_path):
    linear, norm, x, residual, _, ref = norm_gelu_residual_case(rows)
    out = _int8(linear, int8_path)(x, norm=norm, act_start=40, residual=residual)
    assert out.dtype == torch.bfloat16 and out.shape == (rows, 96)
    assert relative_error(out, ref) < 0.03


@pytest.mark.parametrize("act_name", ["gelu_new", "gelu", "relu"])
@pytest.mark.parametrize("rows", [1, 33, 300])
def test_project_fused_matches_unfused(act_name, rows, int8_path):
    # bf16 on the CPU runs the activation as a oneDNN post-op, int8 in its epilogue (tanh gelu) or
    # after it (the others); all stay close to act(linear(x)).
    linear = nn.Linear(64, 96).to(torch.bfloat16)
    x = torch.randn(rows, 64).to(torch.bfloat16)
    ref = activation(act_name)(F.linear(x.float(), linear.weight.float(), linear.bias.float()))
    for module, tol in ((linear, 0.01), (_int8(linear, int8_path), 0.03)):
        out = project(module, x, act=act_name)
        assert out.dtype == torch.bfloat16 and out.shape == (rows, 96)
        assert relative_error(out, ref) < tol, type(module).__name__


@pytest.mark.parametrize("chunk", [0, 8], ids=["whole", "chunked"])
def test_int8_model_agrees_with_fp32(tiny_codegen_dir, tiny_gptneo_dir, chunk):
    # Teacher-forced next-token argmax over fixed prompts. Tiny random models have many near-tied
    # logits (bf16 alone agrees ~97%), hence the margin; the trained bundled model reaches ~99% with
    # int8 (README, Performance).
    for model in (tiny_codegen_dir, tiny_gptneo_dir):
        result = agreement(str(model), ["int8"], num=3, length=96, chunk=chunk)
        assert result["int8"] >= 0.85, result


def test_int8_generates_and_merges_codegen_projections(tiny_codegen_dir):
    llm = LLM(model=str(tiny_codegen_dir), dtype="int8", num_kv_blocks=64)
    model = llm.engine.runner.model
    assert llm.engine.runner.quant == "int8"
    assert not any(type(m) is nn.Linear for m in model.modules())
    assert all(layer.in_proj is not None and layer.attn.qkv_proj is None for layer in model.layers)
    outs = llm.generate(["def add(a, b):", "import os\n"],
                        SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)
    assert all(len(o.outputs[0].token_ids) == 8 for o in outs)


@pytest.mark.parametrize("dtype", ["int8", "bfloat16"])
@pytest.mark.parametrize("which", ["codegen", "gptneo"])
def test_packed_batched_equals_single(tiny_codegen_dir, tiny_gptneo_dir, which, dtype):
    # The packed CPU GEMMs sum each output over k in a fixed order whatever the number of rows, and
    # int8 scales activations per row (exact int32 sums): a row's result does not depend on the
    # other rows of the step, so batching (and chunking) leaves greedy tokens unchanged.
    model = tiny_codegen_dir if which == "codegen" else tiny_gptneo_dir
    llm = LLM(model=str(model), dtype=dtype, num_kv_blocks=256, enable_prefix_caching=False)
    assert_batched_equals_single(llm)


def test_logits_fp32_undoes_bf16_output_rounding():
    # A bf16 lm_head rounds logits to bf16; logits_fp32 recomputes each row's largest ones in fp32, so
    # they (and the argmax) equal fp32 math on the same bf16 operands. An int8 head writes fp32.
    from engine.layers.linear import logits_fp32
    head = nn.Linear(64, 500).to(torch.bfloat16)
    norm = nn.LayerNorm(64).to(torch.bfloat16)
    hidden = torch.randn(7, 64).to(torch.bfloat16)
    exact = F.linear(norm(hidden).float(), head.weight.float(), head.bias.float())
    out = logits_fp32(head, norm, hidden)
    assert out.dtype == torch.float32 and out.shape == (7, 500)
    top = exact.topk(3).indices  # surely among the 8 largest bf16 logits that are refined
    assert torch.allclose(out.gather(1, top), exact.gather(1, top), rtol=1e-5, atol=1e-5)
    assert torch.equal(out.argmax(-1), exact.argmax(-1))
    assert (out - exact).abs().max() < 0.05  # the rest: bf16 rounding only
    int8_out = logits_fp32(Int8Linear.from_linear(head, torch.float32), norm, hidden)
    assert int8_out.dtype == torch.float32 and relative_error(int8_out, exact) < 0.03


def test_packed_linear_rebinds_after_apply():
    """A packed linear binds its operands per (input dtype, norm) once; moving the module's tensors
    (nn.Module._apply: .to(), .float(), ...) drops those bindings, so the next call uses the new ones."""
    linear = Int8Linear(torch.randn(24, 40), torch.randn(24).bfloat16())
    norm = nn.LayerNorm(40).bfloat16()
    x = torch.randn(3, 40).bfloat16()
    before = linear(x, norm=norm)
    assert len(linear._bound) == 1 and linear(x, norm=norm) is not before and len(linear._bound) == 1
    linear._apply(lambda t: t.clone())
    assert not linear._bound
    torch.testing.assert_close(linear(x, norm=norm), before, atol=0, rtol=0)
    linear.packed_weight.zero_()  # in place: the binding reads the module's current tensors
    linear.colsum.zero_()
    torch.testing.assert_close(linear(x, norm=norm), linear.bias.expand(3, 24), atol=0, rtol=0)
