// Exact mode with word ids and one threshold for every token (no POS classes), for rows whose
// words each form one run of eligible tokens, in increasing word-id order: what a tokenizer's
// word_ids() gives for one text, and what prepare writes. The rule of masking.h exactly as
// exact_row (word_exact.cpp) applies it, in linear passes instead of sorts:
//  - units (a word's run, or a token outside words) are laid out in position order by the
//    kernel's word_units (vectorised where the instruction set has compress-stores), each with
//    the Philox block and lane of its draw; a word that comes back after another word, or is cut
//    by an ineligible token, makes the row irregular and exact_row takes it instead;
//  - the walk in rank order (take a unit while it fits in the budget) needs no full sort: with
//    rank keys (draw << 32 | first position) bucketed by their top 6 bits, every unit in the
//    buckets whose sizes add up to at most the budget is taken as the walk would take it, and only
//    the next bucket (rarely two) is sorted and walked unit by unit.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/kernel_rows.h"
#include "cpu/word_rows.h"

namespace mlmfast::cpu::portable {

// Reused working memory of exact_words_row (one per thread), by unit: first and stop positions,
// the draw's block and lane, the rank key; and the units taken, the bucket being walked.
struct UnitScratch {
  std::vector<int32_t> first, stop, lane, taken, bucket;
  std::vector<uint32_t> ctr;
  std::vector<uint64_t> keys;
  void fit(int64_t n) {
    const size_t size = static_cast<size_t>(n + 8);  // word_units writes up to 7 past the row
    if (first.size() >= size) return;
    for (auto* v : {&first, &stop, &lane, &taken, &bucket}) v->resize(size);
    ctr.resize(size);
    keys.resize(size);
  }
};

// Returns false, having written nothing but the pass-through outputs, when the row is irregular
// (see above); the caller then runs exact_row.
template <typename T, typename TO>
bool exact_words_row(const Table& isa, const MaskInputs& in, const MaskParams& P,
                     const RowView<T>& r, TO* out, TO* lab, Problems& pr, UnitScratch& S) {
  alignas(64) uint32_t ctr[kChunk], rx[kChunk], ry[kChunk], rz[kChunk], rw[kChunk];
  alignas(64) uint8_t allow[kChunk];
  alignas(64) int32_t sel[kChunk];
  alignas(64) int64_t wid[kChunk];
  const auto [ids, n, base, suspect] = begin_row(isa, in, P, r, out, lab, pr);
  S.fit(n);
  int32_t* first = S.first.data();
  int32_t* stop = S.stop.data();
  UnitRun s;
  for (int64_t c = 0; c < n; c += kChunk) {  // the layout
    const int m = static_cast<int>(std::min<int64_t>(kChunk, n - c));
    const int64_t off = base + r.start + c;
    const int last = eligible_chunk(isa, m, ids + c, in, off, P, allow, suspect, pr);
    isa.k.word_units(last, allow, word_ids_at(in, off, last, wid), static_cast<int32_t>(c), s,
                     first, stop, S.ctr.data(), S.lane.data());
    if (last < m) close_units(s, static_cast<int32_t>(c + last), stop);
  }
  close_units(s, static_cast<int32_t>(n), stop);
  if (s.irregular) return false;
  const int64_t nu = s.nu;
  const uint64_t budget = exact_budget(static_cast<uint64_t>(s.eligible) * P.t_select,
                                       s.eligible > 0 && P.t_select > 0);
  if (budget == 0 || nu == 0) return true;
  // the units' draws (one Philox block each, kChunk per batch), rank keys and bucket sizes
  uint64_t* keys = S.keys.data();
  uint64_t hist[64] = {};
  for (int64_t k0 = 0; k0 < nu; k0 += kChunk) {
    const int nc = static_cast<int>(std::min<int64_t>(kChunk, nu - k0));
    row_philox(isa, r.key, nc, S.ctr.data() + k0, rx, ry, rz, rw);
    const int32_t* lane = S.lane.data() + k0;
    for (int i = 0; i < nc; ++i) {
      const uint32_t u =
          lane[i] < 2 ? (lane[i] == 0 ? rx[i] : ry[i]) : (lane[i] == 2 ? rz[i] : rw[i]);
      const int64_t k = k0 + i;
      keys[k] = static_cast<uint64_t>(u) << 32 | static_cast<uint32_t>(first[k]);
      hist[keys[k] >> 58] += static_cast<uint64_t>(stop[k] - first[k]);
    }
  }
  // the walk: whole buckets while their sizes fit, then bucket by bucket, sorted
  uint64_t count = 0;
  int edge = 0;
  while (edge < 64 && count + hist[edge] <= budget) count += hist[edge++];
  int32_t* taken = S.taken.data();  // the units taken, those of the whole buckets first
  int32_t* bucket = S.bucket.data();
  int64_t nt = 0, nb = 0;
  for (int64_t k = 0; k < nu; ++k) {
    const uint64_t b = keys[k] >> 58;
    taken[nt] = static_cast<int32_t>(k);
    nt += b < static_cast<uint64_t>(edge);
    bucket[nb] = static_cast<int32_t>(k);
    nb += b == static_cast<uint64_t>(edge);
  }
  for (int b = edge; b < 64 && count < budget; ++b) {
    if (b > edge) {  // past the edge bucket (rare): this bucket's units
      if (hist[b] == 0) continue;
      nb = 0;
      for (int64_t k = 0; k < nu; ++k) {
        bucket[nb] = static_cast<int32_t>(k);
        nb += static_cast<int>(keys[k] >> 58) == b;
      }
    }
    std::sort(bucket, bucket + nb, [keys](int32_t x, int32_t y) { return keys[x] < keys[y]; });
    for (int64_t i = 0; i < nb; ++i) {
      const int32_t k = bucket[i];
      const uint64_t size = static_cast<uint64_t>(stop[k] - first[k]);
      if (count + size <= budget) {
        taken[nt++] = k;
        count += size;
        if (count == budget) break;
      }
    }
  }
  if (count == 0) {  // no unit fits: the best one alone
    int64_t best = 0;
    for (int64_t k = 1; k < nu; ++k) best = keys[k] < keys[best] ? k : best;
    taken[nt++] = static_cast<int32_t>(best);
  }
  // the selected tokens: labels and 80/10/10, a chunk's worth at a time
  int ns = 0;
  for (int64_t i = 0; i < nt; ++i) {
    const int32_t k = taken[i];
    for (int32_t j = first[k]; j < stop[k]; ++j) {
      sel[ns++] = j;
      if (ns == kChunk) {
        replace_selected(isa, P, r.key, ids, 0, sel, ns, out + r.start, lab + r.start, ctr, rx, ry,
                         rz, rw);
        ns = 0;
      }
    }
  }
  if (ns)
    replace_selected(isa, P, r.key, ids, 0, sel, ns, out + r.start, lab + r.start, ctr, rx, ry, rz,
                     rw);
  return true;
}

}  // namespace mlmfast::cpu::portable
