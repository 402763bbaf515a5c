// The CPU backend of span_corrupt: rows in parallel (at::parallel_for), each thread with its own
// cut bitmap; ids that collide with the sentinel range are reported after the parallel region
// (the lowest flat index, so the message does not depend on the thread count). The rule comes
// from span_corrupt.h.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "span_corrupt_op.h"

namespace mlmfast {
namespace {

constexpr int64_t kNoProblem = INT64_MAX;

template <typename T>
void run_cpu(const SpanInputs& in, const SpanParams& P, SentinelRange range, int64_t* out,
             int64_t* att, int64_t* labels) {
  const int64_t B = in.batch, L = in.length;
  const T* ids = static_cast<const T*>(in.ids);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(L, 1));
  std::atomic<int64_t> collision{kNoProblem};
  at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
    std::vector<uint32_t> bits(static_cast<size_t>(span_bitmap_words(L)));
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t n = in.lengths ? in.lengths[b] : L;
      const T* src = ids + b * L;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t v = static_cast<int64_t>(src[i]);
        if (v >= range.lo && v <= range.hi) {
          int64_t cur = collision.load(std::memory_order_relaxed);
          const int64_t f = b * L + i;
          while (f < cur && !collision.compare_exchange_weak(cur, f, std::memory_order_relaxed)) {
          }
          break;
        }
      }
      std::fill(bits.begin(), bits.begin() + span_bitmap_words(n), 0u);
      const uint64_t sid = in.sample_ids ? static_cast<uint64_t>(in.sample_ids[b]) : b;
      span_corrupt_row<T, int64_t>(P, row_key(P.seed, P.epoch, sid), src, n, bits.data(),
                                   out + b * P.inputs_length, att + b * P.inputs_length,
                                   labels + b * P.targets_length);
    }
  });
  const int64_t f = collision.load();
  TORCH_CHECK_VALUE(f == kNoProblem, "span_corrupt: input_ids[", f / std::max<int64_t>(L, 1), ", ",
                    f % std::max<int64_t>(L, 1),
                    "] = ", f == kNoProblem ? 0 : static_cast<int64_t>(ids[f]),
                    " is a sentinel id: the sentinels [", range.lo, ", ", range.hi,
                    "] must not occur in the rows");
}

void cpu_kernel(const SpanInputs& in, const SpanParams& P, SentinelRange range, at::Tensor& out,
                at::Tensor& att, at::Tensor& labels) {
  if (in.ids_int64)
    run_cpu<int64_t>(in, P, range, out.data_ptr<int64_t>(), att.data_ptr<int64_t>(),
                     labels.data_ptr<int64_t>());
  else
    run_cpu<int32_t>(in, P, range, out.data_ptr<int64_t>(), att.data_ptr<int64_t>(),
                     labels.data_ptr<int64_t>());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> span_corrupt_cpu(const at::Tensor& input_ids,
                                                                MLMFAST_SPAN_PARAMS) {
  return span_corrupt_out_of_place(&cpu_kernel, input_ids, MLMFAST_SPAN_ARGS_PASS);
}

}  // namespace

TORCH_LIBRARY_IMPL(mlmfast, CPU, m) { m.impl("span_corrupt", &span_corrupt_cpu); }

}  // namespace mlmfast
