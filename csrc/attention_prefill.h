// Prefill path of paged_attention: a tile of up to kQueryTile query rows of one sequence over one
// block of keys, for one head. Scores are computed for all the tile's rows at once, vectorised over
// the rows (q transposed once per item); with bf16 q on AVX512-BF16 (head_dim % 32 == 0) each row
// instead scores 16 keys with vdpbf16ps on keys transposed to bf16 pairs once per block. Either way
// each row then takes the one online-softmax update over the keys it can see (causal, window).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "attention_rows.h"

namespace codeinfer {
namespace attention {

// Keys j in [0, n) of a block starting at key0 that the row at position pos sees: [lo, hi), maybe empty.
inline void visible_keys(int64_t key0, int64_t n, int64_t pos, int64_t window, int64_t& lo, int64_t& hi) {
  hi = std::clamp<int64_t>(pos - key0 + 1, 0, n);
  lo = window > 0 ? std::clamp<int64_t>(pos - window + 1 - key0, 0, n) : 0;
  hi = std::max(hi, lo);
}

#if CODEINFER_SIMD
// acc_i = acc_i * alpha_i + sum_j p_i[j] vf[j] for R rows (vf: [n][kDim] fp32), the keys in order, as
// accumulate_pv sums them; each value vector is loaded once for the R rows.
template <int64_t kDim, int R>
inline void accumulate_rows(const float* const* p, const float* vf, int64_t n, const float* alpha, float* const* acc) {
  constexpr int64_t W = simd::kWidth, C = kDim / W, kChunk = R == 2 ? 4 : 8;  // R x kChunk sums + loads
  for (int64_t c0 = 0; c0 < C; c0 += kChunk) {
    const int64_t width = std::min(kChunk, C - c0);
    simd::F av[R][kChunk];
    for (int i = 0; i < R; ++i)
      for (int64_t c = 0; c < width; ++c) av[i][c] = simd::mul(simd::load(acc[i] + W * (c0 + c)), simd::set1(alpha[i]));
    for (int64_t j = 0; j < n; ++j) {
      simd::F pj[R];
      for (int i = 0; i < R; ++i) pj[i] = simd::set1(p[i][j]);
      const float* vj = vf + j * kDim + W * c0;
      for (int64_t c = 0; c < width; ++c) {
        const simd::F x = simd::load(vj + W * c);
        for (int i = 0; i < R; ++i) av[i][c] = simd::fmadd(pj[i], x, av[i][c]);
      }
    }
    for (int i = 0; i < R; ++i)
      for (int64_t c = 0; c < width; ++c) simd::store(acc[i] + W * (c0 + c), av[i][c]);
  }
}

// scores[r * n + j] = (q_r . k_j) * key_scale[j] for the tile's rows r < num_rows: 4 keys at a time
// against the kQueryTile rows in vectors (qt transposed: qt[d * kQueryTile + r]), so each q vector
// load serves 4 keys and each key element is one broadcast. kf: [n rounded up to 4][kDim] fp32.
template <int64_t kDim>
inline void score_tile(const float* qt, const float* kf, int64_t n, int64_t num_rows, const float* key_scale,
                       float* scores) {
  constexpr int64_t W = simd::kWidth, RV = kQueryTile / W;
  for (int64_t j0 = 0; j0 < n; j0 += 4) {
    simd::F dot[4][RV];
    for (int jj = 0; jj < 4; ++jj)
      for (int64_t rv = 0; rv < RV; ++rv) dot[jj][rv] = simd::set1(0.0f);
    const float* k0 = kf + j0 * kDim;
    for (int64_t d = 0; d < kDim; ++d) {
      simd::F q[RV];
      for (int64_t rv = 0; rv < RV; ++rv) q[rv] = simd::load(qt + d * kQueryTile + rv * W);
      for (int jj = 0; jj < 4; ++jj) {
        const simd::F kd = simd::set1(k0[jj * kDim + d]);
        for (int64_t rv = 0; rv < RV; ++rv) dot[jj][rv] = simd::fmadd(q[rv], kd, dot[jj][rv]);
      }
    }
    for (int64_t jj = 0; jj < 4 && j0 + jj < n; ++jj) {
      alignas(64) float rows[kQueryTile];
      for (int64_t rv = 0; rv < RV; ++rv) simd::store(rows + rv * W, dot[jj][rv]);
      for (int64_t r = 0; r < num_rows; ++r) scores[r * n + j0 + jj] = rows[r] * key_scale[j0 + jj];
    }
  }
}

#endif

// One block (n keys from key0; k and v rows `stride` elements apart) for a tile of num_rows rows of
// one head. qt is the tile transposed, qt[d * kQueryTile + r] (padding rows 0); row r sits at
// position pos0 + r; its running max / sum are m[r * state_stride], l[...], its output
// acc[r * state_stride * dim]. scores: (kQueryTile + 2) * n + (2 n + 3) * dim floats of scratch.
template <typename TC, int64_t kDim>
void tile_update(const float* qt, const TC* k, const TC* v, int64_t stride, int64_t n, int64_t head_dim,
                 int64_t key0, int64_t pos0, int64_t num_rows, int64_t window, float* m, float* l, float* acc,
                 int64_t state_stride, float* scores, const CacheScales& cs) {
  constexpr int64_t T = kQueryTile;
  const int64_t dim = kDim > 0 ? kDim : head_dim;
  float* value_scale = scores + T * n;
#if CODEINFER_SIMD
  if constexpr (kVectorDim<kDim>) {
    // The block's keys and values widened to fp32 once (not per row; int8 rows without their scales),
    // keys padded to a multiple of 4 with zero rows.
    float* key_scale = value_scale + n;
    float* vf = key_scale + n;       // [n][kDim]
    float* kf = vf + n * kDim;       // [n rounded up to 4][kDim]
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t d = 0; d < kDim; d += simd::kWidth) {
        simd::store(kf + j * kDim + d, simd::load(k + j * stride + d));
        simd::store(vf + j * kDim + d, simd::load(v + j * stride + d));
      }
      key_scale[j] = cs.template k<kDim>(k + j * stride);
      value_scale[j] = cs.template v<kDim>(v + j * stride);
    }
    std::fill(kf + n * kDim, kf + (n + 3) / 4 * 4 * kDim, 0.0f);
    score_tile<kDim>(qt, kf, n, num_rows, key_scale, scores);
    // Each row's weights are zero outside its visible keys (fma with 0 leaves a sum as it was), so
    // two rows walk the same keys and share every value load.
    int64_t rows[T];
    float alpha[T];
    int64_t count = 0;
    for (int64_t r = 0; r < num_rows; ++r) {
      int64_t lo, hi;
      visible_keys(key0, n, pos0 + r, window, lo, hi);
      if (lo == hi) continue;
      float* p = scores + r * n;
      alpha[count] = softmax_block(p + lo, hi - lo, m[r * state_stride], l[r * state_stride]);
      if constexpr (std::is_same_v<TC, int8_t>)  // fold each value row's scale into its weight
        for (int64_t j = lo; j < hi; ++j) p[j] *= value_scale[j];
      std::fill(p, p + lo, 0.0f);
      std::fill(p + hi, p + n, 0.0f);
      rows[count++] = r;
    }
    for (int64_t i = 0; i < count; i += 2) {
      const int64_t r1 = rows[std::min(i + 1, count - 1)];
      const float* p[2] = {scores + rows[i] * n, scores + r1 * n};
      float* out[2] = {acc + rows[i] * state_stride * dim, acc + r1 * state_stride * dim};
      if (i + 1 < count)
        accumulate_rows<kDim, 2>(p, vf, n, alpha + i, out);
      else
        accumulate_rows<kDim, 1>(p, vf, n, alpha + i, out);
    }
    return;
  }
#endif
  for (int64_t j = 0; j < n; ++j) {  // scores[r * n + j] = q_r . k_j
    float dot[T] = {};
    const TC* kj = k + j * stride;
    for (int64_t d = 0; d < dim; ++d) {
      const float kd = to_float(kj[d]);
#pragma omp simd
      for (int64_t r = 0; r < T; ++r) dot[r] += qt[d * T + r] * kd;
    }
    const float key_scale = cs.template k<kDim>(kj);
    for (int64_t r = 0; r < num_rows; ++r) scores[r * n + j] = dot[r] * key_scale;
    value_scale[j] = cs.template v<kDim>(v + j * stride);
  }
  for (int64_t r = 0; r < num_rows; ++r) {
    int64_t lo, hi;
    visible_keys(key0, n, pos0 + r, window, lo, hi);
    if (lo == hi) continue;
    float* p = scores + r * n + lo;
    const float alpha = softmax_block(p, hi - lo, m[r * state_stride], l[r * state_stride]);
    if constexpr (std::is_same_v<TC, int8_t>)  // fold each value row's scale into its weight
      for (int64_t j = 0; j < hi - lo; ++j) p[j] *= value_scale[lo + j];
    accumulate_pv<TC, kDim>(p, 1, v + lo * stride, stride, hi - lo, dim, alpha, acc + r * state_stride * dim);
  }
}

#if defined(__AVX512BF16__)
// tile_update for bf16 q, a bf16 or int8 cache, head_dim a multiple of 32, n <= 16 keys. The block's
// keys are transposed once into bf16 pairs, kt[pair][key] (int8 keys widened to bf16 first, exactly),
// so each query row scores all 16 keys with one vdpbf16ps per pair of dims (a broadcast q pair
// against 16 keys; bf16 products are exact in fp32) and no horizontal sums; values are widened to
// fp32 once per block (int8 rows times their scales, int8 key scales multiply the scores). q: the
// tile's first row of this head (rows q_stride_t apart), unscaled; other arguments as in tile_update.
template <typename TC, int64_t kDim>
void tile_update_bf16(const bf16* q, int64_t q_stride_t, float scale, const TC* k, const TC* v, int64_t stride,
                      int64_t n, int64_t key0, int64_t pos0, int64_t num_rows, int64_t window, float* m, float* l,
                      float* acc, int64_t state_stride, const CacheScales& cs) {
  constexpr int64_t P = kDim / 2, C = kDim / 16;
  alignas(64) uint32_t kt[P * 16];
  alignas(64) float vf[16 * kDim];
  alignas(64) float key_scale[16];
  const bf16* kb = nullptr;  // the 16 keys in bf16, row j at kb + j * kb_stride
  int64_t kb_stride = stride;
  alignas(64) bf16 widened[std::is_same_v<TC, int8_t> ? 16 * kDim : 1];
  if constexpr (std::is_same_v<TC, int8_t>) {
    for (int64_t j = 0; j < n; ++j) {
      for (int64_t c = 0; c < C; ++c) {  // int8 -> fp32 -> bf16, exact for |x| <= 127
        const __m512 x = simd::load(k + j * stride + 16 * c);
        _mm256_store_si256(reinterpret_cast<__m256i*>(widened + j * kDim + 16 * c), (__m256i)_mm512_cvtneps_pbh(x));
      }
      key_scale[j] = cs.template k<kDim>(k + j * stride) * scale;
      const float vs = cs.template v<kDim>(v + j * stride);
      for (int64_t c = 0; c < C; ++c)
        _mm512_store_ps(vf + j * kDim + 16 * c, _mm512_mul_ps(simd::load(v + j * stride + 16 * c), _mm512_set1_ps(vs)));
    }
    for (int64_t j = n; j < 16; ++j) key_scale[j] = 0.0f;
    kb = widened, kb_stride = kDim;
  } else {
    for (int64_t j = 0; j < 16; ++j) key_scale[j] = scale;
    for (int64_t j = 0; j < n; ++j) load_row(v + j * stride, vf + j * kDim, kDim);
    kb = k;
  }
  // kt[p][j] = 32-bit word p of key j: one gather per pair (keys >= n read as 0).
  const __m512i key_words = _mm512_mullo_epi32(
      _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), _mm512_set1_epi32(static_cast<int>(kb_stride / 2)));
  const __mmask16 keys = simd::first(n);
  for (int64_t p = 0; p < P; ++p)
    _mm512_store_si512(kt + p * 16, _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), keys, key_words,
                                                                reinterpret_cast<const int*>(kb) + p, 4));
  const __m512 scales = _mm512_load_ps(key_scale);
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  // kRows rows at a time: their dot-product, softmax and value chains are independent, which keeps
  // the FMA units busy (one row alone is latency-bound), and each value vector serves kRows rows.
  constexpr int64_t kRows = kDim <= 64 ? 8 : (kDim <= 128 ? 4 : 2);  // av: kRows * kDim / 16 registers
  for (int64_t r0 = 0; r0 < num_rows; r0 += kRows) {
    int64_t j_lo[kRows], j_hi[kRows];
    const uint32_t* qr[kRows];
    for (int64_t i = 0; i < kRows; ++i) {
      const int64_t r = std::min(r0 + i, num_rows - 1);  // padding rows: never stored
      visible_keys(key0, n, pos0 + r, window, j_lo[i], j_hi[i]);
      if (r0 + i >= num_rows) j_lo[i] = j_hi[i] = 0;
      qr[i] = reinterpret_cast<const uint32_t*>(q + r * q_stride_t);
    }
    __m512 d[kRows][2];
    for (int64_t i = 0; i < kRows; ++i) d[i][0] = d[i][1] = _mm512_setzero_ps();
    for (int64_t p = 0; p < P; ++p) {
      const __m512bh kp = (__m512bh)_mm512_load_si512(kt + p * 16);
      for (int64_t i = 0; i < kRows; ++i)
        d[i][p % 2] = _mm512_dpbf16_ps(d[i][p % 2], (__m512bh)_mm512_set1_epi32(static_cast<int>(qr[i][p])), kp);
    }
    alignas(64) float pr[kRows][16];
    float alpha[kRows];
    int64_t j_min = 16, j_max = 0;
    for (int64_t i = 0; i < kRows; ++i) {
      const __mmask16 vis = _mm512_cmplt_epi32_mask(lane, _mm512_set1_epi32(static_cast<int>(j_hi[i]))) &
                            _mm512_cmpge_epi32_mask(lane, _mm512_set1_epi32(static_cast<int>(j_lo[i])));
      _mm512_store_ps(pr[i], _mm512_mask_mul_ps(_mm512_set1_ps(-INFINITY), vis, _mm512_add_ps(d[i][0], d[i][1]), scales));
      alpha[i] = 0.0f;
      if (r0 + i < num_rows) {  // invisible keys: exp(-inf) = 0
        alpha[i] = softmax_block(pr[i], 16, m[(r0 + i) * state_stride], l[(r0 + i) * state_stride]);
        j_min = std::min(j_min, j_lo[i]);
        j_max = std::max(j_max, j_hi[i]);
      } else {
        _mm512_store_ps(pr[i], _mm512_setzero_ps());
      }
    }
    __m512 av[kRows][C];
    for (int64_t i = 0; i < kRows; ++i) {
      const float* ar = acc + std::min(r0 + i, num_rows - 1) * state_stride * kDim;
      for (int64_t c = 0; c < C; ++c) av[i][c] = _mm512_mul_ps(_mm512_loadu_ps(ar + 16 * c), _mm512_set1_ps(alpha[i]));
    }
    for (int64_t j = j_min; j < j_max; ++j) {  // p = 0 outside a row's own visible range
      __m512 vj[C];
      for (int64_t c = 0; c < C; ++c) vj[c] = _mm512_load_ps(vf + j * kDim + 16 * c);
      for (int64_t i = 0; i < kRows; ++i) {
        const __m512 pj = _mm512_set1_ps(pr[i][j]);
        for (int64_t c = 0; c < C; ++c) av[i][c] = _mm512_fmadd_ps(pj, vj[c], av[i][c]);
      }
    }
    for (int64_t i = 0; i < kRows && r0 + i < num_rows; ++i) {
      float* ar = acc + (r0 + i) * state_stride * kDim;
      for (int64_t c = 0; c < C; ++c) _mm512_storeu_ps(ar + 16 * c, av[i][c]);
    }
  }
}
#endif

}  // namespace attention
}  // namespace codeinfer
