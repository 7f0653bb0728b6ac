// The two halves around the int8 GEMM of dtype="int8" (oneDNN u8 x s8 -> bf16, see
// engine/models/quant.py): per-row activation quantisation, optionally fused with the layer norm
// that feeds the GEMM, and the dequantising epilogue fused with bias, gelu and the residual add.
//
// quantize_rows, for each row m of x [num_rows, dim] (row stride x_stride, dense last dim):
//     v = (x[m] - mean) / sqrt(var + eps) * gamma + beta    when gamma != 0 (fp32 statistics)
//     v = x[m]                                              otherwise
//     scales[m] = max|v| / 127,  xq[m, k] = round(v[k] / scales[m]) + 128     (uint8, zero point 128)
//   xq is contiguous [num_rows, dim]. A row of zeros gets scale 0 and quantises to 128.
// dequantize_rows, in place on y [num_rows, dim] (row stride y_stride, dense last dim), the GEMM
// output w_scale[n] * sum_k (xq[m, k] - 128) * wq[n, k]:
//     v = y[m, n] * scales[m] + bias[n]                     (bias optional)
//     v = gelu_tanh(v)                                      for n >= act_start
//     y[m, n] = v + residual[m, n]                          (residual optional, row stride res_stride)
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"
#include "ops.h"

namespace codeinfer {
namespace {

// Steps below this many elements stay on one thread: waking the other costs more than the work.
constexpr int64_t kParallelElems = int64_t{1} << 13;

// GPT-2's tanh gelu, 0.5 v (1 + tanh(u)) = v * sigmoid(2u), with e = exp(-|2u|) <= 1 so nothing
// overflows: sigmoid(2u) = 1 / (1 + e) for u >= 0, e / (1 + e) below. gelu_tanh16 is the same on
// 16 lanes.
inline float gelu_tanh(float v) {
  const float u2 = 2.0f * 0.7978845608028654f * v * (1.0f + 0.044715f * v * v);
  const float e = exp_neg(-std::fabs(u2));
  return v * (u2 < 0.0f ? e : 1.0f) / (1.0f + e);
}

template <typename T>
void quantize_row(const T* x, float* buf, const T* gamma, const T* beta, float eps, int64_t dim,
                  uint8_t* out, float* scale_out) {
  load_row(x, buf, dim);
  if (gamma != nullptr) {
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
  *scale_out = quantize_row_int8<uint8_t, 128>(buf, out, dim);
}

template <typename T>
void quantize_rows_impl(const QuantizeArgs& a) {
  const T* x = reinterpret_cast<const T*>(a.x);
  const T* gamma = reinterpret_cast<const T*>(a.gamma);
  const T* beta = reinterpret_cast<const T*>(a.beta);
  uint8_t* out = reinterpret_cast<uint8_t*>(a.out);
  float* scales = reinterpret_cast<float*>(a.scales);
#pragma omp parallel if (a.num_rows * a.dim > kParallelElems)
  {
    std::vector<float> buf(a.dim);  // the row in fp32, per thread
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.num_rows; ++m)
      quantize_row(x + m * a.x_stride, buf.data(), gamma, beta, a.eps, a.dim, out + m * a.dim,
                   scales + m);
  }
}

#if defined(__AVX512F__)
// gelu_tanh on 16 lanes, the reciprocal of 1 + e from rcp14 plus one Newton step (~2^-28) instead of
// a division.
inline __m512 gelu_tanh16(__m512 v) {
  const __m512 v2 = _mm512_mul_ps(v, v);
  const __m512 u2 = _mm512_mul_ps(_mm512_mul_ps(v, _mm512_set1_ps(2.0f * 0.7978845608028654f)),
                                  _mm512_fmadd_ps(v2, _mm512_set1_ps(0.044715f), _mm512_set1_ps(1.0f)));
  const __m512 e = exp_neg16(_mm512_sub_ps(_mm512_setzero_ps(), _mm512_abs_ps(u2)));
  const __m512 d = _mm512_add_ps(e, _mm512_set1_ps(1.0f));
  __m512 r = _mm512_rcp14_ps(d);
  r = _mm512_mul_ps(r, _mm512_fnmadd_ps(d, r, _mm512_set1_ps(2.0f)));
  const __mmask16 negative = _mm512_cmp_ps_mask(u2, _mm512_setzero_ps(), _CMP_LT_OQ);
  const __m512 sig = _mm512_mask_mul_ps(r, negative, e, r);  // u >= 0: 1 / (1 + e); u < 0: e / (1 + e)
  return _mm512_mul_ps(v, sig);
}
#endif

template <typename T>
void dequantize_row(T* y, float scale, const T* bias, const T* residual, int64_t dim,
                    int64_t act_start, float* buf) {
  load_row(y, buf, dim);
#pragma omp simd
  for (int64_t i = 0; i < dim; ++i) buf[i] = buf[i] * scale + (bias ? to_float(bias[i]) : 0.0f);
  int64_t i = act_start;
#if defined(__AVX512F__)
  for (; i + 16 <= dim; i += 16) _mm512_storeu_ps(buf + i, gelu_tanh16(_mm512_loadu_ps(buf + i)));
#endif
  for (; i < dim; ++i) buf[i] = gelu_tanh(buf[i]);
  if (residual != nullptr) {
#pragma omp simd
    for (int64_t i = 0; i < dim; ++i) buf[i] += to_float(residual[i]);
  }
  store_row(buf, y, dim);
}

template <typename T>
void dequantize_rows_impl(const DequantizeArgs& a) {
  T* y = reinterpret_cast<T*>(a.y);
  const T* bias = reinterpret_cast<const T*>(a.bias);
  const T* residual = reinterpret_cast<const T*>(a.residual);
  const float* scales = reinterpret_cast<const float*>(a.scales);
  const int64_t act_start = std::min(std::max(a.act_start, int64_t{0}), a.dim);
#pragma omp parallel if (a.num_rows * a.dim > kParallelElems)
  {
    std::vector<float> buf(a.dim);
#pragma omp for schedule(static)
    for (int64_t m = 0; m < a.num_rows; ++m)
      dequantize_row(y + m * a.y_stride, scales[m], bias,
                     residual ? residual + m * a.res_stride : nullptr, a.dim, act_start, buf.data());
  }
}

}  // namespace

void quantize_rows(const QuantizeArgs& args, const std::string& dtype) {
  if (args.num_rows < 0 || args.dim <= 0 || args.x_stride < args.dim)
    throw std::invalid_argument("quantize_rows: bad sizes");
  switch (parse_dtype(dtype)) {
    case DType::kFloat32: quantize_rows_impl<float>(args); break;
    case DType::kBFloat16: quantize_rows_impl<bf16>(args); break;
  }
}

void dequantize_rows(const DequantizeArgs& args, const std::string& dtype) {
  if (args.num_rows < 0 || args.dim <= 0 || args.y_stride < args.dim ||
      (args.residual && args.res_stride < args.dim))
    throw std::invalid_argument("dequantize_rows: bad sizes");
  switch (parse_dtype(dtype)) {
    case DType::kFloat32: dequantize_rows_impl<float>(args); break;
    case DType::kBFloat16: dequantize_rows_impl<bf16>(args); break;
  }
}

}  // namespace codeinfer
