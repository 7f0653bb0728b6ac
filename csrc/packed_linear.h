// What the packed CPU linears share (csrc/gemm.cpp, csrc/gemm_int4.cpp): how their items go to the
// threads, and the epilogue (bias, tanh gelu on the columns from act_start, residual, one store in the
// output dtype). G is a GEMM's operand struct with T (the output type), bias, residual, out,
// res_stride, out_stride, act_start and N.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

#include "common.h"
#include "simd.h"

namespace codeinfer {
namespace packed_linear {

// The GEMM's items are handed out dynamically in chunks of about an eighth of a thread's share: on
// a shared CPU the items of a descheduled thread go to the threads still running instead of waiting
// for it at the region's end, and a chunk is still a long run of consecutive panels.
inline int64_t item_chunk(int64_t items) { return std::max<int64_t>(1, items / (8 * omp_get_num_threads())); }

// One output element from its fp32 value v (before bias).
template <typename G>
inline void finish(const G& g, int64_t m, int64_t n, float v) {
  if (g.bias) v += to_float(g.bias[n]);
  if (n >= g.act_start) v = gelu_tanh(v);
  if (g.residual) v += to_float(g.residual[m * g.res_stride + n]);
  g.out[m * g.out_stride + n] = from_float<typename G::T>(v);
}

#if defined(__AVX512F__) && defined(__AVX512BF16__)
inline __m512 load16(const float* p, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, p); }
inline __m512 load16(const bf16* p, __mmask16 mask) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
inline void store16(float* p, __m512 v, __mmask16 mask) { _mm512_mask_storeu_ps(p, mask, v); }
inline void store16(bf16* p, __m512 v, __mmask16 mask) {  // round to nearest even, as torch
  _mm256_mask_storeu_epi16(p, mask, reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
}

// Columns [n0, n0 + 16) of row m (those below N) from their fp32 values v (before bias).
template <typename G>
inline void finish16(const G& g, int64_t m, int64_t n0, __m512 v) {
  const __mmask16 mask = g.N - n0 >= 16 ? __mmask16(0xffff) : __mmask16((1u << (g.N - n0)) - 1);
  if (g.bias) v = _mm512_add_ps(v, load16(g.bias + n0, mask));
  // Lanes with n >= act_start take the gelu.
  const int64_t first = std::clamp<int64_t>(g.act_start - n0, 0, 16);
  const __mmask16 act = first >= 16 ? __mmask16(0) : __mmask16(0xffffu << first);
  if (act) v = _mm512_mask_mov_ps(v, act, simd::gelu_tanh(v));
  if (g.residual) v = _mm512_add_ps(v, load16(g.residual + m * g.res_stride + n0, mask));
  store16(g.out + m * g.out_stride + n0, v, mask);
}
#elif defined(__AVX2__) && defined(__FMA__)
inline void store8(float* p, __m256 v) { simd::store(p, v); }
inline void store8(bf16* p, __m256 v) {  // common.h's rounding (store_row), which the compiler vectorises
  alignas(32) float f[8];
  simd::store(f, v);
  store_row(f, p, 8);
}

// Columns [n0, n0 + 8) of row m, all below N, from their fp32 values v (before bias): finish's
// arithmetic on 8 lanes.
template <typename G>
inline void finish8(const G& g, int64_t m, int64_t n0, __m256 v) {
  if (g.bias) v = _mm256_add_ps(v, simd::load(g.bias + n0));
  const int64_t first = std::clamp<int64_t>(g.act_start - n0, 0, 8);  // lanes >= first take the gelu
  if (first < 8) {
    const __m256 act = simd::gelu_tanh(v);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    v = first == 0 ? act : _mm256_blendv_ps(v, act, _mm256_castsi256_ps(
                                                         _mm256_cmpgt_epi32(lanes, _mm256_set1_epi32(int(first) - 1))));
  }
  if (g.residual) v = _mm256_add_ps(v, simd::load(g.residual + m * g.res_stride + n0));
  store8(g.out + m * g.out_stride + n0, v);
}

// The 16 columns of a panel from n0 (v: their fp32 values): 8 lanes at a time where all 8 are below
// N, element by element at the edge.
template <typename G>
inline void finish_panel(const G& g, int64_t m, int64_t n0, const float* v) {
  for (int64_t h = 0; h < 16; h += 8) {
    if (n0 + h + 8 <= g.N) {
      finish8(g, m, n0 + h, _mm256_loadu_ps(v + h));
    } else {
      for (int64_t c = h; c < h + 8 && n0 + c < g.N; ++c) finish(g, m, n0 + c, v[c]);
    }
  }
}
#endif

}  // namespace packed_linear
}  // namespace codeinfer
