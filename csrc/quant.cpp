// The input half of the int8 GEMM of dtype="int8" (csrc/gemm.cpp, engine/models/quant.py): per-row
// activation quantisation, optionally fused with the layer norm that feeds the GEMM.
//
// quantize_rows, for each row m of x [num_rows, dim] (row stride x_stride, dense last dim):
//     v = (x[m] - mean) / sqrt(var + eps) * gamma + beta    when gamma != 0 (fp32 statistics)
//     v = x[m]                                              otherwise
//     scales[m] = max|v| / 127,  xq[m, k] = round(v[k] / scales[m]) + 128     (uint8, zero point 128)
//   xq is contiguous [num_rows, dim]. A row of zeros gets scale 0 and quantises to 128.
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

}  // namespace

void quantize_rows(const QuantizeArgs& args, const std::string& dtype) {
  if (args.num_rows < 0 || args.dim <= 0 || args.x_stride < args.dim)
    throw std::invalid_argument("quantize_rows: bad sizes");
  switch (parse_dtype(dtype)) {
    case DType::kFloat32: quantize_rows_impl<float>(args); break;
    case DType::kBFloat16: quantize_rows_impl<bf16>(args); break;
  }
}

}  // namespace codeinfer
