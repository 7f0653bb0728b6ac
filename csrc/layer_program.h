// LayerProgram: a model's decoder layers recorded once as a list of CPU ops and run per step in one
// call (csrc/layer_program.cpp). kernels/cpu_program.py builds it from the layers' bound ops and
// checks every buffer width and dtype at build time.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common.h"
#include "ops.h"

namespace codeinfer {

// One step's rows and paged-attention metadata (kernels.reference.paged_attention's layouts):
// x [num_tokens, width_0] (buffer 0, read and written in place), positions / slot_mapping
// [num_tokens] int64, block_tables [num_seqs, max_blocks_per_seq] int32, seq_lens [num_seqs] int32,
// cu_seqlens_q [num_seqs + 1] int32.
struct ProgramStep {
  uintptr_t x = 0, positions = 0, slot_mapping = 0, block_tables = 0, seq_lens = 0, cu_seqlens_q = 0;
  int64_t num_tokens = 0, num_seqs = 0, max_blocks_per_seq = 0;
  int64_t num_ops = -1;  // run the first num_ops ops (-1: all)
};

struct ProgramOp {
  enum Kind { kLinear, kStoreKV, kAttend } kind = kLinear;
  PackedLinearArgs linear;  // the layer's template; rows and buffers filled per step
  void (*linear_run)(const PackedLinearArgs&, const std::string&, const std::string&) = nullptr;
  RotaryArgs rotary;
  AttentionArgs attention;
  std::string dtype, out_dtype, cache_dtype;
  int src = 0, dst = 0, residual = -1;
  int64_t src_col = 0, k_col = 0, v_col = 0, num_heads = 0, act_start = 0;
};

class LayerProgram {
 public:
  // Buffer 0 (x) is the first one added; returns the buffer's index.
  int add_buffer(int64_t width, const std::string& dtype);
  // kernel: 0 int8_linear, 1 bf16_linear, 2 int4_linear; residual -1 = none.
  void add_linear(const PackedLinearArgs& args, int kernel, const std::string& dtype, const std::string& out_dtype,
                  int src, int64_t src_col, int dst, int residual, int64_t act_start);
  void add_store_kv(const RotaryArgs& args, const std::string& dtype, const std::string& cache_dtype, int src,
                    int64_t q_col, int64_t k_col, int64_t v_col, int64_t num_heads);
  void add_attend(const AttentionArgs& args, const std::string& dtype, const std::string& cache_dtype, int src,
                  int64_t q_col, int64_t num_heads, int dst);
  void run(const ProgramStep& step);
  size_t num_ops() const { return ops_.size(); }

 private:
  static void free_aligned(uint8_t* p);
  void check_buffer(int b) const;
  void reserve(int64_t num_tokens);
  uintptr_t rows(int b, int64_t col) const;

  std::vector<ProgramOp> ops_;
  std::vector<int64_t> widths_, elem_sizes_, capacity_rows_;
  std::vector<std::unique_ptr<uint8_t[], void (*)(uint8_t*)>> storage_;
  std::vector<uintptr_t> base_;
  std::mutex mutex_;
};

}  // namespace codeinfer
