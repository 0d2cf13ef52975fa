// CUDA forward of soft_embed: one launch, grid = B rows x S fixed slices of 8192 logits.
//
// Every block scans its slice once (16-byte loads issued first, logits kept in registers): the
// slice's online-softmax statistics (max, sum-exp, entropy term; NaN / +inf detection) and its
// exact top-P candidates (P = the row's pool size), written to a workspace. Candidates: a
// threshold from the per-thread maxima (min over warps of the q-th largest maximum) that at least
// P logits reach leaves ~P survivors, appended with (warp-aggregated) shared atomics and ranked
// by counting; heavy ties, masked rows and large pools take an exact radix select. The last
// block of a row to finish (atomic ticket) merges the slices' statistics (warp 0, fixed tree) and
// lists (threshold = the P-th best of the lists' heads, then ranking; the looser "largest last
// entry" threshold and a radix select as fallbacks), runs the per-row epilogue (warp-parallel for
// the common cases, else csrc/common/filters.h's finish_row on one thread; both use the same
// per-entry rules), prefetches the chosen embedding rows into L2, then the whole block mixes them
// with 16-byte loads and fp32 accumulation, adds the Gaussian noise and writes the outputs. Rows
// never interact, and a row's work split depends on V only: results are bitwise independent of
// the batch and of block scheduling. docs/cuda.md has the details.
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

// The block's shared-memory arrays: X(element type, FwdSmem offset field), in layout order.
#define SK_FWD_SMEM_VIEWS(X)                                                                     \
  X(int, hist) X(int, misc) X(RowStats<T>, red) X(T, cz) X(int32_t, cid) X(T, stz)              \
  X(int32_t, stid) X(T, gz) X(int32_t, gid) X(Candidate<T>, pool) X(T, e) X(T, key) X(int, order) \
  X(uint8_t, taken) X(int64_t, oid) X(T, ow) X(T, on) X(int, nz)

template <typename T>
struct SmemViews {
#define SK_VIEW_FIELD(type, name) type* name;
  SK_FWD_SMEM_VIEWS(SK_VIEW_FIELD)
#undef SK_VIEW_FIELD
  int cap_c, cap_g;
};

template <typename T>
SK_DEV SmemViews<T> smem_views(unsigned char* base, const FwdSmem& L) {
  static_assert(sizeof(Candidate<T>) == 16, "layout assumes 16-byte candidates");
  SmemViews<T> v;
#define SK_VIEW_AT(type, name) v.name = reinterpret_cast<type*>(base + L.name);
  SK_FWD_SMEM_VIEWS(SK_VIEW_AT)
#undef SK_VIEW_AT
  v.cap_c = L.cap_c;
  v.cap_g = L.cap_g;
  return v;
}

// misc[] slots (FwdSmem::misc)
constexpr int kMiscLast = 0, kMiscRadix = 1, kMiscFlag = 4, kMiscNnz = 5, kMiscCnt = 6,
              kMiscN0 = 7, kMiscWsum = 8, kMiscHeadId = 16;
// Merge: at most this many list heads are ranked to find the threshold (else the fallback).
constexpr int kHeadsMax = 256;
// Embedding rows prefetched into L2 per row once its pool is known.
constexpr int kPrefetchRows = 16;
constexpr unsigned kFull = 0xFFFFFFFFu;

// Ticket fences at GPU scope: release before the ticket, acquire after the last one (thread 0;
// the block's barriers order the other threads' accesses around them).
SK_DEV void fence_acq_rel_gpu() {
#ifndef SK_EMU
  asm volatile("fence.acq_rel.gpu;" ::: "memory");
#endif
}

// Hint: bring [p, p + bytes) into L2, at most its first 64 KB (bulk prefetches of <= 16 KB on
// sm_90, else one prefetch per 128 bytes).
SK_DEV void prefetch_l2(const void* p, uint32_t bytes) {
#ifndef SK_EMU
  constexpr uint32_t kMax = 64u << 10, kChunk = 16u << 10;
  bytes = bytes < kMax ? bytes : kMax;
  const char* c = static_cast<const char*>(p);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if ((reinterpret_cast<uintptr_t>(p) & 15u) == 0 && (bytes & 15u) == 0) {
    for (uint32_t o = 0; o < bytes; o += kChunk) {
      const uint32_t n = bytes - o < kChunk ? bytes - o : kChunk;
      asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(c + o), "r"(n) : "memory");
    }
    return;
  }
#endif
  for (uint32_t o = 0; o < bytes; o += 128) asm volatile("prefetch.global.L2 [%0];" ::"l"(c + o));
#endif
}

// x, hidden from the optimiser: a recomputation from it is not merged with the first one (which
// would keep all of its intermediate values live in registers).
SK_DEV float opaque(float x) {
#ifndef SK_EMU
  asm volatile("" : "+f"(x));
#endif
  return x;
}
SK_DEV double opaque(double x) {
#ifndef SK_EMU
  asm volatile("" : "+d"(x));
#endif
  return x;
}

SK_DEV int emb_elem_size(int tag) {
  return tag == kTagF64 ? 8 : (tag == kTagF32 ? 4 : 2);
}

// Warp sum of v in a fixed tree, the same value in every lane.
template <typename T>
SK_DEV T warp_sum_bcast(T v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(kFull, v, off);
  return __shfl_sync(kFull, v, 0);
}

// Inclusive prefix sum over the warp's lanes (fixed shuffle tree).
template <typename T>
SK_DEV T warp_inclusive_scan_t(T v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int off = 1; off < 32; off <<= 1) {
    const T n = __shfl_up_sync(kFull, v, off);
    if (lane >= off) v += n;
  }
  return v;
}

// sum of e[0, n) for a warp: a fixed tree per 32 entries, chunks in order; same value in all lanes.
template <typename T>
SK_DEV T warp_sum_range(const T* e, int n) {
  const int lane = threadIdx.x & 31;
  T total = T(0);
  for (int c = 0; c < n; c += 32) {
    const int i = c + lane;
    total += warp_sum_bcast(i < n ? e[i] : T(0));
  }
  return total;
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

// A full, 16-byte aligned slice: the thread's kEPT logits as raw 16-byte vectors, all loads
// issued back to back (before anything waits on them). Same element order as load_slice.
template <typename scalar_t>
SK_DEV void load_raw(const scalar_t* xs, uint4 (&raw)[kEPT / Vec<scalar_t>::N]) {
  constexpr int VEC = Vec<scalar_t>::N;
#pragma unroll
  for (int j = 0; j < kEPT / VEC; ++j) {
    raw[j] = __ldcs(reinterpret_cast<const uint4*>(xs + (j * kThreads + threadIdx.x) * VEC));
  }
}

template <typename scalar_t, typename T>
SK_DEV void unpack_scale(const uint4 (&raw)[kEPT / Vec<scalar_t>::N], T inv_temp, T (&z)[kEPT]) {
  constexpr int VEC = Vec<scalar_t>::N;
#pragma unroll
  for (int j = 0; j < kEPT / VEC; ++j) unpack16<scalar_t>(raw[j], &z[j * VEC]);
#pragma unroll
  for (int i = 0; i < kEPT; ++i) z[i] = mul_rn<T>(z[i], inv_temp);
}

// The slice's statistics from the warps' states in red[0, kWarps): one warp, fixed tree.
template <typename T>
SK_DEV void store_slice_stats(const RowStats<T>* red, PartialStats<T>* pst) {
  const int lane = threadIdx.x & 31;
  RowStats<T> st = lane < kWarps ? red[lane] : stats_empty<T>();
#pragma unroll
  for (int off = kWarps / 2; off > 0; off >>= 1) {
    const RowStats<T> o{__shfl_down_sync(kFull, st.m, off), __shfl_down_sync(kFull, st.s, off),
                        __shfl_down_sync(kFull, st.a, off)};
    st = stats_merge(st, o);
  }
  if (lane == 0) {
    pst->m = st.m;
    pst->s = st.s;
    pst->a = st.a;
    pst->flag = 0;
  }
}

// ---------------------------------------------------------------------------------------------
// Phase 1: one slice of one row. `fast`: a full, aligned slice whose logits are already in `raw`.
template <typename scalar_t, typename T>
SK_DEV void scan_slice(const FwdArgs& a, int64_t b, int s, int Ls, T inv_temp, int Ps,
                       const scalar_t* xs, bool fast,
                       const uint4 (&raw)[kEPT / Vec<scalar_t>::N], unsigned char* smem) {
  const SmemViews<T> sm = smem_views<T>(smem, fwd_smem_layout(a.pool, a.k, sizeof(T), a.stage_cap));
  constexpr int VEC = Vec<scalar_t>::N;
  constexpr int CPT = kEPT / VEC;
  const int tid = threadIdx.x;
  const int64_t part = b * a.S + s;
  const int32_t id0 = static_cast<int32_t>(static_cast<int64_t>(s) * a.L);

  T z[kEPT];
  if (fast) {
    unpack_scale<scalar_t, T>(raw, inv_temp, z);
  } else {
    load_slice<scalar_t, T>(xs, aligned16(xs), Ls, inv_temp, z);
  }

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
  for (int off = 16; off > 0; off >>= 1) mw = fmax_(mw, __shfl_xor_sync(kFull, mw, off));
  T sum = T(0), ent = T(0);  // ent in log2 units
  bool bad = false;
  if (mw != -sk_inf<T>()) {  // warp-uniform
    const T base = mw * log2e<T>();
#pragma unroll
    for (int i = 0; i < kEPT; ++i) {
      const T t2 = fma_(z[i], log2e<T>(), -base);
      const T e = stats_exp2(t2);
      sum += e;
      ent = fma_(e, t2, ent);
    }
    bad = !(sum == sum);
    if (!bad && !(ent == ent)) {
      SK_EMU_COUNT("scan.ent_redo(thread)");
      // A -inf logit (e = 0, t2 = -inf) made 0 * -inf = NaN: redo the entropy term with t2
      // clamped (e = 0 there, so the clamp changes nothing else: same bits as clamping always).
      ent = T(0);
      const T base2 = opaque(base);
#pragma unroll
      for (int i = 0; i < kEPT; ++i) {
        const T t2 = fma_(z[i], log2e<T>(), -base2);
        ent = fma_(stats_exp2(t2), fmax_(t2, T(-1e4)), ent);
      }
    }
  } else {
#pragma unroll
    for (int i = 0; i < kEPT; ++i) bad = bad || !(z[i] == z[i]);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {  // fixed tree: deterministic
    sum += __shfl_down_sync(kFull, sum, off);
    ent += __shfl_down_sync(kFull, ent, off);
  }
  if (lane == 0) {
    sm.red[warp] = mw == -sk_inf<T>() ? stats_empty<T>() : RowStats<T>{mw, sum, ent * ln2<T>()};
  }
  T* wthr = reinterpret_cast<T*>(sm.hist);  // the radix histogram is not in use yet
  int* wbad = sm.hist + 32;
  const bool warp_bad = __any_sync(kFull, bad);
  if (lane == 0) wbad[warp] = warp_bad ? 1 : 0;

  // Prefilter (slices where every thread holds elements, Ps <= 256): in each warp, m_w = the q-th
  // largest of its 32 per-thread maxima, q = ceil(Ps / kWarps) (bitonic sort across the lanes;
  // the warp max when q = 1); t0 = min_w m_w. Every warp holds q maxima >= t0, so at least
  // kWarps * q >= Ps elements are >= t0, and the slice's Ps best all are. Typically ~Ps elements
  // pass; they are ranked directly. Ties at t0 all pass, so the ranking applies the exact tie rule.
  const bool prefilter = Ls >= kThreads * VEC && Ps <= kWarps * 32;  // uniform
  if (prefilter) {
    const int q = (Ps + kWarps - 1) / kWarps;
    T mq = mw;
    if (q > 1) {  // uniform
      T v = mx;
#pragma unroll
      for (int kk = 2; kk <= 32; kk <<= 1) {
#pragma unroll
        for (int jj = kk >> 1; jj > 0; jj >>= 1) {
          const T o = __shfl_xor_sync(kFull, v, jj);
          v = (((lane & jj) == 0) == ((lane & kk) == 0)) ? fmax_(v, o) : fmin_(v, o);
        }
      }
      mq = __shfl_sync(kFull, v, q - 1);  // lanes hold the maxima in descending order
    }
    if (lane == 0) wthr[warp] = mq;
  }
  __syncthreads();  // B1: red, wbad, wthr
  int any_bad = 0;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) any_bad |= wbad[w];
  if (any_bad) {  // uniform: the row is flagged; its lists are never read
    if (tid == 0) {
      SK_EMU_COUNT("scan.bad");
      pst->m = -sk_inf<T>();
      pst->s = T(0);
      pst->a = T(0);
      pst->flag = 1;
    }
    return;
  }
  T t0 = -sk_inf<T>();
  if (prefilter) {
    t0 = wthr[0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) t0 = fmin_(t0, wthr[w]);
  }
  // With t0 = -inf, positions outside the slice would pass: exact path.
  const bool cands = prefilter && t0 != -sk_inf<T>();  // uniform
  if (cands) {
    // Survivors are appended with shared atomics (the compiler aggregates them per warp).
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
  }
  __syncthreads();  // B2: the survivors; every thread has read wthr / wbad (hist is free again)
  // The slice's statistics, by the last warp (idle while the first warps rank the survivors).
  if (warp == kWarps - 1) store_slice_stats<T>(sm.red, pst);

  T* out_z = static_cast<T*>(a.ws_z) + part * a.pool;
  int32_t* out_id = a.ws_id + part * a.pool;
  auto store = [&](int r, T zz, int32_t ii) {
    out_z[r] = zz;
    out_id[r] = ii;
  };
  if (tid == 0) SK_EMU_COUNT(fast ? "scan.fast" : "scan.generic_load");
  if (cands) {
    const int C = misc[kMiscCnt];
    if (tid == 0) {
      SK_EMU_COUNT(C <= 128 ? "scan.rank_count" : (C <= kCapA ? "scan.bitonic" : "scan.overflow"));
    }
    if (C <= kCapA) {  // uniform; the order of arrival does not matter: ranks are unique
      sort_take(sm.cz, sm.cid, C, Ps, sm.cap_c, store);
      return;
    }
  }

  // Exact path: radix select of the Ps best among the slice's elements. (Rare for full slices:
  // the logits are read again rather than kept live in registers across the ranking above.)
  if (tid == 0) SK_EMU_COUNT("scan.exact");
  load_slice<scalar_t, T>(xs, aligned16(xs), Ls, inv_temp, z);
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
  radix_take<T>(Ps, for_items, sm.cz, sm.cid, sm.cap_c, sm.hist, misc + kMiscRadix,
                misc + kMiscWsum, store);
}

// ---------------------------------------------------------------------------------------------
// Phase 2 (last block of a row): the row's pool = the P_row best of all slices' lists, sorted.
// The row's slices' lists, laid out as one index space: list s < S - 1 holds nf entries, the last
// list nl; entry g of list s at s * nf + pos. Staged in shared memory (stz / stid, by the caller)
// when N <= stage_cap.
struct MergeShape {
  int nf, nl, N;
  bool staged;
};

SK_DEV MergeShape merge_shape(const FwdArgs& a, int P_row) {
  MergeShape m;
  const int64_t last_len = a.V - static_cast<int64_t>(a.S - 1) * a.L;
  m.nf = P_row < a.L ? P_row : a.L;
  m.nl = static_cast<int>(P_row < last_len ? P_row : last_len);
  m.N = (a.S - 1) * m.nf + m.nl;
  m.staged = m.N <= a.stage_cap;
  return m;
}

// Workspace offset of merged index g.
SK_DEV int64_t merge_gidx(const FwdArgs& a, const MergeShape& m, int g) {
  const int nfull = (a.S - 1) * m.nf;
  int s, pos;
  if (g < nfull) {
    s = g / m.nf;
    pos = g - s * m.nf;
  } else {
    s = a.S - 1;
    pos = g - nfull;
  }
  return static_cast<int64_t>(s) * a.pool + pos;
}

template <typename T>
SK_DEV void merge_pool(const FwdArgs& a, int64_t b, int P_row, const MergeShape& ms,
                       const SmemViews<T>& sm) {
  const int tid = threadIdx.x;
  const int S = a.S;
  const int nf = ms.nf, nl = ms.nl, N = ms.N;
  const bool staged = ms.staged;
  const T* wz = static_cast<const T*>(a.ws_z) + b * S * a.pool;
  const int32_t* wi = a.ws_id + b * S * a.pool;
  auto item = [&](int g, T& zz, int32_t& ii) {
    if (staged) {
      zz = sm.stz[g];
      ii = sm.stid[g];
    } else {
      const int64_t o = merge_gidx(a, ms, g);
      zz = __ldcg(wz + o);
      ii = __ldcg(wi + o);
    }
  };
  auto to_pool = [&](int rr, T zz, int32_t ii) { sm.pool[rr] = Candidate<T>{zz, ii}; };
  int* misc = sm.misc;

  // Threshold element (tz, tix): the row's P_row best are all "not worse" than it.
  T tz;
  int32_t tix;
  // Heads: the first q entries of every list, q = ceil(2 P_row / S) (<= nf for S >= 2), at least
  // (S - 1) q >= P_row of them. Their P_row-th best h* has P_row entries at least as good, so
  // the row's P_row best are all >= h*. Lists hold ~P_row / S of the row's best each, so ~1.1 P_row
  // entries are >= h* (the fallback below, the largest last entry of the full lists, lets ~10 P_row
  // through at P = 30).
  const int q = (2 * P_row + S - 1) / S;
  const int hq_last = q < nl ? q : nl;
  const int nh = (S - 1) * q + hq_last;
  if (staged && nh <= kHeadsMax) {  // uniform
    if (tid == 0) SK_EMU_COUNT("merge.heads");
    const int hfull = (S - 1) * q;
    for (int h = tid; h < nh; h += kThreads) {
      int s, pos;
      if (h < hfull) {
        s = h / q;
        pos = h - s * q;
      } else {
        s = S - 1;
        pos = h - hfull;
      }
      sm.gz[h] = sm.stz[s * nf + pos];
      sm.gid[h] = sm.stid[s * nf + pos];
    }
    if (tid == 0) misc[kMiscCnt] = 0;
    __syncthreads();
    for (int h = tid; h < nh; h += kThreads) {
      const T zh = sm.gz[h];
      const int32_t ih = sm.gid[h];
      int rank = 0;
      for (int j = 0; j < nh; ++j) rank += better_i(sm.gz[j], sm.gid[j], zh, ih);
      if (rank == P_row - 1) {  // exactly one head (ranks are unique)
        sm.red[1].m = zh;
        misc[kMiscHeadId] = ih;
      }
    }
    __syncthreads();
    tz = sm.red[1].m;
    tix = misc[kMiscHeadId];
  } else {
    // Every full list (P_row entries) holds P_row tokens >= its last entry, so the row's P_row
    // best are all >= the largest of those last entries (ties at it all pass).
    if (tid == 0) SK_EMU_COUNT(staged ? "merge.last_entries(staged)" : "merge.last_entries(L2)");
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
    for (int off = 16; off > 0; off >>= 1) tl = fmax_(tl, __shfl_xor_sync(kFull, tl, off));
    T* wthr = reinterpret_cast<T*>(sm.hist);
    if ((tid & 31) == 0) wthr[tid >> 5] = tl;
    if (tid == 0) misc[kMiscCnt] = 0;
    __syncthreads();
    T thr = wthr[0];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) thr = fmax_(thr, wthr[w]);
    __syncthreads();  // wthr (the histogram's memory) is free again
    tz = thr;
    tix = 0x7FFFFFFF;  // above every id: entries with z == thr pass
  }
  // Survivors: every entry not worse than the threshold element, ranked below (ties all pass).
  for (int g = tid; g < N; g += kThreads) {
    T zz;
    int32_t ii;
    item(g, zz, ii);
    if (!better_i(tz, tix, zz, ii)) {
      const int p = atomicAdd(misc + kMiscCnt, 1);
      if (p < kCapA) {
        sm.gz[p] = zz;
        sm.gid[p] = ii;
      }
    }
  }
  __syncthreads();
  const int C0 = misc[kMiscCnt];
  if (tid == 0) {
    SK_EMU_COUNT(C0 <= 128 ? "merge.rank_count" : (C0 <= kCapA ? "merge.bitonic" : "merge.radix"));
  }
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
  radix_take<T>(P_row, for_items, sm.gz, sm.gid, sm.cap_g, sm.hist, misc + kMiscRadix,
                misc + kMiscWsum, to_pool);
}

// ---------------------------------------------------------------------------------------------
// Phase 3: the per-row epilogue of a soft row on one warp, for no noise, Gaussian noise (applied
// in the mixture) and Gumbel noise with k <= 32 (one lane per weighted slot). The same rules as
// finish_row (csrc/common/filters.h): n0 from a ballot, the filter cuts as the first entry whose
// rule fails (ballots), the top_p mass from a warp prefix sum, sums by warp trees (the only
// difference from the CPU: summation order). Writes the k slots (ids, weights, Gumbel g'), the
// list of nonzero-weight slots and its length. e: scratch of P_row values.
template <typename T>
SK_DEV void finish_soft_warp(const Candidate<T>* pool, int P_row, int k, int64_t V,
                             const RowStats<T>& st, const RowParams<T>& rp, const NoiseParams& np,
                             T* e, int64_t* oid, T* ow, T* on, int* nz, int* nnz_out) {
  const int lane = threadIdx.x & 31;
  // 1. e_i = exp(z_i - z_0) (e_0 = 1); n0 = 1 + the last i with e_i > 0.
  int n0 = 0;
  for (int c = 0; c < P_row; c += 32) {
    const int i = c + lane;
    T ei = T(0);
    if (i < P_row) {
      ei = finish_row_e(pool, i);
      e[i] = ei;  // each lane reads back only its own entries below
    }
    const unsigned bal = __ballot_sync(kFull, ei > T(0));
    if (bal != 0u) n0 = c + 32 - __clz(static_cast<int>(bal));
  }
  // 2. top_k.
  const int n1 = top_k_count(n0, rp, V);
  // 3. top_p: n2 = the first entry whose mass before it reaches the limit.
  int n2 = n1;
  if (rp.top_p < T(1)) {
    const T norm = top_k_on(rp, V) ? warp_sum_range(e, n1) : full_softmax_norm(st, pool[0].z);
    const T limit = rp.top_p * norm;
    T carry = T(0);
    for (int c = 0; c < n1; c += 32) {
      const int i = c + lane;
      const T v = i < n1 ? e[i] : T(0);
      const T incl = warp_inclusive_scan_t(v);
      T excl = __shfl_up_sync(kFull, incl, 1);
      if (lane == 0) excl = T(0);
      const bool drop = i < n1 && !top_p_keeps(i, carry + excl, limit);
      const unsigned bal = __ballot_sync(kFull, drop);
      if (bal != 0u) {  // uniform
        n2 = c + __ffs(static_cast<int>(bal)) - 1;
        if (lane == 0) SK_EMU_COUNT(c > 0 ? "finish.top_p_cut(chunk>0)" : "finish.top_p_cut");
        break;
      }
      carry += __shfl_sync(kFull, incl, 31);
    }
  }
  // 4. min_p: n3 = the first entry below min_p.
  int n3 = n2;
  if (rp.min_p > T(0)) {
    for (int c = 0; c < n2; c += 32) {
      const int i = c + lane;
      const bool drop = i < n2 && !min_p_keeps(e[i], rp.min_p);
      const unsigned bal = __ballot_sync(kFull, drop);
      if (bal != 0u) {  // uniform
        n3 = c + __ffs(static_cast<int>(bal)) - 1;
        if (lane == 0) SK_EMU_COUNT("finish.min_p_cut");
        break;
      }
    }
  }
  const int nk = sk_min(k, n3);  // >= 1: entry 0 passes every filter
  // 5. The first nk pool entries carry weight e_j / sum; the other slots hold the next most
  //    probable tokens with weight 0 (finish_row's slot order).
  const T sum = warp_sum_range(e, nk);
  const bool gumbel = np.kind == kNoiseGumbel;
  for (int c = 0; c < k; c += 32) {
    const int j = c + lane;
    if (j < k && !(gumbel && j < nk)) {
      oid[j] = pool[j].id;
      ow[j] = j < nk ? e[j] / sum : T(0);
      if (gumbel) on[j] = -sk_inf<T>();
    }
  }
  // 8. Gumbel (k <= 32: lane j holds weighted slot j): g' = log w + scale * clamp(g), slots
  //    re-sorted by g' (ties by pool index), w = softmax(g' / tau).
  if (gumbel) {
    const GumbelConsts<T> gc = gumbel_consts<T>(np);
    T gp = -sk_inf<T>();
    if (lane < nk) {
      gp = gumbel_key(e[lane] / sum, gumbel_noise<T>(rp.seed, rp.offset, pool[lane].id), gc);
    }
    T top = gp;
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) top = fmax_(top, __shfl_xor_sync(kFull, top, off));
    int rank = 0;
    for (int i = 0; i < nk; ++i) {  // uniform bound
      const T gi = __shfl_sync(kFull, gp, i);
      rank += (gi > gp || (gi == gp && i < lane)) ? 1 : 0;
    }
    const T wg = lane < nk ? gumbel_weight(gp, top, gc) : T(0);
    const T sum2 = warp_sum_bcast(wg);
    if (lane < nk) {
      oid[rank] = pool[lane].id;
      ow[rank] = wg / sum2;
      on[rank] = gp;
    }
  }
  __syncwarp();  // ow[] of every slot written
  // Slots with w != 0, in slot order (the CPU kernel skips exactly the zero weights).
  int cnt = 0;
  for (int c = 0; c < k; c += 32) {
    const int j = c + lane;
    const bool nzj = j < k && ow[j] != T(0);
    const unsigned bal = __ballot_sync(kFull, nzj);
    if (nzj) nz[cnt + __popc(bal & ((1u << lane) - 1u))] = j;
    cnt += __popc(bal);
  }
  if (lane == 0) *nnz_out = cnt;
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
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int S = a.S, k = a.k;
  const bool gumbel = a.np.kind == kNoiseGumbel;
  const bool has_noise = noise_has_slots(a.np.kind);
  const bool is_hard = a.hard != nullptr && a.hard[b];
  const int64_t hard_id = (is_hard && a.hard_ids != nullptr) ? a.hard_ids[b] : -1;  // -1: argmax
  int* misc = sm.misc;
  const MergeShape ms = merge_shape(a, P_row);

  if (warp == 0) {
    // Row statistics: the slices' partial states merged in a fixed tree over the slice index
    // (lane l folds slices l, l + 32, ... in order, then a shuffle tree), so the result depends on
    // V only. The status follows the CPU kernel's rules and precedence.
    RowStats<T> st = stats_empty<T>();
    int nonfinite = 0;
    if (params_ok) {  // uniform; the workspace of a refused row was never written
      const PartialStats<T>* ps = static_cast<const PartialStats<T>*>(a.ws_stats) + b * S;
      for (int s = lane; s < S; s += 32) {
        const RowStats<T> x{__ldcg(&ps[s].m), __ldcg(&ps[s].s), __ldcg(&ps[s].a)};
        nonfinite |= __ldcg(&ps[s].flag);
        st = stats_merge(st, x);
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const RowStats<T> o{__shfl_down_sync(kFull, st.m, off), __shfl_down_sync(kFull, st.s, off),
                          __shfl_down_sync(kFull, st.a, off)};
      st = stats_merge(st, o);
    }
    nonfinite = __any_sync(kFull, nonfinite);
    if (lane == 0) {
      int flag = params_ok ? kStatusOk : kStatusBadParam;
      if (flag == kStatusOk && nonfinite) flag = kStatusNonFinite;
      if (flag == kStatusOk && st.s == T(0)) flag = kStatusAllMasked;
      if (flag == kStatusOk && is_hard && a.hard_ids != nullptr &&
          (hard_id < 0 || hard_id >= a.V)) {
        flag = kStatusBadHardId;
      }
      misc[kMiscFlag] = flag;
      misc[kMiscN0] = 0;
      sm.red[0] = st;
    }
  } else if (params_ok) {
    // Meanwhile the other warps bring the slices' lists into shared memory (a flagged row's
    // lists may be partly unwritten; they are copied, never used).
    const int t = tid - 32;
    if (S == 1) {
      const T* wz = static_cast<const T*>(a.ws_z) + b * a.pool;
      const int32_t* wi = a.ws_id + b * a.pool;
      for (int i = t; i < P_row; i += kThreads - 32) {
        sm.pool[i] = Candidate<T>{__ldcg(wz + i), static_cast<int64_t>(__ldcg(wi + i))};
      }
    } else if (ms.staged) {
      const T* wz = static_cast<const T*>(a.ws_z) + b * S * a.pool;
      const int32_t* wi = a.ws_id + b * S * a.pool;
      for (int g = t; g < ms.N; g += kThreads - 32) {
        const int64_t o = merge_gidx(a, ms, g);
        sm.stz[g] = __ldcg(wz + o);
        sm.stid[g] = __ldcg(wi + o);
      }
    }
  }
  __syncthreads();
  const int flag = misc[kMiscFlag];
  const RowStats<T> st = sm.red[0];
  int64_t* out_ids = a.ids + b * k;
  T* out_w = static_cast<T*>(a.weights) + b * k;
  T* out_noise = has_noise ? static_cast<T*>(a.noise) + b * k : nullptr;

  if (flag != kStatusOk) {  // uniform
    if (tid == 0) SK_EMU_COUNT("epi.flagged");
    for (int j = tid; j < k; j += kThreads) {
      out_ids[j] = 0;
      out_w[j] = sk_nan<T>();
      if (has_noise) out_noise[j] = sk_nan<T>();
    }
    if (tid == 0) {
      a.status[b] = flag;
      static_cast<T*>(a.entropy)[b] = sk_nan<T>();
      static_cast<T*>(a.max_prob)[b] = sk_nan<T>();
    }
    dispatch_tag(a.emb_tag, [&](auto* tag) {
      using E = std::remove_pointer_t<decltype(tag)>;
      fill_nan_row<E>(a, b);
    });
    return;
  }

  if (S > 1) merge_pool<T>(a, b, P_row, ms, sm);  // ends with a barrier
  const bool dirichlet = noise_redraws_support(a.np.kind);
  // The mixture will read the rows of (a subset of) the first k pool tokens: start bringing them
  // into L2 now, while the filters run.
  if (!is_hard && !dirichlet && warp == kWarps - 1) {
    const int npf = sk_min(sk_min(k, P_row), kPrefetchRows);
    if (lane < npf) {
      const int esz = emb_elem_size(a.emb_tag);
      prefetch_l2(static_cast<const char*>(a.emb) + sm.pool[lane].id * a.emb_stride * esz,
                  static_cast<uint32_t>(a.D * esz));
    }
  }

  // The warp epilogue knows no noise, Gaussian (on the embedding) and Gumbel with k <= 32; the
  // other kinds run finish_row on one thread.
  const bool warp_kind = a.np.kind == kNoiseNone || a.np.kind == kNoiseGaussian || gumbel;
  // keep_ties (one value per call) extends the cuts: finish_row's loops, not the warp ballots;
  // so do row parameters the warp epilogue does not apply (warp_epilogue_ok).
  const bool warp_path = !is_hard && warp_kind && !rp.keep_ties && rp.warp_epilogue_ok() &&
                         (!gumbel || k <= 32);
  if (tid == 0) {
    SK_EMU_COUNT(is_hard     ? "epi.hard"
                 : warp_path ? (gumbel ? "epi.warp_gumbel" : "epi.warp")
                             : "epi.thread0");
    if (!is_hard && k > 32) SK_EMU_COUNT("epi.k>32");
    if (P_row > 32) SK_EMU_COUNT("epi.pool>32");
  }
  if (warp_path) {
    if (warp == 0) {
      finish_soft_warp<T>(sm.pool, P_row, k, a.V, st, rp, a.np, sm.e, sm.oid, sm.ow, sm.on, sm.nz,
                          misc + kMiscNnz);
      if (lane == 0) {
        static_cast<T*>(a.entropy)[b] = stats_entropy(st);
        static_cast<T*>(a.max_prob)[b] = stats_max_prob(st);
        a.status[b] = kStatusOk;
      }
    }
  } else {
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
        finish_hard_row(sm.pool, P_row, k, hard_id, a.np.kind, sm.oid, sm.ow, sm.on);
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
  }
  __syncthreads();
  for (int j = tid; j < k; j += kThreads) {
    out_ids[j] = sm.oid[j];
    out_w[j] = sm.ow[j];
    if (has_noise) out_noise[j] = sm.on[j];
  }
  const int nnz = misc[kMiscNnz];
  dispatch_tag(a.emb_tag, [&](auto* tag) {
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
  constexpr int CPT = kEPT / Vec<scalar_t>::N;
  SK_DYN_SMEM(sk_smem);
  // B * S < 2^31 (checked by the launcher): 32-bit arithmetic.
  const unsigned nS = static_cast<unsigned>(a.S);
  const unsigned bu = blockIdx.x / nS;
  const int64_t b = static_cast<int64_t>(bu);
  const int s = static_cast<int>(blockIdx.x - bu * nS);
  const int64_t lo = static_cast<int64_t>(s) * a.L;
  const int Ls = static_cast<int>(a.V - lo < a.L ? a.V - lo : a.L);
  const scalar_t* xs = static_cast<const scalar_t*>(a.logits) + b * a.logits_stride + lo;
  const bool fast = Ls == kSlice && aligned16(xs);  // uniform
  uint4 raw[CPT];
  // In flight while the row's parameters are read. (fp64 logits spill here as much as when
  // loading after them, as before: that path serves tests and gradcheck, not speed.)
  if (fast) load_raw<scalar_t>(xs, raw);

  const RowParams<T> rp = a.rs.row<T>(b);
  const int64_t prow =
      row_pool_size(a.V, a.k, rp.top_k, noise_redraws_support(a.np.kind), rp.keep_ties);
  // Per-row tensors are checked here (validate=False must not trust them); a pool larger than the
  // workspace is refused too (only reachable by calling the raw op with an inconsistent pool).
  const bool params_ok =
      (!a.rs.any_rows() || row_params_ok(rp, a.V, static_cast<int64_t>(a.k), a.np.kind,
                                         static_cast<int64_t>(a.pool))) &&
      prow <= a.pool;
  const int P_row = params_ok ? static_cast<int>(prow) : 0;

  if (params_ok) {  // uniform over the block
    const int Ps = P_row < Ls ? P_row : Ls;
    scan_slice<scalar_t, T>(a, b, s, Ls, rp.inv_temp, Ps, xs, fast, raw, sk_smem);
  }

  int* misc = reinterpret_cast<int*>(
      sk_smem + fwd_smem_layout(a.pool, a.k, sizeof(T), a.stage_cap).misc);
  if (a.S > 1) {
    // Publish this slice, take a ticket; the row's last block runs the epilogue. The barrier
    // orders the block's workspace writes before thread 0's release fence and ticket; the last
    // block's thread 0 acquires before the barrier that lets its threads read the workspace.
    __syncthreads();
    if (threadIdx.x == 0) {
      fence_acq_rel_gpu();
      const unsigned prev = atomicAdd(a.counters + b, 1u);
      const int last = prev == nS - 1u ? 1 : 0;
      if (last) fence_acq_rel_gpu();
      misc[kMiscLast] = last;
    }
    __syncthreads();
    if (misc[kMiscLast] == 0) return;
  } else {
    __syncthreads();
  }
  epilogue<T>(a, b, rp, params_ok, P_row, sk_smem);
}

#ifndef SK_EMU
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
#endif

}  // namespace softkernels::cuda
