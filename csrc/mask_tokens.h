// Host-side plumbing of mask_tokens shared by the CPU and CUDA backends: argument checking and
// the raw views the kernels read. The decision rule itself lives in masking.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include <cstdint>

#include "masking.h"

namespace mlmfast {

// Element kinds for optional per-token inputs, read through load_flag / load_word.
enum : int32_t { kNone = 0, kByte = 1, kInt32 = 4, kInt64 = 8 };

struct MaskInputs {
  int64_t batch = 0, length = 0;
  const void* ids = nullptr;  // int32 or int64, [B, L] contiguous
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

// Everything the schema carries besides the tensors.
struct MaskArgs {
  c10::optional<at::Tensor> attention_mask, special_tokens_mask, word_ids, pos_ids, sample_ids,
      rng_state;
  c10::optional<at::ArrayRef<double>> pos_probs;
  at::IntArrayRef special_ids;
  double mlm_probability, mask_replace_prob, random_replace_prob;
  int64_t mask_token_id, vocab_size, seed, epoch;
  bool exact, exclude_special_from_random;
};

// Validates every argument (errors name the argument, its value and what was expected),
// returns contiguous versions of the tensor inputs in `keep` (so the views stay alive) and
// fills the kernel parameters and views.
void prepare_mask_call(const at::Tensor& input_ids, const MaskArgs& a, MaskParams& params,
                       MaskInputs& in, std::vector<at::Tensor>& keep);

// Checks that out/labels can receive the result of masking input_ids (in-place form).
void check_outputs(const at::Tensor& input_ids, const at::Tensor& labels);

}  // namespace mlmfast
