// The device code of the CUDA op: the Bernoulli and exact kernels and their launch geometry.
// Included by mask_tokens_cuda.cu, and by tests/cuda_emu/emu.cpp, which runs these kernels on the
// CPU (one std::thread per CUDA thread) so that the tests check them against the reference on
// machines without a GPU. Inside namespace mlmfast::(anonymous), after mask_tokens.h.
#pragma once

// Dynamic shared memory of the exact kernel (the emulation defines its own).
#ifndef MLMFAST_DYNAMIC_SHARED
#define MLMFAST_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

constexpr int kThreads = 128;  // Bernoulli kernel: 4 tokens per thread
constexpr int kTokensPerBlock = 4 * kThreads;
constexpr int kExactThreads = 256;    // exact kernel: one block per row
constexpr int64_t kMaxGridY = 65535;  // CUDA's limit on gridDim.y

// Four consecutive elements; one or two 16-byte transactions when the row layout allows it.
template <typename T, bool kVec>
__device__ __forceinline__ void load4(const T* p, int64_t j, int64_t n, T (&v)[4]) {
  if (kVec) {
    if constexpr (sizeof(T) == 8) {
      const longlong2 a = *reinterpret_cast<const longlong2*>(p + j);
      const longlong2 b = *reinterpret_cast<const longlong2*>(p + j + 2);
      v[0] = static_cast<T>(a.x), v[1] = static_cast<T>(a.y);
      v[2] = static_cast<T>(b.x), v[3] = static_cast<T>(b.y);
    } else {
      const int4 a = *reinterpret_cast<const int4*>(p + j);
      v[0] = static_cast<T>(a.x), v[1] = static_cast<T>(a.y);
      v[2] = static_cast<T>(a.z), v[3] = static_cast<T>(a.w);
    }
  } else {
#pragma unroll
    for (int q = 0; q < 4; ++q) v[q] = (j + q < n) ? p[j + q] : T(0);
  }
}

template <typename T, bool kVec>
__device__ __forceinline__ void store4(T* p, int64_t j, int64_t n, const T (&v)[4]) {
  if (kVec) {
    if constexpr (sizeof(T) == 8) {
      *reinterpret_cast<longlong2*>(p + j) = make_longlong2(v[0], v[1]);
      *reinterpret_cast<longlong2*>(p + j + 2) = make_longlong2(v[2], v[3]);
    } else {
      *reinterpret_cast<int4*>(p + j) = make_int4(v[0], v[1], v[2], v[3]);
    }
  } else {
#pragma unroll
    for (int q = 0; q < 4; ++q)
      if (j + q < n) p[j + q] = v[q];
  }
}

// The Philox key of a row: seed/epoch from the parameters, or from the device tensor when given
// (read on the device, so the launch can live in a CUDA graph), and the row's sample id.
__device__ __forceinline__ RowKey row_key_of(const MaskInputs& in, const MaskParams& P,
                                             int64_t row) {
  uint64_t seed = P.seed;
  uint32_t epoch = P.epoch;
  if (in.rng_state) {
    seed = static_cast<uint64_t>(in.rng_state[0]);
    epoch = static_cast<uint32_t>(in.rng_state[1]);
  }
  const uint64_t sid = in.sample_ids ? static_cast<uint64_t>(in.sample_ids[row]) : row;
  return row_key(seed, epoch, sid);
}

// First attended position of a row (0 without attention mask). Block-wide; uniform result.
__device__ int64_t block_row_start(const MaskInputs& in, int64_t base, int64_t L,
                                   unsigned long long* s_min) {
  if (!in.attention) return 0;
  if (threadIdx.x == 0) *s_min = static_cast<unsigned long long>(L);
  __syncthreads();
  const int64_t step = static_cast<int64_t>(blockDim.x) * 4;
  for (int64_t c = 0; c < L; c += step) {
    int64_t local = L;
    for (int q = 3; q >= 0; --q) {
      const int64_t j = c + 4 * static_cast<int64_t>(threadIdx.x) + q;
      if (j < L && load_flag(in.attention, in.attention_kind, base + j)) local = j;
    }
    if (local < L) atomicMin(s_min, static_cast<unsigned long long>(local));
    if (__syncthreads_or(local < L)) break;
  }
  __syncthreads();
  return static_cast<int64_t>(*s_min);
}

template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads)
    bernoulli_kernel(MaskInputs in, MaskParams P, T* __restrict__ out, T* __restrict__ lab) {
  __shared__ unsigned long long s_min;
  const int64_t L = in.length;
  const int64_t row = blockIdx.x;
  const int64_t base = row * L;
  const int64_t start = block_row_start(in, base, L, &s_min);
  const RowKey key = row_key_of(in, P, row);
  const T* ids = static_cast<const T*>(in.ids) + base;

  // gridDim.y is at most kMaxGridY: a row of more tokens than that many blocks cover (the CPU op
  // takes rows of up to 2^30) is done in several passes of the grid.
  const int64_t stride = static_cast<int64_t>(gridDim.y) * kTokensPerBlock;
  for (int64_t j0 = (static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x) * 4; j0 < L;
       j0 += stride) {
    T v[4], o[4], l[4];
    load4<T, kVec>(ids, j0, L, v);

    int64_t cached_block = -1;
    u32x4 block{};
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t j = j0 + q;
      const int64_t flat = base + j;
      const int64_t rel = j - start;
      bool selected = false;
      if (j < L && rel >= 0) {
        bool eligible = !is_special(P, static_cast<int64_t>(v[q]));
        if (in.attention) eligible &= load_flag(in.attention, in.attention_kind, flat);
        if (in.special_mask) eligible &= !load_flag(in.special_mask, in.special_mask_kind, flat);
        if (eligible) {
          const uint64_t t = token_threshold(P, in.pos_ids ? in.pos_ids[flat] : 0);
          const int64_t w = in.word_ids ? load_word(in.word_ids, in.word_kind, flat) : -1;
          uint32_t u;
          if (w >= 0) {
            u = word_draw(key, static_cast<uint64_t>(w));
          } else {
            const int64_t b = rel >> 2;
            if (b != cached_block) {
              cached_block = b;
              block = select_block(key, static_cast<uint32_t>(b));
            }
            u = lane(block, static_cast<int>(rel & 3));
          }
          selected = hits(u, t);
        }
      }
      emit(P, key, selected, static_cast<uint32_t>(rel), v[q], o[q], l[q]);
    }
    store4<T, kVec>(out + base, j0, L, o);
    store4<T, kVec>(lab + base, j0, L, l);
  }
}

// Exact mode: one block per row. Units (tokens, or words) are ranked by counting, for each
// unit, how many units rank before it (O(L^2 / threads) comparisons in shared memory: cheap for
// rows of a few thousand tokens, and no sort); the budget rule of masking.h then takes them in
// rank order. Word units need the sequential "fits in the budget" walk, done by one thread.
struct ExactShared {
  int64_t* key;     // word id (>= 0), -1 for a token unit, -2 for an ineligible token
  uint64_t* t;      // threshold
  uint32_t* u;      // draw
  int32_t* leader;  // first position of the token's unit, -1 if ineligible
  int32_t* size;    // tokens in the unit (at the leader)
  int32_t* order;   // order[rank] = leader
  uint8_t* taken;   // at the leader
};

// Working memory of a row: in shared memory where it fits (rows of up to ~7,000 tokens on an
// H100/H200), else in the row's slice of a global scratch buffer (exact_row_stride apart).
__host__ __device__ inline size_t exact_shared_bytes(int64_t L) {
  return static_cast<size_t>(L) * (8 + 8 + 4 + 4 + 4 + 4 + 1) + 64;
}
__host__ __device__ inline size_t exact_row_stride(int64_t L) {
  return (exact_shared_bytes(L) + 15) & ~static_cast<size_t>(15);
}

template <typename T>
__global__ void __launch_bounds__(kExactThreads)
    exact_kernel(MaskInputs in, MaskParams P, T* __restrict__ out, T* __restrict__ lab,
                 unsigned char* scratch) {
  MLMFAST_DYNAMIC_SHARED(smem);
  __shared__ unsigned long long s_min, s_tsum;
  __shared__ int s_any_positive, s_units, s_words;
  const int64_t L = in.length;
  const int64_t row = blockIdx.x;
  const int64_t base = row * L;
  unsigned char* mem = scratch ? scratch + static_cast<size_t>(row) * exact_row_stride(L) : smem;
  ExactShared S;
  S.key = reinterpret_cast<int64_t*>(mem);
  S.t = reinterpret_cast<uint64_t*>(S.key + L);
  S.u = reinterpret_cast<uint32_t*>(S.t + L);
  S.leader = reinterpret_cast<int32_t*>(S.u + L);
  S.size = S.leader + L;
  S.order = S.size + L;
  S.taken = reinterpret_cast<uint8_t*>(S.order + L);

  const int64_t start = block_row_start(in, base, L, &s_min);
  if (threadIdx.x == 0) {
    s_tsum = 0;
    s_any_positive = 0;
    s_units = 0;
    s_words = 0;
  }
  const RowKey key = row_key_of(in, P, row);
  const T* ids = static_cast<const T*>(in.ids) + base;
  __syncthreads();

  // 1. eligibility, draws, thresholds, budget
  unsigned long long tsum = 0;
  int any_positive = 0;
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) {
    const int64_t flat = base + j;
    const int64_t rel = j - start;
    bool eligible = rel >= 0 && !is_special(P, static_cast<int64_t>(ids[j]));
    if (in.attention) eligible = eligible && load_flag(in.attention, in.attention_kind, flat);
    if (in.special_mask)
      eligible = eligible && !load_flag(in.special_mask, in.special_mask_kind, flat);
    S.leader[j] = -1;
    S.size[j] = 0;
    S.taken[j] = 0;
    if (!eligible) {
      S.key[j] = -2;
      continue;
    }
    const uint64_t t = token_threshold(P, in.pos_ids ? in.pos_ids[flat] : 0);
    const int64_t w = in.word_ids ? load_word(in.word_ids, in.word_kind, flat) : -1;
    S.key[j] = w >= 0 ? w : -1;
    S.t[j] = t;
    S.u[j] = w >= 0 ? word_draw(key, static_cast<uint64_t>(w))
                    : lane(select_block(key, static_cast<uint32_t>(rel >> 2)),
                           static_cast<int>(rel & 3));
    tsum += t;
    any_positive |= t > 0;
  }
  if (tsum) atomicAdd(&s_tsum, tsum);
  if (any_positive) atomicOr(&s_any_positive, 1);
  __syncthreads();

  // 2. units: a word's leader is its first eligible position
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) {
    const int64_t k = S.key[j];
    if (k == -2) continue;
    int32_t leader = static_cast<int32_t>(j);
    if (k >= 0) {
      for (int64_t i = 0; i < j; ++i)
        if (S.key[i] == k) {
          leader = static_cast<int32_t>(i);
          break;
        }
    }
    S.leader[j] = leader;
    atomicAdd(&S.size[leader], 1);
  }
  __syncthreads();

  // 3. rank units with t > 0
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) {
    if (S.leader[j] != j || S.t[j] == 0) continue;
    int32_t rank = 0;
    for (int64_t i = 0; i < L; ++i) {
      if (i == j || S.leader[i] != i || S.t[i] == 0) continue;
      rank += ranks_before(S.u[i], S.t[i], i, S.u[j], S.t[j], j);
    }
    S.order[rank] = static_cast<int32_t>(j);
    atomicAdd(&s_units, 1);
    if (S.key[j] >= 0 && S.size[j] > 1) atomicAdd(&s_words, 1);
  }
  __syncthreads();

  // 4. take units in rank order within the budget
  const uint64_t k = exact_budget(s_tsum, s_any_positive != 0);
  const int n_units = s_units;
  if (s_words == 0) {
    for (int64_t r = threadIdx.x; r < n_units; r += blockDim.x)
      if (static_cast<uint64_t>(r) < k) S.taken[S.order[r]] = 1;
  } else if (threadIdx.x == 0) {
    uint64_t count = 0;
    for (int r = 0; r < n_units && count < k; ++r) {
      const int32_t i = S.order[r];
      if (count + static_cast<uint64_t>(S.size[i]) <= k) {
        S.taken[i] = 1;
        count += static_cast<uint64_t>(S.size[i]);
      }
    }
    if (count == 0 && k > 0 && n_units > 0) S.taken[S.order[0]] = 1;
  }
  __syncthreads();

  // 5. outputs
  for (int64_t j = threadIdx.x; j < L; j += blockDim.x) {
    const int32_t leader = S.leader[j];
    const bool selected = leader >= 0 && S.taken[leader];
    const T id = ids[j];
    T o, l;
    emit(P, key, selected, static_cast<uint32_t>(j - start), id, o, l);
    out[base + j] = o;
    lab[base + j] = l;
  }
}

// Launch geometry, shared by the launch and the emulation.
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Blocks along a row (gridDim.y) for the Bernoulli kernel: at most max_y, the kernel loops
// over the rest of the row.
inline unsigned bernoulli_grid_y(int64_t L, int64_t max_y = kMaxGridY) {
  const int64_t chunks = (L + kTokensPerBlock - 1) / kTokensPerBlock;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(chunks, max_y)));
}

// 16-byte loads and stores: rows of a multiple of 4 elements, every array aligned.
inline bool bernoulli_vectorised(const MaskInputs& in, const void* out, const void* lab) {
  return in.length % 4 == 0 && aligned16(in.ids) && aligned16(out) && aligned16(lab);
}
