// Philox4x32-10 over many counters at once for the AVX-512 kernel (kernel_avx512.cpp, compiled
// with AVX-512 flags; nothing else includes it). Same arithmetic as philox.h, step for step; the
// known-answer and CPU/reference equality tests cover it.
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "cpu/kernel_rows.h"
#include "philox.h"

#ifndef __AVX512F__
#error "philox_avx512.h is for kernel_avx512.cpp, compiled with -mavx512f (setup.py)"
#endif

namespace mlmfast::cpu::avx512 {

// Eight counters per register in 64-bit lanes (each word in the low half of its lane, the high
// half ignored): one vpmuludq gives a whole 32x32->64 product, its high word is one shift away
// and the two xors of a round are one vpternlogd, so a round costs 6 instructions per 8
// counters (splitting even and odd 32-bit lanes costs 9). Four groups of 8 interleave, which
// hides the latency of the multiply (one group alone waits on it every round).
// The round keys of `key`, broadcast: computed once for all the calls that share the key.
struct PhiloxKeys {
  __m512i k0[10], k1[10];
};

inline void philox_schedule(u32x2 key, PhiloxKeys& ks) {
  using namespace philox_detail;
  uint32_t a = key.x, b = key.y;
  for (int r = 0; r < 10; ++r, a += kW0, b += kW1) {
    ks.k0[r] = _mm512_set1_epi64(a);
    ks.k1[r] = _mm512_set1_epi64(b);
  }
}

// Counter words 2 and 3 (the sample id): one value for every counter, or one per counter.
struct SameWord {
  uint32_t v;
  MLMFAST_ALWAYS_INLINE __m512i at(int, __mmask16) const { return _mm512_set1_epi64(v); }
};
struct WordPerCounter {
  const uint32_t* p;
  MLMFAST_ALWAYS_INLINE __m512i at(int i, __mmask16 lanes) const {
    return _mm512_cvtepu32_epi64(_mm512_castsi512_si256(_mm512_maskz_loadu_epi32(lanes, p + i)));
  }
};

// Where the outputs go. FourArrays: ox[i], oy[i], oz[i], ow[i] = the four words of counter i.
struct FourArrays {
  uint32_t *ox, *oy, *oz, *ow;
  MLMFAST_ALWAYS_INLINE void put(int at, __mmask8 m, __m512i x, __m512i y, __m512i z,
                                 __m512i w) const {
    _mm512_mask_cvtepi64_storeu_epi32(ox + at, m, x);  // the low words of the 64-bit lanes
    _mm512_mask_cvtepi64_storeu_epi32(oy + at, m, y);
    _mm512_mask_cvtepi64_storeu_epi32(oz + at, m, z);
    _mm512_mask_cvtepi64_storeu_epi32(ow + at, m, w);
  }
};
// BlockOrder: u[4 * i + k] = word k (x, y, z, w) of counter i: the four draws of a block side by
// side, in the order of the tokens they serve (selection draws: token 4 * block + k).
struct BlockOrder {
  uint32_t* u;
  MLMFAST_ALWAYS_INLINE static __mmask8 pairs(unsigned m) {
    m = (m | (m << 2)) & 0x33u;  // bit b -> bits 2b and 2b + 1
    m = (m | (m << 1)) & 0x55u;
    return static_cast<__mmask8>(m * 3u);
  }
  MLMFAST_ALWAYS_INLINE void put(int at, __mmask8 m, __m512i x, __m512i y, __m512i z,
                                 __m512i w) const {
    // (x, y) and (z, w) of each counter as one 64-bit lane, then the lanes interleaved
    const __m512i xy = _mm512_mask_blend_epi32(0xAAAA, x, _mm512_slli_epi64(y, 32));
    const __m512i zw = _mm512_mask_blend_epi32(0xAAAA, z, _mm512_slli_epi64(w, 32));
    const __m512i first = _mm512_set_epi64(11, 3, 10, 2, 9, 1, 8, 0);
    const __m512i second = _mm512_set_epi64(15, 7, 14, 6, 13, 5, 12, 4);
    _mm512_mask_storeu_epi64(u + 4 * at, pairs(m & 0xFu), _mm512_permutex2var_epi64(xy, first, zw));
    _mm512_mask_storeu_epi64(u + 4 * at + 16, pairs(m >> 4),
                             _mm512_permutex2var_epi64(xy, second, zw));
  }
};

// G groups of 8 counters from i on (the last one possibly short: masked loads and stores, so
// nothing outside [0, n) is touched).
template <int G, typename W2, typename W3, typename Out>
MLMFAST_ALWAYS_INLINE void philox_groups(int i, int n, const uint32_t* c0, uint32_t c1, W2 c2,
                                         W3 c3, const PhiloxKeys& ks, Out out) {
  using namespace philox_detail;
  const __m512i m0 = _mm512_set1_epi64(kM0);
  const __m512i m1 = _mm512_set1_epi64(kM1);
  constexpr int kXor3 = 0x96;  // a ^ b ^ c
  __m512i x[G], y[G], z[G], w[G];
  __mmask16 lanes[G];
#pragma GCC unroll 4
  for (int g = 0; g < G; ++g) {
    const int at = i + 8 * g, left = n - at;
    lanes[g] = left >= 8 ? __mmask16(0xFF) : static_cast<__mmask16>((1u << left) - 1);
    x[g] =
        _mm512_cvtepu32_epi64(_mm512_castsi512_si256(_mm512_maskz_loadu_epi32(lanes[g], c0 + at)));
    y[g] = _mm512_set1_epi64(c1);
    z[g] = c2.at(at, lanes[g]);
    w[g] = c3.at(at, lanes[g]);
  }
  for (int r = 0; r < 10; ++r) {
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
      const __m512i p0 = _mm512_mul_epu32(x[g], m0);
      const __m512i p1 = _mm512_mul_epu32(z[g], m1);
      x[g] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1, 32), y[g], ks.k0[r], kXor3);
      z[g] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0, 32), w[g], ks.k1[r], kXor3);
      y[g] = p1;
      w[g] = p0;
    }
  }
#pragma GCC unroll 4
  for (int g = 0; g < G; ++g)
    out.put(i + 8 * g, static_cast<__mmask8>(lanes[g]), x[g], y[g], z[g], w[g]);
}

// Philox4x32-10((c0[i], c1, c2 at i, c3 at i), ks's key) for i < n, into `out`.
template <typename W2, typename W3, typename Out>
inline void philox_run(int n, const uint32_t* c0, uint32_t c1, W2 c2, W3 c3, const PhiloxKeys& ks,
                       Out out) {
  int i = 0;
  for (; n - i > 24; i += 32) philox_groups<4>(i, n, c0, c1, c2, c3, ks, out);
  switch ((n - i + 7) >> 3) {  // 0 to 24 counters left
    case 3:
      return philox_groups<3>(i, n, c0, c1, c2, c3, ks, out);
    case 2:
      return philox_groups<2>(i, n, c0, c1, c2, c3, ks, out);
    case 1:
      return philox_groups<1>(i, n, c0, c1, c2, c3, ks, out);
    default:
      return;
  }
}

// One sample id for all n counters.
inline void philox_keyed(int n, const uint32_t* c0, uint32_t c1, uint32_t c2, uint32_t c3,
                         const PhiloxKeys& ks, uint32_t* ox, uint32_t* oy, uint32_t* oz,
                         uint32_t* ow) {
  philox_run(n, c0, c1, SameWord{c2}, SameWord{c3}, ks, FourArrays{ox, oy, oz, ow});
}

// A sample id per counter (c2[i], c3[i]): the draws of many rows in one batch, as four arrays
// or in block order (u[4 * i + k], see BlockOrder).
inline void philox_rows(int n, const uint32_t* c0, uint32_t c1, const uint32_t* c2,
                        const uint32_t* c3, const PhiloxKeys& ks, uint32_t* ox, uint32_t* oy,
                        uint32_t* oz, uint32_t* ow) {
  philox_run(n, c0, c1, WordPerCounter{c2}, WordPerCounter{c3}, ks, FourArrays{ox, oy, oz, ow});
}
inline void philox_rows(int n, const uint32_t* c0, uint32_t c1, const uint32_t* c2,
                        const uint32_t* c3, const PhiloxKeys& ks, uint32_t* u) {
  philox_run(n, c0, c1, WordPerCounter{c2}, WordPerCounter{c3}, ks, BlockOrder{u});
}

inline void philox(int n, const uint32_t* c0, uint32_t c1, uint32_t c2, uint32_t c3, u32x2 key,
                   uint32_t* ox, uint32_t* oy, uint32_t* oz, uint32_t* ow) {
  PhiloxKeys ks;
  philox_schedule(key, ks);
  philox_keyed(n, c0, c1, c2, c3, ks, ox, oy, oz, ow);
}

}  // namespace mlmfast::cpu::avx512
