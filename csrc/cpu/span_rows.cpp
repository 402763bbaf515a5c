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

// Without word ids every eligible token of the chunk is a word of the table R (span_mask.h's
// words); written branch-free, kept when eligible.
void chunk_tokens(const uint8_t* allow, int last, int64_t c, SpanWords& R, const SpanScratch& S) {
  int64_t nw = R.W;
  for (int q = 0; q < last; ++q) {
    const int32_t rel = static_cast<int32_t>(c + q);
    S.wstart[nw] = rel;
    S.wend[nw] = rel + 1;
    nw += allow[q];
  }
  R.n += nw - R.W;
  R.W = nw;
}

// The row's word table R: a word per run of eligible tokens of one word id and per eligible token
// outside words, in position order (the kernel's word_units with word ids), a chunk at a time.
template <typename T>
void row_words(const Kernel& kernel, const MaskInputs& in, const MaskParams& P, int64_t base,
               int64_t start, const T* ids, bool checked, Problems& pr, SpanWords& R,
               const SpanScratch& S) {
  alignas(64) uint8_t allow[kChunk];
  alignas(64) int64_t wid[kChunk];
  const Table isa{kernel};
  const int64_t n = in.length - start;
  UnitRun units;
  for (int64_t c = 0; c < n; c += kChunk) {
    const int m = static_cast<int>(std::min<int64_t>(kChunk, n - c));
    const int64_t off = base + start + c;
    const int last = eligible_chunk(isa, m, ids + start + c, in, off, P, allow, checked, pr);
    if (!in.word_ids) {
      chunk_tokens(allow, last, c, R, S);
      continue;
    }
    kernel.word_units(last, allow, word_ids_at(in, off, last, wid), static_cast<int32_t>(c), units,
                      S.wstart, S.wend, nullptr, nullptr);
    if (last < m) close_units(units, static_cast<int32_t>(c + last), S.wend);
  }
  if (in.word_ids) {
    close_units(units, static_cast<int32_t>(n), S.wend);
    R.W = units.nu;
    R.n = units.eligible;
  }
  std::fill(S.mark, S.mark + R.W, 0);
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
  const int64_t size = L + 8;  // word_units writes up to 7 past the row
  std::vector<int32_t> scratch(static_cast<size_t>(3 * size));
  const SpanScratch S{scratch.data(), scratch.data() + size, scratch.data() + 2 * size};
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t base = b * L;
    const T* ids = static_cast<const T*>(in.ids) + base;
    TO* o = out + base;
    TO* l = lab + base;
    pass_through(ids, L, o, l);
    const bool checked = check_row_if_suspect(Table{kernel}, in, P, base, L, ids, pr);
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
