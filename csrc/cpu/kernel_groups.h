// The default mode by groups of rows, for the vector kernels (kernel_avx2.cpp, kernel_avx512.cpp,
// each compiling it with its own instruction set, after kernel_rows.h). Rows go in segments of up
// to kChunk tokens, and segments are gathered into groups: the selection draws of a whole group
// are one Philox batch and the 80/10/10 draws of its selected tokens another, so the vector lanes
// stay full however short the rows are (a row of 80 tokens alone needs 20 blocks and would fill 24
// lanes; with its neighbours it fills 20). A segment's draws go up to its last attended token
// (found from the end, so padding costs no draws); then the kernel's pass over the group computes
// eligibility, compares the draws, writes the ids and labels and packs the selected tokens for the
// 80/10/10 step. Same decisions as plain_row, draw for draw. Needs at most kInlineSpecials special
// ids and flat indices below 2^31 (group_fits).
#pragma once

#include <cstdint>

#include "cpu/kernel_rows.h"

namespace mlmfast::cpu::MLMFAST_CPU_CAPABILITY {

constexpr int kGroupBlocks = 256;  // selection blocks (4 tokens each) per group
constexpr int kGroupSegments = 64;
constexpr int kGroupSelected = 4 * kGroupBlocks;

inline bool group_fits(const MaskInputs& in, const MaskParams& P) {
  return P.n_special <= kInlineSpecials && in.batch * in.length < (int64_t(1) << 31);
}

struct GroupSegment {
  int32_t flat;  // flat index of the segment's first token
  uint32_t pos;  // its position relative to the row's first attended token
  uint32_t sid_lo, sid_hi;
  int32_t blk;  // first selection block in the group's arrays
  int32_t m;    // tokens
  int32_t mm;   // tokens that have draws (up to the last attended one)
};

// Per-thread working memory of a group (~50 KB, allocated once per thread). The counters and
// draws have 16 entries (blocks) of slack: whole-vector stores and loads may run past the last.
struct GroupScratch {
  alignas(64) uint32_t ctr[kGroupBlocks + 16], c2[kGroupBlocks + 16], c3[kGroupBlocks + 16];
  alignas(64) uint32_t u[4 * (kGroupBlocks + 16)];  // selection draws, in token order
  alignas(64) uint32_t sctr[kGroupSelected + 16], sc2[kGroupSelected + 16],
      sc3[kGroupSelected + 16];
  alignas(64) int32_t sdst[kGroupSelected + 16];
  alignas(64) uint32_t sx[kGroupSelected + 16], sy[kGroupSelected + 16], sz[kGroupSelected + 16],
      sw[kGroupSelected + 16];
  alignas(64) int64_t sval[kGroupSelected + 16];
  GroupSegment seg[kGroupSegments];
  int n_seg = 0, n_blk = 0;
};

// A thread's GroupScratch, on the heap (not in thread-local storage: only the threads that mask
// pay for it). No std::unique_ptr: its library code would be emitted here with this file's flags.
struct GroupScratchOwner {
  GroupScratch* p = nullptr;
  ~GroupScratchOwner() { delete p; }
};

inline GroupScratch& group_scratch() {
  thread_local GroupScratchOwner s;
  if (!s.p) s.p = new GroupScratch;
  return *s.p;
}

// The selection counters of a segment's nb blocks from block `first` of its row.
inline void segment_counters(GroupScratch& G, int nb, uint32_t first, uint32_t sid_lo,
                             uint32_t sid_hi) {
  for (int i = 0; i < nb; ++i) {
    G.ctr[G.n_blk + i] = kTagSelect | ((first + i) & kIndexMask);
    G.c2[G.n_blk + i] = sid_lo;
    G.c3[G.n_blk + i] = sid_hi;
  }
}

// After a group's pass (ns selected tokens packed): empties the group; when the 80/10/10 split
// needs no draw, finishes the selected tokens ([MASK] for all, or kept) and returns false.
template <typename TO>
MLMFAST_ALWAYS_INLINE bool group_needs_split_draws(const MaskParams& P, GroupScratch& G, int ns,
                                                   TO* out) {
  G.n_seg = 0;
  G.n_blk = 0;
  if (P.t_mask >= kOne) {
    for (int i = 0; i < ns; ++i) out[G.sdst[i]] = static_cast<TO>(P.mask_token_id);
    return false;
  }
  return ns > 0 && (P.t_mask > 0 || P.t_random > 0);
}

// Rows [b0, b1) by groups of segments, with the kernel's group pass K: K::Pass<T, TO> holds the
// batch and the constants in registers (K::init sets them), K::drawn(X, flat, m) counts the
// tokens of a segment that get draws, K::run(X, G) masks a group and empties it.
template <typename K, typename T, typename TO>
void plain_rows_grouped(const MaskInputs& in, const MaskParams& P, int64_t b0, int64_t b1, TO* out,
                        TO* lab, Problems& pr) {
  GroupScratch& G = group_scratch();
  G.n_seg = 0;
  G.n_blk = 0;
  const int64_t L = in.length;
  typename K::template Pass<T, TO> X{in, P, static_cast<const T*>(in.ids), out, lab, pr};
  K::init(X);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t base = b * L;
    const int64_t start = row_start(in, base, L);
    pass_through(X.ids + base, start, out + base, lab + base);  // left padding
    const uint64_t sid = in.sample_ids ? static_cast<uint64_t>(in.sample_ids[b]) : b;
    const int64_t n = L - start;
    for (int64_t c = 0; c < n; c += kChunk) {
      if (G.n_seg == kGroupSegments || G.n_blk + kChunk / 4 > kGroupBlocks) K::run(X, G);
      GroupSegment& sg = G.seg[G.n_seg++];
      sg.flat = static_cast<int32_t>(base + start + c);
      sg.pos = static_cast<uint32_t>(c);
      sg.sid_lo = static_cast<uint32_t>(sid);
      sg.sid_hi = static_cast<uint32_t>(sid >> 32);
      sg.blk = G.n_blk;
      sg.m = static_cast<int>(lesser<int64_t>(kChunk, n - c));
      sg.mm = K::drawn(X, sg.flat, sg.m);
      const int nb = (sg.mm + 3) >> 2;
      segment_counters(G, nb, static_cast<uint32_t>(c >> 2), sg.sid_lo, sg.sid_hi);
      G.n_blk += nb;
    }
  }
  K::run(X, G);
}

}  // namespace mlmfast::cpu::MLMFAST_CPU_CAPABILITY
