// Shared helpers for the CPU kernels: dtype tags and bf16 <-> fp32 conversion.
#pragma once
#include <cstdint>
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
inline float to_float(bf16 x) {
  uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
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
