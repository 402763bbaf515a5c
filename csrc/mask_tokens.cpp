#include "mask_tokens.h"

#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

namespace mlmfast {
namespace {

void check_probability(const char* name, double p) {
  TORCH_CHECK(std::isfinite(p) && p >= 0.0 && p <= 1.0, "mask_tokens: ", name,
              " must be a probability in [0, 1], got ", p);
}

int32_t flag_kind(const at::Tensor& t, const char* name) {
  switch (t.scalar_type()) {
    case at::kBool:
    case at::kByte:
      return kByte;
    case at::kInt:
      return kInt32;
    case at::kLong:
      return kInt64;
    default:
      TORCH_CHECK(false, "mask_tokens: ", name, " must be bool, uint8, int32 or int64, got ",
                  t.scalar_type());
  }
  return kNone;
}

at::Tensor per_token(const c10::optional<at::Tensor>& t, const at::Tensor& ids, const char* name) {
  const at::Tensor& x = *t;
  TORCH_CHECK(x.device() == ids.device(), "mask_tokens: ", name, " is on ", x.device(),
              " but input_ids is on ", ids.device());
  TORCH_CHECK(x.sizes() == ids.sizes(), "mask_tokens: ", name, " must have the shape of input_ids ",
              ids.sizes(), ", got ", x.sizes());
  return x.contiguous();
}

}  // namespace

void prepare_mask_call(const at::Tensor& input_ids, const MaskArgs& a, MaskParams& P,
                       MaskInputs& in, std::vector<at::Tensor>& keep) {
  TORCH_CHECK(input_ids.dim() == 2, "mask_tokens: input_ids must be 2-D [batch, length], got ",
              input_ids.dim(), "-D of shape ", input_ids.sizes());
  TORCH_CHECK(input_ids.scalar_type() == at::kLong || input_ids.scalar_type() == at::kInt,
              "mask_tokens: input_ids must be int64 or int32, got ", input_ids.scalar_type());
  const int64_t B = input_ids.size(0), L = input_ids.size(1);
  TORCH_CHECK(L < kMaxRowLength,
              "mask_tokens: rows longer than 2^30 tokens are not supported, got ", L);

  check_probability("mlm_probability", a.mlm_probability);
  check_probability("mask_replace_prob", a.mask_replace_prob);
  check_probability("random_replace_prob", a.random_replace_prob);
  TORCH_CHECK(a.mask_replace_prob + a.random_replace_prob <= 1.0 + 1e-9,
              "mask_tokens: mask_replace_prob + random_replace_prob must be <= 1, got ",
              a.mask_replace_prob, " + ", a.random_replace_prob);
  TORCH_CHECK(a.vocab_size > 0 && a.vocab_size <= int64_t(0xFFFFFFFF),
              "mask_tokens: vocab_size must be in [1, 2^32), got ", a.vocab_size);
  TORCH_CHECK(a.mask_token_id >= 0 && a.mask_token_id < a.vocab_size,
              "mask_tokens: mask_token_id must be in [0, vocab_size=", a.vocab_size, "), got ",
              a.mask_token_id);
  TORCH_CHECK(a.epoch >= 0 && a.epoch <= int64_t(0xFFFFFFFF),
              "mask_tokens: epoch must be in [0, 2^32), got ", a.epoch);

  std::vector<int64_t> specials(a.special_ids.begin(), a.special_ids.end());
  for (int64_t s : specials) {
    TORCH_CHECK(s >= 0 && s < a.vocab_size,
                "mask_tokens: special_ids must be in [0, vocab_size=", a.vocab_size, "), got ", s);
  }
  std::sort(specials.begin(), specials.end());
  specials.erase(std::unique(specials.begin(), specials.end()), specials.end());
  TORCH_CHECK(static_cast<int64_t>(specials.size()) <= kMaxSpecialIds, "mask_tokens: at most ",
              kMaxSpecialIds, " distinct special_ids are supported, got ", specials.size(),
              "; mark further tokens through special_tokens_mask");

  P = MaskParams{};
  P.seed = static_cast<uint64_t>(a.seed);
  P.epoch = static_cast<uint32_t>(a.epoch);
  P.t_select = threshold_of(a.mlm_probability);
  P.t_mask = threshold_of(a.mask_replace_prob);
  P.t_random = std::min(threshold_of(a.random_replace_prob), kOne - P.t_mask);
  P.mask_token_id = a.mask_token_id;
  P.vocab_size = a.vocab_size;
  P.n_special = static_cast<int32_t>(specials.size());
  for (size_t i = 0; i < specials.size(); ++i) P.special[i] = specials[i];
  P.n_skip = a.exclude_special_from_random ? P.n_special : 0;
  P.n_random = a.vocab_size - P.n_skip;
  TORCH_CHECK(P.n_random > 0 || P.t_random == 0,
              "mask_tokens: random_replace_prob > 0 but every id of the vocabulary is special");

  if (a.span_cdf.has_value()) {  // mode="span" (span_mask.h)
    const auto cdf = *a.span_cdf;
    TORCH_CHECK_VALUE(!a.exact, "mask_tokens: span_cdf (mode='span') and exact exclude each other");
    TORCH_CHECK_VALUE(!a.pos_ids.has_value() && !a.pos_probs.has_value(),
                      "mask_tokens: mode='span' does not take pos_ids/pos_probs");
    TORCH_CHECK_VALUE(static_cast<int64_t>(cdf.size()) < kMaxSpanWords,
                      "mask_tokens: span_cdf must have at most ", kMaxSpanWords - 1,
                      " thresholds (spans of up to ", kMaxSpanWords, " words), got ", cdf.size());
    for (size_t j = 0; j < cdf.size(); ++j) {
      TORCH_CHECK_VALUE(
          cdf[j] >= 0 && cdf[j] <= int64_t(0xFFFFFFFF) && (j == 0 || cdf[j] >= cdf[j - 1]),
          "mask_tokens: span_cdf must be non-decreasing uint32 thresholds, got ", cdf[j], " at ",
          j);
      P.span_cdf[j] = static_cast<uint32_t>(cdf[j]);
    }
    P.n_span = static_cast<int32_t>(cdf.size()) + 1;
    P.span_token_replace = a.span_token_replace;
  }

  in = MaskInputs{};
  in.batch = B;
  in.length = L;
  in.exact = a.exact;
  at::Tensor ids = input_ids.contiguous();
  keep.push_back(ids);
  in.ids = ids.data_ptr();
  in.ids_kind = ids.scalar_type() == at::kLong ? kInt64 : kInt32;

  if (a.attention_mask.has_value()) {
    at::Tensor t = per_token(a.attention_mask, input_ids, "attention_mask");
    in.attention_kind = flag_kind(t, "attention_mask");
    keep.push_back(t);
    in.attention = t.data_ptr();
  }
  if (a.special_tokens_mask.has_value()) {
    at::Tensor t = per_token(a.special_tokens_mask, input_ids, "special_tokens_mask");
    in.special_mask_kind = flag_kind(t, "special_tokens_mask");
    keep.push_back(t);
    in.special_mask = t.data_ptr();
  }
  if (a.word_ids.has_value()) {
    at::Tensor t = per_token(a.word_ids, input_ids, "word_ids");
    TORCH_CHECK(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt,
                "mask_tokens: word_ids must be int64 or int32 (-1 = no word), got ",
                t.scalar_type());
    in.word_kind = t.scalar_type() == at::kLong ? kInt64 : kInt32;
    keep.push_back(t);
    in.word_ids = t.data_ptr();
  }
  TORCH_CHECK(a.pos_ids.has_value() == a.pos_probs.has_value(),
              "mask_tokens: pos_ids and pos_probs go together: got pos_ids ",
              a.pos_ids.has_value() ? "set" : "None", " and pos_probs ",
              a.pos_probs.has_value() ? "set" : "None");
  if (a.pos_ids.has_value()) {
    at::Tensor t = per_token(a.pos_ids, input_ids, "pos_ids");
    TORCH_CHECK(t.scalar_type() == at::kByte, "mask_tokens: pos_ids must be uint8 classes, got ",
                t.scalar_type());
    keep.push_back(t);
    in.pos_ids = t.data_ptr<uint8_t>();
    const auto probs = *a.pos_probs;
    TORCH_CHECK(!probs.empty() && static_cast<int64_t>(probs.size()) <= kMaxPosClasses,
                "mask_tokens: pos_probs must have 1 to ", kMaxPosClasses, " entries, got ",
                probs.size());
    P.n_pos = static_cast<int32_t>(probs.size());
    for (size_t c = 0; c < probs.size(); ++c) {
      TORCH_CHECK(std::isfinite(probs[c]) && probs[c] >= 0.0 && probs[c] <= 1.0,
                  "mask_tokens: pos_probs[", c, "] must be a probability in [0, 1], got ",
                  probs[c]);
      P.t_pos[c] = threshold_of(probs[c]);
    }
  }
  if (a.sample_ids.has_value()) {
    const at::Tensor& s = *a.sample_ids;
    TORCH_CHECK(s.device() == input_ids.device(), "mask_tokens: sample_ids is on ", s.device(),
                " but input_ids is on ", input_ids.device());
    TORCH_CHECK(s.dim() == 1 && s.size(0) == B && s.scalar_type() == at::kLong,
                "mask_tokens: sample_ids must be int64 of shape [", B, "], got ", s.scalar_type(),
                " of shape ", s.sizes());
    at::Tensor t = s.contiguous();
    keep.push_back(t);
    in.sample_ids = t.data_ptr<int64_t>();
  }
  if (a.rng_state.has_value()) {
    const at::Tensor& s = *a.rng_state;
    TORCH_CHECK(s.device() == input_ids.device(), "mask_tokens: rng_state is on ", s.device(),
                " but input_ids is on ", input_ids.device());
    TORCH_CHECK(s.dim() == 1 && s.size(0) == 2 && s.scalar_type() == at::kLong,
                "mask_tokens: rng_state must be int64 [seed, epoch] of shape [2], got ",
                s.scalar_type(), " of shape ", s.sizes());
    at::Tensor t = s.contiguous();
    keep.push_back(t);
    in.rng_state = t.data_ptr<int64_t>();
  }
}

namespace {
// An output must share no memory with a tensor the kernel reads: it would read what it has
// already written (labels over the attention mask turn padding into tokens). The test is on
// storage, not on byte ranges, so a view of any part of an input's storage counts.
void check_no_shared_memory(const char* op, const char* name, const at::Tensor& output,
                            const MaskArgs& a) {
  const std::pair<const char*, const c10::optional<at::Tensor>*> inputs[] = {
      {"attention_mask", &a.attention_mask},
      {"special_tokens_mask", &a.special_tokens_mask},
      {"word_ids", &a.word_ids},
      {"pos_ids", &a.pos_ids},
      {"sample_ids", &a.sample_ids},
      {"rng_state", &a.rng_state}};
  for (const auto& [input, t] : inputs) {
    TORCH_CHECK(!t->has_value() || !(*t)->defined() || !output.is_alias_of(**t), op, ": ", name,
                " must share no memory with ", input, "; pass a separate tensor");
  }
}
}  // namespace

void check_outputs(const at::Tensor& input_ids, const at::Tensor& labels, const MaskArgs& a) {
  TORCH_CHECK(
      labels.sizes() == input_ids.sizes() && labels.scalar_type() == input_ids.scalar_type(),
      "mask_tokens_: labels must match input_ids (", input_ids.scalar_type(), " ",
      input_ids.sizes(), "), got ", labels.scalar_type(), " ", labels.sizes());
  TORCH_CHECK(labels.device() == input_ids.device(), "mask_tokens_: labels is on ", labels.device(),
              " but input_ids is on ", input_ids.device());
  TORCH_CHECK(input_ids.is_contiguous() && labels.is_contiguous(),
              "mask_tokens_: input_ids and labels must be contiguous for the in-place form");
  // the same rule as mask_tokens_into: not only the same tensor, any view of its memory
  TORCH_CHECK(!labels.is_alias_of(input_ids),
              "mask_tokens_: labels must share no memory with input_ids; pass a separate tensor");
  check_no_shared_memory("mask_tokens_", "input_ids", input_ids, a);
  check_no_shared_memory("mask_tokens_", "labels", labels, a);
}

void check_into_outputs(const at::Tensor& input_ids, const at::Tensor& out,
                        const at::Tensor& labels, const MaskArgs& a) {
  const at::ScalarType t = input_ids.scalar_type();
  for (const auto& [name, x] : {std::pair<const char*, const at::Tensor&>{"out", out},
                                std::pair<const char*, const at::Tensor&>{"labels", labels}}) {
    TORCH_CHECK(x.sizes() == input_ids.sizes(), "mask_tokens_into: ", name,
                " must have the shape of input_ids ", input_ids.sizes(), ", got ", x.sizes());
    TORCH_CHECK(x.scalar_type() == t || (t == at::kInt && x.scalar_type() == at::kLong),
                "mask_tokens_into: ", name, " must be ", t,
                t == at::kInt ? " or int64 (widened)" : "", " like input_ids, got ",
                x.scalar_type());
    TORCH_CHECK(x.device() == input_ids.device(), "mask_tokens_into: ", name, " is on ", x.device(),
                " but input_ids is on ", input_ids.device());
    TORCH_CHECK(x.is_contiguous(), "mask_tokens_into: ", name, " must be contiguous");
  }
  TORCH_CHECK(out.scalar_type() == labels.scalar_type(),
              "mask_tokens_into: out and labels must have one dtype, got ", out.scalar_type(),
              " and ", labels.scalar_type());
  const bool in_place =
      out.data_ptr() == input_ids.data_ptr() && out.scalar_type() == t && input_ids.is_contiguous();
  TORCH_CHECK(in_place || !out.is_alias_of(input_ids),
              "mask_tokens_into: out must be input_ids itself (in place) or share no memory "
              "with it");
  TORCH_CHECK(!labels.is_alias_of(input_ids) && !labels.is_alias_of(out),
              "mask_tokens_into: labels must share no memory with input_ids or out");
  check_no_shared_memory("mask_tokens_into", "out", out, a);
  check_no_shared_memory("mask_tokens_into", "labels", labels, a);
}

namespace {
MaskArgs pack(MLMFAST_MASK_PARAMS) {
  MaskArgs a;
  a.attention_mask = attention_mask;
  a.special_tokens_mask = special_tokens_mask;
  a.word_ids = word_ids;
  a.pos_ids = pos_ids;
  a.sample_ids = sample_ids;
  a.rng_state = rng_state;
  a.pos_probs = pos_probs;
  a.special_ids = special_ids;
  a.mlm_probability = mlm_probability;
  a.mask_replace_prob = mask_replace_prob;
  a.random_replace_prob = random_replace_prob;
  a.mask_token_id = mask_token_id;
  a.vocab_size = vocab_size;
  a.seed = seed;
  a.epoch = epoch;
  a.exact = exact;
  a.exclude_special_from_random = exclude_special_from_random;
  a.span_cdf = span_cdf;
  a.span_token_replace = span_token_replace;
  return a;
}

template <typename T>
int64_t first_out_of_vocab(const at::Tensor& ids, const MaskInputs& in, int64_t vocab_size) {
  const T* p = ids.data_ptr<T>();
  const int64_t n = in.batch * in.length;
  // Fast, vectorisable screen over every id; the exact (attention-aware) scan runs only when it
  // finds something, since padding may legitimately hold any id.
  bool any = false;
  for (int64_t i = 0; i < n; ++i) any |= (p[i] < 0) | (static_cast<int64_t>(p[i]) >= vocab_size);
  if (!any) return -1;
  for (int64_t i = 0; i < n; ++i) {
    const bool att = !in.attention || load_flag(in.attention, in.attention_kind, i);
    if (att && (p[i] < 0 || static_cast<int64_t>(p[i]) >= vocab_size)) return i;
  }
  return -1;
}

// Everything the CPU kernel would reject, checked before the in-place form writes anything.
void check_before_writing(const at::Tensor& input_ids, const MaskInputs& in, const MaskParams& P) {
  const int64_t n = in.batch * in.length, L = in.length;
  const int64_t bad = input_ids.scalar_type() == at::kLong
                          ? first_out_of_vocab<int64_t>(input_ids, in, P.vocab_size)
                          : first_out_of_vocab<int32_t>(input_ids, in, P.vocab_size);
  TORCH_CHECK(bad < 0, "mask_tokens_: input_ids[", bad / L, ", ", bad % L,
              "] is outside the vocabulary [0, vocab_size=", P.vocab_size,
              "); input_ids left unchanged");
  if (in.pos_ids) {
    for (int64_t i = 0; i < n; ++i) {
      TORCH_CHECK(in.pos_ids[i] < P.n_pos, "mask_tokens_: pos_ids[", i / L, ", ", i % L,
                  "] = ", int(in.pos_ids[i]), " has no entry in pos_probs (", P.n_pos,
                  " classes); input_ids left unchanged");
    }
  }
  if (in.word_ids) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t w = load_word(in.word_ids, in.word_kind, i);
      TORCH_CHECK(w <= int64_t(0xFFFFFFFF), "mask_tokens_: word_ids[", i / L, ", ", i % L,
                  "] = ", w, " must be below 2^32; input_ids left unchanged");
    }
  }
}
}  // namespace

std::tuple<at::Tensor, at::Tensor> mask_tokens_out_of_place(MaskKernel kernel,
                                                            const at::Tensor& input_ids,
                                                            MLMFAST_MASK_PARAMS) {
  const MaskArgs a = pack(MLMFAST_MASK_ARGS_PASS);
  MaskParams P;
  MaskInputs in;
  std::vector<at::Tensor> keep;
  prepare_mask_call(input_ids, a, P, in, keep);
  at::Tensor out = at::empty(input_ids.sizes(), input_ids.options());
  at::Tensor labels = at::empty(input_ids.sizes(), input_ids.options());
  if (in.batch > 0 && in.length > 0) kernel(in, P, out, labels);
  return {out, labels};
}

void mask_tokens_in_place(MaskKernel kernel, bool check_first, const at::Tensor& input_ids,
                          const at::Tensor& labels, MLMFAST_MASK_PARAMS) {
  const MaskArgs a = pack(MLMFAST_MASK_ARGS_PASS);
  MaskParams P;
  MaskInputs in;
  std::vector<at::Tensor> keep;
  check_outputs(input_ids, labels, a);
  prepare_mask_call(input_ids, a, P, in, keep);
  if (in.batch == 0 || in.length == 0) return;
  if (check_first) check_before_writing(input_ids, in, P);  // a bad batch is left intact
  at::Tensor out = input_ids;
  at::Tensor lab = labels;
  kernel(in, P, out, lab);
}

void mask_tokens_into(MaskKernel kernel, bool kernel_widens, bool check_first,
                      const at::Tensor& input_ids, const at::Tensor& out, const at::Tensor& labels,
                      MLMFAST_MASK_PARAMS) {
  const MaskArgs a = pack(MLMFAST_MASK_ARGS_PASS);
  MaskParams P;
  MaskInputs in;
  std::vector<at::Tensor> keep;
  check_into_outputs(input_ids, out, labels, a);
  prepare_mask_call(input_ids, a, P, in, keep);
  if (in.batch == 0 || in.length == 0) return;
  // in place: a bad batch is left intact (the out-of-place kernel writes only fresh memory)
  if (check_first && out.data_ptr() == input_ids.data_ptr()) check_before_writing(input_ids, in, P);
  at::Tensor o = out;
  at::Tensor l = labels;
  if (out.scalar_type() == input_ids.scalar_type() || kernel_widens) {
    kernel(in, P, o, l);
    return;
  }
  at::Tensor o_narrow = at::empty(input_ids.sizes(), input_ids.options());
  at::Tensor l_narrow = at::empty(input_ids.sizes(), input_ids.options());
  kernel(in, P, o_narrow, l_narrow);
  o.copy_(o_narrow);
  l.copy_(l_narrow);
}

}  // namespace mlmfast
