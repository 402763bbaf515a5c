// The CPU rows of mask_tokens(mode="span"): eligibility by the chosen kernel's vectorised chunk
// scan (as word_exact.cpp), the word table, the attempts and the 80/10/10 by span_mask.h (the
// functions the CUDA kernel runs too), with a thread's working memory reused from row to row.
// Portable code; ids outside the vocabulary and word ids >= 2^32 are noted for the op's report, as
// on the other row paths.
#define MLMFAST_CPU_CAPABILITY portable

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cpu/kernel.h"
#include "cpu/kernel_rows.h"
#include "cpu/word_rows.h"
#include "span_mask.h"

namespace mlmfast::cpu {
namespace {

using namespace portable;  // the helpers of kernel_rows.h and word_rows.h, without ISA flags

// The row's eligible tokens, a chunk at a time, into the word table R (span_mask.h's words), laid
// out without branches on the word structure (a word's entry is rewritten by each of
// its tokens; cur_w is the previous token's word id when that token was eligible, else -2).
template <typename W>
void chunk_words(const uint8_t* allow, int last, const W* w, int64_t c, int64_t& cur_w,
                 SpanWords& R, const SpanScratch& S) {
  int64_t nw = R.W;
  int32_t run_start = nw ? S.wstart[nw - 1] : 0;
  for (int q = 0; q < last; ++q) {
    if (!allow[q]) {  // eligibility comes in long runs: a well-predicted branch
      cur_w = -2;
      continue;
    }
    const int64_t wq = w ? static_cast<int64_t>(w[q]) : -1;
    const bool cont = wq >= 0 && wq == cur_w;
    const int32_t rel = static_cast<int32_t>(c + q);
    nw += !cont;
    run_start = cont ? run_start : rel;
    S.wstart[nw - 1] = run_start;
    S.wend[nw - 1] = rel + 1;
    S.mark[nw - 1] = 0;
    cur_w = wq >= 0 ? wq : -2;
    ++R.n;
  }
  R.W = nw;
}

template <typename T>
void row_words(const Kernel& kernel, const MaskInputs& in, const MaskParams& P, int64_t base,
               int64_t start, const T* ids, bool checked, Problems& pr, SpanWords& R,
               const SpanScratch& S) {
  alignas(64) uint8_t allow[kChunk];
  const int64_t n = in.length - start;
  int64_t cur_w = -2;
  for (int64_t c = 0; c < n; c += kChunk) {
    const int m = static_cast<int>(std::min<int64_t>(kChunk, n - c));
    const int64_t off = base + start + c;
    const int last =
        eligible_chunk(Table{kernel}, m, ids + start + c, in, off, P, allow, checked, pr);
    if (in.word_ids && in.word_kind == kInt64)
      chunk_words(allow, last, static_cast<const int64_t*>(in.word_ids) + off, c, cur_w, R, S);
    else if (in.word_ids)
      chunk_words(allow, last, static_cast<const int32_t*>(in.word_ids) + off, c, cur_w, R, S);
    else
      chunk_words<int32_t>(allow, last, nullptr, c, cur_w, R, S);
    if (last < m) cur_w = -2;  // the chunk's tail is not eligible
  }
}

// The attempts' draws in vectorised Philox batches, handed out in order: 32 first (a row of
// 512 tokens typically needs 15-30 attempts), each further batch twice as large, up to kChunk.
struct BatchedSpanDraws {
  const Kernel& kernel;
  RowKey key;
  uint64_t base = 0, filled = 0;  // draws of attempts [base, filled) are in x..w
  int batch = 32;
  alignas(64) uint32_t ctr[kChunk], x[kChunk], y[kChunk], z[kChunk], w[kChunk];
  u32x4 operator()(uint64_t a) {
    if (a >= filled) {
      base = a;
      for (int i = 0; i < batch; ++i) ctr[i] = span_attempt_counter(a + static_cast<uint64_t>(i));
      kernel.philox(batch, ctr, key.epoch, static_cast<uint32_t>(key.sample_id),
                    static_cast<uint32_t>(key.sample_id >> 32), u32x2{key.seed_lo, key.seed_hi}, x,
                    y, z, w);
      filled = a + static_cast<uint64_t>(batch);
      batch = std::min(2 * batch, kChunk);
    }
    const uint64_t i = a - base;
    return u32x4{x[i], y[i], z[i], w[i]};
  }
};

}  // namespace

template <typename T, typename TO>
void span_rows(const MaskInputs& in, const MaskParams& P, int64_t b0, int64_t b1, TO* out, TO* lab,
               Problems& pr) {
  const Kernel& kernel = cpu_kernel();
  const int64_t L = in.length;
  std::vector<int32_t> scratch(static_cast<size_t>(3 * L));
  const SpanScratch S{scratch.data(), scratch.data() + L, scratch.data() + 2 * L};
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t base = b * L;
    const T* ids = static_cast<const T*>(in.ids) + base;
    TO* o = out + base;
    TO* l = lab + base;
    pass_through(ids, L, o, l);
    const bool checked = check_row_if_suspect(in, P, base, L, ids, pr);
    const int64_t start = row_start(in, base, L);
    const uint64_t sid = in.sample_ids ? static_cast<uint64_t>(in.sample_ids[b]) : b;
    const RowKey key = row_key(P.seed, P.epoch, sid);
    SpanWords R;
    row_words(kernel, in, P, base, start, ids, checked, pr, R, S);
    BatchedSpanDraws draws{kernel, key};
    span_select(P, R, S, draws);
    span_emit(P, key, start, R, S, ids, o, l);
  }
}

template void span_rows<int64_t, int64_t>(const MaskInputs&, const MaskParams&, int64_t, int64_t,
                                          int64_t*, int64_t*, Problems&);
template void span_rows<int32_t, int32_t>(const MaskInputs&, const MaskParams&, int64_t, int64_t,
                                          int32_t*, int32_t*, Problems&);
template void span_rows<int32_t, int64_t>(const MaskInputs&, const MaskParams&, int64_t, int64_t,
                                          int64_t*, int64_t*, Problems&);

}  // namespace mlmfast::cpu
