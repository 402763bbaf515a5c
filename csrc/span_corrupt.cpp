#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>

#include "span_corrupt_op.h"

namespace mlmfast {
namespace {

at::Tensor per_row(const c10::optional<at::Tensor>& t, const at::Tensor& ids, const char* name) {
  const at::Tensor& x = *t;
  TORCH_CHECK_VALUE(x.device() == ids.device(), "span_corrupt: ", name, " is on ", x.device(),
                    " but input_ids is on ", ids.device());
  TORCH_CHECK_VALUE(x.dim() == 1 && x.size(0) == ids.size(0), "span_corrupt: ", name,
                    " must have shape [batch=", ids.size(0), "], got ", x.sizes());
  TORCH_CHECK_VALUE(x.scalar_type() == at::kLong || x.scalar_type() == at::kInt,
                    "span_corrupt: ", name, " must be int64 or int32, got ", x.scalar_type());
  return x.to(at::kLong).contiguous();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> span_corrupt_out_of_place(
    SpanKernel kernel, const at::Tensor& input_ids, MLMFAST_SPAN_PARAMS) {
  TORCH_CHECK_VALUE(input_ids.dim() == 2,
                    "span_corrupt: input_ids must be 2-D [batch, length], got ", input_ids.dim(),
                    "-D of shape ", input_ids.sizes());
  TORCH_CHECK_VALUE(input_ids.scalar_type() == at::kLong || input_ids.scalar_type() == at::kInt,
                    "span_corrupt: input_ids must be int64 or int32, got ",
                    input_ids.scalar_type());
  const int64_t B = input_ids.size(0), L = input_ids.size(1);
  TORCH_CHECK_VALUE(L < kMaxRowLength,
                    "span_corrupt: rows longer than 2^30 tokens are not supported, got ", L);
  TORCH_CHECK_VALUE(std::isfinite(noise_density) && noise_density > 0.0 && noise_density < 1.0,
                    "span_corrupt: noise_density must be in (0, 1), got ", noise_density);
  TORCH_CHECK_VALUE(std::isfinite(mean_noise_span_length) && mean_noise_span_length >= 1.0,
                    "span_corrupt: mean_noise_span_length must be >= 1, got ",
                    mean_noise_span_length);
  TORCH_CHECK_VALUE(inputs_length >= 1, "span_corrupt: inputs_length must be >= 1, got ",
                    inputs_length);
  TORCH_CHECK_VALUE(targets_length >= 1, "span_corrupt: targets_length must be >= 1, got ",
                    targets_length);
  TORCH_CHECK_VALUE(sentinel_step == 1 || sentinel_step == -1,
                    "span_corrupt: sentinel_step must be -1 (descending, T5's <extra_id_N>) or 1, "
                    "got ",
                    sentinel_step);
  TORCH_CHECK_VALUE(num_sentinels >= 1, "span_corrupt: num_sentinels must be >= 1, got ",
                    num_sentinels);
  TORCH_CHECK_VALUE(sentinel_start >= 0, "span_corrupt: sentinel_start must be >= 0, got ",
                    sentinel_start);
  TORCH_CHECK_VALUE(sentinel_step > 0 || sentinel_start - (num_sentinels - 1) >= 0,
                    "span_corrupt: the sentinels run below 0: sentinel_start=", sentinel_start,
                    " descending, num_sentinels=", num_sentinels);
  TORCH_CHECK_VALUE(sentinel_step < 0 || sentinel_start <= INT64_MAX - (num_sentinels - 1),
                    "span_corrupt: the sentinels overflow int64");
  const SentinelRange range =
      sentinel_step < 0 ? SentinelRange{sentinel_start - (num_sentinels - 1), sentinel_start}
                        : SentinelRange{sentinel_start, sentinel_start + (num_sentinels - 1)};
  for (auto [name, id] : {std::pair<const char*, int64_t>{"eos_token_id", eos_token_id},
                          std::pair<const char*, int64_t>{"pad_token_id", pad_token_id}}) {
    TORCH_CHECK_VALUE(id >= 0, "span_corrupt: ", name, " must be >= 0, got ", id);
    TORCH_CHECK_VALUE(id < range.lo || id > range.hi, "span_corrupt: ", name, "=", id,
                      " is one of the sentinel ids [", range.lo, ", ", range.hi, "]");
  }
  TORCH_CHECK_VALUE(epoch >= 0 && epoch <= int64_t(0xFFFFFFFF),
                    "span_corrupt: epoch must be in [0, 2^32), got ", epoch);

  SpanParams P{};
  P.seed = static_cast<uint64_t>(seed);
  P.epoch = static_cast<uint32_t>(epoch);
  P.noise_density = noise_density;
  P.mean_noise_span_length = mean_noise_span_length;
  P.inputs_length = inputs_length;
  P.targets_length = targets_length;
  P.sentinel_start = sentinel_start;
  P.sentinel_step = sentinel_step;
  P.eos_token_id = eos_token_id;
  P.pad_token_id = pad_token_id;

  SpanInputs in{};
  in.batch = B;
  in.length = L;
  const at::Tensor ids = input_ids.contiguous();
  in.ids = ids.data_ptr();
  in.ids_int64 = ids.scalar_type() == at::kLong;
  at::Tensor lens, host_lens, sids;
  if (lengths.has_value()) {
    lens = per_row(lengths, input_ids, "lengths");
    in.lengths = lens.const_data_ptr<int64_t>();
    host_lens = lens.is_cpu() ? lens : lens.cpu();  // a host sync on a device, for the checks
  }
  if (sample_ids.has_value()) {
    sids = per_row(sample_ids, input_ids, "sample_ids");
    in.sample_ids = sids.const_data_ptr<int64_t>();
  }

  // Every row must have 2..L tokens and fit the output lengths, with enough sentinels.
  const int64_t* hl = host_lens.defined() ? host_lens.const_data_ptr<int64_t>() : nullptr;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = hl ? hl[b] : L;
    TORCH_CHECK_VALUE(n >= 2 && n <= L, "span_corrupt: row ", b, " has length ", n,
                      "; span corruption needs 2 <= length <= ", L,
                      " (the width of input_ids): a noise and a non-noise token at least");
    const SpanCounts c = span_counts(n, noise_density, mean_noise_span_length);
    const int64_t need_in = span_inputs_length(n, c), need_tg = span_targets_length(c);
    TORCH_CHECK_VALUE(c.spans <= num_sentinels, "span_corrupt: row ", b, " (", n, " tokens) has ",
                      c.spans, " noise spans but only num_sentinels=", num_sentinels,
                      " sentinels are available");
    TORCH_CHECK_VALUE(need_in <= inputs_length && need_tg <= targets_length, "span_corrupt: row ",
                      b, " (", n, " tokens, ", c.noise, " noise tokens in ", c.spans,
                      " spans) needs inputs_length >= ", need_in,
                      " and targets_length >= ", need_tg, ", got inputs_length=", inputs_length,
                      " and targets_length=", targets_length);
    if (!hl) break;  // every row has L tokens: one check covers them all
  }

  const auto opts = input_ids.options().dtype(at::kLong);
  at::Tensor out = at::empty({B, inputs_length}, opts);
  at::Tensor att = at::empty({B, inputs_length}, opts);
  at::Tensor labels = at::empty({B, targets_length}, opts);
  if (B > 0) kernel(in, P, range, out, att, labels);
  return {out, att, labels};
}

}  // namespace mlmfast
