// gated_embedding: hidden[t] = wte[modality[t] ? remap[ids[t]] : ids[t]] (+ wpe[positions[t]]).
#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common.h"
#include "ops.h"

namespace codeinfer {
namespace {

template <typename T>
void gated_embedding_impl(const int64_t* ids, const int64_t* modality, const int64_t* remap,
                          const T* wte, const T* wpe, const int64_t* positions, T* out,
                          int64_t num_tokens, int64_t hidden) {
  constexpr int64_t kChunk = 256;  // fp32 staging for the learned-position add
  // Small steps (decode) stay on one thread: waking another costs more than the copy.
#pragma omp parallel for schedule(static) if (num_tokens * hidden > (int64_t{1} << 18))
  for (int64_t t = 0; t < num_tokens; ++t) {
    const int64_t row = modality[t] ? remap[ids[t]] : ids[t];
    const T* src = wte + row * hidden;
    T* dst = out + t * hidden;
    if (wpe == nullptr) {
      std::memcpy(dst, src, hidden * sizeof(T));
      continue;
    }
    const T* pos = wpe + positions[t] * hidden;
    for (int64_t c = 0; c < hidden; c += kChunk) {  // dst = T(float(src) + float(pos))
      const int64_t n = std::min(kChunk, hidden - c);
      float a[kChunk], b[kChunk];
      load_row(src + c, a, n);
      load_row(pos + c, b, n);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) a[i] += b[i];
      store_row(a, dst + c, n);
    }
  }
}

// Gathered indices are bounds-checked before any thread reads through them.
void check_indices(const int64_t* ids, const int64_t* modality, const int64_t* remap,
                   const int64_t* positions, bool has_wpe, int64_t num_tokens, int64_t vocab,
                   int64_t max_positions) {
  auto fail = [](const std::string& what, int64_t t, int64_t value) {
    throw std::invalid_argument(what + " " + std::to_string(value) + " out of range at token " + std::to_string(t));
  };
  for (int64_t t = 0; t < num_tokens; ++t) {
    if (ids[t] < 0 || ids[t] >= vocab) fail("ids:", t, ids[t]);
    if (modality[t] && (remap[ids[t]] < 0 || remap[ids[t]] >= vocab)) fail("remap: row", t, remap[ids[t]]);
    if (has_wpe && (positions[t] < 0 || positions[t] >= max_positions)) fail("positions:", t, positions[t]);
  }
}

}  // namespace

void gated_embedding(uintptr_t ids, uintptr_t modality, uintptr_t remap, uintptr_t wte,
                     uintptr_t wpe, uintptr_t positions, uintptr_t out, int64_t num_tokens,
                     int64_t hidden, int64_t vocab, int64_t max_positions, const std::string& dtype) {
  auto p = [](uintptr_t a) { return reinterpret_cast<const int64_t*>(a); };
  check_indices(p(ids), p(modality), p(remap), p(positions), wpe != 0, num_tokens, vocab, max_positions);
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
