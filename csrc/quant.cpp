// The input half of the int8 GEMM of dtype="int8" (csrc/gemm.cpp, engine/models/quant.py): per-row
// activation quantisation, optionally fused with the layer norm that feeds the GEMM.
//
// quantize_rows, for each row m of x [num_rows, dim] (row stride x_stride, dense last dim):
//     v = (x[m] - mean) / sqrt(var + eps) * gamma + beta    when gamma != 0 (fp32 statistics)
//     v = x[m]                                              otherwise
//     scales[m] = max|v| / 127,  xq[m, k] = round(v[k] / scales[m]) + 128     (uint8, zero point 128)
//   xq is contiguous [num_rows, dim]. A row of zeros gets scale 0 and quantises to 128.
//
// quantize_pack_int8, a weight w [N, K] (fp32 or bf16, contiguous) at load, in one pass per row:
//     scales[n] = max(max_k |w[n, k]| / 127, 1e-12),  q[n, k] = clamp(round(w[n, k] / scales[n]), +-127)
//   (round to nearest even, a true division: kernels.reference.quantize_pack_int8 to the bit),
//   written straight into int8_linear's layout packed[p, k4, c, i] = q[16 p + c, 4 k4 + i] (zeros past
//   N and K, csrc/gemm.cpp) with colsum[16 p + c] = sum_k q[16 p + c, k]. Panels go to the threads.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "common.h"
#include "ops.h"

namespace codeinfer {
namespace {

// Steps below this many elements stay on one thread: waking the other costs more than the work.
constexpr int64_t kParallelElems = int64_t{1} << 13;

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

// One weight row: q = clamp(round(row / scale), +-127) into q[0:K] and zeros to q[4 Kw); returns the
// scale, the row's sum into *sum. Written so every loop vectorises: rounding to nearest even by
// adding 1.5 * 2^23 (exact, |row / scale| <= 127 + rounding), ternaries for the clamp and the max.
template <typename T>
float quantize_weight_row(const T* row, float* buf, int8_t* q, int64_t K, int64_t Kw, int32_t* sum) {
  load_row(row, buf, K);
  float amax = 0.0f;
#pragma omp simd reduction(max : amax)
  for (int64_t k = 0; k < K; ++k) amax = amax > __builtin_fabsf(buf[k]) ? amax : __builtin_fabsf(buf[k]);
  const float scale = std::max(amax / 127.0f, 1e-12f);
  int32_t total = 0;
#pragma omp simd reduction(+ : total)
  for (int64_t k = 0; k < K; ++k) {
    float v = (buf[k] / scale + 12582912.0f) - 12582912.0f;
    v = v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v);
    q[k] = static_cast<int8_t>(static_cast<int32_t>(v));
    total += static_cast<int32_t>(v);
  }
  std::fill(q + K, q + 4 * Kw, int8_t{0});
  *sum = total;
  return scale;
}

template <typename T>
void quantize_pack_int8_impl(const QuantPackArgs& a) {
  const T* w = reinterpret_cast<const T*>(a.weight);
  int8_t* packed = reinterpret_cast<int8_t*>(a.packed);
  int32_t* colsum = reinterpret_cast<int32_t*>(a.colsum);
  float* scales = reinterpret_cast<float*>(a.scales);
  const int64_t N = a.out_features, K = a.in_features, Kw = (K + 3) / 4, P = (N + 15) / 16;
#pragma omp parallel
  {
    std::vector<float> buf(K);       // a row in fp32
    std::vector<int8_t> q(4 * Kw);   // its int8 values, zero past K
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < P; ++p) {
      int8_t* panel = packed + p * Kw * 64;
      for (int64_t c = 0; c < 16; ++c) {
        const int64_t n = 16 * p + c;
        if (n < N) {
          scales[n] = quantize_weight_row(w + n * K, buf.data(), q.data(), K, Kw, colsum + n);
        } else {  // padding column: zero weights
          std::fill(q.begin(), q.end(), int8_t{0});
          colsum[n] = 0;
        }
        // Column c's 4 bytes of each k word; every byte of the panel is written, no clearing pass.
        for (int64_t kw = 0; kw < Kw; ++kw) std::memcpy(panel + kw * 64 + c * 4, q.data() + 4 * kw, 4);
      }
    }
  }
}

}  // namespace

void quantize_pack_int8(const QuantPackArgs& args, const std::string& dtype) {
  if (args.out_features <= 0 || args.in_features <= 0) throw std::invalid_argument("quantize_pack_int8: bad sizes");
  switch (parse_dtype(dtype)) {
    case DType::kFloat32: quantize_pack_int8_impl<float>(args); break;
    case DType::kBFloat16: quantize_pack_int8_impl<bf16>(args); break;
  }
}

void quantize_rows(const QuantizeArgs& args, const std::string& dtype) {
  if (args.num_rows < 0 || args.dim <= 0 || args.x_stride < args.dim)
    throw std::invalid_argument("quantize_rows: bad sizes");
  switch (parse_dtype(dtype)) {
    case DType::kFloat32: quantize_rows_impl<float>(args); break;
    case DType::kBFloat16: quantize_rows_impl<bf16>(args); break;
  }
}

}  // namespace codeinfer
