// The CPU kernel on processors with AVX-512 (F, BW, VL): compiled with -mavx512f -mavx512bw
// -mavx512vl -mpopcnt (setup.py), run only where dispatch.cpp found them. The default mode's rows
// go by groups (kernel_groups.h) through a pass over 16 tokens at a time that computes
// eligibility and the range check in mask registers, compares the draws, writes the ids (widened
// when TO is wider) and the labels, and packs the selected tokens for the 80/10/10 step; rows
// the groups cannot take go row by row (kernel_rows.h) on this file's Philox, scans and compact.
#if !defined(__AVX512F__) || !defined(__AVX512BW__) || !defined(__AVX512VL__) || \
    !defined(__POPCNT__)
#error "kernel_avx512.cpp is compiled with -mavx512f -mavx512bw -mavx512vl -mpopcnt (setup.py)"
#endif
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 flags the intrinsics' own _mm512_undefined_* placeholders; nothing is uninitialised.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#define MLMFAST_CPU_CAPABILITY avx512

#include <immintrin.h>

#include <cstdint>

#include "cpu/kernel.h"
#include "cpu/kernel_groups.h"
#include "cpu/kernel_rows.h"
#include "cpu/philox_avx512.h"

namespace mlmfast::cpu::avx512 {
namespace {

// sel[0..ns) = the q < m with cand[q], in order: 16 at a time, compressed in a register and
// stored whole (a compress-store to memory is microcoded on AMD's Zen 4); ns <= q, so the store
// stays below m.
inline int compact(int m, const uint8_t* cand, int32_t* sel) {
  int ns = 0;
  int q = 0;
  const __m512i step = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  for (; q + 16 <= m; q += 16) {
    const __m512i c =
        _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(cand + q)));
    const __mmask16 k = _mm512_test_epi32_mask(c, c);
    _mm512_storeu_si512(
        sel + ns, _mm512_maskz_compress_epi32(k, _mm512_add_epi32(step, _mm512_set1_epi32(q))));
    ns += __builtin_popcount(static_cast<unsigned>(k));
  }
  for (; q < m; ++q) {
    sel[ns] = q;
    ns += cand[q];
  }
  return ns;
}

// Kernel::word_units (kernel.h), 8 tokens at a time: the previous token's word by a lane shift,
// the units' first and stop positions and their draws' blocks compressed in registers and stored
// whole (8 entries from the count on: the arrays take up to 7 writes past c + m), the order of
// the words that start a unit checked on the compressed word ids.
void word_units(int m, const uint8_t* allow, const int64_t* wid, int32_t c, UnitRun& s,
                int32_t* first, int32_t* stop, uint32_t* ctr, int32_t* lane) {
  const __m512i none = _mm512_set1_epi64(-2), zero = _mm512_setzero_si512();
  const __m256i step = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i tag_word = _mm256_set1_epi32(static_cast<int32_t>(kTagWord));
  const __m256i tag_select = _mm256_set1_epi32(static_cast<int32_t>(kTagSelect));
  const __m256i index_mask = _mm256_set1_epi32(static_cast<int32_t>(kIndexMask));
  const __m256i three = _mm256_set1_epi32(3);
  __m512i carry = _mm512_set1_epi64(s.prev_w);  // lane 7: the previous token's word (or -2)
  int64_t last_w = s.last_w, eligible = s.eligible;
  unsigned pa = static_cast<unsigned>(s.prev_allow);
  int32_t nu = s.nu, ns = s.ns;
  bool irregular = s.irregular != 0;
  for (int q = 0; q < m; q += 8) {
    const int left = m - q;
    const __mmask8 tail = left >= 8 ? __mmask8(0xFF) : static_cast<__mmask8>((1u << left) - 1);
    const __m128i av = _mm_maskz_loadu_epi8(tail, allow + q);
    const __mmask8 a = static_cast<__mmask8>(_mm_test_epi8_mask(av, av));
    const __m512i w = _mm512_maskz_loadu_epi64(tail, wid + q);
    const __mmask8 in_word = _mm512_mask_cmpge_epi64_mask(a, w, zero);
    const __m512i pw = _mm512_mask_blend_epi64(in_word, none, w);
    const __mmask8 cont =
        _mm512_mask_cmpeq_epi64_mask(in_word, w, _mm512_alignr_epi64(pw, carry, 7));
    const __mmask8 start = a & static_cast<__mmask8>(~cont);
    // lane i stops the unit of token i - 1 (the previous token eligible, this one no continuation)
    const __mmask8 ends =
        static_cast<__mmask8>(((static_cast<unsigned>(a) << 1) | pa) & ~cont & tail);
    const __m256i pos = _mm256_add_epi32(_mm256_set1_epi32(c + q), step);
    auto put = [](int32_t* at, __mmask8 k, __m256i v) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(at), _mm256_maskz_compress_epi32(k, v));
    };
    put(stop + ns, ends, pos);
    put(first + nu, start, pos);
    const __m256i w32 = _mm512_cvtepi64_epi32(w);
    if (ctr) {
      const __m256i cw =
          _mm256_or_si256(tag_word, _mm256_and_si256(_mm256_srli_epi32(w32, 2), index_mask));
      const __m256i cs =
          _mm256_or_si256(tag_select, _mm256_and_si256(_mm256_srli_epi32(pos, 2), index_mask));
      put(reinterpret_cast<int32_t*>(ctr) + nu, start, _mm256_mask_blend_epi32(in_word, cs, cw));
      put(lane + nu, start, _mm256_and_si256(_mm256_mask_blend_epi32(in_word, pos, w32), three));
    }
    const __mmask8 word_starts = start & in_word;
    if (word_starts) {  // their word ids must increase, from last_w on
      const int k = __builtin_popcount(static_cast<unsigned>(word_starts));
      const __m512i ws = _mm512_maskz_compress_epi64(word_starts, w);
      const __m512i before = _mm512_alignr_epi64(ws, _mm512_set1_epi64(last_w), 7);
      irregular |=
          _mm512_mask_cmple_epi64_mask(static_cast<__mmask8>((1u << k) - 1), ws, before) != 0;
      last_w = _mm_cvtsi128_si64(
          _mm512_castsi512_si128(_mm512_permutexvar_epi64(_mm512_set1_epi64(k - 1), ws)));
    }
    nu += __builtin_popcount(static_cast<unsigned>(start));
    ns += __builtin_popcount(static_cast<unsigned>(ends));
    eligible += __builtin_popcount(static_cast<unsigned>(a));
    const int final_lane = left >= 8 ? 7 : left - 1;
    pa = (static_cast<unsigned>(a) >> final_lane) & 1u;
    carry = left >= 8 ? pw : _mm512_permutexvar_epi64(_mm512_set1_epi64(final_lane), pw);
  }
  s.prev_w = _mm_cvtsi128_si64(
      _mm512_castsi512_si128(_mm512_permutexvar_epi64(_mm512_set1_epi64(7), carry)));
  s.last_w = last_w;
  s.eligible = eligible;
  s.prev_allow = static_cast<int32_t>(pa);
  s.irregular = irregular;
  s.nu = nu;
  s.ns = ns;
}

// true when one of the n word ids is >= 2^32: 16 at a time
bool words_above(const int64_t* w, int64_t n) {
  const __m512i limit = _mm512_set1_epi64(0xFFFFFFFFll);
  __mmask8 any = 0;
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    any |= _mm512_cmpgt_epi64_mask(_mm512_loadu_si512(w + j), limit) |
           _mm512_cmpgt_epi64_mask(_mm512_loadu_si512(w + j + 8), limit);
  }
  for (; j < n; j += 8) {
    const __mmask8 lanes = n - j >= 8 ? __mmask8(0xFF) : static_cast<__mmask8>((1u << (n - j)) - 1);
    any |= _mm512_mask_cmpgt_epi64_mask(lanes, _mm512_maskz_loadu_epi64(lanes, w + j), limit);
  }
  return any != 0;
}

// Set flags (nonzero entries) of a per-token input at [at, at + 16), as a bit mask; only the
// `lanes` are read (masked loads: nothing past the row's end is touched).
MLMFAST_ALWAYS_INLINE __mmask16 flags16(const void* p, int32_t kind, int64_t at, __mmask16 lanes) {
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
MLMFAST_ALWAYS_INLINE void load16(const T* p, __mmask16 lanes, __m512i& lo, __m512i& hi) {
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
MLMFAST_ALWAYS_INLINE void store16(TO* p, __mmask16 lanes, __m512i lo, __m512i hi) {
  if constexpr (sizeof(TO) == 4) {
    const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(lo)),
                                         _mm512_cvtepi64_epi32(hi), 1);
    _mm512_mask_storeu_epi32(p, lanes, v);
  } else {
    _mm512_mask_storeu_epi64(p, static_cast<__mmask8>(lanes), lo);
    _mm512_mask_storeu_epi64(p + 8, static_cast<__mmask8>(lanes >> 8), hi);
  }
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
  PhiloxKeys ks;  // one key (the seed) for every draw of the batch
  __m512i vocab, ignore, smin, span, spec[kInlineSpecials];
};

// Lanes of 16 ids (lo, hi: 8 each) that are none of the (<= kInlineSpecials) special ids.
template <typename T, typename TO>
MLMFAST_ALWAYS_INLINE __mmask16 not_special16(const GroupPass<T, TO>& X, __m512i lo, __m512i hi) {
  __mmask16 ok = 0xFFFF;
  for (int i = 0; i < X.P.n_special; ++i)
    ok &= _mm512_kunpackb(_mm512_cmpneq_epi64_mask(hi, X.spec[i]),
                          _mm512_cmpneq_epi64_mask(lo, X.spec[i]));
  return ok;
}

// The group: its draws, one pass over its tokens, the 80/10/10 step; empties the group.
template <typename T, typename TO>
void run_group(GroupPass<T, TO>& X, GroupScratch& G) {
  if (G.n_seg == 0) return;
  const MaskInputs& in = X.in;
  const MaskParams& P = X.P;
  philox_rows(G.n_blk, G.ctr, P.epoch, G.c2, G.c3, X.ks, G.u);
  const __m512i t32 =
      _mm512_set1_epi32(static_cast<int>(lesser<uint64_t>(P.t_select, 0xFFFFFFFFu)));
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
  philox_rows(ns, G.sctr, P.epoch, G.sc2, G.sc3, X.ks, G.sx, G.sy, G.sz, G.sw);
  // the 80/10/10 decisions, the random ids (multiply-high and the walk over the excluded
  // specials) and the blends, 16 tokens at a time: random_token and replacement, lane for lane
  const uint64_t t_rand = P.t_mask + P.t_random;
  const __m512i tm = _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(P.t_mask)));
  const __m512i tr =
      _mm512_set1_epi32(static_cast<int>(static_cast<uint32_t>(lesser(t_rand, kOne - 1))));
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
int drawn_tokens(const GroupPass<T, TO>& X, int64_t flat, int m) {
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

// The group pass of plain_rows_grouped, 16 tokens at a time.
struct Group {
  template <typename T, typename TO>
  using Pass = GroupPass<T, TO>;

  template <typename T, typename TO>
  static void init(GroupPass<T, TO>& X) {
    const MaskParams& P = X.P;
    philox_schedule(u32x2{static_cast<uint32_t>(P.seed), static_cast<uint32_t>(P.seed >> 32)},
                    X.ks);
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
};

// The instruction set's primitives, for the row-by-row path, and its default-mode rows.
struct Isa : BodyPrimitives {
  static void philox(int n, const uint32_t* c0, uint32_t c1, uint32_t c2, uint32_t c3, u32x2 key,
                     uint32_t* ox, uint32_t* oy, uint32_t* oz, uint32_t* ow) {
    avx512::philox(n, c0, c1, c2, c3, key, ox, oy, oz, ow);
  }
  static int compact(int m, const uint8_t* cand, int32_t* sel) {
    return avx512::compact(m, cand, sel);
  }
  static void word_units(int m, const uint8_t* allow, const int64_t* wid, int32_t c, UnitRun& s,
                         int32_t* first, int32_t* stop, uint32_t* ctr, int32_t* lane) {
    avx512::word_units(m, allow, wid, c, s, first, stop, ctr, lane);
  }
  static bool words_above(const int64_t* w, int64_t n) { return avx512::words_above(w, n); }
  template <typename T, typename TO>
  static void plain_rows(const MaskInputs& in, const MaskParams& P, int64_t b0, int64_t b1, TO* out,
                         TO* lab, Problems& pr) {
    if (group_fits(in, P)) return plain_rows_grouped<Group, T, TO>(in, P, b0, b1, out, lab, pr);
    plain_rows_by_row<Isa, T>(Isa{}, in, P, b0, b1, out, lab, pr);
  }
};

}  // namespace

extern const Kernel kernel = kernel_table<Isa>("avx512");

}  // namespace mlmfast::cpu::avx512
