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

// A row's units, as the word paths see them: a run of eligible tokens of one word (consecutive,
// same word id), or an eligible token outside words (word id < 0), in position order. What the
// layout carries from one chunk of the row to the next (word_units, close_units in kernel_rows.h).
struct UnitRun {
  int64_t prev_w = -2;     // the previous token's word id when it was eligible, in a word; else -2
  int64_t last_w = -1;     // the word id of the last eligible token in a word (-1: none yet)
  int32_t prev_allow = 0;  // the previous token was eligible
  int32_t irregular =
      0;  // a run started with a word id <= last_w: a word came back, or out of order
  int32_t nu = 0, ns = 0;  // units started, units stopped
  int64_t eligible = 0;    // eligible tokens
};

// The units of the m tokens of a chunk at row position c (allow[q]: eligible; wid[q]: word id):
// first[s.nu++] = the position of each token that starts one; stop[s.ns++] = the position after
// each one that ends before the chunk does (a unit still open at the chunk's end stops in a later
// chunk, or at close_units). Where `ctr` is given, ctr and lane say where each unit's draw is:
// lane lane[k] of Philox block ctr[k] (the word's block for a word, the token's selection block
// otherwise; masking.h). Each array is written at indices below c + m + 8: size it by the row,
// plus 8.
using WordUnitsFn = void (*)(int m, const uint8_t* allow, const int64_t* wid, int32_t c, UnitRun& s,
                             int32_t* first, int32_t* stop, uint32_t* ctr, int32_t* lane);

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
  WordUnitsFn word_units;
  // true when one of the n word ids is >= 2^32
  bool (*words_above_u32)(const int64_t* w, int64_t n);

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
