// Helpers of the portable row paths that work token by token (word_exact.cpp, exact_words.h):
// the chosen kernel's primitives as kernel_rows.h calls them, the per-token chunk scan, the checks
// of a suspect row, a chunk's word ids, and the partial selection of the smallest keys. Included
// by portable translation units only (MLMFAST_CPU_CAPABILITY portable).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/kernel.h"
#include "cpu/kernel_rows.h"

namespace mlmfast::cpu::portable {

// The chosen kernel's primitives, as kernel_rows.h calls them.
struct Table {
  const Kernel& k;
  void philox(int n, const uint32_t* c0, uint32_t c1, uint32_t c2, uint32_t c3, u32x2 key,
              uint32_t* ox, uint32_t* oy, uint32_t* oz, uint32_t* ow) const {
    k.philox(n, c0, c1, c2, c3, key, ox, oy, oz, ow);
  }
  template <typename T>
  ChunkScan scan(int m, const T* ids, const MaskInputs& in, int64_t off, const MaskParams& P,
                 uint8_t* allow) const {
    return k.scan<T>()(m, ids, in, off, P, allow);
  }
};

// The chunk scan for the per-token paths: allow[q] = eligible, special ids tested for lists of any
// length; ids outside the vocabulary noted in `pr` unless the caller has checked the row
// (`checked`). Returns 1 + the last token that may be selected (0 if none).
template <typename T>
inline int eligible_chunk(const Table& isa, int m, const T* ids, const MaskInputs& in, int64_t off,
                          const MaskParams& P, uint8_t* allow, bool checked, Problems& pr) {
  const ChunkScan scan = isa.scan(m, ids, in, off, P, allow);
  if (scan.bad && !checked) {  // noted here, reported after the parallel region
    for (int q = 0; q < m; ++q) check_token(in, P, off + q, ids[q], pr);
  }
  if (P.n_special > kInlineSpecials) {  // not tested by the scan
    for (int q = 0; q < scan.last; ++q)
      allow[q] &= static_cast<uint8_t>(!is_special(P, static_cast<int64_t>(ids[q])));
  }
  return scan.last;
}

// A POS class outside the table or a word id >= 2^32 in the row at base (every token, attended
// or not, is checked): then every token goes through check_token, which also checks the ids
// (noted here, reported after the parallel region), and the function returns true: the chunk
// scans need not check the ids again.
template <typename T>
inline bool check_row_if_suspect(const Table& isa, const MaskInputs& in, const MaskParams& P,
                                 int64_t base, int64_t L, const T* ids, Problems& pr) {
  bool suspect = false;
  if (in.pos_ids) {
    for (int64_t j = 0; j < L; ++j) suspect |= in.pos_ids[base + j] >= P.n_pos;
  }
  if (in.word_ids && in.word_kind == kInt64) {  // int32 word ids are always below 2^32
    const int64_t* w = static_cast<const int64_t*>(in.word_ids) + base;
    suspect |= isa.k.words_above_u32(w, L);
  }
  if (suspect) {
    for (int64_t j = 0; j < L; ++j) check_token(in, P, base + j, ids[j], pr);
  }
  return suspect;
}

// What a per-token row path begins with: the row passed through (its ids out, -100 labels) and
// checked if suspect; the row from its first attended token on (ids, n tokens), its flat base.
template <typename T>
struct RowBegin {
  const T* ids;
  int64_t n, base;
  bool suspect;
};
template <typename T, typename TO>
inline RowBegin<T> begin_row(const Table& isa, const MaskInputs& in, const MaskParams& P,
                             const RowView<T>& r, TO* out, TO* lab, Problems& pr) {
  const int64_t L = in.length;
  const int64_t base = r.row * L;
  pass_through(r.ids, L, out, lab);
  const bool suspect = check_row_if_suspect(isa, in, P, base, L, r.ids, pr);
  return {r.ids + r.start, L - r.start, base, suspect};
}

// wid[q] = word id of token off + q for q < m (-1 without word ids): one loop per element type.
inline void words_of_chunk(const MaskInputs& in, int64_t off, int m, int64_t* wid) {
  if (in.word_ids && in.word_kind == kInt64) {
    std::memcpy(wid, static_cast<const int64_t*>(in.word_ids) + off, sizeof(int64_t) * m);
  } else if (in.word_ids && in.word_kind == kInt32) {
    const int32_t* w = static_cast<const int32_t*>(in.word_ids) + off;
    for (int q = 0; q < m; ++q) wid[q] = w[q];
  } else {
    std::fill(wid, wid + m, int64_t(-1));
  }
}

// The word ids of tokens [off, off + m): in place for int64 word ids, else converted into wid
// (-1 for every token without word ids).
inline const int64_t* word_ids_at(const MaskInputs& in, int64_t off, int m, int64_t* wid) {
  if (in.word_ids && in.word_kind == kInt64) return static_cast<const int64_t*>(in.word_ids) + off;
  words_of_chunk(in, off, m, wid);
  return wid;
}

// The k smallest of `keys` (distinct) moved to its front, in any order. A radix step on the top
// 6 bits (the draws are uniform: ~n/64 keys per bucket) finds the bucket holding the k-th
// smallest; only that bucket is partially sorted. Branch-light, unlike nth_element over the
// whole row, whose compares of random keys mispredict half of the time.
inline void smallest_first(std::vector<uint64_t>& keys, uint64_t k, std::vector<uint64_t>& spill) {
  uint32_t hist[64] = {};
  for (const uint64_t key : keys) ++hist[key >> 58];
  uint64_t below = 0;
  int edge = 0;
  while (below + hist[edge] < k) below += hist[edge++];
  spill.clear();
  size_t w = 0;
  for (const uint64_t key : keys) {
    const int b = static_cast<int>(key >> 58);
    if (b < edge)
      keys[w++] = key;  // w <= the index being read: nothing unread is overwritten
    else if (b == edge)
      spill.push_back(key);
  }
  const uint64_t need = k - below;  // 1 .. hist[edge]
  // the need-th smallest at need - 1, the smaller ones in front of it
  std::nth_element(spill.begin(), spill.begin() + static_cast<int64_t>(need - 1), spill.end());
  std::copy(spill.begin(), spill.begin() + static_cast<int64_t>(need), keys.begin() + w);
}

}  // namespace mlmfast::cpu::portable
