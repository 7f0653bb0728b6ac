// paged_attention: varlen causal attention of new query rows over the paged KV cache, for any mix of
// prefill chunks and decode rows, with online softmax in fp32 and an optional sliding window.
//
// Layouts (element strides):
//   q: [num_tokens, num_heads, head_dim], row t head h at q + t * q_stride_t + h * q_stride_h
//   k_cache, v_cache: contiguous [num_blocks, block_size, num_kv_heads, head_dim]; fp32, bf16 or int8
//   k_scale, v_scale (int8 caches): [num_blocks, block_size, num_kv_heads] fp32, row value = int8 * scale
//   block_tables: [num_seqs, max_blocks_per_seq] int32; seq_lens: [num_seqs] int32;
//   cu_seqlens_q: [num_seqs + 1] int32; out: contiguous [num_tokens, num_heads, head_dim]
// Sequence b owns rows cu_seqlens_q[b]:cu_seqlens_q[b+1]; its r-th row sits at position
// seq_lens[b] - q_len_b + r and sees keys j <= position (and j > position - window when window > 0).
//
// Parallel work: one item = (sequence, tile of <= kQueryTile query rows, group of heads). A decode
// row is a tile of one row. Heads are grouped so that an item walks each cache block once and reads
// its [token, head group, head_dim] rows close together; groups shrink when there are too few items to
// keep every thread busy. Keys are read block by block straight from the cache (bf16 widened to fp32
// in registers), never gathered or copied per sequence. Per block, a decode row takes one dot product
// per key (vectorised over head_dim); a prefill tile scores all its rows per key at once (vectorised
// over the rows, q transposed once per item); with bf16 q (AVX512-BF16, head_dim % 32 == 0) the tile
// instead scores 16 keys per row with vdpbf16ps on keys transposed to bf16 pairs once per block.
// int8 caches fold each row's scale into its score (keys) or its softmax weight (values).
// Decode-only steps run items round robin (thread t: items t, t + T, ...), so each thread knows its
// next item and prefetches that item's key i while it scores its own key i: at decode the cache
// streams from DRAM, and blocks scattered by the block manager defeat the hardware prefetcher
// (32 x 160-token int8 decode, 12 layers cycled: 482 -> 315 us with shuffled blocks, 264 -> 222 us
// with each sequence's blocks in order; the same step hot in L3 takes ~205 us).
// GQA: head h reads kv head h / (num_heads / num_kv_heads).
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "common.h"
#include "ops.h"

namespace codeinfer {
namespace {

constexpr int64_t kQueryTile = 16;

struct WorkItem {
  int64_t seq, row0, row1, h0, h1;  // query rows [row0, row1) of sequence seq, heads [h0, h1)
};

// Per-row scales of an int8 cache. The row of (slot s, kv head h) starts at element
// s * slot_stride + h * head_dim of its cache, and its scale is scale[s * num_kv_heads + h], i.e.
// scale[(row - cache) / head_dim]. For float caches every scale is 1 (folded away at compile time).
struct CacheScales {
  const void *k_cache = nullptr, *v_cache = nullptr;
  const float *k_scale = nullptr, *v_scale = nullptr;
  int64_t head_dim = 1;
  // kDim > 0: the head dim as a compile-time constant, so the division is a multiply and shift.
  template <int64_t kDim, typename TC>
  float k(const TC* row) const {
    if constexpr (std::is_same_v<TC, int8_t>)
      return k_scale[(row - static_cast<const TC*>(k_cache)) / (kDim > 0 ? kDim : head_dim)];
    return 1.0f;
  }
  template <int64_t kDim, typename TC>
  float v(const TC* row) const {
    if constexpr (std::is_same_v<TC, int8_t>)
      return v_scale[(row - static_cast<const TC*>(v_cache)) / (kDim > 0 ? kDim : head_dim)];
    return 1.0f;
  }
};

// Per-thread buffers; state index i = row_in_tile * num_heads_in_group + head_in_group.
struct Scratch {
  std::vector<float> q, qt, acc, m, l, scores;
};

// acc = acc * alpha + sum_j p[j * p_stride] v_j over n value rows spaced `stride` elements apart,
// 16 dims at a time so the partial sums stay in registers across the block's keys.
template <typename TC, int64_t kDim>
inline void accumulate_pv(const float* p, int64_t p_stride, const TC* v, int64_t stride, int64_t n,
                          int64_t head_dim, float alpha, float* acc) {
  const int64_t dim = kDim > 0 ? kDim : head_dim;
  constexpr int64_t kLanes = 16;
  for (int64_t d0 = 0; d0 < dim; d0 += kLanes) {
    const int64_t width = std::min(kLanes, dim - d0);
    float part[kLanes];
#pragma omp simd
    for (int64_t l = 0; l < width; ++l) part[l] = acc[d0 + l] * alpha;
    for (int64_t j = 0; j < n; ++j) {
      const float pj = p[j * p_stride];
      const TC* vj = v + j * stride + d0;
#pragma omp simd
      for (int64_t l = 0; l < width; ++l) part[l] += pj * to_float(vj[l]);
    }
#pragma omp simd
    for (int64_t l = 0; l < width; ++l) acc[d0 + l] = part[l];
  }
}

// One block's contribution to one (query row, head): scores of n keys (cache rows of k and v spaced
// by `stride` elements, widened to fp32 inside the vector loops), then the online-softmax rescale of
// the running max m, sum l and output acc.
template <typename TC, int64_t kDim>
inline void softmax_update(const float* q, const TC* k, const TC* v, int64_t stride, int64_t n,
                           int64_t head_dim, float& m, float& l, float* acc, float* scores, const CacheScales& cs) {
  const int64_t dim = kDim > 0 ? kDim : head_dim;  // a constant lets the compiler unroll the rows
  float block_max = -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    const float dot = dot_row(q, k + j * stride, dim) * cs.template k<kDim>(k + j * stride);
    scores[j] = dot;
    block_max = std::max(block_max, dot);
  }
  const float m_new = std::max(m, block_max);
  const float alpha = exp_neg(m - m_new);  // 0 on the first block (m = -inf)
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < n; ++j) {
    scores[j] = exp_neg(scores[j] - m_new);
    sum += scores[j];
  }
  l = l * alpha + sum;
  m = m_new;
  for (int64_t j = 0; j < n; ++j) scores[j] *= cs.template v<kDim>(v + j * stride);
  accumulate_pv<TC, kDim>(scores, 1, v, stride, n, dim, alpha, acc);
}

// One block's contribution to a tile of query rows of one head (prefill). Scores are computed for all
// kQueryTile rows at once, vectorised over the rows: qt is the tile transposed, qt[d * kQueryTile + r].
// Row r sits at position pos0 + r and sees key key0 + j when causal and inside the window; rows
// >= num_rows are padding. Row r's running max / sum are m[r * state_stride], l[...], its output
// acc[r * state_stride * dim]. scores: kQueryTile * n scratch, [key][row].
template <typename TC, int64_t kDim>
void tile_update(const float* qt, const TC* k, const TC* v, int64_t stride, int64_t n, int64_t head_dim,
                 int64_t key0, int64_t pos0, int64_t num_rows, int64_t window, float* m, float* l, float* acc,
                 int64_t state_stride, float* scores, const CacheScales& cs) {
  constexpr int64_t T = kQueryTile;
  const int64_t dim = kDim > 0 ? kDim : head_dim;
  float m_new[T], m_safe[T], alpha[T], sum[T];
  for (int64_t r = 0; r < T; ++r) m_new[r] = r < num_rows ? m[r * state_stride] : -INFINITY;
  for (int64_t j = 0; j < n; ++j) {
    float dot[T] = {};
    const TC* kj = k + j * stride;
    for (int64_t d = 0; d < dim; ++d) {
      const float kd = to_float(kj[d]);
#pragma omp simd
      for (int64_t r = 0; r < T; ++r) dot[r] += qt[d * T + r] * kd;
    }
    const int64_t key = key0 + j;
    const float key_scale = cs.template k<kDim>(kj);
#pragma omp simd
    for (int64_t r = 0; r < T; ++r) {
      const bool visible = key <= pos0 + r && (window == 0 || key > pos0 + r - window);
      scores[j * T + r] = visible ? dot[r] * key_scale : -INFINITY;
      m_new[r] = std::max(m_new[r], scores[j * T + r]);
    }
  }
#pragma omp simd
  for (int64_t r = 0; r < T; ++r) {
    m_safe[r] = m_new[r] == -INFINITY ? 0.0f : m_new[r];  // a row that has seen no key yet
    alpha[r] = exp_neg((r < num_rows ? m[r * state_stride] : -INFINITY) - m_safe[r]);
    sum[r] = 0.0f;
  }
  for (int64_t j = 0; j < n; ++j) {
#pragma omp simd
    for (int64_t r = 0; r < T; ++r) {
      scores[j * T + r] = exp_neg(scores[j * T + r] - m_safe[r]);
      sum[r] += scores[j * T + r];
    }
  }
  for (int64_t j = 0; j < n; ++j) {  // int8 cache: fold each value row's scale into its weights
    const float value_scale = cs.template v<kDim>(v + j * stride);
#pragma omp simd
    for (int64_t r = 0; r < T; ++r) scores[j * T + r] *= value_scale;
  }
  for (int64_t r = 0; r < num_rows; ++r) {
    l[r * state_stride] = l[r * state_stride] * alpha[r] + sum[r];
    m[r * state_stride] = m_new[r];
    accumulate_pv<TC, kDim>(scores + r, T, v, stride, n, dim, alpha[r], acc + r * state_stride * dim);
  }
}

#if defined(__AVX512F__)
// Decode fast path (one query row, head_dim a multiple of 16 up to 256): one block's keys of one
// head scored with 16-wide fp32 FMAs (bf16 widened by a shift in registers), exp over the block's
// scores as one vector, values accumulated into register-resident output lanes.
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline __m512 load16(const bf16* p) {
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// Up to 16 keys (n >= 1) of one head: rows of k and v `stride` elements apart; q scaled, kDim / 16
// vectors. Updates running max m, sum l and acc (kDim floats).
template <typename TC, int64_t kDim>
inline void decode_block(const __m512* qv, const TC* k, const TC* v, int64_t stride, int64_t n, float& m,
                         float& l, float* acc, const CacheScales& cs) {
  constexpr int64_t C = kDim / 16;
  alignas(64) float sc[16];
  for (int64_t j = 0; j < n; ++j) {
    const TC* kj = k + j * stride;
    __m512 d0 = _mm512_mul_ps(qv[0], load16(kj));
    __m512 d1 = C > 1 ? _mm512_mul_ps(qv[1], load16(kj + 16)) : _mm512_setzero_ps();
    for (int64_t c = 2; c + 1 < C; c += 2) {
      d0 = _mm512_fmadd_ps(qv[c], load16(kj + 16 * c), d0);
      d1 = _mm512_fmadd_ps(qv[c + 1], load16(kj + 16 * c + 16), d1);
    }
    if (C > 2 && C % 2) d0 = _mm512_fmadd_ps(qv[C - 1], load16(kj + 16 * (C - 1)), d0);
    sc[j] = _mm512_reduce_add_ps(_mm512_add_ps(d0, d1)) * cs.template k<kDim>(kj);
  }
  const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1u);
  const __m512 s = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), mask, sc);
  const float m_new = std::max(m, _mm512_reduce_max_ps(s));
  const float alpha = exp_neg(m - m_new);  // 0 on the first block (m = -inf)
  const __m512 p = exp_neg16(_mm512_sub_ps(s, _mm512_set1_ps(m_new)));  // masked lanes: exp(-inf) = 0
  l = l * alpha + _mm512_reduce_add_ps(p);
  m = m_new;
  _mm512_store_ps(sc, p);
  __m512 av[C];
  const __m512 al = _mm512_set1_ps(alpha);
  for (int64_t c = 0; c < C; ++c) av[c] = _mm512_mul_ps(_mm512_loadu_ps(acc + 16 * c), al);
  for (int64_t j = 0; j < n; ++j) {
    const TC* vj = v + j * stride;
    const __m512 pj = _mm512_set1_ps(sc[j] * cs.template v<kDim>(vj));
    for (int64_t c = 0; c < C; ++c) av[c] = _mm512_fmadd_ps(pj, load16(vj + 16 * c), av[c]);
  }
  for (int64_t c = 0; c < C; ++c) _mm512_storeu_ps(acc + 16 * c, av[c]);
}

// Scores of n <= 16 keys for every head of a group, read token by token: a token's [group heads,
// head_dim] rows are contiguous, so K and V stream through each block in address order. sc: 16 per
// head; q: num_group rows of kDim (scaled); row(j, g) = offset of key j, head g from k / v.
// pf: rows of the next item to prefetch, one per key j (0 = none), pf_bytes long each, in both caches.
template <typename TC, int64_t kDim>
inline void decode_block_group(const float* q, const TC* k, const TC* v, int64_t stride, const int64_t* head_off,
                               int64_t num_group, int64_t n, float* m, float* l, float* acc, float* sc,
                               const CacheScales& cs, const int64_t* pf, int64_t pf_bytes) {
  constexpr int64_t C = kDim / 16;
  for (int64_t j = 0; j < n; ++j) {
    if (pf && pf[j] >= 0) {
      const char* pk = reinterpret_cast<const char*>(static_cast<const TC*>(cs.k_cache) + pf[j]);
      const char* pv = reinterpret_cast<const char*>(static_cast<const TC*>(cs.v_cache) + pf[j]);
      for (int64_t e = 0; e < pf_bytes; e += 64) {
        __builtin_prefetch(pk + e, 0, 2);
        __builtin_prefetch(pv + e, 0, 2);
      }
      if constexpr (std::is_same_v<TC, int8_t>) {
        __builtin_prefetch(cs.k_scale + pf[j] / cs.head_dim, 0, 2);
        __builtin_prefetch(cs.v_scale + pf[j] / cs.head_dim, 0, 2);
      }
    }
    for (int64_t g = 0; g < num_group; ++g) {
      const TC* kj = k + j * stride + head_off[g];
      const float* qg = q + g * kDim;
      __m512 d0 = _mm512_mul_ps(_mm512_loadu_ps(qg), load16(kj));
      __m512 d1 = C > 1 ? _mm512_mul_ps(_mm512_loadu_ps(qg + 16), load16(kj + 16)) : _mm512_setzero_ps();
      for (int64_t c = 2; c + 1 < C; c += 2) {
        d0 = _mm512_fmadd_ps(_mm512_loadu_ps(qg + 16 * c), load16(kj + 16 * c), d0);
        d1 = _mm512_fmadd_ps(_mm512_loadu_ps(qg + 16 * c + 16), load16(kj + 16 * c + 16), d1);
      }
      if (C > 2 && C % 2) d0 = _mm512_fmadd_ps(_mm512_loadu_ps(qg + 16 * (C - 1)), load16(kj + 16 * (C - 1)), d0);
      sc[g * 16 + j] = _mm512_reduce_add_ps(_mm512_add_ps(d0, d1)) * cs.template k<kDim>(kj);
    }
  }
  const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1u);
  for (int64_t g = 0; g < num_group; ++g) {
    const __m512 s = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), mask, sc + g * 16);
    const float m_new = std::max(m[g], _mm512_reduce_max_ps(s));
    const float alpha = exp_neg(m[g] - m_new);
    const __m512 p = exp_neg16(_mm512_sub_ps(s, _mm512_set1_ps(m_new)));
    l[g] = l[g] * alpha + _mm512_reduce_add_ps(p);
    m[g] = m_new;
    _mm512_storeu_ps(sc + g * 16, p);
    const __m512 al = _mm512_set1_ps(alpha);
    for (int64_t c = 0; c < C; ++c)
      _mm512_storeu_ps(acc + g * kDim + 16 * c, _mm512_mul_ps(_mm512_loadu_ps(acc + g * kDim + 16 * c), al));
  }
  for (int64_t j = 0; j < n; ++j)
    for (int64_t g = 0; g < num_group; ++g) {
      const TC* vj = v + j * stride + head_off[g];
      const __m512 pj = _mm512_set1_ps(sc[g * 16 + j] * cs.template v<kDim>(vj));
      float* ag = acc + g * kDim;
      for (int64_t c = 0; c < C; ++c)
        _mm512_storeu_ps(ag + 16 * c, _mm512_fmadd_ps(pj, load16(vj + 16 * c), _mm512_loadu_ps(ag + 16 * c)));
    }
}

#if defined(__AVX512BF16__)
// tile_update for bf16 q, a bf16 or int8 cache, head_dim a multiple of 32 (prefill). The block's keys
// are transposed once into bf16 pairs, kt[pair][key] (int8 keys widened to bf16 first, exactly), so
// each query row scores all 16 keys with one vdpbf16ps per pair of dims (a broadcast q pair against
// 16 keys; bf16 products are exact in fp32) and no horizontal sums; values are widened to fp32 once
// per block (int8 rows times their scales, int8 key scales multiply the scores). q: the tile's first
// row of this head (rows q_stride_t apart), unscaled; other arguments as in tile_update.
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
        const __m512 x = load16(k + j * stride + 16 * c);
        _mm256_store_si256(reinterpret_cast<__m256i*>(widened + j * kDim + 16 * c), (__m256i)_mm512_cvtneps_pbh(x));
      }
      key_scale[j] = cs.template k<kDim>(k + j * stride) * scale;
      const float vs = cs.template v<kDim>(v + j * stride);
      for (int64_t c = 0; c < C; ++c) _mm512_store_ps(vf + j * kDim + 16 * c, _mm512_mul_ps(load16(v + j * stride + 16 * c), _mm512_set1_ps(vs)));
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
  const __mmask16 keys = static_cast<__mmask16>((1u << n) - 1u);
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
      const int64_t r = std::min(r0 + i, num_rows - 1), pos = pos0 + r;  // padding rows: never stored
      // Visible keys j of row r: key0 + j <= pos, inside the window, j < n.
      j_hi[i] = r0 + i < num_rows ? std::min<int64_t>(n, pos - key0 + 1) : 0;
      j_lo[i] = window > 0 ? std::clamp<int64_t>(pos - window + 1 - key0, 0, n) : 0;
      j_hi[i] = std::max(j_hi[i], j_lo[i]);  // [j_lo, j_hi) within [0, n], maybe empty
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
      const __m512 sc = _mm512_mask_mul_ps(_mm512_set1_ps(-INFINITY), vis, _mm512_add_ps(d[i][0], d[i][1]), scales);
      const int64_t r = std::min(r0 + i, num_rows - 1);
      const float m_old = m[r * state_stride];
      const float m_new = std::max(m_old, _mm512_reduce_max_ps(sc));
      const float m_safe = m_new == -INFINITY ? 0.0f : m_new;  // nothing visible yet: state stays 0
      alpha[i] = exp_neg(m_old - m_safe);  // 0 on the row's first visible block (m = -inf)
      const __m512 pv = exp_neg16(_mm512_sub_ps(sc, _mm512_set1_ps(m_safe)));  // invisible: exp(-inf) = 0
      _mm512_store_ps(pr[i], pv);
      if (r0 + i < num_rows) {
        l[r * state_stride] = l[r * state_stride] * alpha[i] + _mm512_reduce_add_ps(pv);
        m[r * state_stride] = m_new;
        j_min = std::min(j_min, j_lo[i]);
        j_max = std::max(j_max, j_hi[i]);
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
#endif

// Key range [key_lo, key_hi) that any query row of item w can see, and the position of its first row.
inline void item_keys(const AttentionArgs& a, const WorkItem& w, int64_t& pos0, int64_t& key_lo, int64_t& key_hi) {
  const int32_t* seq_lens = reinterpret_cast<const int32_t*>(a.seq_lens);
  const int32_t* cu = reinterpret_cast<const int32_t*>(a.cu_seqlens_q);
  pos0 = seq_lens[w.seq] - (cu[w.seq + 1] - cu[w.seq]) + (w.row0 - cu[w.seq]);
  key_hi = pos0 + (w.row1 - w.row0);
  key_lo = a.window > 0 ? std::max<int64_t>(0, pos0 - a.window + 1) : 0;
}

// Prefetches rows [kv_lo, kv_hi) (elements within a slot) of every slot of one cache block.
template <typename TC>
inline void prefetch_block(const TC* k_cache, const TC* v_cache, int64_t base, int64_t bs, int64_t slot_stride,
                           int64_t kv_lo, int64_t kv_hi) {
  constexpr int64_t kLine = 64 / sizeof(TC);  // elements per cache line
  for (int64_t t = 0; t < bs; ++t)
    for (int64_t e = kv_lo; e < kv_hi; e += kLine) {
      __builtin_prefetch(k_cache + base + t * slot_stride + e, 0, 2);
      __builtin_prefetch(v_cache + base + t * slot_stride + e, 0, 2);
    }
}

// next: the item this thread runs after w (decode-only steps; else null), whose rows w's decode loop
// prefetches.
template <typename TQ, typename TC, int64_t kDim>
void attend_item(const AttentionArgs& a, const WorkItem& w, Scratch& s, const WorkItem* next) {
  const TQ* q = reinterpret_cast<const TQ*>(a.q);
  const TC* k_cache = reinterpret_cast<const TC*>(a.k_cache);
  const TC* v_cache = reinterpret_cast<const TC*>(a.v_cache);
  const int32_t* table = reinterpret_cast<const int32_t*>(a.block_tables) + w.seq * a.max_blocks_per_seq;
  TQ* out = reinterpret_cast<TQ*>(a.out);

  const int64_t dim = kDim > 0 ? kDim : a.head_dim, bs = a.block_size;
  const int64_t num_rows = w.row1 - w.row0, num_group = w.h1 - w.h0, num_state = num_rows * num_group;
  const int64_t heads_per_kv = a.num_heads / a.num_kv_heads;
  const int64_t slot_stride = a.num_kv_heads * dim;  // elements between consecutive tokens of a block
  CacheScales cs;
  cs.k_cache = k_cache, cs.v_cache = v_cache, cs.head_dim = dim;
  cs.k_scale = reinterpret_cast<const float*>(a.k_scale), cs.v_scale = reinterpret_cast<const float*>(a.v_scale);
  int64_t pos0, key_lo, key_hi;  // the tile's first row position, the keys any of its rows can see
  item_keys(a, w, pos0, key_lo, key_hi);

  s.q.resize(num_state * dim);
  s.acc.assign(num_state * dim, 0.0f);
  s.m.assign(num_state, -INFINITY);
  s.l.assign(num_state, 0.0f);
  s.scores.resize(bs);
  const bool tiled = num_rows > 1;
#if defined(__AVX512BF16__)
  // bf16 prefill tiles read q straight from its rows (tile_update_bf16): no fp32 copies.
  constexpr bool kBf16Tiles = std::is_same_v<TQ, bf16> && (std::is_same_v<TC, bf16> || std::is_same_v<TC, int8_t>) &&
                               kDim > 0 && kDim % 32 == 0;
#else
  constexpr bool kBf16Tiles = false;
#endif
  for (int64_t r = 0; r < num_rows && !(kBf16Tiles && tiled); ++r)
    for (int64_t g = 0; g < num_group; ++g) {
      float* qs = s.q.data() + (r * num_group + g) * dim;
      load_row(q + (w.row0 + r) * a.q_stride_t + (w.h0 + g) * a.q_stride_h, qs, dim);
      for (int64_t d = 0; d < dim; ++d) qs[d] *= a.scale;
    }
  const int64_t kv_lo_g = w.h0 / heads_per_kv * dim, kv_hi_g = ((w.h1 - 1) / heads_per_kv + 1) * dim;
  if (tiled && !kBf16Tiles) {  // qt[(g * dim + d) * kQueryTile + r] = q row r, head g, dim d; padding rows are 0
    s.qt.assign(num_group * dim * kQueryTile, 0.0f);
    s.scores.resize(bs * kQueryTile);
    for (int64_t r = 0; r < num_rows; ++r)
      for (int64_t g = 0; g < num_group; ++g)
        for (int64_t d = 0; d < dim; ++d)
          s.qt[(g * dim + d) * kQueryTile + r] = s.q[(r * num_group + g) * dim + d];
  }

#if defined(__AVX512F__)
  if constexpr (kDim > 0 && kDim % 16 == 0 && kDim <= 256) {
    if (num_rows == 1) {  // decode row: all the group's heads token by token, K then V per 16 keys
      int64_t head_off[512];
      const int64_t ng = std::min<int64_t>(num_group, 512);
      for (int64_t g = 0; g < ng; ++g) head_off[g] = (w.h0 + g) / heads_per_kv * dim;
      s.scores.resize(16 * num_group);
      if (num_group <= 512) {
        // The next item's rows are prefetched key by key alongside this item's (key i of this item
        // fetches key i of the next): a steady stream of loads in flight under the arithmetic,
        // whatever the block order, instead of the hardware prefetcher restarting at every block.
        int64_t next_pos0 = 0, next_lo = 0, next_hi = 0;
        const int32_t* next_table = nullptr;
        if (next) {
          item_keys(a, *next, next_pos0, next_lo, next_hi);
          next_table = reinterpret_cast<const int32_t*>(a.block_tables) + next->seq * a.max_blocks_per_seq;
        }
        const int64_t next_kv = next ? next->h0 / heads_per_kv * dim : 0;
        const int64_t pf_bytes = next ? (((next->h1 - 1) / heads_per_kv + 1) * dim - next_kv) * int64_t{sizeof(TC)} : 0;
        int64_t pf[16];
        for (int64_t blk = key_lo / bs; blk * bs < key_hi; ++blk) {
          const int64_t j0 = std::max(blk * bs, key_lo), j1 = std::min(blk * bs + bs, key_hi);
          const int64_t block_base = static_cast<int64_t>(table[blk]) * bs * slot_stride;
          for (int64_t c0 = j0; c0 < j1; c0 += 16) {
            const int64_t off = block_base + (c0 - blk * bs) * slot_stride, n = std::min<int64_t>(16, j1 - c0);
            for (int64_t j = 0; j < n && next; ++j) {
              const int64_t key = next_lo + (c0 + j - key_lo);
              pf[j] = key < next_hi ? (next_table[key / bs] * bs + key % bs) * slot_stride + next_kv : -1;
            }
            decode_block_group<TC, kDim>(s.q.data(), k_cache + off, v_cache + off, slot_stride, head_off, num_group,
                                         n, s.m.data(), s.l.data(), s.acc.data(), s.scores.data(), cs,
                                         next ? pf : nullptr, pf_bytes);
          }
        }
        goto finish;
      }
    }
  }
#endif
  // Only blocks that hold a visible key: the window skips whole blocks before key_lo.
  for (int64_t blk = key_lo / bs; blk * bs < key_hi; ++blk) {
    const int64_t j0 = std::max(blk * bs, key_lo), j1 = std::min(blk * bs + bs, key_hi);
    const int64_t block_base = static_cast<int64_t>(table[blk]) * bs * slot_stride;
    // The group's rows are 2-4 KB apart (other heads in between), too far apart for the hardware
    // prefetcher: fetch the next block's [token, group heads, dim] rows while this one is computed.
    if ((blk + 1) * bs < key_hi) prefetch_block(k_cache, v_cache, table[blk + 1] * bs * slot_stride, bs,
                                                slot_stride, kv_lo_g, kv_hi_g);
    for (int64_t g = 0; g < num_group; ++g) {
      // Rows j0..j1 of this head's keys and values, slot_stride elements apart.
      const int64_t head_base = block_base + (j0 - blk * bs) * slot_stride + (w.h0 + g) / heads_per_kv * dim;
      const TC* k = k_cache + head_base;
      const TC* v = v_cache + head_base;
#if defined(__AVX512BF16__)
      if constexpr (kBf16Tiles) {
        if (tiled) {  // 16 keys at a time (blocks may hold more)
          for (int64_t c0 = j0; c0 < j1; c0 += 16)
            tile_update_bf16<TC, kDim>(q + w.row0 * a.q_stride_t + (w.h0 + g) * a.q_stride_h, a.q_stride_t, a.scale,
                                   k + (c0 - j0) * slot_stride, v + (c0 - j0) * slot_stride, slot_stride,
                                   std::min<int64_t>(16, j1 - c0), c0, pos0, num_rows, a.window, s.m.data() + g,
                                   s.l.data() + g, s.acc.data() + g * dim, num_group, cs);
          continue;
        }
      }
#endif
      if (tiled) {
        tile_update<TC, kDim>(s.qt.data() + g * dim * kQueryTile, k, v, slot_stride, j1 - j0, dim, j0, pos0,
                              num_rows, a.window, s.m.data() + g, s.l.data() + g, s.acc.data() + g * dim,
                              num_group, s.scores.data(), cs);
        continue;
      }
#if defined(__AVX512F__)
      if constexpr (kDim > 0 && kDim % 16 == 0 && kDim <= 256) {
        if (num_rows == 1) {  // decode row
          const int64_t lo = a.window > 0 ? std::max(j0, pos0 - a.window + 1) : j0;
          const int64_t hi = std::min(j1, pos0 + 1);
          if (lo >= hi) continue;
          __m512 qv[kDim / 16];
          for (int64_t c = 0; c < kDim / 16; ++c) qv[c] = _mm512_loadu_ps(s.q.data() + g * dim + 16 * c);
          for (int64_t c0 = lo; c0 < hi; c0 += 16)  // blocks larger than 16 go 16 keys at a time
            decode_block<TC, kDim>(qv, k + (c0 - j0) * slot_stride, v + (c0 - j0) * slot_stride, slot_stride,
                                   std::min<int64_t>(16, hi - c0), s.m[g], s.l[g], s.acc.data() + g * dim, cs);
          continue;
        }
      }
#endif
      for (int64_t r = 0; r < num_rows; ++r) {
        // Causal and window bounds of row r inside this block.
        const int64_t pos = pos0 + r;
        const int64_t lo = a.window > 0 ? std::max(j0, pos - a.window + 1) : j0;
        const int64_t hi = std::min(j1, pos + 1);
        if (lo >= hi) continue;
        const int64_t i = r * num_group + g;
        softmax_update<TC, kDim>(s.q.data() + i * dim, k + (lo - j0) * slot_stride, v + (lo - j0) * slot_stride, slot_stride,
                       hi - lo, dim, s.m[i], s.l[i], s.acc.data() + i * dim, s.scores.data(), cs);
      }
    }
  }
#if defined(__AVX512F__)
finish:  // the decode fast path jumps here
#endif
  for (int64_t r = 0; r < num_rows; ++r)
    for (int64_t g = 0; g < num_group; ++g) {
      const int64_t i = r * num_group + g;
      float* acc = s.acc.data() + i * dim;
      const float inv = 1.0f / s.l[i];  // l >= 1: the row always sees its own key
      for (int64_t d = 0; d < dim; ++d) acc[d] *= inv;
      store_row(acc, out + ((w.row0 + r) * a.num_heads + w.h0 + g) * dim, dim);
    }
}

// Checks the metadata (every block id that will be read included) and splits the step into items.
std::vector<WorkItem> plan(const AttentionArgs& a, int64_t& work) {
  const int32_t* seq_lens = reinterpret_cast<const int32_t*>(a.seq_lens);
  const int32_t* cu = reinterpret_cast<const int32_t*>(a.cu_seqlens_q);
  const int32_t* tables = reinterpret_cast<const int32_t*>(a.block_tables);
  auto fail = [](const std::string& what, int64_t b) {
    throw std::invalid_argument(what + " (sequence " + std::to_string(b) + ")");
  };
  if (cu[0] != 0 || cu[a.num_seqs] > a.num_tokens) fail("cu_seqlens_q must start at 0 and end <= num_tokens", 0);
  int64_t num_tiles = 0;
  for (int64_t b = 0; b < a.num_seqs; ++b) {
    const int64_t q_len = cu[b + 1] - cu[b], seq_len = seq_lens[b];
    if (q_len < 0) fail("cu_seqlens_q must be non-decreasing", b);
    if (q_len > seq_len) fail("seq_lens: a sequence has fewer tokens than new query rows", b);
    if ((seq_len + a.block_size - 1) / a.block_size > a.max_blocks_per_seq) fail("block_tables: too few columns", b);
    if (q_len == 0) continue;
    const int64_t first_key = a.window > 0 ? std::max<int64_t>(0, seq_len - q_len - a.window + 1) : 0;
    for (int64_t blk = first_key / a.block_size; blk * a.block_size < seq_len; ++blk) {
      const int32_t id = tables[b * a.max_blocks_per_seq + blk];
      if (id < 0 || id >= a.num_blocks) fail("block_tables: block id " + std::to_string(id) + " out of range", b);
    }
    num_tiles += (q_len + kQueryTile - 1) / kQueryTile;
    work += q_len * std::min<int64_t>(seq_len, a.window > 0 ? a.window : seq_len) * a.num_heads * a.head_dim;
  }
  // Enough items for ~4 per thread; heads split into equal groups only when needed.
  const int64_t want = 4 * omp_get_max_threads();
  const int64_t num_groups = std::clamp<int64_t>((want + num_tiles - 1) / std::max<int64_t>(num_tiles, 1), 1, a.num_heads);
  const int64_t group = (a.num_heads + num_groups - 1) / num_groups;
  std::vector<WorkItem> items;
  for (int64_t b = 0; b < a.num_seqs; ++b)
    for (int64_t row = cu[b]; row < cu[b + 1]; row += kQueryTile)
      for (int64_t h = 0; h < a.num_heads; h += group)
        items.push_back({b, row, std::min<int64_t>(row + kQueryTile, cu[b + 1]), h, std::min(h + group, a.num_heads)});
  return items;
}

// Decode-only steps (every item one query row) go round robin, so a thread knows its next item and
// prefetches it; steps with prefill tiles, whose costs vary, are scheduled dynamically.
template <typename TQ, typename TC, int64_t kDim>
void run_items(const AttentionArgs& a, const std::vector<WorkItem>& items, bool parallel) {
  const int64_t n = static_cast<int64_t>(items.size());
  const bool decode_only = std::all_of(items.begin(), items.end(), [](const WorkItem& w) { return w.row1 - w.row0 == 1; });
#pragma omp parallel if (parallel)
  {
    Scratch scratch;
    if (decode_only) {
      const int64_t step = omp_get_num_threads();
      for (int64_t i = omp_get_thread_num(); i < n; i += step)
        attend_item<TQ, TC, kDim>(a, items[i], scratch, i + step < n ? &items[i + step] : nullptr);
    } else {
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < n; ++i) attend_item<TQ, TC, kDim>(a, items[i], scratch, nullptr);
    }
  }
}

// Common head dims (GPT-Neo/CodeGen-350M 64, CodeGen-2B 80, 128, CodeGen-6B/16B 256) get unrolled code.
template <typename TQ, typename TC>
void paged_attention_impl(const AttentionArgs& a, const std::vector<WorkItem>& items, bool parallel) {
  switch (a.head_dim) {
    case 64: return run_items<TQ, TC, 64>(a, items, parallel);
    case 80: return run_items<TQ, TC, 80>(a, items, parallel);
    case 128: return run_items<TQ, TC, 128>(a, items, parallel);
    case 256: return run_items<TQ, TC, 256>(a, items, parallel);
    default: return run_items<TQ, TC, 0>(a, items, parallel);
  }
}

}  // namespace

void paged_attention(const AttentionArgs& a, const std::string& dtype, const std::string& cache_dtype) {
  if (a.num_kv_heads <= 0 || a.num_heads % a.num_kv_heads != 0)
    throw std::invalid_argument("num_heads must be a multiple of num_kv_heads");
  int64_t work = 0;  // ~ (query row, key) pairs x heads x dim, to skip threads for tiny steps
  const std::vector<WorkItem> items = plan(a, work);
  const bool parallel = work > (int64_t{1} << 15);  // below ~3 us of work, waking threads costs more
  const DType t = parse_dtype(dtype);
  if (cache_dtype == "int8") {  // int8 cache, one fp32 scale per (slot, kv head)
    if (a.k_scale == 0 || a.v_scale == 0) throw std::invalid_argument("an int8 cache needs k_scale and v_scale");
    if (t == DType::kFloat32) paged_attention_impl<float, int8_t>(a, items, parallel);
    if (t == DType::kBFloat16) paged_attention_impl<bf16, int8_t>(a, items, parallel);
    return;
  }
  const DType c = parse_dtype(cache_dtype);
  if (t == DType::kFloat32 && c == DType::kFloat32) paged_attention_impl<float, float>(a, items, parallel);
  if (t == DType::kFloat32 && c == DType::kBFloat16) paged_attention_impl<float, bf16>(a, items, parallel);
  if (t == DType::kBFloat16 && c == DType::kFloat32) paged_attention_impl<bf16, float>(a, items, parallel);
  if (t == DType::kBFloat16 && c == DType::kBFloat16) paged_attention_impl<bf16, bf16>(a, items, parallel);
}

}  // namespace codeinfer
