// gated_embedding: hidden[t] = wte[modality[t] ? remap[ids[t]] : ids[t]] (+ wpe[positions[t]]).
#include <omp.h>

#include <cstdint>

#include "common.h"
#include "ops.h"

namespace codeinfer {
namespace {

template <typename T>
void gated_embedding_impl(const int64_t* ids, const int64_t* modality, const int64_t* remap,
                          const T* wte, const T* wpe, const int64_t* positions, T* out,
                          int64_t num_tokens, int64_t hidden) {
  // Small steps (decode) stay on one thread: waking another costs more than the copy.
#pragma omp parallel for schedule(static) if (num_tokens * hidden > (int64_t{1} << 18))
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int64_t row = modality[t] ? remap[ids[t]] : ids[t];
    const T* src = wte + row * hidden;
    T* dst = out + t * hidden;
    if (wpe == nullptr) {
      for (int64_t i = 0; i < hidden; ++i) dst[i] = src[i];
    } else {
      const T* pos = wpe + positions[t] * hidden;
      for (int64_t i = 0; i < hidden; ++i) dst[i] = from_float<T>(to_float(src[i]) + to_float(pos[i]));
    }
  }
}

}  // namespace

void gated_embedding(uintptr_t ids, uintptr_t modality, uintptr_t remap, uintptr_t wte,
                     uintptr_t wpe, uintptr_t positions, uintptr_t out, int64_t num_tokens,
                     int64_t hidden, const std::string& dtype) {
  auto p = [](uintptr_t a) { return reinterpret_cast<const int64_t*>(a); };
  switch (parse_dtype(dtype)) {
    case DType::kFloat32:
      gated_embedding_impl<float>(p(ids), p(modality), p(remap), reinterpret_cast<const float*>(wte),
                                  reinterpret_cast<const float*>(wpe), p(positions),
                                  reinterpret_cast<float*>(out), num_tokens, hidden);
      break;
    case DType::kBFloat16:
      gated_embedding_impl<bf16>(p(ids), p(modality), p(remap), reinterpret_cast<const bf16*>(wte),
                                 reinterpret_cast<const bf16*>(wpe), p(positions),
                                 reinterpret_cast<bf16*>(out), num_tokens, hidden);
      break;
  }
}

}  // namespace codeinfer
