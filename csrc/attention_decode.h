// Decode path of paged_attention: one query row (a decode step, or the last row of a prefill chunk)
// over keys [key0, key1) of its sequence, for a group of heads.
//
// Block by block, head by head: the head's q stays in registers while it scores the block's keys,
// one online-softmax update per (block, head), then the block's values go into the head's output
// held in registers. While a head works on a block, its rows of the thread's next block (the item's
// next block, or the first block of the thread's next item) are prefetched: blocks scattered by the
// block manager defeat the hardware prefetcher, and at decode the cache streams from DRAM.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "attention_rows.h"

namespace codeinfer {
namespace attention {

// Element offset of key `key`'s slot in the cache (block table row `table`).
inline int64_t slot_offset(const int32_t* table, int64_t key, int64_t block_size, int64_t slot_stride) {
  return (static_cast<int64_t>(table[key / block_size]) * block_size + key % block_size) * slot_stride;
}

// Per-thread buffers: q (fp32, scaled), the running state of every (row, head) of an item, scores.
struct Scratch {
  std::vector<float> q, qt, acc, m, l, scores;
  void reset(int64_t num_state, int64_t dim) {
    q.resize(num_state * dim);
    acc.assign(num_state * dim, 0.0f);
    m.assign(num_state, -INFINITY);
    l.assign(num_state, 0.0f);
  }
};

// Runs decode item w: s.q holds its heads' q rows; leaves m, l and the unnormalised output in s.
// next: the item this thread runs after w, or null.
template <typename TC, int64_t kDim>
void decode_keys(const AttentionArgs& a, const WorkItem& w, const WorkItem* next, Scratch& s) {
  const TC* k_cache = reinterpret_cast<const TC*>(a.k_cache);
  const TC* v_cache = reinterpret_cast<const TC*>(a.v_cache);
  const int32_t* tables = reinterpret_cast<const int32_t*>(a.block_tables);
  const int32_t* table = tables + w.seq * a.max_blocks_per_seq;
  const int64_t dim = kDim > 0 ? kDim : a.head_dim, bs = a.block_size, slot_stride = a.num_kv_heads * dim;
  const int64_t heads_per_kv = a.num_heads / a.num_kv_heads, num_group = w.h1 - w.h0;
  CacheScales cs;
  cs.k_cache = k_cache, cs.v_cache = v_cache, cs.head_dim = dim;
  cs.k_scale = reinterpret_cast<const float*>(a.k_scale), cs.v_scale = reinterpret_cast<const float*>(a.v_scale);
  s.scores.resize(bs);
  float* sc = s.scores.data();
  // An item of every head reads whole blocks: head g prefetches the g-th slice of the next block,
  // in address order; an item of some heads prefetches just its heads' rows, head by head.
  const bool whole = num_group == a.num_heads;
  const int64_t block_elems = bs * slot_stride, slice = (block_elems + num_group - 1) / num_group;
  for (int64_t blk = w.key0 / bs; blk * bs < w.key1; ++blk) {
    const int64_t j0 = std::max(blk * bs, w.key0), j1 = std::min(blk * bs + bs, w.key1), n = j1 - j0;
    const int64_t base = slot_offset(table, j0, bs, slot_stride);
    // The thread's next block: slot 0 of it, or -1 when there is none.
    int64_t next_base = -1;
    if ((blk + 1) * bs < w.key1) {
      next_base = static_cast<int64_t>(table[blk + 1]) * bs * slot_stride;
    } else if (next) {
      next_base = static_cast<int64_t>(tables[next->seq * a.max_blocks_per_seq + next->key0 / bs]) * bs * slot_stride;
    }
    for (int64_t g = 0; g < num_group; ++g) {
      const int64_t kv_off = (w.h0 + g) / heads_per_kv * dim;
      if (next_base >= 0 && whole) {
        prefetch_range(k_cache, v_cache, next_base + g * slice, next_base + std::min((g + 1) * slice, block_elems));
      } else if (next_base >= 0 && (g == 0 || (w.h0 + g) % heads_per_kv == 0)) {
        prefetch_block(k_cache, v_cache, next_base, bs, slot_stride, kv_off, kv_off + dim);
      }
      const TC* k = k_cache + base + kv_off;
      const TC* v = v_cache + base + kv_off;
      const float* q = s.q.data() + g * dim;
      score_keys<TC, kDim>(q, k, slot_stride, n, dim, sc);
      // int8 cache: the block's rows of this kv head have their scales num_kv_heads apart.
      const int64_t first = cs.template index<kDim>(k, k_cache), nkv = a.num_kv_heads;
      if constexpr (std::is_same_v<TC, int8_t>)
        for (int64_t j = 0; j < n; ++j) sc[j] *= cs.k_scale[first + j * nkv];
      const float alpha = softmax_block(sc, n, s.m[g], s.l[g]);
      if constexpr (std::is_same_v<TC, int8_t>)  // fold each value row's scale into its weight
        for (int64_t j = 0; j < n; ++j) sc[j] *= cs.v_scale[first + j * nkv];
      accumulate_pv<TC, kDim>(sc, 1, v, slot_stride, n, dim, alpha, s.acc.data() + g * dim);
    }
    if constexpr (std::is_same_v<TC, int8_t>)
      if (next_base >= 0) {  // the next block's row scales: [block_size, num_kv_heads] floats
        const int64_t next_scales = next_base / dim;
        for (int64_t e = 0; e < bs * a.num_kv_heads; e += 16) {
          __builtin_prefetch(cs.k_scale + next_scales + e, 0, 2);
          __builtin_prefetch(cs.v_scale + next_scales + e, 0, 2);
        }
      }
  }
}

}  // namespace attention
}  // namespace codeinfer
