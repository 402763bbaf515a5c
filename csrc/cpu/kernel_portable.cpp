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

struct Isa : BodyPrimitives {
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
  template <typename T, typename TO>
  static void plain_rows(const MaskInputs& in, const MaskParams& P, int64_t b0, int64_t b1, TO* out,
                         TO* lab, Problems& pr) {
    plain_rows_by_row<Isa, T>(Isa{}, in, P, b0, b1, out, lab, pr);
  }
};

}  // namespace

extern const Kernel kernel = kernel_table<Isa>("portable");

}  // namespace mlmfast::cpu::portable
