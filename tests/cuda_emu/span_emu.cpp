// The CUDA span_corrupt kernel (csrc/cuda/span_kernels.cuh, unchanged) run on the CPU through the
// emulation of shim.h, behind the op's host code (csrc/span_corrupt.cpp): registered as
// mlmfast_emu::span_corrupt for CPU tensors. The scratch bitmap is garbage-filled, as device
// memory from the caching allocator may be. Built and used by tests/test_span_corrupt.py.
#include <torch/library.h>

#include <vector>

#include "shim.h"
#include "span_corrupt_op.h"

namespace mlmfast {
namespace {

#include "cuda/span_kernels.cuh"

void emu_kernel(const SpanInputs& in, const SpanParams& P, SentinelRange, at::Tensor& out,
                at::Tensor& att, at::Tensor& labels) {
  std::vector<uint32_t> scratch(in.batch * span_bitmap_words(in.length), 0xA5A5A5A5u);
  int64_t* o = out.data_ptr<int64_t>();
  int64_t* a = att.data_ptr<int64_t>();
  int64_t* l = labels.data_ptr<int64_t>();
  if (in.ids_int64)
    cuda_emu::launch(dim3(span_grid(in.batch)), dim3(kSpanThreads), 0,
                     [&] { span_corrupt_kernel<int64_t>(in, P, o, a, l, scratch.data()); });
  else
    cuda_emu::launch(dim3(span_grid(in.batch)), dim3(kSpanThreads), 0,
                     [&] { span_corrupt_kernel<int32_t>(in, P, o, a, l, scratch.data()); });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> span_corrupt_emu(const at::Tensor& input_ids,
                                                                MLMFAST_SPAN_PARAMS) {
  return span_corrupt_out_of_place(&emu_kernel, input_ids, MLMFAST_SPAN_ARGS_PASS);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mlmfast_emu, m) {
  m.def("span_corrupt(Tensor input_ids, " MLMFAST_SPAN_ARGS ") -> (Tensor, Tensor, Tensor)",
        &span_corrupt_emu);
}

}  // namespace mlmfast
