// A model's decoder layers as one C++ call per step: a recorded sequence of the CPU ops (packed
// linears, rotary + KV write, paged attention) over row buffers. Each op runs exactly as its own
// binding would run it (same function, same argument struct), so the results are bit-identical;
// what goes away is the Python between the ops (wrappers, checks, tensor allocations, GIL hand-offs).
//
// Buffers: buffer 0 is the caller's residual stream x [num_tokens, width_0] (read by the first
// layer, written by the last); the others are scratch rows [num_tokens, width_b] the program owns,
// regrown when a step has more rows. Columns are addressed in elements from a buffer's row start
// (q, k, v are column ranges of the fused qkv buffer).
#include "layer_program.h"

#include <algorithm>
#include <new>

namespace codeinfer {

namespace {

using LinearOp = void (*)(const PackedLinearArgs&, const std::string&, const std::string&);

LinearOp linear_op(int kernel) {
  switch (kernel) {
    case 0: return &int8_linear;
    case 1: return &bf16_linear;
    case 2: return &int4_linear;
  }
  throw std::invalid_argument("layer program: unknown linear kernel " + std::to_string(kernel));
}

int64_t elem_size(const std::string& dtype) { return parse_dtype(dtype) == DType::kFloat32 ? 4 : 2; }

}  // namespace

int LayerProgram::add_buffer(int64_t width, const std::string& dtype) {
  if (width <= 0) throw std::invalid_argument("layer program: buffer width must be positive");
  widths_.push_back(width);
  elem_sizes_.push_back(elem_size(dtype));
  storage_.emplace_back(nullptr, &free_aligned);
  capacity_rows_.push_back(0);
  return static_cast<int>(widths_.size()) - 1;
}

void LayerProgram::check_buffer(int b) const {
  if (b < 0 || b >= static_cast<int>(widths_.size()))
    throw std::invalid_argument("layer program: no buffer " + std::to_string(b));
}

void LayerProgram::add_linear(const PackedLinearArgs& args, int kernel, const std::string& dtype,
                              const std::string& out_dtype, int src, int64_t src_col, int dst, int residual,
                              int64_t act_start) {
  check_buffer(src), check_buffer(dst);
  if (residual >= 0) check_buffer(residual);
  ProgramOp op;
  op.kind = ProgramOp::kLinear, op.linear = args, op.linear_run = linear_op(kernel);
  op.dtype = dtype, op.out_dtype = out_dtype;
  op.src = src, op.src_col = src_col, op.dst = dst, op.residual = residual, op.act_start = act_start;
  ops_.push_back(op);
}

void LayerProgram::add_store_kv(const RotaryArgs& args, const std::string& dtype, const std::string& cache_dtype,
                                int src, int64_t q_col, int64_t k_col, int64_t v_col, int64_t num_heads) {
  check_buffer(src);
  ProgramOp op;
  op.kind = ProgramOp::kStoreKV, op.rotary = args, op.dtype = dtype, op.cache_dtype = cache_dtype;
  op.src = src, op.src_col = q_col, op.k_col = k_col, op.v_col = v_col, op.num_heads = num_heads;
  ops_.push_back(op);
}

void LayerProgram::add_attend(const AttentionArgs& args, const std::string& dtype, const std::string& cache_dtype,
                              int src, int64_t q_col, int64_t num_heads, int dst) {
  check_buffer(src), check_buffer(dst);
  ProgramOp op;
  op.kind = ProgramOp::kAttend, op.attention = args, op.dtype = dtype, op.cache_dtype = cache_dtype;
  op.src = src, op.src_col = q_col, op.num_heads = num_heads, op.dst = dst;
  ops_.push_back(op);
}

uintptr_t LayerProgram::rows(int b, int64_t col) const {
  return base_[b] + static_cast<uintptr_t>(col * elem_sizes_[b]);
}

void LayerProgram::free_aligned(uint8_t* p) { ::operator delete[](p, std::align_val_t(64)); }

void LayerProgram::reserve(int64_t num_tokens) {
  for (size_t b = 1; b < widths_.size(); ++b) {
    if (capacity_rows_[b] >= num_tokens) continue;
    const size_t bytes = static_cast<size_t>(num_tokens * widths_[b] * elem_sizes_[b]);
    storage_[b].reset(static_cast<uint8_t*>(::operator new[](bytes, std::align_val_t(64))));
    capacity_rows_[b] = num_tokens;
  }
}

void LayerProgram::run(const ProgramStep& step) {
  std::lock_guard<std::mutex> lock(mutex_);  // the scratch buffers are the program's own
  const int64_t t = step.num_tokens;
  if (t <= 0) return;
  reserve(t);
  base_.assign(widths_.size(), 0);
  base_[0] = step.x;
  for (size_t b = 1; b < widths_.size(); ++b) base_[b] = reinterpret_cast<uintptr_t>(storage_[b].get());
  const size_t end = step.num_ops < 0 ? ops_.size() : std::min(ops_.size(), static_cast<size_t>(step.num_ops));
  for (size_t i = 0; i < end; ++i) {
    const ProgramOp& op = ops_[i];
    if (op.kind == ProgramOp::kLinear) {
      PackedLinearArgs a = op.linear;
      a.x = rows(op.src, op.src_col), a.out = rows(op.dst, 0), a.num_rows = t;
      a.x_stride = widths_[op.src], a.out_stride = widths_[op.dst];
      a.residual = op.residual >= 0 ? rows(op.residual, 0) : 0;
      a.res_stride = op.residual >= 0 ? widths_[op.residual] : 0;
      a.act_start = op.act_start;
      op.linear_run(a, op.dtype, op.out_dtype);
    } else if (op.kind == ProgramOp::kStoreKV) {
      RotaryArgs a = op.rotary;
      const int64_t stride = widths_[op.src], head_dim = a.head_dim;
      a.q = rows(op.src, op.src_col), a.k = rows(op.src, op.k_col), a.v = rows(op.src, op.v_col);
      a.positions = step.positions, a.slot_mapping = step.slot_mapping;
      a.num_tokens = t, a.num_heads = op.num_heads;
      a.q_stride_t = a.k_stride_t = a.v_stride_t = stride;
      a.q_stride_h = a.k_stride_h = a.v_stride_h = head_dim;
      rotary_store_kv(a, op.dtype, op.cache_dtype);
    } else {
      AttentionArgs a = op.attention;
      a.q = rows(op.src, op.src_col), a.out = rows(op.dst, 0);
      a.block_tables = step.block_tables, a.seq_lens = step.seq_lens, a.cu_seqlens_q = step.cu_seqlens_q;
      a.num_tokens = t, a.num_seqs = step.num_seqs, a.num_heads = op.num_heads;
      a.max_blocks_per_seq = step.max_blocks_per_seq;
      a.q_stride_t = widths_[op.src], a.q_stride_h = a.head_dim;
      paged_attention(a, op.dtype, op.cache_dtype);
    }
  }
}

}  // namespace codeinfer
