// CUDA backend of span_corrupt (lean headers only, as mask_tokens_cuda.cu). The rule comes from
// span_corrupt.h, the same code the CPU kernel runs, so both backends agree bit for bit. Row
// lengths given on the device are copied to the host for the checks; the ids are not checked
// against the sentinel range (a device-wide reduction and a sync; the CPU op checks them).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include "span_corrupt_op.h"

namespace mlmfast {
namespace {

#include "cuda/span_kernels.cuh"

void cuda_kernel(const SpanInputs& in, const SpanParams& P, SentinelRange, at::Tensor& out,
                 at::Tensor& att, at::Tensor& labels) {
  const c10::cuda::CUDAGuard guard(out.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  // stream-ordered: freed here, reused by the caching allocator only after the kernel
  const at::Tensor scratch = at::empty({in.batch * span_bitmap_words(in.length)},
                                       at::TensorOptions().dtype(at::kInt).device(out.device()));
  uint32_t* bits = reinterpret_cast<uint32_t*>(scratch.data_ptr<int32_t>());
  if (in.ids_int64)
    span_corrupt_kernel<int64_t><<<span_grid(in.batch), kSpanThreads, 0, stream>>>(
        in, P, out.data_ptr<int64_t>(), att.data_ptr<int64_t>(), labels.data_ptr<int64_t>(), bits);
  else
    span_corrupt_kernel<int32_t><<<span_grid(in.batch), kSpanThreads, 0, stream>>>(
        in, P, out.data_ptr<int64_t>(), att.data_ptr<int64_t>(), labels.data_ptr<int64_t>(), bits);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> span_corrupt_cuda(const at::Tensor& input_ids,
                                                                 MLMFAST_SPAN_PARAMS) {
  return span_corrupt_out_of_place(&cuda_kernel, input_ids, MLMFAST_SPAN_ARGS_PASS);
}

}  // namespace

TORCH_LIBRARY_IMPL(mlmfast, CUDA, m) { m.impl("span_corrupt", &span_corrupt_cuda); }

}  // namespace mlmfast
