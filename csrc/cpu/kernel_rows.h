// The row code every kernel shares, written once and compiled into each kernel's translation unit
// with that kernel's instruction set: the helpers of every row path, the chunk scans, and the
// row-by-row path of the default mode. The including file defines MLMFAST_CPU_CAPABILITY (portable,
// avx2 or avx512) and an Isa, the instruction set's primitives (BodyPrimitives, below, gives the
// bodies written here; kernel_table makes the Kernel of an Isa):
//   philox(n, c0, c1, c2, c3, key, ox, oy, oz, ow)   as Kernel::philox
//   scan<T>(m, ids, in, off, P, allow)               scan_chunk_body, or as fast
//   decide<T>(m, ids, allow, u, t32, t_all, smin, span, cand, rng)
//   compact(m, cand, sel)                            sel = the q < m with cand[q], in order
//   word_units, words_above                          as Kernel's
//   plain_rows<T, TO>(in, P, b0, b1, out, lab, pr)   the default mode's rows
// (the portable row paths of word_exact.cpp and span_rows.cpp take theirs from the Kernel).
// Everything here lives in a namespace of that instruction set's name, so that the copies compiled
// with different flags have different symbols (see dispatch.cpp); for the same reason it uses no
// library code that could be emitted as a weak symbol of its own (std::min, std::fill).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "cpu/kernel.h"
#include "mask_inputs.h"
#include "masking.h"

#ifndef MLMFAST_CPU_CAPABILITY
#error "define MLMFAST_CPU_CAPABILITY (the including file's instruction set) before kernel_rows.h"
#endif

#define MLMFAST_ALWAYS_INLINE __attribute__((always_inline)) inline

namespace mlmfast::cpu::MLMFAST_CPU_CAPABILITY {

template <typename A>
constexpr A lesser(A a, A b) {
  return b < a ? b : a;
}

inline void note(int64_t& first, int64_t flat) {
  if (flat < first) first = flat;
}

template <typename T>
struct RowView {
  const T* ids;
  int64_t row;    // index of the row in the batch
  int64_t start;  // first attended position: positions are counted from here
  RowKey key;
};

inline int64_t row_start(const MaskInputs& in, int64_t base, int64_t L) {
  if (!in.attention) return 0;
  for (int64_t j = 0; j < L; ++j) {
    if (load_flag(in.attention, in.attention_kind, base + j)) return j;
  }
  return L;
}

// Validation that reads the tokens: ids inside the vocabulary (attended tokens), POS classes
// inside the table, word ids below 2^32. Flat index of the first offender per kind.
template <typename T>
inline void check_token(const MaskInputs& in, const MaskParams& P, int64_t flat, T id,
                        Problems& pr) {
  const bool attended = !in.attention || load_flag(in.attention, in.attention_kind, flat);
  if (attended && (id < 0 || static_cast<int64_t>(id) >= P.vocab_size)) note(pr.bad_id, flat);
  if (in.pos_ids && in.pos_ids[flat] >= P.n_pos) note(pr.bad_pos, flat);
  if (in.word_ids) {
    const int64_t w = load_word(in.word_ids, in.word_kind, flat);
    if (w > int64_t(0xFFFFFFFF)) note(pr.bad_word, flat);
  }
}

// True when one of the n word ids is >= 2^32 (negative ids are fine). Shifts, masks and ors only,
// so that even the portable build (SSE2, which has no 64-bit compare) vectorises it.
inline bool words_above_u32(const int64_t* w, int64_t n) {
  uint64_t hi = 0;
  for (int64_t j = 0; j < n; ++j) {
    const uint64_t x = static_cast<uint64_t>(w[j]);
    hi |= (x >> 32) & ((x >> 63) - 1);  // the high half of a non-negative id
  }
  return hi != 0;
}

// Tokens that stay as they are: ids copied (widened when TO is wider), labels -100.
// Two loops, each a plain copy or fill that vectorises (the in-place form has o == ids).
template <typename T, typename TO>
inline void pass_through(const T* ids, int64_t n, TO* o, TO* l) {
  if constexpr (std::is_same_v<T, TO>) {
    if (static_cast<const void*>(o) != static_cast<const void*>(ids))
      std::memcpy(o, ids, sizeof(T) * static_cast<size_t>(n));
  } else {
    for (int64_t j = 0; j < n; ++j) o[j] = static_cast<TO>(ids[j]);
  }
  for (int64_t j = 0; j < n; ++j) l[j] = static_cast<TO>(kIgnoreIndex);
}

// The scalar form of Kernel::word_units (kernel.h), branch-free on the word structure.
MLMFAST_ALWAYS_INLINE void word_units_body(int m, const uint8_t* allow, const int64_t* wid,
                                           int32_t c, UnitRun& s, int32_t* first, int32_t* stop,
                                           uint32_t* ctr, int32_t* lane) {
  int64_t prev_w = s.prev_w, last_w = s.last_w, eligible = s.eligible;
  int32_t pa = s.prev_allow, irregular = s.irregular, nu = s.nu, ns = s.ns;
  for (int q = 0; q < m; ++q) {
    const int32_t a = allow[q] != 0;
    const int64_t w = wid[q];
    const int32_t j = c + q;
    const int32_t in_word = a & (w >= 0);
    const int32_t cont = in_word & (w == prev_w);
    stop[ns] = j;
    ns += pa & !cont;
    first[nu] = j;
    if (ctr) {
      const uint32_t wi = static_cast<uint32_t>(w), ji = static_cast<uint32_t>(j);
      ctr[nu] =
          in_word ? (kTagWord | ((wi >> 2) & kIndexMask)) : (kTagSelect | ((ji >> 2) & kIndexMask));
      lane[nu] = static_cast<int32_t>((in_word ? wi : ji) & 3u);
    }
    irregular |= in_word & !cont & (w <= last_w);
    last_w = in_word ? w : last_w;
    nu += a & !cont;
    pa = a;
    prev_w = in_word ? w : -2;
    eligible += a;
  }
  s.prev_w = prev_w;
  s.last_w = last_w;
  s.eligible = eligible;
  s.prev_allow = pa;
  s.irregular = irregular;
  s.nu = nu;
  s.ns = ns;
}

// Ends the layout's open unit at position `at` (the chunk's tokens from there on are not
// eligible, or the row ends there).
inline void close_units(UnitRun& s, int32_t at, int32_t* stop) {
  if (s.prev_allow) stop[s.ns++] = at;
  s.prev_allow = 0;
  s.prev_w = -2;
}

// ---- chunk scans: compares of int64 ids and masks only vectorise with AVX2 or wider ---------

template <typename F>
MLMFAST_ALWAYS_INLINE void and_flags(const F* f, int m, bool invert, uint8_t* allow) {
  for (int q = 0; q < m; ++q) allow[q] &= static_cast<uint8_t>((f[q] != 0) != invert);
}

MLMFAST_ALWAYS_INLINE void and_flags(const void* p, int32_t kind, int64_t off, int m, bool invert,
                                     uint8_t* allow) {
  switch (kind) {
    case kByte:
      return and_flags(static_cast<const uint8_t*>(p) + off, m, invert, allow);
    case kInt32:
      return and_flags(static_cast<const int32_t*>(p) + off, m, invert, allow);
    case kInt64:
      return and_flags(static_cast<const int64_t*>(p) + off, m, invert, allow);
    default:
      return;
  }
}

// Special ids tested by direct comparison in the vectorised scan (BERT has 5); longer lists go
// through the range test + binary search of masking.h.
constexpr int kInlineSpecials = 8;

// allow[q] = attended, not flagged special and (for short lists) not a special id; ids are
// checked where attended.
template <typename T>
MLMFAST_ALWAYS_INLINE ChunkScan scan_chunk_body(int m, const T* idb, const MaskInputs& in,
                                                int64_t off, const MaskParams& P, uint8_t* allow) {
  std::memset(allow, 1, m);
  and_flags(in.attention, in.attention_kind, off, m, false, allow);
  uint8_t bad = 0;
  const uint64_t vocab = static_cast<uint64_t>(P.vocab_size);
  for (int q = 0; q < m; ++q)
    bad |= allow[q] &
           static_cast<uint8_t>(static_cast<uint64_t>(static_cast<int64_t>(idb[q])) >= vocab);
  and_flags(in.special_mask, in.special_mask_kind, off, m, true, allow);
  if (P.n_special > 0 && P.n_special <= kInlineSpecials) {
    // One pass, a fixed number of compares per token (the list padded with repeats of its last
    // id), so the loop vectorises whatever the list length.
    T spec[kInlineSpecials];
    for (int i = 0; i < kInlineSpecials; ++i)
      spec[i] = static_cast<T>(P.special[i < P.n_special ? i : P.n_special - 1]);
    for (int q = 0; q < m; ++q) {
      const T id = idb[q];
      uint8_t ok = 1;
#pragma GCC unroll 8
      for (int i = 0; i < kInlineSpecials; ++i) ok &= static_cast<uint8_t>(id != spec[i]);
      allow[q] &= ok;
    }
  }
  int last = m;  // 1 + the last allowed token, eight flags at a time
  while (last >= 8) {
    uint64_t w;
    std::memcpy(&w, allow + last - 8, 8);
    if (w) break;
    last -= 8;
  }
  while (last > 0 && !allow[last - 1]) --last;
  return ChunkScan{bad, last};
}

// cand = allowed and drawn under the threshold; rng = cand with an id inside the specials' range.
template <typename T>
MLMFAST_ALWAYS_INLINE void decide_chunk_body(int m, const T* idb, const uint8_t* allow,
                                             const uint32_t* u, uint32_t t32, uint8_t t_all,
                                             int64_t smin, uint64_t span, uint8_t* cand,
                                             uint8_t* rng) {
  for (int q = 0; q < m; ++q) {
    const uint8_t cq = allow[q] & static_cast<uint8_t>((u[q] < t32) | t_all);
    cand[q] = cq;
    rng[q] = cq & static_cast<uint8_t>(static_cast<uint64_t>(static_cast<int64_t>(idb[q]) - smin) <=
                                       span);
  }
}

// sel[0..ns) = the q < m with cand[q], in order (the Isa's compact where it has a faster one).
MLMFAST_ALWAYS_INLINE int compact_body(int m, const uint8_t* cand, int32_t* sel) {
  int ns = 0;
  for (int q = 0; q < m; ++q) {
    sel[ns] = q;
    ns += cand[q];
  }
  return ns;
}

// ---- draws and replacements ---------------------------------------------------------------

// Rows go in chunks of kChunk tokens: the draws of a chunk are one Philox batch.
constexpr int kChunk = 256;

// Philox4x32-10 of the n counters (ctr[i], epoch, sample id) under the row's key: x..w[i].
template <typename Isa>
inline void row_philox(const Isa& isa, const RowKey& key, int n, const uint32_t* ctr, uint32_t* x,
                       uint32_t* y, uint32_t* z, uint32_t* w) {
  isa.philox(n, ctr, key.epoch, static_cast<uint32_t>(key.sample_id),
             static_cast<uint32_t>(key.sample_id >> 32), u32x2{key.seed_lo, key.seed_hi}, x, y, z,
             w);
}

// u[4 * i + k] = word k (x, y, z, w) of Philox block i, for i < n: the draws side by side in
// the order of the tokens (or words) they serve.
inline void block_order(int n, const uint32_t* x, const uint32_t* y, const uint32_t* z,
                        const uint32_t* w, uint32_t* u) {
  for (int i = 0; i < n; ++i) {
    u[4 * i] = x[i];
    u[4 * i + 1] = y[i];
    u[4 * i + 2] = z[i];
    u[4 * i + 3] = w[i];
  }
}

// The draws of the n counters in ctr (see row_philox) in block order: u[4 * i + k] = word k of
// counter i. x..w: scratch of n words each.
template <typename Isa>
inline void row_draws(const Isa& isa, const RowKey& key, int n, const uint32_t* ctr, uint32_t* x,
                      uint32_t* y, uint32_t* z, uint32_t* w, uint32_t* u) {
  row_philox(isa, key, n, ctr, x, y, z, w);
  block_order(n, x, y, z, w, u);
}

// The selection counters of a chunk's first `last` tokens (the chunk starts at position c,
// counted from the row's first attended token): one per block of 4. Returns how many.
inline int selection_counters(int64_t c, int last, uint32_t* ctr) {
  const int nb = (last + 3) >> 2;
  const uint32_t b0 = static_cast<uint32_t>(c >> 2);
  for (int i = 0; i < nb; ++i) ctr[i] = kTagSelect | ((b0 + i) & kIndexMask);
  return nb;
}

// Selected tokens of a chunk (positions sel[0..ns) relative to the chunk at c): their labels,
// and the counters of their 80/10/10 draws in ctr. Returns false when the split needs no draw
// (every selected token [MASK], written here, or every one kept). Labels first: with the
// in-place form (o == ids) the originals are still in place when they are read.
template <typename T, typename TO>
MLMFAST_ALWAYS_INLINE bool label_selected(const MaskParams& P, const T* ids, int64_t c,
                                          const int32_t* sel, int ns, TO* o, TO* l, uint32_t* ctr) {
  for (int i = 0; i < ns; ++i) l[c + sel[i]] = static_cast<TO>(ids[c + sel[i]]);
  if (P.t_mask >= kOne) {
    for (int i = 0; i < ns; ++i) o[c + sel[i]] = static_cast<TO>(P.mask_token_id);
    return false;
  }
  if (P.t_mask == 0 && P.t_random == 0) return false;
  for (int i = 0; i < ns; ++i)
    ctr[i] = kTagReplace | (static_cast<uint32_t>(c + sel[i]) & kIndexMask);
  return true;
}

// label_selected, then the 80/10/10 draws as one Philox batch and their replacements.
template <typename Isa, typename T, typename TO>
MLMFAST_ALWAYS_INLINE void replace_selected(const Isa& isa, const MaskParams& P, const RowKey& key,
                                            const T* ids, int64_t c, const int32_t* sel, int ns,
                                            TO* o, TO* l, uint32_t* ctr, uint32_t* rx, uint32_t* ry,
                                            uint32_t* rz, uint32_t* rw) {
  if (!label_selected(P, ids, c, sel, ns, o, l, ctr)) return;
  const uint64_t t_rand = P.t_mask + P.t_random;
  row_philox(isa, key, ns, ctr, rx, ry, rz, rw);
  for (int i = 0; i < ns; ++i) {
    const int64_t j = c + sel[i];
    if (hits(rx[i], P.t_mask))
      o[j] = static_cast<TO>(P.mask_token_id);
    else if (hits(rx[i], t_rand))
      o[j] = static_cast<TO>(random_token(P, ry[i]));
  }
}

// ---- the default mode, row by row -----------------------------------------------------------

// Rows without word ids or POS classes: the row goes in chunks; the selection draws of a chunk
// come from one vectorised Philox batch (and only up to its last selectable token, so padding
// costs no draws), decisions are branch-free, and only the selected tokens (~15%) draw their
// 80/10/10 numbers, again as one batch. Sets `bad` when an attended id is outside the vocabulary.
template <typename Isa, typename T, typename TO>
void plain_row(const Isa& isa, const MaskInputs& in, const MaskParams& P, const RowKey& key,
               const T* ids, int64_t off, int64_t n, TO* o, TO* l, bool& bad) {
  alignas(64) uint32_t ctr[kChunk], rx[kChunk], ry[kChunk], rz[kChunk], rw[kChunk];
  alignas(64) uint32_t u[kChunk];
  alignas(64) int32_t sel[kChunk];
  alignas(64) uint8_t allow[kChunk], cand[kChunk], rng[kChunk];
  alignas(64) T idb[kChunk];
  // Short special lists are handled by the scan; otherwise the candidates inside the specials'
  // range get the binary search. An empty range is [vocab, vocab]: no valid id falls in it.
  const bool check_range = P.n_special > kInlineSpecials;
  const int64_t smin = check_range ? P.special[0] : P.vocab_size;
  const uint64_t span = check_range ? static_cast<uint64_t>(P.special[P.n_special - 1] - smin) : 0;
  const uint32_t t32 = static_cast<uint32_t>(lesser<uint64_t>(P.t_select, 0xFFFFFFFFu));
  const uint8_t t_all = P.t_select >= kOne;
  bool any_bad = false;
  for (int64_t c = 0; c < n; c += kChunk) {
    const int m = static_cast<int>(lesser<int64_t>(kChunk, n - c));
    // The chunk's ids go to a local buffer first, so the in-place form (o == ids) aliases
    // nothing the loops read.
    std::memcpy(idb, ids + c, sizeof(T) * m);
    const ChunkScan scan = isa.template scan<T>(m, idb, in, off + c, P, allow);
    any_bad |= scan.bad != 0;
    if constexpr (std::is_same_v<T, TO>) {
      std::memcpy(o + c, idb, sizeof(T) * m);
    } else {
      for (int q = 0; q < m; ++q) o[c + q] = static_cast<TO>(idb[q]);
    }
    for (int q = 0; q < m; ++q) l[c + q] = static_cast<TO>(kIgnoreIndex);
    const int mm = scan.last;
    if (mm == 0) continue;
    row_draws(isa, key, selection_counters(c, mm, ctr), ctr, rx, ry, rz, rw, u);
    isa.template decide<T>(mm, idb, allow, u, t32, t_all, smin, span, cand, rng);
    int ns = 0;
    if (!check_range) {
      ns = isa.compact(mm, cand, sel);
    } else {  // the special-id lookup only runs for candidates inside the specials' range
      for (int q = 0; q < mm; ++q) {
        const bool special = rng[q] && is_special(P, static_cast<int64_t>(idb[q]));
        sel[ns] = q;
        ns += cand[q] & !special;
      }
    }
    if (ns) replace_selected(isa, P, key, ids, c, sel, ns, o, l, ctr, rx, ry, rz, rw);
  }
  bad |= any_bad;
}

// Rows [b0, b1) of the default mode without word ids or POS classes, one plain_row each.
template <typename Isa, typename T, typename TO>
void plain_rows_by_row(const Isa& isa, const MaskInputs& in, const MaskParams& P, int64_t b0,
                       int64_t b1, TO* out, TO* lab, Problems& pr) {
  const int64_t L = in.length;
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t base = b * L;
    const T* ids = static_cast<const T*>(in.ids) + base;
    const uint64_t sid = in.sample_ids ? static_cast<uint64_t>(in.sample_ids[b]) : b;
    const int64_t start = row_start(in, base, L);
    pass_through(ids, start, out + base, lab + base);
    bool bad = false;
    plain_row(isa, in, P, row_key(P.seed, P.epoch, sid), ids + start, base + start, L - start,
              out + base + start, lab + base + start, bad);
    if (bad) {  // noted here, reported after the parallel region
      for (int64_t j = start; j < L; ++j) check_token(in, P, base + j, ids[j], pr);
    }
  }
}

// The row primitives as this file writes them, compiled with the including file's flags. An
// instruction set's Isa derives from this, adds philox and plain_rows, and replaces what it does
// faster.
struct BodyPrimitives {
  template <typename T>
  static ChunkScan scan(int m, const T* ids, const MaskInputs& in, int64_t off, const MaskParams& P,
                        uint8_t* allow) {
    return scan_chunk_body(m, ids, in, off, P, allow);
  }
  template <typename T>
  static void decide(int m, const T* ids, const uint8_t* allow, const uint32_t* u, uint32_t t32,
                     uint8_t t_all, int64_t smin, uint64_t span, uint8_t* cand, uint8_t* rng) {
    decide_chunk_body(m, ids, allow, u, t32, t_all, smin, span, cand, rng);
  }
  static int compact(int m, const uint8_t* cand, int32_t* sel) {
    return compact_body(m, cand, sel);
  }
  static void word_units(int m, const uint8_t* allow, const int64_t* wid, int32_t c, UnitRun& s,
                         int32_t* first, int32_t* stop, uint32_t* ctr, int32_t* lane) {
    word_units_body(m, allow, wid, c, s, first, stop, ctr, lane);
  }
  static bool words_above(const int64_t* w, int64_t n) { return words_above_u32(w, n); }
};

// The Kernel table (kernel.h) of an instruction set's Isa.
template <typename Isa>
constexpr Kernel kernel_table(const char* name) {
  return {name,
          &Isa::philox,
          &Isa::template scan<int64_t>,
          &Isa::template scan<int32_t>,
          &Isa::template plain_rows<int64_t, int64_t>,
          &Isa::template plain_rows<int32_t, int32_t>,
          &Isa::template plain_rows<int32_t, int64_t>,
          &Isa::word_units,
          &Isa::words_above};
}

}  // namespace mlmfast::cpu::MLMFAST_CPU_CAPABILITY
