// The CUDA op's kernels (csrc/cuda/mask_kernels.cuh, span_mask_kernels.cuh), unchanged, run on the
// CPU through the emulation of shim.h, behind the CUDA op's host code: the same argument checks
// (csrc/mask_tokens.cpp), the same launch geometry, no id check (as on CUDA). Registered as
// mlmfast_emu::mask_tokens / mask_tokens_ / mask_tokens_into for CPU tensors, plus
// mlmfast_emu::set_limits (a short grid makes the Bernoulli kernel loop over long rows, little
// shared memory sends exact mode to its global scratch path) and a self-test of the emulation
// (divergent_barrier_demo).
// Built and used by tests/test_cuda_emulated.py.
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "mask_tokens.h"
#include "shim.h"
#include "span_mask.h"

namespace mlmfast {
namespace {

#include "cuda/mask_kernels.cuh"
#include "cuda/span_mask_kernels.cuh"

// The device's limits: gridDim.y and the shared memory a block may opt into (H100/H200's).
int64_t g_max_grid_y = kMaxGridY;
int64_t g_max_shared = 232448;

template <typename T>
void launch(const MaskInputs& in, const MaskParams& P, T* out, T* lab) {
  const int64_t B = in.batch, L = in.length;
  if (P.n_span > 0) {  // span mode: shared memory where it fits, else a garbage-filled scratch
    const size_t bytes = span_shared_bytes(L);
    if (bytes <= static_cast<size_t>(g_max_shared)) {
      cuda_emu::launch(dim3(static_cast<unsigned>(B)), dim3(kSpanMaskThreads), bytes,
                       [&] { span_mask_kernel<T>(in, P, out, lab, nullptr); });
    } else {
      std::vector<unsigned char> scratch(B * span_row_stride(L), 0xA5);
      cuda_emu::launch(dim3(static_cast<unsigned>(B)), dim3(kSpanMaskThreads), 0,
                       [&] { span_mask_kernel<T>(in, P, out, lab, scratch.data()); });
    }
  } else if (in.exact) {
    const size_t bytes = exact_shared_bytes(L);
    if (bytes <= static_cast<size_t>(g_max_shared)) {
      cuda_emu::launch(dim3(static_cast<unsigned>(B)), dim3(kExactThreads), bytes,
                       [&] { exact_kernel<T>(in, P, out, lab, nullptr); });
    } else {  // the global scratch buffer, garbage-filled like shared memory
      std::vector<unsigned char> scratch(B * exact_row_stride(L), 0xA5);
      cuda_emu::launch(dim3(static_cast<unsigned>(B)), dim3(kExactThreads), 0,
                       [&] { exact_kernel<T>(in, P, out, lab, scratch.data()); });
    }
  } else {
    const dim3 grid(static_cast<unsigned>(B), bernoulli_grid_y(L, g_max_grid_y));
    if (bernoulli_vectorised(in, out, lab))
      cuda_emu::launch(grid, dim3(kThreads), 0,
                       [&] { bernoulli_kernel<T, true>(in, P, out, lab); });
    else
      cuda_emu::launch(grid, dim3(kThreads), 0,
                       [&] { bernoulli_kernel<T, false>(in, P, out, lab); });
  }
}

void emu_kernel(const MaskInputs& in, const MaskParams& P, at::Tensor& out, at::Tensor& labels) {
  if (out.scalar_type() == at::kLong)
    launch<int64_t>(in, P, out.data_ptr<int64_t>(), labels.data_ptr<int64_t>());
  else
    launch<int32_t>(in, P, out.data_ptr<int32_t>(), labels.data_ptr<int32_t>());
}

std::tuple<at::Tensor, at::Tensor> mask_tokens_emu(const at::Tensor& input_ids,
                                                   MLMFAST_MASK_PARAMS) {
  return mask_tokens_out_of_place(&emu_kernel, input_ids, MLMFAST_MASK_ARGS_PASS);
}

void mask_tokens_inplace_emu(const at::Tensor& input_ids, const at::Tensor& labels,
                             MLMFAST_MASK_PARAMS) {
  mask_tokens_in_place(&emu_kernel, /*check_first=*/false, input_ids, labels,
                       MLMFAST_MASK_ARGS_PASS);
}

void mask_tokens_into_emu(const at::Tensor& input_ids, const at::Tensor& out,
                          const at::Tensor& labels, MLMFAST_MASK_PARAMS) {
  mask_tokens_into(&emu_kernel, /*kernel_widens=*/false, /*check_first=*/false, input_ids, out,
                   labels, MLMFAST_MASK_ARGS_PASS);
}

void set_limits(int64_t max_grid_y, int64_t max_shared_bytes) {
  TORCH_CHECK(max_grid_y >= 1 && max_grid_y <= kMaxGridY, "set_limits: max_grid_y must be in [1, ",
              kMaxGridY, "]");
  TORCH_CHECK(max_shared_bytes >= 0, "set_limits: max_shared_bytes must be >= 0");
  g_max_grid_y = max_grid_y;
  g_max_shared = max_shared_bytes;
}

// A kernel with a __syncthreads only thread 0 reaches: the emulation must report it.
void divergent_barrier_demo() {
  cuda_emu::launch(dim3(2), dim3(4), 0, [] {
    if (threadIdx.x == 0) __syncthreads();
  });
}

}  // namespace

TORCH_LIBRARY(mlmfast_emu, m) {
  m.def("mask_tokens(Tensor input_ids, " MLMFAST_MASK_ARGS ") -> (Tensor, Tensor)",
        &mask_tokens_emu);
  m.def("mask_tokens_(Tensor(a!) input_ids, Tensor(b!) labels, " MLMFAST_MASK_ARGS ") -> ()",
        &mask_tokens_inplace_emu);
  m.def("mask_tokens_into(Tensor input_ids, Tensor(a!) out, Tensor(b!) labels, " MLMFAST_MASK_ARGS
        ") -> ()",
        &mask_tokens_into_emu);
  m.def("set_limits(int max_grid_y, int max_shared_bytes) -> ()", &set_limits);
  m.def("divergent_barrier_demo() -> ()", &divergent_barrier_demo);
}

}  // namespace mlmfast
