// How the CPU kernel's files meet. Each instruction set's kernel (kernel_portable.cpp,
// kernel_avx2.cpp, kernel_avx512.cpp, each compiled with its own flags) fills a Kernel table;
// dispatch.cpp picks one table per process; mask_tokens_cpu.cpp runs the op's rows through it:
// the default mode's plain rows in the kernel itself, rows with word ids or POS classes and
// exact mode in word_exact.cpp, portable code that draws through the table.
#pragma once

#include <cstdint>
#include <type_traits>

#include "mask_inputs.h"
#include "masking.h"

namespace mlmfast::cpu {

// The first offending flat index of each kind in one thread's rows (kNoProblem: none). The op
// merges them, lowest index first, so that its message does not depend on the thread count.
constexpr int64_t kNoProblem = INT64_MAX;
struct Problems {
  int64_t bad_id = kNoProblem;    // an attended id outside [0, vocab_size)
  int64_t bad_pos = kNoProblem;   // a POS class outside the table
  int64_t bad_word = kNoProblem;  // a word id >= 2^32
};

// What the scan of a chunk of a row found (kernel_rows.h).
struct ChunkScan {
  uint8_t bad;  // an attended id outside [0, vocab_size)
  int last;     // 1 + the last token that may be selected, 0 if none
};

// Eligibility of a chunk of m tokens at flat index `off` (allow[q]), special ids tested for lists
// of up to kInlineSpecials ids (kernel_rows.h).
template <typename T>
using ScanChunk = ChunkScan (*)(int m, const T* ids, const MaskInputs& in, int64_t off,
                                const MaskParams& P, uint8_t* allow);

// Bernoulli-mode rows [b0, b1) without word ids or POS classes: ids of type T, outputs of type TO
// (T, or int64 for int32 ids).
template <typename T, typename TO>
using PlainRows = void (*)(const MaskInputs& in, const MaskParams& P, int64_t b0, int64_t b1,
                           TO* out, TO* lab, Problems& pr);

// The code of one instruction set.
struct Kernel {
  const char* name;  // as MLMFAST_CPU_ISA spells it
  // out_*[i] = Philox4x32-10(counter (c0[i], c1, c2, c3), key), for i < n
  void (*philox)(int n, const uint32_t* c0, uint32_t c1, uint32_t c2, uint32_t c3, u32x2 key,
                 uint32_t* ox, uint32_t* oy, uint32_t* oz, uint32_t* ow);
  ScanChunk<int64_t> scan_i64;
  ScanChunk<int32_t> scan_i32;
  PlainRows<int64_t, int64_t> plain_i64;
  PlainRows<int32_t, int32_t> plain_i32;
  PlainRows<int32_t, int64_t> plain_i32_to_i64;

  template <typename T>
  ScanChunk<T> scan() const {
    if constexpr (std::is_same_v<T, int64_t>)
      return scan_i64;
    else
      return scan_i32;
  }
  template <typename T, typename TO>
  PlainRows<T, TO> plain() const {
    if constexpr (std::is_same_v<T, int64_t>)
      return plain_i64;
    else if constexpr (std::is_same_v<TO, int32_t>)
      return plain_i32;
    else
      return plain_i32_to_i64;
  }
};

// Each instruction set's table, defined by its kernel; only dispatch.cpp reads them.
namespace portable {
extern const Kernel kernel;
}
namespace avx2 {
extern const Kernel kernel;
}
namespace avx512 {
extern const Kernel kernel;
}

// Rows [b0, b1) of mode="span" (span_rows.cpp, the rule of span_mask.h).
template <typename T, typename TO>
void span_rows(const MaskInputs& in, const MaskParams& P, int64_t b0, int64_t b1, TO* out, TO* lab,
               Problems& pr);

// The table of the instruction set this process runs (dispatch.cpp).
const Kernel& cpu_kernel();

// Rows [b0, b1) in exact mode or with word ids or POS classes, their draws and chunk scans from
// `kernel` (word_exact.cpp).
template <typename T, typename TO>
void word_exact_rows(const Kernel& kernel, const MaskInputs& in, const MaskParams& P, int64_t b0,
                     int64_t b1, TO* out, TO* lab, Problems& pr);

}  // namespace mlmfast::cpu
