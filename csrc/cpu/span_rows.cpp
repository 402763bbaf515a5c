// The CPU rows of mask_tokens(mode="span"): each row by span_mask_row (span_mask.h, the rule the
// CUDA kernel runs too), with a thread's working memory reused from row to row. Portable code;
// ids outside the vocabulary and word ids >= 2^32 are noted for the op's report, as on the other
// row paths.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "cpu/kernel.h"
#include "span_mask.h"

namespace mlmfast::cpu {
namespace {

inline void note_first(int64_t& first, int64_t flat) {
  if (flat < first) first = flat;
}

// Ids outside the vocabulary (attended tokens) and word ids >= 2^32, noted for the op's report:
// a vectorisable screen of the row first, the exact scan only when it finds something.
template <typename T>
void check_row(const MaskInputs& in, const MaskParams& P, int64_t base, const T* ids,
               Problems& pr) {
  const int64_t L = in.length;
  bool suspect = false;
  for (int64_t j = 0; j < L; ++j)
    suspect |= (ids[j] < 0) | (static_cast<int64_t>(ids[j]) >= P.vocab_size);
  if (in.word_ids && in.word_kind == kInt64) {  // int32 word ids are always below 2^32
    const int64_t* w = static_cast<const int64_t*>(in.word_ids) + base;
    for (int64_t j = 0; j < L; ++j) suspect |= w[j] > int64_t(0xFFFFFFFF);
  }
  if (!suspect) return;
  for (int64_t j = 0; j < L; ++j) {
    const int64_t flat = base + j;
    const bool attended = !in.attention || load_flag(in.attention, in.attention_kind, flat);
    const int64_t id = static_cast<int64_t>(ids[j]);
    if (attended && (id < 0 || id >= P.vocab_size)) note_first(pr.bad_id, flat);
    if (in.word_ids && load_word(in.word_ids, in.word_kind, flat) > int64_t(0xFFFFFFFF))
      note_first(pr.bad_word, flat);
  }
}

}  // namespace

template <typename T, typename TO>
void span_rows(const MaskInputs& in, const MaskParams& P, int64_t b0, int64_t b1, TO* out, TO* lab,
               Problems& pr) {
  const int64_t L = in.length;
  std::vector<int32_t> scratch(static_cast<size_t>(3 * L));
  const SpanScratch S{scratch.data(), scratch.data() + L, scratch.data() + 2 * L};
  for (int64_t b = b0; b < b1; ++b) {
    const T* ids = static_cast<const T*>(in.ids) + b * L;
    check_row(in, P, b * L, ids, pr);
    const uint64_t sid = in.sample_ids ? static_cast<uint64_t>(in.sample_ids[b]) : b;
    span_mask_row<T, TO>(in, P, row_key(P.seed, P.epoch, sid), b, ids, out + b * L, lab + b * L, S);
  }
}

template void span_rows<int64_t, int64_t>(const MaskInputs&, const MaskParams&, int64_t, int64_t,
                                          int64_t*, int64_t*, Problems&);
template void span_rows<int32_t, int32_t>(const MaskInputs&, const MaskParams&, int64_t, int64_t,
                                          int32_t*, int32_t*, Problems&);
template void span_rows<int32_t, int64_t>(const MaskInputs&, const MaskParams&, int64_t, int64_t,
                                          int64_t*, int64_t*, Problems&);

}  // namespace mlmfast::cpu
