// Row reductions over fp32 logits for the sampler: each row's argmax (the greedy token) and its
// logsumexp (every sampled token's logprob) in one kernel. As two torch reductions they woke torch's
// intra-op thread team twice per step, which on a shared CPU waits for a descheduled worker.
//
// logits: [rows, vocab] fp32, row stride `stride` elements; argmax: [rows] int64; lse: [rows] fp32.
// torch's semantics: the first maximal index; a row holding NaN gives its first NaN's index and a
// NaN logsumexp; a row of -inf gives index 0 and -inf; a +inf gives +inf.
#include <omp.h>

#include <cmath>
#include <limits>

#include "ops.h"
#include "simd.h"

namespace codeinfer {
namespace {

constexpr int64_t kParallelElems = int64_t{1} << 18;  // below this one thread is faster than a wake-up

float row_max(const float* x, int64_t n, bool* has_nan) {
  float mx = -std::numeric_limits<float>::infinity();
  int nan = 0;
#pragma omp simd reduction(max : mx) reduction(| : nan)
  for (int64_t i = 0; i < n; ++i) {
    mx = x[i] > mx ? x[i] : mx;
    nan |= x[i] != x[i];
  }
  *has_nan = nan != 0;
  return mx;
}

// sum exp(x - mx) over the row, mx its finite maximum (every argument <= 0).
float sum_exp(const float* x, int64_t n, float mx) {
  int64_t i = 0;
  float sum = 0.0f;
#if CODEINFER_SIMD
  using simd::F;
  const F m = simd::set1(mx);
  F acc0 = simd::set1(0.0f), acc1 = simd::set1(0.0f);  // two chains: the FMA latency overlaps
  for (; i + 2 * simd::kWidth <= n; i += 2 * simd::kWidth) {
    acc0 = simd::add(acc0, simd::exp_neg(simd::sub(simd::load(x + i), m)));
    acc1 = simd::add(acc1, simd::exp_neg(simd::sub(simd::load(x + i + simd::kWidth), m)));
  }
  sum = simd::reduce_add(simd::add(acc0, acc1));
#endif
  for (; i < n; ++i) sum += exp_neg(x[i] - mx);
  return sum;
}

void row_stats(const float* x, int64_t n, int64_t* arg, float* lse) {
  bool has_nan = false;
  const float mx = row_max(x, n, &has_nan);
  int64_t i = 0;
  if (has_nan) {
    while (x[i] == x[i]) ++i;
    *arg = i;
    *lse = std::numeric_limits<float>::quiet_NaN();
    return;
  }
  while (i < n - 1 && x[i] != mx) ++i;  // -inf everywhere: index 0
  *arg = i;
  *lse = std::isinf(mx) ? mx : mx + std::log(sum_exp(x, n, mx));
}

}  // namespace

void argmax_logsumexp(uintptr_t logits, uintptr_t argmax, uintptr_t lse, int64_t rows, int64_t vocab,
                      int64_t stride) {
  if (rows < 0 || vocab <= 0 || stride < vocab) throw std::invalid_argument("argmax_logsumexp: bad sizes");
  const float* x = reinterpret_cast<const float*>(logits);
  int64_t* arg = reinterpret_cast<int64_t*>(argmax);
  float* out = reinterpret_cast<float*>(lse);
#pragma omp parallel for schedule(static) if (rows > 1 && rows * vocab > kParallelElems)
  for (int64_t r = 0; r < rows; ++r) row_stats(x + r * stride, vocab, arg + r, out + r);
}

}  // namespace codeinfer
