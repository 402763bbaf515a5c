// The device code of the CUDA span_corrupt op: one thread per row, the rule of span_corrupt.h.
// Included by span_corrupt_cuda.cu, and by tests/cuda_emu/span_emu.cpp, which runs the kernel on
// the CPU so that the tests check it against the reference on machines without a GPU. Inside
// namespace mlmfast::(anonymous), after span_corrupt_op.h.
#pragma once

constexpr int kSpanThreads = 128;

MLMFAST_HD unsigned span_grid(int64_t batch) {
  return static_cast<unsigned>((batch + kSpanThreads - 1) / kSpanThreads);
}

// Floyd's algorithm needs a bitmap per row: `scratch` holds span_bitmap_words(L) words per row,
// uninitialised (each thread zeroes the words its row uses).
template <typename T>
__global__ void __launch_bounds__(kSpanThreads)
    span_corrupt_kernel(SpanInputs in, SpanParams P, int64_t* out, int64_t* att, int64_t* labels,
                        uint32_t* scratch) {
  const int64_t b = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (b >= in.batch) return;
  const int64_t L = in.length;
  const int64_t n = in.lengths ? in.lengths[b] : L;
  uint32_t* bits = scratch + b * span_bitmap_words(L);
  const int64_t words = span_bitmap_words(n);
  for (int64_t i = 0; i < words; ++i) bits[i] = 0u;
  const uint64_t sid = in.sample_ids ? static_cast<uint64_t>(in.sample_ids[b]) : b;
  span_corrupt_row<T, int64_t>(
      P, row_key(P.seed, P.epoch, sid), static_cast<const T*>(in.ids) + b * L, n, bits,
      out + b * P.inputs_length, att + b * P.inputs_length, labels + b * P.targets_length);
}
