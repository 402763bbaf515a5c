// The CPU backend of the op: rows in parallel (at::parallel_for), each thread's rows by the
// kernel dispatch.cpp chose (the default mode without word ids or POS classes) or by
// word_exact.cpp (whole words, POS classes, exact mode) or span_rows.cpp (mode="span"); one pass
// per row, no intermediate tensors besides the outputs. Problems the rows reveal (ids outside the
// vocabulary, ...) are reported after the parallel region. The decision rule comes from masking.h.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <string>

#include "cpu/kernel.h"
#include "mask_tokens.h"

namespace mlmfast {
namespace {

// The first flat index of a kind of problem over all threads (the lowest wins, so the message
// does not depend on the thread count).
struct ProblemLog {
  std::atomic<int64_t> index{cpu::kNoProblem};
  void note(int64_t i) {
    int64_t cur = index.load(std::memory_order_relaxed);
    while (i < cur && !index.compare_exchange_weak(cur, i, std::memory_order_relaxed)) {
    }
  }
  bool any() const { return index.load() != cpu::kNoProblem; }
};

template <typename T, typename TO>
void run_cpu(const MaskInputs& in, const MaskParams& P0, TO* out, TO* lab) {
  const int64_t B = in.batch, L = in.length;
  MaskParams P = P0;
  if (in.rng_state) {
    P.seed = static_cast<uint64_t>(in.rng_state[0]);
    P.epoch = static_cast<uint32_t>(in.rng_state[1]);
  }
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(L, 1));
  const cpu::Kernel& kernel = cpu::cpu_kernel();
  const bool plain = !in.exact && !in.word_ids && P.n_pos == 0 && P.n_span == 0;
  ProblemLog bad_id, bad_pos, bad_word;
  at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
    cpu::Problems pr;
    if (P.n_span > 0)
      cpu::span_rows<T, TO>(in, P, b0, b1, out, lab, pr);
    else if (plain)
      kernel.plain<T, TO>()(in, P, b0, b1, out, lab, pr);
    else
      cpu::word_exact_rows<T, TO>(kernel, in, P, b0, b1, out, lab, pr);
    bad_id.note(pr.bad_id);
    bad_pos.note(pr.bad_pos);
    bad_word.note(pr.bad_word);
  });
  auto where = [&](int64_t flat) {
    return std::string("[") + std::to_string(flat / L) + ", " + std::to_string(flat % L) + "]";
  };
  if (bad_id.any()) {
    const int64_t f = bad_id.index.load();
    TORCH_CHECK(false, "mask_tokens: input_ids", where(f), " = ",
                static_cast<int64_t>(static_cast<const T*>(in.ids)[f]),
                " is outside the vocabulary [0, vocab_size=", P.vocab_size, ")");
  }
  if (bad_pos.any()) {
    const int64_t f = bad_pos.index.load();
    TORCH_CHECK(false, "mask_tokens: pos_ids", where(f), " = ", int(in.pos_ids[f]),
                " has no entry in pos_probs (", P.n_pos, " classes)");
  }
  if (bad_word.any()) {
    const int64_t f = bad_word.index.load();
    TORCH_CHECK(false, "mask_tokens: word_ids", where(f), " = ",
                load_word(in.word_ids, in.word_kind, f), " must be below 2^32");
  }
}

// ids int64 -> int64, int32 -> int32, or int32 -> int64 (the out= form's widening).
void cpu_kernel(const MaskInputs& in, const MaskParams& P, at::Tensor& out, at::Tensor& labels) {
  const bool wide = out.scalar_type() == at::kLong;
  if (in.ids_kind == kInt64) {
    run_cpu<int64_t, int64_t>(in, P, out.data_ptr<int64_t>(), labels.data_ptr<int64_t>());
  } else if (wide) {
    run_cpu<int32_t, int64_t>(in, P, out.data_ptr<int64_t>(), labels.data_ptr<int64_t>());
  } else {
    run_cpu<int32_t, int32_t>(in, P, out.data_ptr<int32_t>(), labels.data_ptr<int32_t>());
  }
}

std::tuple<at::Tensor, at::Tensor> mask_tokens_cpu(const at::Tensor& input_ids,
                                                   MLMFAST_MASK_PARAMS) {
  return mask_tokens_out_of_place(&cpu_kernel, input_ids, MLMFAST_MASK_ARGS_PASS);
}

void mask_tokens_inplace_cpu(const at::Tensor& input_ids, const at::Tensor& labels,
                             MLMFAST_MASK_PARAMS) {
  mask_tokens_in_place(&cpu_kernel, /*check_first=*/true, input_ids, labels,
                       MLMFAST_MASK_ARGS_PASS);
}

void mask_tokens_into_cpu(const at::Tensor& input_ids, const at::Tensor& out,
                          const at::Tensor& labels, MLMFAST_MASK_PARAMS) {
  mask_tokens_into(&cpu_kernel, /*kernel_widens=*/true, /*check_first=*/true, input_ids, out,
                   labels, MLMFAST_MASK_ARGS_PASS);
}

// Raw Philox4x32-10 blocks, for known-answer tests and for reference.py's self-check.
at::Tensor philox_cpu(const at::Tensor& counters, int64_t seed) {
  TORCH_CHECK(counters.dim() == 2 && counters.size(1) == 4 && counters.scalar_type() == at::kLong,
              "philox4x32_10: counters must be int64 [N, 4], got ", counters.scalar_type(), " ",
              counters.sizes());
  at::Tensor c = counters.contiguous();
  at::Tensor out = at::empty_like(c);
  const int64_t* ci = c.data_ptr<int64_t>();
  int64_t* o = out.data_ptr<int64_t>();
  const uint64_t s = static_cast<uint64_t>(seed);
  for (int64_t i = 0; i < c.size(0); ++i) {
    const u32x4 r = philox4x32_10(
        u32x4{static_cast<uint32_t>(ci[4 * i]), static_cast<uint32_t>(ci[4 * i + 1]),
              static_cast<uint32_t>(ci[4 * i + 2]), static_cast<uint32_t>(ci[4 * i + 3])},
        u32x2{static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32)});
    o[4 * i] = r.x;
    o[4 * i + 1] = r.y;
    o[4 * i + 2] = r.z;
    o[4 * i + 3] = r.w;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(mlmfast, CPU, m) {
  m.impl("mask_tokens", &mask_tokens_cpu);
  m.impl("mask_tokens_", &mask_tokens_inplace_cpu);
  m.impl("mask_tokens_into", &mask_tokens_into_cpu);
  m.impl("philox4x32_10", &philox_cpu);
}

}  // namespace mlmfast
