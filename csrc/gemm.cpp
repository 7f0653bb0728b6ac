// int8_linear and bf16_linear: a linear layer of dtype="int8" (engine/models/quant.py) or of a bf16
// model on the CPU (engine/models/bf16.py) in one call and one parallel region: the activations
// prepared per row (through the layer norm that feeds the linear), then the GEMM on weights packed
// once at load with its epilogue fused: one pass writes act(x w^T (* scales) + bias) + residual.
//
//   x: [M, K] fp32 or bf16, rows x_stride apart; gamma, beta: [K] (x's dtype) or 0 (no layer norm)
//   Both kinds work on 32-bit words: a word holds 4 consecutive k (int8) or 2 (bf16); Kw words a row.
//   int8: xa = [M, 4 Kw] uint8 = int8 activations + 128 (quantize_rows' arithmetic), x_scales [M];
//         packed: [P, Kw, 16, 4] int8, P = ceil(N / 16), Kw = ceil(K / 4),
//         packed[p, k4, c, i] = w[16 p + c, 4 k4 + i] (0 outside [N, K]): a panel p holds 16 output
//         columns, so one vpdpbusd multiplies a broadcast word of 4 activation bytes with 16
//         columns' 4 weights and adds into 16 int32 lanes;
//         colsum: [P * 16] int32, sum_k w[n, k]: sum_k (xa - 128) w = sum_k xa w - 128 colsum (exact);
//         v = float(acc[m, n]) * w_scales[n] * x_scales[m]; the AVX2 path (no VNNI) sums signed
//         a x w instead, from rows quantised without the +128 with each word stored as a and -a
//         (xa = [M, 8 Kw], prepare_int8_row), which needs no colsum
//   bf16: xa = [M, 2 Kw] bf16 activations (the normed row rounded to bf16); packed: [P, Kw, 16, 2]
//         bf16, Kw = ceil(K / 2), packed[p, k2, c, i] = w[16 p + c, 2 k2 + i]; one vdpbf16ps adds
//         16 columns' products of a broadcast pair into 16 fp32 lanes; v = acc[m, n] (fp32 sums
//         of exact bf16 products)
//   out[m, n] = act(v + bias[n]) + residual[m, n], act = tanh gelu on columns n >= act_start;
//   bias: [N], residual: [M, N] (res_stride) in out's dtype or 0; out: bf16 or fp32.
//   Padding words of xa past K meet zero weights (and are zeroed for bf16, where 0 x NaN is NaN).
//
// Parallel work: items (block of <= kRowBlock rows, group of <= kPanels panels). A tile is <= kRows
// rows x kPanels panels (24 zmm accumulators) over the whole K, so x rows and the group's weights are
// reused from L1/L2. Items go out dynamically in chunks (item_chunk). At decode sizes (M <= 64) the
// weights stream from DRAM once; each thread prefetches its first chunk while it prepares its rows, and the first row tile of each group
// prefetches the next group's panels, which keeps those loads running under the dot products (1.3x
// on a 32 x 768 x 3072 int8 GEMM with cold weights).
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"
#include "ops.h"
#include "packed_linear.h"
#include "simd.h"

namespace codeinfer {
namespace {

constexpr int kRows = 8;
constexpr int kPanels = 3;
constexpr int64_t kRowBlock = 256;
constexpr int64_t kParallelMacs = int64_t{1} << 16;  // below this one thread does it all

using packed_linear::item_chunk;

template <typename TOut, bool kInt8Kind>
struct Gemm {
  using T = TOut;
  static constexpr bool kInt8 = kInt8Kind;
  const uint8_t* x;         // [M, 4 Kw] bytes: the prepared activations
  const float* x_scales;    // int8: [M]
  const uint8_t* w;         // [P, Kw, 16] words
  const int32_t* colsum;    // int8: [16 P]
  const float* w_scales;    // int8: [N]
  const T* bias;
  const T* residual;
  T* out;
  int64_t M, N, K, Kw, P, res_stride, out_stride, act_start;
};


#if defined(__AVX512VNNI__) && defined(__AVX512BF16__)
constexpr int64_t kInt8WordBytes = 4;  // a prepared int8 row: xq = a + 128, 4 bytes a word
using packed_linear::load16;
using packed_linear::store16;

// Rows [m0, m0 + MT) x panels [p0, p0 + NT). prefetch: the next group's first panel (or null).
template <typename G, int MT, int NT>
void tile(const G& g, int64_t m0, int64_t p0, const uint8_t* prefetch) {
  // int32 sums (int8) or fp32 sums (bf16, kept in the same registers through casts).
  __m512i acc[MT][NT];
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m)
#pragma GCC unroll 3
    for (int t = 0; t < NT; ++t) acc[m][t] = _mm512_setzero_si512();
  const uint8_t* w = g.w + p0 * g.Kw * 64;
  const int64_t Kw = g.Kw, x_stride = 4 * g.Kw;
  const uint8_t* x = g.x + m0 * x_stride;
  for (int64_t kw = 0; kw < Kw; ++kw) {
    __m512i b[NT];
#pragma GCC unroll 3
    for (int t = 0; t < NT; ++t) b[t] = _mm512_loadu_si512(w + (t * Kw + kw) * 64);
    if (prefetch)
#pragma GCC unroll 3
      for (int t = 0; t < NT; ++t)
        _mm_prefetch(reinterpret_cast<const char*>(prefetch + (t * Kw + kw) * 64), _MM_HINT_T1);
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) {
      const __m512i a = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(x + m * x_stride + 4 * kw));
#pragma GCC unroll 3
      for (int t = 0; t < NT; ++t) {
        if constexpr (G::kInt8) {
          acc[m][t] = _mm512_dpbusd_epi32(acc[m][t], a, b[t]);
        } else {
          acc[m][t] = _mm512_castps_si512(
              _mm512_dpbf16_ps(_mm512_castsi512_ps(acc[m][t]), (__m512bh)a, (__m512bh)b[t]));
        }
      }
    }
  }
  // The epilogue reads the sums from memory: indexing acc inside its (not unrolled) loops would
  // make GCC keep every accumulator on the stack through the K loop above.
  alignas(64) int32_t sums[MT][NT][16];
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m)
#pragma GCC unroll 3
    for (int t = 0; t < NT; ++t) _mm512_store_si512(sums[m][t], acc[m][t]);
  for (int t = 0; t < NT; ++t) {
    const int64_t n0 = (p0 + t) * 16;
    const __mmask16 mask = g.N - n0 >= 16 ? __mmask16(0xffff) : __mmask16((1u << (g.N - n0)) - 1);
    const __m512 bias = g.bias ? load16(g.bias + n0, mask) : _mm512_setzero_ps();
    // Lanes with n >= act_start take the gelu.
    const int64_t first = std::clamp<int64_t>(g.act_start - n0, 0, 16);
    const __mmask16 act = first >= 16 ? __mmask16(0) : __mmask16(0xffffu << first);
    for (int m = 0; m < MT; ++m) {
      const int64_t row = m0 + m;
      __m512 v;
      if constexpr (G::kInt8) {
        const __m512i zero_point = _mm512_slli_epi32(_mm512_loadu_si512(g.colsum + n0), 7);
        v = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_load_si512(sums[m][t]), zero_point));
        v = _mm512_mul_ps(_mm512_mul_ps(v, load16(g.w_scales + n0, mask)), _mm512_set1_ps(g.x_scales[row]));
      } else {
        v = _mm512_castsi512_ps(_mm512_load_si512(sums[m][t]));
      }
      v = _mm512_add_ps(v, bias);
      if (act) v = _mm512_mask_mov_ps(v, act, simd::gelu_tanh(v));
      if (g.residual) v = _mm512_add_ps(v, load16(g.residual + row * g.res_stride + n0, mask));
      store16(g.out + row * g.out_stride + n0, v, mask);
    }
  }
}

template <typename G, int NT>
void row_tail(const G& g, int64_t m0, int64_t rows, int64_t p0) {
  switch (rows) {  // rows < kRows
    case 1: tile<G, 1, NT>(g, m0, p0, nullptr); break;
    case 2: tile<G, 2, NT>(g, m0, p0, nullptr); break;
    case 3: tile<G, 3, NT>(g, m0, p0, nullptr); break;
    case 4: tile<G, 4, NT>(g, m0, p0, nullptr); break;
    case 5: tile<G, 5, NT>(g, m0, p0, nullptr); break;
    case 6: tile<G, 6, NT>(g, m0, p0, nullptr); break;
    case 7: tile<G, 7, NT>(g, m0, p0, nullptr); break;
  }
}

// Rows [m_begin, m_end) x panels [p0, p0 + NT); the first tile prefetches the next group.
template <typename G, int NT>
void group(const G& g, int64_t m_begin, int64_t m_end, int64_t p0) {
  // The next group's NT panels (a shorter last group is left to the hardware).
  const uint8_t* prefetch = p0 + 2 * NT <= g.P ? g.w + (p0 + NT) * g.Kw * 64 : nullptr;
  int64_t m0 = m_begin;
  for (; m0 + kRows <= m_end; m0 += kRows) {
    tile<G, kRows, NT>(g, m0, p0, prefetch);
    prefetch = nullptr;
  }
  if (m0 < m_end) row_tail<G, NT>(g, m0, m_end - m0, p0);
}

// The GEMM's items, shared among the threads of the enclosing parallel region.
template <typename G>
int64_t num_items(const G& g) {
  return (g.P + kPanels - 1) / kPanels * ((g.M + kRowBlock - 1) / kRowBlock);
}
template <typename G>
int64_t item_panel(const G& g, int64_t item) { return item % ((g.P + kPanels - 1) / kPanels) * kPanels; }

template <typename G>
void gemm_items(const G& g) {
  const int64_t groups = (g.P + kPanels - 1) / kPanels, items = num_items(g), chunk = item_chunk(items);
#pragma omp for schedule(dynamic, chunk)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t m_begin = item / groups * kRowBlock, p0 = item % groups * kPanels;
    const int64_t m_end = std::min(g.M, m_begin + kRowBlock);
    switch (std::min<int64_t>(kPanels, g.P - p0)) {
      case 3: group<G, 3>(g, m_begin, m_end, p0); break;
      case 2: group<G, 2>(g, m_begin, m_end, p0); break;
      default: group<G, 1>(g, m_begin, m_end, p0); break;
    }
  }
}
#else
using packed_linear::finish;  // bias, gelu, residual and the store of one output element

template <typename G>
inline float dequantize(const G& g, int64_t m, int64_t n, int32_t acc) {
  return static_cast<float>(acc - 128 * g.colsum[n]) * g.w_scales[n] * g.x_scales[m];
}

#if defined(__AVX2__) && defined(__FMA__)
// AVX2 path (no VNNI, no bf16 dot products): a panel's 16 columns as two halves of 8, each k word
// of a half one 32-byte load (8 columns x 4 bytes). bf16: a word's low and high halves become fp32
// by shifts, one FMA each with the broadcast activation pair.
// int8: vpmaddubsw multiplies unsigned by signed bytes and adds pairs into int16, which is exact
// for |a| |w| products (2 x 127 x 127 < 2^15); vpmaddwd with ones adds those pairs into each
// column's int32 lane, so the sums come out in lane order. The unsigned operand is |w| and the
// signed one sign(w) a: |w| and the choice of a or -a depend on the weight only, so they are made
// once per k word of a tile (vpabsb, vpblendvb) for all its rows. A prepared row holds each word
// twice, [a0 a1 a2 a3 -a0 -a1 -a2 -a3] (8 bytes, prepare_int8_row), and one vpshufb of its
// broadcast picks a_i or -a_i for every weight byte: per 32 products vpshufb, vpmaddubsw, vpmaddwd
// and vpaddd. The shuffle runs on ports the two multiplies leave free, where the vpsignb of the
// sign-of-activation form (|a| x sign(a) w, which a GEMV row still uses) competes with them: on a
// Zen 5 core a mix of the four runs 1.2x faster with vpshufb than with vpsignb, and the GEMM at
// prefill shapes (64 to 512 x 4096 x 1024) about 1.2x.
constexpr int kAvx2Rows = 4;  // 8 accumulators, |w| and shuffle indices of both halves: 15 ymm
constexpr int64_t kInt8WordBytes = 8;

// An int8 row of the AVX2 GEMM: x through the optional layer norm, quantised (signed, scale into
// *scale), each k word written as [a, -a]; q: [4 Kw rounded up to 16] int8 scratch. Padding k are 0.
template <typename TX>
void prepare_int8_row(const TX* x, float* buf, int8_t* q, const TX* gamma, const TX* beta, float eps, int64_t K,
                      int64_t Kw, uint8_t* row, float* scale) {
  quantize_row<true>(x, buf, gamma, beta, eps, K, reinterpret_cast<uint8_t*>(q), scale);
  const int64_t padded = (4 * Kw + 15) / 16 * 16;
  std::fill(q + K, q + padded, int8_t{0});
  for (int64_t kw = 0; kw < Kw; kw += 4) {  // 4 words in, 4 doubled words out
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(q + 4 * kw));
    const __m128i neg = _mm_sub_epi8(_mm_setzero_si128(), a);
    alignas(16) uint8_t doubled[32];
    _mm_store_si128(reinterpret_cast<__m128i*>(doubled), _mm_unpacklo_epi32(a, neg));
    _mm_store_si128(reinterpret_cast<__m128i*>(doubled + 16), _mm_unpackhi_epi32(a, neg));
    std::memcpy(row + 8 * kw, doubled, 8 * std::min<int64_t>(4, Kw - kw));
  }
}

template <typename G, int MT>
void panel_avx2(const G& g, int64_t m0, int64_t p) {
  const int64_t Kw = g.Kw, x_stride = (G::kInt8 ? kInt8WordBytes : 4) * Kw;
  const uint8_t* w = g.w + p * Kw * 64;
  const uint8_t* x = g.x + m0 * x_stride;
  alignas(32) float sums[MT][16];
  if constexpr (G::kInt8) {
    const __m256i ones = _mm256_set1_epi16(1);
    // vpshufb indices of a_i (byte i of a word) and of -a_i (byte 4 + i), chosen by w's sign bit.
    const __m256i plus = _mm256_set1_epi32(0x03020100), minus = _mm256_set1_epi32(0x07060504);
    __m256i acc[MT][2];  // [row][columns 0-7, 8-15]
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_si256();
    for (int64_t kw = 0; kw < Kw; ++kw) {
      if constexpr (MT == 1) {  // a GEMV: |a| and sign(a) onto w, 9 instructions a word against 12
        const __m256i a = _mm256_set1_epi32(*reinterpret_cast<const int32_t*>(x + 8 * kw));
        const __m256i u = _mm256_abs_epi8(a);
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
          const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + kw * 64 + 32 * h));
          acc[0][h] = _mm256_add_epi32(acc[0][h], _mm256_madd_epi16(_mm256_maddubs_epi16(u, _mm256_sign_epi8(wv, a)), ones));
        }
        continue;
      }
      __m256i magnitude[2], index[2];
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + kw * 64 + 32 * h));
        magnitude[h] = _mm256_abs_epi8(wv);
        index[h] = _mm256_blendv_epi8(plus, minus, wv);
      }
#pragma GCC unroll 8
      for (int m = 0; m < MT; ++m) {
        const __m256i a = _mm256_set1_epi64x(*reinterpret_cast<const int64_t*>(x + m * x_stride + 8 * kw));
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
          const __m256i pairs = _mm256_maddubs_epi16(magnitude[h], _mm256_shuffle_epi8(a, index[h]));
          acc[m][h] = _mm256_add_epi32(acc[m][h], _mm256_madd_epi16(pairs, ones));
        }
      }
    }
    // The epilogue reads the sums from memory: indexing acc inside its loops would make GCC keep
    // accumulators on the stack through the K loop above (a load and a store per vpaddd).
    alignas(32) int32_t ints[MT][16];
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m)
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) _mm256_store_si256(reinterpret_cast<__m256i*>(ints[m] + 8 * h), acc[m][h]);
    for (int m = 0; m < MT; ++m) {
      const __m256 x_scale = _mm256_set1_ps(g.x_scales[m0 + m]);
      for (int h = 0; h < 2; ++h) {
        const int64_t n0 = p * 16 + 8 * h;
        if (n0 + 8 <= g.N) {  // (float(acc) * w_scale) * x_scale, as the edge's scalar loop
          const __m256i sum = _mm256_load_si256(reinterpret_cast<const __m256i*>(ints[m] + 8 * h));
          const __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(sum), _mm256_loadu_ps(g.w_scales + n0));
          _mm256_store_ps(sums[m] + 8 * h, _mm256_mul_ps(v, x_scale));
          continue;
        }
        for (int c = 0; c < 8; ++c)
          sums[m][8 * h + c] = n0 + c < g.N ? static_cast<float>(ints[m][8 * h + c]) * g.w_scales[n0 + c] * g.x_scales[m0 + m]
                                            : 0.0f;
      }
    }
  } else {
    __m256 acc[MT][2];  // [row][columns 0-7, 8-15]
    for (int m = 0; m < MT; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
    const __m256i high = _mm256_set1_epi32(static_cast<int32_t>(0xffff0000u));
    for (int64_t kw = 0; kw < Kw; ++kw) {
      __m256 even[2], odd[2];  // k = 2 kw and 2 kw + 1 of 8 columns
      for (int h = 0; h < 2; ++h) {
        const __m256i word = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + kw * 64 + 32 * h));
        even[h] = _mm256_castsi256_ps(_mm256_slli_epi32(word, 16));
        odd[h] = _mm256_castsi256_ps(_mm256_and_si256(word, high));
      }
      for (int m = 0; m < MT; ++m) {
        const uint32_t pair = *reinterpret_cast<const uint32_t*>(x + m * x_stride + 4 * kw);
        const __m256 x0 = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int32_t>(pair << 16)));
        const __m256 x1 = _mm256_castsi256_ps(_mm256_set1_epi32(static_cast<int32_t>(pair & 0xffff0000u)));
        for (int h = 0; h < 2; ++h)
          acc[m][h] = _mm256_fmadd_ps(odd[h], x1, _mm256_fmadd_ps(even[h], x0, acc[m][h]));
      }
    }
    for (int m = 0; m < MT; ++m)
      for (int h = 0; h < 2; ++h) _mm256_store_ps(sums[m] + 8 * h, acc[m][h]);
  }
  for (int m = 0; m < MT; ++m) packed_linear::finish_panel(g, m0 + m, p * 16, sums[m]);
}


// Items: (block of <= kAvx2RowBlock rows, panel), panels inner: a panel's 16 K-long columns stay in
// L1/L2 while the block's rows pass, and the block's rows stay in L2 across its panels (a long
// prompt's rows re-read for every panel would stream from DRAM).
constexpr int64_t kAvx2RowBlock = 64;

template <typename G>
int64_t num_items(const G& g) { return (g.M + kAvx2RowBlock - 1) / kAvx2RowBlock * g.P; }
template <typename G>
int64_t item_panel(const G& g, int64_t item) { return item % g.P; }

template <typename G>
void gemm_items(const G& g) {
  const int64_t items = num_items(g), chunk = item_chunk(items);
#pragma omp for schedule(dynamic, chunk)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t p = item % g.P, m_end = std::min(g.M, (item / g.P + 1) * kAvx2RowBlock);
    int64_t m0 = item / g.P * kAvx2RowBlock;
    for (; m0 + kAvx2Rows <= m_end; m0 += kAvx2Rows) panel_avx2<G, kAvx2Rows>(g, m0, p);
    static_assert(kAvx2Rows == 4, "one case per row tail");
    switch (m_end - m0) {  // the block's last rows (fewer than kAvx2Rows)
      case 1: panel_avx2<G, 1>(g, m0, p); break;
      case 2: panel_avx2<G, 2>(g, m0, p); break;
      case 3: panel_avx2<G, 3>(g, m0, p); break;
    }
  }
}
#else
constexpr int64_t kInt8WordBytes = 4;
// Portable path: the same sums over the packed layout, one output element at a time.
template <typename G>
int64_t num_items(const G&) { return 0; }  // nothing to prefetch for
template <typename G>
int64_t item_panel(const G&, int64_t) { return 0; }

template <typename G>
void gemm_items(const G& g) {
  constexpr int64_t kPerWord = G::kInt8 ? 4 : 2;
#pragma omp for schedule(static)
  for (int64_t m = 0; m < g.M; ++m)
    for (int64_t n = 0; n < g.N; ++n) {
      const uint8_t* w = g.w + (n / 16) * g.Kw * 64 + (n % 16) * 4;  // column n's word of each k group
      const uint8_t* x = g.x + m * 4 * g.Kw;
      float v;
      if constexpr (G::kInt8) {
        int32_t acc = 0;
        for (int64_t k = 0; k < g.K; ++k)
          acc += int32_t{x[k]} * static_cast<int8_t>(w[(k / kPerWord) * 64 + k % kPerWord]);
        v = dequantize(g, m, n, acc);
      } else {
        const bf16* xb = reinterpret_cast<const bf16*>(x);
        v = 0.0f;
        for (int64_t k = 0; k < g.K; ++k)
          v += to_float(xb[k]) * to_float(reinterpret_cast<const bf16*>(w + (k / kPerWord) * 64)[k % kPerWord]);
      }
      finish(g, m, n, v);
    }
}
#endif
#endif

#if !(defined(__AVX2__) && defined(__FMA__)) || (defined(__AVX512VNNI__) && defined(__AVX512BF16__))
// An int8 row of the VNNI and portable GEMMs (the AVX2 one has its own): quantize_rows' xq = a + 128.
template <typename TX>
void prepare_int8_row(const TX* x, float* buf, int8_t*, const TX* gamma, const TX* beta, float eps, int64_t K,
                      int64_t, uint8_t* row, float* scale) {
  quantize_row(x, buf, gamma, beta, eps, K, row, scale);
}
#endif

// Prefetches the first panels of the chunk this thread most likely takes first (thread t arrives
// t-th at the dynamic loop), to arrive while the thread prepares its rows.
template <typename G>
void prefetch_first_chunk(const G& g) {
  const int64_t items = num_items(g), first = omp_get_thread_num() * item_chunk(items);
  if (first >= items) return;
  const int64_t p0 = item_panel(g, first), bytes = std::min<int64_t>(kPanels, g.P - p0) * g.Kw * 64;
  for (int64_t e = 0; e < bytes; e += 64) __builtin_prefetch(g.w + p0 * g.Kw * 64 + e, 0, 2);
}

// Prepares every row of x (layer norm when gamma is given, then int8 + scale or bf16) into the calling
// thread's scratch, then runs the GEMM, both in one parallel region (a barrier between them).
template <typename TX, typename T, bool kInt8>
void linear_impl(const PackedLinearArgs& a) {
  const int64_t M = a.num_rows, K = a.in_features, Kw = kInt8 ? (K + 3) / 4 : (K + 1) / 2;
  const int64_t row_bytes = (kInt8 ? kInt8WordBytes : 4) * Kw;
  // Reused across calls; the team reaches it through these pointers (inside the parallel region the
  // names would mean each thread's own, empty, instances).
  thread_local std::vector<uint8_t> xa_buf;  // [M, row_bytes]
  thread_local std::vector<float> scale_buf;
  if (xa_buf.size() < static_cast<size_t>(M * row_bytes)) xa_buf.resize(M * row_bytes);
  if (scale_buf.size() < static_cast<size_t>(M)) scale_buf.resize(M);
  uint8_t* xa = xa_buf.data();
  float* x_scales = scale_buf.data();
  const Gemm<T, kInt8> g{xa, x_scales, reinterpret_cast<const uint8_t*>(a.packed),
                         reinterpret_cast<const int32_t*>(a.colsum), reinterpret_cast<const float*>(a.w_scales),
                         reinterpret_cast<const T*>(a.bias), reinterpret_cast<const T*>(a.residual),
                         reinterpret_cast<T*>(a.out), M, a.out_features, K, Kw, (a.out_features + 15) / 16,
                         a.res_stride, a.out_stride, a.act_start};
  const TX* x = reinterpret_cast<const TX*>(a.x);
  const TX* gamma = reinterpret_cast<const TX*>(a.gamma);
  const TX* beta = reinterpret_cast<const TX*>(a.beta);
#pragma omp parallel if (M * a.out_features * K > kParallelMacs)
  {
    prefetch_first_chunk(g);
    std::vector<float> buf(K);  // one row in fp32
    std::vector<int8_t> q(kInt8 ? (4 * Kw + 15) / 16 * 16 : 0);  // its int8 values (the AVX2 rows)
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      uint8_t* row = xa + m * row_bytes;
      if constexpr (kInt8) {
        prepare_int8_row(x + m * a.x_stride, buf.data(), q.data(), gamma, beta, a.eps, K, Kw, row, x_scales + m);
      } else {
        norm_row(x + m * a.x_stride, buf.data(), gamma, beta, a.eps, K);
        store_row(buf.data(), reinterpret_cast<bf16*>(row), K);
        if (K % 2) reinterpret_cast<bf16*>(row)[K] = bf16{0};
      }
    }
    gemm_items(g);  // after the implicit barrier of the loop above
  }
}

template <bool kInt8>
void linear(const PackedLinearArgs& a, const std::string& dtype, const std::string& out_dtype, const char* name) {
  if (a.num_rows < 0 || a.in_features <= 0 || a.out_features <= 0 || a.x_stride < a.in_features ||
      a.out_stride < a.out_features || (a.residual && a.res_stride < a.out_features) || a.act_start < 0 ||
      a.act_start > a.out_features)
    throw std::invalid_argument(std::string(name) + ": bad sizes");
  const bool out_fp32 = parse_dtype(out_dtype) == DType::kFloat32;
  if (parse_dtype(dtype) == DType::kFloat32) {
    if (out_fp32) linear_impl<float, float, kInt8>(a);
    else linear_impl<float, bf16, kInt8>(a);
  } else {
    if (out_fp32) linear_impl<bf16, float, kInt8>(a);
    else linear_impl<bf16, bf16, kInt8>(a);
  }
}

}  // namespace

void int8_linear(const PackedLinearArgs& args, const std::string& dtype, const std::string& out_dtype) {
  linear<true>(args, dtype, out_dtype, "int8_linear");
}

void bf16_linear(const PackedLinearArgs& args, const std::string& dtype, const std::string& out_dtype) {
  linear<false>(args, dtype, out_dtype, "bf16_linear");
}

}  // namespace codeinfer
