// CPU emulation of the CUDA execution model, to run the kernels' device code on a machine
// without a GPU (development aid: tools/cuda_emu/README.md).
//
// Every CUDA thread of a block is a fiber (ucontext) on one OS thread. Fibers switch only at
// synchronisation points (__syncthreads*, warp shuffles / votes / __syncwarp), and each round
// visits the runnable fibers in a random order, so a missing barrier tends to show up as a wrong
// or run-to-run different result. Checked: every warp op has the full mask and is reached by all
// 32 lanes from the same source line (divergent warp ops are errors), every __syncthreads of one
// barrier phase comes from the same source line, no deadlock. Blocks run one after another, in a
// random order when asked (the last-block ticket logic must not depend on it).
//
// Include this before any kernel source (g++ -include emu.h -DSK_EMU ...).
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <source_location>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
// A kernel's static __shared__ variables: blocks run one at a time on one OS thread, so a
// function-local static is shared by the block's fibers as shared memory is by its threads (it is
// not re-poisoned between blocks). Dynamic shared memory: SK_DYN_SMEM (csrc/cuda/launch.h).
#undef __shared__
#define __shared__ static

namespace emu {

struct Site {
  const char* file = "";
  unsigned line = 0, col = 0;
  bool operator==(const Site& o) const {
    return line == o.line && col == o.col && std::strcmp(file, o.file) == 0;
  }
  std::string str() const { return std::string(file) + ":" + std::to_string(line); }
};
inline Site site_of(const std::source_location& l) {
  return Site{l.file_name(), static_cast<unsigned>(l.line()), static_cast<unsigned>(l.column())};
}

struct WarpState {
  uint64_t val[32];
  int arrived = 0;
  uint64_t gen = 0;
  Site site;
};

struct Fiber {
  ucontext_t ctx;
  uint3 tid;
  bool done = false;
};

struct Runtime {
  ucontext_t sched;
  std::vector<Fiber> fibers;
  std::vector<char> stacks;
  size_t stack_size = 512 << 10;
  int cur = -1;
  uint3 bid{0, 0, 0};
  dim3 bdim{1, 1, 1}, gdim{1, 1, 1};
  // block barrier
  int live = 0, arrived = 0;
  uint64_t gen = 0;
  int acc_or = 0, acc_and = 1, acc_count = 0, res_or = 0, res_and = 1, res_count = 0;
  Site bsite;
  std::vector<WarpState> warps;
  std::mt19937_64 rng{1};
  bool random_order = true;
  bool random_blocks = true;  // launches (launcher below) run their blocks in a random order
  std::vector<unsigned char> smem;  // the running block's dynamic shared memory
  std::string error;
  std::function<void()> body;
  uint64_t syncs = 0;
};
inline Runtime& rt() {
  static Runtime r;
  return r;
}

inline void yield() {
  Runtime& r = rt();
  swapcontext(&r.fibers[r.cur].ctx, &r.sched);
}

[[noreturn]] inline void fail(const std::string& msg) {
  Runtime& r = rt();
  if (r.error.empty()) {
    r.error = msg + " (block " + std::to_string(r.bid.x) + ", thread " +
              std::to_string(r.cur) + ")";
  }
  while (true) yield();
}

inline void complete_block_barrier() {
  Runtime& r = rt();
  r.res_or = r.acc_or;
  r.res_and = r.acc_and;
  r.res_count = r.acc_count;
  r.acc_or = 0;
  r.acc_and = 1;
  r.acc_count = 0;
  r.arrived = 0;
  ++r.gen;
}

enum SyncMode { kPlain, kOr, kAnd, kCount };

inline int block_sync(int pred, SyncMode mode, const std::source_location& loc) {
  Runtime& r = rt();
  ++r.syncs;
  const Site s = site_of(loc);
  if (r.arrived == 0) {
    r.bsite = s;
  } else if (!(r.bsite == s)) {
    fail("__syncthreads reached from different lines: " + r.bsite.str() + " and " + s.str());
  }
  ++r.arrived;
  r.acc_or |= pred != 0;
  r.acc_and &= pred != 0;
  r.acc_count += pred != 0;
  const uint64_t g = r.gen;
  if (r.arrived == r.live) complete_block_barrier();
  while (r.gen == g) yield();
  switch (mode) {
    case kOr: return r.res_or;
    case kAnd: return r.res_and;
    case kCount: return r.res_count;
    default: return 0;
  }
}

inline int lane_id() { return static_cast<int>(rt().fibers[rt().cur].tid.x) & 31; }
inline WarpState& my_warp() { return rt().warps[rt().fibers[rt().cur].tid.x / 32]; }

inline void warp_rendezvous(WarpState& w, const Site& s) {
  if (w.arrived == 0) {
    w.site = s;
  } else if (!(w.site == s)) {
    fail("divergent warp op: " + w.site.str() + " vs " + s.str());
  }
  ++w.arrived;
  const uint64_t g = w.gen;
  if (w.arrived == 32) {
    w.arrived = 0;
    ++w.gen;
  }
  while (w.gen == g) yield();
}

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8);
  uint64_t u = 0;
  std::memcpy(&u, &v, sizeof(T));
  return u;
}
template <typename T>
T from_bits(uint64_t u) {
  T v;
  std::memcpy(&v, &u, sizeof(T));
  return v;
}

// Every lane publishes `mine`, then reads the slot chosen by pick(lane) (or its own when
// pick returns -1); returns all 32 published values through `all` when given.
template <typename T, typename Pick>
T warp_exchange(unsigned mask, T mine, Pick pick, const std::source_location& loc,
                uint64_t* all = nullptr) {
  if (mask != 0xFFFFFFFFu) fail("warp op with a partial mask");
  ++rt().syncs;
  WarpState& w = my_warp();
  const int lane = lane_id();
  const Site s = site_of(loc);
  w.val[lane] = to_bits(mine);
  warp_rendezvous(w, s);
  const int src = pick(lane);
  const T out = src < 0 ? mine : from_bits<T>(w.val[src]);
  if (all) std::memcpy(all, w.val, sizeof(w.val));
  warp_rendezvous(w, s);
  return out;
}

inline void fiber_entry() {
  Runtime& r = rt();
  r.body();
  r.fibers[r.cur].done = true;
  --r.live;
  if (r.arrived > 0 && r.arrived == r.live) complete_block_barrier();
  swapcontext(&r.fibers[r.cur].ctx, &r.sched);
}

// Runs one block of `threads` threads: body() is the kernel invocation.
inline void run_block(uint3 bid, dim3 gdim, int threads, std::function<void()> body) {
  Runtime& r = rt();
  if (threads % 32 != 0) throw std::runtime_error("emu: block size must be a multiple of 32");
  r.bid = bid;
  r.gdim = gdim;
  r.bdim = dim3(threads, 1, 1);
  r.body = std::move(body);
  r.fibers.assign(threads, Fiber{});
  if (r.stacks.size() < r.stack_size * threads) r.stacks.resize(r.stack_size * threads);
  r.warps.assign(threads / 32, WarpState{});
  r.live = threads;
  r.arrived = 0;
  r.acc_or = 0;
  r.acc_and = 1;
  r.acc_count = 0;
  r.error.clear();
  for (int t = 0; t < threads; ++t) {
    Fiber& f = r.fibers[t];
    f.tid = uint3{static_cast<unsigned>(t), 0, 0};
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = r.stacks.data() + r.stack_size * t;
    f.ctx.uc_stack.ss_size = r.stack_size;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_entry, 0);
  }
  std::vector<int> order(threads);
  for (int t = 0; t < threads; ++t) order[t] = t;
  int remaining = threads;
  // A fiber blocked at a sync point spins on yield(); progress is measured by the number of
  // completed sync operations and finished fibers.
  int idle_rounds = 0;
  while (remaining > 0) {
    if (r.random_order) std::shuffle(order.begin(), order.end(), r.rng);
    const uint64_t before = r.syncs + static_cast<uint64_t>(r.gen);
    uint64_t wgen = 0;
    for (const WarpState& w : r.warps) wgen += w.gen;
    const int rem_before = remaining;
    for (int t : order) {
      if (r.fibers[t].done) continue;
      r.cur = t;
      swapcontext(&r.sched, &r.fibers[t].ctx);
      if (!r.error.empty()) throw std::runtime_error("emu: " + r.error);
      if (r.fibers[t].done) --remaining;
    }
    uint64_t wgen2 = 0;
    for (const WarpState& w : r.warps) wgen2 += w.gen;
    const bool progress = remaining != rem_before || wgen2 != wgen ||
                          r.syncs + static_cast<uint64_t>(r.gen) != before;
    idle_rounds = progress ? 0 : idle_rounds + 1;
    if (idle_rounds > 2) {
      throw std::runtime_error("emu: deadlock in block " + std::to_string(bid.x) +
                               " (a warp op or barrier some threads never reach)");
    }
  }
  r.cur = -1;
}

}  // namespace emu

// ---- coverage counters (SK_EMU_COUNT in the kernel sources; no-op on real builds) -----------
namespace emu {
inline std::vector<std::pair<std::string, long>>& counters() {
  static std::vector<std::pair<std::string, long>> c;
  return c;
}
inline void count(const char* name) {
  for (auto& [n, v] : counters()) {
    if (n == name) {
      ++v;
      return;
    }
  }
  counters().emplace_back(name, 1);
}
}  // namespace emu
#define SK_EMU_COUNT(name) ::emu::count(name)

// ---- built-in variables ---------------------------------------------------------------------
#define threadIdx (::emu::rt().fibers[::emu::rt().cur].tid)
#define blockIdx (::emu::rt().bid)
#define blockDim (::emu::rt().bdim)
#define gridDim (::emu::rt().gdim)

// ---- barriers, warp ops -----------------------------------------------------------------------
inline void __syncthreads(std::source_location loc = std::source_location::current()) {
  emu::block_sync(0, emu::kPlain, loc);
}
inline int __syncthreads_or(int p, std::source_location loc = std::source_location::current()) {
  return emu::block_sync(p, emu::kOr, loc);
}
inline int __syncthreads_and(int p, std::source_location loc = std::source_location::current()) {
  return emu::block_sync(p, emu::kAnd, loc);
}
inline int __syncthreads_count(int p,
                               std::source_location loc = std::source_location::current()) {
  return emu::block_sync(p, emu::kCount, loc);
}
inline void __syncwarp(unsigned mask = 0xFFFFFFFFu,
                       std::source_location loc = std::source_location::current()) {
  emu::warp_exchange<int>(mask, 0, [](int) { return -1; }, loc);
}

namespace emu {
// Source lane src of a shuffle if it lies in lane's segment of `width` lanes, else -1 (the
// caller keeps its own value).
inline int in_segment(int src, int lane, int width) {
  return src >= 0 && (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : -1;
}
}  // namespace emu
template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32,
              std::source_location loc = std::source_location::current()) {
  return emu::warp_exchange<T>(
      mask, v, [&](int lane) { return (lane & ~(width - 1)) + (src & (width - 1)); }, loc);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32,
                  std::source_location loc = std::source_location::current()) {
  auto pick = [&](int lane) { return emu::in_segment(lane ^ lane_mask, lane, width); };
  return emu::warp_exchange<T>(mask, v, pick, loc);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32,
                   std::source_location loc = std::source_location::current()) {
  auto pick = [&](int lane) { return emu::in_segment(lane + int(delta), lane, width); };
  return emu::warp_exchange<T>(mask, v, pick, loc);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32,
                 std::source_location loc = std::source_location::current()) {
  auto pick = [&](int lane) { return emu::in_segment(lane - int(delta), lane, width); };
  return emu::warp_exchange<T>(mask, v, pick, loc);
}
inline unsigned __ballot_sync(unsigned mask, int pred,
                              std::source_location loc = std::source_location::current()) {
  uint64_t all[32];
  emu::warp_exchange<int>(mask, pred != 0, [](int) { return -1; }, loc, all);
  unsigned b = 0;
  for (int l = 0; l < 32; ++l) b |= (all[l] ? 1u : 0u) << l;
  return b;
}
inline int __any_sync(unsigned mask, int pred,
                      std::source_location loc = std::source_location::current()) {
  return __ballot_sync(mask, pred, loc) != 0;
}
inline int __all_sync(unsigned mask, int pred,
                      std::source_location loc = std::source_location::current()) {
  return __ballot_sync(mask, pred, loc) == 0xFFFFFFFFu;
}
template <typename T>
unsigned __match_any_sync(unsigned mask, T v,
                          std::source_location loc = std::source_location::current()) {
  uint64_t all[32];
  const uint64_t mine = emu::to_bits(v);
  emu::warp_exchange<T>(mask, v, [](int) { return -1; }, loc, all);
  unsigned b = 0;
  for (int l = 0; l < 32; ++l) b |= (all[l] == mine ? 1u : 0u) << l;
  return b;
}

// ---- memory -------------------------------------------------------------------------------------
template <typename T>
T __ldcs(const T* p) { return *p; }
template <typename T>
T __ldcg(const T* p) { return *p; }
template <typename T>
T __ldg(const T* p) { return *p; }
template <typename T>
T __ldca(const T* p) { return *p; }
template <typename T>
T __ldlu(const T* p) { return *p; }
template <typename T>
void __stcs(T* p, T v) { *p = v; }
template <typename T>
void __stcg(T* p, T v) { *p = v; }
inline void __threadfence() {}
inline void __threadfence_block() {}

// Fibers switch only at synchronisation points, so a plain read-modify-write is atomic here.
namespace emu {
template <typename T, typename F>
T rmw(T* p, F f) {
  const T old = *p;
  *p = f(old);
  return old;
}
}  // namespace emu
template <typename T>
T atomicAdd(T* p, T v) { return emu::rmw(p, [&](T o) { return o + v; }); }
template <typename T>
T atomicMax(T* p, T v) { return emu::rmw(p, [&](T o) { return o > v ? o : v; }); }
template <typename T>
T atomicMin(T* p, T v) { return emu::rmw(p, [&](T o) { return o < v ? o : v; }); }
template <typename T>
T atomicOr(T* p, T v) { return emu::rmw(p, [&](T o) { return o | v; }); }
template <typename T>
T atomicExch(T* p, T v) { return emu::rmw(p, [&](T) { return v; }); }
template <typename T>
T atomicCAS(T* p, T cmp, T v) { return emu::rmw(p, [&](T o) { return o == cmp ? v : o; }); }

// ---- bit casts and rounding-mode arithmetic ------------------------------------------------
inline float __uint_as_float(unsigned u) { return std::bit_cast<float>(u); }
inline unsigned __float_as_uint(float f) { return std::bit_cast<unsigned>(f); }
inline float __int_as_float(int u) { return std::bit_cast<float>(u); }
inline int __float_as_int(float f) { return std::bit_cast<int>(f); }
inline long long __double_as_longlong(double d) { return std::bit_cast<long long>(d); }
inline double __longlong_as_double(long long u) { return std::bit_cast<double>(u); }
inline double __hiloint2double(int hi, int lo) {
  return std::bit_cast<double>((static_cast<uint64_t>(static_cast<uint32_t>(hi)) << 32) |
                               static_cast<uint32_t>(lo));
}
inline int __double2loint(double d) {
  return static_cast<int>(static_cast<uint32_t>(std::bit_cast<uint64_t>(d)));
}
inline int __double2hiint(double d) {
  return static_cast<int>(static_cast<uint32_t>(std::bit_cast<uint64_t>(d) >> 32));
}
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline int __popc(unsigned x) { return std::popcount(x); }
inline int __popcll(unsigned long long x) { return std::popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
// ex2.approx.ftz.f32: 2^x with subnormal results flushed to zero.
inline float emu_ex2_approx_ftz(float x) {
  const float y = std::exp2(x);
  return (y != 0.f && std::fabs(y) < 1.17549435e-38f) ? 0.f : y;
}

// ---- kernel launches: SK_LAUNCH(grid, block, smem, stream, kernel)(args...) -------------------
// Runs every block of the grid, one after another (in a random order when rt().random_blocks),
// each with `smem` bytes of dynamic shared memory filled with 0xFF.
namespace emu {
inline unsigned char* dynamic_smem() { return rt().smem.data(); }

template <typename K>
struct Launcher {
  dim3 grid, block;
  size_t smem;
  K kernel;
  template <typename... A>
  void operator()(A&&... args) const {
    Runtime& r = rt();
    if (block.y != 1 || block.z != 1) throw std::runtime_error("emu: 1-D blocks only");
    std::vector<uint3> blocks;
    for (unsigned z = 0; z < grid.z; ++z) {
      for (unsigned y = 0; y < grid.y; ++y) {
        for (unsigned x = 0; x < grid.x; ++x) blocks.push_back(uint3{x, y, z});
      }
    }
    if (r.random_blocks) std::shuffle(blocks.begin(), blocks.end(), r.rng);
    for (const uint3& b : blocks) {
      r.smem.assign(smem > 0 ? smem : 16, 0xFF);
      run_block(b, grid, static_cast<int>(block.x), [&] { kernel(args...); });
    }
  }
};

template <typename K>
Launcher<K> launcher(dim3 grid, dim3 block, size_t smem, K kernel) {
  return Launcher<K>{grid, block, smem, kernel};
}
}  // namespace emu
