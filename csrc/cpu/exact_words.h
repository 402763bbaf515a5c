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
#include <utility>
#include <vector>

#include "cpu/kernel_rows.h"
#include "cpu/word_rows.h"

namespace mlmfast::cpu::portable {

// Reused working memory of exact_words_row (one per thread). Units are numbered from 1.
constexpr uint32_t kLone = 0x80000000u;  // WordUnits::src of a token outside words

struct WordUnits {
  std::vector<int32_t> first, size;  // a unit's first position and its eligible tokens
  std::vector<uint32_t> src;         // where its draw is (see exact_words_row)
  std::vector<uint64_t> keys;        // keys[k - 1] = draw << 32 | first position of unit k
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
  for (auto* v : {&S.first, &S.size}) v->resize(static_cast<size_t>(n + 1));
  S.src.resize(static_cast<size_t>(n + 1));
  S.blocks.resize(static_cast<size_t>(n + 1));
  S.lone_u.resize(static_cast<size_t>(n));
  int32_t* first = S.first.data();
  int32_t* size = S.size.data();
  uint32_t* src = S.src.data();  // where a unit's draw is: word_u[src], or lone_u[src & ~kLone]
  uint32_t* blocks = S.blocks.data();
  uint32_t* lone_u = S.lone_u.data();
  int64_t nu = 0, nb = 0, nl = 0, eligible = 0;
  int64_t cur_w = -2, max_w = -1;  // cur_w: the previous token's word if it was eligible, else -2
  int32_t run = 0, run_first = 0;  // the current unit, kept in registers
  uint32_t run_src = 0;
  uint32_t prev = 0xFFFFFFFFu;  // the last word block: none yet (blocks are below 2^30)
  bool regular = true;
  for (int64_t c = 0; c < n; c += kChunk) {  // layout: one unit per word run or lone token
    const int m = static_cast<int>(std::min<int64_t>(kChunk, n - c));
    const int64_t off = base + r.start + c;
    const int last = eligible_chunk(isa, m, ids + c, in, off, P, allow, suspect, pr);
    words_of_chunk(in, off, last, wid);
    for (int q = 0; q < last; ++q) eligible += allow[q];
    const int64_t chunk_lone = nl;
    for (int q = 0; q < last; ++q) {
      const int64_t w = wid[q];
      if (!allow[q]) {  // eligibility comes in long runs: a well-predicted branch
        cur_w = -2;
        continue;
      }
      const bool in_word = w >= 0;
      const bool cont = w == cur_w;  // cur_w >= 0 here means the previous token was eligible
      regular &= cont | !in_word | (w > max_w);
      max_w = std::max(max_w, w);
      // a word's block, appended when it differs from the last one (words come in id order)
      const uint32_t block = in_word ? static_cast<uint32_t>(w) >> 2 : prev;
      blocks[nb] = block;
      nb += block != prev;
      prev = block;
      const uint32_t s = in_word ? static_cast<uint32_t>(nb - 1) << 2 | static_cast<uint32_t>(w & 3)
                                 : kLone | static_cast<uint32_t>(nl);
      // stores only (no read-modify-write through memory): unit nu is (re)written every time
      nu += !cont;
      run = cont ? run + 1 : 1;
      run_first = cont ? run_first : static_cast<int32_t>(c + q);
      run_src = cont ? run_src : s;
      first[nu] = run_first;
      size[nu] = run;
      src[nu] = run_src;
      sel[nl - chunk_lone] = q;
      nl += !in_word;
      cur_w = in_word ? w : -2;
    }
    if (last < m) cur_w = -2;
    if (nl > chunk_lone) {  // the selection draws of the chunk's tokens outside words
      row_draws(isa, r.key, selection_counters(c, last, ctr), ctr, rx, ry, rz, rw, tu);
      for (int64_t i = chunk_lone; i < nl; ++i) lone_u[i] = tu[sel[i - chunk_lone]];
    }
  }
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
    const uint32_t s = src[k];
    const uint32_t uk = (s & kLone) ? lone_u[s & ~kLone] : word_u[s];
    keys[k - 1] = static_cast<uint64_t>(uk) << 32 | static_cast<uint32_t>(first[k]);
    hist[keys[k - 1] >> 58] += static_cast<uint64_t>(size[k]);
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
      if (count + static_cast<uint64_t>(size[k]) <= budget) {
        taken[nt++] = k;
        count += static_cast<uint64_t>(size[k]);
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
    for (int32_t j = first[k]; j < first[k] + size[k]; ++j) {
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
