// Host-side plumbing of mask_tokens shared by the CPU and CUDA backends: argument checking and the
// forms of the op. The views the kernels read are in mask_inputs.h, the decision rule in masking.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>

#include <cstdint>

#include "mask_inputs.h"
#include "masking.h"

namespace mlmfast {

// Everything the schema carries besides the tensors.
struct MaskArgs {
  c10::optional<at::Tensor> attention_mask, special_tokens_mask, word_ids, pos_ids, sample_ids,
      rng_state;
  c10::optional<at::ArrayRef<double>> pos_probs;
  c10::optional<at::IntArrayRef> span_cdf;  // mode="span": the length thresholds (span_mask.h)
  at::IntArrayRef special_ids;
  double mlm_probability, mask_replace_prob, random_replace_prob;
  int64_t mask_token_id, vocab_size, seed, epoch;
  bool exact, exclude_special_from_random, span_token_replace;
};

// Validates every argument (errors name the argument, its value and what was expected),
// returns contiguous versions of the tensor inputs in `keep` (so the views stay alive) and
// fills the kernel parameters and views.
void prepare_mask_call(const at::Tensor& input_ids, const MaskArgs& a, MaskParams& params,
                       MaskInputs& in, std::vector<at::Tensor>& keep);

// Checks that out/labels can receive the result of masking input_ids (in-place form): the
// right shape, type and device, and no memory shared with each other or with any input.
void check_outputs(const at::Tensor& input_ids, const at::Tensor& labels, const MaskArgs& a);

// A backend: runs the kernel over validated inputs into out/labels (which may alias the ids).
using MaskKernel = void (*)(const MaskInputs&, const MaskParams&, at::Tensor& out,
                            at::Tensor& labels);

// The schema's arguments after the tensors (the same for every form of the op), as schema text
// and as C++ parameters.
#define MLMFAST_MASK_ARGS                                                                    \
  "Tensor? attention_mask, Tensor? special_tokens_mask, Tensor? word_ids, Tensor? pos_ids, " \
  "float[]? pos_probs, Tensor? sample_ids, Tensor? rng_state, int[] special_ids, "           \
  "float mlm_probability, float mask_replace_prob, float random_replace_prob, "              \
  "int mask_token_id, int vocab_size, int seed, int epoch, bool exact, "                     \
  "bool exclude_special_from_random, int[]? span_cdf=None, bool span_token_replace=False"

#define MLMFAST_MASK_PARAMS                                                                      \
  const c10::optional<at::Tensor>&attention_mask,                                                \
      const c10::optional<at::Tensor>&special_tokens_mask,                                       \
      const c10::optional<at::Tensor>&word_ids, const c10::optional<at::Tensor>&pos_ids,         \
      c10::optional<at::ArrayRef<double>> pos_probs, const c10::optional<at::Tensor>&sample_ids, \
      const c10::optional<at::Tensor>&rng_state, at::IntArrayRef special_ids,                    \
      double mlm_probability, double mask_replace_prob, double random_replace_prob,              \
      int64_t mask_token_id, int64_t vocab_size, int64_t seed, int64_t epoch, bool exact,        \
      bool exclude_special_from_random, c10::optional<at::IntArrayRef> span_cdf,                 \
      bool span_token_replace
#define MLMFAST_MASK_ARGS_PASS                                                              \
  attention_mask, special_tokens_mask, word_ids, pos_ids, pos_probs, sample_ids, rng_state, \
      special_ids, mlm_probability, mask_replace_prob, random_replace_prob, mask_token_id,  \
      vocab_size, seed, epoch, exact, exclude_special_from_random, span_cdf, span_token_replace

// Checks that out/labels can receive the result of masking input_ids (out= form): same shape and
// device, contiguous, of the ids' dtype or int64 for int32 ids; out may be input_ids itself;
// otherwise no memory shared with each other or with any input.
void check_into_outputs(const at::Tensor& input_ids, const at::Tensor& out,
                        const at::Tensor& labels, const MaskArgs& a);

// Out-of-place, in-place and out= forms, shared by the backends. `check_first` validates the ids,
// POS classes and word ids before anything is written (CPU; on CUDA it would cost a host sync).
std::tuple<at::Tensor, at::Tensor> mask_tokens_out_of_place(MaskKernel kernel,
                                                            const at::Tensor& input_ids,
                                                            MLMFAST_MASK_PARAMS);
void mask_tokens_in_place(MaskKernel kernel, bool check_first, const at::Tensor& input_ids,
                          const at::Tensor& labels, MLMFAST_MASK_PARAMS);
// `kernel_widens`: the kernel writes int64 outputs for int32 ids itself; otherwise the result is
// computed in the ids' dtype and copied into out/labels.
void mask_tokens_into(MaskKernel kernel, bool kernel_widens, bool check_first,
                      const at::Tensor& input_ids, const at::Tensor& out, const at::Tensor& labels,
                      MLMFAST_MASK_PARAMS);

}  // namespace mlmfast
