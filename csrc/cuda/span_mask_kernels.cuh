// The device code of mask_tokens(mode="span"): one block per row, the rule of span_mask.h. The
// word table is built in parallel (each token flags whether it starts a word; the starts are
// numbered by a scan over per-thread segments), the attempts run on thread 0 (span_select: they
// are sequential, ~15-20 for a 512-token row), the masked tokens are written in parallel
// (span_token). The tests hold the kernel to the reference bit for bit. Included by
// mask_tokens_cuda.cu, and by tests/cuda_emu/emu.cpp, which runs the kernel on the CPU. Inside
// namespace mlmfast::(anonymous), after mask_kernels.cuh (block_row_start, row_key_of) and
// span_mask.h.
#pragma once

constexpr int kSpanMaskThreads = 256;

// Working memory of a row: word_of[L] (a token's word, -1 if ineligible), the SpanScratch arrays
// wstart/wend/mark [L], and one count per thread; in shared memory where it fits (rows of up to
// ~14,000 tokens on an H100/H200), else in the row's slice of a global scratch buffer.
__host__ __device__ inline size_t span_shared_bytes(int64_t L) {
  return static_cast<size_t>(L) * 16 + kSpanMaskThreads * 4 + 16;
}
__host__ __device__ inline size_t span_row_stride(int64_t L) {
  return (span_shared_bytes(L) + 15) & ~static_cast<size_t>(15);
}

template <typename T>
__device__ bool span_eligible_at(const MaskInputs& in, const MaskParams& P, const T* ids,
                                 int64_t base, int64_t start, int64_t j) {
  if (j < start) return false;
  const int64_t flat = base + j;
  if (in.attention && !load_flag(in.attention, in.attention_kind, flat)) return false;
  if (in.special_mask && load_flag(in.special_mask, in.special_mask_kind, flat)) return false;
  return !is_special(P, static_cast<int64_t>(ids[j]));
}

// out may be the ids themselves (in place): every output is written where its id was read, and
// masked tokens are written after the pass-through, with the same original values.
template <typename T>
__global__ void __launch_bounds__(kSpanMaskThreads)
    span_mask_kernel(MaskInputs in, MaskParams P, T* out, T* lab, unsigned char* scratch) {
  MLMFAST_DYNAMIC_SHARED(smem);
  __shared__ unsigned long long s_min;
  __shared__ int s_eligible, s_words;
  const int64_t L = in.length;
  const int64_t row = blockIdx.x;
  const int64_t base = row * L;
  unsigned char* mem = scratch ? scratch + static_cast<size_t>(row) * span_row_stride(L) : smem;
  int32_t* word_of = reinterpret_cast<int32_t*>(mem);
  const SpanScratch S{word_of + L, word_of + 2 * L, word_of + 3 * L};
  int32_t* counts = word_of + 4 * L;

  const int64_t start = block_row_start(in, base, L, &s_min);
  if (threadIdx.x == 0) s_eligible = 0;
  const RowKey key = row_key_of(in, P, row);
  const T* ids = static_cast<const T*>(in.ids) + base;
  __syncthreads();

  // 1. pass-through; word_of = -1 (ineligible), 1 (starts a word), 0 (continues the word of the
  // token before it: eligible, directly after an eligible token of the same word id >= 0)
  int eligible = 0;
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) {
    out[base + j] = ids[j];
    lab[base + j] = static_cast<T>(kIgnoreIndex);
    int32_t f = -1;
    if (span_eligible_at(in, P, ids, base, start, j)) {
      ++eligible;
      const int64_t w = in.word_ids ? load_word(in.word_ids, in.word_kind, base + j) : -1;
      const bool cont = w >= 0 && span_eligible_at(in, P, ids, base, start, j - 1) &&
                        load_word(in.word_ids, in.word_kind, base + j - 1) == w;
      f = cont ? 0 : 1;
    }
    word_of[j] = f;
  }
  if (eligible) atomicAdd(&s_eligible, eligible);

  // 2. word numbers: each thread counts the starts of its contiguous segment, thread 0 turns the
  // counts into offsets, each thread numbers its segment's words
  const int64_t seg = (L + blockDim.x - 1) / blockDim.x;
  const int64_t s0 = seg * threadIdx.x < L ? seg * threadIdx.x : L;
  const int64_t s1 = s0 + seg < L ? s0 + seg : L;
  __syncthreads();
  int32_t c = 0;
  for (int64_t j = s0; j < s1; ++j) c += word_of[j] == 1;
  counts[threadIdx.x] = c;
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t acc = 0;
    for (unsigned t = 0; t < blockDim.x; ++t) {
      const int32_t v = counts[t];
      counts[t] = acc;
      acc += v;
    }
    s_words = acc;
  }
  __syncthreads();
  int32_t w = counts[threadIdx.x] - 1;  // the last word started before the segment
  for (int64_t j = s0; j < s1; ++j) {
    const int32_t f = word_of[j];
    if (f == 1) S.wstart[++w] = static_cast<int32_t>(j - start);
    word_of[j] = f < 0 ? -1 : w;
  }
  __syncthreads();

  // 3. word ends; no word marked yet
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) {
    const int32_t v = word_of[j];
    if (v >= 0 && (j + 1 == L || word_of[j + 1] != v))
      S.wend[v] = static_cast<int32_t>(j - start + 1);
  }
  for (int64_t v = threadIdx.x; v < s_words; v += blockDim.x) S.mark[v] = 0;
  __syncthreads();

  // 4. the attempts
  if (threadIdx.x == 0) {
    SpanWords R;
    R.W = s_words;
    R.n = s_eligible;
    span_select(P, key, R, S);
  }
  __syncthreads();

  // 5. the masked tokens
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) {
    const int32_t v = word_of[j];
    if (v < 0 || S.mark[v] == 0) continue;
    const uint32_t x = P.span_token_replace ? 0u : span_category_draw(P, key, S.mark[v] - 1);
    const int64_t original = static_cast<int64_t>(ids[j]);
    lab[base + j] = static_cast<T>(original);
    out[base + j] =
        static_cast<T>(span_token(P, key, x, static_cast<int32_t>(j - start), original));
  }
}
