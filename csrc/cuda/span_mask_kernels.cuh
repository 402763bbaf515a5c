// The device code of mask_tokens(mode="span"): one thread per row, the rule of span_mask.h (the
// code the CPU rows run). Included by mask_tokens_cuda.cu, and by tests/cuda_emu/emu.cpp, which
// runs the kernel on the CPU so that the tests check it against the reference on machines without
// a GPU. Inside namespace mlmfast::(anonymous), after mask_tokens.h and span_mask.h.
#pragma once

constexpr int kSpanMaskThreads = 128;

MLMFAST_HD unsigned span_mask_grid(int64_t batch) {
  return static_cast<unsigned>((batch + kSpanMaskThreads - 1) / kSpanMaskThreads);
}

// int32 words of working memory per row (span_mask.h's SpanScratch: three arrays of L).
MLMFAST_HD int64_t span_mask_scratch_words(int64_t L) { return 3 * L; }

// `scratch` holds span_mask_scratch_words(L) uninitialised words per row (span_mask_row writes
// every entry it reads). Seed and epoch come from rng_state when given (read on the device, so a
// captured CUDA graph replays with new values).
template <typename T>
__global__ void __launch_bounds__(kSpanMaskThreads)
    span_mask_kernel(MaskInputs in, MaskParams P, T* out, T* lab, int32_t* scratch) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= in.batch) return;
  const int64_t L = in.length;
  uint64_t seed = P.seed;
  uint32_t epoch = P.epoch;
  if (in.rng_state) {
    seed = static_cast<uint64_t>(in.rng_state[0]);
    epoch = static_cast<uint32_t>(in.rng_state[1]);
  }
  const uint64_t sid = in.sample_ids ? static_cast<uint64_t>(in.sample_ids[b]) : b;
  int32_t* s = scratch + b * span_mask_scratch_words(L);
  span_mask_row<T, T>(in, P, row_key(seed, epoch, sid), b, static_cast<const T*>(in.ids) + b * L,
                      out + b * L, lab + b * L, SpanScratch{s, s + L, s + 2 * L});
}
