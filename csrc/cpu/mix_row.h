// The embedding mixture of one row on the CPU, shared by soft_embed (csrc/cpu/soft_embed_cpu.cpp)
// and mix_embeddings (csrc/cpu/mix_cpu.cpp): out = sum_j w_j E[id_j] (+ sigma * N(0, I)).
//
// Both ops must produce bitwise the same row from the same ids, weights and noise key (a training
// forward rebuilds the rollout's soft inputs with mix_embeddings), so there is one definition. It
// is a noinline template with external linkage: every translation unit that instantiates it emits
// the same weak symbol and the linker keeps one copy, so the two ops run literally the same
// machine code (no per-call-site inlining that could contract or reorder the float operations
// differently).
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/philox.h"
#include "cpu/vec_utils.h"

namespace softkernels::cpu {

// Accumulation: fp32 (fp64 for fp64 tables); slots in order j = 0..k-1, skipping exactly the
// slots whose weight is 0 (their rows are not read), one fused multiply-add per element and slot;
// then the Gaussian term sigma * n_d added per element (when `gaussian`), then one rounding to the
// table's dtype. acc64 / acc32 are caller-owned scratch buffers (reused across rows).
template <typename emb_t, typename T>
[[gnu::noinline]] void mix_row(const emb_t* E, int64_t emb_stride, int64_t D, const int64_t* ids,
                               const T* w, int64_t k, bool gaussian, double sigma, int64_t seed,
                               int64_t offset, emb_t* out, std::vector<double>& acc64,
                               std::vector<float>& acc32) {
  using macc_t = std::conditional_t<std::is_same_v<emb_t, double>, double, float>;
  macc_t* acc;
  if constexpr (std::is_same_v<macc_t, double>) {
    acc64.assign(D, 0.0);
    acc = acc64.data();
  } else {
    acc32.assign(D, 0.f);
    acc = acc32.data();
  }
  for (int64_t j = 0; j < k; ++j) {
    if (!(w[j] != T(0))) continue;
    const emb_t* row = E + ids[j] * emb_stride;
    const macc_t wj = static_cast<macc_t>(w[j]);
    int64_t d = 0;
    if constexpr (std::is_same_v<macc_t, float>) {
      constexpr int64_t W = FVec::size();
      const FVec vw(wj);
      for (; d + 2 * W <= D; d += 2 * W) {
        FVec lo, hi;
        load2(row + d, lo, hi);
        at::vec::fmadd(vw, lo, FVec::loadu(acc + d)).store(acc + d);
        at::vec::fmadd(vw, hi, FVec::loadu(acc + d + W)).store(acc + d + W);
      }
    }
    for (; d < D; ++d) acc[d] += wj * static_cast<macc_t>(row[d]);
  }
  if (gaussian) {
    const macc_t s = static_cast<macc_t>(sigma);
    for (int64_t q = 0; q * 4 < D; ++q) {
      macc_t n[4];
      gaussian_noise4<macc_t>(seed, offset, q, n);
      for (int64_t r = 0; r < 4 && q * 4 + r < D; ++r) acc[q * 4 + r] += s * n[r];
    }
  }
  for (int64_t d = 0; d < D; ++d) out[d] = static_cast<emb_t>(acc[d]);
}

}  // namespace softkernels::cpu
