// Host emulation of the CUDA built-ins the mlmfast kernels use, so that the tests run the device
// code of csrc/cuda/mask_kernels.cuh on machines without a GPU. A grid runs block after block,
// each block on one std::thread per CUDA thread (kept for the whole launch); __syncthreads is a
// barrier whose every phase checks that all threads wait at the same call (a __syncthreads in a
// divergent branch is reported, not hung on); dynamic shared memory is filled with garbage
// before each block, so a read of shared memory nobody wrote shows up as a wrong mask.
// Not emulated: warp-level primitives (the kernels use none), a GPU's memory model and launch
// limits, the __CUDA_ARCH__ branches of philox.h (__umulhi: the host path runs instead).
#pragma once

#include <atomic>
#include <barrier>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct alignas(16) longlong2 {
  long long x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
inline longlong2 make_longlong2(long long a, long long b) { return {a, b}; }
inline int4 make_int4(int a, int b, int c, int d) { return {a, b, c, d}; }

inline thread_local dim3 threadIdx, blockIdx;

// Atomics: the overloads the kernels call, sequentially consistent (stronger than CUDA's relaxed).
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return std::atomic_ref<unsigned long long>(*p).fetch_add(v);
}
inline int atomicOr(int* p, int v) { return std::atomic_ref<int>(*p).fetch_or(v); }
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
  std::atomic_ref<unsigned long long> a(*p);
  unsigned long long cur = a.load();
  while (v < cur && !a.compare_exchange_weak(cur, v)) {
  }
  return cur;
}
inline dim3 blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(n)
#define __align__(n) alignas(n)
#define __shared__ static  // one block at a time: a static is that block's shared variable
#define MLMFAST_DYNAMIC_SHARED(name) unsigned char* name = cuda_emu::launch_state->shared
#define __syncthreads() cuda_emu::sync(__LINE__)
#define __syncthreads_or(p) cuda_emu::sync_or(__LINE__, (p))

namespace cuda_emu {

struct Launch;

// Runs when every thread of the block has arrived: they must all wait at the same line.
struct CheckPhase {
  Launch* l;
  void operator()() noexcept;
};

struct Launch {
  explicit Launch(unsigned threads, size_t shared_bytes)
      : line(threads, 0), buffer(shared_bytes + 16), barrier(threads, CheckPhase{this}) {
    shared = buffer.data() + (16 - reinterpret_cast<uintptr_t>(buffer.data()) % 16) % 16;
  }
  std::vector<int> line;  // per thread: the source line of the barrier it waits at
  std::vector<unsigned char> buffer;
  unsigned char* shared;
  std::atomic<int> vote{0};
  std::string divergent;  // the first mismatch, if any
  std::barrier<CheckPhase> barrier;
};

inline Launch* launch_state = nullptr;  // the launch in progress (one at a time)

inline void CheckPhase::operator()() noexcept {
  for (size_t t = 1; t < l->line.size() && l->divergent.empty(); ++t) {
    if (l->line[t] != l->line[0])
      l->divergent = "thread 0 waits at line " + std::to_string(l->line[0]) + ", thread " +
                     std::to_string(t) + " at line " + std::to_string(l->line[t]);
  }
}

struct Abandon {};  // unwinds a thread out of a launch whose barriers went wrong

inline void sync(int line) {
  launch_state->line[threadIdx.x] = line;
  launch_state->barrier.arrive_and_wait();
  if (!launch_state->divergent.empty()) throw Abandon{};
}

inline int sync_or(int line, int predicate) {
  Launch& l = *launch_state;
  if (predicate) l.vote.store(1);
  sync(line);
  const int any = l.vote.load();
  sync(line);  // every thread has read the vote
  if (threadIdx.x == 0) l.vote.store(0);
  sync(line);
  return any;
}

// kernel() for every thread of every block of the grid (x fastest), then a check of the
// barriers. Throws std::runtime_error when threads of a block met at different __syncthreads.
template <typename Kernel>
void launch(dim3 grid, dim3 block, size_t shared_bytes, Kernel kernel) {
  Launch l(block.x, shared_bytes);
  launch_state = &l;
  gridDim = grid;
  blockDim = block;
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < block.x; ++t) {
    threads.emplace_back([&, t] {
      threadIdx = dim3(t);
      try {
        for (unsigned by = 0; by < grid.y; ++by) {
          for (unsigned bx = 0; bx < grid.x; ++bx) {
            blockIdx = dim3(bx, by);
            if (t == 0) std::memset(l.buffer.data(), 0xA5, l.buffer.size());
            sync(-1);  // the garbage is in place
            kernel();
            sync(-2);  // the block is done
          }
        }
      } catch (const Abandon&) {
        l.barrier.arrive_and_drop();  // every thread leaves: no one waits for a partner
      }
    });
  }
  for (std::thread& th : threads) th.join();
  launch_state = nullptr;
  if (!l.divergent.empty())
    throw std::runtime_error("cuda_emu: __syncthreads in divergent code: " + l.divergent);
}

}  // namespace cuda_emu
