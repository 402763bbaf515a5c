// Exact mode with word ids and one threshold for every token (no POS classes), for rows whose
// words each form one run of eligible tokens, in increasing word-id order: what a tokenizer's
// word_ids() gives for one text, and what prepare writes. The rule of masking.h exactly as
// exact_row (word_exact.cpp) applies it, in linear passes instead of sorts:
//  - units (a word's run, or a token outside words) are laid out in position order in one
//    branch-light pass per chunk; a word that comes back after another word, or is cut by an
//    ineligible token, makes the row irregular and exact_row takes it instead;
//  - the walk in rank order (take a unit while it fits in the budget) needs no full sort: with
//    rank keys (draw << 32 | first position) bucketed by their top 6 bits, every unit in the
//    buckets whose sizes add up to at most the budget is taken as the walk would take it, and only
//    the next bucket (rarely two) is sorted and walked unit by unit.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "cpu/kernel_rows.h"
#include "cpu/word_rows.h"

namespace mlmfast::cpu::portable {

constexpr uint32_t kLone = 0x80000000u;  // WordUnit::src of a token outside words

// A unit: its first and last eligible positions, and where its draw is (word_u[src] for a word,
// lone_u[src & ~kLone], by position, for a token outside words).
struct WordUnit {
  int32_t first, last;
  uint32_t src, unused;
};

// Reused working memory of exact_words_row (one per thread). Units are numbered from 1 (unit 0
// takes the layout's writes for tokens that start no unit).
struct WordUnits {
  std::vector<WordUnit> units;
  std::vector<uint64_t> keys;  // keys[k - 1] = draw << 32 | first position of unit k
  std::vector<int32_t> taken;
  std::vector<uint32_t> blocks, word_u, lone_u;
  std::vector<std::pair<uint64_t, int32_t>> bucket;
};

// Returns false, having written nothing but the pass-through outputs, when the row is irregular
// (see above); the caller then runs exact_row.
template <typename T, typename TO>
bool exact_words_row(const Table& isa, const MaskInputs& in, const MaskParams& P,
                     const RowView<T>& r, TO* out, TO* lab, Problems& pr, WordUnits& S) {
  alignas(64) uint32_t ctr[kChunk], rx[kChunk], ry[kChunk], rz[kChunk], rw[kChunk];
  alignas(64) uint32_t tu[kChunk + 4];
  alignas(64) uint8_t allow[kChunk];
  alignas(64) int32_t sel[kChunk];
  alignas(64) int64_t wid[kChunk];
  const int64_t L = in.length;
  const int64_t base = r.row * L;
  pass_through(r.ids, L, out, lab);
  const bool suspect = check_row_if_suspect(in, P, base, L, r.ids, pr);
  const T* ids = r.ids + r.start;
  const int64_t n = L - r.start;
  S.units.resize(static_cast<size_t>(n + 1));
  S.blocks.resize(static_cast<size_t>(n + 1));
  S.lone_u.resize(static_cast<size_t>(n));
  WordUnit* U = S.units.data();
  uint32_t* blocks = S.blocks.data();
  uint32_t* lone_u = S.lone_u.data();
  int64_t nu = 0, nb = 0, eligible = 0;
  int64_t cur_w = -2, last_w = -1;  // cur_w: the previous token's word if it was eligible, else -2
  uint32_t prev = 0xFFFFFFFFu;      // the last word block: none yet (blocks are below 2^30)
  bool irregular = false;
  for (int64_t c = 0; c < n; c += kChunk) {  // layout: one unit per word run or lone token
    const int m = static_cast<int>(std::min<int64_t>(kChunk, n - c));
    const int64_t off = base + r.start + c;
    const int last = eligible_chunk(isa, m, ids + c, in, off, P, allow, suspect, pr);
    words_of_chunk(in, off, last, wid);
    bool lone = false;
    for (int q = 0; q < last; ++q) {
      eligible += allow[q];
      lone |= allow[q] & (wid[q] < 0);
    }
    if (lone) {  // the chunk's selection draws, by position, for its tokens outside words
      row_draws(isa, r.key, selection_counters(c, last, ctr), ctr, rx, ry, rz, rw, tu);
      std::memcpy(lone_u + c, tu, sizeof(uint32_t) * static_cast<size_t>(last));
    }
    // Few live values and no branch on the word structure (multi-token words come at random):
    // a token that continues its unit writes its start to unit 0, a sink.
    for (int q = 0; q < last; ++q) {
      if (!allow[q]) {  // eligibility comes in long runs: a well-predicted branch
        cur_w = -2;
        continue;
      }
      const int64_t w = wid[q];
      const int32_t j = static_cast<int32_t>(c + q);
      const bool in_word = w >= 0;
      const bool cont = in_word & (w == cur_w);      // the previous token was eligible, same word
      irregular |= in_word & !cont & (w <= last_w);  // words must come once, in id order
      last_w = in_word ? w : last_w;
      const uint32_t block = in_word ? static_cast<uint32_t>(w) >> 2 : prev;
      blocks[nb] = block;
      nb += block != prev;
      prev = block;
      const uint32_t src = in_word
                               ? static_cast<uint32_t>(nb - 1) << 2 | static_cast<uint32_t>(w & 3)
                               : kLone | static_cast<uint32_t>(j);
      nu += !cont;
      const int64_t d = nu & (static_cast<int64_t>(cont) - 1);  // cont: 0, else nu
      U[d].first = j;
      U[d].src = src;
      U[nu].last = j;
      cur_w = in_word ? w : -2;
    }
    if (last < m) cur_w = -2;
  }
  const bool regular = !irregular;
  if (!regular) return false;
  const uint64_t budget =
      exact_budget(static_cast<uint64_t>(eligible) * P.t_select, eligible > 0 && P.t_select > 0);
  if (budget == 0 || nu == 0) return true;
  S.word_u.resize(static_cast<size_t>(4 * nb + 4));
  uint32_t* word_u = S.word_u.data();
  for (int64_t b0 = 0; b0 < nb; b0 += kChunk) {  // the words' draws, kChunk blocks per batch
    const int nc = static_cast<int>(std::min<int64_t>(kChunk, nb - b0));
    for (int i = 0; i < nc; ++i) ctr[i] = kTagWord | (blocks[b0 + i] & kIndexMask);
    row_draws(isa, r.key, nc, ctr, rx, ry, rz, rw, word_u + 4 * b0);
  }
  // the walk: whole buckets while their sizes fit, then bucket by bucket, sorted
  S.keys.resize(static_cast<size_t>(nu));
  uint64_t* keys = S.keys.data();
  uint64_t hist[64] = {};
  for (int64_t k = 1; k <= nu; ++k) {
    const uint32_t s = U[k].src;
    const uint32_t uk = (s & kLone) ? lone_u[s & ~kLone] : word_u[s];
    keys[k - 1] = static_cast<uint64_t>(uk) << 32 | static_cast<uint32_t>(U[k].first);
    hist[keys[k - 1] >> 58] += static_cast<uint64_t>(U[k].last - U[k].first + 1);
  }
  uint64_t count = 0;
  int edge = 0;
  while (edge < 64 && count + hist[edge] <= budget) count += hist[edge++];
  S.taken.resize(static_cast<size_t>(nu + 1));
  int32_t* taken = S.taken.data();  // the units taken, in position order first
  int64_t nt = 0;
  for (int64_t k = 1; k <= nu; ++k) {
    taken[nt] = static_cast<int32_t>(k);
    nt += (keys[k - 1] >> 58) < static_cast<uint64_t>(edge);
  }
  for (int b = edge; b < 64 && count < budget; ++b) {
    if (hist[b] == 0) continue;
    S.bucket.clear();
    for (int64_t k = 1; k <= nu; ++k) {
      if (static_cast<int>(keys[k - 1] >> 58) == b)
        S.bucket.emplace_back(keys[k - 1], static_cast<int32_t>(k));
    }
    std::sort(S.bucket.begin(), S.bucket.end());
    for (const auto& [key, k] : S.bucket) {
      const uint64_t size = static_cast<uint64_t>(U[k].last - U[k].first + 1);
      if (count + size <= budget) {
        taken[nt++] = k;
        count += size;
        if (count == budget) break;
      }
    }
  }
  if (count == 0) {  // no unit fits: the best one alone
    int64_t best = 1;
    for (int64_t k = 2; k <= nu; ++k) best = keys[k - 1] < keys[best - 1] ? k : best;
    taken[nt++] = static_cast<int32_t>(best);
  }
  // the selected tokens: labels and 80/10/10, a chunk's worth at a time
  int ns = 0;
  for (int64_t i = 0; i < nt; ++i) {
    const int32_t k = taken[i];
    for (int32_t j = U[k].first; j <= U[k].last; ++j) {
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
