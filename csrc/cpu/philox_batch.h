// Philox4x32-10 over many counters at once, for the CPU kernel. Same arithmetic as philox.h,
// step for step: 16 (AVX-512) or 8 (AVX2) counters per instruction where the processor has
// them (chosen at run time, so one wheel serves every x86-64 machine), a portable loop
// elsewhere. The known-answer and CPU/reference equality tests cover whichever path runs.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "philox.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#define MLMFAST_X86_DISPATCH 1
// GCC 12 flags the intrinsics' own _mm512_undefined_* placeholders; nothing is uninitialised.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace mlmfast {
namespace philox_batch_detail {

inline void portable(int begin, int n, const uint32_t* c0, uint32_t c1, uint32_t c2, uint32_t c3,
                     u32x2 key, uint32_t* ox, uint32_t* oy, uint32_t* oz, uint32_t* ow) {
  for (int i = begin; i < n; ++i) {
    const u32x4 r = philox4x32_10(u32x4{c0[i], c1, c2, c3}, key);
    ox[i] = r.x;
    oy[i] = r.y;
    oz[i] = r.z;
    ow[i] = r.w;
  }
}

#if MLMFAST_X86_DISPATCH
// Eight counters per register in 64-bit lanes (each word in the low half of its lane, the high
// half ignored): one vpmuludq gives a whole 32x32->64 product, its high word is one shift away
// and the two xors of a round are one vpternlogd, so a round costs 6 instructions per 8
// counters (splitting even and odd 32-bit lanes costs 9). Four groups of 8 interleave, which
// hides the latency of the multiply (one group alone waits on it every round).
// The round keys of `key`, broadcast: computed once for all the calls that share the key.
struct Avx512Keys {
  __m512i k0[10], k1[10];
};

__attribute__((target("avx512f"))) inline void avx512_schedule(u32x2 key, Avx512Keys& ks) {
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
  __attribute__((target("avx512f"), always_inline)) inline __m512i at(int, __mmask16) const {
    return _mm512_set1_epi64(v);
  }
};
struct WordPerCounter {
  const uint32_t* p;
  __attribute__((target("avx512f"), always_inline)) inline __m512i at(int i,
                                                                      __mmask16 lanes) const {
    return _mm512_cvtepu32_epi64(_mm512_castsi512_si256(_mm512_maskz_loadu_epi32(lanes, p + i)));
  }
};

// Where the outputs go. FourArrays: ox[i], oy[i], oz[i], ow[i] = the four words of counter i.
struct FourArrays {
  uint32_t *ox, *oy, *oz, *ow;
  __attribute__((target("avx512f"), always_inline)) inline void put(int at, __mmask8 m, __m512i x,
                                                                    __m512i y, __m512i z,
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
  __attribute__((target("avx512f"), always_inline)) static inline __mmask8 pairs(unsigned m) {
    m = (m | (m << 2)) & 0x33u;  // bit b -> bits 2b and 2b + 1
    m = (m | (m << 1)) & 0x55u;
    return static_cast<__mmask8>(m * 3u);
  }
  __attribute__((target("avx512f"), always_inline)) inline void put(int at, __mmask8 m, __m512i x,
                                                                    __m512i y, __m512i z,
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
__attribute__((target("avx512f"), always_inline)) inline void avx512_groups(
    int i, int n, const uint32_t* c0, uint32_t c1, W2 c2, W3 c3, const Avx512Keys& ks, Out out) {
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
__attribute__((target("avx512f"))) inline void avx512_run(int n, const uint32_t* c0, uint32_t c1,
                                                          W2 c2, W3 c3, const Avx512Keys& ks,
                                                          Out out) {
  int i = 0;
  for (; n - i > 24; i += 32) avx512_groups<4>(i, n, c0, c1, c2, c3, ks, out);
  switch ((n - i + 7) >> 3) {  // 0 to 24 counters left
    case 3:
      return avx512_groups<3>(i, n, c0, c1, c2, c3, ks, out);
    case 2:
      return avx512_groups<2>(i, n, c0, c1, c2, c3, ks, out);
    case 1:
      return avx512_groups<1>(i, n, c0, c1, c2, c3, ks, out);
    default:
      return;
  }
}

// One sample id for all n counters.
__attribute__((target("avx512f"))) inline void avx512_keyed(int n, const uint32_t* c0, uint32_t c1,
                                                            uint32_t c2, uint32_t c3,
                                                            const Avx512Keys& ks, uint32_t* ox,
                                                            uint32_t* oy, uint32_t* oz,
                                                            uint32_t* ow) {
  avx512_run(n, c0, c1, SameWord{c2}, SameWord{c3}, ks, FourArrays{ox, oy, oz, ow});
}

// A sample id per counter (c2[i], c3[i]): the draws of many rows in one batch, as four arrays
// or in block order (u[4 * i + k], see BlockOrder).
__attribute__((target("avx512f"))) inline void avx512_rows(int n, const uint32_t* c0, uint32_t c1,
                                                           const uint32_t* c2, const uint32_t* c3,
                                                           const Avx512Keys& ks, uint32_t* ox,
                                                           uint32_t* oy, uint32_t* oz,
                                                           uint32_t* ow) {
  avx512_run(n, c0, c1, WordPerCounter{c2}, WordPerCounter{c3}, ks, FourArrays{ox, oy, oz, ow});
}
__attribute__((target("avx512f"))) inline void avx512_rows(int n, const uint32_t* c0, uint32_t c1,
                                                           const uint32_t* c2, const uint32_t* c3,
                                                           const Avx512Keys& ks, uint32_t* u) {
  avx512_run(n, c0, c1, WordPerCounter{c2}, WordPerCounter{c3}, ks, BlockOrder{u});
}

__attribute__((target("avx512f"))) inline void avx512(int n, const uint32_t* c0, uint32_t c1,
                                                      uint32_t c2, uint32_t c3, u32x2 key,
                                                      uint32_t* ox, uint32_t* oy, uint32_t* oz,
                                                      uint32_t* ow) {
  Avx512Keys ks;
  avx512_schedule(key, ks);
  avx512_keyed(n, c0, c1, c2, c3, ks, ox, oy, oz, ow);
}

// AVX2: eight counters per register in 32-bit lanes (even and odd lanes multiply separately).
// The round keys of `key`, broadcast, computed once for all the calls that share the key.
struct Avx2Keys {
  __m256i k0[10], k1[10];
};

__attribute__((target("avx2"))) inline void avx2_schedule(u32x2 key, Avx2Keys& ks) {
  using namespace philox_detail;
  uint32_t a = key.x, b = key.y;
  for (int r = 0; r < 10; ++r, a += kW0, b += kW1) {
    ks.k0[r] = _mm256_set1_epi32(static_cast<int>(a));
    ks.k1[r] = _mm256_set1_epi32(static_cast<int>(b));
  }
}

// Counter words 2 and 3, and the outputs, as for AVX-512 (eight counters from i on, whole
// vectors).
struct SameWord8 {
  uint32_t v;
  __attribute__((target("avx2"), always_inline)) inline __m256i at(int) const {
    return _mm256_set1_epi32(static_cast<int>(v));
  }
};
struct WordPerCounter8 {
  const uint32_t* p;
  __attribute__((target("avx2"), always_inline)) inline __m256i at(int i) const {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
  }
};
struct FourArrays8 {
  uint32_t *ox, *oy, *oz, *ow;
  __attribute__((target("avx2"), always_inline)) inline void put(int at, __m256i x, __m256i y,
                                                                 __m256i z, __m256i w) const {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ox + at), x);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(oy + at), y);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(oz + at), z);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ow + at), w);
  }
};
// u[4 * i + k] = word k of counter i (see BlockOrder): a 4 x 8 transpose.
struct BlockOrder8 {
  uint32_t* u;
  __attribute__((target("avx2"), always_inline)) inline void put(int at, __m256i x, __m256i y,
                                                                 __m256i z, __m256i w) const {
    const __m256i a = _mm256_unpacklo_epi32(x, y);  // x0 y0 x1 y1 | x4 y4 x5 y5
    const __m256i b = _mm256_unpackhi_epi32(x, y);  // x2 y2 x3 y3 | x6 y6 x7 y7
    const __m256i c = _mm256_unpacklo_epi32(z, w);
    const __m256i d = _mm256_unpackhi_epi32(z, w);
    const __m256i b04 = _mm256_unpacklo_epi64(a, c);  // block 0 | block 4
    const __m256i b15 = _mm256_unpackhi_epi64(a, c);
    const __m256i b26 = _mm256_unpacklo_epi64(b, d);
    const __m256i b37 = _mm256_unpackhi_epi64(b, d);
    __m256i* o = reinterpret_cast<__m256i*>(u + 4 * at);
    _mm256_storeu_si256(o, _mm256_permute2x128_si256(b04, b15, 0x20));
    _mm256_storeu_si256(o + 1, _mm256_permute2x128_si256(b26, b37, 0x20));
    _mm256_storeu_si256(o + 2, _mm256_permute2x128_si256(b04, b15, 0x31));
    _mm256_storeu_si256(o + 3, _mm256_permute2x128_si256(b26, b37, 0x31));
  }
};

// G groups of 8 counters from i on, whole vectors, interleaved round by round so that one
// group's multiplies overlap the other's.
template <int G, typename W2, typename W3, typename Out>
__attribute__((target("avx2"), always_inline)) inline void avx2_groups(int i, const uint32_t* c0,
                                                                       uint32_t c1, W2 c2, W3 c3,
                                                                       const Avx2Keys& ks,
                                                                       Out out) {
  using namespace philox_detail;
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kM1));
  __m256i x[G], y[G], z[G], w[G];
  for (int g = 0; g < G; ++g) {
    x[g] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c0 + i + 8 * g));
    y[g] = _mm256_set1_epi32(static_cast<int>(c1));
    z[g] = c2.at(i + 8 * g);
    w[g] = c3.at(i + 8 * g);
  }
  for (int r = 0; r < 10; ++r) {
#pragma GCC unroll 2
    for (int g = 0; g < G; ++g) {
      const __m256i pe0 = _mm256_mul_epu32(x[g], m0);
      const __m256i po0 = _mm256_mul_epu32(_mm256_srli_epi64(x[g], 32), m0);
      const __m256i pe1 = _mm256_mul_epu32(z[g], m1);
      const __m256i po1 = _mm256_mul_epu32(_mm256_srli_epi64(z[g], 32), m1);
      const __m256i lo0 = _mm256_blend_epi32(pe0, _mm256_slli_epi64(po0, 32), 0xAA);
      const __m256i hi0 = _mm256_blend_epi32(_mm256_srli_epi64(pe0, 32), po0, 0xAA);
      const __m256i lo1 = _mm256_blend_epi32(pe1, _mm256_slli_epi64(po1, 32), 0xAA);
      const __m256i hi1 = _mm256_blend_epi32(_mm256_srli_epi64(pe1, 32), po1, 0xAA);
      x[g] = _mm256_xor_si256(_mm256_xor_si256(hi1, y[g]), ks.k0[r]);
      z[g] = _mm256_xor_si256(_mm256_xor_si256(hi0, w[g]), ks.k1[r]);
      y[g] = lo1;
      w[g] = lo0;
    }
  }
  for (int g = 0; g < G; ++g) out.put(i + 8 * g, x[g], y[g], z[g], w[g]);
}

// Philox4x32-10((c0[i], c1, c2 at i, c3 at i), ks's key) for i < n rounded up to a multiple of
// 8: the caller's arrays have room for the whole last vector (inputs read, outputs written).
template <typename W2, typename W3, typename Out>
__attribute__((target("avx2"))) inline void avx2_run(int n, const uint32_t* c0, uint32_t c1, W2 c2,
                                                     W3 c3, const Avx2Keys& ks, Out out) {
  int i = 0;
  for (; n - i > 8; i += 16) avx2_groups<2>(i, c0, c1, c2, c3, ks, out);
  if (i < n) avx2_groups<1>(i, c0, c1, c2, c3, ks, out);
}

__attribute__((target("avx2"))) inline void avx2(int n, const uint32_t* c0, uint32_t c1,
                                                 uint32_t c2, uint32_t c3, u32x2 key, uint32_t* ox,
                                                 uint32_t* oy, uint32_t* oz, uint32_t* ow) {
  Avx2Keys ks;
  avx2_schedule(key, ks);
  const int whole = n & ~7;
  avx2_run(whole, c0, c1, SameWord8{c2}, SameWord8{c3}, ks, FourArrays8{ox, oy, oz, ow});
  if (whole < n) {  // the tail as one padded vector
    alignas(32) uint32_t c[8] = {}, x[8], y[8], z[8], w[8];
    const int r = n - whole;
    std::memcpy(c, c0 + whole, sizeof(uint32_t) * r);
    avx2_groups<1>(0, c, c1, SameWord8{c2}, SameWord8{c3}, ks, FourArrays8{x, y, z, w});
    std::memcpy(ox + whole, x, sizeof(uint32_t) * r);
    std::memcpy(oy + whole, y, sizeof(uint32_t) * r);
    std::memcpy(oz + whole, z, sizeof(uint32_t) * r);
    std::memcpy(ow + whole, w, sizeof(uint32_t) * r);
  }
}

// A sample id per counter (c2[i], c3[i]), whole vectors (see avx2_run): as four arrays or in
// block order.
__attribute__((target("avx2"))) inline void avx2_rows(int n, const uint32_t* c0, uint32_t c1,
                                                      const uint32_t* c2, const uint32_t* c3,
                                                      const Avx2Keys& ks, uint32_t* ox,
                                                      uint32_t* oy, uint32_t* oz, uint32_t* ow) {
  avx2_run(n, c0, c1, WordPerCounter8{c2}, WordPerCounter8{c3}, ks, FourArrays8{ox, oy, oz, ow});
}
__attribute__((target("avx2"))) inline void avx2_rows(int n, const uint32_t* c0, uint32_t c1,
                                                      const uint32_t* c2, const uint32_t* c3,
                                                      const Avx2Keys& ks, uint32_t* u) {
  avx2_run(n, c0, c1, WordPerCounter8{c2}, WordPerCounter8{c3}, ks, BlockOrder8{u});
}

enum Isa { kUnknown = 0, kPortable, kAvx2, kAvx512 };

// The widest instruction set the processor has, or less when MLMFAST_CPU_ISA says so
// ("portable", "avx2", "avx512"), so that tests can run every path on one machine.
inline Isa detect() {
  static const Isa isa = [] {
    __builtin_cpu_init();
    Isa best = kPortable;
    if (__builtin_cpu_supports("avx2")) best = kAvx2;
    if (__builtin_cpu_supports("avx512f")) best = kAvx512;
    const char* want = std::getenv("MLMFAST_CPU_ISA");
    if (want == nullptr || *want == '\0') return best;
    const std::string w(want);
    const Isa cap = w == "portable" ? kPortable : (w == "avx2" ? kAvx2 : kAvx512);
    return cap < best ? cap : best;
  }();
  return isa;
}
#endif

}  // namespace philox_batch_detail

#if MLMFAST_X86_DISPATCH
#pragma GCC diagnostic pop
#endif

// out_*[i] = Philox4x32-10(counter = (c0[i], c1, c2, c3), key), for i < n.
inline void philox_batch(int n, const uint32_t* c0, uint32_t c1, uint32_t c2, uint32_t c3,
                         u32x2 key, uint32_t* ox, uint32_t* oy, uint32_t* oz, uint32_t* ow) {
  namespace d = philox_batch_detail;
#if MLMFAST_X86_DISPATCH
  switch (d::detect()) {
    case d::kAvx512:
      return d::avx512(n, c0, c1, c2, c3, key, ox, oy, oz, ow);
    case d::kAvx2:
      return d::avx2(n, c0, c1, c2, c3, key, ox, oy, oz, ow);
    default:
      break;
  }
#endif
  d::portable(0, n, c0, c1, c2, c3, key, ox, oy, oz, ow);
}

}  // namespace mlmfast
