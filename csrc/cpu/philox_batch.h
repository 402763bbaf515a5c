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
__attribute__((target("avx512f"))) inline void avx512(int n, const uint32_t* c0, uint32_t c1,
                                                      uint32_t c2, uint32_t c3, u32x2 key,
                                                      uint32_t* ox, uint32_t* oy, uint32_t* oz,
                                                      uint32_t* ow) {
  using namespace philox_detail;
  const __m512i m0 = _mm512_set1_epi32(static_cast<int>(kM0));
  const __m512i m1 = _mm512_set1_epi32(static_cast<int>(kM1));
  const __mmask16 odd = 0xAAAA;
  int i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512i x = _mm512_loadu_si512(c0 + i);
    __m512i y = _mm512_set1_epi32(static_cast<int>(c1));
    __m512i z = _mm512_set1_epi32(static_cast<int>(c2));
    __m512i w = _mm512_set1_epi32(static_cast<int>(c3));
    uint32_t k0 = key.x, k1 = key.y;
    for (int r = 0; r < 10; ++r) {
      const __m512i pe0 = _mm512_mul_epu32(x, m0);
      const __m512i po0 = _mm512_mul_epu32(_mm512_srli_epi64(x, 32), m0);
      const __m512i pe1 = _mm512_mul_epu32(z, m1);
      const __m512i po1 = _mm512_mul_epu32(_mm512_srli_epi64(z, 32), m1);
      const __m512i lo0 = _mm512_mask_blend_epi32(odd, pe0, _mm512_slli_epi64(po0, 32));
      const __m512i hi0 = _mm512_mask_blend_epi32(odd, _mm512_srli_epi64(pe0, 32), po0);
      const __m512i lo1 = _mm512_mask_blend_epi32(odd, pe1, _mm512_slli_epi64(po1, 32));
      const __m512i hi1 = _mm512_mask_blend_epi32(odd, _mm512_srli_epi64(pe1, 32), po1);
      x = _mm512_xor_si512(_mm512_xor_si512(hi1, y), _mm512_set1_epi32(static_cast<int>(k0)));
      z = _mm512_xor_si512(_mm512_xor_si512(hi0, w), _mm512_set1_epi32(static_cast<int>(k1)));
      y = lo1;
      w = lo0;
      k0 += kW0;
      k1 += kW1;
    }
    _mm512_storeu_si512(ox + i, x);
    _mm512_storeu_si512(oy + i, y);
    _mm512_storeu_si512(oz + i, z);
    _mm512_storeu_si512(ow + i, w);
  }
  if (i < n) {  // the tail as one padded vector: a scalar Philox costs as much as 16 lanes
    alignas(64) uint32_t c[16] = {}, x[16], y[16], z[16], w[16];
    const int r = n - i;
    std::memcpy(c, c0 + i, sizeof(uint32_t) * r);
    avx512(16, c, c1, c2, c3, key, x, y, z, w);
    std::memcpy(ox + i, x, sizeof(uint32_t) * r);
    std::memcpy(oy + i, y, sizeof(uint32_t) * r);
    std::memcpy(oz + i, z, sizeof(uint32_t) * r);
    std::memcpy(ow + i, w, sizeof(uint32_t) * r);
  }
}

__attribute__((target("avx2"))) inline void avx2(int n, const uint32_t* c0, uint32_t c1,
                                                 uint32_t c2, uint32_t c3, u32x2 key, uint32_t* ox,
                                                 uint32_t* oy, uint32_t* oz, uint32_t* ow) {
  using namespace philox_detail;
  const __m256i m0 = _mm256_set1_epi32(static_cast<int>(kM0));
  const __m256i m1 = _mm256_set1_epi32(static_cast<int>(kM1));
  int i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(c0 + i));
    __m256i y = _mm256_set1_epi32(static_cast<int>(c1));
    __m256i z = _mm256_set1_epi32(static_cast<int>(c2));
    __m256i w = _mm256_set1_epi32(static_cast<int>(c3));
    uint32_t k0 = key.x, k1 = key.y;
    for (int r = 0; r < 10; ++r) {
      const __m256i pe0 = _mm256_mul_epu32(x, m0);
      const __m256i po0 = _mm256_mul_epu32(_mm256_srli_epi64(x, 32), m0);
      const __m256i pe1 = _mm256_mul_epu32(z, m1);
      const __m256i po1 = _mm256_mul_epu32(_mm256_srli_epi64(z, 32), m1);
      const __m256i lo0 = _mm256_blend_epi32(pe0, _mm256_slli_epi64(po0, 32), 0xAA);
      const __m256i hi0 = _mm256_blend_epi32(_mm256_srli_epi64(pe0, 32), po0, 0xAA);
      const __m256i lo1 = _mm256_blend_epi32(pe1, _mm256_slli_epi64(po1, 32), 0xAA);
      const __m256i hi1 = _mm256_blend_epi32(_mm256_srli_epi64(pe1, 32), po1, 0xAA);
      x = _mm256_xor_si256(_mm256_xor_si256(hi1, y), _mm256_set1_epi32(static_cast<int>(k0)));
      z = _mm256_xor_si256(_mm256_xor_si256(hi0, w), _mm256_set1_epi32(static_cast<int>(k1)));
      y = lo1;
      w = lo0;
      k0 += kW0;
      k1 += kW1;
    }
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ox + i), x);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(oy + i), y);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(oz + i), z);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ow + i), w);
  }
  if (i < n) {  // the tail as one padded vector
    alignas(32) uint32_t c[8] = {}, x[8], y[8], z[8], w[8];
    const int r = n - i;
    std::memcpy(c, c0 + i, sizeof(uint32_t) * r);
    avx2(8, c, c1, c2, c3, key, x, y, z, w);
    std::memcpy(ox + i, x, sizeof(uint32_t) * r);
    std::memcpy(oy + i, y, sizeof(uint32_t) * r);
    std::memcpy(oz + i, z, sizeof(uint32_t) * r);
    std::memcpy(ow + i, w, sizeof(uint32_t) * r);
  }
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
