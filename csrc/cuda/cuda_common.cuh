// Device helpers shared by the CUDA kernels: dtype conversion of 16-byte vectors, order-preserving
// integer keys of floats, warp / block reductions and scans, and the block-wide selection
// primitives (radix select, bitonic sort) the soft_embed forward builds on. The per-row semantics
// (statistics merge, filters, noise) stay in csrc/common/ and are shared with the CPU kernels.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/macros.h"
#include "common/math.h"
#include "common/row_state.h"
#include "cuda/launch.h"

namespace softkernels::cuda {

#define SK_DEV __device__ __forceinline__
// Path coverage counters of the CPU emulation (tools/cuda_emu); nothing on real builds.
#ifndef SK_EMU_COUNT
#define SK_EMU_COUNT(name) ((void)0)
#endif

constexpr int kWarp = 32;

// Order-preserving unsigned key of a float / double (-0 is folded onto +0 so that key order and
// float order agree exactly on every non-NaN value; NaN never reaches a selection).
template <typename T>
using key_t = std::conditional_t<std::is_same_v<T, double>, uint64_t, uint32_t>;

SK_DEV uint32_t order_key(float z) {
  if (z == 0.f) z = 0.f;
  const uint32_t u = __float_as_uint(z);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
SK_DEV uint64_t order_key(double z) {
  if (z == 0.0) z = 0.0;
  const uint64_t u = static_cast<uint64_t>(__double_as_longlong(z));
  return (u & 0x8000000000000000ull) ? ~u : (u | 0x8000000000000000ull);
}

// Inverse of order_key (exact; -0 comes back as +0, which compares equal).
SK_DEV float key_value(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7FFFFFFFu) : ~k);
}
SK_DEV double key_value(uint64_t k) {
  return __longlong_as_double(static_cast<long long>(
      (k & 0x8000000000000000ull) ? (k & 0x7FFFFFFFFFFFFFFFull) : ~k));
}

// 2^x for the per-element softmax statistics: the SFU instruction for float (relative error
// ~2^-22, results below 2^-126 flushed to 0: terms that small do not move an fp32 sum); exact
// libm for double.
SK_DEV float stats_exp2(float x) {
#ifdef SK_EMU  // CPU emulation (tools/cuda_emu)
  return emu_ex2_approx_ftz(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}
SK_DEV double stats_exp2(double x) { return ::exp2(x); }
template <typename T>
SK_DEV T log2e() { return static_cast<T>(1.4426950408889634073599246810019); }
template <typename T>
SK_DEV T ln2() { return static_cast<T>(0.69314718055994530941723212145818); }
SK_DEV float fmax_(float a, float b) { return fmaxf(a, b); }
SK_DEV double fmax_(double a, double b) { return fmax(a, b); }
SK_DEV float fmin_(float a, float b) { return fminf(a, b); }
SK_DEV double fmin_(double a, double b) { return fmin(a, b); }
SK_DEV float fma_(float a, float b, float c) { return fmaf(a, b, c); }
SK_DEV double fma_(double a, double b, double c) { return fma(a, b, c); }

template <typename T>
SK_DEV T mul_rn(T a, T b);
template <>
SK_DEV float mul_rn<float>(float a, float b) { return __fmul_rn(a, b); }
template <>
SK_DEV double mul_rn<double>(double a, double b) { return __dmul_rn(a, b); }

// ---- scalar conversions ---------------------------------------------------------------------
template <typename S>
SK_DEV acc_t<S> load_scalar(const S* p);
template <>
SK_DEV float load_scalar<float>(const float* p) { return *p; }
template <>
SK_DEV double load_scalar<double>(const double* p) { return *p; }
template <>
SK_DEV float load_scalar<c10::BFloat16>(const c10::BFloat16* p) {
  return __uint_as_float(static_cast<uint32_t>(reinterpret_cast<const uint16_t*>(p)[0]) << 16);
}
template <>
SK_DEV float load_scalar<c10::Half>(const c10::Half* p) {
  return __half2float(__ushort_as_half(reinterpret_cast<const uint16_t*>(p)[0]));
}

template <typename S>
SK_DEV void store_scalar(S* p, acc_t<S> v);
template <>
SK_DEV void store_scalar<float>(float* p, float v) { *p = v; }
template <>
SK_DEV void store_scalar<double>(double* p, double v) { *p = v; }
template <>
SK_DEV void store_scalar<c10::BFloat16>(c10::BFloat16* p, float v) {
  reinterpret_cast<uint16_t*>(p)[0] = __bfloat16_as_ushort(__float2bfloat16_rn(v));
}
template <>
SK_DEV void store_scalar<c10::Half>(c10::Half* p, float v) {
  reinterpret_cast<uint16_t*>(p)[0] = __half_as_ushort(__float2half_rn(v));
}

// ---- 16-byte vectors ------------------------------------------------------------------------
template <typename S>
struct Vec {
  static constexpr int N = 16 / static_cast<int>(sizeof(S));
};

SK_DEV float bf16_lo(uint32_t w) { return __uint_as_float(w << 16); }
SK_DEV float bf16_hi(uint32_t w) { return __uint_as_float(w & 0xFFFF0000u); }
SK_DEV float f16_lo(uint32_t w) { return __half2float(__ushort_as_half(static_cast<unsigned short>(w & 0xFFFFu))); }
SK_DEV float f16_hi(uint32_t w) { return __half2float(__ushort_as_half(static_cast<unsigned short>(w >> 16))); }

// Unpacks one 16-byte vector of S into Vec<S>::N values of acc_t<S> (exact conversions).
template <typename S>
SK_DEV void unpack16(const uint4& r, acc_t<S>* out) {
  if constexpr (std::is_same_v<S, float>) {
    out[0] = __uint_as_float(r.x);
    out[1] = __uint_as_float(r.y);
    out[2] = __uint_as_float(r.z);
    out[3] = __uint_as_float(r.w);
  } else if constexpr (std::is_same_v<S, double>) {
    out[0] = __hiloint2double(static_cast<int>(r.y), static_cast<int>(r.x));
    out[1] = __hiloint2double(static_cast<int>(r.w), static_cast<int>(r.z));
  } else if constexpr (std::is_same_v<S, c10::BFloat16>) {
    out[0] = bf16_lo(r.x); out[1] = bf16_hi(r.x);
    out[2] = bf16_lo(r.y); out[3] = bf16_hi(r.y);
    out[4] = bf16_lo(r.z); out[5] = bf16_hi(r.z);
    out[6] = bf16_lo(r.w); out[7] = bf16_hi(r.w);
  } else {
    static_assert(std::is_same_v<S, c10::Half>);
    out[0] = f16_lo(r.x); out[1] = f16_hi(r.x);
    out[2] = f16_lo(r.y); out[3] = f16_hi(r.y);
    out[4] = f16_lo(r.z); out[5] = f16_hi(r.z);
    out[6] = f16_lo(r.w); out[7] = f16_hi(r.w);
  }
}

SK_DEV uint32_t pack_bf16x2(float lo, float hi) {
  return static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(lo))) |
         (static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(hi))) << 16);
}
SK_DEV uint32_t pack_f16x2(float lo, float hi) {
  return static_cast<uint32_t>(__half_as_ushort(__float2half_rn(lo))) |
         (static_cast<uint32_t>(__half_as_ushort(__float2half_rn(hi))) << 16);
}

// Rounds Vec<S>::N accumulators to S (round to nearest even) and packs them.
template <typename S>
SK_DEV uint4 pack16(const acc_t<S>* v) {
  uint4 r;
  if constexpr (std::is_same_v<S, float>) {
    r.x = __float_as_uint(v[0]);
    r.y = __float_as_uint(v[1]);
    r.z = __float_as_uint(v[2]);
    r.w = __float_as_uint(v[3]);
  } else if constexpr (std::is_same_v<S, double>) {
    r.x = static_cast<uint32_t>(__double2loint(v[0]));
    r.y = static_cast<uint32_t>(__double2hiint(v[0]));
    r.z = static_cast<uint32_t>(__double2loint(v[1]));
    r.w = static_cast<uint32_t>(__double2hiint(v[1]));
  } else if constexpr (std::is_same_v<S, c10::BFloat16>) {
    r.x = pack_bf16x2(v[0], v[1]);
    r.y = pack_bf16x2(v[2], v[3]);
    r.z = pack_bf16x2(v[4], v[5]);
    r.w = pack_bf16x2(v[6], v[7]);
  } else {
    static_assert(std::is_same_v<S, c10::Half>);
    r.x = pack_f16x2(v[0], v[1]);
    r.y = pack_f16x2(v[2], v[3]);
    r.z = pack_f16x2(v[4], v[5]);
    r.w = pack_f16x2(v[6], v[7]);
  }
  return r;
}

SK_DEV bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// ---- warp / block primitives (blockDim.x is a multiple of 32 everywhere) ---------------------
SK_DEV int warp_inclusive_scan(int v) {
  const int lane = threadIdx.x & (kWarp - 1);
#pragma unroll
  for (int off = 1; off < kWarp; off <<= 1) {
    const int n = __shfl_up_sync(0xFFFFFFFFu, v, off);
    if (lane >= off) v += n;
  }
  return v;
}

// Exclusive prefix sum of one int per thread over the block, in thread order (deterministic).
// `wsum` holds one int per warp. Every thread of the block must call it.
SK_DEV int block_exclusive_scan(int v, int* wsum, int& total) {
  const int lane = threadIdx.x & (kWarp - 1), warp = threadIdx.x / kWarp;
  const int nwarps = blockDim.x / kWarp;
  const int incl = warp_inclusive_scan(v);
  __syncthreads();  // wsum may still be read from a previous call
  if (lane == kWarp - 1) wsum[warp] = incl;
  __syncthreads();
  int base = 0, tot = 0;
  for (int w = 0; w < nwarps; ++w) {
    const int x = wsum[w];
    if (w < warp) base += x;
    tot += x;
  }
  total = tot;
  return base + incl - v;
}

// Adds 1 to hist[digit] for every active lane, one shared atomic per distinct digit in the warp.
// All 32 lanes of the warp must call it together.
SK_DEV void warp_hist_add(int* hist, unsigned digit, bool active) {
  const unsigned d = active ? digit : 0x100u;
  const unsigned peers = __match_any_sync(0xFFFFFFFFu, d);
  const int leader = __ffs(static_cast<int>(peers)) - 1;
  if (active && (threadIdx.x & (kWarp - 1)) == leader) atomicAdd(&hist[d], __popc(peers));
}

template <typename T>
SK_DEV bool cand_better(T za, int32_t ia, T zb, int32_t ib) {
  return better(Candidate<T>{za, ia}, Candidate<T>{zb, ib});
}

// cand_better as 0 / 1 without branches (both loads unconditional), for rank counting.
template <typename T>
SK_DEV int better_i(T za, int32_t ia, T zb, int32_t ib) {
  return static_cast<int>(za > zb) | (static_cast<int>(za == zb) & static_cast<int>(ia < ib));
}

// ---- radix select ------------------------------------------------------------------------------
// Selects exactly `needed` items of a block-distributed set under the order of `better` (larger z
// first, equal z by lower id) without sorting: passes over the bytes of (key(z), ~id), most
// significant first, each counting the items that still match the prefix. The result describes
// the selected set: an item is in it iff radix_selected() holds. Requires 1 <= needed <= number
// of active items; ids distinct.
template <typename KeyT>
struct RadixSel {
  KeyT kprefix, kmask;
  uint32_t iprefix, imask;
};

template <typename KeyT>
SK_DEV bool radix_matches(const RadixSel<KeyT>& r, KeyT key, uint32_t inv) {
  return (key & r.kmask) == r.kprefix && (inv & r.imask) == r.iprefix;
}

template <typename KeyT>
SK_DEV bool radix_selected(const RadixSel<KeyT>& r, KeyT key, uint32_t inv) {
  const KeyT kk = key & r.kmask;
  if (kk != r.kprefix) return kk > r.kprefix;
  return (inv & r.imask) >= r.iprefix;
}

SK_DEV uint32_t inv_id(int32_t id) { return 0xFFFFFFFFu - static_cast<uint32_t>(id); }

// for_items(fn) must call fn(KeyT key, int32_t id, bool active) for each of the calling thread's
// items, with the same number of calls in every lane of a warp (inactive padding allowed).
// hist: 256 ints; bc: 3 ints. Every thread of the block must call it.
template <typename T, typename ForItems>
SK_DEV RadixSel<key_t<T>> radix_select(int needed, ForItems&& for_items, int* hist, int* bc) {
  using KeyT = key_t<T>;
  constexpr int KB = static_cast<int>(sizeof(KeyT));
  RadixSel<KeyT> r{0, 0, 0u, 0u};
  for (int pass = 0; pass < KB + 4; ++pass) {
    for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0;
    __syncthreads();
    const bool on_key = pass < KB;
    const int shift = on_key ? 8 * (KB - 1 - pass) : 8 * (3 - (pass - KB));
    for_items([&](KeyT key, int32_t id, bool active) {
      const uint32_t inv = inv_id(id);
      const bool m = active && radix_matches(r, key, inv);
      const unsigned d = on_key ? static_cast<unsigned>((key >> shift) & 0xFFu)
                                : ((inv >> shift) & 0xFFu);
      warp_hist_add(hist, d, m);
    });
    __syncthreads();
    if (threadIdx.x < kWarp) {
      // Bins in descending order: lane l owns bins 255 - 8l - q, q = 0..7.
      const int lane = threadIdx.x;
      int c[8];
      int sum = 0;
#pragma unroll
      for (int q = 0; q < 8; ++q) {
        c[q] = hist[255 - 8 * lane - q];
        sum += c[q];
      }
      const int incl = warp_inclusive_scan(sum);
      const int excl = incl - sum;
      if (excl < needed && needed <= incl) {
        int run = excl;
#pragma unroll
        for (int q = 0; q < 8; ++q) {
          if (run < needed && needed <= run + c[q]) {
            bc[0] = 255 - 8 * lane - q;
            bc[1] = run;
            bc[2] = c[q];
          }
          run += c[q];
        }
      }
    }
    __syncthreads();
    const unsigned d = static_cast<unsigned>(bc[0]);
    const int above = bc[1], count = bc[2];
    needed -= above;
    if (on_key) {
      r.kprefix |= static_cast<KeyT>(d) << shift;
      r.kmask |= static_cast<KeyT>(0xFFu) << shift;
    } else {
      r.iprefix |= d << shift;
      r.imask |= 0xFFu << shift;
    }
    if (count == needed) break;  // every item with this prefix is in: done (uniform)
  }
  __syncthreads();  // bc / hist are reused by the caller
  return r;
}

// ---- sorting of a small candidate set in shared memory --------------------------------------
// Sorts z/id[0, n) by `better` and hands the first `take` to out(rank, z, id). Small sets use
// rank counting (no barriers); larger ones a bitonic network over next_pow2(n) <= cap entries
// (z/id must have room for cap). Every thread of the block must call it.
template <typename T, typename Out>
SK_DEV void sort_take(T* z, int32_t* id, int n, int take, int cap, Out&& out) {
  if (n <= 128) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      const T zi = z[i];
      const int32_t ii = id[i];
      int rank = 0;
      for (int j = 0; j < n; ++j) rank += better_i(z[j], id[j], zi, ii);
      if (rank < take) out(rank, zi, ii);
    }
    __syncthreads();
    return;
  }
  int m = 1;
  while (m < n) m <<= 1;
  if (m > cap) m = cap;  // never happens when callers size cap = next_pow2(max n)
  for (int i = n + threadIdx.x; i < m; i += blockDim.x) {
    z[i] = -sk_inf<T>();
    id[i] = 0x7FFFFFFF;  // after every real entry, -inf ones included
  }
  __syncthreads();
  for (int size = 2; size <= m; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = threadIdx.x; i < (m >> 1); i += blockDim.x) {
        const int lo = 2 * i - (i & (stride - 1));
        const int hi = lo + stride;
        const bool first_half = (lo & size) == 0;
        const T zl = z[lo], zh = z[hi];
        const int32_t il = id[lo], ih = id[hi];
        const bool swap = first_half ? cand_better(zh, ih, zl, il) : cand_better(zl, il, zh, ih);
        if (swap) {
          z[lo] = zh;
          z[hi] = zl;
          id[lo] = ih;
          id[hi] = il;
        }
      }
      __syncthreads();
    }
  }
  const int t = take < n ? take : n;
  for (int i = threadIdx.x; i < t; i += blockDim.x) out(i, z[i], id[i]);
  __syncthreads();
}

// Radix-selects the `take` best items of for_items (radix_select's contract), gathers them into
// z / id (room for cap >= next_pow2(selected), as sort_take wants) and hands them to out in
// order (sort_take). hist: 256 ints; bc: 3 ints; wsum: block_exclusive_scan's scratch. Every
// thread of the block must call it.
template <typename T, typename ForItems, typename Out>
SK_DEV void radix_take(int take, ForItems&& for_items, T* z, int32_t* id, int cap, int* hist,
                       int* bc, int* wsum, Out&& out) {
  using KeyT = key_t<T>;
  const RadixSel<KeyT> r = radix_select<T>(take, for_items, hist, bc);
  int cnt = 0;
  for_items([&](KeyT kk, int32_t ii, bool act) {
    if (act && radix_selected(r, kk, inv_id(ii))) ++cnt;
  });
  int C = 0;
  int n = block_exclusive_scan(cnt, wsum, C);
  for_items([&](KeyT kk, int32_t ii, bool act) {
    if (act && radix_selected(r, kk, inv_id(ii)) && n < cap) {
      z[n] = key_value(kk);
      id[n] = ii;
      ++n;
    }
  });
  __syncthreads();
  sort_take(z, id, C < cap ? C : cap, take, cap, out);
}

}  // namespace softkernels::cuda
