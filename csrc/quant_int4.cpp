// quantize_pack_int4: the load-time step of dtype="int4" (engine/layers/int4.py), a weight w [N, K]
// (fp32 or bf16, contiguous) straight into int4_linear's layout (csrc/gemm_int4.cpp), the arithmetic
// of kernels.int4_pack.quantize_int4 (the torch version, ~100x slower on a CodeGen-16B block):
//   per group of G inputs of a row (zeros past K): asymmetric: the grid min + s (0..15) with
//   s = (max - min) / 15, u = clamp(round((w - min) / s)) from the fp16-rounded s and min; then the
//   least-squares s, min of w ~= s u + min for those u, u rounded again on that grid, kept when its
//   squared error is lower. Symmetric: s = max|w| / 7, min = -8 s. fp16 rounding to nearest even.
//   The sums of the refit run in another order than torch's, so a rare group may differ in the
//   last bit of its refit scale (tests/kernels/test_int4_linear.py bounds how often).
// Panels of 16 rows go to the threads; each writes its panel's bytes and params once.
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

inline float to_half(float x) { return static_cast<float>(static_cast<_Float16>(x)); }

inline uint16_t half_bits(float x) {
  const _Float16 h = static_cast<_Float16>(x);
  return __builtin_bit_cast(uint16_t, h);
}

struct Grid {
  float scale, low, err;  // fp16-representable scale and min, squared error of w on the grid
};

// u = the nearest grid points of w (G of them) for the fp16 roundings of scale and low.
Grid fit_grid(const float* w, int64_t G, float scale, float low, uint8_t* u) {
  const float s = to_half(std::max(scale, 5.9604644775390625e-8f)), m = to_half(low);  // 2^-24
  float err = 0.0f;
  for (int64_t i = 0; i < G; ++i) {
    const float q = std::clamp(std::nearbyint((w[i] - m) / s), 0.0f, 15.0f);
    const float d = q * s + m - w[i];
    err += d * d;
    u[i] = static_cast<uint8_t>(q);
  }
  return {s, m, err};
}

// One group: its u into u[G], returns (scale, min).
Grid quantize_group(const float* w, int64_t G, bool asymmetric, uint8_t* u, uint8_t* u2) {
  if (!asymmetric) {
    float amax = 0.0f;
    for (int64_t i = 0; i < G; ++i) amax = std::max(amax, std::fabs(w[i]));
    const float s = to_half(std::max(amax / 7.0f, 5.9604644775390625e-8f));
    return fit_grid(w, G, s, s * -8.0f, u);
  }
  float lo = w[0], hi = w[0];
  for (int64_t i = 1; i < G; ++i) lo = std::min(lo, w[i]), hi = std::max(hi, w[i]);
  const Grid first = fit_grid(w, G, (hi - lo) / 15.0f, lo, u);
  float su = 0.0f, suu = 0.0f, sw = 0.0f, suw = 0.0f;
  for (int64_t i = 0; i < G; ++i) {
    const float q = u[i];
    su += q, suu += q * q, sw += w[i], suw += q * w[i];
  }
  const float n = static_cast<float>(G), det = n * suu - su * su;
  if (!(det > 0.0f)) return first;  // u constant: the first grid stands
  const float s = (n * suw - su * sw) / std::max(det, 1e-30f);
  const Grid refit = fit_grid(w, G, s, (sw - s * su) / n, u2);
  if (!(refit.err < first.err)) return first;
  std::copy(u2, u2 + G, u);
  return refit;
}

template <typename T>
void quantize_pack_int4_impl(const QuantPackArgs& a) {
  const T* w = reinterpret_cast<const T*>(a.weight);
  uint8_t* packed = reinterpret_cast<uint8_t*>(a.packed);
  uint16_t* params = reinterpret_cast<uint16_t*>(a.scales);
  const int64_t N = a.out_features, K = a.in_features, G = a.group_size;
  const int64_t groups = (K + G - 1) / G, K8 = groups * G / 8, P = (N + 15) / 16;
#pragma omp parallel
  {
    std::vector<float> row(groups * G, 0.0f);  // zeros past K
    std::vector<uint8_t> u(G), u2(G);
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < P; ++p) {
      uint8_t* panel = packed + p * K8 * 64;
      std::fill(panel, panel + K8 * 64, uint8_t{0});
      std::fill(params + p * groups * 32, params + (p + 1) * groups * 32, uint16_t{0});
      for (int64_t c = 0; c < 16 && 16 * p + c < N; ++c) {
        load_row(w + (16 * p + c) * K, row.data(), K);
        for (int64_t grp = 0; grp < groups; ++grp) {
          const Grid grid = quantize_group(row.data() + grp * G, G, a.asymmetric, u.data(), u2.data());
          params[(p * groups + grp) * 32 + c] = half_bits(grid.scale);
          params[(p * groups + grp) * 32 + 16 + c] = half_bits(grid.low);
          for (int64_t i = 0, k = grp * G; i < G && k < K; ++i, ++k)
            panel[(k / 8) * 64 + c * 4 + k % 4] |= static_cast<uint8_t>(u[i] << (k % 8 < 4 ? 0 : 4));
        }
      }
    }
  }
}

}  // namespace

void quantize_pack_int4(const QuantPackArgs& args, const std::string& dtype) {
  if (args.out_features <= 0 || args.in_features <= 0 || args.group_size <= 0 || args.group_size % 32)
    throw std::invalid_argument("quantize_pack_int4: bad sizes");
  switch (parse_dtype(dtype)) {
    case DType::kFloat32: quantize_pack_int4_impl<float>(args); break;
    case DType::kBFloat16: quantize_pack_int4_impl<bf16>(args); break;
  }
}

}  // namespace codeinfer
