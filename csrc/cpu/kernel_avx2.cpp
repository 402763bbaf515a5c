// The CPU kernel on processors with AVX2 and without AVX-512: compiled with -mavx2 -mpopcnt
// (setup.py), run only where dispatch.cpp found them. The default mode's rows go by groups
// (kernel_groups.h) through a pass over 8 tokens at a time (masks as bits, by movemask; the
// selected tokens packed by permutes), the AVX-512 kernel's decisions lane for lane; rows the
// groups cannot take go row by row (kernel_rows.h) on this file's Philox and scans.
#if !defined(__AVX2__) || !defined(__POPCNT__)
#error "kernel_avx2.cpp is compiled with -mavx2 -mpopcnt (setup.py)"
#endif
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12 flags the intrinsics' own _mm256_undefined_* placeholders; nothing is uninitialised.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#define MLMFAST_CPU_CAPABILITY avx2

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "cpu/kernel.h"
#include "cpu/kernel_groups.h"
#include "cpu/kernel_rows.h"
#include "cpu/philox_avx2.h"

namespace mlmfast::cpu::avx2 {
namespace {

// The packing of the selected tokens: permutes from a table of the 256 (and 16, for 64-bit
// values) ways 8 (4) lanes can be chosen.
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
MLMFAST_ALWAYS_INLINE __m256i compress_index(uint32_t packed) {
  return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(packed)),
                                            _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
                          _mm256_set1_epi32(7));
}

// Bits of four 64-bit lanes / eight 32-bit lanes (sign bits of compare results).
MLMFAST_ALWAYS_INLINE unsigned bits64(__m256i v) {
  return static_cast<unsigned>(_mm256_movemask_pd(_mm256_castsi256_pd(v)));
}
MLMFAST_ALWAYS_INLINE unsigned bits32(__m256i v) {
  return static_cast<unsigned>(_mm256_movemask_ps(_mm256_castsi256_ps(v)));
}
// Lane masks from bits: four 64-bit lanes (bits 0-3) / eight 32-bit lanes.
MLMFAST_ALWAYS_INLINE __m256i lanes64(unsigned bits) {
  const __m256i b = _mm256_setr_epi64x(1, 2, 4, 8);
  return _mm256_cmpeq_epi64(_mm256_and_si256(_mm256_set1_epi64x(bits), b), b);
}
MLMFAST_ALWAYS_INLINE __m256i lanes32(unsigned bits) {
  const __m256i b = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits)), b), b);
}

// Set flags of a per-token input at [at, at + n), n <= 8, as bits.
MLMFAST_ALWAYS_INLINE unsigned flags8(const void* p, int32_t kind, int64_t at, int n) {
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
MLMFAST_ALWAYS_INLINE void load8(const T* p, int n, __m256i& lo, __m256i& hi, __m256i& raw) {
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
MLMFAST_ALWAYS_INLINE void store8(TO* p, int n, __m256i lo, __m256i hi, __m256i raw) {
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
struct GroupPass {
  const MaskInputs& in;
  const MaskParams& P;
  const T* ids;
  TO* out;
  TO* lab;
  Problems& pr;
  PhiloxKeys ks;
  // vocab_size, the specials' range start, its span with the sign bit flipped (unsigned
  // compares through signed ones), the special ids
  __m256i vocab, smin, span_s, spec[kInlineSpecials];
};

MLMFAST_ALWAYS_INLINE __m256i flip64(__m256i v) {
  return _mm256_xor_si256(v, _mm256_set1_epi64x(INT64_MIN));
}
MLMFAST_ALWAYS_INLINE __m256i flip32(__m256i v) {
  return _mm256_xor_si256(v, _mm256_set1_epi32(INT32_MIN));
}

// Bits of the 8 ids (lo, hi) that are one of the (<= kInlineSpecials) special ids.
template <typename T, typename TO>
MLMFAST_ALWAYS_INLINE unsigned special8(const GroupPass<T, TO>& X, __m256i lo, __m256i hi) {
  __m256i a = _mm256_setzero_si256(), b = _mm256_setzero_si256();
  for (int i = 0; i < X.P.n_special; ++i) {
    a = _mm256_or_si256(a, _mm256_cmpeq_epi64(lo, X.spec[i]));
    b = _mm256_or_si256(b, _mm256_cmpeq_epi64(hi, X.spec[i]));
  }
  return bits64(a) | bits64(b) << 4;
}

// Bits of the ids inside [smin, smin + span]: the only ones that can be special.
template <typename T, typename TO>
MLMFAST_ALWAYS_INLINE unsigned near8(const GroupPass<T, TO>& X, __m256i lo, __m256i hi) {
  const __m256i a = _mm256_cmpgt_epi64(flip64(_mm256_sub_epi64(lo, X.smin)), X.span_s);
  const __m256i b = _mm256_cmpgt_epi64(flip64(_mm256_sub_epi64(hi, X.smin)), X.span_s);
  return ~(bits64(a) | bits64(b) << 4) & 0xFFu;
}

// The group: its draws, one pass over its tokens 8 at a time, the 80/10/10 step; empties the
// group. Same decisions and outputs as the AVX-512 kernel's run_group.
template <typename T, typename TO>
void run_group(GroupPass<T, TO>& X, GroupScratch& G) {
  if (G.n_seg == 0) return;
  const MaskInputs& in = X.in;
  const MaskParams& P = X.P;
  philox_rows(G.n_blk, G.ctr, P.epoch, G.c2, G.c3, X.ks, G.u);
  const __m256i t32 =
      _mm256_set1_epi32(static_cast<int>(lesser<uint64_t>(P.t_select, 0xFFFFFFFFu) ^ 0x80000000u));
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
      const int n = lesser(8, sg.m - q);
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
  philox_rows(ns, G.sctr, P.epoch, G.sc2, G.sc3, X.ks, G.sx, G.sy, G.sz, G.sw);
  // the 80/10/10 decisions, the random ids and the blends, as in the AVX-512 kernel
  const uint64_t t_rand = P.t_mask + P.t_random;
  const __m256i tm =
      _mm256_set1_epi32(static_cast<int>(static_cast<uint32_t>(P.t_mask) ^ 0x80000000u));
  const __m256i tr = _mm256_set1_epi32(
      static_cast<int>(static_cast<uint32_t>(lesser(t_rand, kOne - 1)) ^ 0x80000000u));
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

// Tokens of the segment at `flat` (m of them) up to the last attended one: they get draws.
// Without an attention mask, up to the last token that is no special id and not flagged.
template <typename T, typename TO>
int drawn_tokens(const GroupPass<T, TO>& X, int64_t flat, int m) {
  const MaskInputs& in = X.in;
  for (int q = (m - 1) & ~7; q >= 0; q -= 8) {
    const int n = lesser(8, m - q);
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

// The group pass of plain_rows_grouped, 8 tokens at a time.
struct Group {
  template <typename T, typename TO>
  using Pass = GroupPass<T, TO>;

  template <typename T, typename TO>
  static void init(GroupPass<T, TO>& X) {
    const MaskParams& P = X.P;
    philox_schedule(u32x2{static_cast<uint32_t>(P.seed), static_cast<uint32_t>(P.seed >> 32)},
                    X.ks);
    X.vocab = _mm256_set1_epi64x(P.vocab_size);
    for (int i = 0; i < P.n_special; ++i) X.spec[i] = _mm256_set1_epi64x(P.special[i]);
    X.smin = _mm256_set1_epi64x(P.n_special ? P.special[0] : 0);
    X.span_s =
        flip64(_mm256_set1_epi64x(P.n_special ? P.special[P.n_special - 1] - P.special[0] : -1));
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
    avx2::philox(n, c0, c1, c2, c3, key, ox, oy, oz, ow);
  }
  template <typename T, typename TO>
  static void plain_rows(const MaskInputs& in, const MaskParams& P, int64_t b0, int64_t b1, TO* out,
                         TO* lab, Problems& pr) {
    if (group_fits(in, P)) return plain_rows_grouped<Group, T, TO>(in, P, b0, b1, out, lab, pr);
    plain_rows_by_row<Isa, T>(Isa{}, in, P, b0, b1, out, lab, pr);
  }
};

}  // namespace

extern const Kernel kernel = kernel_table<Isa>("avx2");

}  // namespace mlmfast::cpu::avx2
