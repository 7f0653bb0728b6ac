// paged_attention: varlen causal attention of new query rows over the paged KV cache, for any mix of
// prefill chunks and decode rows, with online softmax in fp32 and an optional sliding window.
//
// Layouts (element strides):
//   q: [num_tokens, num_heads, head_dim], row t head h at q + t * q_stride_t + h * q_stride_h
//   k_cache, v_cache: contiguous [num_blocks, block_size, num_kv_heads, head_dim]; fp32, bf16 or int8
//   k_scale, v_scale (int8 caches): [num_blocks, block_size, num_kv_heads] fp32, row value = int8 * scale
//   block_tables: [num_seqs, max_blocks_per_seq] int32; seq_lens: [num_seqs] int32;
//   cu_seqlens_q: [num_seqs + 1] int32; out: contiguous [num_tokens, num_heads, head_dim]
// Sequence b owns rows cu_seqlens_q[b]:cu_seqlens_q[b+1]; its r-th row sits at position
// seq_lens[b] - q_len_b + r and sees keys j <= position (and j > position - window when window > 0).
// GQA: head h reads kv head h / (num_heads / num_kv_heads).
//
// Parallel work (plan): one item = (sequence, tile of <= kQueryTile query rows, group of heads, key
// range). Keys are read block by block straight from the cache (bf16 / int8 widened to fp32 in
// registers), never gathered or copied per sequence. When there are too few tiles to keep every
// thread busy, prefill tiles split their heads into groups, and a decode row with a long context
// splits its keys into chunks (flash-decoding): each chunk item leaves its running max, sum and
// unnormalised output in a partial slot, and a second pass merges a row's chunks. A chunk holds all
// heads, so it streams its blocks whole, in address order. Decode-only steps run items round robin
// (thread t: items t, t + T, ...) so a thread knows its next item and prefetches its first block;
// steps with prefill tiles, whose costs vary, are scheduled dynamically.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention_decode.h"
#include "attention_prefill.h"
#include "common.h"
#include "ops.h"

namespace codeinfer {
namespace {

using attention::CacheScales;
using attention::kQueryTile;
using attention::Scratch;
using attention::WorkItem;

// A decode row split into key chunks: partial slots [part0, part0 + num_parts) hold its chunks'
// states, [num_heads][2 + head_dim] floats each (max, sum, unnormalised output).
struct Split {
  int64_t row, part0, num_parts;
};

struct Plan {
  std::vector<WorkItem> items;
  std::vector<Split> splits;
  int64_t num_parts = 0;
  int64_t work = 0;  // ~ (query row, key) pairs x heads x dim, to skip threads for tiny steps
  bool decode_only = true;
};

constexpr int64_t kMinChunk = 128;  // keys per chunk of a split decode row, at least

// The item's q rows into s.q, fp32 and scaled: [row][head in group][dim].
template <typename TQ>
void load_q(const AttentionArgs& a, const WorkItem& w, int64_t dim, Scratch& s) {
  const TQ* q = reinterpret_cast<const TQ*>(a.q);
  const int64_t num_group = w.h1 - w.h0;
  const float scale = a.scale;  // a local: the stores below could alias a.scale
  for (int64_t r = 0; r < w.row1 - w.row0; ++r)
    for (int64_t g = 0; g < num_group; ++g) {
      float* qs = s.q.data() + (r * num_group + g) * dim;
      load_row(q + (w.row0 + r) * a.q_stride_t + (w.h0 + g) * a.q_stride_h, qs, dim);
      for (int64_t d = 0; d < dim; ++d) qs[d] *= scale;
    }
}

// Output rows of item w from its state: acc / l, in q's dtype.
template <typename TQ>
void store_rows(const AttentionArgs& a, const WorkItem& w, int64_t dim, Scratch& s) {
  TQ* out = reinterpret_cast<TQ*>(a.out);
  const int64_t num_group = w.h1 - w.h0;
  for (int64_t r = 0; r < w.row1 - w.row0; ++r)
    for (int64_t g = 0; g < num_group; ++g) {
      const int64_t i = r * num_group + g;
      float* acc = s.acc.data() + i * dim;
      const float inv = 1.0f / s.l[i];  // l >= 1: a row (or chunk) always sees a key at its max
      for (int64_t d = 0; d < dim; ++d) acc[d] *= inv;
      store_row(acc, out + ((w.row0 + r) * a.num_heads + w.h0 + g) * dim, dim);
    }
}

template <typename TQ, typename TC, int64_t kDim>
void decode_item(const AttentionArgs& a, const WorkItem& w, const WorkItem* next, Scratch& s, float* partial) {
  const int64_t dim = kDim > 0 ? kDim : a.head_dim, num_group = w.h1 - w.h0;
  s.reset(num_group, dim);
  load_q<TQ>(a, w, dim, s);
  attention::decode_keys<TC, kDim>(a, w, next, s);
  if (w.part < 0) return store_rows<TQ>(a, w, dim, s);
  for (int64_t g = 0; g < num_group; ++g) {
    float* slot = partial + (w.part * a.num_heads + w.h0 + g) * (dim + 2);
    slot[0] = s.m[g], slot[1] = s.l[g];
    std::copy_n(s.acc.data() + g * dim, dim, slot + 2);
  }
}

template <typename TQ, typename TC, int64_t kDim>
void prefill_item(const AttentionArgs& a, const WorkItem& w, Scratch& s) {
  const TC* k_cache = reinterpret_cast<const TC*>(a.k_cache);
  const TC* v_cache = reinterpret_cast<const TC*>(a.v_cache);
  const int32_t* table = reinterpret_cast<const int32_t*>(a.block_tables) + w.seq * a.max_blocks_per_seq;
  const int64_t dim = kDim > 0 ? kDim : a.head_dim, bs = a.block_size;
  const int64_t num_rows = w.row1 - w.row0, num_group = w.h1 - w.h0;
  const int64_t heads_per_kv = a.num_heads / a.num_kv_heads, slot_stride = a.num_kv_heads * dim;
  CacheScales cs;
  cs.k_cache = k_cache, cs.v_cache = v_cache, cs.head_dim = dim;
  cs.k_scale = reinterpret_cast<const float*>(a.k_scale), cs.v_scale = reinterpret_cast<const float*>(a.v_scale);
  const int64_t pos0 = w.key1 - num_rows;  // the tile's first row sits just before its rows' keys end
  s.reset(num_rows * num_group, dim);
#if defined(__AVX512BF16__)
  // bf16 tiles read q straight from its rows (tile_update_bf16): no fp32 copies.
  constexpr bool kBf16Tiles = std::is_same_v<TQ, bf16> && (std::is_same_v<TC, bf16> || std::is_same_v<TC, int8_t>) &&
                              kDim > 0 && kDim % 32 == 0;
#else
  constexpr bool kBf16Tiles = false;
#endif
  if constexpr (!kBf16Tiles) {  // qt[(g * dim + d) * kQueryTile + r] = q row r, head g, dim d; padding rows 0
    load_q<TQ>(a, w, dim, s);
    s.qt.assign(num_group * dim * kQueryTile, 0.0f);
    for (int64_t r = 0; r < num_rows; ++r)
      for (int64_t g = 0; g < num_group; ++g)
        for (int64_t d = 0; d < dim; ++d) s.qt[(g * dim + d) * kQueryTile + r] = s.q[(r * num_group + g) * dim + d];
    s.scores.resize((kQueryTile + 2) * bs + (2 * bs + 3) * dim);  // scores, scales, the block's K and V in fp32
  }
  const int64_t kv_lo = w.h0 / heads_per_kv * dim, kv_hi = ((w.h1 - 1) / heads_per_kv + 1) * dim;
  for (int64_t blk = w.key0 / bs; blk * bs < w.key1; ++blk) {
    const int64_t j0 = std::max(blk * bs, w.key0), j1 = std::min(blk * bs + bs, w.key1);
    const int64_t block_base = static_cast<int64_t>(table[blk]) * bs * slot_stride;
    // The group's rows are 2-4 KB apart (other heads in between), too far apart for the hardware
    // prefetcher: fetch the next block's [token, group heads, dim] rows while this one is computed.
    if ((blk + 1) * bs < w.key1)
      attention::prefetch_block(k_cache, v_cache, table[blk + 1] * bs * slot_stride, bs, slot_stride, kv_lo, kv_hi);
    for (int64_t g = 0; g < num_group; ++g) {
      const int64_t head_base = block_base + (j0 - blk * bs) * slot_stride + (w.h0 + g) / heads_per_kv * dim;
      const TC* k = k_cache + head_base;
      const TC* v = v_cache + head_base;
#if defined(__AVX512BF16__)
      if constexpr (kBf16Tiles) {  // 16 keys at a time (blocks may hold more)
        const bf16* q = reinterpret_cast<const bf16*>(a.q) + w.row0 * a.q_stride_t + (w.h0 + g) * a.q_stride_h;
        for (int64_t c0 = j0; c0 < j1; c0 += 16)
          attention::tile_update_bf16<TC, kDim>(q, a.q_stride_t, a.scale, k + (c0 - j0) * slot_stride,
                                                v + (c0 - j0) * slot_stride, slot_stride, std::min<int64_t>(16, j1 - c0),
                                                c0, pos0, num_rows, a.window, s.m.data() + g, s.l.data() + g,
                                                s.acc.data() + g * dim, num_group, cs);
        continue;
      }
#endif
      attention::tile_update<TC, kDim>(s.qt.data() + g * dim * kQueryTile, k, v, slot_stride, j1 - j0, dim, j0, pos0,
                                       num_rows, a.window, s.m.data() + g, s.l.data() + g, s.acc.data() + g * dim,
                                       num_group, s.scores.data(), cs);
    }
  }
  store_rows<TQ>(a, w, dim, s);
}

// Row `split.row`, head h: the chunks' states combined (each rescaled to the common max) into the
// first chunk's slot, then written.
template <typename TQ>
void merge_split(const AttentionArgs& a, const Split& split, int64_t h, float* partial) {
  const int64_t dim = a.head_dim;
  auto slot = [&](int64_t c) { return partial + ((split.part0 + c) * a.num_heads + h) * (dim + 2); };
  float m = -INFINITY;
  for (int64_t c = 0; c < split.num_parts; ++c) m = std::max(m, slot(c)[0]);
  float* acc = slot(0) + 2;
  float l = 0.0f;
  for (int64_t c = 0; c < split.num_parts; ++c) {
    const float* st = slot(c);
    const float f = exp_neg(st[0] - m);  // every chunk saw keys: its max is finite
    l += f * st[1];
    if (c == 0) {
#pragma omp simd
      for (int64_t d = 0; d < dim; ++d) acc[d] *= f;
    } else {
#pragma omp simd
      for (int64_t d = 0; d < dim; ++d) acc[d] += f * st[2 + d];
    }
  }
  const float inv = 1.0f / l;
  for (int64_t d = 0; d < dim; ++d) acc[d] *= inv;
  store_row(acc, reinterpret_cast<TQ*>(a.out) + (split.row * a.num_heads + h) * dim, dim);
}

// Chunk boundaries of keys [key0, key1) in `num_chunks` pieces of nearly equal size, on block
// boundaries where that keeps every chunk non-empty.
int64_t chunk_bound(int64_t key0, int64_t key1, int64_t num_chunks, int64_t c, int64_t block_size, int64_t prev) {
  if (c == num_chunks) return key1;
  const int64_t even = key0 + (key1 - key0) * c / num_chunks;
  const int64_t aligned = even / block_size * block_size;
  return aligned > prev ? aligned : even;
}

// Checks the metadata (every block id that will be read included) and splits the step into items.
Plan plan(const AttentionArgs& a) {
  const int32_t* seq_lens = reinterpret_cast<const int32_t*>(a.seq_lens);
  const int32_t* cu = reinterpret_cast<const int32_t*>(a.cu_seqlens_q);
  const int32_t* tables = reinterpret_cast<const int32_t*>(a.block_tables);
  auto fail = [](const std::string& what, int64_t b) {
    throw std::invalid_argument(what + " (sequence " + std::to_string(b) + ")");
  };
  if (cu[0] != 0 || cu[a.num_seqs] > a.num_tokens) fail("cu_seqlens_q must start at 0 and end <= num_tokens", 0);
  Plan p;
  int64_t num_tiles = 0;
  for (int64_t b = 0; b < a.num_seqs; ++b) {
    const int64_t q_len = cu[b + 1] - cu[b], seq_len = seq_lens[b];
    if (q_len < 0) fail("cu_seqlens_q must be non-decreasing", b);
    if (q_len > seq_len) fail("seq_lens: a sequence has fewer tokens than new query rows", b);
    if ((seq_len + a.block_size - 1) / a.block_size > a.max_blocks_per_seq) fail("block_tables: too few columns", b);
    if (q_len == 0) continue;
    const int64_t first_key = a.window > 0 ? std::max<int64_t>(0, seq_len - q_len - a.window + 1) : 0;
    for (int64_t blk = first_key / a.block_size; blk * a.block_size < seq_len; ++blk) {
      const int32_t id = tables[b * a.max_blocks_per_seq + blk];
      if (id < 0 || id >= a.num_blocks) fail("block_tables: block id " + std::to_string(id) + " out of range", b);
    }
    num_tiles += (q_len + kQueryTile - 1) / kQueryTile;
    p.work += q_len * std::min<int64_t>(seq_len, a.window > 0 ? a.window : seq_len) * a.num_heads * a.head_dim;
  }
  // Enough items for ~4 per processor: each tile becomes `pieces` items when there are too few.
  // Processors, not the team size: a split decode row's sum order (and so its rounding) must not
  // change with the thread count the engine picks on a loaded machine (engine/worker/cpu_threads.py).
  const int64_t want = 4 * omp_get_num_procs();
  const int64_t pieces = std::max<int64_t>(1, (want + num_tiles - 1) / std::max<int64_t>(num_tiles, 1));
  for (int64_t b = 0; b < a.num_seqs; ++b) {
    const int64_t q_len = cu[b + 1] - cu[b];
    for (int64_t row = cu[b]; row < cu[b + 1]; row += kQueryTile) {
      const int64_t row1 = std::min<int64_t>(row + kQueryTile, cu[b + 1]);
      const int64_t key1 = seq_lens[b] - q_len + (row1 - cu[b]);  // one past the tile's last row position
      const int64_t pos0 = key1 - (row1 - row);
      const int64_t key0 = a.window > 0 ? std::max<int64_t>(0, pos0 - a.window + 1) : 0;
      const bool decode = row1 - row == 1;
      const int64_t chunks = decode ? std::clamp<int64_t>((key1 - key0) / kMinChunk, 1, pieces) : 1;
      const int64_t groups = std::clamp<int64_t>((pieces + chunks - 1) / chunks, 1, a.num_heads);
      const int64_t group = (a.num_heads + groups - 1) / groups;
      p.decode_only = p.decode_only && decode;
      if (chunks > 1) p.splits.push_back({row, p.num_parts, chunks});
      for (int64_t c = 0, lo = key0; c < chunks; ++c) {
        const int64_t hi = chunk_bound(key0, key1, chunks, c + 1, a.block_size, lo);
        for (int64_t h = 0; h < a.num_heads; h += group)
          p.items.push_back({b, row, row1, h, std::min(h + group, a.num_heads), lo, hi, chunks > 1 ? p.num_parts + c : -1});
        lo = hi;
      }
      if (chunks > 1) p.num_parts += chunks;
    }
  }
  return p;
}

template <typename TQ, typename TC, int64_t kDim>
void run_items(const AttentionArgs& a, const Plan& p, bool parallel) {
  const int64_t n = static_cast<int64_t>(p.items.size()), dim = a.head_dim;
  std::vector<float> partial(p.num_parts * a.num_heads * (dim + 2));
  const int64_t num_merges = static_cast<int64_t>(p.splits.size()) * a.num_heads;
#pragma omp parallel if (parallel)
  {
    Scratch scratch;
    if (p.decode_only) {
      const int64_t step = omp_get_num_threads();
      for (int64_t i = omp_get_thread_num(); i < n; i += step)
        decode_item<TQ, TC, kDim>(a, p.items[i], i + step < n ? &p.items[i + step] : nullptr, scratch, partial.data());
    } else {
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < n; ++i) {
        const WorkItem& w = p.items[i];
        if (w.row1 - w.row0 == 1)
          decode_item<TQ, TC, kDim>(a, w, nullptr, scratch, partial.data());
        else
          prefill_item<TQ, TC, kDim>(a, w, scratch);
      }
    }
    if (num_merges > 0) {
#pragma omp barrier
#pragma omp for schedule(static)
      for (int64_t i = 0; i < num_merges; ++i)
        merge_split<TQ>(a, p.splits[i / a.num_heads], i % a.num_heads, partial.data());
    }
  }
}

// Common head dims (the bundled model 32, GPT-Neo/CodeGen-350M 64, CodeGen-2B 80, 128, CodeGen-6B/16B 256) get unrolled code.
template <typename TQ, typename TC>
void paged_attention_impl(const AttentionArgs& a, const Plan& p, bool parallel) {
  switch (a.head_dim) {
    case 32: return run_items<TQ, TC, 32>(a, p, parallel);
    case 64: return run_items<TQ, TC, 64>(a, p, parallel);
    case 80: return run_items<TQ, TC, 80>(a, p, parallel);
    case 128: return run_items<TQ, TC, 128>(a, p, parallel);
    case 256: return run_items<TQ, TC, 256>(a, p, parallel);
    default: return run_items<TQ, TC, 0>(a, p, parallel);
  }
}

}  // namespace

void paged_attention(const AttentionArgs& a, const std::string& dtype, const std::string& cache_dtype) {
  if (a.num_kv_heads <= 0 || a.num_heads % a.num_kv_heads != 0)
    throw std::invalid_argument("num_heads must be a multiple of num_kv_heads");
  const Plan p = plan(a);
  const bool parallel = p.work > (int64_t{1} << 15);  // below ~3 us of work, waking threads costs more
  const DType t = parse_dtype(dtype);
  if (cache_dtype == "int8") {  // int8 cache, one fp32 scale per (slot, kv head)
    if (a.k_scale == 0 || a.v_scale == 0) throw std::invalid_argument("an int8 cache needs k_scale and v_scale");
    if (t == DType::kFloat32) paged_attention_impl<float, int8_t>(a, p, parallel);
    if (t == DType::kBFloat16) paged_attention_impl<bf16, int8_t>(a, p, parallel);
    return;
  }
  const DType c = parse_dtype(cache_dtype);
  if (t == DType::kFloat32 && c == DType::kFloat32) paged_attention_impl<float, float>(a, p, parallel);
  if (t == DType::kFloat32 && c == DType::kBFloat16) paged_attention_impl<float, bf16>(a, p, parallel);
  if (t == DType::kBFloat16 && c == DType::kFloat32) paged_attention_impl<bf16, float>(a, p, parallel);
  if (t == DType::kBFloat16 && c == DType::kBFloat16) paged_attention_impl<bf16, bf16>(a, p, parallel);
}

}  // namespace codeinfer
