// Philox4x32-10 over many counters at once for the AVX2 kernel (kernel_avx2.cpp, compiled with
// AVX2 flags; nothing else includes it). Same arithmetic as philox.h, step for step; the
// known-answer and CPU/reference equality tests cover it.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "cpu/kernel_rows.h"
#include "philox.h"

#ifndef __AVX2__
#error "philox_avx2.h is for kernel_avx2.cpp, compiled with -mavx2 (setup.py)"
#endif

namespace mlmfast::cpu::avx2 {

// Eight counters per register in 32-bit lanes (even and odd lanes multiply separately).
// The round keys of `key`, broadcast, computed once for all the calls that share the key.
struct PhiloxKeys {
  __m256i k0[10], k1[10];
};

inline void philox_schedule(u32x2 key, PhiloxKeys& ks) {
  using namespace philox_detail;
  uint32_t a = key.x, b = key.y;
  for (int r = 0; r < 10; ++r, a += kW0, b += kW1) {
    ks.k0[r] = _mm256_set1_epi32(static_cast<int>(a));
    ks.k1[r] = _mm256_set1_epi32(static_cast<int>(b));
  }
}

// Counter words 2 and 3 (the sample id): one value for every counter, or one per counter (eight
// counters from i on, whole vectors).
struct SameWord {
  uint32_t v;
  MLMFAST_ALWAYS_INLINE __m256i at(int) const { return _mm256_set1_epi32(static_cast<int>(v)); }
};
struct WordPerCounter {
  const uint32_t* p;
  MLMFAST_ALWAYS_INLINE __m256i at(int i) const {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
  }
};
struct FourArrays {
  uint32_t *ox, *oy, *oz, *ow;
  MLMFAST_ALWAYS_INLINE void put(int at, __m256i x, __m256i y, __m256i z, __m256i w) const {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ox + at), x);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(oy + at), y);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(oz + at), z);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ow + at), w);
  }
};
// BlockOrder: u[4 * i + k] = word k (x, y, z, w) of counter i: the four draws of a block side by
// side, in the order of the tokens they serve (a 4 x 8 transpose).
struct BlockOrder {
  uint32_t* u;
  MLMFAST_ALWAYS_INLINE void put(int at, __m256i x, __m256i y, __m256i z, __m256i w) const {
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
MLMFAST_ALWAYS_INLINE void philox_groups(int i, const uint32_t* c0, uint32_t c1, W2 c2, W3 c3,
                                         const PhiloxKeys& ks, Out out) {
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
inline void philox_run(int n, const uint32_t* c0, uint32_t c1, W2 c2, W3 c3, const PhiloxKeys& ks,
                       Out out) {
  int i = 0;
  for (; n - i > 8; i += 16) philox_groups<2>(i, c0, c1, c2, c3, ks, out);
  if (i < n) philox_groups<1>(i, c0, c1, c2, c3, ks, out);
}

inline void philox(int n, const uint32_t* c0, uint32_t c1, uint32_t c2, uint32_t c3, u32x2 key,
                   uint32_t* ox, uint32_t* oy, uint32_t* oz, uint32_t* ow) {
  PhiloxKeys ks;
  philox_schedule(key, ks);
  const int whole = n & ~7;
  philox_run(whole, c0, c1, SameWord{c2}, SameWord{c3}, ks, FourArrays{ox, oy, oz, ow});
  if (whole < n) {  // the tail as one padded vector
    alignas(32) uint32_t c[8] = {}, x[8], y[8], z[8], w[8];
    const int r = n - whole;
    std::memcpy(c, c0 + whole, sizeof(uint32_t) * r);
    philox_groups<1>(0, c, c1, SameWord{c2}, SameWord{c3}, ks, FourArrays{x, y, z, w});
    std::memcpy(ox + whole, x, sizeof(uint32_t) * r);
    std::memcpy(oy + whole, y, sizeof(uint32_t) * r);
    std::memcpy(oz + whole, z, sizeof(uint32_t) * r);
    std::memcpy(ow + whole, w, sizeof(uint32_t) * r);
  }
}

// A sample id per counter (c2[i], c3[i]), whole vectors (see philox_run): as four arrays or in
// block order.
inline void philox_rows(int n, const uint32_t* c0, uint32_t c1, const uint32_t* c2,
                        const uint32_t* c3, const PhiloxKeys& ks, uint32_t* ox, uint32_t* oy,
                        uint32_t* oz, uint32_t* ow) {
  philox_run(n, c0, c1, WordPerCounter{c2}, WordPerCounter{c3}, ks, FourArrays{ox, oy, oz, ow});
}
inline void philox_rows(int n, const uint32_t* c0, uint32_t c1, const uint32_t* c2,
                        const uint32_t* c3, const PhiloxKeys& ks, uint32_t* u) {
  philox_run(n, c0, c1, WordPerCounter{c2}, WordPerCounter{c3}, ks, BlockOrder{u});
}

}  // namespace mlmfast::cpu::avx2
