// rotary_store_kv: rotate q and k in place on their first rotary_dim dims, then write k and v into
// their paged-cache slots (slot -1 = skip). One pass over each token's q, k, v.
//
// Layouts (element strides; the last dim of q, k, v is contiguous):
//   q: [num_tokens, num_heads, head_dim]       at q + t * q_stride_t + h * q_stride_h
//   k, v: [num_tokens, num_kv_heads, head_dim] likewise with their own strides
//   cos_sin: [max_positions, rotary_dim] fp32, row = cos of the rotary_dim / 2 frequencies, then sin
//   k_cache, v_cache: contiguous [num_blocks, block_size, num_kv_heads, head_dim];
//                     slot s lives at row s of the flattened [num_blocks * block_size, kv_heads, dim]
//   int8 caches: each (slot, kv head) row stored as round(x / scale), scale = max|x| / 127 in
//                k_scale / v_scale [num_blocks * block_size, kv_heads] fp32
#include <omp.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <stdexcept>
#include <string>

#include "common.h"
#include "ops.h"

namespace codeinfer {
namespace {

// Rotates one head in place. Interleaved (GPT-J / CodeGen) pairs dims (2i, 2i + 1); NeoX pairs
// (i, i + half). Frequency i uses cos[i], sin[i]. Done in fp32, rounded back to T once.
template <typename T>
void rotate_head(T* x, const float* cos, const float* sin, int64_t rotary_dim, bool interleaved,
                 float* buf) {
  const int64_t half = rotary_dim / 2;
  load_row(x, buf, rotary_dim);
  float rot[512];  // rotary_dim <= head_dim <= 512, checked by the caller
  if (interleaved) {
#pragma omp simd
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = buf[2 * i], x2 = buf[2 * i + 1];
      rot[2 * i] = x1 * cos[i] - x2 * sin[i];
      rot[2 * i + 1] = x2 * cos[i] + x1 * sin[i];
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = buf[i], x2 = buf[i + half];
      rot[i] = x1 * cos[i] - x2 * sin[i];
      rot[i + half] = x2 * cos[i] + x1 * sin[i];
    }
  }
  store_row(rot, x, rotary_dim);
}

template <typename T, typename C>
void rotary_store_kv_impl(const RotaryArgs& a) {
  T* q = reinterpret_cast<T*>(a.q);
  T* k = reinterpret_cast<T*>(a.k);
  const T* v = reinterpret_cast<const T*>(a.v);
  const int64_t* positions = reinterpret_cast<const int64_t*>(a.positions);
  const float* cos_sin = reinterpret_cast<const float*>(a.cos_sin);
  C* k_cache = reinterpret_cast<C*>(a.k_cache);
  C* v_cache = reinterpret_cast<C*>(a.v_cache);
  const int64_t* slots = reinterpret_cast<const int64_t*>(a.slot_mapping);
  const int64_t dim = a.head_dim, half = a.rotary_dim / 2;
  const int64_t slot_stride = a.num_kv_heads * dim;  // elements per cache slot

  // Threads wake in ~1-2 us; the random cache slots written miss the caches, so even a decode step
  // of a few tokens gains from both cores. Single tokens stay on one thread.
  const bool parallel = a.num_tokens > 1 && a.num_tokens * (a.num_heads + 2 * a.num_kv_heads) * dim > (int64_t{1} << 13);
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t t = 0; t < a.num_tokens; ++t) {
    float buf[512];
    if (a.rotary_dim > 0) {
      const float* cos = cos_sin + positions[t] * a.rotary_dim;
      const float* sin = cos + half;
      for (int64_t h = 0; h < a.num_heads; ++h)
        rotate_head(q + t * a.q_stride_t + h * a.q_stride_h, cos, sin, a.rotary_dim, a.interleaved, buf);
      for (int64_t h = 0; h < a.num_kv_heads; ++h)
        rotate_head(k + t * a.k_stride_t + h * a.k_stride_h, cos, sin, a.rotary_dim, a.interleaved, buf);
    }
    const int64_t slot = slots[t];
    if (slot < 0) continue;
    if constexpr (std::is_same_v<C, int8_t>) {  // int8 cache: symmetric per (slot, kv head) row
      float* k_scale = reinterpret_cast<float*>(a.k_scale);
      float* v_scale = reinterpret_cast<float*>(a.v_scale);
      for (int64_t h = 0; h < a.num_kv_heads; ++h) {
        load_row(k + t * a.k_stride_t + h * a.k_stride_h, buf, dim);  // the rotated k, rounded to T
        k_scale[slot * a.num_kv_heads + h] = quantize_row_int8<int8_t, 0>(buf, k_cache + slot * slot_stride + h * dim, dim);
        load_row(v + t * a.v_stride_t + h * a.v_stride_h, buf, dim);
        v_scale[slot * a.num_kv_heads + h] = quantize_row_int8<int8_t, 0>(buf, v_cache + slot * slot_stride + h * dim, dim);
      }
      continue;
    } else if constexpr (std::is_same_v<T, C>) {  // same dtype: the stored rows are plain copies
      for (int64_t h = 0; h < a.num_kv_heads; ++h) {
        std::memcpy(k_cache + slot * slot_stride + h * dim, k + t * a.k_stride_t + h * a.k_stride_h, dim * sizeof(T));
        std::memcpy(v_cache + slot * slot_stride + h * dim, v + t * a.v_stride_t + h * a.v_stride_h, dim * sizeof(T));
      }
      continue;
    } else {
      for (int64_t h = 0; h < a.num_kv_heads; ++h) {
        // Stored k is the rotated k already rounded to T, exactly as the reference stores it.
        load_row(k + t * a.k_stride_t + h * a.k_stride_h, buf, dim);
        store_row(buf, k_cache + slot * slot_stride + h * dim, dim);
        load_row(v + t * a.v_stride_t + h * a.v_stride_h, buf, dim);
        store_row(buf, v_cache + slot * slot_stride + h * dim, dim);
      }
    }
  }
}

// Bounds of the gathered indices, checked before any thread writes (a bad slot would corrupt memory).
void check_indices(const RotaryArgs& a) {
  const int64_t* positions = reinterpret_cast<const int64_t*>(a.positions);
  const int64_t* slots = reinterpret_cast<const int64_t*>(a.slot_mapping);
  const int64_t num_slots = a.num_blocks * a.block_size;
  for (int64_t t = 0; t < a.num_tokens; ++t) {
    if (a.rotary_dim > 0 && (positions[t] < 0 || positions[t] >= a.max_positions))
      throw std::invalid_argument("positions: " + std::to_string(positions[t]) + " outside the cos_sin table of " +
                                  std::to_string(a.max_positions) + " rows");
    if (slots[t] < -1 || slots[t] >= num_slots)
      throw std::invalid_argument("slot_mapping: slot " + std::to_string(slots[t]) + " outside [-1, " +
                                  std::to_string(num_slots) + ")");
  }
}

}  // namespace

void rotary_store_kv(const RotaryArgs& a, const std::string& dtype, const std::string& cache_dtype) {
  if (a.head_dim > 512 || a.rotary_dim > a.head_dim || a.rotary_dim % 2 != 0)
    throw std::invalid_argument("rotary_dim must be even and <= head_dim <= 512");
  check_indices(a);
  const DType t = parse_dtype(dtype);
  if (cache_dtype == "int8") {
    if (a.k_scale == 0 || a.v_scale == 0) throw std::invalid_argument("an int8 cache needs k_scale and v_scale");
    if (t == DType::kFloat32) rotary_store_kv_impl<float, int8_t>(a);
    if (t == DType::kBFloat16) rotary_store_kv_impl<bf16, int8_t>(a);
    return;
  }
  const DType c = parse_dtype(cache_dtype);
  if (t == DType::kFloat32 && c == DType::kFloat32) rotary_store_kv_impl<float, float>(a);
  if (t == DType::kFloat32 && c == DType::kBFloat16) rotary_store_kv_impl<float, bf16>(a);
  if (t == DType::kBFloat16 && c == DType::kFloat32) rotary_store_kv_impl<bf16, float>(a);
  if (t == DType::kBFloat16 && c == DType::kBFloat16) rotary_store_kv_impl<bf16, bf16>(a);
}

}  // namespace codeinfer
