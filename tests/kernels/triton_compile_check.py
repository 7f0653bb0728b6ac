"""Compiles each Triton kernel for an sm_90 GPU without needing one (run by test_triton_compile.py in
a subprocess, because the test session imports triton in interpreter mode). Prints one line per
kernel variant: "<name> OK" or "<name> FAILED <error>"."""
from __future__ import annotations

import os

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

import kernels.triton as kt  # noqa: E402


def _compile(name, fn, signature, constexprs):
    signature = {**signature, **{k: "constexpr" for k in constexprs}}
    try:
        triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                       target=GPUTarget("cuda", 90, 32))
        print(name, "OK", flush=True)
    except Exception as exc:  # reported to the test, which shows it
        print(name, "FAILED", type(exc).__name__, str(exc).replace("\n", " ")[:500], flush=True)


def main():
    assert not kt.INTERPRETED
    _compile("gated_embedding[bf16,wpe]", kt._gated_embedding_kernel,
             {"ids_ptr": "*i64", "modality_ptr": "*i64", "remap_ptr": "*i64", "wte_ptr": "*bf16",
              "wpe_ptr": "*bf16", "positions_ptr": "*i64", "out_ptr": "*bf16", "hidden": "i32",
              "stride_wte": "i32", "stride_wpe": "i32"}, {"HAS_WPE": True, "BLOCK": 1024})
    _compile("rotary_store_kv[bf16->fp32 cache,gptj]", kt._rotary_store_kv_kernel,
             {"q_ptr": "*bf16", "k_ptr": "*bf16", "v_ptr": "*bf16", "positions_ptr": "*i64",
              "cos_sin_ptr": "*fp32", "k_cache_ptr": "*fp32", "v_cache_ptr": "*fp32", "slot_ptr": "*i64",
              "num_heads": "i32", "num_kv_heads": "i32", "stride_qt": "i32", "stride_qh": "i32",
              "stride_kt": "i32", "stride_kh": "i32", "stride_vt": "i32", "stride_vh": "i32"},
             {"HEAD_DIM": 64, "ROTARY_DIM": 32, "INTERLEAVED": True, "BLOCK_H": 16, "BLOCK_KVH": 16,
              "BLOCK_R": 16, "BLOCK_D": 64})
    for dtype, window in (("bf16", 256), ("fp32", 0)):
        _compile(f"paged_attention[{dtype},window={window}]", kt._paged_attention_kernel,
                 {"q_ptr": f"*{dtype}", "k_cache_ptr": f"*{dtype}", "v_cache_ptr": f"*{dtype}",
                  "block_tables_ptr": "*i32", "seq_lens_ptr": "*i32", "cu_seqlens_ptr": "*i32",
                  "out_ptr": f"*{dtype}", "scale": "fp32", "stride_qt": "i32", "stride_qh": "i32",
                  "stride_bt": "i32", "num_kv_heads": "i32", "heads_per_kv": "i32"},
                 {"HEAD_DIM": 80, "BLOCK_SIZE": 16, "WINDOW": window, "BLOCK_M": 16, "BLOCK_N": 32,
                  "BLOCK_D": 128, "IEEE": dtype == "fp32"})


if __name__ == "__main__":
    main()
