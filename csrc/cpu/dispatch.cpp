// The one place where the CPU kernel's instruction set is chosen, once per process: the widest one
// the processor has, or less when MLMFAST_CPU_ISA says so ("portable", "avx2"; "avx512" or any
// other value: no cap), so that tests can run every path on one machine. One wheel thus serves
// every x86-64 machine; elsewhere only the portable kernel is built.
//
// How AVX code is kept off processors without it. Each kernel is its own translation unit,
// compiled with its own flags (setup.py), and only this file decides whether it may run. Inline
// functions and templates would undo that: every translation unit that uses one emits a copy as a
// weak symbol, and the linker keeps one copy, any one, for the whole library; were it the copy
// compiled with -mavx512f, the portable code would run AVX-512 instructions too (-fvisibility=
// hidden does not help: it hides symbols from other libraries, not from the other objects of this
// one). So no copy compiled with AVX flags shares a name with any other code:
//  - each kernel's code, and the row code it compiles from kernel_rows.h and kernel_groups.h, lives
//    in a namespace named after its instruction set (mlmfast::cpu::portable, avx2, avx512), as
//    ATen does with CPU_CAPABILITY, so its templates and inline functions have their own symbols;
//  - what the kernels use from the shared headers (philox.h, masking.h, mask_inputs.h) is always
//    inlined (MLMFAST_HD) and never emitted on its own, as are the intrinsics; they use no other
//    library code that could be (no std::min, no containers, no smart pointers);
//  - setup.py checks it after compiling each AVX kernel, at every optimisation level (DEBUG=1
//    too): every function the object defines for the linker must be in its instruction set's
//    namespace, or the build fails.
#include <cstdlib>
#include <cstring>

#include "cpu/kernel.h"

namespace mlmfast::cpu {
namespace {

enum Isa { kPortable = 0, kAvx2, kAvx512 };

Isa widest_available() {
#if MLMFAST_X86_KERNELS
  // What each kernel was compiled for (setup.py's flags). Xeon Phi's AVX-512, without BW and VL,
  // runs the AVX2 kernel.
  __builtin_cpu_init();
  const bool popcnt = __builtin_cpu_supports("popcnt");
  if (popcnt && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl"))
    return kAvx512;
  if (popcnt && __builtin_cpu_supports("avx2")) return kAvx2;
#endif
  return kPortable;
}

Isa chosen() {
  const Isa best = widest_available();
  const char* want = std::getenv("MLMFAST_CPU_ISA");
  if (want == nullptr || *want == '\0') return best;
  const Isa cap = std::strcmp(want, "portable") == 0
                      ? kPortable
                      : (std::strcmp(want, "avx2") == 0 ? kAvx2 : kAvx512);
  return cap < best ? cap : best;
}

}  // namespace

const Kernel& cpu_kernel() {
  static const Kernel& kernel = []() -> const Kernel& {
    switch (chosen()) {
#if MLMFAST_X86_KERNELS
      case kAvx512:
        return avx512::kernel;
      case kAvx2:
        return avx2::kernel;
#endif
      default:
        return portable::kernel;
    }
  }();
  return kernel;
}

}  // namespace mlmfast::cpu
