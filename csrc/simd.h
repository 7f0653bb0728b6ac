// One fp32 vector type for the attention kernels: kWidth lanes, 16 with AVX-512 and 8 with AVX2 + FMA
// (elsewhere kWidth = 0 and CODEINFER_SIMD is 0: callers take their scalar loops). Loads widen bf16
// and int8 rows to fp32 in registers; partial loads and stores cover a row's tail.
#pragma once
#include <cmath>
#include <cstdint>

#include "common.h"

namespace codeinfer {
namespace simd {

#if defined(__AVX512F__)
#define CODEINFER_SIMD 1
constexpr int64_t kWidth = 16;
using F = __m512;

inline F load(const float* p) { return _mm512_loadu_ps(p); }
inline F load(const bf16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}
inline F load(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline F set1(float x) { return _mm512_set1_ps(x); }
inline F add(F a, F b) { return _mm512_add_ps(a, b); }
inline F sub(F a, F b) { return _mm512_sub_ps(a, b); }
inline F mul(F a, F b) { return _mm512_mul_ps(a, b); }
inline F fmadd(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }  // a * b + c
inline F max(F a, F b) { return _mm512_max_ps(a, b); }
inline float reduce_add(F a) { return _mm512_reduce_add_ps(a); }
inline float reduce_max(F a) { return _mm512_reduce_max_ps(a); }
inline void store(float* p, F a) { _mm512_storeu_ps(p, a); }
inline __mmask16 first(int64_t n) { return static_cast<__mmask16>(n >= 16 ? 0xffffu : (1u << n) - 1u); }
// Lanes [0, n) of p, `fill` in the others (nothing past p + n is read).
inline F load_first(const float* p, int64_t n, float fill) { return _mm512_mask_loadu_ps(set1(fill), first(n), p); }
inline void store_first(float* p, F a, int64_t n) { _mm512_mask_storeu_ps(p, first(n), a); }
inline F floor(F a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC); }
inline F fnmadd(F a, F b, F c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a * b
// 2^n for lanes holding integers n in [-127, 127]: the exponent field built directly.
inline F pow2(F n) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23));
}
inline F zero_below(F y, F x, float t) {  // y, 0 in the lanes where x < t
  return _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, set1(t), _CMP_LT_OQ), _mm512_setzero_ps());
}
// Lane j = the sum of d[j]'s lanes, for j < n <= 16 (other lanes 0).
inline F sum_each(const F* d, int64_t n) {
  alignas(64) float s[16] = {};
  for (int64_t j = 0; j < n; ++j) s[j] = _mm512_reduce_add_ps(d[j]);
  return _mm512_load_ps(s);
}

#elif defined(__AVX2__) && defined(__FMA__)
#define CODEINFER_SIMD 1
constexpr int64_t kWidth = 8;
using F = __m256;

inline F load(const float* p) { return _mm256_loadu_ps(p); }
inline F load(const bf16* p) {
  const __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(raw), 16));
}
inline F load(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline F set1(float x) { return _mm256_set1_ps(x); }
inline F add(F a, F b) { return _mm256_add_ps(a, b); }
inline F sub(F a, F b) { return _mm256_sub_ps(a, b); }
inline F mul(F a, F b) { return _mm256_mul_ps(a, b); }
inline F fmadd(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
inline F max(F a, F b) { return _mm256_max_ps(a, b); }
inline float reduce_add(F a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline float reduce_max(F a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}
inline void store(float* p, F a) { _mm256_storeu_ps(p, a); }
inline __m256i first(int64_t n) {  // lane i set when i < n
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n < 8 ? n : 8)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline F load_first(const float* p, int64_t n, float fill) {
  const __m256i m = first(n);
  return _mm256_blendv_ps(set1(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
}
inline void store_first(float* p, F a, int64_t n) { _mm256_maskstore_ps(p, first(n), a); }
inline F floor(F a) { return _mm256_floor_ps(a); }
inline F fnmadd(F a, F b, F c) { return _mm256_fnmadd_ps(a, b, c); }
inline F pow2(F n) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23));
}
inline F zero_below(F y, F x, float t) {
  return _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, set1(t), _CMP_LT_OQ));
}
// Lane j = the sum of d[j]'s lanes, for j < n <= 8 (other lanes 0): a transposing tree of hadds,
// ~3 instructions per vector instead of a 6-instruction horizontal sum each.
inline F sum_each(const F* d, int64_t n) {
  F v[8];
  for (int64_t j = 0; j < 8; ++j) v[j] = j < n ? d[j] : _mm256_setzero_ps();
  // hadd(a, b) = [a0+a1, a2+a3, b0+b1, b2+b3 | a4+a5, a6+a7, b4+b5, b6+b7]
  const F t0 = _mm256_hadd_ps(v[0], v[1]), t1 = _mm256_hadd_ps(v[2], v[3]);
  const F t2 = _mm256_hadd_ps(v[4], v[5]), t3 = _mm256_hadd_ps(v[6], v[7]);
  const F u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);  // [s0..s3 low halves | s0..s3 high]
  return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

#else
#define CODEINFER_SIMD 0
constexpr int64_t kWidth = 0;
#endif

#if CODEINFER_SIMD
// exp(x) for x <= 0, every lane: common.h's exp_neg (n = round(x / ln 2), a degree-6 polynomial in
// the remainder, times 2^n); lanes below -87, -inf included, give 0.
inline F exp_neg(F x) {
  const F xc = max(x, set1(-87.0f));
  const F n = floor(fmadd(xc, set1(1.44269504088896341f), set1(0.5f)));
  F r = fnmadd(n, set1(0.693359375f), xc);  // x - n ln 2 in two parts, for precision
  r = fmadd(n, set1(2.12194440e-4f), r);
  F p = set1(1.9875691500e-4f);
  p = fmadd(p, r, set1(1.3981999507e-3f));
  p = fmadd(p, r, set1(8.3334519073e-3f));
  p = fmadd(p, r, set1(4.1665795894e-2f));
  p = fmadd(p, r, set1(1.6666665459e-1f));
  p = fmadd(p, r, set1(5.0000001201e-1f));
  p = fmadd(mul(p, r), r, add(r, set1(1.0f)));
  return zero_below(mul(p, pow2(n)), x, -87.0f);
}
#endif

#if defined(__AVX2__) && !defined(__AVX512F__)
// common.h's gelu_tanh on 8 lanes (the AVX2 GEMM epilogue), with its division.
inline F gelu_tanh(F v) {
  const F u2 = mul(mul(v, set1(2.0f * 0.7978845608028654f)), fmadd(mul(v, v), set1(0.044715f), set1(1.0f)));
  const F e = exp_neg(_mm256_or_ps(u2, set1(-0.0f)));  // -|u2|
  const F negative = _mm256_cmp_ps(u2, _mm256_setzero_ps(), _CMP_LT_OQ);
  return _mm256_div_ps(mul(v, _mm256_blendv_ps(set1(1.0f), e, negative)), add(e, set1(1.0f)));
}
#endif

#if defined(__AVX512F__)
// common.h's gelu_tanh on 16 lanes (the AVX-512 GEMM epilogue), the reciprocal of 1 + e from rcp14
// plus one Newton step (~2^-28) instead of a division.
inline F gelu_tanh(F v) {
  const F u2 = mul(mul(v, set1(2.0f * 0.7978845608028654f)), fmadd(mul(v, v), set1(0.044715f), set1(1.0f)));
  const F e = exp_neg(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(u2)));
  const F d = add(e, set1(1.0f));
  F r = _mm512_rcp14_ps(d);
  r = mul(r, fnmadd(d, r, set1(2.0f)));
  const __mmask16 negative = _mm512_cmp_ps_mask(u2, _mm512_setzero_ps(), _CMP_LT_OQ);
  return mul(v, _mm512_mask_mul_ps(r, negative, e, r));  // u >= 0: 1 / (1 + e); u < 0: e / (1 + e)
}
#endif

}  // namespace simd
}  // namespace codeinfer
