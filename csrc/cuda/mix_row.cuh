// The embedding mixture of one row on the GPU, shared by soft_embed's forward
// (soft_embed_fwd.cuh) and mix_embeddings (mix.cu): out = sum_j w_j E[id_j] (+ sigma N(0, I)).
// A training forward rebuilds a rollout's soft inputs with mix_embeddings and must get bitwise
// the rows soft_embed fed, so both kernels call this one function (same operations, same order).
#pragma once

#include <cstdint>

#include "common/philox.h"
#include "cuda/cuda_common.cuh"
#include "cuda/soft_embed_fwd.h"

namespace softkernels::cuda {

SK_DEV float fma_acc(float a, float b, float c) { return fmaf(a, b, c); }
SK_DEV double fma_acc(double a, double b, double c) { return fma(a, b, c); }

// acc[0..VE) += sigma * n_d for the elements d0..d0+VE-1 (the same Philox draws as the CPU).
template <typename M, int VE>
SK_DEV void add_gaussian(M* acc, int64_t d0, M sigma, int64_t seed, int64_t offset) {
  if constexpr (VE >= 4) {
#pragma unroll
    for (int g = 0; g < VE; g += 4) {
      M n[4];
      gaussian_noise4<M>(seed, offset, (d0 + g) >> 2, n);
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[g + r] += sigma * n[r];
    }
  } else {
    static_assert(VE == 2);
    M n[4];
    gaussian_noise4<M>(seed, offset, d0 >> 2, n);
    if ((d0 & 3) == 0) {
      acc[0] += sigma * n[0];
      acc[1] += sigma * n[1];
    } else {
      acc[0] += sigma * n[2];
      acc[1] += sigma * n[3];
    }
  }
}

constexpr int kMixBatch = 6;

// out = sum_j w_j E[id_j] (+ sigma N(0, I)), fp32 accumulation (fp64 for fp64 tables), one FMA
// per element and slot in slot order like the CPU kernel, then the Gaussian term, then one
// rounding. The whole block (kThreads threads) mixes one row: table [.., D] with row stride es, the slots
// listed in nz[0..nnz) (ascending slot order, exactly the slots with w != 0), output row `out`.
template <typename E, typename T>
SK_DEV void mix_row(const E* table, int64_t es, int64_t D, E* out, const int64_t* ids, const T* w,
                    const int* nz, int nnz, bool gauss, double sigma_in, int64_t seed,
                    int64_t offset) {
  using M = acc_t<E>;
  constexpr int VE = Vec<E>::N;
  const int tid = threadIdx.x;
  const M sigma = static_cast<M>(sigma_in);
  const bool vec_ok = (D % VE) == 0 && aligned16(table) &&
                      ((es * static_cast<int64_t>(sizeof(E))) % 16) == 0 && aligned16(out);
  if (vec_ok) {
    const int64_t nch = D / VE;
    for (int64_t c = tid; c < nch; c += kThreads) {
      M acc[VE];
#pragma unroll
      for (int e = 0; e < VE; ++e) acc[e] = M(0);
      for (int j0 = 0; j0 < nnz; j0 += kMixBatch) {
        uint4 raw[kMixBatch];
        M wv[kMixBatch];
#pragma unroll
        for (int u = 0; u < kMixBatch; ++u) {  // kMixBatch independent loads in flight
          raw[u] = make_uint4(0u, 0u, 0u, 0u);
          wv[u] = M(0);
          if (j0 + u < nnz) {
            const int slot = nz[j0 + u];
            wv[u] = static_cast<M>(w[slot]);
            raw[u] = __ldg(reinterpret_cast<const uint4*>(table + ids[slot] * es + c * VE));
          }
        }
#pragma unroll
        for (int u = 0; u < kMixBatch; ++u) {
          if (j0 + u < nnz) {
            M v[VE];
            unpack16<E>(raw[u], v);
#pragma unroll
            for (int e = 0; e < VE; ++e) acc[e] = fma_acc(wv[u], v[e], acc[e]);
          }
        }
      }
      if (gauss) add_gaussian<M, VE>(acc, c * VE, sigma, seed, offset);
      *reinterpret_cast<uint4*>(out + c * VE) = pack16<E>(acc);
    }
  } else {
    for (int64_t d = tid; d < D; d += kThreads) {
      M acc = M(0);
      for (int j = 0; j < nnz; ++j) {
        const int slot = nz[j];
        acc = fma_acc(static_cast<M>(w[slot]), load_scalar<E>(table + ids[slot] * es + d), acc);
      }
      if (gauss) acc += sigma * gaussian_noise<M>(seed, offset, d);
      store_scalar<E>(out + d, acc);
    }
  }
}

}  // namespace softkernels::cuda
