// The raw views of a batch that the kernels read (CPU and CUDA), and how they read the optional
// per-token inputs. Free of ATen so that the CPU kernels compiled with instruction-set flags
// (cpu/kernel_avx2.cpp, cpu/kernel_avx512.cpp) include no torch code.
#pragma once

#include <cstdint>

#include "philox.h"

namespace mlmfast {

// Element kinds for optional per-token inputs, read through load_flag / load_word.
enum : int32_t { kNone = 0, kByte = 1, kInt32 = 4, kInt64 = 8 };

struct MaskInputs {
  int64_t batch = 0, length = 0;
  const void* ids = nullptr;  // int32 or int64, [B, L] contiguous
  int32_t ids_kind = kInt64;  // kInt32 or kInt64
  const void* attention = nullptr;
  int32_t attention_kind = kNone;
  const void* special_mask = nullptr;
  int32_t special_mask_kind = kNone;
  const void* word_ids = nullptr;
  int32_t word_kind = kNone;
  const uint8_t* pos_ids = nullptr;
  const int64_t* sample_ids = nullptr;  // nullptr -> the row index
  const int64_t* rng_state = nullptr;   // nullptr -> params.seed/epoch; else {seed, epoch}
  bool exact = false;
};

MLMFAST_HD bool load_flag(const void* p, int32_t kind, int64_t i) {
  switch (kind) {
    case kByte:
      return static_cast<const uint8_t*>(p)[i] != 0;
    case kInt32:
      return static_cast<const int32_t*>(p)[i] != 0;
    case kInt64:
      return static_cast<const int64_t*>(p)[i] != 0;
    default:
      return false;
  }
}

MLMFAST_HD int64_t load_word(const void* p, int32_t kind, int64_t i) {
  if (kind == kInt32) return static_cast<const int32_t*>(p)[i];
  if (kind == kInt64) return static_cast<const int64_t*>(p)[i];
  return -1;
}

}  // namespace mlmfast
