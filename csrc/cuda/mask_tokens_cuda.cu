// CUDA kernels of mlmfast. Lean headers only (no torch/extension.h, no ATen/cuda/CUDAContext.h):
// they compile in half the time and need no cuBLAS/cuSPARSE headers. The decision rule comes
// from masking.h, the same code the CPU kernel runs, so both backends agree bit for bit.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "mask_tokens.h"
#include "span_mask.h"

namespace mlmfast {
namespace {

#include "cuda/mask_kernels.cuh"
#include "cuda/span_mask_kernels.cuh"

template <typename T>
void launch(const MaskInputs& in, const MaskParams& P, T* out, T* lab, c10::Device device,
            cudaStream_t stream) {
  const int64_t B = in.batch, L = in.length;
  if (P.n_span > 0) {  // span mode: one block per row, as exact mode
    const size_t bytes = span_shared_bytes(L);
    int optin = 0;
    C10_CUDA_CHECK(
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device.index()));
    if (bytes <= static_cast<size_t>(optin)) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(span_mask_kernel<T>,
                                          cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(bytes)));
      span_mask_kernel<T>
          <<<static_cast<unsigned>(B), kSpanMaskThreads, bytes, stream>>>(in, P, out, lab, nullptr);
    } else {
      // rows too long for shared memory: the row's slice of a buffer from the caching allocator
      // (stream-ordered: freed here, reused only after the kernel)
      const at::Tensor scratch = at::empty({B * static_cast<int64_t>(span_row_stride(L))},
                                           at::TensorOptions().dtype(at::kByte).device(device));
      span_mask_kernel<T><<<static_cast<unsigned>(B), kSpanMaskThreads, 0, stream>>>(
          in, P, out, lab, scratch.data_ptr<uint8_t>());
    }
  } else if (in.exact) {
    const size_t bytes = exact_shared_bytes(L);
    int optin = 0;
    C10_CUDA_CHECK(
        cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device.index()));
    if (bytes <= static_cast<size_t>(optin)) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(
          exact_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
      exact_kernel<T>
          <<<static_cast<unsigned>(B), kExactThreads, bytes, stream>>>(in, P, out, lab, nullptr);
    } else {
      // rows too long for shared memory: each block works in its row's slice of a buffer from
      // the caching allocator (stream-ordered: freed here, reused only after the kernel)
      const at::Tensor scratch = at::empty({B * static_cast<int64_t>(exact_row_stride(L))},
                                           at::TensorOptions().dtype(at::kByte).device(device));
      exact_kernel<T><<<static_cast<unsigned>(B), kExactThreads, 0, stream>>>(
          in, P, out, lab, scratch.data_ptr<uint8_t>());
    }
  } else {
    const dim3 grid(static_cast<unsigned>(B), bernoulli_grid_y(L));
    if (bernoulli_vectorised(in, out, lab))
      bernoulli_kernel<T, true><<<grid, kThreads, 0, stream>>>(in, P, out, lab);
    else
      bernoulli_kernel<T, false><<<grid, kThreads, 0, stream>>>(in, P, out, lab);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void cuda_kernel(const MaskInputs& in, const MaskParams& P, at::Tensor& out, at::Tensor& labels) {
  TORCH_CHECK(in.batch <= 0x7FFFFFFF, "mask_tokens: batch too large for one CUDA launch");
  const c10::cuda::CUDAGuard guard(out.device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (out.scalar_type() == at::kLong)
    launch<int64_t>(in, P, out.data_ptr<int64_t>(), labels.data_ptr<int64_t>(), out.device(),
                    stream);
  else
    launch<int32_t>(in, P, out.data_ptr<int32_t>(), labels.data_ptr<int32_t>(), out.device(),
                    stream);
}

std::tuple<at::Tensor, at::Tensor> mask_tokens_cuda(const at::Tensor& input_ids,
                                                    MLMFAST_MASK_PARAMS) {
  return mask_tokens_out_of_place(&cuda_kernel, input_ids, MLMFAST_MASK_ARGS_PASS);
}

void mask_tokens_inplace_cuda(const at::Tensor& input_ids, const at::Tensor& labels,
                              MLMFAST_MASK_PARAMS) {
  // ids are not range-checked on CUDA: that would need a host sync.
  mask_tokens_in_place(&cuda_kernel, /*check_first=*/false, input_ids, labels,
                       MLMFAST_MASK_ARGS_PASS);
}

void mask_tokens_into_cuda(const at::Tensor& input_ids, const at::Tensor& out,
                           const at::Tensor& labels, MLMFAST_MASK_PARAMS) {
  // int32 ids into int64 outputs: the int32 kernel, then a widening copy on the stream.
  mask_tokens_into(&cuda_kernel, /*kernel_widens=*/false, /*check_first=*/false, input_ids, out,
                   labels, MLMFAST_MASK_ARGS_PASS);
}

}  // namespace

TORCH_LIBRARY_IMPL(mlmfast, CUDA, m) {
  m.impl("mask_tokens", &mask_tokens_cuda);
  m.impl("mask_tokens_", &mask_tokens_inplace_cuda);
  m.impl("mask_tokens_into", &mask_tokens_into_cuda);
}

}  // namespace mlmfast
