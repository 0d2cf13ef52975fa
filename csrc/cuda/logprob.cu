// CUDA implementation of gumbel_logprob / slot_logprob / gaussian_logprob and their backward ops.
//
// The two slot-row ops (gumbel_logprob; slot_logprob for TopKDirichlet / WeightGaussian) share
// one forward and one backward kernel, one 256-thread block per row; the op's parameter struct
// picks its soft-row rule (soft_row_forward / soft_row_backward). A soft row's threads own its k
// slots (at most 4 each, k <= 1024): they gather the k slot logits, then block reductions give the
// log-sum-exp over the included slots, the count and the sum of the per-slot terms
// (csrc/common/logprob.h). A hard row's threads stride over the vocabulary with an online (max,
// sum-exp) state, merged across the block. The backward writes the dense gradient row: softmax
// for hard rows; zeros plus the k slot gradients for soft rows (a repeated id is summed by its
// first slot, so no atomics and the result is deterministic).
// gaussian_logprob: one warp per row, lanes stride over D, fp32 (fp64) accumulation.
// Every reduction combines partial results in a fixed order: outputs are bitwise reproducible.
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <type_traits>

#include "common/logprob.h"
#include "cuda/launch.h"
#include "logprob_host.h"

namespace softkernels::cuda {
namespace {

constexpr int kBlock = 256;
constexpr int kWarps = kBlock / 32;
constexpr int kSlotsPerThread = (kMaxK + kBlock - 1) / kBlock;
constexpr int64_t kMaxGrid = int64_t(1) << 20;
constexpr unsigned kFull = 0xffffffffu;

// ---------------------------------------------------------------------------------------------
// Block reductions. Every thread of the block must call them (they synchronise) and every thread
// receives the result. Warp partials are combined in warp order.

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFull, v, o);
  return v;
}

template <typename T>
__device__ T block_sum(T v, T* scratch) {
  v = warp_sum(v);
  __syncthreads();  // the previous reduction's readers are done with scratch
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  T r = scratch[0];
  for (int w = 1; w < kWarps; ++w) r += scratch[w];
  return r;
}

__device__ int block_or(int v, int* scratch) {
  for (int o = 16; o > 0; o >>= 1) v |= __shfl_xor_sync(kFull, v, o);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) scratch[threadIdx.x >> 5] = v;
  __syncthreads();
  int r = scratch[0];
  for (int w = 1; w < kWarps; ++w) r |= scratch[w];
  return r;
}

// Best (largest z, then lowest slot index) of the block's candidates.
template <typename T>
struct SlotBest {
  T z;
  int j;  // INT_MAX: none
};

template <typename T>
__device__ __forceinline__ SlotBest<T> slot_better(const SlotBest<T>& a, const SlotBest<T>& b) {
  return (a.z > b.z || (a.z == b.z && a.j < b.j)) ? a : b;
}

// Block reduction of a two-field aggregate P{first, second} under merge; scratch_1 / scratch_2
// hold the warp partials of each field. Same order as block_sum.
template <typename P, typename F1, typename F2, typename Merge>
__device__ P block_reduce2(P v, F1 P::*first, F2 P::*second, F1* scratch_1, F2* scratch_2,
                           Merge merge) {
  for (int o = 16; o > 0; o >>= 1) {
    P other{__shfl_xor_sync(kFull, v.*first, o), __shfl_xor_sync(kFull, v.*second, o)};
    v = merge(v, other);
  }
  __syncthreads();
  if ((threadIdx.x & 31) == 0) {
    scratch_1[threadIdx.x >> 5] = v.*first;
    scratch_2[threadIdx.x >> 5] = v.*second;
  }
  __syncthreads();
  P r{scratch_1[0], scratch_2[0]};
  for (int w = 1; w < kWarps; ++w) r = merge(r, P{scratch_1[w], scratch_2[w]});
  return r;
}

template <typename T>
__device__ SlotBest<T> block_best(SlotBest<T> v, T* scratch_z, int* scratch_j) {
  auto merge = [](const SlotBest<T>& a, const SlotBest<T>& b) { return slot_better(a, b); };
  return block_reduce2(v, &SlotBest<T>::z, &SlotBest<T>::j, scratch_z, scratch_j, merge);
}

template <typename T>
__device__ LseState<T> block_lse(LseState<T> v, T* scratch_m, T* scratch_s) {
  auto merge = [](const LseState<T>& a, const LseState<T>& b) { return lse_merge(a, b); };
  return block_reduce2(v, &LseState<T>::m, &LseState<T>::s, scratch_m, scratch_s, merge);
}

template <typename T>
struct Scratch {
  T a[kWarps];
  T b[kWarps];
  int i[kWarps];
};

// A hard row's log-prob is log_softmax(x / temperature)[id]: one block-wide log-sum-exp over V.
// Shared by both forward kernels; lp and lse are written only when the row is sound.
template <typename scalar_t, typename T>
__device__ int hard_row_forward(const scalar_t* x, int64_t id, int64_t V, T inv_temp,
                                Scratch<T>& sc, T& lp, T& lse) {
  int status = kLpOk;
  LseState<T> st = lse_empty<T>();
  for (int64_t v = threadIdx.x; v < V; v += kBlock) {
    const T z = static_cast<T>(x[v]) * inv_temp;
    const int bad = logit_status(z);
    status |= bad;
    if (!bad) lse_push(st, z);
  }
  status = block_or(status, sc.i);
  st = block_lse(st, sc.a, sc.b);
  if (id < 0 || id >= V) status |= kLpBadId;
  if (status == kLpOk && st.s == T(0)) status |= kLpAllMasked;
  if (status == kLpOk) {
    lse = lse_value(st);
    lp = static_cast<T>(x[id]) * inv_temp - lse;
  }
  return status;
}

// ---------------------------------------------------------------------------------------------
// gumbel_logprob

// Gathers this thread's slots of a soft row (z = NaN marks an excluded slot) and reduces the
// row's status and best slot over the block. Mirrors gather_soft_row of the CPU kernel.
template <typename scalar_t, typename T>
__device__ int gather_soft_slots(const scalar_t* x, const int64_t* id, const T* gp, int64_t k,
                                 int64_t V, T inv_temp, T (&z)[kSlotsPerThread],
                                 SlotBest<T>& best, Scratch<T>& sc) {
  int status = kLpOk;
  SlotBest<T> mine{-sk_inf<T>(), INT_MAX};
#pragma unroll
  for (int r = 0; r < kSlotsPerThread; ++r) {
    const int64_t j = threadIdx.x + int64_t(r) * kBlock;
    z[r] = sk_nan<T>();
    if (j >= k) continue;
    const T g = gp[j];
    status |= gumbel_noise_status(g);
    if (!gumbel_slot_included(g)) continue;
    if (id[j] < 0 || id[j] >= V) {
      status |= kLpBadId;
      continue;
    }
    z[r] = static_cast<T>(x[id[j]]) * inv_temp;
    status |= logit_status(z[r]);
    if (!sk_isnan(z[r])) mine = slot_better(mine, SlotBest<T>{z[r], static_cast<int>(j)});
  }
  status = block_or(status, sc.i);
  best = block_best(mine, sc.a, sc.i);
  if (best.j == INT_MAX && !(status & kLpBadId)) status |= kLpNoSlot;
  if (status == kLpOk && best.z == -sk_inf<T>()) status |= kLpAllMasked;
  return status;
}

// A soft row of gumbel_logprob: the mean of the clamped per-slot terms over the counted slots
// (the best slot alone when none counts). Returns the status; lp / lse are set when it is ok.
template <typename scalar_t, typename T>
__device__ int soft_row_forward(const scalar_t* x, const int64_t* id, const T* gp, int64_t k,
                                int64_t V, const GumbelLpParams<T>& p, Scratch<T>& sc, T& lp,
                                T& lse) {
  T z[kSlotsPerThread];
  SlotBest<T> best;
  const int status = gather_soft_slots(x, id, gp, k, V, p.inv_temp, z, best, sc);
  if (status != kLpOk) return status;
  const T m = best.z;
  T s = T(0);
#pragma unroll
  for (int r = 0; r < kSlotsPerThread; ++r) {
    if (!sk_isnan(z[r]) && z[r] != -sk_inf<T>()) s += sk_exp(z[r] - m);
  }
  s = block_sum(s, sc.a);
  lse = m + sk_log(s);
  T sum_f = T(0), dfdu;
  int count = 0;
#pragma unroll
  for (int r = 0; r < kSlotsPerThread; ++r) {
    if (sk_isnan(z[r])) continue;
    const T l = z[r] - lse;
    if (!gumbel_slot_counts(l, p)) continue;
    sum_f += gumbel_slot_term(gp[threadIdx.x + r * kBlock], l, p, dfdu);
    ++count;
  }
  sum_f = block_sum(sum_f, sc.a);
  count = block_sum(count, sc.i);
  if (count == 0) {
    sum_f = gumbel_slot_term(gp[best.j], best.z - lse, p, dfdu);
    count = 1;
  }
  lp = sum_f / static_cast<T>(count);
  return status;
}

// The slot gradients of a soft gumbel_logprob row: s_gz[j] = d log pi / d logits[s_id[j]]
// (s_id[j] = -1 for an excluded slot) and gg[j] = d log pi / d g'_j when gg is given. Returns
// false, writing nothing, for a row the forward flagged.
template <typename scalar_t, typename T>
__device__ bool soft_row_backward(const scalar_t* x, const int64_t* id, const T* gp, int64_t k,
                                  int64_t V, const GumbelLpParams<T>& p, T lse, T g,
                                  Scratch<T>& sc, int64_t* s_id, T* s_gz, T* gg) {
  T z[kSlotsPerThread];
  SlotBest<T> best{-sk_inf<T>(), INT_MAX};
  if (gather_soft_slots(x, id, gp, k, V, p.inv_temp, z, best, sc) != kLpOk) return false;
  int count = 0;
#pragma unroll
  for (int r = 0; r < kSlotsPerThread; ++r) {
    if (!sk_isnan(z[r]) && gumbel_slot_counts(z[r] - lse, p)) ++count;
  }
  count = block_sum(count, sc.i);
  T a[kSlotsPerThread];
  T a_sum = T(0), dfdu;
#pragma unroll
  for (int r = 0; r < kSlotsPerThread; ++r) {
    const int64_t j = threadIdx.x + int64_t(r) * kBlock;
    a[r] = T(0);
    if (sk_isnan(z[r])) continue;
    const T l = z[r] - lse;
    if (count == 0) {
      if (j != best.j) continue;
      gumbel_slot_term(gp[j], l, p, dfdu);
      a[r] = g * dfdu;
    } else {
      if (!gumbel_slot_counts(l, p)) continue;
      gumbel_slot_term(gp[j], l, p, dfdu);
      a[r] = g * dfdu / static_cast<T>(count);
    }
    a_sum += a[r];
  }
  a_sum = block_sum(a_sum, sc.a);
#pragma unroll
  for (int r = 0; r < kSlotsPerThread; ++r) {
    const int64_t j = threadIdx.x + int64_t(r) * kBlock;
    if (j >= k) continue;
    if (gg != nullptr) gg[j] = a[r] / p.scale;
    const bool incl = !sk_isnan(z[r]);
    s_id[j] = incl ? id[j] : int64_t(-1);
    s_gz[j] = incl ? gumbel_grad_z(a[r], z[r] - lse, a_sum, p) * p.inv_temp : T(0);
  }
  return true;
}

int64_t grid_for(int64_t rows) { return std::max<int64_t>(1, std::min<int64_t>(rows, kMaxGrid)); }

// Calls f(scalar_t* tag, stream) for t's floating dtype (the preambles have checked it) under a
// device guard, then checks the launch it made.
template <typename F>
void on_stream(const at::Tensor& t, const char* name, F&& f) {
  const c10::cuda::CUDAGuard guard(t.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  switch (t.scalar_type()) {
    case at::kFloat: f(static_cast<float*>(nullptr), stream); break;
    case at::kDouble: f(static_cast<double*>(nullptr), stream); break;
    case at::kBFloat16: f(static_cast<c10::BFloat16*>(nullptr), stream); break;
    case at::kHalf: f(static_cast<c10::Half*>(nullptr), stream); break;
    default: TORCH_CHECK(false, "softkernels.", name, ": unsupported dtype ", t.scalar_type());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------
// slot_logprob (TopKDirichlet / WeightGaussian): gumbel_logprob's layout, one block per row.

// Gathers this thread's slots of a soft row and reduces the row's status and max slot logit over
// the block. Mirrors gather_slot_row of the CPU kernel.
template <typename scalar_t, typename T>
__device__ int gather_slot_slots(const scalar_t* x, const int64_t* id, const T* dr, int64_t k,
                                 int64_t V, const SlotLpParams<T>& p, T (&z)[kSlotsPerThread],
                                 T& m, Scratch<T>& sc) {
  int status = kLpOk;
  SlotBest<T> mine{-sk_inf<T>(), INT_MAX};
#pragma unroll
  for (int r = 0; r < kSlotsPerThread; ++r) {
    const int64_t j = threadIdx.x + int64_t(r) * kBlock;
    z[r] = -sk_inf<T>();
    if (j >= k) continue;
    status |= slot_draw_status(dr[j], p.kind);
    if (id[j] < 0 || id[j] >= V) {
      status |= kLpBadId;
      continue;
    }
    z[r] = static_cast<T>(x[id[j]]) * p.inv_temp;
    status |= logit_status(z[r]);
    if (!sk_isnan(z[r])) mine = slot_better(mine, SlotBest<T>{z[r], static_cast<int>(j)});
  }
  status = block_or(status, sc.i);
  m = block_best(mine, sc.a, sc.i).z;
  if (!(status & kLpSlotFatal) && m == -sk_inf<T>()) status |= kLpAllMasked;
  return status;
}

// Per-thread part of a scored soft row (score_slot_row of the CPU kernel): p, v, d v / d p of
// the thread's slots; the block-wide count of M and its fallback slot (count = 0); returns the
// row's log pi to every thread.
template <typename T>
__device__ T score_slot_slots(const T (&z)[kSlotsPerThread], const T* dr, int64_t k, T lse,
                              const SlotLpParams<T>& p, T (&pr)[kSlotsPerThread],
                              T (&v)[kSlotsPerThread], T (&dv)[kSlotsPerThread], int& count,
                              int& best, Scratch<T>& sc) {
  T sum_v = T(0);
  int cnt = 0;
  SlotBest<T> key{-sk_inf<T>(), INT_MAX};
#pragma unroll
  for (int r = 0; r < kSlotsPerThread; ++r) {
    const int64_t j = threadIdx.x + int64_t(r) * kBlock;
    pr[r] = T(0);
    v[r] = sk_nan<T>();
    dv[r] = T(0);
    if (j >= k) continue;
    pr[r] = sk_exp(z[r] - lse);
    v[r] = slot_value(pr[r], dr[j], p, dv[r]);
    if (slot_counts(pr[r], v[r], p)) {
      sum_v += v[r];
      ++cnt;
    }
    key = slot_better(key, SlotBest<T>{slot_fallback_key(pr[r], v[r]), static_cast<int>(j)});
  }
  count = block_sum(cnt, sc.i);
  sum_v = block_sum(sum_v, sc.a);
  best = -1;
  if (count > 0) return sum_v / static_cast<T>(count);
  best = block_best(key, sc.a, sc.i).j;
  T vb = T(0);
#pragma unroll
  for (int r = 0; r < kSlotsPerThread; ++r) {
    if (threadIdx.x + int64_t(r) * kBlock == best) vb = v[r];
  }
  return block_sum(vb, sc.a);  // the other threads add exact zeros
}

// A soft row of slot_logprob (csrc/common/logprob.h). Returns the status; lp / lse are set
// unless a fatal bit is.
template <typename scalar_t, typename T>
__device__ int soft_row_forward(const scalar_t* x, const int64_t* id, const T* dr, int64_t k,
                                int64_t V, const SlotLpParams<T>& p, Scratch<T>& sc, T& lp,
                                T& lse) {
  T z[kSlotsPerThread], pr[kSlotsPerThread], v[kSlotsPerThread], dv[kSlotsPerThread];
  T m;
  const int status = gather_slot_slots(x, id, dr, k, V, p, z, m, sc);
  if (status & kLpSlotFatal) return status;
  T s = T(0);
#pragma unroll
  for (int r = 0; r < kSlotsPerThread; ++r) {
    if (z[r] != -sk_inf<T>()) s += sk_exp(z[r] - m);
  }
  s = block_sum(s, sc.a);
  lse = m + sk_log(s);
  int count, best;
  lp = score_slot_slots(z, dr, k, lse, p, pr, v, dv, count, best, sc);
  return status;
}

// The slot gradients of a soft slot_logprob row into s_id / s_gz (gg: unused, the draws are
// data). Returns false, writing nothing, for a row the forward flagged.
template <typename scalar_t, typename T>
__device__ bool soft_row_backward(const scalar_t* x, const int64_t* id, const T* dr, int64_t k,
                                  int64_t V, const SlotLpParams<T>& p, T lse, T g,
                                  Scratch<T>& sc, int64_t* s_id, T* s_gz, T* /*gg*/) {
  T z[kSlotsPerThread], pr[kSlotsPerThread], v[kSlotsPerThread], dv[kSlotsPerThread];
  T m;
  if (gather_slot_slots(x, id, dr, k, V, p, z, m, sc) & kLpSlotFatal) return false;
  int count, best;
  score_slot_slots(z, dr, k, lse, p, pr, v, dv, count, best, sc);
  T pb = T(0);
#pragma unroll
  for (int r = 0; r < kSlotsPerThread; ++r) {
    const int64_t j = threadIdx.x + int64_t(r) * kBlock;
    const bool in_m = j < k && (count > 0 ? slot_counts(pr[r], v[r], p) : j == best);
    dv[r] = in_m ? g * dv[r] / static_cast<T>(count > 0 ? count : 1) : T(0);
    pb += pr[r] * dv[r];
  }
  pb = block_sum(pb, sc.a);
#pragma unroll
  for (int r = 0; r < kSlotsPerThread; ++r) {
    const int64_t j = threadIdx.x + int64_t(r) * kBlock;
    if (j >= k) continue;
    s_id[j] = id[j];
    s_gz[j] = pr[r] * (dv[r] - pb) * p.inv_temp;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// The slot-row kernels of both ops, one block per row: P (GumbelLpParams / SlotLpParams) picks
// the soft-row rule above; hard rows are the same for both.

template <typename scalar_t, typename P>
__global__ void __launch_bounds__(kBlock)
    slot_rows_forward_kernel(const scalar_t* __restrict__ X, RowIndexer ix,
                             const int64_t* __restrict__ I, const acc_t<scalar_t>* __restrict__ D,
                             const bool* __restrict__ hard, int64_t N, int64_t V, int64_t k, P p,
                             acc_t<scalar_t>* __restrict__ LP, acc_t<scalar_t>* __restrict__ LSE,
                             int* __restrict__ ST) {
  using T = acc_t<scalar_t>;
  __shared__ Scratch<T> sc;
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const scalar_t* x = X + row_offset(ix, n);
    const int64_t* id = I + n * k;
    T lp = sk_nan<T>(), lse = sk_nan<T>();
    const int status = (hard != nullptr && hard[n])
                           ? hard_row_forward(x, id[0], V, p.inv_temp, sc, lp, lse)
                           : soft_row_forward(x, id, D + n * k, k, V, p, sc, lp, lse);
    if (threadIdx.x == 0) {
      LP[n] = lp;
      LSE[n] = lse;
      ST[n] = status;
    }
  }
}

// The dense gradient row: softmax for a hard row; zeros plus the k slot gradients for a soft row
// (a repeated id is summed by its first slot: no atomics, deterministic). GG (d / d draws) is
// written by rules that have it when non-null.
template <typename scalar_t, typename P>
__global__ void __launch_bounds__(kBlock)
    slot_rows_backward_kernel(const acc_t<scalar_t>* __restrict__ GR,
                              const scalar_t* __restrict__ X, RowIndexer ix,
                              const int64_t* __restrict__ I,
                              const acc_t<scalar_t>* __restrict__ D,
                              const bool* __restrict__ hard,
                              const acc_t<scalar_t>* __restrict__ LSE, int64_t N, int64_t V,
                              int64_t k, P p, scalar_t* __restrict__ GL,
                              acc_t<scalar_t>* __restrict__ GG) {
  using T = acc_t<scalar_t>;
  __shared__ Scratch<T> sc;
  __shared__ int64_t s_id[kMaxK];
  __shared__ T s_gz[kMaxK];
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    const scalar_t* x = X + row_offset(ix, n);
    const int64_t* id = I + n * k;
    scalar_t* gl = GL + n * V;
    T* gg = GG != nullptr ? GG + n * k : nullptr;
    const T g = GR[n], lse = LSE[n];
    const bool is_hard = hard != nullptr && hard[n];
    bool ok = !sk_isnan(lse);
    if (ok && is_hard) ok = id[0] >= 0 && id[0] < V;
    if (ok && !is_hard) {
      ok = soft_row_backward(x, id, D + n * k, k, V, p, lse, g, sc, s_id, s_gz, gg);
    }
    if (!ok) {
      // A row the forward flagged: NaN gradients (never an out-of-bounds read).
      for (int64_t v = threadIdx.x; v < V; v += kBlock) gl[v] = static_cast<scalar_t>(sk_nan<T>());
      if (gg != nullptr) {
        for (int64_t j = threadIdx.x; j < k; j += kBlock) gg[j] = sk_nan<T>();
      }
      continue;
    }
    if (is_hard) {
      const T c = g * p.inv_temp;
      const int64_t id0 = id[0];
      for (int64_t v = threadIdx.x; v < V; v += kBlock) {
        const T e = sk_exp(static_cast<T>(x[v]) * p.inv_temp - lse);
        gl[v] = static_cast<scalar_t>(c * ((v == id0 ? T(1) : T(0)) - e));
      }
      if (gg != nullptr) {
        for (int64_t j = threadIdx.x; j < k; j += kBlock) gg[j] = T(0);
      }
      continue;
    }
    for (int64_t v = threadIdx.x; v < V; v += kBlock) gl[v] = static_cast<scalar_t>(0);
    __syncthreads();  // the zero fill and the slot arrays are complete
#pragma unroll
    for (int r = 0; r < kSlotsPerThread; ++r) {
      const int64_t j = threadIdx.x + int64_t(r) * kBlock;
      if (j >= k || s_id[j] < 0) continue;
      const int64_t t = s_id[j];
      bool first = true;
      for (int64_t i = 0; i < j && first; ++i) first = s_id[i] != t;
      if (!first) continue;
      T sum = s_gz[j];
      for (int64_t i = j + 1; i < k; ++i) {
        if (s_id[i] == t) sum += s_gz[i];
      }
      gl[t] = static_cast<scalar_t>(sum);
    }
    __syncthreads();  // s_id / s_gz are reused by the next row
  }
}

// Launches of the two slot-row kernels for a prepared call; P is the op's parameter struct.
template <typename scalar_t, typename P>
void launch_slot_rows_forward(const at::Tensor& logits, SlotRowsCall& c, const P& p,
                              cudaStream_t stream) {
  using T = acc_t<scalar_t>;
  const GumbelLpShape& sh = c.sh;
  auto& [logprob, lse, status] = c.outs;
  SK_LAUNCH(grid_for(sh.N), kBlock, 0, stream, slot_rows_forward_kernel<scalar_t, P>)(
      logits.data_ptr<scalar_t>(), sh.logits_rows, c.ids.data_ptr<int64_t>(),
      c.draws.data_ptr<T>(), c.hard_p, sh.N, sh.V, sh.k, p, logprob.data_ptr<T>(),
      lse.data_ptr<T>(), status.data_ptr<int>());
}

template <typename scalar_t, typename P>
void launch_slot_rows_backward(const at::Tensor& logits, SlotRowsBackwardCall& c, const P& p,
                               bool draws_grad, cudaStream_t stream) {
  using T = acc_t<scalar_t>;
  const GumbelLpShape& sh = c.sh;
  SK_LAUNCH(grid_for(sh.N), kBlock, 0, stream, slot_rows_backward_kernel<scalar_t, P>)(
      c.grad.data_ptr<T>(), logits.data_ptr<scalar_t>(), sh.logits_rows,
      c.ids.data_ptr<int64_t>(), c.draws.data_ptr<T>(), c.hard_p, c.lse.data_ptr<T>(), sh.N,
      sh.V, sh.k, p, c.grad_logits.data_ptr<scalar_t>(),
      draws_grad ? c.grad_draws.data_ptr<T>() : static_cast<T*>(nullptr));
}

GumbelLpOutputs gumbel_logprob_cuda(SK_GUMBEL_LP_CPP_PARAMS) {
  SlotRowsCall c = prepare_gumbel_lp_forward(SK_GUMBEL_LP_CPP_ARGS);
  if (c.sh.N == 0) return c.outs;
  on_stream(logits, "gumbel_logprob", [&](auto* tag, cudaStream_t stream) {
    using scalar_t = std::remove_pointer_t<decltype(tag)>;
    const auto p = gumbel_lp_params<acc_t<scalar_t>>(SK_GUMBEL_LP_PARAM_VALUES);
    launch_slot_rows_forward<scalar_t>(logits, c, p, stream);
  });
  return c.outs;
}

std::tuple<at::Tensor, at::Tensor> gumbel_logprob_backward_cuda(SK_GUMBEL_LP_BACKWARD_CPP_PARAMS) {
  SlotRowsBackwardCall c = prepare_gumbel_lp_backward(SK_GUMBEL_LP_BACKWARD_CPP_ARGS);
  if (c.sh.N == 0) return {c.grad_logits, c.grad_draws};
  on_stream(logits, "gumbel_logprob_backward", [&](auto* tag, cudaStream_t stream) {
    using scalar_t = std::remove_pointer_t<decltype(tag)>;
    const auto p = gumbel_lp_params<acc_t<scalar_t>>(SK_GUMBEL_LP_PARAM_VALUES);
    launch_slot_rows_backward<scalar_t>(logits, c, p, g_prime_grad, stream);
  });
  return {c.grad_logits, c.grad_draws};
}

GumbelLpOutputs slot_logprob_cuda(SK_SLOT_LP_CPP_PARAMS) {
  SlotRowsCall c = prepare_slot_lp_forward(SK_SLOT_LP_CPP_ARGS);
  if (c.sh.N == 0) return c.outs;
  on_stream(logits, "slot_logprob", [&](auto* tag, cudaStream_t stream) {
    using scalar_t = std::remove_pointer_t<decltype(tag)>;
    const auto p = slot_lp_params<acc_t<scalar_t>>(kind, SK_SLOT_LP_PARAM_VALUES);
    launch_slot_rows_forward<scalar_t>(logits, c, p, stream);
  });
  return c.outs;
}

at::Tensor slot_logprob_backward_cuda(SK_SLOT_LP_BACKWARD_CPP_PARAMS) {
  SlotRowsBackwardCall c = prepare_slot_lp_backward(SK_SLOT_LP_BACKWARD_CPP_ARGS);
  if (c.sh.N == 0) return c.grad_logits;
  on_stream(logits, "slot_logprob_backward", [&](auto* tag, cudaStream_t stream) {
    using scalar_t = std::remove_pointer_t<decltype(tag)>;
    const auto p = slot_lp_params<acc_t<scalar_t>>(kind, SK_SLOT_LP_PARAM_VALUES);
    launch_slot_rows_backward<scalar_t>(logits, c, p, false, stream);
  });
  return c.grad_logits;
}

// ---------------------------------------------------------------------------------------------
// gaussian_logprob: one warp per row.

constexpr int kRowsPerBlock = kBlock / 32;

// Calls f(n) for each row n of the calling thread's warp (grid-stride over N rows).
template <typename F>
__device__ __forceinline__ void for_warp_rows(int64_t N, F&& f) {
  for (int64_t n = int64_t(blockIdx.x) * kRowsPerBlock + (threadIdx.x >> 5); n < N;
       n += int64_t(gridDim.x) * kRowsPerBlock) {
    f(n);
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kBlock)
    gaussian_forward_kernel(const scalar_t* __restrict__ X, RowIndexer xi,
                            const scalar_t* __restrict__ M, RowIndexer mi,
                            const acc_t<scalar_t>* __restrict__ S, acc_t<scalar_t> sigma,
                            int64_t N, int64_t D, acc_t<scalar_t>* __restrict__ LP,
                            acc_t<scalar_t>* __restrict__ Q) {
  using T = acc_t<scalar_t>;
  const int lane = threadIdx.x & 31;
  for_warp_rows(N, [&](int64_t n) {
    const scalar_t* x = X + row_offset(xi, n);
    const scalar_t* m = M + row_offset(mi, n);
    T q = T(0);
    for (int64_t d = lane; d < D; d += 32) {
      const T diff = static_cast<T>(x[d]) - static_cast<T>(m[d]);
      q += diff * diff;
    }
    q = warp_sum(q);
    if (lane == 0) {
      const T s = S != nullptr ? S[n] : sigma;
      Q[n] = q;
      LP[n] = gaussian_logprob_value(q, s, D);
    }
  });
}

template <typename scalar_t>
__global__ void __launch_bounds__(kBlock)
    gaussian_backward_kernel(const acc_t<scalar_t>* __restrict__ GR,
                             const scalar_t* __restrict__ X, RowIndexer xi,
                             const scalar_t* __restrict__ M, RowIndexer mi,
                             const acc_t<scalar_t>* __restrict__ S, acc_t<scalar_t> sigma,
                             int64_t N, int64_t D, scalar_t* __restrict__ GX,
                             scalar_t* __restrict__ GM) {
  using T = acc_t<scalar_t>;
  const int lane = threadIdx.x & 31;
  for_warp_rows(N, [&](int64_t n) {
    const scalar_t* x = X + row_offset(xi, n);
    const scalar_t* m = M + row_offset(mi, n);
    const T s = S != nullptr ? S[n] : sigma;
    // d/dx = c (x - mean), d/dmean = -c (x - mean); NaN for a bad sigma.
    const T c = gaussian_grad_factor(GR[n], s);
    for (int64_t d = lane; d < D; d += 32) {
      const T diff = static_cast<T>(x[d]) - static_cast<T>(m[d]);
      if (GX != nullptr) GX[n * D + d] = static_cast<scalar_t>(c * diff);
      if (GM != nullptr) GM[n * D + d] = static_cast<scalar_t>(-c * diff);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> gaussian_logprob_cuda(SK_GAUSSIAN_LP_CPP_PARAMS) {
  GaussianLpCall c = prepare_gaussian_lp_forward(x, mean, sigma_in);
  const GaussianLpShape& sh = c.sh;
  if (sh.N == 0) return c.outs;
  auto& [logprob, sqdist] = c.outs;
  const int64_t grid = grid_for((sh.N + kRowsPerBlock - 1) / kRowsPerBlock);
  on_stream(x, "gaussian_logprob", [&](auto* tag, cudaStream_t stream) {
    using scalar_t = std::remove_pointer_t<decltype(tag)>;
    using T = acc_t<scalar_t>;
    SK_LAUNCH(grid, kBlock, 0, stream, gaussian_forward_kernel<scalar_t>)(
        x.data_ptr<scalar_t>(), sh.x_rows, mean.data_ptr<scalar_t>(), sh.mean_rows,
        c.sigma_rows ? c.sigma_rows->data_ptr<T>() : nullptr, static_cast<T>(sigma), sh.N, sh.D,
        logprob.data_ptr<T>(), sqdist.data_ptr<T>());
  });
  return c.outs;
}

std::tuple<at::Tensor, at::Tensor> gaussian_logprob_backward_cuda(SK_GAUSSIAN_LP_BACKWARD_CPP_PARAMS) {
  GaussianLpBackwardCall c =
      prepare_gaussian_lp_backward(grad_in, x, mean, sigma_in, x_grad, mean_grad);
  if (c.idle) return {c.gx, c.gm};
  const GaussianLpShape& sh = c.sh;
  const int64_t grid = grid_for((sh.N + kRowsPerBlock - 1) / kRowsPerBlock);
  on_stream(x, "gaussian_logprob_backward", [&](auto* tag, cudaStream_t stream) {
    using scalar_t = std::remove_pointer_t<decltype(tag)>;
    using T = acc_t<scalar_t>;
    SK_LAUNCH(grid, kBlock, 0, stream, gaussian_backward_kernel<scalar_t>)(
        c.grad.data_ptr<T>(), x.data_ptr<scalar_t>(), sh.x_rows, mean.data_ptr<scalar_t>(),
        sh.mean_rows, c.sigma_rows ? c.sigma_rows->data_ptr<T>() : nullptr,
        static_cast<T>(sigma), sh.N, sh.D, x_grad ? c.gx.data_ptr<scalar_t>() : nullptr,
        mean_grad ? c.gm.data_ptr<scalar_t>() : nullptr);
  });
  return {c.gx, c.gm};
}

}  // namespace

TORCH_LIBRARY_IMPL(softkernels, CUDA, m) { SK_LOGPROB_IMPLS(m, cuda); }

}  // namespace softkernels::cuda
