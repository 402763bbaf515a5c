// CPU kernels of mlmfast: rows in parallel (at::parallel_for), one pass per row, no
// intermediate tensors besides the outputs. The decision rule comes from masking.h.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <numeric>
#include <type_traits>
#include <vector>

#include "cpu/philox_batch.h"
#include "mask_tokens.h"

namespace mlmfast {
namespace {

// First problem found in a parallel region, reported after it (the lowest flat index wins so
// the message does not depend on the thread count).
struct ProblemLog {
  std::atomic<int64_t> index{INT64_MAX};
  void note(int64_t i) {
    int64_t cur = index.load(std::memory_order_relaxed);
    while (i < cur && !index.compare_exchange_weak(cur, i, std::memory_order_relaxed)) {
    }
  }
  bool any() const { return index.load() != INT64_MAX; }
};

struct Problems {
  ProblemLog bad_id, bad_pos, bad_word;
};

template <typename T>
struct RowView {
  const T* ids;
  int64_t row;    // index of the row in the batch
  int64_t start;  // first attended position: positions are counted from here
  RowKey key;
};

template <typename T>
inline bool token_eligible(const MaskInputs& in, const MaskParams& P, int64_t flat, T id) {
  if (in.attention && !load_flag(in.attention, in.attention_kind, flat)) return false;
  if (in.special_mask && load_flag(in.special_mask, in.special_mask_kind, flat)) return false;
  return !is_special(P, static_cast<int64_t>(id));
}

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
  if (attended && (id < 0 || static_cast<int64_t>(id) >= P.vocab_size)) pr.bad_id.note(flat);
  if (in.pos_ids && in.pos_ids[flat] >= P.n_pos) pr.bad_pos.note(flat);
  if (in.word_ids) {
    const int64_t w = load_word(in.word_ids, in.word_kind, flat);
    if (w > int64_t(0xFFFFFFFF)) pr.bad_word.note(flat);
  }
}

// Tokens that stay as they are: ids copied (widened when TO is wider), labels -100.
template <typename T, typename TO>
inline void pass_through(const T* ids, int64_t n, TO* o, TO* l) {
  for (int64_t j = 0; j < n; ++j) {
    o[j] = static_cast<TO>(ids[j]);
    l[j] = static_cast<TO>(kIgnoreIndex);
  }
}

// The per-chunk loops are written once and compiled twice, for the baseline ISA and for AVX2
// (picked at run time): compares of int64 ids and masks only vectorise with AVX2.
#define MLMFAST_ALWAYS_INLINE __attribute__((always_inline)) inline

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

struct ChunkScan {
  uint8_t bad;  // an attended id outside [0, vocab_size)
  int last;     // 1 + the last token that may be selected, 0 if none
};

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

#if MLMFAST_X86_DISPATCH
template <typename T>
__attribute__((target("avx2"))) ChunkScan scan_chunk_avx2(int m, const T* idb, const MaskInputs& in,
                                                          int64_t off, const MaskParams& P,
                                                          uint8_t* allow) {
  return scan_chunk_body(m, idb, in, off, P, allow);
}
template <typename T>
__attribute__((target("avx2"))) void decide_chunk_avx2(int m, const T* idb, const uint8_t* allow,
                                                       const uint32_t* u, uint32_t t32,
                                                       uint8_t t_all, int64_t smin, uint64_t span,
                                                       uint8_t* cand, uint8_t* rng) {
  decide_chunk_body(m, idb, allow, u, t32, t_all, smin, span, cand, rng);
}
// AVX-512 (with BW/VL for byte masks): int64 compares straight into mask registers.
template <typename T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) ChunkScan scan_chunk_avx512(
    int m, const T* idb, const MaskInputs& in, int64_t off, const MaskParams& P, uint8_t* allow) {
  return scan_chunk_body(m, idb, in, off, P, allow);
}
template <typename T>
__attribute__((target("avx512f,avx512bw,avx512vl"))) void decide_chunk_avx512(
    int m, const T* idb, const uint8_t* allow, const uint32_t* u, uint32_t t32, uint8_t t_all,
    int64_t smin, uint64_t span, uint8_t* cand, uint8_t* rng) {
  decide_chunk_body(m, idb, allow, u, t32, t_all, smin, span, cand, rng);
}
#endif

inline bool use_avx512bw() {
#if MLMFAST_X86_DISPATCH
  static const bool ok = philox_batch_detail::detect() >= philox_batch_detail::kAvx512 &&
                         __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
  return ok;
#else
  return false;
#endif
}

inline bool use_avx2() {
#if MLMFAST_X86_DISPATCH
  return philox_batch_detail::detect() >= philox_batch_detail::kAvx2;
#else
  return false;
#endif
}

template <typename T>
ChunkScan scan_chunk(int m, const T* idb, const MaskInputs& in, int64_t off, const MaskParams& P,
                     uint8_t* allow) {
#if MLMFAST_X86_DISPATCH
  if (use_avx512bw()) return scan_chunk_avx512(m, idb, in, off, P, allow);
  if (use_avx2()) return scan_chunk_avx2(m, idb, in, off, P, allow);
#endif
  return scan_chunk_body(m, idb, in, off, P, allow);
}

// scan_chunk for the per-token paths: allow[q] = eligible, special ids tested for lists of any
// length; ids outside the vocabulary noted in `pr` unless the caller has checked the row
// (`checked`). Returns 1 + the last token that may be selected (0 if none).
template <typename T>
int eligible_chunk(int m, const T* ids, const MaskInputs& in, int64_t off, const MaskParams& P,
                   uint8_t* allow, bool checked, Problems& pr) {
  const ChunkScan scan = scan_chunk(m, ids, in, off, P, allow);
  if (scan.bad && !checked) {  // noted here, reported after the parallel region
    for (int q = 0; q < m; ++q) check_token(in, P, off + q, ids[q], pr);
  }
  if (P.n_special > kInlineSpecials) {  // not tested by scan_chunk
    for (int q = 0; q < scan.last; ++q)
      allow[q] &= static_cast<uint8_t>(!is_special(P, static_cast<int64_t>(ids[q])));
  }
  return scan.last;
}

// sel[0..ns) = the q < m with cand[q] (and not a special id, for long special lists).
#if MLMFAST_X86_DISPATCH
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // the intrinsics' undefined placeholders
__attribute__((target("avx512f"))) inline int compact_avx512(int m, const uint8_t* cand,
                                                             int32_t* sel) {
  int ns = 0;
  int q = 0;
  const __m512i step = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (; q + 16 <= m; q += 16) {
    const __m512i c =
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(cand + q)));
    const __mmask16 k = _mm512_test_epi32_mask(c, c);
    _mm512_mask_compressstoreu_epi32(sel + ns, k, _mm512_add_epi32(step, _mm512_set1_epi32(q)));
    ns += __builtin_popcount(static_cast<unsigned>(k));
  }
  for (; q < m; ++q) {
    sel[ns] = q;
    ns += cand[q];
  }
  return ns;
}
#pragma GCC diagnostic pop
#endif

template <typename T>
int compact(int m, const T* idb, const uint8_t* cand, const uint8_t* rng, bool check_range,
            const MaskParams& P, int32_t* sel) {
  if (!check_range) {
#if MLMFAST_X86_DISPATCH
    if (philox_batch_detail::detect() >= philox_batch_detail::kAvx512)
      return compact_avx512(m, cand, sel);
#endif
    int ns = 0;
    for (int q = 0; q < m; ++q) {
      sel[ns] = q;
      ns += cand[q];
    }
    return ns;
  }
  int ns = 0;  // the special-id lookup only runs for candidates inside the specials' range
  for (int q = 0; q < m; ++q) {
    const bool special = rng[q] && is_special(P, static_cast<int64_t>(idb[q]));
    sel[ns] = q;
    ns += cand[q] & !special;
  }
  return ns;
}

template <typename T>
void decide_chunk(int m, const T* idb, const uint8_t* allow, const uint32_t* u, uint32_t t32,
                  uint8_t t_all, int64_t smin, uint64_t span, uint8_t* cand, uint8_t* rng) {
#if MLMFAST_X86_DISPATCH
  if (use_avx512bw())
    return decide_chunk_avx512(m, idb, allow, u, t32, t_all, smin, span, cand, rng);
  if (use_avx2()) return decide_chunk_avx2(m, idb, allow, u, t32, t_all, smin, span, cand, rng);
#endif
  decide_chunk_body(m, idb, allow, u, t32, t_all, smin, span, cand, rng);
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

// Philox4x32-10 of the n counters (ctr[i], epoch, sample id) under the row's key: x..w[i].
inline void row_philox(const RowKey& key, int n, const uint32_t* ctr, uint32_t* x, uint32_t* y,
                       uint32_t* z, uint32_t* w) {
  philox_batch(n, ctr, key.epoch, static_cast<uint32_t>(key.sample_id),
               static_cast<uint32_t>(key.sample_id >> 32), u32x2{key.seed_lo, key.seed_hi}, x, y, z,
               w);
}

// label_selected, then the 80/10/10 draws as one Philox batch and their replacements.
template <typename T, typename TO>
MLMFAST_ALWAYS_INLINE void replace_selected(const MaskParams& P, const RowKey& key, const T* ids,
                                            int64_t c, const int32_t* sel, int ns, TO* o, TO* l,
                                            uint32_t* ctr, uint32_t* rx, uint32_t* ry, uint32_t* rz,
                                            uint32_t* rw) {
  if (!label_selected(P, ids, c, sel, ns, o, l, ctr)) return;
  const uint64_t t_rand = P.t_mask + P.t_random;
  row_philox(key, ns, ctr, rx, ry, rz, rw);
  for (int i = 0; i < ns; ++i) {
    const int64_t j = c + sel[i];
    if (hits(rx[i], P.t_mask))
      o[j] = static_cast<TO>(P.mask_token_id);
    else if (hits(rx[i], t_rand))
      o[j] = static_cast<TO>(random_token(P, ry[i]));
  }
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
inline void row_draws(const RowKey& key, int n, const uint32_t* ctr, uint32_t* x, uint32_t* y,
                      uint32_t* z, uint32_t* w, uint32_t* u) {
  row_philox(key, n, ctr, x, y, z, w);
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

// Fast path for rows without word ids or POS classes: the row goes in chunks; the selection
// draws of a chunk come from one vectorised Philox batch (and only up to its last selectable
// token, so padding costs no draws), decisions are branch-free, and only the selected tokens
// (~15%) draw their 80/10/10 numbers, again as one batch.
constexpr int kChunk = 256;

template <typename T, typename TO>
void plain_row(const MaskInputs& in, const MaskParams& P, const RowKey& key, const T* ids,
               int64_t off, int64_t n, TO* o, TO* l, bool& bad) {
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
  const uint32_t t32 = static_cast<uint32_t>(std::min<uint64_t>(P.t_select, 0xFFFFFFFFu));
  const uint8_t t_all = P.t_select >= kOne;
  bool any_bad = false;
  for (int64_t c = 0; c < n; c += kChunk) {
    const int m = static_cast<int>(std::min<int64_t>(kChunk, n - c));
    // The chunk's ids go to a local buffer first, so the in-place form (o == ids) aliases
    // nothing the loops read.
    std::memcpy(idb, ids + c, sizeof(T) * m);
    const ChunkScan scan = scan_chunk(m, idb, in, off + c, P, allow);
    any_bad |= scan.bad != 0;
    if constexpr (std::is_same_v<T, TO>) {
      std::memcpy(o + c, idb, sizeof(T) * m);
    } else {
      for (int q = 0; q < m; ++q) o[c + q] = static_cast<TO>(idb[q]);
    }
    std::fill(l + c, l + c + m, static_cast<TO>(kIgnoreIndex));
    const int mm = scan.last;
    if (mm == 0) continue;
    row_draws(key, selection_counters(c, mm, ctr), ctr, rx, ry, rz, rw, u);
    decide_chunk(mm, idb, allow, u, t32, t_all, smin, span, cand, rng);
    const int ns = compact(mm, idb, cand, rng, check_range, P, sel);
    if (ns) replace_selected(P, key, ids, c, sel, ns, o, l, ctr, rx, ry, rz, rw);
  }
  bad |= any_bad;
}

#if MLMFAST_X86_DISPATCH
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // the intrinsics' undefined placeholders
#define MLMFAST_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

// Set flags (nonzero entries) of a per-token input at [at, at + 16), as a bit mask; only the
// `lanes` are read (masked loads: nothing past the row's end is touched).
MLMFAST_AVX512 MLMFAST_ALWAYS_INLINE __mmask16 flags16(const void* p, int32_t kind, int64_t at,
                                                       __mmask16 lanes) {
  switch (kind) {
    case kByte: {
      const __m128i v = _mm_maskz_loadu_epi8(lanes, static_cast<const uint8_t*>(p) + at);
      return _mm_test_epi8_mask(v, v);
    }
    case kInt32: {
      const __m512i v = _mm512_maskz_loadu_epi32(lanes, static_cast<const int32_t*>(p) + at);
      return _mm512_test_epi32_mask(v, v);
    }
    case kInt64: {
      const int64_t* q = static_cast<const int64_t*>(p) + at;
      const __m512i a = _mm512_maskz_loadu_epi64(static_cast<__mmask8>(lanes), q);
      const __m512i b = _mm512_maskz_loadu_epi64(static_cast<__mmask8>(lanes >> 8), q + 8);
      return static_cast<__mmask16>(_mm512_test_epi64_mask(a, a) |
                                    (static_cast<unsigned>(_mm512_test_epi64_mask(b, b)) << 8));
    }
    default:
      return 0;
  }
}

// 16 ids (the `lanes` of them) as int64 halves; T is int32 or int64.
template <typename T>
MLMFAST_AVX512 MLMFAST_ALWAYS_INLINE void load16(const T* p, __mmask16 lanes, __m512i& lo,
                                                 __m512i& hi) {
  if constexpr (sizeof(T) == 4) {
    const __m512i v = _mm512_maskz_loadu_epi32(lanes, p);
    lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v));
    hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1));
  } else {
    lo = _mm512_maskz_loadu_epi64(static_cast<__mmask8>(lanes), p);
    hi = _mm512_maskz_loadu_epi64(static_cast<__mmask8>(lanes >> 8), p + 8);
  }
}

template <typename TO>
MLMFAST_AVX512 MLMFAST_ALWAYS_INLINE void store16(TO* p, __mmask16 lanes, __m512i lo, __m512i hi) {
  if constexpr (sizeof(TO) == 4) {
    const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(lo)),
                                         _mm512_cvtepi64_epi32(hi), 1);
    _mm512_mask_storeu_epi32(p, lanes, v);
  } else {
    _mm512_mask_storeu_epi64(p, static_cast<__mmask8>(lanes), lo);
    _mm512_mask_storeu_epi64(p + 8, static_cast<__mmask8>(lanes >> 8), hi);
  }
}

// The AVX-512 path for rows without word ids or POS classes and short special lists. Rows go
// in segments of up to kChunk tokens, and segments are gathered into groups: the selection
// draws of a whole group are one Philox batch and the 80/10/10 draws of its selected tokens
// another, so the vector lanes stay full however short the rows are (a row of 80 tokens alone
// needs 20 blocks and would fill 24 lanes; with its neighbours it fills 20). A segment's draws
// go up to its last attended token (found from the end, so padding costs no draws); then one
// pass over 16 tokens at a time computes eligibility and the range check in mask registers,
// compares the draws, writes the ids (widened when TO is wider) and the labels, and packs the
// selected tokens for the 80/10/10 step. Same decisions as plain_row, draw for draw. Needs
// n_random < 2^32 and flat indices below 2^31 (the caller checks).
constexpr int kGroupBlocks = 256;  // selection blocks (4 tokens each) per group
constexpr int kGroupSegments = 64;
constexpr int kGroupSelected = 4 * kGroupBlocks;

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

// The selection counters of a segment's nb blocks from block `first` of its row (compiled
// into each kernel, so it vectorises with the kernel's instruction set).
MLMFAST_ALWAYS_INLINE void segment_counters(GroupScratch& G, int nb, uint32_t first,
                                            uint32_t sid_lo, uint32_t sid_hi) {
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

inline GroupScratch& group_scratch() {
  thread_local std::unique_ptr<GroupScratch> s;
  if (!s) s = std::make_unique<GroupScratch>();
  return *s;
}

// What a group's pass needs besides the scratch: the batch, the constants in registers.
template <typename T, typename TO>
struct GroupPass {
  const MaskInputs& in;
  const MaskParams& P;
  const T* ids;
  TO* out;
  TO* lab;
  Problems& pr;
  philox_batch_detail::Avx512Keys ks;  // one key (the seed) for every draw of the batch
  __m512i vocab, ignore, smin, span, spec[kInlineSpecials];
};

// Lanes of 16 ids (lo, hi: 8 each) that are none of the (<= kInlineSpecials) special ids.
template <typename T, typename TO>
MLMFAST_AVX512 MLMFAST_ALWAYS_INLINE __mmask16 not_special16(const GroupPass<T, TO>& X, __m512i lo,
                                                             __m512i hi) {
  __mmask16 ok = 0xFFFF;
  for (int i = 0; i < X.P.n_special; ++i)
    ok &= _mm512_kunpackb(_mm512_cmpneq_epi64_mask(hi, X.spec[i]),
                          _mm512_cmpneq_epi64_mask(lo, X.spec[i]));
  return ok;
}

// The group: its draws, one pass over its tokens, the 80/10/10 step; empties the group.
template <typename T, typename TO>
MLMFAST_AVX512 void run_group(GroupPass<T, TO>& X, GroupScratch& G) {
  namespace pb = philox_batch_detail;
  if (G.n_seg == 0) return;
  const MaskInputs& in = X.in;
  const MaskParams& P = X.P;
  pb::avx512_rows(G.n_blk, G.ctr, P.epoch, G.c2, G.c3, X.ks, G.u);
  const __m512i t32 =
      _mm512_set1_epi32(static_cast<int>(std::min<uint64_t>(P.t_select, 0xFFFFFFFFu)));
  const bool t_all = P.t_select >= kOne;
  const __m512i step = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __m512i tag = _mm512_set1_epi32(static_cast<int>(kTagReplace));
  const __m512i index_mask = _mm512_set1_epi32(static_cast<int>(kIndexMask));
  int ns = 0;
  for (int s = 0; s < G.n_seg; ++s) {
    const GroupSegment& sg = G.seg[s];
    const int ns0 = ns;
    __mmask16 any_bad = 0;
    for (int q = 0; q < sg.m; q += 16) {
      const __mmask16 lanes =
          sg.m - q >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (sg.m - q)) - 1);
      const int64_t at = sg.flat + q;
      __m512i lo, hi;
      load16(X.ids + at, lanes, lo, hi);
      store16(X.out + at, lanes, lo, hi);
      __mmask16 cand = 0;
      const bool drawn = q < sg.mm;  // with an attention mask: nothing attended beyond mm
      __mmask16 ok = lanes;
      if (drawn && in.attention) ok &= flags16(in.attention, in.attention_kind, at, lanes);
      if (drawn || !in.attention) {
        // an attended id outside [0, vocab_size) (unsigned compare: negatives too)
        any_bad |= ok & _mm512_kunpackb(_mm512_cmpge_epu64_mask(hi, X.vocab),
                                        _mm512_cmpge_epu64_mask(lo, X.vocab));
      }
      if (drawn) {  // eligible (attended, not flagged, no special id) and drawn under p
        if (in.special_mask)
          ok &= static_cast<__mmask16>(~flags16(in.special_mask, in.special_mask_kind, at, lanes));
        // ids outside [smin, smin + span] are no special id: most groups skip the compares
        const __mmask16 near =
            _mm512_kunpackb(_mm512_cmple_epu64_mask(_mm512_sub_epi64(hi, X.smin), X.span),
                            _mm512_cmple_epu64_mask(_mm512_sub_epi64(lo, X.smin), X.span));
        if (ok & near) ok &= not_special16(X, lo, hi);
        cand = ok;
        if (!t_all && ok)
          cand &= _mm512_cmplt_epu32_mask(_mm512_loadu_si512(G.u + 4 * sg.blk + q), t32);
      }
      const __mmask8 c_lo = static_cast<__mmask8>(cand), c_hi = static_cast<__mmask8>(cand >> 8);
      store16(X.lab + at, lanes, _mm512_mask_blend_epi64(c_lo, X.ignore, lo),
              _mm512_mask_blend_epi64(c_hi, X.ignore, hi));
      if (!cand) continue;
      // packed (compressed in registers, stored whole: the arrays have slack): the originals,
      // the counters of their 80/10/10 draws and their flat indices
      const int n_lo = __builtin_popcount(c_lo);
      _mm512_storeu_si512(G.sval + ns, _mm512_maskz_compress_epi64(c_lo, lo));
      _mm512_storeu_si512(G.sval + ns + n_lo, _mm512_maskz_compress_epi64(c_hi, hi));
      const __m512i pos = _mm512_add_epi32(step, _mm512_set1_epi32(static_cast<int>(sg.pos + q)));
      _mm512_storeu_si512(G.sctr + ns,
                          _mm512_maskz_compress_epi32(
                              cand, _mm512_or_si512(tag, _mm512_and_si512(pos, index_mask))));
      _mm512_storeu_si512(G.sdst + ns, _mm512_maskz_compress_epi32(
                                           cand, _mm512_add_epi32(step, _mm512_set1_epi32(at))));
      ns += n_lo + __builtin_popcount(c_hi);
    }
    if (any_bad) {  // noted here, reported after the parallel region
      for (int64_t j = sg.flat; j < sg.flat + sg.m; ++j) check_token(in, P, j, X.ids[j], X.pr);
    }
    const __m512i c2 = _mm512_set1_epi32(static_cast<int>(sg.sid_lo));
    const __m512i c3 = _mm512_set1_epi32(static_cast<int>(sg.sid_hi));
    for (int i = ns0; i < ns; i += 16) {
      _mm512_storeu_si512(G.sc2 + i, c2);
      _mm512_storeu_si512(G.sc3 + i, c3);
    }
  }
  if (!group_needs_split_draws(P, G, ns, X.out)) return;
  pb::avx512_rows(ns, G.sctr, P.epoch, G.sc2, G.sc3, X.ks, G.sx, G.sy, G.sz, G.sw);
  // the 80/10/10 decisions, the random ids (multiply-high and the walk over the excluded
  // specials) and the blends, 16 tokens at a time: random_token and replacement, lane for lane
  const uint64_t t_rand = P.t_mask + P.t_random;
  const __m512i tm = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(P.t_mask)));
  const __m512i tr =
      _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(std::min(t_rand, kOne - 1))));
  const bool all_random = t_rand >= kOne;  // every draw that is not "mask" is "random"
  const __m512i pool = _mm512_set1_epi64(P.n_random);
  const __m512i mask_id = _mm512_set1_epi64(P.mask_token_id);
  const __m512i one = _mm512_set1_epi64(1);
  for (int i = 0; i < ns; i += 16) {
    const __mmask16 lanes =
        ns - i >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (ns - i)) - 1);
    const __m512i x = _mm512_maskz_loadu_epi32(lanes, G.sx + i);
    const __m512i y = _mm512_maskz_loadu_epi32(lanes, G.sy + i);
    const __mmask16 to_mask = _mm512_mask_cmplt_epu32_mask(lanes, x, tm);
    const __mmask16 to_random = static_cast<__mmask16>(
        (all_random ? lanes : _mm512_mask_cmplt_epu32_mask(lanes, x, tr)) & ~to_mask);
    for (int h = 0; h < 2; ++h) {
      const __mmask8 m = static_cast<__mmask8>(to_mask >> (8 * h));
      const __mmask8 r = static_cast<__mmask8>(to_random >> (8 * h));
      if (!(m | r)) continue;
      const __m256i yh = h ? _mm512_extracti64x4_epi64(y, 1) : _mm512_castsi512_si256(y);
      __m512i id = _mm512_srli_epi64(_mm512_mul_epu32(_mm512_cvtepu32_epi64(yh), pool), 32);
      for (int s = 0; s < P.n_skip; ++s) {
        const __m512i sp = _mm512_set1_epi64(P.special[s]);
        id = _mm512_mask_add_epi64(id, _mm512_cmple_epi64_mask(sp, id), id, one);
      }
      __m512i v = _mm512_loadu_si512(G.sval + i + 8 * h);
      v = _mm512_mask_mov_epi64(v, r, id);
      v = _mm512_mask_mov_epi64(v, m, mask_id);
      _mm512_storeu_si512(G.sval + i + 8 * h, v);
    }
  }
  for (int i = 0; i < ns; ++i) X.out[G.sdst[i]] = static_cast<TO>(G.sval[i]);
}

// Tokens of the segment at `flat` (m of them) up to the last attended one: they get draws.
// Without an attention mask, up to the last token that is no special id and not flagged.
template <typename T, typename TO>
MLMFAST_AVX512 int drawn_tokens(const GroupPass<T, TO>& X, int64_t flat, int m) {
  const MaskInputs& in = X.in;
  for (int q = (m - 1) & ~15; q >= 0; q -= 16) {
    const __mmask16 lanes =
        m - q >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (m - q)) - 1);
    __mmask16 ok;
    if (in.attention) {
      ok = flags16(in.attention, in.attention_kind, flat + q, lanes);
    } else {
      ok = lanes;
      if (in.special_mask)
        ok &= static_cast<__mmask16>(
            ~flags16(in.special_mask, in.special_mask_kind, flat + q, lanes));
      __m512i lo, hi;
      load16(X.ids + flat + q, lanes, lo, hi);
      ok &= not_special16(X, lo, hi);
    }
    if (ok) return q + 32 - __builtin_clz(static_cast<unsigned>(ok));
  }
  return 0;
}

// The AVX-512 kernel of plain_rows_grouped.
struct Avx512Group {
  template <typename T, typename TO>
  using Pass = GroupPass<T, TO>;

  template <typename T, typename TO>
  MLMFAST_AVX512 static void init(GroupPass<T, TO>& X) {
    const MaskParams& P = X.P;
    philox_batch_detail::avx512_schedule(
        u32x2{static_cast<uint32_t>(P.seed), static_cast<uint32_t>(P.seed >> 32)}, X.ks);
    X.vocab = _mm512_set1_epi64(P.vocab_size);
    X.ignore = _mm512_set1_epi64(kIgnoreIndex);
    for (int i = 0; i < P.n_special; ++i) X.spec[i] = _mm512_set1_epi64(P.special[i]);
    X.smin = _mm512_set1_epi64(P.n_special ? P.special[0] : 0);
    X.span = _mm512_set1_epi64(P.n_special ? P.special[P.n_special - 1] - P.special[0] : -1);
  }
  template <typename T, typename TO>
  static int drawn(const GroupPass<T, TO>& X, int64_t flat, int m) {
    return drawn_tokens(X, flat, m);
  }
  template <typename T, typename TO>
  static void run(GroupPass<T, TO>& X, GroupScratch& G) {
    run_group(X, G);
  }
  MLMFAST_AVX512 static void counters(GroupScratch& G, int nb, uint32_t first, uint32_t lo,
                                      uint32_t hi) {
    segment_counters(G, nb, first, lo, hi);
  }
};

// The same group pass with AVX2 (for processors without AVX-512): 8 tokens per step, masks as
// bits (movemask), the packing of the selected tokens by permutes from a table of the 256
// (and 16, for 64-bit values) ways 8 (4) lanes can be chosen.
#define MLMFAST_AVX2 __attribute__((target("avx2,popcnt")))

struct CompressTable {
  uint32_t lanes32[256];  // for each 8-bit mask: its set lanes, in order, 3 bits per nibble
  uint32_t lanes64[16];   // for each 4-bit mask of 64-bit lanes: their 32-bit halves, in order
};

constexpr CompressTable make_compress_table() {
  CompressTable t{};
  for (uint32_t m = 0; m < 256; ++m) {
    uint32_t v = 0, k = 0;
    for (uint32_t j = 0; j < 8; ++j) {
      if (m >> j & 1u) v |= j << (4 * k++);
    }
    t.lanes32[m] = v;
  }
  for (uint32_t m = 0; m < 16; ++m) {
    uint32_t v = 0, k = 0;
    for (uint32_t j = 0; j < 4; ++j) {
      if (m >> j & 1u) {
        v |= (2 * j) << (4 * k++);
        v |= (2 * j + 1) << (4 * k++);
      }
    }
    t.lanes64[m] = v;
  }
  return t;
}
constexpr CompressTable kCompress = make_compress_table();

// Permutation that moves the chosen lanes to the front (the rest of the vector: don't care).
MLMFAST_AVX2 MLMFAST_ALWAYS_INLINE __m256i compress_index(uint32_t packed) {
  return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(packed)),
                                            _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
                          _mm256_set1_epi32(7));
}

// Bits of four 64-bit lanes / eight 32-bit lanes (sign bits of compare results).
MLMFAST_AVX2 MLMFAST_ALWAYS_INLINE unsigned bits64(__m256i v) {
  return static_cast<unsigned>(_mm256_movemask_pd(_mm256_castsi256_pd(v)));
}
MLMFAST_AVX2 MLMFAST_ALWAYS_INLINE unsigned bits32(__m256i v) {
  return static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(v)));
}
// Lane masks from bits: four 64-bit lanes (bits 0-3) / eight 32-bit lanes.
MLMFAST_AVX2 MLMFAST_ALWAYS_INLINE __m256i lanes64(unsigned bits) {
  const __m256i b = _mm256_setr_epi64x(1, 2, 4, 8);
  return _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_set1_epi64x(bits), b), b);
}
MLMFAST_AVX2 MLMFAST_ALWAYS_INLINE __m256i lanes32(unsigned bits) {
  const __m256i b = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), b), b);
}

// Set flags of a per-token input at [at, at + n), n <= 8, as bits.
MLMFAST_AVX2 MLMFAST_ALWAYS_INLINE unsigned flags8(const void* p, int32_t kind, int64_t at, int n) {
  if (n < 8) {  // a segment's last few tokens: nothing past them is read
    unsigned b = 0;
    for (int k = 0; k < n; ++k) b |= static_cast<unsigned>(load_flag(p, kind, at + k)) << k;
    return b;
  }
  const __m256i zero = _mm256_setzero_si256();
  switch (kind) {
    case kByte: {
      uint64_t w;
      std::memcpy(&w, static_cast<const uint8_t*>(p) + at, 8);
      const __m128i v = _mm_cvtsi64_si128(static_cast<long long>(w));
      return ~static_cast<unsigned>(_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_setzero_si128()))) &
             0xFFu;
    }
    case kInt32: {
      const __m256i v =
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(static_cast<const int32_t*>(p) + at));
      return ~bits32(_mm256_cmpeq_epi32(v, zero)) & 0xFFu;
    }
    case kInt64: {
      const __m256i* q = reinterpret_cast<const __m256i*>(static_cast<const int64_t*>(p) + at);
      const unsigned z = bits64(_mm256_cmpeq_epi64(_mm256_loadu_si256(q), zero)) |
                         bits64(_mm256_cmpeq_epi64(_mm256_loadu_si256(q + 1), zero)) << 4;
      return ~z & 0xFFu;
    }
    default:
      return 0;
  }
}

// Eight ids (the first n, n <= 8: masked loads, nothing past them read) as int64 halves, and
// for int32 ids the raw vector too.
template <typename T>
MLMFAST_AVX2 MLMFAST_ALWAYS_INLINE void load8(const T* p, int n, __m256i& lo, __m256i& hi,
                                              __m256i& raw) {
  if constexpr (sizeof(T) == 4) {
    const __m256i* q = reinterpret_cast<const __m256i*>(p);
    raw = n >= 8 ? _mm256_loadu_si256(q)
                 : _mm256_maskload_epi32(
                       reinterpret_cast<const int*>(p),
                       _mm256_cmpgt_epi32(_mm256_set1_epi32(n),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
    lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(raw));
    hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(raw, 1));
  } else {
    const long long* q = reinterpret_cast<const long long*>(p);
    if (n >= 8) {
      lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q));
      hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + 4));
    } else {
      const __m256i nn = _mm256_set1_epi64x(n);
      lo = _mm256_maskload_epi64(q, _mm256_cmpgt_epi64(nn, _mm256_setr_epi64x(0, 1, 2, 3)));
      hi = _mm256_maskload_epi64(q + 4, _mm256_cmpgt_epi64(nn, _mm256_setr_epi64x(4, 5, 6, 7)));
    }
    raw = lo;
  }
}

// Eight values to p (the first n): int64 halves, or for 32-bit outputs the raw 32-bit vector.
template <typename TO>
MLMFAST_AVX2 MLMFAST_ALWAYS_INLINE void store8(TO* p, int n, __m256i lo, __m256i hi, __m256i raw) {
  if constexpr (sizeof(TO) == 4) {
    if (n >= 8)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), raw);
    else
      _mm256_maskstore_epi32(
          reinterpret_cast<int*>(p),
          _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)), raw);
  } else {
    long long* q = reinterpret_cast<long long*>(p);
    if (n >= 8) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), lo);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + 4), hi);
    } else {
      const __m256i nn = _mm256_set1_epi64x(n);
      _mm256_maskstore_epi64(q, _mm256_cmpgt_epi64(nn, _mm256_setr_epi64x(0, 1, 2, 3)), lo);
      _mm256_maskstore_epi64(q + 4, _mm256_cmpgt_epi64(nn, _mm256_setr_epi64x(4, 5, 6, 7)), hi);
    }
  }
}

template <typename T, typename TO>
struct GroupPass2 {
  const MaskInputs& in;
  const MaskParams& P;
  const T* ids;
  TO* out;
  TO* lab;
  Problems& pr;
  philox_batch_detail::Avx2Keys ks;
  // vocab_size, the specials' range start, its span with the sign bit flipped (unsigned
  // compares through signed ones), the special ids
  __m256i vocab, smin, span_s, spec[kInlineSpecials];
};

MLMFAST_AVX2 MLMFAST_ALWAYS_INLINE __m256i flip64(__m256i v) {
  return _mm256_xor_si256(v, _mm256_set1_epi64x(INT64_MIN));
}
MLMFAST_AVX2 MLMFAST_ALWAYS_INLINE __m256i flip32(__m256i v) {
  return _mm256_xor_si256(v, _mm256_set1_epi32(INT32_MIN));
}

// Bits of the 8 ids (lo, hi) that are one of the (<= kInlineSpecials) special ids.
template <typename T, typename TO>
MLMFAST_AVX2 MLMFAST_ALWAYS_INLINE unsigned special8(const GroupPass2<T, TO>& X, __m256i lo,
                                                     __m256i hi) {
  __m256i a = _mm256_setzero_si256(), b = _mm256_setzero_si256();
  for (int i = 0; i < X.P.n_special; ++i) {
    a = _mm256_or_si256(a, _mm256_cmpeq_epi64(lo, X.spec[i]));
    b = _mm256_or_si256(b, _mm256_cmpeq_epi64(hi, X.spec[i]));
  }
  return bits64(a) | bits64(b) << 4;
}

// Bits of the ids inside [smin, smin + span]: the only ones that can be special.
template <typename T, typename TO>
MLMFAST_AVX2 MLMFAST_ALWAYS_INLINE unsigned near8(const GroupPass2<T, TO>& X, __m256i lo,
                                                  __m256i hi) {
  const __m256i a = _mm256_cmpgt_epi64(flip64(_mm256_sub_epi64(lo, X.smin)), X.span_s);
  const __m256i b = _mm256_cmpgt_epi64(flip64(_mm256_sub_epi64(hi, X.smin)), X.span_s);
  return ~(bits64(a) | bits64(b) << 4) & 0xFFu;
}

// run_group of the AVX-512 kernel, 8 tokens at a time: same decisions, same outputs.
template <typename T, typename TO>
MLMFAST_AVX2 void run_group_avx2(GroupPass2<T, TO>& X, GroupScratch& G) {
  namespace pb = philox_batch_detail;
  if (G.n_seg == 0) return;
  const MaskInputs& in = X.in;
  const MaskParams& P = X.P;
  pb::avx2_rows(G.n_blk, G.ctr, P.epoch, G.c2, G.c3, X.ks, G.u);
  const __m256i t32 = _mm256_set1_epi32(
      static_cast<int>(std::min<uint64_t>(P.t_select, 0xFFFFFFFFu) ^ 0x80000000u));
  const bool t_all = P.t_select >= kOne;
  const __m256i step = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i tag = _mm256_set1_epi32(static_cast<int>(kTagReplace));
  const __m256i index_mask = _mm256_set1_epi32(static_cast<int>(kIndexMask));
  const __m256i ignore64 = _mm256_set1_epi64x(kIgnoreIndex);
  const __m256i ignore32 = _mm256_set1_epi32(static_cast<int>(kIgnoreIndex));
  const __m256i minus1 = _mm256_set1_epi64x(-1);
  int ns = 0;
  for (int s = 0; s < G.n_seg; ++s) {
    const GroupSegment& sg = G.seg[s];
    const int ns0 = ns;
    unsigned any_bad = 0;
    for (int q = 0; q < sg.m; q += 8) {
      const int n = std::min(8, sg.m - q);
      const unsigned lanes = (1u << n) - 1;
      const int64_t at = sg.flat + q;
      __m256i lo, hi, raw;
      load8(X.ids + at, n, lo, hi, raw);
      store8(X.out + at, n, lo, hi, raw);
      unsigned cand = 0;
      const bool drawn = q < sg.mm;  // with an attention mask: nothing attended beyond mm
      unsigned ok = lanes;
      if (drawn && in.attention) ok &= flags8(in.attention, in.attention_kind, at, n);
      if (drawn || !in.attention) {  // an attended id outside [0, vocab_size)
        const __m256i in_lo =
            _mm256_and_si256(_mm256_cmpgt_epi64(X.vocab, lo), _mm256_cmpgt_epi64(lo, minus1));
        const __m256i in_hi =
            _mm256_and_si256(_mm256_cmpgt_epi64(X.vocab, hi), _mm256_cmpgt_epi64(hi, minus1));
        any_bad |= ok & ~(bits64(in_lo) | bits64(in_hi) << 4);
      }
      if (drawn) {  // eligible (attended, not flagged, no special id) and drawn under p
        if (in.special_mask) ok &= ~flags8(in.special_mask, in.special_mask_kind, at, n);
        if (P.n_special && (ok & near8(X, lo, hi))) ok &= ~special8(X, lo, hi);
        cand = ok;
        if (!t_all && ok) {
          const __m256i u =
              _mm256_loadu_si256(reinterpret_cast<const __m256i*>(G.u + 4 * sg.blk + q));
          cand &= bits32(_mm256_cmpgt_epi32(t32, flip32(u)));
        }
      }
      if constexpr (sizeof(TO) == 4) {
        store8(X.lab + at, n, lo, hi, _mm256_blendv_epi8(ignore32, raw, lanes32(cand)));
      } else {
        store8(X.lab + at, n, _mm256_blendv_epi8(ignore64, lo, lanes64(cand & 0xFu)),
               _mm256_blendv_epi8(ignore64, hi, lanes64(cand >> 4)), raw);
      }
      if (!cand) continue;
      // packed (permuted to the front, stored whole: the arrays have slack): the originals,
      // the counters of their 80/10/10 draws and their flat indices
      const int n_lo = __builtin_popcount(cand & 0xFu);
      _mm256_storeu_si256(
          reinterpret_cast<__m256i*>(G.sval + ns),
          _mm256_permutevar8x32_epi32(lo, compress_index(kCompress.lanes64[cand & 0xFu])));
      _mm256_storeu_si256(
          reinterpret_cast<__m256i*>(G.sval + ns + n_lo),
          _mm256_permutevar8x32_epi32(hi, compress_index(kCompress.lanes64[cand >> 4])));
      const __m256i idx = compress_index(kCompress.lanes32[cand]);
      const __m256i pos = _mm256_add_epi32(step, _mm256_set1_epi32(static_cast<int>(sg.pos + q)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(G.sctr + ns),
                          _mm256_permutevar8x32_epi32(
                              _mm256_or_si256(tag, _mm256_and_si256(pos, index_mask)), idx));
      _mm256_storeu_si256(
          reinterpret_cast<__m256i*>(G.sdst + ns),
          _mm256_permutevar8x32_epi32(
              _mm256_add_epi32(step, _mm256_set1_epi32(static_cast<int>(at))), idx));
      ns += __builtin_popcount(cand);
    }
    if (any_bad) {  // noted here, reported after the parallel region
      for (int64_t j = sg.flat; j < sg.flat + sg.m; ++j) check_token(in, P, j, X.ids[j], X.pr);
    }
    const __m256i c2 = _mm256_set1_epi32(static_cast<int>(sg.sid_lo));
    const __m256i c3 = _mm256_set1_epi32(static_cast<int>(sg.sid_hi));
    for (int i = ns0; i < ns; i += 8) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(G.sc2 + i), c2);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(G.sc3 + i), c3);
    }
  }
  if (!group_needs_split_draws(P, G, ns, X.out)) return;
  pb::avx2_rows(ns, G.sctr, P.epoch, G.sc2, G.sc3, X.ks, G.sx, G.sy, G.sz, G.sw);
  // the 80/10/10 decisions, the random ids and the blends, as in run_group
  const uint64_t t_rand = P.t_mask + P.t_random;
  const __m256i tm =
      _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(P.t_mask) ^ 0x80000000u));
  const __m256i tr = _mm256_set1_epi32(
      static_cast<int>(static_cast<uint32_t>(std::min(t_rand, kOne - 1)) ^ 0x80000000u));
  const bool all_random = t_rand >= kOne;  // every draw that is not "mask" is "random"
  const __m256i pool = _mm256_set1_epi64x(P.n_random);
  const __m256i mask_id = _mm256_set1_epi64x(P.mask_token_id);
  const __m256i one = _mm256_set1_epi64x(1);
  for (int i = 0; i < ns; i += 8) {
    const __m256i x = flip32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(G.sx + i)));
    const __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(G.sy + i));
    const unsigned to_mask = bits32(_mm256_cmpgt_epi32(tm, x));
    const unsigned to_random = (all_random ? 0xFFu : bits32(_mm256_cmpgt_epi32(tr, x))) & ~to_mask;
    for (int h = 0; h < 2; ++h) {
      const unsigned m = to_mask >> (4 * h) & 0xFu, r = to_random >> (4 * h) & 0xFu;
      if (!(m | r)) continue;
      const __m128i yh = h ? _mm256_extracti128_si256(y, 1) : _mm256_castsi256_si128(y);
      __m256i id = _mm256_srli_epi64(_mm256_mul_epu32(_mm256_cvtepu32_epi64(yh), pool), 32);
      for (int s = 0; s < P.n_skip; ++s) {  // +1 where special[s] <= id
        const __m256i sp = _mm256_set1_epi64x(P.special[s]);
        id = _mm256_add_epi64(id, _mm256_andnot_si256(_mm256_cmpgt_epi64(sp, id), one));
      }
      __m256i* at = reinterpret_cast<__m256i*>(G.sval + i + 4 * h);
      __m256i v = _mm256_loadu_si256(at);
      v = _mm256_blendv_epi8(v, id, lanes64(r));
      v = _mm256_blendv_epi8(v, mask_id, lanes64(m));
      _mm256_storeu_si256(at, v);
    }
  }
  for (int i = 0; i < ns; ++i) X.out[G.sdst[i]] = static_cast<TO>(G.sval[i]);
}

// drawn_tokens of the AVX-512 kernel, 8 tokens at a time.
template <typename T, typename TO>
MLMFAST_AVX2 int drawn_tokens_avx2(const GroupPass2<T, TO>& X, int64_t flat, int m) {
  const MaskInputs& in = X.in;
  for (int q = (m - 1) & ~7; q >= 0; q -= 8) {
    const int n = std::min(8, m - q);
    unsigned ok;
    if (in.attention) {
      ok = flags8(in.attention, in.attention_kind, flat + q, n);
    } else {
      ok = (1u << n) - 1;
      if (in.special_mask) ok &= ~flags8(in.special_mask, in.special_mask_kind, flat + q, n);
      __m256i lo, hi, raw;
      load8(X.ids + flat + q, n, lo, hi, raw);
      ok &= ~special8(X, lo, hi);
    }
    if (ok) return q + 32 - __builtin_clz(ok);
  }
  return 0;
}

// The AVX2 kernel of plain_rows_grouped.
struct Avx2Group {
  template <typename T, typename TO>
  using Pass = GroupPass2<T, TO>;

  template <typename T, typename TO>
  MLMFAST_AVX2 static void init(GroupPass2<T, TO>& X) {
    const MaskParams& P = X.P;
    philox_batch_detail::avx2_schedule(
        u32x2{static_cast<uint32_t>(P.seed), static_cast<uint32_t>(P.seed >> 32)}, X.ks);
    X.vocab = _mm256_set1_epi64x(P.vocab_size);
    for (int i = 0; i < P.n_special; ++i) X.spec[i] = _mm256_set1_epi64x(P.special[i]);
    X.smin = _mm256_set1_epi64x(P.n_special ? P.special[0] : 0);
    X.span_s =
        flip64(_mm256_set1_epi64x(P.n_special ? P.special[P.n_special - 1] - P.special[0] : -1));
  }
  template <typename T, typename TO>
  static int drawn(const GroupPass2<T, TO>& X, int64_t flat, int m) {
    return drawn_tokens_avx2(X, flat, m);
  }
  template <typename T, typename TO>
  static void run(GroupPass2<T, TO>& X, GroupScratch& G) {
    run_group_avx2(X, G);
  }
  MLMFAST_AVX2 static void counters(GroupScratch& G, int nb, uint32_t first, uint32_t lo,
                                    uint32_t hi) {
    segment_counters(G, nb, first, lo, hi);
  }
};

// Rows [b0, b1) of the batch (bernoulli mode, no word ids or POS classes), by groups of
// segments (see GroupSegment) with the kernel K (Avx512Group or Avx2Group).
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
      sg.m = static_cast<int>(std::min<int64_t>(kChunk, n - c));
      sg.mm = K::drawn(X, sg.flat, sg.m);
      const int nb = (sg.mm + 3) >> 2;
      K::counters(G, nb, static_cast<uint32_t>(c >> 2), sg.sid_lo, sg.sid_hi);
      G.n_blk += nb;
    }
  }
  K::run(X, G);
}
#pragma GCC diagnostic pop
#endif

// A POS class outside the table or a word id >= 2^32 in the row at base (every token, attended
// or not, is checked): then every token goes through check_token, which also checks the ids
// (noted here, reported after the parallel region), and the function returns true: the chunk
// scans need not check the ids again.
template <typename T>
bool check_row_if_suspect(const MaskInputs& in, const MaskParams& P, int64_t base, int64_t L,
                          const T* ids, Problems& pr) {
  bool suspect = false;
  if (in.pos_ids) {
    for (int64_t j = 0; j < L; ++j) suspect |= in.pos_ids[base + j] >= P.n_pos;
  }
  if (in.word_ids && in.word_kind == kInt64) {  // int32 word ids are always below 2^32
    const int64_t* w = static_cast<const int64_t*>(in.word_ids) + base;
    for (int64_t j = 0; j < L; ++j) suspect |= w[j] > int64_t(0xFFFFFFFF);
  }
  if (suspect) {
    for (int64_t j = 0; j < L; ++j) check_token(in, P, base + j, ids[j], pr);
  }
  return suspect;
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

// Bernoulli mode with word ids and/or POS classes: every eligible token (or word) independently
// with its threshold. Eligibility by the vectorised chunk scan; per chunk, the draws of its words
// (one Philox block per 4 word ids, shared by their tokens) and of its tokens outside words as
// batches, and the 80/10/10 draws of its selected tokens as another. T: the ids' type; TO: the
// outputs' (T, or int64 for int32 ids).
template <typename T, typename TO>
void bernoulli_row(const MaskInputs& in, const MaskParams& P, const RowView<T>& r, TO* out, TO* lab,
                   Problems& pr) {
  alignas(64) uint32_t ctr[kChunk], rx[kChunk], ry[kChunk], rz[kChunk], rw[kChunk];
  alignas(64) uint32_t wblk[kChunk], wu[4 * kChunk], tu[kChunk + 4];
  alignas(64) uint8_t allow[kChunk];
  alignas(64) int32_t sel[kChunk], src[kChunk];
  alignas(64) int64_t wid[kChunk];
  const int64_t L = in.length;
  const int64_t base = r.row * L;
  pass_through(r.ids, L, out, lab);
  const bool suspect = check_row_if_suspect(in, P, base, L, r.ids, pr);
  const T* ids = r.ids + r.start;
  const int64_t n = L - r.start;
  for (int64_t c = 0; c < n; c += kChunk) {
    const int m = static_cast<int>(std::min<int64_t>(kChunk, n - c));
    const int64_t off = base + r.start + c;
    const int last = eligible_chunk(m, ids + c, in, off, P, allow, suspect, pr);
    // Where each eligible token's draw comes from: lane w & 3 of the word block w >> 2 (the
    // chunk's distinct consecutive blocks, one Philox batch), or for a token outside any word
    // lane q & 3 of the chunk's selection block q >> 2 (another batch, only when needed).
    int nw = 0;
    bool token_draws = false;
    words_of_chunk(in, off, last, wid);
    for (int q = 0; q < last; ++q) {
      if (!allow[q]) continue;
      const int64_t w = wid[q];
      if (w < 0) {
        src[q] = -1;
        token_draws = true;
        continue;
      }
      const uint32_t block = static_cast<uint32_t>(w) >> 2;
      if (nw == 0 || wblk[nw - 1] != block) wblk[nw++] = block;
      src[q] = (nw - 1) << 2 | static_cast<int32_t>(w & 3);
    }
    if (nw) {
      for (int i = 0; i < nw; ++i) ctr[i] = kTagWord | (wblk[i] & kIndexMask);
      row_draws(r.key, nw, ctr, rx, ry, rz, rw, wu);
    }
    if (token_draws) row_draws(r.key, selection_counters(c, last, ctr), ctr, rx, ry, rz, rw, tu);
    int ns = 0;
    for (int q = 0; q < last; ++q) {
      if (!allow[q]) continue;
      const uint64_t t = token_threshold(P, in.pos_ids ? in.pos_ids[off + q] : 0);
      const uint32_t u = src[q] >= 0 ? wu[src[q]] : tu[q];
      sel[ns] = q;
      ns += hits(u, t);
    }
    if (ns)
      replace_selected(P, r.key, ids, c, sel, ns, out + r.start, lab + r.start, ctr, rx, ry, rz,
                       rw);
  }
}

template <typename T, typename TO>
void bernoulli_row_plain(const MaskInputs& in, const MaskParams& P, const RowView<T>& r, TO* out,
                         TO* lab, Problems& pr) {
  const int64_t L = in.length;
  const int64_t base = r.row * L;
  pass_through(r.ids, r.start, out, lab);
  bool bad = false;
  plain_row(in, P, r.key, r.ids + r.start, base + r.start, L - r.start, out + r.start,
            lab + r.start, bad);
  if (bad) {
    for (int64_t j = r.start; j < L; ++j) check_token(in, P, base + j, r.ids[j], pr);
  }
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

struct Unit {
  uint32_t u;
  uint64_t t;
  int64_t first;  // first position (tie-break and identity)
  int64_t size;   // eligible tokens in the unit
};

// Consecutive eligible tokens of one word: positions [start, start + size).
struct WordRun {
  int64_t w, start, size;
};

// Reused working memory of exact_row (one per thread).
struct ExactScratch {
  std::vector<Unit> units;
  std::vector<int64_t> unit_of;  // by position (relative to the first attended token)
  std::vector<WordRun> runs;
  std::vector<uint32_t> blocks;  // distinct word blocks (word id >> 2)
  std::vector<uint32_t> word_u;  // their draws, in block order
  std::vector<uint8_t> taken;
  std::vector<int32_t> order;
  std::vector<uint64_t> keys, spill;
};

// Exact mode: the per-row budget and the ranking rule of masking.h. Eligibility by the chunk
// scan; the selection draws of a chunk's tokens outside words and the draws of the row's words
// as Philox batches; units ranked by one sort (of (draw, position) keys when every unit has the
// same threshold); the selected tokens' 80/10/10 draws as batches.
template <typename T, typename TO>
void exact_row(const MaskInputs& in, const MaskParams& P, const RowView<T>& r, TO* out, TO* lab,
               Problems& pr, ExactScratch& S) {
  alignas(64) uint32_t ctr[kChunk], rx[kChunk], ry[kChunk], rz[kChunk], rw[kChunk];
  alignas(64) uint32_t tu[kChunk + 4];
  alignas(64) uint8_t allow[kChunk];
  alignas(64) int32_t sel[kChunk];
  alignas(64) int64_t wid[kChunk];
  const int64_t L = in.length;
  const int64_t base = r.row * L;
  pass_through(r.ids, L, out, lab);
  const bool suspect = check_row_if_suspect(in, P, base, L, r.ids, pr);
  const T* ids = r.ids + r.start;
  const int64_t n = L - r.start;
  S.units.clear();
  S.runs.clear();
  S.unit_of.assign(n, -1);
  uint64_t tsum = 0;
  bool any_positive = false;
  for (int64_t c = 0; c < n; c += kChunk) {  // eligibility, thresholds, token units, word runs
    const int m = static_cast<int>(std::min<int64_t>(kChunk, n - c));
    const int64_t off = base + r.start + c;
    const int last = eligible_chunk(m, ids + c, in, off, P, allow, suspect, pr);
    words_of_chunk(in, off, last, wid);
    const size_t first_token_unit = S.units.size();
    for (int q = 0; q < last; ++q) {
      if (!allow[q]) continue;
      const uint64_t t = token_threshold(P, in.pos_ids ? in.pos_ids[off + q] : 0);
      tsum += t;
      any_positive |= t > 0;
      const int64_t j = c + q;
      if (wid[q] >= 0) {
        WordRun* run = S.runs.empty() ? nullptr : &S.runs.back();
        if (run && run->w == wid[q] && run->start + run->size == j)
          ++run->size;
        else
          S.runs.push_back(WordRun{wid[q], j, 1});
      } else {
        S.unit_of[j] = static_cast<int64_t>(S.units.size());
        S.units.push_back(Unit{0, t, j, 1});
      }
    }
    if (S.units.size() > first_token_unit) {  // the chunk's selection draws
      row_draws(r.key, selection_counters(c, last, ctr), ctr, rx, ry, rz, rw, tu);
      for (size_t i = first_token_unit; i < S.units.size(); ++i)
        S.units[i].u = tu[S.units[i].first - c];
    }
  }
  if (!S.runs.empty()) {
    // A word's tokens, wherever they are, form one unit: its runs grouped by word id (in
    // position order within a word), its threshold its first token's.
    if (!std::is_sorted(S.runs.begin(), S.runs.end(),
                        [](const WordRun& a, const WordRun& b) { return a.w < b.w; }))
      std::stable_sort(S.runs.begin(), S.runs.end(),
                       [](const WordRun& a, const WordRun& b) { return a.w < b.w; });
    const size_t first_word_unit = S.units.size();
    S.blocks.clear();
    for (size_t i = 0; i < S.runs.size();) {
      const WordRun& head = S.runs[i];
      const int64_t idx = static_cast<int64_t>(S.units.size());
      int64_t size = 0;
      size_t e = i;
      for (; e < S.runs.size() && S.runs[e].w == head.w; ++e) {
        for (int64_t j = S.runs[e].start; j < S.runs[e].start + S.runs[e].size; ++j)
          S.unit_of[j] = idx;
        size += S.runs[e].size;
      }
      const uint64_t t =
          token_threshold(P, in.pos_ids ? in.pos_ids[base + r.start + head.start] : 0);
      const uint32_t block = static_cast<uint32_t>(head.w) >> 2;
      if (S.blocks.empty() || S.blocks.back() != block) S.blocks.push_back(block);
      // u: for now where the word's draw will be in word_u (its block's, lane w & 3)
      S.units.push_back(Unit{
          static_cast<uint32_t>((S.blocks.size() - 1) << 2 | (static_cast<uint32_t>(head.w) & 3u)),
          t, head.start, size});
      i = e;
    }
    // the words' draws in block order, kChunk blocks per Philox batch
    S.word_u.resize(4 * S.blocks.size());
    for (size_t b0 = 0; b0 < S.blocks.size(); b0 += kChunk) {
      const int nb = static_cast<int>(std::min<size_t>(kChunk, S.blocks.size() - b0));
      for (int i = 0; i < nb; ++i) ctr[i] = kTagWord | (S.blocks[b0 + i] & kIndexMask);
      row_draws(r.key, nb, ctr, rx, ry, rz, rw, S.word_u.data() + 4 * b0);
    }
    for (size_t i = first_word_unit; i < S.units.size(); ++i) S.units[i].u = S.word_u[S.units[i].u];
  }
  const uint64_t budget = exact_budget(tsum, any_positive);
  std::vector<Unit>& units = S.units;
  std::vector<int32_t>& order = S.order;
  S.taken.assign(units.size(), 0);
  auto rankable = [&] {  // the units that can be selected (t > 0), in unit order
    order.clear();
    for (size_t i = 0; i < units.size(); ++i) {
      if (units[i].t > 0) order.push_back(static_cast<int32_t>(i));
    }
  };
  rankable();
  const bool single =
      std::all_of(order.begin(), order.end(), [&](int32_t i) { return units[i].size == 1; });
  auto before = [&](int32_t a, int32_t b) {
    const Unit &A = units[a], &B = units[b];
    return ranks_before(A.u, A.t, A.first, B.u, B.t, B.first);
  };
  // The rank order as far as the walk needs it: the kk best for single-token units, else the
  // best M sorted (every unit taken spends at least 1 of the budget, so the walk rarely gets
  // past kk + 8 units: only when words too large to fit are skipped), the rest sorted only if
  // the walk gets there.
  const size_t kk = std::min<size_t>(budget, order.size());
  const size_t M = single ? kk : std::min(order.size(), kk + 8);
  if (P.n_pos == 0 && !order.empty()) {
    // One threshold for every unit: rank by (draw, first position) as one integer.
    S.keys.resize(order.size());
    for (size_t i = 0; i < order.size(); ++i)
      S.keys[i] = static_cast<uint64_t>(units[order[i]].u) << 32 |
                  static_cast<uint64_t>(units[order[i]].first);
    if (M > 0 && M < S.keys.size()) smallest_first(S.keys, M, S.spill);
    if (!single) std::sort(S.keys.begin(), S.keys.begin() + static_cast<int64_t>(M));
    for (size_t i = 0; i < M; ++i)  // the walk reads no further (past M it rebuilds the order)
      order[i] = static_cast<int32_t>(S.unit_of[static_cast<int64_t>(S.keys[i] & 0xFFFFFFFFu)]);
  } else {
    if (M < order.size())
      std::nth_element(order.begin(), order.begin() + static_cast<int64_t>(M), order.end(), before);
    if (!single) std::sort(order.begin(), order.begin() + static_cast<int64_t>(M), before);
  }
  uint64_t count = 0;
  if (single) {  // single-token units: the budget takes exactly the kk best, in any order
    for (size_t i = 0; i < kk; ++i) S.taken[order[i]] = 1;
    count = kk;
  } else {
    for (size_t i = 0; i < order.size() && count < budget; ++i) {
      if (i == M) {  // past the sorted best M (the rest may be gone: smallest_first): all
        rankable();
        std::sort(order.begin(), order.end(), before);  // its first M as before
      }
      const int32_t u = order[i];
      if (count + static_cast<uint64_t>(units[u].size) <= budget) {
        S.taken[u] = 1;
        count += static_cast<uint64_t>(units[u].size);
      }
    }
  }
  if (count == 0 && budget > 0 && !order.empty()) S.taken[order[0]] = 1;
  // the selected tokens: labels and 80/10/10, a chunk's worth at a time
  for (int64_t c = 0; c < n; c += kChunk) {
    const int m = static_cast<int>(std::min<int64_t>(kChunk, n - c));
    int ns = 0;
    for (int q = 0; q < m; ++q) {
      const int64_t u = S.unit_of[c + q];
      sel[ns] = q;
      ns += u >= 0 && S.taken[u];
    }
    if (ns)
      replace_selected(P, r.key, ids, c, sel, ns, out + r.start, lab + r.start, ctr, rx, ry, rz,
                       rw);
  }
}

// Exact mode without word ids or POS classes: every unit is one token with the same threshold,
// so the ranking of masking.h (u / t, ties by position) is the order of (u, position) and the
// budget takes the k smallest of those keys (packed in 64 bits, smallest_first). The draws come
// in vectorised Philox batches; same selection and replacements as exact_row, draw for draw.
template <typename T, typename TO>
void exact_row_plain(const MaskInputs& in, const MaskParams& P, const RowView<T>& r, TO* out,
                     TO* lab, Problems& pr, std::vector<uint64_t>& keys,
                     std::vector<uint64_t>& spill) {
  alignas(64) uint32_t ctr[kChunk], rx[kChunk], ry[kChunk], rz[kChunk], rw[kChunk];
  alignas(64) uint32_t u[kChunk + 4];
  alignas(64) uint8_t allow[kChunk];
  alignas(64) int32_t sel[kChunk];
  const int64_t L = in.length;
  const int64_t base = r.row * L;
  const T* ids = r.ids + r.start;
  pass_through(r.ids, L, out, lab);
  keys.clear();
  const int64_t n = L - r.start;
  for (int64_t c = 0; c < n; c += kChunk) {  // eligibility and the selection draws, by chunk
    const int m = static_cast<int>(std::min<int64_t>(kChunk, n - c));
    const int last = eligible_chunk(m, ids + c, in, base + r.start + c, P, allow, false, pr);
    if (P.t_select == 0 || last == 0) continue;
    row_draws(r.key, selection_counters(c, last, ctr), ctr, rx, ry, rz, rw, u);
    for (int q = 0; q < last; ++q) {
      if (allow[q])
        keys.push_back(static_cast<uint64_t>(u[q]) << 32 | static_cast<uint64_t>(c + q));
    }
  }
  const uint64_t units = keys.size();
  const uint64_t k = std::min<uint64_t>(exact_budget(units * P.t_select, units > 0), units);
  if (k < units) smallest_first(keys, k, spill);
  for (uint64_t s = 0; s < k; s += kChunk) {  // the k selected, a chunk's worth at a time
    const int ns = static_cast<int>(std::min<uint64_t>(kChunk, k - s));
    for (int i = 0; i < ns; ++i) sel[i] = static_cast<int32_t>(static_cast<uint32_t>(keys[s + i]));
    replace_selected(P, r.key, ids, 0, sel, ns, out + r.start, lab + r.start, ctr, rx, ry, rz, rw);
  }
}

template <typename T, typename TO>
void run_cpu(const MaskInputs& in, const MaskParams& P0, TO* out, TO* lab) {
  const int64_t B = in.batch, L = in.length;
  MaskParams P = P0;
  if (in.rng_state) {
    P.seed = static_cast<uint64_t>(in.rng_state[0]);
    P.epoch = static_cast<uint32_t>(in.rng_state[1]);
  }
  Problems pr;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(L, 1));
#if MLMFAST_X86_DISPATCH
  // the multi-row paths: rows batched together for full vector lanes
  const bool grouped = !in.exact && !in.word_ids && P.n_pos == 0 &&
                       P.n_special <= kInlineSpecials && B * L < (int64_t(1) << 31);
  const bool rows_avx512 = grouped && use_avx512bw();
  const bool rows_avx2 = grouped && !rows_avx512 && use_avx2() && __builtin_cpu_supports("popcnt");
#endif
  at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
#if MLMFAST_X86_DISPATCH
    if (rows_avx512) return plain_rows_grouped<Avx512Group, T, TO>(in, P, b0, b1, out, lab, pr);
    if (rows_avx2) return plain_rows_grouped<Avx2Group, T, TO>(in, P, b0, b1, out, lab, pr);
#endif
    ExactScratch exact;
    std::vector<uint64_t> keys, spill;
    for (int64_t b = b0; b < b1; ++b) {
      const T* ids = static_cast<const T*>(in.ids) + b * L;
      const uint64_t sid = in.sample_ids ? static_cast<uint64_t>(in.sample_ids[b]) : b;
      RowView<T> r{ids, b, row_start(in, b * L, L), row_key(P.seed, P.epoch, sid)};
      TO* o = out + b * L;
      TO* l = lab + b * L;
      if (in.exact && !in.word_ids && P.n_pos == 0) {
        exact_row_plain(in, P, r, o, l, pr, keys, spill);
      } else if (in.exact) {
        exact_row(in, P, r, o, l, pr, exact);
      } else if (!in.word_ids && P.n_pos == 0) {
        bernoulli_row_plain(in, P, r, o, l, pr);
      } else {
        bernoulli_row(in, P, r, o, l, pr);
      }
    }
  });
  auto where = [&](int64_t flat) {
    return std::string("[") + std::to_string(flat / L) + ", " + std::to_string(flat % L) + "]";
  };
  if (pr.bad_id.any()) {
    const int64_t f = pr.bad_id.index.load();
    TORCH_CHECK(false, "mask_tokens: input_ids", where(f), " = ",
                static_cast<int64_t>(static_cast<const T*>(in.ids)[f]),
                " is outside the vocabulary [0, vocab_size=", P.vocab_size, ")");
  }
  if (pr.bad_pos.any()) {
    const int64_t f = pr.bad_pos.index.load();
    TORCH_CHECK(false, "mask_tokens: pos_ids", where(f), " = ", int(in.pos_ids[f]),
                " has no entry in pos_probs (", P.n_pos, " classes)");
  }
  if (pr.bad_word.any()) {
    const int64_t f = pr.bad_word.index.load();
    TORCH_CHECK(false, "mask_tokens: word_ids", where(f), " = ",
                load_word(in.word_ids, in.word_kind, f), " must be below 2^32");
  }
}

// ids int64 -> int64, int32 -> int32, or int32 -> int64 (the out= form's widening).
void cpu_kernel(const MaskInputs& in, const MaskParams& P, at::Tensor& out, at::Tensor& labels) {
  const bool wide = out.scalar_type() == at::kLong;
  if (in.ids_kind == kInt64) {
    run_cpu<int64_t, int64_t>(in, P, out.data_ptr<int64_t>(), labels.data_ptr<int64_t>());
  } else if (wide) {
    run_cpu<int32_t, int64_t>(in, P, out.data_ptr<int64_t>(), labels.data_ptr<int64_t>());
  } else {
    run_cpu<int32_t, int32_t>(in, P, out.data_ptr<int32_t>(), labels.data_ptr<int32_t>());
  }
}

std::tuple<at::Tensor, at::Tensor> mask_tokens_cpu(const at::Tensor& input_ids,
                                                   MLMFAST_MASK_PARAMS) {
  return mask_tokens_out_of_place(&cpu_kernel, input_ids, MLMFAST_MASK_ARGS_PASS);
}

void mask_tokens_inplace_cpu(const at::Tensor& input_ids, const at::Tensor& labels,
                             MLMFAST_MASK_PARAMS) {
  mask_tokens_in_place(&cpu_kernel, /*check_first=*/true, input_ids, labels,
                       MLMFAST_MASK_ARGS_PASS);
}

void mask_tokens_into_cpu(const at::Tensor& input_ids, const at::Tensor& out,
                          const at::Tensor& labels, MLMFAST_MASK_PARAMS) {
  mask_tokens_into(&cpu_kernel, /*kernel_widens=*/true, /*check_first=*/true, input_ids, out,
                   labels, MLMFAST_MASK_ARGS_PASS);
}

// Raw Philox4x32-10 blocks, for known-answer tests and for reference.py's self-check.
at::Tensor philox_cpu(const at::Tensor& counters, int64_t seed) {
  TORCH_CHECK(counters.dim() == 2 && counters.size(1) == 4 && counters.scalar_type() == at::kLong,
              "philox4x32_10: counters must be int64 [N, 4], got ", counters.scalar_type(), " ",
              counters.sizes());
  at::Tensor c = counters.contiguous();
  at::Tensor out = at::empty_like(c);
  const int64_t* ci = c.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  const uint64_t s = static_cast<uint64_t>(seed);
  for (int64_t i = 0; i < c.size(0); ++i) {
    const u32x4 r = philox4x32_10(
        u32x4{static_cast<uint32_t>(ci[4 * i]), static_cast<uint32_t>(ci[4 * i + 1]),
              static_cast<uint32_t>(ci[4 * i + 2]), static_cast<uint32_t>(ci[4 * i + 3])},
        u32x2{static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32)});
    o[4 * i] = r.x;
    o[4 * i + 1] = r.y;
    o[4 * i + 2] = r.z;
    o[4 * i + 3] = r.w;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mlmfast, CPU, m) {
  m.impl("mask_tokens", &mask_tokens_cpu);
  m.impl("mask_tokens_", &mask_tokens_inplace_cpu);
  m.impl("mask_tokens_into", &mask_tokens_into_cpu);
  m.impl("philox4x32_10", &philox_cpu);
}

}  // namespace mlmfast
