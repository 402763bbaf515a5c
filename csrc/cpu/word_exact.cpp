// The row paths that work token by token: Bernoulli mode with word ids or POS classes, and exact
// mode. Portable code (compiled without instruction-set flags); their Philox batches and chunk
// scans, the bulk of their work, come from the kernel dispatch.cpp chose.
#define MLMFAST_CPU_CAPABILITY portable

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include "cpu/exact_words.h"
#include "cpu/kernel.h"
#include "cpu/kernel_rows.h"
#include "cpu/word_rows.h"

namespace mlmfast::cpu {
namespace {

using namespace portable;  // the helpers of kernel_rows.h, compiled here without ISA flags

// Bernoulli mode with word ids and/or POS classes: every eligible token (or word) independently
// with its threshold. Eligibility by the vectorised chunk scan; per chunk, the draws of its words
// (one Philox block per 4 word ids, shared by their tokens) and of its tokens outside words as
// batches, and the 80/10/10 draws of its selected tokens as another. T: the ids' type; TO: the
// outputs' (T, or int64 for int32 ids).
template <typename T, typename TO>
void bernoulli_row(const Table& isa, const MaskInputs& in, const MaskParams& P, const RowView<T>& r,
                   TO* out, TO* lab, Problems& pr) {
  alignas(64) uint32_t ctr[kChunk], rx[kChunk], ry[kChunk], rz[kChunk], rw[kChunk];
  alignas(64) uint32_t wblk[kChunk], wu[4 * kChunk], tu[kChunk + 4];
  alignas(64) uint8_t allow[kChunk];
  alignas(64) int32_t sel[kChunk], src[kChunk];
  alignas(64) int64_t wid[kChunk];
  const auto [ids, n, base, suspect] = begin_row(isa, in, P, r, out, lab, pr);
  for (int64_t c = 0; c < n; c += kChunk) {
    const int m = static_cast<int>(std::min<int64_t>(kChunk, n - c));
    const int64_t off = base + r.start + c;
    const int last = eligible_chunk(isa, m, ids + c, in, off, P, allow, suspect, pr);
    // Where each eligible token's draw comes from: lane w & 3 of the word block w >> 2 (the
    // chunk's distinct consecutive blocks, one Philox batch), or for a token outside any word
    // lane q & 3 of the chunk's selection block q >> 2 (another batch, only when needed).
    // Branch-free: a word's block is written every time and kept when it differs from the
    // previous one (blocks are below 2^30, so the initial `prev` matches none).
    int nw = 0;
    bool token_draws = false;
    uint32_t prev = 0xFFFFFFFFu;
    words_of_chunk(in, off, last, wid);
    for (int q = 0; q < last; ++q) {
      const int64_t w = wid[q];
      const bool in_word = allow[q] & (w >= 0);
      const uint32_t block = in_word ? static_cast<uint32_t>(w) >> 2 : prev;
      wblk[nw] = block;
      nw += block != prev;
      prev = block;
      src[q] = in_word ? (nw - 1) << 2 | static_cast<int32_t>(w & 3) : -1;
      token_draws |= allow[q] & (w < 0);
    }
    if (nw) {
      for (int i = 0; i < nw; ++i) ctr[i] = kTagWord | (wblk[i] & kIndexMask);
      row_draws(isa, r.key, nw, ctr, rx, ry, rz, rw, wu);
    }
    if (token_draws)
      row_draws(isa, r.key, selection_counters(c, last, ctr), ctr, rx, ry, rz, rw, tu);
    int ns = 0;
    for (int q = 0; q < last; ++q) {
      // before the branch: read on every pass, the table's fields are loaded once, outside the loop
      const uint64_t t = token_threshold(P, in.pos_ids ? in.pos_ids[off + q] : 0);
      if (!allow[q]) continue;
      const uint32_t u = src[q] >= 0 ? wu[src[q]] : tu[q];
      sel[ns] = q;
      ns += hits(u, t);
    }
    if (ns)
      replace_selected(isa, P, r.key, ids, c, sel, ns, out + r.start, lab + r.start, ctr, rx, ry,
                       rz, rw);
  }
}

struct Unit {
  uint32_t u;
  uint64_t t;
  int64_t first;  // first position (tie-break and identity)
  int64_t size;   // eligible tokens in the unit
};

// Consecutive eligible tokens of one word: positions [start, start + size).
struct WordRun {
  int64_t w, start, size;
};

// Reused working memory of exact_row (one per thread).
struct ExactScratch {
  std::vector<Unit> units;
  std::vector<int64_t> unit_of;  // by position (relative to the first attended token)
  std::vector<WordRun> runs;
  std::vector<uint32_t> blocks;  // distinct word blocks (word id >> 2)
  std::vector<uint32_t> word_u;  // their draws, in block order
  std::vector<uint8_t> taken;
  std::vector<int32_t> order;
  std::vector<uint64_t> keys, spill;
};

// Exact mode: the per-row budget and the ranking rule of masking.h. Eligibility by the chunk
// scan; the selection draws of a chunk's tokens outside words and the draws of the row's words
// as Philox batches; units ranked by one sort (of (draw, position) keys when every unit has the
// same threshold); the selected tokens' 80/10/10 draws as batches.
template <typename T, typename TO>
void exact_row(const Table& isa, const MaskInputs& in, const MaskParams& P, const RowView<T>& r,
               TO* out, TO* lab, Problems& pr, ExactScratch& S) {
  alignas(64) uint32_t ctr[kChunk], rx[kChunk], ry[kChunk], rz[kChunk], rw[kChunk];
  alignas(64) uint32_t tu[kChunk + 4];
  alignas(64) uint8_t allow[kChunk];
  alignas(64) int32_t sel[kChunk];
  alignas(64) int64_t wid[kChunk];
  const auto [ids, n, base, suspect] = begin_row(isa, in, P, r, out, lab, pr);
  S.units.clear();
  S.runs.clear();
  S.unit_of.assign(n, -1);
  uint64_t tsum = 0;
  bool any_positive = false;
  for (int64_t c = 0; c < n; c += kChunk) {  // eligibility, thresholds, token units, word runs
    const int m = static_cast<int>(std::min<int64_t>(kChunk, n - c));
    const int64_t off = base + r.start + c;
    const int last = eligible_chunk(isa, m, ids + c, in, off, P, allow, suspect, pr);
    words_of_chunk(in, off, last, wid);
    const size_t first_token_unit = S.units.size();
    for (int q = 0; q < last; ++q) {
      if (!allow[q]) continue;
      const uint64_t t = token_threshold(P, in.pos_ids ? in.pos_ids[off + q] : 0);
      tsum += t;
      any_positive |= t > 0;
      const int64_t j = c + q;
      if (wid[q] >= 0) {
        WordRun* run = S.runs.empty() ? nullptr : &S.runs.back();
        if (run && run->w == wid[q] && run->start + run->size == j)
          ++run->size;
        else
          S.runs.push_back(WordRun{wid[q], j, 1});
      } else {
        S.unit_of[j] = static_cast<int64_t>(S.units.size());
        S.units.push_back(Unit{0, t, j, 1});
      }
    }
    if (S.units.size() > first_token_unit) {  // the chunk's selection draws
      row_draws(isa, r.key, selection_counters(c, last, ctr), ctr, rx, ry, rz, rw, tu);
      for (size_t i = first_token_unit; i < S.units.size(); ++i)
        S.units[i].u = tu[S.units[i].first - c];
    }
  }
  if (!S.runs.empty()) {
    // A word's tokens, wherever they are, form one unit: its runs grouped by word id (in
    // position order within a word), its threshold its first token's.
    if (!std::is_sorted(S.runs.begin(), S.runs.end(),
                        [](const WordRun& a, const WordRun& b) { return a.w < b.w; }))
      std::stable_sort(S.runs.begin(), S.runs.end(),
                       [](const WordRun& a, const WordRun& b) { return a.w < b.w; });
    const size_t first_word_unit = S.units.size();
    S.blocks.clear();
    for (size_t i = 0; i < S.runs.size();) {
      const WordRun& head = S.runs[i];
      const int64_t idx = static_cast<int64_t>(S.units.size());
      int64_t size = 0;
      size_t e = i;
      for (; e < S.runs.size() && S.runs[e].w == head.w; ++e) {
        for (int64_t j = S.runs[e].start; j < S.runs[e].start + S.runs[e].size; ++j)
          S.unit_of[j] = idx;
        size += S.runs[e].size;
      }
      const uint64_t t =
          token_threshold(P, in.pos_ids ? in.pos_ids[base + r.start + head.start] : 0);
      const uint32_t block = static_cast<uint32_t>(head.w) >> 2;
      if (S.blocks.empty() || S.blocks.back() != block) S.blocks.push_back(block);
      // u: for now where the word's draw will be in word_u (its block's, lane w & 3)
      S.units.push_back(Unit{
          static_cast<uint32_t>((S.blocks.size() - 1) << 2 | (static_cast<uint32_t>(head.w) & 3u)),
          t, head.start, size});
      i = e;
    }
    // the words' draws in block order, kChunk blocks per Philox batch
    S.word_u.resize(4 * S.blocks.size());
    for (size_t b0 = 0; b0 < S.blocks.size(); b0 += kChunk) {
      const int nb = static_cast<int>(std::min<size_t>(kChunk, S.blocks.size() - b0));
      for (int i = 0; i < nb; ++i) ctr[i] = kTagWord | (S.blocks[b0 + i] & kIndexMask);
      row_draws(isa, r.key, nb, ctr, rx, ry, rz, rw, S.word_u.data() + 4 * b0);
    }
    for (size_t i = first_word_unit; i < S.units.size(); ++i) S.units[i].u = S.word_u[S.units[i].u];
  }
  const uint64_t budget = exact_budget(tsum, any_positive);
  std::vector<Unit>& units = S.units;
  std::vector<int32_t>& order = S.order;
  S.taken.assign(units.size(), 0);
  auto rankable = [&] {  // the units that can be selected (t > 0), in unit order
    order.clear();
    for (size_t i = 0; i < units.size(); ++i) {
      if (units[i].t > 0) order.push_back(static_cast<int32_t>(i));
    }
  };
  rankable();
  const bool single =
      std::all_of(order.begin(), order.end(), [&](int32_t i) { return units[i].size == 1; });
  auto before = [&](int32_t a, int32_t b) {
    const Unit &A = units[a], &B = units[b];
    return ranks_before(A.u, A.t, A.first, B.u, B.t, B.first);
  };
  // The rank order as far as the walk needs it: the kk best for single-token units, else the
  // best M sorted (every unit taken spends at least 1 of the budget, so the walk rarely gets
  // past kk + 8 units: only when words too large to fit are skipped), the rest sorted only if
  // the walk gets there.
  const size_t kk = std::min<size_t>(budget, order.size());
  const size_t M = single ? kk : std::min(order.size(), kk + 8);
  if (P.n_pos == 0 && !order.empty()) {
    // One threshold for every unit: rank by (draw, first position) as one integer.
    S.keys.resize(order.size());
    for (size_t i = 0; i < order.size(); ++i)
      S.keys[i] = static_cast<uint64_t>(units[order[i]].u) << 32 |
                  static_cast<uint64_t>(units[order[i]].first);
    if (M > 0 && M < S.keys.size()) smallest_first(S.keys, M, S.spill);
    if (!single) std::sort(S.keys.begin(), S.keys.begin() + static_cast<int64_t>(M));
    for (size_t i = 0; i < M; ++i)  // the walk reads no further (past M it rebuilds the order)
      order[i] = static_cast<int32_t>(S.unit_of[static_cast<int64_t>(S.keys[i] & 0xFFFFFFFFu)]);
  } else {
    if (M < order.size())
      std::nth_element(order.begin(), order.begin() + static_cast<int64_t>(M), order.end(), before);
    if (!single) std::sort(order.begin(), order.begin() + static_cast<int64_t>(M), before);
  }
  uint64_t count = 0;
  if (single) {  // single-token units: the budget takes exactly the kk best, in any order
    for (size_t i = 0; i < kk; ++i) S.taken[order[i]] = 1;
    count = kk;
  } else {
    for (size_t i = 0; i < order.size() && count < budget; ++i) {
      if (i == M) {  // past the sorted best M (the rest may be gone: smallest_first): all
        rankable();
        std::sort(order.begin(), order.end(), before);  // its first M as before
      }
      const int32_t u = order[i];
      if (count + static_cast<uint64_t>(units[u].size) <= budget) {
        S.taken[u] = 1;
        count += static_cast<uint64_t>(units[u].size);
      }
    }
  }
  if (count == 0 && budget > 0 && !order.empty()) S.taken[order[0]] = 1;
  // the selected tokens: labels and 80/10/10, a chunk's worth at a time
  for (int64_t c = 0; c < n; c += kChunk) {
    const int m = static_cast<int>(std::min<int64_t>(kChunk, n - c));
    int ns = 0;
    for (int q = 0; q < m; ++q) {
      const int64_t u = S.unit_of[c + q];
      sel[ns] = q;
      ns += u >= 0 && S.taken[u];
    }
    if (ns)
      replace_selected(isa, P, r.key, ids, c, sel, ns, out + r.start, lab + r.start, ctr, rx, ry,
                       rz, rw);
  }
}

// Exact mode without word ids or POS classes: every unit is one token with the same threshold,
// so the ranking of masking.h (u / t, ties by position) is the order of (u, position) and the
// budget takes the k smallest of those keys (packed in 64 bits, smallest_first). The draws come
// in vectorised Philox batches; same selection and replacements as exact_row, draw for draw.
template <typename T, typename TO>
void exact_row_plain(const Table& isa, const MaskInputs& in, const MaskParams& P,
                     const RowView<T>& r, TO* out, TO* lab, Problems& pr,
                     std::vector<uint64_t>& keys, std::vector<uint64_t>& spill) {
  alignas(64) uint32_t ctr[kChunk], rx[kChunk], ry[kChunk], rz[kChunk], rw[kChunk];
  alignas(64) uint32_t u[kChunk + 4];
  alignas(64) uint8_t allow[kChunk];
  alignas(64) int32_t sel[kChunk];
  const int64_t L = in.length;
  const int64_t base = r.row * L;
  const T* ids = r.ids + r.start;
  pass_through(r.ids, L, out, lab);
  keys.clear();
  const int64_t n = L - r.start;
  for (int64_t c = 0; c < n; c += kChunk) {  // eligibility and the selection draws, by chunk
    const int m = static_cast<int>(std::min<int64_t>(kChunk, n - c));
    const int last = eligible_chunk(isa, m, ids + c, in, base + r.start + c, P, allow, false, pr);
    if (P.t_select == 0 || last == 0) continue;
    row_draws(isa, r.key, selection_counters(c, last, ctr), ctr, rx, ry, rz, rw, u);
    const size_t had = keys.size();
    keys.resize(had + static_cast<size_t>(last));
    size_t nk = had;
    for (int q = 0; q < last; ++q) {  // branch-free: written always, kept when eligible
      keys[nk] = static_cast<uint64_t>(u[q]) << 32 | static_cast<uint64_t>(c + q);
      nk += allow[q];
    }
    keys.resize(nk);
  }
  const uint64_t units = keys.size();
  const uint64_t k = std::min<uint64_t>(exact_budget(units * P.t_select, units > 0), units);
  if (k < units) smallest_first(keys, k, spill);
  for (uint64_t s = 0; s < k; s += kChunk) {  // the k selected, a chunk's worth at a time
    const int ns = static_cast<int>(std::min<uint64_t>(kChunk, k - s));
    for (int i = 0; i < ns; ++i) sel[i] = static_cast<int32_t>(static_cast<uint32_t>(keys[s + i]));
    replace_selected(isa, P, r.key, ids, 0, sel, ns, out + r.start, lab + r.start, ctr, rx, ry, rz,
                     rw);
  }
}

}  // namespace

template <typename T, typename TO>
void word_exact_rows(const Kernel& kernel, const MaskInputs& in, const MaskParams& P, int64_t b0,
                     int64_t b1, TO* out, TO* lab, Problems& pr) {
  const Table isa{kernel};
  const int64_t L = in.length;
  ExactScratch exact;
  UnitScratch units;
  std::vector<uint64_t> keys, spill;
  for (int64_t b = b0; b < b1; ++b) {
    const T* ids = static_cast<const T*>(in.ids) + b * L;
    const uint64_t sid = in.sample_ids ? static_cast<uint64_t>(in.sample_ids[b]) : b;
    RowView<T> r{ids, b, row_start(in, b * L, L), row_key(P.seed, P.epoch, sid)};
    TO* o = out + b * L;
    TO* l = lab + b * L;
    if (in.exact && !in.word_ids && P.n_pos == 0)
      exact_row_plain(isa, in, P, r, o, l, pr, keys, spill);
    else if (in.exact && P.n_pos == 0) {
      if (!exact_words_row(isa, in, P, r, o, l, pr, units))
        exact_row(isa, in, P, r, o, l, pr, exact);
    } else if (in.exact)
      exact_row(isa, in, P, r, o, l, pr, exact);
    else
      bernoulli_row(isa, in, P, r, o, l, pr);
  }
}

template void word_exact_rows<int64_t, int64_t>(const Kernel&, const MaskInputs&, const MaskParams&,
                                                int64_t, int64_t, int64_t*, int64_t*, Problems&);
template void word_exact_rows<int32_t, int32_t>(const Kernel&, const MaskInputs&, const MaskParams&,
                                                int64_t, int64_t, int32_t*, int32_t*, Problems&);
template void word_exact_rows<int32_t, int64_t>(const Kernel&, const MaskInputs&, const MaskParams&,
                                                int64_t, int64_t, int64_t*, int64_t*, Problems&);

}  // namespace mlmfast::cpu
