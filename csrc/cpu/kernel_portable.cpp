// The CPU kernel on every processor: compiled without instruction-set flags, it is what runs
// where dispatch.cpp finds neither AVX2 nor AVX-512 (ARM, older x86) or MLMFAST_CPU_ISA=portable
// asks for it. The default mode's rows go row by row (kernel_rows.h) on the scalar Philox of
// philox.h, with the chunk loops the compiler vectorises for the baseline instruction set.
#define MLMFAST_CPU_CAPABILITY portable

#include <cstdint>

#include "cpu/kernel.h"
#include "cpu/kernel_rows.h"
#include "philox.h"

namespace mlmfast::cpu::portable {
namespace {

struct Isa {
  static void philox(int n, const uint32_t* c0, uint32_t c1, uint32_t c2, uint32_t c3, u32x2 key,
                     uint32_t* ox, uint32_t* oy, uint32_t* oz, uint32_t* ow) {
    for (int i = 0; i < n; ++i) {
      const u32x4 r = philox4x32_10(u32x4{c0[i], c1, c2, c3}, key);
      ox[i] = r.x;
      oy[i] = r.y;
      oz[i] = r.z;
      ow[i] = r.w;
    }
  }
  // Out of line: inlined into plain_row, its loops compile to more instructions for the baseline
  // instruction set (callgrind, [256, 512] rows).
  template <typename T>
  __attribute__((noinline)) static ChunkScan scan(int m, const T* ids, const MaskInputs& in,
                                                  int64_t off, const MaskParams& P,
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

template <typename T, typename TO>
void plain_rows(const MaskInputs& in, const MaskParams& P, int64_t b0, int64_t b1, TO* out, TO* lab,
                Problems& pr) {
  plain_rows_by_row<Isa, T>(Isa{}, in, P, b0, b1, out, lab, pr);
}

}  // namespace

extern const Kernel kernel = {"portable",
                              &Isa::philox,
                              &Isa::scan<int64_t>,
                              &Isa::scan<int32_t>,
                              &plain_rows<int64_t, int64_t>,
                              &plain_rows<int32_t, int32_t>,
                              &plain_rows<int32_t, int64_t>,
                              &Isa::word_units,
                              &Isa::words_above};

}  // namespace mlmfast::cpu::portable
