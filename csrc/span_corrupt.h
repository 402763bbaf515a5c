// The span-corruption rule of mlmfast (T5's pre-training objective), in one place. The CPU kernel
// (cpu/span_corrupt_cpu.cpp) and the CUDA kernel (cuda/span_kernels.cuh) call these functions and
// nothing else to corrupt a row; mlmfast/reference.py mirrors them. Change the rule here and there.
//
// A row of n tokens (n >= 2) gets
//   noise  = round(n * noise_density), clamped to [1, n - 1]
//   spans  = round(noise / mean_noise_span_length), clamped to [1, min(noise, n - noise)]
// (round = half to even, as Python's round and numpy.round). Each product/quotient is one
// correctly rounded binary64 operation and rint is exact, so every backend (and Python) gets the
// same counts. The noise tokens are cut into `spans` non-empty segments, the other tokens too,
// every segmentation equally likely; segments interleave starting with a non-noise one:
//   keep_1 noise_1 keep_2 noise_2 ... keep_spans noise_spans.
// Encoder input: each noise segment replaced by one sentinel, then EOS; labels: each sentinel
// followed by its segment's tokens, then EOS:
//   input_ids = keep_1 S_0 keep_2 S_1 ... keep_spans S_{spans-1} EOS   (n - noise + spans + 1)
//   labels    = S_0 noise_1 S_1 noise_2 ... S_{spans-1} noise_spans EOS  (noise + spans + 1)
// with S_i = sentinel_start + i * sentinel_step.
//
// Randomness: a segmentation of m items into k segments is a uniform choice of k - 1 cuts among
// the m - 1 gaps, by Floyd's sampling algorithm (k - 1 draws, each subset equally likely). Draw d
// of a row is a 64-bit integer u from Philox4x32-10 block d >> 1 (lanes x:y for even d, z:w for
// odd d), counter (kTagSpan | block, epoch, sample id low, high), and a draw in [0, r) is
// floor(u * r / 2^64) (the 64-bit multiply: no rejection, so the draw count of a row is fixed;
// bias below r / 2^64). The noise segmentation takes draws 0 .. k - 2, the non-noise one
// k - 1 .. 2k - 3. No float enters a random decision.
#pragma once

#include <cmath>
#include <cstdint>

#include "masking.h"

namespace mlmfast {

// The one tag masking.h leaves free: span-corruption draws never meet mask_tokens' streams.
constexpr uint32_t kTagSpan = 3u << 30;
static_assert(kTagSpan != kTagSelect && kTagSpan != kTagWord && kTagSpan != kTagReplace,
              "span corruption needs its own Philox stream");

struct SpanParams {
  uint64_t seed;
  uint32_t epoch;
  double noise_density;           // in (0, 1)
  double mean_noise_span_length;  // >= 1
  int64_t inputs_length, targets_length;
  int64_t sentinel_start, sentinel_step;  // S_i = sentinel_start + i * sentinel_step (step +-1)
  int64_t eos_token_id, pad_token_id;
};

// The raw views of a batch that the kernels read.
struct SpanInputs {
  int64_t batch = 0, length = 0;
  const void* ids = nullptr;  // int32 or int64, [B, L] contiguous
  bool ids_int64 = true;
  const int64_t* lengths = nullptr;     // [B]; nullptr -> every row has L tokens
  const int64_t* sample_ids = nullptr;  // [B]; nullptr -> the row index
};

struct SpanCounts {
  int64_t noise, spans;
};

// The counts of a row of n >= 2 tokens (see the top of this file).
MLMFAST_HD SpanCounts span_counts(int64_t n, double noise_density, double mean_noise_span_length) {
  int64_t noise = static_cast<int64_t>(rint(static_cast<double>(n) * noise_density));
  noise = noise < 1 ? 1 : (noise > n - 1 ? n - 1 : noise);
  int64_t spans = static_cast<int64_t>(rint(static_cast<double>(noise) / mean_noise_span_length));
  const int64_t most = noise < n - noise ? noise : n - noise;
  spans = spans < 1 ? 1 : (spans > most ? most : spans);
  return SpanCounts{noise, spans};
}

// Lengths of a row's corrupted input (with EOS) and labels (with EOS).
MLMFAST_HD int64_t span_inputs_length(int64_t n, SpanCounts c) { return n - c.noise + c.spans + 1; }
MLMFAST_HD int64_t span_targets_length(SpanCounts c) { return c.noise + c.spans + 1; }

// Draw d of a row, uniform in [0, range), range < 2^31: floor(u * range / 2^64) for the 64-bit
// u = hi:lo, computed exactly in 64 bits (hi * range < 2^63, and the low word's share is added
// before the final shift).
MLMFAST_HD uint64_t span_draw(const RowKey& k, uint32_t d, uint64_t range) {
  const u32x4 r = philox_at(k, kTagSpan | ((d >> 1) & kIndexMask));
  const uint64_t hi = (d & 1u) ? r.z : r.x;
  const uint64_t lo = (d & 1u) ? r.w : r.y;
  return (hi * range + ((lo * range) >> 32)) >> 32;
}

MLMFAST_HD bool bit_at(const uint32_t* bits, int64_t i) { return (bits[i >> 5] >> (i & 31)) & 1u; }
MLMFAST_HD void set_bit(uint32_t* bits, int64_t i) { bits[i >> 5] |= 1u << (i & 31); }

// Words of the cut bitmap of a row of n tokens: one bit per gap of each segmentation, n - 2 bits
// in all (span_cut_bits needs them zeroed).
MLMFAST_HD int64_t span_bitmap_words(int64_t n) { return n <= 2 ? 1 : (n - 2 + 31) / 32; }

// Floyd's algorithm: k - 1 distinct cuts among the m - 1 gaps of m items, as bits
// [base, base + m - 1) of `bits` (bit base + g set: a new segment starts at item g + 1), using
// draws d0 .. d0 + k - 2. Every subset equally likely given uniform draws.
MLMFAST_HD void span_cut_bits(const RowKey& key, uint32_t d0, int64_t m, int64_t k, uint32_t* bits,
                              int64_t base) {
  const int64_t gaps = m - 1;
  uint32_t d = d0;
  for (int64_t j = gaps - (k - 1); j < gaps; ++j, ++d) {
    const int64_t t = static_cast<int64_t>(span_draw(key, d, static_cast<uint64_t>(j + 1)));
    set_bit(bits, base + (bit_at(bits, base + t) ? j : t));
  }
}

// Corrupts one row: src[0, n) -> out_ids/out_att [inputs_length], out_labels [targets_length].
// `bits` is the row's zeroed bitmap of span_bitmap_words(n) words. Writes past the output
// lengths are dropped (the host rejects rows that do not fit before launching).
template <typename T, typename TO>
MLMFAST_HD void span_corrupt_row(const SpanParams& P, const RowKey& key, const T* src, int64_t n,
                                 uint32_t* bits, TO* out_ids, TO* out_att, TO* out_labels) {
  const int64_t IL = P.inputs_length, TL = P.targets_length;
  const SpanCounts c = span_counts(n, P.noise_density, P.mean_noise_span_length);
  const int64_t keep = n - c.noise;
  // noise gaps at bits [0, noise - 1), non-noise gaps at [noise - 1, n - 2)
  span_cut_bits(key, 0, c.noise, c.spans, bits, 0);
  span_cut_bits(key, static_cast<uint32_t>(c.spans - 1), keep, c.spans, bits, c.noise - 1);
  int64_t pos = 0, oi = 0, ti = 0, a = 0, b = 0;
  for (int64_t s = 0; s < c.spans; ++s) {
    for (;;) {  // non-noise segment s
      if (oi < IL) out_ids[oi] = static_cast<TO>(src[pos]);
      ++oi, ++pos, ++b;
      if (b == keep || bit_at(bits, c.noise - 1 + (b - 1))) break;
    }
    const TO sentinel = static_cast<TO>(P.sentinel_start + s * P.sentinel_step);
    if (oi < IL) out_ids[oi] = sentinel;
    if (ti < TL) out_labels[ti] = sentinel;
    ++oi, ++ti;
    for (;;) {  // noise segment s
      if (ti < TL) out_labels[ti] = static_cast<TO>(src[pos]);
      ++ti, ++pos, ++a;
      if (a == c.noise || bit_at(bits, a - 1)) break;
    }
  }
  if (oi < IL) out_ids[oi] = static_cast<TO>(P.eos_token_id);
  if (ti < TL) out_labels[ti] = static_cast<TO>(P.eos_token_id);
  ++oi, ++ti;
  for (int64_t i = 0; i < IL; ++i) out_att[i] = static_cast<TO>(i < oi ? 1 : 0);
  for (int64_t i = oi; i < IL; ++i) out_ids[i] = static_cast<TO>(P.pad_token_id);
  for (int64_t i = ti; i < TL; ++i) out_labels[i] = static_cast<TO>(kIgnoreIndex);
}

}  // namespace mlmfast
