// int4_linear: a linear layer of dtype="int4" (engine/layers/int4.py) in one call and one parallel
// region, as int8_linear (csrc/gemm.cpp): the rows prepared (layer norm, per-row signed int8), then
// the GEMM on 4-bit weights unpacked in registers, with the dequantising epilogue fused.
//
//   x: [M, K] fp32 or bf16 (x_stride apart); gamma, beta: [K] (x's dtype) or 0 (no layer norm).
//   Weights: u[n, k] in 0..15, w[n, k] ~= scale[n, g] u[n, k] + min[n, g] for the group g = k / G
//   (G a multiple of 32; Kp = ceil(K / G) G, u = 0 past K, where the activations are 0 too).
//   packed: [P, Kp / 8, 16, 4] uint8, P = ceil(N / 16),
//     packed[p, k8, c, i] = u[16 p + c, 8 k8 + i] | u[16 p + c, 8 k8 + 4 + i] << 4:
//     its low nibbles are word 2 k8 of int8_linear's layout (16 columns x 4 consecutive k) and its
//     high nibbles word 2 k8 + 1, so one load, a shift and two ands give two int8 weight words.
//   params: [P, Kp / G, 2, 16] fp16, a group's 16 column scales then its 16 mins (0 past N): the
//     64 bytes of one group of one panel sit together, read once per group.
//   Rows: a[m, k] = round(v[m, k] / x_scales[m]) (quantize_row<true>: signed, scale max|v| / 127),
//     asum[m, g] = sum_{k in g} a[m, k] (what the mins multiply).
//   v[m, n] = x_scales[m] sum_g (scale[n, g] sum_{k in g} a[m, k] u[n, k] + min[n, g] asum[m, g]),
//   out[m, n] = act(v + bias[n]) + residual[m, n] as int8_linear's epilogue (csrc/packed_linear.h).
//
// Unsigned weights times signed activations is the operand order of vpmaddubsw (AVX2) and vpdpbusd
// (VNNI), so neither needs int8's sign trick or zero-point column sums. The AVX2 path sums 32 k in
// int16 (16 products of |15 x 127| per lane: at most 30480 < 2^15, exact) before widening.
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"
#include "packed_linear.h"
#include "ops.h"

namespace codeinfer {
namespace {

constexpr int64_t kParallelMacs = int64_t{1} << 16;  // below this one thread does it all

template <typename TOut>
struct Int4Gemm {
  using T = TOut;
  const int8_t* x;          // [M, Kp] signed int8 rows
  const float* x_scales;    // [M]
  const float* asum;        // [M, groups]
  const uint8_t* w;         // [P, Kp / 8, 64]
  const uint16_t* params;   // [P, groups, 32] fp16
  const T* bias;
  const T* residual;
  T* out;
  int64_t M, N, Kp, G, groups, P, res_stride, out_stride, act_start;
};

inline int32_t word(const int8_t* p) { return *reinterpret_cast<const int32_t*>(p); }

#if defined(__AVX512VNNI__) && defined(__AVX512BF16__)
// Tiles of up to 4 rows x 2 panels: per k8, two dpbusd (low, high nibbles) per row and panel into
// int32 group sums, which each group end scales into the fp32 sums (24 zmm at most).
constexpr int kTileRows = 4;
constexpr int kTilePanels = 2;
constexpr int64_t kItemRows = 256;

template <typename G, int MT, int NT>
void tile(const G& g, int64_t m0, int64_t p0) {
  const __m512i nibble = _mm512_set1_epi8(0x0f);
  const int64_t K8 = g.Kp / 8;
  __m512 acc[MT][NT];
  for (int m = 0; m < MT; ++m)
    for (int t = 0; t < NT; ++t) acc[m][t] = _mm512_setzero_ps();
  for (int64_t grp = 0; grp < g.groups; ++grp) {
    __m512i sums[MT][NT];
    for (int m = 0; m < MT; ++m)
      for (int t = 0; t < NT; ++t) sums[m][t] = _mm512_setzero_si512();
    for (int64_t k8 = grp * g.G / 8; k8 < (grp + 1) * g.G / 8; ++k8) {
      __m512i lo[NT], hi[NT];
      for (int t = 0; t < NT; ++t) {
        const __m512i v = _mm512_loadu_si512(g.w + ((p0 + t) * K8 + k8) * 64);
        lo[t] = _mm512_and_si512(v, nibble);
        hi[t] = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
      }
      for (int m = 0; m < MT; ++m) {
        const int8_t* x = g.x + (m0 + m) * g.Kp + 8 * k8;
        const __m512i a0 = _mm512_set1_epi32(word(x)), a1 = _mm512_set1_epi32(word(x + 4));
        for (int t = 0; t < NT; ++t)
          sums[m][t] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(sums[m][t], lo[t], a0), hi[t], a1);
      }
    }
    for (int t = 0; t < NT; ++t) {
      const uint16_t* params = g.params + ((p0 + t) * g.groups + grp) * 32;
      const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(params)));
      const __m512 mins = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(params + 16)));
      for (int m = 0; m < MT; ++m) {
        const __m512 asum = _mm512_set1_ps(g.asum[(m0 + m) * g.groups + grp]);
        acc[m][t] = _mm512_fmadd_ps(mins, asum, _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums[m][t]), scale, acc[m][t]));
      }
    }
  }
  for (int t = 0; t < NT; ++t)
    for (int m = 0; m < MT; ++m)
      packed_linear::finish16(g, m0 + m, (p0 + t) * 16, _mm512_mul_ps(acc[m][t], _mm512_set1_ps(g.x_scales[m0 + m])));
}
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
// A panel's 16 columns as two halves of 8: one 32-byte load holds 8 columns x 8 k; vpmaddubsw of its
// low and high nibbles with the broadcast activation words adds pairs into int16, 32 k summed there
// (exact, see the top), then vpmaddwd widens to int32 and one FMA applies the group scale.
constexpr int kTileRows = 2;
constexpr int kTilePanels = 1;
constexpr int64_t kItemRows = 64;  // a block's rows stay in L2 across its panels

template <typename G, int MT, int NT>
void tile(const G& g, int64_t m0, int64_t p) {
  static_assert(NT == 1, "the AVX2 tiles are one panel wide");
  const __m256i nibble = _mm256_set1_epi8(0x0f), ones = _mm256_set1_epi16(1);
  const uint8_t* w = g.w + p * (g.Kp / 8) * 64;
  __m256 acc[MT][2];  // [row][columns 0-7, 8-15]
  for (int m = 0; m < MT; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
  for (int64_t grp = 0; grp < g.groups; ++grp) {
    const uint16_t* params = g.params + (p * g.groups + grp) * 32;
    for (int64_t k8_0 = grp * g.G / 8; k8_0 < (grp + 1) * g.G / 8; k8_0 += 4) {
      __m256i sums[MT][2];
      for (int m = 0; m < MT; ++m) sums[m][0] = sums[m][1] = _mm256_setzero_si256();
      for (int64_t k8 = k8_0; k8 < k8_0 + 4; ++k8) {
        __m256i lo[2], hi[2];
        for (int h = 0; h < 2; ++h) {
          const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k8 * 64 + 32 * h));
          lo[h] = _mm256_and_si256(v, nibble);
          hi[h] = _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble);
        }
        for (int m = 0; m < MT; ++m) {
          const int8_t* x = g.x + (m0 + m) * g.Kp + 8 * k8;
          const __m256i a0 = _mm256_set1_epi32(word(x)), a1 = _mm256_set1_epi32(word(x + 4));
          for (int h = 0; h < 2; ++h)
            sums[m][h] = _mm256_add_epi16(sums[m][h], _mm256_add_epi16(_mm256_maddubs_epi16(lo[h], a0),
                                                                       _mm256_maddubs_epi16(hi[h], a1)));
        }
      }
      for (int h = 0; h < 2; ++h) {
        const __m256 scale = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(params + 8 * h)));
        for (int m = 0; m < MT; ++m)
          acc[m][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(sums[m][h], ones)), scale, acc[m][h]);
      }
    }
    for (int h = 0; h < 2; ++h) {
      const __m256 mins = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(params + 16 + 8 * h)));
      for (int m = 0; m < MT; ++m)
        acc[m][h] = _mm256_fmadd_ps(mins, _mm256_set1_ps(g.asum[(m0 + m) * g.groups + grp]), acc[m][h]);
    }
  }
  for (int m = 0; m < MT; ++m) {
    alignas(32) float v[16];
    const __m256 x_scale = _mm256_set1_ps(g.x_scales[m0 + m]);
    for (int h = 0; h < 2; ++h) _mm256_store_ps(v + 8 * h, _mm256_mul_ps(acc[m][h], x_scale));
    packed_linear::finish_panel(g, m0 + m, p * 16, v);
  }
}
#else
// Portable path: the same sums over the packed layout, one row and one column at a time.
constexpr int kTileRows = 1;
constexpr int kTilePanels = 1;
constexpr int64_t kItemRows = 64;

inline float half_to_float(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0) return (sign ? -1.0f : 1.0f) * static_cast<float>(man) * 5.9604644775390625e-8f;  // 2^-24
  if (exp == 31) return __builtin_bit_cast(float, sign | 0x7f800000u | (man << 13));
  return __builtin_bit_cast(float, sign | ((exp + 112) << 23) | (man << 13));
}

template <typename G, int MT, int NT>
void tile(const G& g, int64_t m, int64_t p) {
  const int8_t* x = g.x + m * g.Kp;
  for (int64_t c = 0; c < 16 && p * 16 + c < g.N; ++c) {
    float v = 0.0f;
    for (int64_t grp = 0; grp < g.groups; ++grp) {
      int32_t sum = 0;
      for (int64_t k = grp * g.G; k < (grp + 1) * g.G; ++k) {
        const uint8_t byte = g.w[(p * (g.Kp / 8) + k / 8) * 64 + c * 4 + k % 4];
        sum += int32_t{x[k]} * ((k % 8 < 4) ? (byte & 0x0f) : (byte >> 4));
      }
      const uint16_t* params = g.params + (p * g.groups + grp) * 32;
      v += half_to_float(params[c]) * static_cast<float>(sum) + half_to_float(params[16 + c]) * g.asum[m * g.groups + grp];
    }
    packed_linear::finish(g, m, p * 16 + c, v * g.x_scales[m]);
  }
}
#endif

template <typename G, int NT>
void item_rows(const G& g, int64_t m_begin, int64_t m_end, int64_t p0) {
  int64_t m0 = m_begin;
  for (; m0 + kTileRows <= m_end; m0 += kTileRows) tile<G, kTileRows, NT>(g, m0, p0);
  for (; m0 < m_end; ++m0) tile<G, 1, NT>(g, m0, p0);
}

// Items (block of <= kItemRows rows, group of <= kTilePanels panels), panels inner: the panels'
// weights stay in L1/L2 while the block's rows pass, and the block's rows in L2 across panels; handed
// out in chunks as int8's (packed_linear::item_chunk).
template <typename G>
void gemm_items(const G& g) {
  const int64_t groups = (g.P + kTilePanels - 1) / kTilePanels, blocks = (g.M + kItemRows - 1) / kItemRows;
  const int64_t items = blocks * groups, chunk = packed_linear::item_chunk(items);
#pragma omp for schedule(dynamic, chunk)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t m_begin = item / groups * kItemRows, p0 = item % groups * kTilePanels;
    const int64_t m_end = std::min(g.M, m_begin + kItemRows);
    if (g.P - p0 >= 2) item_rows<G, kTilePanels>(g, m_begin, m_end, p0);
    else item_rows<G, 1>(g, m_begin, m_end, p0);
  }
}

// One row: layer norm, signed int8 + scale (quantize_row<true>), zeros up to Kp, group sums.
template <typename TX>
void prepare_row(const PackedLinearArgs& a, const TX* x, float* buf, int64_t Kp, int8_t* row, float* scale,
                 float* asum) {
  const TX* gamma = reinterpret_cast<const TX*>(a.gamma);
  const TX* beta = reinterpret_cast<const TX*>(a.beta);
  const int64_t K = a.in_features, G = a.group_size;
  quantize_row<true>(x, buf, gamma, beta, a.eps, K, reinterpret_cast<uint8_t*>(row), scale);
  std::fill(row + K, row + Kp, int8_t{0});
  for (int64_t k0 = 0; k0 < Kp; k0 += G) {
    int32_t sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t k = k0; k < k0 + G; ++k) sum += row[k];
    asum[k0 / G] = static_cast<float>(sum);
  }
}

template <typename TX, typename T>
void int4_impl(const PackedLinearArgs& a) {
  const int64_t M = a.num_rows, G = a.group_size, groups = (a.in_features + G - 1) / G, Kp = groups * G;
  // Reused across calls; the team reaches them through these pointers (see csrc/gemm.cpp).
  thread_local std::vector<int8_t> xa_buf;   // [M, Kp]
  thread_local std::vector<float> scale_buf;  // [M] then asum [M, groups]
  if (xa_buf.size() < static_cast<size_t>(M * Kp)) xa_buf.resize(M * Kp);
  if (scale_buf.size() < static_cast<size_t>(M * (1 + groups))) scale_buf.resize(M * (1 + groups));
  int8_t* xa = xa_buf.data();
  float* x_scales = scale_buf.data();
  float* asum = x_scales + M;
  const Int4Gemm<T> g{xa, x_scales, asum, reinterpret_cast<const uint8_t*>(a.packed),
                      reinterpret_cast<const uint16_t*>(a.w_scales), reinterpret_cast<const T*>(a.bias),
                      reinterpret_cast<const T*>(a.residual), reinterpret_cast<T*>(a.out), M, a.out_features,
                      Kp, G, groups, (a.out_features + 15) / 16, a.res_stride, a.out_stride, a.act_start};
  const TX* x = reinterpret_cast<const TX*>(a.x);
#pragma omp parallel if (M * a.out_features * Kp > kParallelMacs)
  {
    std::vector<float> buf(a.in_features);  // one row in fp32
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m)
      prepare_row(a, x + m * a.x_stride, buf.data(), Kp, xa + m * Kp, x_scales + m, asum + m * groups);
    gemm_items(g);  // after the implicit barrier of the loop above
  }
}

}  // namespace

void int4_linear(const PackedLinearArgs& a, const std::string& dtype, const std::string& out_dtype) {
  if (a.num_rows < 0 || a.in_features <= 0 || a.out_features <= 0 || a.x_stride < a.in_features ||
      a.out_stride < a.out_features || (a.residual && a.res_stride < a.out_features) || a.act_start < 0 ||
      a.act_start > a.out_features || a.group_size <= 0 || a.group_size % 32)
    throw std::invalid_argument("int4_linear: bad sizes");
  const bool out_fp32 = parse_dtype(out_dtype) == DType::kFloat32;
  if (parse_dtype(dtype) == DType::kFloat32) {
    if (out_fp32) int4_impl<float, float>(a);
    else int4_impl<float, bf16>(a);
  } else {
    if (out_fp32) int4_impl<bf16, float>(a);
    else int4_impl<bf16, bf16>(a);
  }
}

}  // namespace codeinfer
