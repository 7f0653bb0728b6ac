// Declarations of the CPU ops exported by kernels._cpu. Tensors cross the boundary as raw data
// pointers (uintptr_t); kernels/cpu.py checks shapes, dtypes and strides before calling.
// The ops with many operands take an argument struct whose fields the bindings expose by name.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace codeinfer {

void gated_embedding(uintptr_t ids, uintptr_t modality, uintptr_t remap, uintptr_t wte,
                     uintptr_t wpe, uintptr_t positions, uintptr_t out, int64_t num_tokens,
                     int64_t hidden, int64_t vocab, int64_t max_positions, const std::string& dtype);

// Operands of rotary_store_kv (see csrc/rotary.cpp for the layouts). Strides are in elements.
// int8 caches: k_scale / v_scale hold one fp32 scale per (slot, kv head); 0 for float caches.
struct RotaryArgs {
  uintptr_t q = 0, k = 0, v = 0, positions = 0, cos_sin = 0, k_cache = 0, v_cache = 0, slot_mapping = 0;
  uintptr_t k_scale = 0, v_scale = 0;
  int64_t num_tokens = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int64_t rotary_dim = 0, max_positions = 0, num_blocks = 0, block_size = 0;
  int64_t q_stride_t = 0, q_stride_h = 0, k_stride_t = 0, k_stride_h = 0, v_stride_t = 0, v_stride_h = 0;
  bool interleaved = false;
};

void rotary_store_kv(const RotaryArgs& args, const std::string& dtype, const std::string& cache_dtype);

// Operands of paged_attention (see csrc/attention.cpp for the layouts). Strides are in elements.
struct AttentionArgs {
  uintptr_t q = 0, k_cache = 0, v_cache = 0, block_tables = 0, seq_lens = 0, cu_seqlens_q = 0, out = 0;
  uintptr_t k_scale = 0, v_scale = 0;
  int64_t num_tokens = 0, num_seqs = 0, num_heads = 0, num_kv_heads = 0, head_dim = 0;
  int64_t num_blocks = 0, block_size = 0, max_blocks_per_seq = 0;
  int64_t q_stride_t = 0, q_stride_h = 0;
  float scale = 1.0f;
  int64_t window = 0;
};

void paged_attention(const AttentionArgs& args, const std::string& dtype, const std::string& cache_dtype);

// Operands of quantize_rows (see csrc/quant.cpp). Strides are in elements; gamma, beta: 0 = absent.
struct QuantizeArgs {
  uintptr_t x = 0, gamma = 0, beta = 0, out = 0, scales = 0;
  int64_t num_rows = 0, dim = 0, x_stride = 0;
  float eps = 1e-5f;
};

void quantize_rows(const QuantizeArgs& args, const std::string& dtype);

// Operands of quantize_pack_int8 (csrc/quant.cpp): weight [out, in] in, packed / colsum / scales out;
// of quantize_pack_int4 (csrc/quant_int4.cpp): packed and scales (its fp16 params) out, group_size.
struct QuantPackArgs {
  uintptr_t weight = 0, packed = 0, colsum = 0, scales = 0;
  int64_t out_features = 0, in_features = 0, group_size = 0;
  bool asymmetric = true;
};

void quantize_pack_int8(const QuantPackArgs& args, const std::string& dtype);
void quantize_pack_int4(const QuantPackArgs& args, const std::string& dtype);

// Operands of int8_linear, bf16_linear and int4_linear (see csrc/gemm.cpp and csrc/gemm_int4.cpp for
// the packed weight layouts; colsum and w_scales are int8's, int4 passes its fp16 group scales and
// mins as w_scales, and its group_size). Strides are in elements; gamma, beta (x's dtype), bias,
// residual (the output's dtype): 0 = absent.
struct PackedLinearArgs {
  uintptr_t x = 0, gamma = 0, beta = 0, packed = 0, colsum = 0, w_scales = 0, bias = 0, residual = 0, out = 0;
  int64_t num_rows = 0, in_features = 0, out_features = 0, x_stride = 0, res_stride = 0, out_stride = 0;
  int64_t act_start = 0, group_size = 0;
  float eps = 1e-5f;
};

void int8_linear(const PackedLinearArgs& args, const std::string& dtype, const std::string& out_dtype);
void bf16_linear(const PackedLinearArgs& args, const std::string& dtype, const std::string& out_dtype);
void int4_linear(const PackedLinearArgs& args, const std::string& dtype, const std::string& out_dtype);

// Per row of fp32 logits [rows, vocab] (row stride in elements): argmax [rows] int64 and logsumexp
// [rows] fp32 (csrc/sampling.cpp).
void argmax_logsumexp(uintptr_t logits, uintptr_t argmax, uintptr_t lse, int64_t rows, int64_t vocab,
                      int64_t stride);

// OS thread ids of the members of an OpenMP team of num_threads (0 = the caller), in team order.
std::vector<int64_t> team_thread_ids(int num_threads);

}  // namespace codeinfer
