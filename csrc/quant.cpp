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

template <typename T>
void quantize_pack_int8_impl(const QuantPackArgs& a) {
  const T* w = reinterpret_cast<const T*>(a.weight);
  int8_t* packed = reinterpret_cast<int8_t*>(a.packed);
  int32_t* colsum = reinterpret_cast<int32_t*>(a.colsum);
  float* scales = reinterpret_cast<float*>(a.scales);
  const int64_t N = a.out_features, K = a.in_features, Kw = (K + 3) / 4, P = (N + 15) / 16;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t p = 0; p < P; ++p) {
    int8_t* panel = packed + p * Kw * 64;
    std::fill(panel, panel + Kw * 64, int8_t{0});
    for (int64_t c = 0; c < 16; ++c) {
      const int64_t n = 16 * p + c;
      if (n >= N) {
        colsum[n] = 0;
        continue;
      }
      const T* row = w + n * K;
      float amax = 0.0f;
      for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(to_float(row[k])));
      const float scale = std::max(amax / 127.0f, 1e-12f);
      int32_t sum = 0;
      for (int64_t k = 0; k < K; ++k) {
        const float q = std::clamp(std::nearbyint(to_float(row[k]) / scale), -127.0f, 127.0f);
        panel[(k / 4) * 64 + c * 4 + k % 4] = static_cast<int8_t>(q);
        sum += static_cast<int32_t>(q);
      }
      scales[n] = scale;
      colsum[n] = sum;
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
