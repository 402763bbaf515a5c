// Host-side plumbing of span_corrupt shared by the CPU and CUDA backends (and the CUDA emulation
// of the tests): argument checking and the out-of-place form. The rule is in span_corrupt.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <tuple>
#include <vector>

#include "span_corrupt.h"

namespace mlmfast {

// The schema's arguments after the tensors, as schema text and as C++ parameters.
#define MLMFAST_SPAN_ARGS                                                                    \
  "Tensor? lengths, Tensor? sample_ids, float noise_density, float mean_noise_span_length, " \
  "int inputs_length, int targets_length, int sentinel_start, int sentinel_step, "           \
  "int num_sentinels, int eos_token_id, int pad_token_id, int seed, int epoch"

#define MLMFAST_SPAN_PARAMS                                                            \
  const c10::optional<at::Tensor>&lengths, const c10::optional<at::Tensor>&sample_ids, \
      double noise_density, double mean_noise_span_length, int64_t inputs_length,      \
      int64_t targets_length, int64_t sentinel_start, int64_t sentinel_step,           \
      int64_t num_sentinels, int64_t eos_token_id, int64_t pad_token_id, int64_t seed, \
      int64_t epoch
#define MLMFAST_SPAN_ARGS_PASS                                                               \
  lengths, sample_ids, noise_density, mean_noise_span_length, inputs_length, targets_length, \
      sentinel_start, sentinel_step, num_sentinels, eos_token_id, pad_token_id, seed, epoch

// The sentinel ids a call may write: [lo, hi].
struct SentinelRange {
  int64_t lo, hi;
};

// A backend: corrupts the validated batch into the int64 outputs ids/att [B, inputs_length] and
// labels [B, targets_length]. The CPU one also checks the ids against the sentinel range.
using SpanKernel = void (*)(const SpanInputs&, const SpanParams&, SentinelRange, at::Tensor& ids,
                            at::Tensor& att, at::Tensor& labels);

// Validates every argument and every row's length (errors are ValueErrors naming the argument or
// the row, the value and what was expected), then runs `kernel`. Returns (input_ids,
// attention_mask, labels), int64. Row lengths on a device are copied to the host for the check.
std::tuple<at::Tensor, at::Tensor, at::Tensor> span_corrupt_out_of_place(
    SpanKernel kernel, const at::Tensor& input_ids, MLMFAST_SPAN_PARAMS);

}  // namespace mlmfast
