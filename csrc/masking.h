// The masking rule of mlmfast, in one place. Both backends (the kernels of cpu/ and
// cuda/mask_tokens_cuda.cu) call these functions and nothing else to decide what happens to a
// token; mlmfast/reference.py mirrors them in plain PyTorch. Change the rule here and there.
//
// Every random number is a Philox4x32-10 output keyed by the seed and addressed by
//   counter = (tag | index, epoch, sample_id low 32 bits, sample_id high 32 bits)
// so a token's fate is a pure function of (seed, epoch, sample id, its position/word, its
// tokens): independent of the batch it sits in, the padding, the thread count and the device.
//
// Probabilities become integer thresholds t = floor(p * 2^32) in [0, 2^32] and a draw u (uint32)
// "hits" when u < t. p * 2^32 is exact in double (a power-of-two scaling) and floor is exact,
// so the threshold, and hence every decision, is the same on every backend: no float rounding
// enters a decision.
#pragma once

#include <cstdint>

#include "philox.h"

namespace mlmfast {

constexpr int kMaxSpecialIds = 256;
constexpr int kMaxPosClasses = 64;
constexpr int kMaxSpanWords = 64;  // longest span of mode="span" (span_mask.h)
constexpr int64_t kIgnoreIndex = -100;

// Counter tags (top two bits of the counter's first word) keep the draw streams apart.
constexpr uint32_t kTagSelect = 0u
                                << 30;  // token selection: index = rel_pos >> 2, lane = rel_pos & 3
constexpr uint32_t kTagWord =
    1u << 30;  // word selection:  index = word_id >> 2, lane = word_id & 3
constexpr uint32_t kTagReplace = 2u
                                 << 30;  // 80/10/10: index = rel_pos; x = category, y = random id
// Tag 3 is span corruption's (span_corrupt.h). Span masking's attempts use the selection tag with
// index bit 29 set (kTagSelect | 2^29 | attempt, span_mask.h): selection blocks stay below 2^28.
constexpr uint32_t kIndexMask = (1u << 30) - 1;
constexpr int64_t kMaxRowLength = int64_t(1) << 30;
constexpr uint64_t kOne = uint64_t(1) << 32;  // threshold of probability 1

// Everything the decision needs besides the tokens themselves. Passed by value to CUDA kernels
// (kernel parameters live in constant memory, so the special-id table is a constant-bank read).
struct MaskParams {
  uint64_t seed;
  uint32_t epoch;
  uint64_t t_select;  // floor(mlm_probability * 2^32)
  uint64_t t_mask;    // floor(mask_replace_prob * 2^32)
  uint64_t t_random;  // floor(random_replace_prob * 2^32)
  int64_t mask_token_id;
  int64_t vocab_size;
  int64_t n_random;  // size of the pool random replacements are drawn from
  int32_t n_skip;    // how many of special[] are excluded from that pool (0 = HF behaviour)
  int32_t n_special;
  int32_t n_pos;                    // 0 = no POS table
  int64_t special[kMaxSpecialIds];  // sorted, unique
  uint64_t t_pos[kMaxPosClasses];   // per-class thresholds when n_pos > 0
  // mode="span" (span_mask.h): n_span > 0 is the longest span in words, span_cdf[0 .. n_span - 2]
  // the cumulative length distribution as uint32 thresholds
  int32_t n_span;
  bool span_token_replace;  // one 80/10/10 decision per token instead of per span
  uint32_t span_cdf[kMaxSpanWords];
};

MLMFAST_HD uint64_t threshold_of(double p) {
  // p in [0, 1] (validated by the caller); exact in binary64.
  return static_cast<uint64_t>(p * 4294967296.0);
}

// Key of one row's draws.
struct RowKey {
  uint32_t seed_lo, seed_hi, epoch;
  uint64_t sample_id;
};

MLMFAST_HD RowKey row_key(uint64_t seed, uint32_t epoch, uint64_t sample_id) {
  return RowKey{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), epoch, sample_id};
}

MLMFAST_HD u32x4 philox_at(const RowKey& k, uint32_t tagged_index) {
  return philox4x32_10(u32x4{tagged_index, k.epoch, static_cast<uint32_t>(k.sample_id),
                             static_cast<uint32_t>(k.sample_id >> 32)},
                       u32x2{k.seed_lo, k.seed_hi});
}

// Four token-selection draws, for relative positions 4*block .. 4*block + 3.
MLMFAST_HD u32x4 select_block(const RowKey& k, uint32_t block) {
  return philox_at(k, kTagSelect | (block & kIndexMask));
}

// Selection draws of words 4*block .. 4*block + 3.
MLMFAST_HD u32x4 word_draws(const RowKey& k, uint32_t block) {
  return philox_at(k, kTagWord | (block & kIndexMask));
}

// Selection draw of a whole word: every token of word `word_id` sees the same number.
MLMFAST_HD uint32_t word_draw(const RowKey& k, uint64_t word_id) {
  const uint32_t w = static_cast<uint32_t>(word_id);
  return lane(word_draws(k, w >> 2), static_cast<int>(w & 3u));
}

MLMFAST_HD bool is_special(const MaskParams& P, int64_t id) {
  if (P.n_special == 0 || id < P.special[0] || id > P.special[P.n_special - 1]) return false;
  int lo = 0, hi = P.n_special - 1;
  while (lo <= hi) {
    const int mid = (lo + hi) >> 1;
    const int64_t s = P.special[mid];
    if (s == id) return true;
    if (s < id)
      lo = mid + 1;
    else
      hi = mid - 1;
  }
  return false;
}

// Threshold of a token: its POS class's when a table is given, else the global one.
// Classes outside the table are never selected (the CPU op rejects them up front).
MLMFAST_HD uint64_t token_threshold(const MaskParams& P, int pos_class) {
  if (P.n_pos == 0) return P.t_select;
  return (pos_class >= 0 && pos_class < P.n_pos) ? P.t_pos[pos_class] : 0;
}

MLMFAST_HD bool hits(uint32_t u, uint64_t t) { return static_cast<uint64_t>(u) < t; }

// The j-th id of the random-replacement pool: [0, vocab_size) without the first n_skip
// specials (all of them when exclude_special_from_random, none for HF behaviour).
// u -> j by a 32x32 multiply-high (Lemire), bias below n_random / 2^32.
MLMFAST_HD int64_t random_token(const MaskParams& P, uint32_t u) {
  int64_t id =
      static_cast<int64_t>((static_cast<uint64_t>(u) * static_cast<uint64_t>(P.n_random)) >> 32);
  for (int i = 0; i < P.n_skip; ++i) {
    if (P.special[i] <= id) ++id;
  }
  return id;
}

// 80/10/10 (or any split) for a selected token at relative position rel_pos.
// Draws only when the split actually needs a draw.
MLMFAST_HD int64_t replacement(const MaskParams& P, const RowKey& k, uint32_t rel_pos,
                               int64_t original) {
  if (P.t_mask >= kOne) return P.mask_token_id;
  if (P.t_mask == 0 && P.t_random == 0) return original;
  const u32x4 r = philox_at(k, kTagReplace | (rel_pos & kIndexMask));
  if (hits(r.x, P.t_mask)) return P.mask_token_id;
  if (hits(r.x, P.t_mask + P.t_random)) return random_token(P, r.y);
  return original;
}

// What a token becomes: its (possibly replaced) id and its label, in the output type TO (the
// ids' type, or int64 for int32 ids: a widening copy that changes no value).
template <typename T, typename TO>
MLMFAST_HD void emit(const MaskParams& P, const RowKey& k, bool selected, uint32_t rel_pos,
                     T original, TO& out_id, TO& label) {
  if (selected) {
    out_id = static_cast<TO>(replacement(P, k, rel_pos, static_cast<int64_t>(original)));
    label = static_cast<TO>(original);
  } else {
    out_id = static_cast<TO>(original);
    label = static_cast<TO>(kIgnoreIndex);
  }
}

// ---- exact mode ------------------------------------------------------------------------------
// A row's budget is k = round_half_up(sum over eligible tokens of t / 2^32), i.e. round(p * n)
// without POS weights, and at least 1 when some eligible token has t > 0. Selection units
// (tokens, or words in whole-word mode) are ranked by u / t (smaller first; for equal t simply
// by u), computed exactly as cross products, ties broken by the unit's first position. Units are
// then taken in rank order as long as they fit in the budget (BERT's create_pretraining_data
// rule for whole words; with single-token units this takes exactly the k best). If no unit fits,
// the best one is taken alone.
MLMFAST_HD uint64_t exact_budget(uint64_t threshold_sum, bool any_positive) {
  uint64_t k = (threshold_sum + (kOne >> 1)) >> 32;
  if (k == 0 && any_positive) k = 1;
  return k;
}

// True when unit a (draw ua, threshold ta, first position pa) ranks before unit b.
// Units with t == 0 never rank (callers skip them).
MLMFAST_HD bool ranks_before(uint32_t ua, uint64_t ta, int64_t pa, uint32_t ub, uint64_t tb,
                             int64_t pb) {
  // ua / ta < ub / tb  <=>  ua * tb < ub * ta; both products < 2^64 since u < 2^32, t <= 2^32.
  const uint64_t lhs = static_cast<uint64_t>(ua) * tb;
  const uint64_t rhs = static_cast<uint64_t>(ub) * ta;
  if (lhs != rhs) return lhs < rhs;
  return pa < pb;
}

}  // namespace mlmfast
