// Span masking (SpanBERT) for mask_tokens(mode="span"), in one place. The CPU kernel
// (cpu/span_rows.cpp) and the CUDA kernel (cuda/span_mask_kernels.cuh) call these functions and
// nothing else to decide a row; mlmfast/reference.py mirrors it. Change the rule here and there.
//
// Units. Positions count from the row's first attended token (rel), as in masking.h. A word is a
// maximal stretch of consecutive eligible tokens with one word id >= 0; an eligible token with
// word id -1 (or any token without word_ids) is a word of its own. A run is a maximal stretch of
// consecutive eligible tokens: specials, padding and unattended tokens end runs, so no span
// crosses them. The row's words are numbered 0 .. W - 1 in position order.
//
// Budget. k = exact_budget(n * t_select): round half up of p * n for the n eligible tokens, with
// p as its 32-bit threshold, at least 1 when n > 0 and p > 0 (exact mode's budget, masking.h).
//
// Sequential rule (SpanBERT's). Attempt a = 0, 1, ... while fewer than k tokens are masked and
// a < span_attempts(k) = min(64 + 16 k, 2^29):
//   r = Philox4x32-10 at counter (kTagSelect | kSpanAttempt | a, epoch, sample id low, high);
//   length l = 1 + #{j < n_span - 1 : r.x >= span_cdf[j]} (span_cdf: the cumulative distribution
//     of the lengths 1 .. n_span as uint32 thresholds floor(F(j + 1) * 2^32), computed once in
//     Python (mlmfast.ops.span_length_thresholds) so that every backend compares the same
//     integers);
//   start word s = floor((r.y * 2^32 + r.z) * W / 2^64) (the 64-bit multiply, as span_corrupt);
//   rejected when words s .. s + l - 1 leave the run of s (or the row), or one of them is masked;
//   else truncated to its longest prefix of whole words whose tokens fit the remaining budget
//   (SpanBERT stops at the budget), rejected if not even its first word fits; else masked.
// Attempts have fixed counters, so a row's mask is a function of (seed, epoch, sample id, its
// tokens, word ids and eligibility), whatever its batch, padding side, threads or device. When the
// attempts run out first (rows of tiny runs, p near 1, or a rest of the budget smaller than every
// free word) the row keeps fewer than k tokens.
//
// Counter tag. masking.h's selection draws use indices rel >> 2 < 2^28 (rows are shorter than
// 2^30 tokens), so the selection tag's indices with bit 29 set are free: span attempts use
// kTagSelect | 2^29 | a, a < 2^29. The tags 1-3 are taken (words, 80/10/10, span corruption).
//
// 80/10/10. By default one decision per span: the category draw is r.x of the 80/10/10 block
// (kTagReplace | rel) of the span's first token, and a "random" span takes for each token the
// random id of its own block's r.y (random_token, never a special id unless asked). With
// span_token_replace each token decides alone, exactly as masking.h's replacement().
#pragma once

#include <cstdint>

#include "mask_inputs.h"
#include "masking.h"

namespace mlmfast {

constexpr uint32_t kSpanAttempt = 1u << 29;
constexpr uint64_t kMaxSpanAttempts = uint64_t(1) << 29;
static_assert((kMaxRowLength >> 2) <= int64_t(kSpanAttempt),
              "selection blocks must stay below the span-attempt sub-tag");

// The attempt bound of a row with budget k.
MLMFAST_HD uint64_t span_attempts(uint64_t k) {
  const uint64_t a = 64 + 16 * k;
  return a < kMaxSpanAttempts ? a : kMaxSpanAttempts;
}

// Span length (in words) of the draw u.
MLMFAST_HD int32_t span_length_of(const MaskParams& P, uint32_t u) {
  int32_t len = 1;
  for (int32_t j = 0; j + 1 < P.n_span; ++j) len += u >= P.span_cdf[j] ? 1 : 0;
  return len;
}

// floor((hi * 2^32 + lo) * range / 2^64) for range < 2^32, exactly, in 64-bit pieces.
MLMFAST_HD uint64_t span_uniform(uint32_t hi, uint32_t lo, uint64_t range) {
  return (static_cast<uint64_t>(hi) * range + ((static_cast<uint64_t>(lo) * range) >> 32)) >> 32;
}

// Working memory of one row: three int32 arrays of (at least) the row length. Words w and w + 1
// are in one run exactly when wend[w] == wstart[w + 1] (a run's tokens are consecutive).
struct SpanScratch {
  int32_t* wstart;  // first rel of word w
  int32_t* wend;    // one past its last rel
  int32_t* mark;    // 0: not masked; else 1 + rel of the first token of w's span
};

// What a token of a masked span becomes: `x` is the category draw of the span (r.x of the block
// of its first token), rel the token's position.
MLMFAST_HD int64_t span_replacement(const MaskParams& P, const RowKey& k, uint32_t x, uint32_t rel,
                                    int64_t original) {
  if (P.t_mask >= kOne) return P.mask_token_id;
  if (P.t_mask == 0 && P.t_random == 0) return original;
  if (hits(x, P.t_mask)) return P.mask_token_id;
  if (hits(x, P.t_mask + P.t_random))
    return random_token(P, philox_at(k, kTagReplace | (rel & kIndexMask)).y);
  return original;
}

// The size of a row's word table (S holds the words themselves; the rule of the words is at the
// top of this file).
struct SpanWords {
  int64_t W = 0;  // words
  int64_t n = 0;  // eligible tokens
};

// The counter of attempt a (a < kMaxSpanAttempts).
MLMFAST_HD uint32_t span_attempt_counter(uint64_t a) {
  return kTagSelect | kSpanAttempt | static_cast<uint32_t>(a & (kSpanAttempt - 1));
}

// The draw of attempt a, computed when asked (a backend may instead hand out precomputed batches
// of the same numbers: see span_select's `draw`).
struct SpanDrawsAt {
  RowKey key;
  MLMFAST_HD u32x4 operator()(uint64_t a) { return philox_at(key, span_attempt_counter(a)); }
};

// The attempts (the rule at the top of this file): marks the words of the accepted spans in
// S.mark. Returns the tokens masked. draw(a) gives attempt a's Philox block, the attempts asked
// for in increasing order.
template <typename Draws>
MLMFAST_HD uint64_t span_select(const MaskParams& P, const SpanWords& R, const SpanScratch& S,
                                Draws& draw) {
  const int64_t W = R.W;
  const uint64_t k =
      exact_budget(static_cast<uint64_t>(R.n) * P.t_select, R.n > 0 && P.t_select > 0);
  const uint64_t attempts = span_attempts(k);
  uint64_t count = 0;
  for (uint64_t a = 0; a < attempts && count < k; ++a) {
    const u32x4 r = draw(a);
    const int64_t len = span_length_of(P, r.x);
    const int64_t s = static_cast<int64_t>(span_uniform(r.y, r.z, static_cast<uint64_t>(W)));
    const int64_t e = s + len - 1;
    if (e >= W) continue;  // leaves the row
    bool fits = S.mark[s] == 0;
    for (int64_t w = s + 1; w <= e && fits; ++w)  // inside the run of s, over free words
      fits = S.wstart[w] == S.wend[w - 1] && S.mark[w] == 0;
    if (!fits) continue;
    const int64_t room = static_cast<int64_t>(k - count);
    int64_t m = 0;
    while (m < len && S.wend[s + m] - S.wstart[s] <= room) ++m;
    if (m == 0) continue;
    for (int64_t w = s; w < s + m; ++w) S.mark[w] = S.wstart[s] + 1;
    count += static_cast<uint64_t>(S.wend[s + m - 1] - S.wstart[s]);
  }
  return count;
}

MLMFAST_HD uint64_t span_select(const MaskParams& P, const RowKey& key, const SpanWords& R,
                                const SpanScratch& S) {
  SpanDrawsAt draw{key};
  return span_select(P, R, S, draw);
}

// The 80/10/10 category draw of the span whose first token is at position head.
MLMFAST_HD uint32_t span_category_draw(const MaskParams& P, const RowKey& key, int32_t head) {
  if (P.t_mask >= kOne || (P.t_mask == 0 && P.t_random == 0)) return 0;  // no draw needed
  return philox_at(key, kTagReplace | (static_cast<uint32_t>(head) & kIndexMask)).x;
}

// What token rel of the span headed at `head` becomes (x: span_category_draw of the span).
MLMFAST_HD int64_t span_token(const MaskParams& P, const RowKey& key, uint32_t x, int32_t rel,
                              int64_t original) {
  return P.span_token_replace ? replacement(P, key, static_cast<uint32_t>(rel), original)
                              : span_replacement(P, key, x, static_cast<uint32_t>(rel), original);
}

// Labels and 80/10/10 of the marked words' tokens (the others keep what the caller wrote: the id
// and -100), one category draw per span (per token with span_token_replace). ids/out/lab: the
// row, whose first attended token is at `start`.
template <typename T, typename TO>
MLMFAST_HD void span_emit(const MaskParams& P, const RowKey& key, int64_t start, const SpanWords& R,
                          const SpanScratch& S, const T* ids, TO* out, TO* lab) {
  int32_t head = -1;
  uint32_t x = 0;
  for (int64_t w = 0; w < R.W; ++w) {
    if (S.mark[w] == 0) continue;
    if (!P.span_token_replace && S.mark[w] - 1 != head) {
      head = S.mark[w] - 1;
      x = span_category_draw(P, key, head);
    }
    for (int32_t rel = S.wstart[w]; rel < S.wend[w]; ++rel) {
      const int64_t j = start + rel;
      const int64_t original = static_cast<int64_t>(ids[j]);
      lab[j] = static_cast<TO>(original);
      out[j] = static_cast<TO>(span_token(P, key, x, rel, original));
    }
  }
}

}  // namespace mlmfast
