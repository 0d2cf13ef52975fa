// CUDA forward of soft_embed: one launch, grid = B rows x S fixed slices of 8192 logits.
//
// Every block scans its slice once (16-byte loads, logits kept in registers): the slice's
// online-softmax statistics (max, sum-exp, entropy term; NaN / +inf detection) and its exact top-P
// candidates (P = the row's pool size), written to a workspace. Candidates: a threshold from the
// per-thread maxima (min over warps of the q-th largest maximum) that at least P logits reach
// leaves ~P survivors, ranked directly; heavy ties, masked rows and large pools take an exact radix
// select. The last block of a row to finish (atomic ticket) merges the slices' statistics in a
// fixed tree and their lists (threshold from the lists' last entries, then ranking; radix select
// on heavy ties), runs the shared per-row epilogue (csrc/common/filters.h: filters, Dirichlet /
// Gumbel noise) on one thread, then the whole block mixes the k embedding rows with 16-byte loads
// and fp32 accumulation, adds the Gaussian noise and writes the outputs. Rows never interact, and
// a row's work split depends on V only: results are bitwise independent of the batch and of block
// scheduling. docs/cuda.md has the details.
#pragma once

#include <cstdint>

#include "common/filters.h"
#include "common/macros.h"
#include "common/math.h"
#include "common/params.h"
#include "common/philox.h"
#include "common/row_state.h"
#include "cuda/cuda_common.cuh"
#include "cuda/mix_row.cuh"
#include "cuda/soft_embed_fwd.h"

namespace softkernels::cuda {

template <typename T>
struct SmemViews {
  int* hist;
  int* misc;
  RowStats<T>* red;
  T* cz;
  int32_t* cid;
  T* stz;
  int32_t* stid;
  T* gz;
  int32_t* gid;
  Candidate<T>* pool;
  T* e;
  T* key;
  int* order;
  uint8_t* taken;
  int64_t* oid;
  T* ow;
  T* on;
  int* nz;
  int cap_c, cap_g;
};

template <typename T>
SK_DEV SmemViews<T> smem_views(unsigned char* base, const FwdSmem& L) {
  static_assert(sizeof(Candidate<T>) == 16, "layout assumes 16-byte candidates");
  SmemViews<T> v;
  v.hist = reinterpret_cast<int*>(base + L.hist);
  v.misc = reinterpret_cast<int*>(base + L.misc);
  v.red = reinterpret_cast<RowStats<T>*>(base + L.red);
  v.cz = reinterpret_cast<T*>(base + L.cz);
  v.cid = reinterpret_cast<int32_t*>(base + L.cid);
  v.stz = reinterpret_cast<T*>(base + L.stz);
  v.stid = reinterpret_cast<int32_t*>(base + L.stid);
  v.gz = reinterpret_cast<T*>(base + L.gz);
  v.gid = reinterpret_cast<int32_t*>(base + L.gid);
  v.pool = reinterpret_cast<Candidate<T>*>(base + L.pool);
  v.e = reinterpret_cast<T*>(base + L.e);
  v.key = reinterpret_cast<T*>(base + L.key);
  v.order = reinterpret_cast<int*>(base + L.order);
  v.taken = reinterpret_cast<uint8_t*>(base + L.taken);
  v.oid = reinterpret_cast<int64_t*>(base + L.oid);
  v.ow = reinterpret_cast<T*>(base + L.ow);
  v.on = reinterpret_cast<T*>(base + L.on);
  v.nz = reinterpret_cast<int*>(base + L.nz);
  v.cap_c = L.cap_c;
  v.cap_g = L.cap_g;
  return v;
}

// misc[] slots (FwdSmem::misc)
constexpr int kMiscLast = 0, kMiscRadix = 1, kMiscFlag = 4, kMiscNnz = 5, kMiscCnt = 6,
              kMiscN0 = 7, kMiscWsum = 8;

// Reduction of per-thread statistics in a fixed tree (deterministic); the result is valid in
// thread 0.
template <typename T>
SK_DEV RowStats<T> block_reduce_stats(RowStats<T> st, RowStats<T>* red) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    const RowStats<T> o{__shfl_down_sync(0xFFFFFFFFu, st.m, off),
                        __shfl_down_sync(0xFFFFFFFFu, st.s, off),
                        __shfl_down_sync(0xFFFFFFFFu, st.a, off)};
    st = stats_merge(st, o);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) red[warp] = st;
  __syncthreads();
  if (threadIdx.x == 0) {
    st = red[0];
    for (int w = 1; w < kWarps; ++w) st = stats_merge(st, red[w]);
  }
  __syncthreads();  // red is reused
  return st;
}

// Calls f with a null pointer of the embedding table's element type.
template <typename F>
SK_DEV void dispatch_emb(int tag, F&& f) {
  switch (tag) {
    case kTagF32: f(static_cast<float*>(nullptr)); break;
    case kTagF64: f(static_cast<double*>(nullptr)); break;
    case kTagBF16: f(static_cast<c10::BFloat16*>(nullptr)); break;
    default: f(static_cast<c10::Half*>(nullptr)); break;
  }
}

// Loads this thread's kEPT logits of the slice, scaled: z = x * inv_temp exactly as on the CPU.
// Element (j, e) of the thread is slice position (j * kThreads + tid) * VEC + e; positions
// outside the slice read as -inf. Misaligned rows (views) load element by element in the same
// order: same values.
template <typename scalar_t, typename T>
SK_DEV void load_slice(const scalar_t* xs, bool vec_ok, int Ls, T inv_temp, T (&z)[kEPT]) {
  constexpr int VEC = Vec<scalar_t>::N;
  constexpr int CPT = kEPT / VEC;
  const int tid = threadIdx.x;
  if (vec_ok && Ls == kSlice) {  // full, aligned slice: all loads issued back to back
    uint4 raw[CPT];
#pragma unroll
    for (int j = 0; j < CPT; ++j) {
      raw[j] = __ldcs(reinterpret_cast<const uint4*>(xs + (j * kThreads + tid) * VEC));
    }
#pragma unroll
    for (int j = 0; j < CPT; ++j) unpack16<scalar_t>(raw[j], &z[j * VEC]);
  } else {
    uint4 raw[CPT];
#pragma unroll
    for (int j = 0; j < CPT; ++j) {
      const int c0 = (j * kThreads + tid) * VEC;
      raw[j] = make_uint4(0u, 0u, 0u, 0u);
      if (vec_ok && c0 + VEC <= Ls) raw[j] = __ldcs(reinterpret_cast<const uint4*>(xs + c0));
    }
#pragma unroll
    for (int j = 0; j < CPT; ++j) {
      const int c0 = (j * kThreads + tid) * VEC;
      if (vec_ok && c0 + VEC <= Ls) {
        unpack16<scalar_t>(raw[j], &z[j * VEC]);
      } else {
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          T v = -sk_inf<T>();  // outside the slice: carries no probability, never selected
          if (c0 + e < Ls) v = load_scalar<scalar_t>(xs + c0 + e);
          z[j * VEC + e] = v;
        }
      }
    }
  }
#pragma unroll
  for (int i = 0; i < kEPT; ++i) z[i] = mul_rn<T>(z[i], inv_temp);
}

// ---------------------------------------------------------------------------------------------
// Phase 1: one slice of one row.
template <typename scalar_t, typename T>
SK_DEV void scan_slice(const FwdArgs& a, int64_t b, int s, int Ls, T inv_temp, int Ps,
                       unsigned char* smem) {
  const SmemViews<T> sm = smem_views<T>(smem, fwd_smem_layout(a.pool, a.k, sizeof(T), a.stage_cap));
  using KeyT = key_t<T>;
  constexpr int VEC = Vec<scalar_t>::N;
  constexpr int CPT = kEPT / VEC;
  const int tid = threadIdx.x;
  const int64_t lo = static_cast<int64_t>(s) * a.L;
  const scalar_t* xs = static_cast<const scalar_t*>(a.logits) + b * a.logits_stride + lo;
  const bool vec_ok = aligned16(xs);
  const int64_t part = b * a.S + s;
  const int32_t id0 = static_cast<int32_t>(lo);

  T z[kEPT];
  load_slice<scalar_t, T>(xs, vec_ok, Ls, inv_temp, z);

  const int lane = tid & 31, warp = tid >> 5;
  PartialStats<T>* pst = static_cast<PartialStats<T>*>(a.ws_stats) + part;
  int* misc = sm.misc;
  if (tid == 0) misc[kMiscCnt] = 0;

  // Softmax statistics around the warp's max: per element one FFMA and one EX2 (log2 units), so
  // the warp's partial sums add without rescaling. NaN and +inf surface as a NaN sum (fmax
  // ignores NaN, +inf - +inf = NaN); a warp holding nothing but -inf / NaN checks explicitly.
  T mx = -sk_inf<T>();
#pragma unroll
  for (int i = 0; i < kEPT; ++i) mx = fmax_(mx, z[i]);
  T mw = mx;
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) mw = fmax_(mw, __shfl_xor_sync(0xFFFFFFFFu, mw, off));
  T sum = T(0), ent = T(0);  // ent in log2 units
  bool bad = false;
  if (mw != -sk_inf<T>()) {  // warp-uniform
    const T base = mw * log2e<T>();
#pragma unroll
    for (int i = 0; i < kEPT; ++i) {
      const T t2 = fma_(z[i], log2e<T>(), -base);
      const T e = stats_exp2(t2);
      sum += e;
      ent = fma_(e, fmax_(t2, T(-1e4)), ent);  // -inf entries: e = 0, clamped t keeps 0 * t = 0
    }
    bad = !(sum == sum);
  } else {
#pragma unroll
    for (int i = 0; i < kEPT; ++i) bad = bad || !(z[i] == z[i]);
  }
  if (__syncthreads_or(bad ? 1 : 0)) {
    if (tid == 0) {
      pst->m = -sk_inf<T>();
      pst->s = T(0);
      pst->a = T(0);
      pst->flag = 1;
    }
    return;
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {  // fixed tree: deterministic
    sum += __shfl_down_sync(0xFFFFFFFFu, sum, off);
    ent += __shfl_down_sync(0xFFFFFFFFu, ent, off);
  }
  if (lane == 0) {
    sm.red[warp] = mw == -sk_inf<T>() ? stats_empty<T>() : RowStats<T>{mw, sum, ent * ln2<T>()};
  }

  // Prefilter (slices where every thread holds elements, Ps <= 256): in each warp, m_w = the q-th
  // largest of its 32 per-thread maxima, q = ceil(Ps / kWarps) (bitonic sort across the lanes);
  // t0 = min_w m_w. Every warp holds q maxima >= t0, so at least kWarps * q >= Ps elements are
  // >= t0, and the slice's Ps best all are. Typically ~Ps elements pass; they are ranked
  // directly. Ties at t0 all pass, so the exact tie rule is applied by the ranking.
  T* wthr = reinterpret_cast<T*>(sm.hist);  // the radix histogram is not in use yet
  const bool prefilter = Ls >= kThreads * VEC && Ps <= kWarps * 32;  // uniform
  if (prefilter) {
    T v = mx;
#pragma unroll
    for (int kk = 2; kk <= 32; kk <<= 1) {
#pragma unroll
      for (int jj = kk >> 1; jj > 0; jj >>= 1) {
        const T o = __shfl_xor_sync(0xFFFFFFFFu, v, jj);
        v = (((lane & jj) == 0) == ((lane & kk) == 0)) ? fmax_(v, o) : fmin_(v, o);
      }
    }
    const int q = (Ps + kWarps - 1) / kWarps;
    const T mq = __shfl_sync(0xFFFFFFFFu, v, q - 1);  // lanes hold the maxima in descending order
    if (lane == 0) wthr[warp] = mq;
  }
  __syncthreads();

  // Slice statistics: warp 0 merges the warps' states in a fixed tree.
  if (warp == 0) {
    RowStats<T> st = lane < kWarps ? sm.red[lane] : stats_empty<T>();
#pragma unroll
    for (int off = 4; off > 0; off >>= 1) {
      const RowStats<T> o{__shfl_down_sync(0xFFFFFFFFu, st.m, off),
                          __shfl_down_sync(0xFFFFFFFFu, st.s, off),
                          __shfl_down_sync(0xFFFFFFFFu, st.a, off)};
      st = stats_merge(st, o);
    }
    if (lane == 0) {
      pst->m = st.m;
      pst->s = st.s;
      pst->a = st.a;
      pst->flag = 0;
    }
  }

  T* out_z = static_cast<T*>(a.ws_z) + part * a.pool;
  int32_t* out_id = a.ws_id + part * a.pool;
  auto store = [&](int r, T zz, int32_t ii) {
    out_z[r] = zz;
    out_id[r] = ii;
  };

  if (prefilter) {
    T t0 = wthr[0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) t0 = fmin_(t0, wthr[w]);
    __syncthreads();  // every thread has read wthr before the radix path reuses its memory
    if (t0 != -sk_inf<T>()) {  // uniform; with t0 = -inf positions outside the slice would pass
#pragma unroll
      for (int j = 0; j < CPT; ++j) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
          if (z[j * VEC + e] >= t0) {
            const int p = atomicAdd(misc + kMiscCnt, 1);
            if (p < kCapA) {
              sm.cz[p] = z[j * VEC + e];
              sm.cid[p] = id0 + (j * kThreads + tid) * VEC + e;
            }
          }
        }
      }
      __syncthreads();
      const int C = misc[kMiscCnt];
      if (C <= kCapA) {  // uniform; the order of arrival does not matter: ranks are unique
        sort_take(sm.cz, sm.cid, C, Ps, sm.cap_c, store);
        return;
      }
    }
  }

  // Exact path: radix select of the Ps best among the slice's elements. (Rare for full slices:
  // the logits are read again rather than kept live in registers across the ranking above.)
  load_slice<scalar_t, T>(xs, vec_ok, Ls, inv_temp, z);
  auto for_items = [&](auto&& fn) {
#pragma unroll
    for (int j = 0; j < CPT; ++j) {
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        const int c = (j * kThreads + tid) * VEC + e;
        fn(order_key(z[j * VEC + e]), id0 + c, c < Ls);
      }
    }
  };
  const RadixSel<KeyT> r = radix_select<T>(Ps, for_items, sm.hist, misc + kMiscRadix);
  int cnt = 0;
  for_items([&](KeyT kk, int32_t ii, bool act) {
    if (act && radix_selected(r, kk, inv_id(ii))) ++cnt;
  });
  int C = 0;
  int n = block_exclusive_scan(cnt, misc + kMiscWsum, C);
  for_items([&](KeyT kk, int32_t ii, bool act) {
    if (act && radix_selected(r, kk, inv_id(ii)) && n < sm.cap_c) {
      sm.cz[n] = key_value(kk);
      sm.cid[n] = ii;
      ++n;
    }
  });
  __syncthreads();
  sort_take(sm.cz, sm.cid, C < sm.cap_c ? C : sm.cap_c, Ps, sm.cap_c, store);
}

// ---------------------------------------------------------------------------------------------
// Phase 2 (last block of a row): the row's pool = the P_row best of all slices' lists, sorted.
template <typename T>
SK_DEV void merge_pool(const FwdArgs& a, int64_t b, int P_row, const SmemViews<T>& sm) {
  using KeyT = key_t<T>;
  const int tid = threadIdx.x;
  const int S = a.S;
  const int64_t last_len = a.V - static_cast<int64_t>(S - 1) * a.L;
  const int nf = P_row < a.L ? P_row : a.L;  // list length of a full slice
  const int nl = static_cast<int>(P_row < last_len ? P_row : last_len);
  const int nfull = (S - 1) * nf;
  const int N = nfull + nl;
  const T* wz = static_cast<const T*>(a.ws_z) + b * S * a.pool;
  const int32_t* wi = a.ws_id + b * S * a.pool;
  auto gidx = [&](int g) -> int64_t {
    int s, pos;
    if (g < nfull) {
      s = g / nf;
      pos = g - s * nf;
    } else {
      s = S - 1;
      pos = g - nfull;
    }
    return static_cast<int64_t>(s) * a.pool + pos;
  };
  const bool staged = N <= a.stage_cap;
  if (staged) {
    for (int g = tid; g < N; g += kThreads) {
      const int64_t o = gidx(g);
      sm.stz[g] = __ldcg(wz + o);
      sm.stid[g] = __ldcg(wi + o);
    }
    __syncthreads();
  }
  auto item = [&](int g, T& zz, int32_t& ii) {
    if (staged) {
      zz = sm.stz[g];
      ii = sm.stid[g];
    } else {
      const int64_t o = gidx(g);
      zz = __ldcg(wz + o);
      ii = __ldcg(wi + o);
    }
  };
  auto to_pool = [&](int rr, T zz, int32_t ii) { sm.pool[rr] = Candidate<T>{zz, ii}; };
  int* misc = sm.misc;

  // Threshold: every full list (P_row entries) holds P_row tokens >= its last entry, so the row's
  // P_row best are all >= T = the largest of those last entries. Typically ~P_row entries pass;
  // they are ranked directly (ties at T all pass; the ranking applies the tie rule).
  T tl = -sk_inf<T>();
  for (int s = tid; s < S; s += kThreads) {
    const bool full = s < S - 1 || nl == P_row;
    if (full) {
      T zz;
      int32_t ii;
      item(s * nf + P_row - 1, zz, ii);
      tl = fmax_(tl, zz);
    }
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) tl = fmax_(tl, __shfl_xor_sync(0xFFFFFFFFu, tl, off));
  T* wthr = reinterpret_cast<T*>(sm.hist);
  if ((tid & 31) == 0) wthr[tid >> 5] = tl;
  if (tid == 0) misc[kMiscCnt] = 0;
  __syncthreads();
  T thr = wthr[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) thr = fmax_(thr, wthr[w]);
  __syncthreads();  // wthr (the histogram's memory) is free again
  for (int g = tid; g < N; g += kThreads) {
    T zz;
    int32_t ii;
    item(g, zz, ii);
    if (zz >= thr) {
      const int p = atomicAdd(misc + kMiscCnt, 1);
      if (p < kCapA) {
        sm.gz[p] = zz;
        sm.gid[p] = ii;
      }
    }
  }
  __syncthreads();
  const int C0 = misc[kMiscCnt];
  if (C0 <= kCapA) {  // uniform
    sort_take(sm.gz, sm.gid, C0, P_row, sm.cap_g, to_pool);
    return;
  }

  // Exact path (heavy ties): radix select of the P_row best.
  auto for_items = [&](auto&& fn) {
    for (int base = 0; base < N; base += kThreads) {
      const int g = base + tid;
      const bool act = g < N;
      T zz = -sk_inf<T>();
      int32_t ii = 0;
      if (act) item(g, zz, ii);
      fn(order_key(zz), ii, act);
    }
  };
  const RadixSel<KeyT> r = radix_select<T>(P_row, for_items, sm.hist, misc + kMiscRadix);
  int cnt = 0;
  for_items([&](KeyT kk, int32_t ii, bool act) {
    if (act && radix_selected(r, kk, inv_id(ii))) ++cnt;
  });
  int C = 0;
  int n = block_exclusive_scan(cnt, misc + kMiscWsum, C);
  for_items([&](KeyT kk, int32_t ii, bool act) {
    if (act && radix_selected(r, kk, inv_id(ii)) && n < sm.cap_g) {
      sm.gz[n] = key_value(kk);
      sm.gid[n] = ii;
      ++n;
    }
  });
  __syncthreads();
  sort_take(sm.gz, sm.gid, C < sm.cap_g ? C : sm.cap_g, P_row, sm.cap_g, to_pool);
}

// Hard rows carry E[id] bit for bit.
template <typename E>
SK_DEV void copy_row(const FwdArgs& a, int64_t b, int64_t id) {
  using R = std::conditional_t<sizeof(E) == 2, uint16_t,
                               std::conditional_t<sizeof(E) == 4, uint32_t, uint64_t>>;
  const R* src = reinterpret_cast<const R*>(static_cast<const E*>(a.emb) + id * a.emb_stride);
  R* dst = reinterpret_cast<R*>(static_cast<E*>(a.embeds) + b * a.D);
  const int64_t bytes = a.D * static_cast<int64_t>(sizeof(E));
  if (aligned16(src) && aligned16(dst) && bytes % 16 == 0) {
    const uint4* s4 = reinterpret_cast<const uint4*>(src);
    uint4* d4 = reinterpret_cast<uint4*>(dst);
    for (int64_t i = threadIdx.x; i < bytes / 16; i += kThreads) d4[i] = __ldg(s4 + i);
  } else {
    for (int64_t d = threadIdx.x; d < a.D; d += kThreads) dst[d] = src[d];
  }
}

template <typename E>
SK_DEV void fill_nan_row(const FwdArgs& a, int64_t b) {
  E* dst = static_cast<E*>(a.embeds) + b * a.D;
  for (int64_t d = threadIdx.x; d < a.D; d += kThreads) {
    store_scalar<E>(dst + d, sk_nan<acc_t<E>>());
  }
}

template <typename T>
SK_DEV void epilogue(const FwdArgs& a, int64_t b, const RowParams<T>& rp, bool params_ok,
                     int P_row, unsigned char* smem) {
  const SmemViews<T> sm = smem_views<T>(smem, fwd_smem_layout(a.pool, a.k, sizeof(T), a.stage_cap));
  const int tid = threadIdx.x;
  const int S = a.S, k = a.k;
  const bool gumbel = a.np.kind == kNoiseGumbel;
  const bool is_hard = a.hard != nullptr && a.hard[b];
  const int64_t hard_id = (is_hard && a.hard_ids != nullptr) ? a.hard_ids[b] : -1;  // -1: argmax
  int* misc = sm.misc;

  // Row statistics: the slices' partial states merged in a fixed tree over the slice index (thread
  // t folds slices t, t + 256, ... in order, then the block tree), so the result depends on V
  // only. The status follows the CPU kernel's rules and precedence.
  RowStats<T> st_part = stats_empty<T>();
  int nonfinite = 0;
  if (params_ok) {  // uniform; the workspace of a refused row was never written
    const PartialStats<T>* ps = static_cast<const PartialStats<T>*>(a.ws_stats) + b * S;
    for (int s = tid; s < S; s += kThreads) {
      const RowStats<T> x{__ldcg(&ps[s].m), __ldcg(&ps[s].s), __ldcg(&ps[s].a)};
      nonfinite |= __ldcg(&ps[s].flag);
      st_part = stats_merge(st_part, x);
    }
  }
  st_part = block_reduce_stats(st_part, sm.red);
  nonfinite = __syncthreads_or(nonfinite);
  if (tid == 0) {
    int flag = params_ok ? kStatusOk : kStatusBadParam;
    if (flag == kStatusOk && nonfinite) flag = kStatusNonFinite;
    if (flag == kStatusOk && st_part.s == T(0)) flag = kStatusAllMasked;
    if (flag == kStatusOk && is_hard && a.hard_ids != nullptr && (hard_id < 0 || hard_id >= a.V)) {
      flag = kStatusBadHardId;
    }
    misc[kMiscFlag] = flag;
    misc[kMiscN0] = 0;
    sm.red[0] = st_part;
  }
  __syncthreads();
  const int flag = misc[kMiscFlag];
  const RowStats<T> st = sm.red[0];
  int64_t* out_ids = a.ids + b * k;
  T* out_w = static_cast<T*>(a.weights) + b * k;
  T* out_noise = gumbel ? static_cast<T*>(a.noise) + b * k : nullptr;

  if (flag != kStatusOk) {  // uniform
    for (int j = tid; j < k; j += kThreads) {
      out_ids[j] = 0;
      out_w[j] = sk_nan<T>();
      if (gumbel) out_noise[j] = sk_nan<T>();
    }
    if (tid == 0) {
      a.status[b] = flag;
      static_cast<T*>(a.entropy)[b] = sk_nan<T>();
      static_cast<T*>(a.max_prob)[b] = sk_nan<T>();
    }
    dispatch_emb(a.emb_tag, [&](auto* tag) {
      using E = std::remove_pointer_t<decltype(tag)>;
      fill_nan_row<E>(a, b);
    });
    return;
  }

  if (S == 1) {
    const T* wz = static_cast<const T*>(a.ws_z) + b * a.pool;
    const int32_t* wi = a.ws_id + b * a.pool;
    for (int i = tid; i < P_row; i += kThreads) {
      sm.pool[i] = Candidate<T>{__ldcg(wz + i), static_cast<int64_t>(__ldcg(wi + i))};
    }
  } else {
    merge_pool<T>(a, b, P_row, sm);
  }
  __syncthreads();
  if (!is_hard) {  // uniform: step 1 of finish_row (one exp per pool entry) in parallel
    for (int i = tid; i < P_row; i += kThreads) {
      const T e = finish_row_e(sm.pool, i);
      sm.e[i] = e;
      sm.taken[i] = 0;
      if (e > T(0)) atomicMax(misc + kMiscN0, i + 1);
    }
    __syncthreads();
  }

  // The per-row epilogue shared with the CPU kernel (sequential, on one thread).
  if (tid == 0) {
    static_cast<T*>(a.entropy)[b] = stats_entropy(st);
    static_cast<T*>(a.max_prob)[b] = stats_max_prob(st);
    int nnz = 0;
    if (is_hard) {
      finish_hard_row(sm.pool, P_row, k, hard_id, gumbel, sm.oid, sm.ow, sm.on);
    } else {
      const RowScratch<T> sc{sm.e, sm.key, sm.order, sm.taken, true, misc[kMiscN0]};
      finish_row(sm.pool, P_row, k, a.V, st, rp, a.np, sc, sm.oid, sm.ow, sm.on);
      for (int j = 0; j < k; ++j) {
        if (sm.ow[j] != T(0)) sm.nz[nnz++] = j;  // the CPU kernel skips exactly the zero weights
      }
    }
    misc[kMiscNnz] = nnz;
    a.status[b] = kStatusOk;
  }
  __syncthreads();
  for (int j = tid; j < k; j += kThreads) {
    out_ids[j] = sm.oid[j];
    out_w[j] = sm.ow[j];
    if (gumbel) out_noise[j] = sm.on[j];
  }
  const int nnz = misc[kMiscNnz];
  dispatch_emb(a.emb_tag, [&](auto* tag) {
    using E = std::remove_pointer_t<decltype(tag)>;
    if (is_hard) {
      copy_row<E>(a, b, sm.oid[0]);
    } else {
      mix_row<E, T>(static_cast<const E*>(a.emb), a.emb_stride, a.D,
                    static_cast<E*>(a.embeds) + b * a.D, sm.oid, sm.ow, sm.nz, nnz,
                    a.np.kind == kNoiseGaussian, a.np.sigma, rp.seed, rp.offset);
    }
  });
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads, sizeof(scalar_t) == 8 ? 2 : 4) soft_embed_fwd_kernel(const FwdArgs a) {
  using T = acc_t<scalar_t>;
  extern __shared__ __align__(16) unsigned char sk_smem[];
  const int64_t b = static_cast<int64_t>(blockIdx.x) / a.S;
  const int s = static_cast<int>(static_cast<int64_t>(blockIdx.x) % a.S);

  const RowParams<T> rp = a.rs.row<T>(b);
  const int64_t prow = row_pool_size(a.V, a.k, rp.top_k, a.np.kind == kNoiseDirichlet);
  // Per-row tensors are checked here (validate=False must not trust them); a pool larger than the
  // workspace is refused too (only reachable by calling the raw op with an inconsistent pool).
  const bool params_ok =
      (!a.rs.any_rows() || row_params_ok(rp, a.V, static_cast<int64_t>(a.k), a.np.kind,
                                         static_cast<int64_t>(a.pool))) &&
      prow <= a.pool;
  const int P_row = params_ok ? static_cast<int>(prow) : 0;

  if (params_ok) {  // uniform over the block
    const int64_t lo = static_cast<int64_t>(s) * a.L;
    const int Ls = static_cast<int>(a.V - lo < a.L ? a.V - lo : a.L);
    const int Ps = P_row < Ls ? P_row : Ls;
    scan_slice<scalar_t, T>(a, b, s, Ls, rp.inv_temp, Ps, sk_smem);
  }

  if (a.S > 1) {
    // Publish this slice, take a ticket; the row's last block runs the epilogue.
    __shared__ int last_flag;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) {
      const unsigned prev = atomicAdd(a.counters + b, 1u);
      last_flag = prev == static_cast<unsigned>(a.S - 1) ? 1 : 0;
    }
    __syncthreads();
    if (last_flag == 0) return;
    __threadfence();
  } else {
    __syncthreads();
  }
  epilogue<T>(a, b, rp, params_ok, P_row, sk_smem);
}

template <typename scalar_t>
void launch_soft_embed_fwd(const FwdArgs& a, int smem_bytes, cudaStream_t stream) {
  auto kernel = soft_embed_fwd_kernel<scalar_t>;
  if (smem_bytes > kSmemDefault) {  // beyond the default limit (which counts static smem too)
    const cudaError_t err =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
    if (err != cudaSuccess) throw_cuda_error(err, "cudaFuncSetAttribute(soft_embed_fwd)");
  }
  const unsigned blocks = static_cast<unsigned>(a.B * a.S);
  kernel<<<blocks, kThreads, smem_bytes, stream>>>(a);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw_cuda_error(err, "soft_embed_fwd launch");
}

}  // namespace softkernels::cuda
