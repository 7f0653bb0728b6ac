// Shared helpers for the CPU kernels: dtype tags and bf16 <-> fp32 conversion.
#pragma once
#include <cmath>
#include <cstdint>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#include <cstring>
#include <stdexcept>
#include <string>

namespace codeinfer {

// Element types the kernels accept; the Python wrapper passes torch's dtype name.
enum class DType { kFloat32, kBFloat16 };

inline DType parse_dtype(const std::string& name) {
  if (name == "float32") return DType::kFloat32;
  if (name == "bfloat16") return DType::kBFloat16;
  throw std::invalid_argument("unsupported dtype for the CPU kernels: " + name);
}

struct bf16 {
  uint16_t bits;
};

inline float to_float(float x) { return x; }
inline float to_float(int8_t x) { return static_cast<float>(x); }  // int8 KV cache (scaled per row)
inline float to_float(bf16 x) {  // bf16 is the top half of an fp32; a bit cast vectorises in loops
  return __builtin_bit_cast(float, static_cast<uint32_t>(x.bits) << 16);
}

template <typename T>
inline T from_float(float x);
template <>
inline float from_float<float>(float x) { return x; }
template <>
inline bf16 from_float<bf16>(float x) {
  // Round to nearest even, as torch does.
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{static_cast<uint16_t>((u >> 16) | 0x40)};  // NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>(u >> 16)};
}

}  // namespace codeinfer

namespace codeinfer {

// Row helpers written so GCC vectorises them (`omp simd`, no libm calls in the loop body).

// dst[0:n] = float(src[0:n]).
inline void load_row(const float* src, float* dst, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }
inline void load_row(const bf16* src, float* dst, int64_t n) {
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) dst[i] = __builtin_bit_cast(float, static_cast<uint32_t>(s[i]) << 16);
}

// dst[0:n] = T(src[0:n]) (bf16: round to nearest even, NaN kept).
inline void store_row(const float* src, float* dst, int64_t n) { std::memcpy(dst, src, n * sizeof(float)); }
inline void store_row(const float* src, bf16* dst, int64_t n) {
  uint16_t* d = reinterpret_cast<uint16_t*>(dst);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = __builtin_bit_cast(uint32_t, src[i]);
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    d[i] = static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? (u >> 16) | 0x40u : rounded);
  }
}

// Dot product of an fp32 row with a T row. Without -ffast-math the compiler may not reassociate a
// float sum, so a plain reduction ends in a serial chain of scalar adds; the 16 lane sums and the
// halving tree below spell the reassociation out, and every step vectorises.
template <typename T>
inline float dot_row(const float* a, const T* b, int64_t n) {
  constexpr int64_t kLanes = 16;
  float lanes[kLanes] = {};
  const int64_t full = n - n % kLanes;
  for (int64_t i = 0; i < full; i += kLanes) {
#pragma omp simd
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += a[i + l] * to_float(b[i + l]);
  }
  for (int64_t i = full; i < n; ++i) lanes[i - full] += a[i] * to_float(b[i]);
  for (int64_t width = kLanes / 2; width > 0; width /= 2) {
#pragma omp simd
    for (int64_t l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  }
  return lanes[0];
}

// Symmetric int8 quantisation of one fp32 row: dst[i] = round(x[i] / scale) + kOffset with
// scale = max|x| / 127 (0 for a row of zeros, which quantises to kOffset); returns the scale.
// Out = int8_t with kOffset 0 (KV cache rows) or uint8_t with kOffset 128 (GEMM activations).
// Rounds to nearest even without libm (adding 1.5 * 2^23 drops the fraction) so the loops vectorise.
template <typename Out, int kOffset>
inline float quantize_row_int8(const float* x, Out* dst, int64_t n) {
  float amax = 0.0f;
#pragma omp simd reduction(max : amax)
  for (int64_t i = 0; i < n; ++i) amax = amax > __builtin_fabsf(x[i]) ? amax : __builtin_fabsf(x[i]);
  const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float q = (x[i] * inv + 12582912.0f) - 12582912.0f;
    q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);  // ternaries: std::min/max do not vectorise
    dst[i] = static_cast<Out>(static_cast<int32_t>(q) + kOffset);
  }
  return amax / 127.0f;
}

// exp(x) for x <= 0 (softmax arguments), Cephes expf: x = n ln2 + r with |r| <= ln2 / 2, a degree-6
// polynomial for exp(r), 2^n built in the exponent bits. Relative error ~1e-7; exactly 0 below -87
// (so exp(-inf) = 0 and masked keys contribute nothing). Inline and branch-free so it vectorises.
inline float exp_neg(float x) {
  const float xc = x < -87.0f ? -87.0f : x;
  // n = round(x / ln2); adding 1.5 * 2^23 rounds without floorf, which blocks vectorisation.
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float scale = __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);
  return x < -87.0f ? 0.0f : p * scale;
}

// GPT-2's tanh gelu, 0.5 v (1 + tanh(u)) = v * sigmoid(2u), with e = exp(-|2u|) <= 1 so nothing
// overflows: sigmoid(2u) = 1 / (1 + e) for u >= 0, e / (1 + e) below (simd::gelu_tanh: on a vector).
inline float gelu_tanh(float v) {
  const float u2 = 2.0f * 0.7978845608028654f * v * (1.0f + 0.044715f * v * v);
  const float e = exp_neg(-std::fabs(u2));
  return v * (u2 < 0.0f ? e : 1.0f) / (1.0f + e);
}

// x through the optional layer norm (fp32 statistics; gamma null: none) into buf [dim] fp32.
template <typename T>
inline void norm_row(const T* x, float* buf, const T* gamma, const T* beta, float eps, int64_t dim) {
  load_row(x, buf, dim);
  if (gamma == nullptr) return;
  float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < dim; ++i) sum += buf[i];
  const float mean = sum / static_cast<float>(dim);
  float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
  for (int64_t i = 0; i < dim; ++i) sq += (buf[i] - mean) * (buf[i] - mean);
  const float rstd = 1.0f / std::sqrt(sq / static_cast<float>(dim) + eps);
#pragma omp simd
  for (int64_t i = 0; i < dim; ++i)
    buf[i] = (buf[i] - mean) * rstd * to_float(gamma[i]) + (beta ? to_float(beta[i]) : 0.0f);
}

// One row of quantize_rows (csrc/quant.cpp; also the input half of int8_linear): x through the optional
// layer norm into buf, then per-row symmetric int8 + 128 into out (+ 0 with kSigned: the AVX2
// GEMM's signed rows, csrc/gemm.cpp), its scale into scale_out.
template <bool kSigned = false, typename T>
inline void quantize_row(const T* x, float* buf, const T* gamma, const T* beta, float eps, int64_t dim,
                         uint8_t* out, float* scale_out) {
  norm_row(x, buf, gamma, beta, eps, dim);
  if constexpr (kSigned)
    *scale_out = quantize_row_int8<int8_t, 0>(buf, reinterpret_cast<int8_t*>(out), dim);
  else
    *scale_out = quantize_row_int8<uint8_t, 128>(buf, out, dim);
}

}  // namespace codeinfer
