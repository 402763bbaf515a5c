// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11),
// the counter-based generator behind every mlmfast decision. Host and device: the same
// source compiles for the CPU kernel and the CUDA kernel, which is what makes their masks
// identical bit for bit. Known-answer tested against the Random123 kat_vectors
// (tests/test_philox.py).
#pragma once

#include <cstdint>

// Always inlined, on the host as on the device (nvcc's __forceinline__ is always_inline in host
// code too): no out-of-line copy of these functions is ever emitted, so a copy compiled with
// AVX-512 flags (cpu/kernel_avx512.cpp) cannot stand in for the portable one at link time.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define MLMFAST_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
#define MLMFAST_HD __attribute__((always_inline)) inline
#else
#define MLMFAST_HD inline
#endif

namespace mlmfast {

struct u32x4 {
  uint32_t x, y, z, w;
};

struct u32x2 {
  uint32_t x, y;
};

namespace philox_detail {
constexpr uint32_t kM0 = 0xD2511F53u;
constexpr uint32_t kM1 = 0xCD9E8D57u;
constexpr uint32_t kW0 = 0x9E3779B9u;  // golden ratio
constexpr uint32_t kW1 = 0xBB67AE85u;  // sqrt(3) - 1

MLMFAST_HD void mulhilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  lo = a * b;
  hi = __umulhi(a, b);
#else
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  lo = static_cast<uint32_t>(p);
  hi = static_cast<uint32_t>(p >> 32);
#endif
}

MLMFAST_HD u32x4 round(u32x4 c, u32x2 k) {
  uint32_t hi0, lo0, hi1, lo1;
  mulhilo(kM0, c.x, hi0, lo0);
  mulhilo(kM1, c.z, hi1, lo1);
  return u32x4{hi1 ^ c.y ^ k.x, lo1, hi0 ^ c.w ^ k.y, lo0};
}
}  // namespace philox_detail

// Ten rounds, key bumped by the Weyl constants between rounds (Random123's philox4x32_R(10)).
MLMFAST_HD u32x4 philox4x32_10(u32x4 ctr, u32x2 key) {
  using namespace philox_detail;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int r = 0; r < 9; ++r) {
    ctr = round(ctr, key);
    key.x += kW0;
    key.y += kW1;
  }
  return round(ctr, key);
}

MLMFAST_HD uint32_t lane(const u32x4& v, int i) {
  return i == 0 ? v.x : (i == 1 ? v.y : (i == 2 ? v.z : v.w));
}

}  // namespace mlmfast
