// int8_linear: a linear layer of dtype="int8" (engine/models/quant.py) in one call and one parallel
// region: the activations quantised per row (through the layer norm that feeds the linear, as
// quantize_rows does), then the int8 GEMM with its dequantising epilogue fused: one pass writes
// act(x w^T * scales + bias) + residual, no int32 or bf16 intermediate.
//
//   x: [M, K] fp32 or bf16, rows x_stride apart; gamma, beta: [K] (x's dtype) or 0 (no layer norm)
//   xq: [M, 4 K4] uint8 = int8 activations + 128 (per-thread scratch; bytes past K meet zero weights),
//       x_scales: [M] fp32
//   packed: [P, K4, 16, 4] int8, P = ceil(N / 16), K4 = ceil(K / 4),
//       packed[p, k4, c, i] = w[16 p + c, 4 k4 + i] (0 outside [N, K]): a panel p holds 16 output
//       columns, 4 consecutive k per 32-bit lane, so one vpdpbusd multiplies a broadcast group of 4
//       activation bytes with 16 columns' 4 weights and adds into 16 int32 lanes.
//   colsum: [P * 16] int32, sum_k w[n, k]: sum_k (xq - 128) w = sum_k xq w - 128 colsum (exact).
//   w_scales: [N] fp32; bias: [N] (out dtype) or 0; residual: [M, N] (out dtype, res_stride) or 0.
//   out[m, n] = act(float(acc[m, n]) * w_scales[n] * x_scales[m] + bias[n]) + residual[m, n]
//       acc = the exact int32 sum, act = tanh gelu on columns n >= act_start; out: bf16 or fp32.
//
// Parallel work: items (block of <= kRowBlock rows, group of <= kPanels panels). A tile is <= kRows
// rows x kPanels panels (24 zmm accumulators) over the whole K, so x rows and the group's weights are
// reused from L1/L2. At decode sizes (M <= 64) the weights stream from DRAM once; the first row
// tile of each group prefetches the next group's panels, which keeps those loads running under the
// VNNI work (1.3x on a 32 x 768 x 3072 GEMM with cold weights).
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"
#include "ops.h"

namespace codeinfer {
namespace {

constexpr int kRows = 8;
constexpr int kPanels = 3;
constexpr int64_t kRowBlock = 256;
constexpr int64_t kParallelMacs = int64_t{1} << 16;  // below this one thread does it all

template <typename T>
struct Gemm {
  const uint8_t* x;
  const float* x_scales;
  const int8_t* w;
  const int32_t* colsum;
  const float* w_scales;
  const T* bias;
  const T* residual;
  T* out;
  int64_t M, N, K, K4, P, x_stride, res_stride, out_stride, act_start;
};

#if defined(__AVX512VNNI__) && defined(__AVX512BF16__)
inline __m512 load16(const float* p, __mmask16 mask) { return _mm512_maskz_loadu_ps(mask, p); }
inline __m512 load16(const bf16* p, __mmask16 mask) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
inline void store16(float* p, __m512 v, __mmask16 mask) { _mm512_mask_storeu_ps(p, mask, v); }
inline void store16(bf16* p, __m512 v, __mmask16 mask) {  // round to nearest even, as torch
  _mm256_mask_storeu_epi16(p, mask, reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(v)));
}

// Rows [m0, m0 + MT) x panels [p0, p0 + NT). prefetch: the next group's first panel (or null).
template <typename T, int MT, int NT>
void tile(const Gemm<T>& g, int64_t m0, int64_t p0, const int8_t* prefetch) {
  __m512i acc[MT][NT];
#pragma GCC unroll 8
  for (int m = 0; m < MT; ++m)
#pragma GCC unroll 3
    for (int t = 0; t < NT; ++t) acc[m][t] = _mm512_setzero_si512();
  const int8_t* w = g.w + p0 * g.K4 * 64;
  const uint8_t* x = g.x + m0 * g.x_stride;
  const int64_t K4 = g.K4, x_stride = g.x_stride;
  for (int64_t k4 = 0; k4 < K4; ++k4) {
    __m512i b[NT];
#pragma GCC unroll 3
    for (int t = 0; t < NT; ++t) b[t] = _mm512_loadu_si512(w + (t * K4 + k4) * 64);
    if (prefetch)
#pragma GCC unroll 3
      for (int t = 0; t < NT; ++t)
        _mm_prefetch(reinterpret_cast<const char*>(prefetch + (t * K4 + k4) * 64), _MM_HINT_T1);
#pragma GCC unroll 8
    for (int m = 0; m < MT; ++m) {
      const __m512i a = _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(x + m * x_stride + 4 * k4));
#pragma GCC unroll 3
      for (int t = 0; t < NT; ++t) acc[m][t] = _mm512_dpbusd_epi32(acc[m][t], a, b[t]);
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
    const __m512i zero_point = _mm512_slli_epi32(_mm512_loadu_si512(g.colsum + n0), 7);
    const __m512 w_scale = load16(g.w_scales + n0, mask);
    const __m512 bias = g.bias ? load16(g.bias + n0, mask) : _mm512_setzero_ps();
    // Lanes with n >= act_start take the gelu.
    const int64_t first = std::clamp<int64_t>(g.act_start - n0, 0, 16);
    const __mmask16 act = first >= 16 ? __mmask16(0) : __mmask16(0xffffu << first);
    for (int m = 0; m < MT; ++m) {
      const int64_t row = m0 + m;
      __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_load_si512(sums[m][t]), zero_point));
      v = _mm512_mul_ps(_mm512_mul_ps(v, w_scale), _mm512_set1_ps(g.x_scales[row]));
      v = _mm512_add_ps(v, bias);
      if (act) v = _mm512_mask_mov_ps(v, act, gelu_tanh16(v));
      if (g.residual) v = _mm512_add_ps(v, load16(g.residual + row * g.res_stride + n0, mask));
      store16(g.out + row * g.out_stride + n0, v, mask);
    }
  }
}

template <typename T, int NT>
void row_tail(const Gemm<T>& g, int64_t m0, int64_t rows, int64_t p0) {
  switch (rows) {  // rows < kRows
    case 1: tile<T, 1, NT>(g, m0, p0, nullptr); break;
    case 2: tile<T, 2, NT>(g, m0, p0, nullptr); break;
    case 3: tile<T, 3, NT>(g, m0, p0, nullptr); break;
    case 4: tile<T, 4, NT>(g, m0, p0, nullptr); break;
    case 5: tile<T, 5, NT>(g, m0, p0, nullptr); break;
    case 6: tile<T, 6, NT>(g, m0, p0, nullptr); break;
    case 7: tile<T, 7, NT>(g, m0, p0, nullptr); break;
  }
}

// Rows [m_begin, m_end) x panels [p0, p0 + NT); the first tile prefetches the next group.
template <typename T, int NT>
void group(const Gemm<T>& g, int64_t m_begin, int64_t m_end, int64_t p0) {
  // The next group's NT panels (a shorter last group is left to the hardware).
  const int8_t* prefetch = p0 + 2 * NT <= g.P ? g.w + (p0 + NT) * g.K4 * 64 : nullptr;
  int64_t m0 = m_begin;
  for (; m0 + kRows <= m_end; m0 += kRows) {
    tile<T, kRows, NT>(g, m0, p0, prefetch);
    prefetch = nullptr;
  }
  if (m0 < m_end) row_tail<T, NT>(g, m0, m_end - m0, p0);
}

// The GEMM's items, shared among the threads of the enclosing parallel region.
template <typename T>
void gemm_items(const Gemm<T>& g) {
  const int64_t groups = (g.P + kPanels - 1) / kPanels;
  const int64_t blocks = (g.M + kRowBlock - 1) / kRowBlock;
#pragma omp for schedule(static)
  for (int64_t item = 0; item < blocks * groups; ++item) {
    const int64_t m_begin = item / groups * kRowBlock, p0 = item % groups * kPanels;
    const int64_t m_end = std::min(g.M, m_begin + kRowBlock);
    switch (std::min<int64_t>(kPanels, g.P - p0)) {
      case 3: group<T, 3>(g, m_begin, m_end, p0); break;
      case 2: group<T, 2>(g, m_begin, m_end, p0); break;
      default: group<T, 1>(g, m_begin, m_end, p0); break;
    }
  }
}
#else
// The epilogue of one output element (the portable path).
template <typename T>
inline float finish(const Gemm<T>& g, int64_t m, int64_t n, int32_t acc) {
  float v = static_cast<float>(acc - 128 * g.colsum[n]) * g.w_scales[n] * g.x_scales[m];
  if (g.bias) v += to_float(g.bias[n]);
  if (n >= g.act_start) v = gelu_tanh(v);
  if (g.residual) v += to_float(g.residual[m * g.res_stride + n]);
  return v;
}

// Portable path: the same sums over the packed layout, one output element at a time.
template <typename T>
void gemm_items(const Gemm<T>& g) {
#pragma omp for schedule(static)
  for (int64_t m = 0; m < g.M; ++m)
    for (int64_t n = 0; n < g.N; ++n) {
      const int8_t* w = g.w + (n / 16) * g.K4 * 64 + (n % 16) * 4;
      int32_t acc = 0;
      for (int64_t k = 0; k < g.K; ++k) acc += int32_t{g.x[m * g.x_stride + k]} * w[(k / 4) * 64 + k % 4];
      g.out[m * g.out_stride + n] = from_float<T>(finish(g, m, n, acc));
    }
}
#endif

// Prefetches the weights of this thread's first GEMM item (schedule(static) hands thread t the t-th
// contiguous share of the items), to arrive while the thread quantises its rows.
template <typename T>
void prefetch_first_group(const Gemm<T>& g) {
  const int64_t groups = (g.P + kPanels - 1) / kPanels, items = groups * ((g.M + kRowBlock - 1) / kRowBlock);
  const int64_t threads = omp_get_num_threads(), share = (items + threads - 1) / threads;
  const int64_t first = omp_get_thread_num() * share;
  if (first >= items) return;
  const int64_t p0 = first % groups * kPanels, bytes = std::min<int64_t>(kPanels, g.P - p0) * g.K4 * 64;
  for (int64_t e = 0; e < bytes; e += 64) __builtin_prefetch(g.w + p0 * g.K4 * 64 + e, 0, 2);
}

// Quantises x (through the layer norm when gamma is given) into a per-thread scratch buffer, then
// runs the GEMM, both in one parallel region (a barrier between them, no second fork).
template <typename TX, typename T>
void int8_linear_impl(const Int8LinearArgs& a) {
  const int64_t M = a.num_rows, K = a.in_features, K4 = (K + 3) / 4;
  // The calling thread's scratch, reused across calls; the team reaches it through these pointers
  // (inside the parallel region the name would mean each thread's own, empty, instance).
  thread_local std::vector<uint8_t> xq_buf;  // [M, 4 K4]; the padding bytes meet zero weights
  thread_local std::vector<float> scale_buf;
  if (xq_buf.size() < static_cast<size_t>(M * 4 * K4)) xq_buf.resize(M * 4 * K4);
  if (scale_buf.size() < static_cast<size_t>(M)) scale_buf.resize(M);
  uint8_t* xq = xq_buf.data();
  float* x_scales = scale_buf.data();
  const Gemm<T> g{xq, x_scales, reinterpret_cast<const int8_t*>(a.packed),
                  reinterpret_cast<const int32_t*>(a.colsum), reinterpret_cast<const float*>(a.w_scales),
                  reinterpret_cast<const T*>(a.bias), reinterpret_cast<const T*>(a.residual),
                  reinterpret_cast<T*>(a.out), M, a.out_features, K, K4, (a.out_features + 15) / 16,
                  4 * K4, a.res_stride, a.out_stride, a.act_start};
  const TX* x = reinterpret_cast<const TX*>(a.x);
  const TX* gamma = reinterpret_cast<const TX*>(a.gamma);
  const TX* beta = reinterpret_cast<const TX*>(a.beta);
#pragma omp parallel if (M * a.out_features * K > kParallelMacs)
  {
    prefetch_first_group(g);
    std::vector<float> buf(K);  // one row in fp32
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m)
      quantize_row(x + m * a.x_stride, buf.data(), gamma, beta, a.eps, K, xq + m * 4 * K4, x_scales + m);
    gemm_items(g);  // after the implicit barrier of the loop above
  }
}

template <typename TX>
void int8_linear_out(const Int8LinearArgs& a, DType out) {
  if (out == DType::kFloat32) int8_linear_impl<TX, float>(a);
  else int8_linear_impl<TX, bf16>(a);
}

}  // namespace

void int8_linear(const Int8LinearArgs& args, const std::string& dtype, const std::string& out_dtype) {
  if (args.num_rows < 0 || args.in_features <= 0 || args.out_features <= 0 || args.x_stride < args.in_features ||
      args.out_stride < args.out_features || (args.residual && args.res_stride < args.out_features) ||
      args.act_start < 0 || args.act_start > args.out_features)
    throw std::invalid_argument("int8_linear: bad sizes");
  const DType out = parse_dtype(out_dtype);
  switch (parse_dtype(dtype)) {
    case DType::kFloat32: int8_linear_out<float>(args, out); break;
    case DType::kBFloat16: int8_linear_out<bf16>(args, out); break;
  }
}

}  // namespace codeinfer
