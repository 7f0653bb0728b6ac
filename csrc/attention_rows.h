// Row-level pieces shared by the decode and prefill paths of paged_attention: the work item, an int8
// cache's row scales, the one online-softmax update, and the q.k / p.V row loops (vector registers
// when the head dim is a compile-time multiple of the vector width, plain `omp simd` loops otherwise).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common.h"
#include "ops.h"
#include "simd.h"

namespace codeinfer {
namespace attention {

constexpr int64_t kQueryTile = 16;  // query rows of one prefill item

// Query rows [row0, row1) of sequence seq, heads [h0, h1), keys [key0, key1). part >= 0: the item is
// one key chunk of a decode row split across threads; it leaves its unnormalised state in partial
// slot `part` for the merge (attention.cpp), else it writes its output rows.
struct WorkItem {
  int64_t seq, row0, row1, h0, h1, key0, key1, part;
};

// Per-row scales of an int8 cache. The row of (slot s, kv head h) starts at element
// s * slot_stride + h * head_dim of its cache, and its scale is scale[s * num_kv_heads + h], i.e.
// scale[(row - cache) / head_dim]. For float caches every scale is 1 (folded away at compile time).
struct CacheScales {
  const void *k_cache = nullptr, *v_cache = nullptr;
  const float *k_scale = nullptr, *v_scale = nullptr;
  int64_t head_dim = 1;
  // The scale index of a row of `cache` (a K row and the V row at the same offset share it); the
  // next slot's row of the same kv head is num_kv_heads further on. kDim > 0: the head dim as a
  // compile-time constant, so the division is a multiply and shift.
  template <int64_t kDim, typename TC>
  int64_t index(const TC* row, const void* cache) const {
    return (row - static_cast<const TC*>(cache)) / (kDim > 0 ? kDim : head_dim);
  }
  template <int64_t kDim, typename TC>
  float k(const TC* row) const {
    if constexpr (std::is_same_v<TC, int8_t>) return k_scale[index<kDim>(row, k_cache)];
    return 1.0f;
  }
  template <int64_t kDim, typename TC>
  float v(const TC* row) const {
    if constexpr (std::is_same_v<TC, int8_t>) return v_scale[index<kDim>(row, v_cache)];
    return 1.0f;
  }
};

// A head dim the vector loops take: whole vectors, at most 256 (CodeGen-6B/16B).
template <int64_t kDim>
constexpr bool kVectorDim = simd::kWidth > 0 && kDim > 0 && kDim % (simd::kWidth > 0 ? simd::kWidth : 1) == 0 && kDim <= 256;

// The online-softmax update of one row over the scores s[0:n] of a block of keys (-inf = masked):
// the running max m and sum l absorb the block, s becomes exp(s - m_new), and the factor that the
// row's output accumulated so far must be multiplied by is returned (0 until the row sees a key).
inline float softmax_block(float* s, int64_t n, float& m, float& l) {
  float block_max = -INFINITY, sum = 0.0f;
#if CODEINFER_SIMD
  constexpr int64_t W = simd::kWidth;
  simd::F mx = simd::set1(-INFINITY);
  for (int64_t j = 0; j < n; j += W) mx = simd::max(mx, simd::load_first(s + j, n - j, -INFINITY));
  block_max = simd::reduce_max(mx);
#else
#pragma omp simd reduction(max : block_max)
  for (int64_t j = 0; j < n; ++j) block_max = s[j] > block_max ? s[j] : block_max;
#endif
  const float m_new = std::max(m, block_max);
  const float shift = m_new == -INFINITY ? 0.0f : m_new;  // nothing visible yet
#if CODEINFER_SIMD
  simd::F total = simd::set1(0.0f);
  for (int64_t j = 0; j < n; j += W) {
    const simd::F p = simd::exp_neg(simd::sub(simd::load_first(s + j, n - j, -INFINITY), simd::set1(shift)));
    simd::store_first(s + j, p, n - j);
    total = simd::add(total, p);  // masked lanes: exp(-inf) = 0
  }
  sum = simd::reduce_add(total);
#else
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    s[j] = exp_neg(s[j] - shift);
    sum += s[j];
  }
#endif
  const float alpha = exp_neg(m - shift);  // m = -inf: 0
  l = l * alpha + sum;
  m = m_new;
  return alpha;
}

#if CODEINFER_SIMD
// q . k over the head dim left in the lanes of one vector (kVectorDim only): two chains of FMAs.
template <typename TC, int64_t kDim>
inline simd::F dot_lanes(const float* q, const TC* k) {
  constexpr int64_t W = simd::kWidth, C = kDim / W;
  simd::F d0 = simd::mul(simd::load(q), simd::load(k));
  if constexpr (C == 1) return d0;
  simd::F d1 = simd::mul(simd::load(q + W), simd::load(k + W));
  for (int64_t c = 2; c + 1 < C; c += 2) {
    d0 = simd::fmadd(simd::load(q + W * c), simd::load(k + W * c), d0);
    d1 = simd::fmadd(simd::load(q + W * c + W), simd::load(k + W * c + W), d1);
  }
  if constexpr (C > 2 && C % 2) d0 = simd::fmadd(simd::load(q + W * (C - 1)), simd::load(k + W * (C - 1)), d0);
  return simd::add(d0, d1);
}
#endif

// scores[j] = q . k_j for n keys k_j spaced `stride` elements apart (q fp32, scaled; an int8 cache's
// row scales are the caller's).
template <typename TC, int64_t kDim>
inline void score_keys(const float* q, const TC* k, int64_t stride, int64_t n, int64_t head_dim, float* scores) {
#if CODEINFER_SIMD
  if constexpr (kVectorDim<kDim>) {
    constexpr int64_t W = simd::kWidth;
    for (int64_t j0 = 0; j0 < n; j0 += W) {  // W keys' dot products summed into one vector at once
      const int64_t m = std::min(W, n - j0);
      simd::F d[W];
      for (int64_t j = 0; j < m; ++j) d[j] = dot_lanes<TC, kDim>(q, k + (j0 + j) * stride);
      simd::store_first(scores + j0, simd::sum_each(d, m), m);
    }
    return;
  }
#endif
  for (int64_t j = 0; j < n; ++j) scores[j] = dot_row(q, k + j * stride, head_dim);
}

// acc = acc * alpha + sum_j p[j * p_stride] v_j over n value rows spaced `stride` elements apart,
// a register's worth of dims at a time so the partial sums stay in registers across the keys.
template <typename TC, int64_t kDim>
inline void accumulate_pv(const float* p, int64_t p_stride, const TC* v, int64_t stride, int64_t n,
                          int64_t head_dim, float alpha, float* acc) {
#if CODEINFER_SIMD
  if constexpr (kVectorDim<kDim>) {
    constexpr int64_t W = simd::kWidth, C = kDim / W, kChunk = 8;  // 8 accumulators + loads fit 16 registers
    for (int64_t c0 = 0; c0 < C; c0 += kChunk) {
      const int64_t width = std::min(kChunk, C - c0);
      simd::F av[kChunk];
      for (int64_t c = 0; c < width; ++c) av[c] = simd::mul(simd::load(acc + W * (c0 + c)), simd::set1(alpha));
      for (int64_t j = 0; j < n; ++j) {
        const simd::F pj = simd::set1(p[j * p_stride]);
        const TC* vj = v + j * stride + W * c0;
        for (int64_t c = 0; c < width; ++c) av[c] = simd::fmadd(pj, simd::load(vj + W * c), av[c]);
      }
      for (int64_t c = 0; c < width; ++c) simd::store(acc + W * (c0 + c), av[c]);
    }
    return;
  }
#endif
  {
    constexpr int64_t kLanes = 16;
    for (int64_t d0 = 0; d0 < head_dim; d0 += kLanes) {
      const int64_t width = std::min(kLanes, head_dim - d0);
      float part[kLanes];
#pragma omp simd
      for (int64_t i = 0; i < width; ++i) part[i] = acc[d0 + i] * alpha;
      for (int64_t j = 0; j < n; ++j) {
        const float pj = p[j * p_stride];
        const TC* vj = v + j * stride + d0;
#pragma omp simd
        for (int64_t i = 0; i < width; ++i) part[i] += pj * to_float(vj[i]);
      }
#pragma omp simd
      for (int64_t i = 0; i < width; ++i) acc[d0 + i] = part[i];
    }
  }
}

// Prefetches elements [begin, end) of both caches into L2, a cache line at a time.
template <typename TC>
inline void prefetch_range(const TC* k_cache, const TC* v_cache, int64_t begin, int64_t end) {
  for (int64_t e = begin; e < end; e += 64 / int64_t{sizeof(TC)}) {
    __builtin_prefetch(k_cache + e, 0, 2);
    __builtin_prefetch(v_cache + e, 0, 2);
  }
}

// Prefetches rows [kv_lo, kv_hi) (elements within a slot) of every slot of one cache block into L2.
template <typename TC>
inline void prefetch_block(const TC* k_cache, const TC* v_cache, int64_t base, int64_t block_size,
                           int64_t slot_stride, int64_t kv_lo, int64_t kv_hi) {
  for (int64_t t = 0; t < block_size; ++t)
    prefetch_range(k_cache, v_cache, base + t * slot_stride + kv_lo, base + t * slot_stride + kv_hi);
}

}  // namespace attention
}  // namespace codeinfer
