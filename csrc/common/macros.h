// Shared definitions for the per-row logic used by both the CPU and the CUDA kernels.
// Everything under csrc/common/ compiles as host code (the CPU kernels, tested in CI) and as
// device code (the CUDA kernels), so the GPU runs exactly the logic the CPU tests exercise.
#pragma once

#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define SK_HD __host__ __device__ __forceinline__
#define SK_DEVICE_CODE 1
#else
#define SK_HD inline
#endif

namespace softkernels {

// Widest mixture and largest candidate pool a row may need. The pool holds the P most likely
// tokens of a row; every filter runs inside it (see docs/semantics.md, "Candidate pool").
constexpr int kMaxK = 1024;
constexpr int kMaxPool = 1024;

// Noise constants the kernels can use in float32 without overflow or division by zero: Gumbel's
// tau at least the smallest normal float32 (1 / tau stays finite), Dirichlet's alpha at least
// 1e-30 (the Gamma draws of the row's most likely token stay finite: its shape is >= alpha / 1024),
// and every noise constant at most 1e30.
constexpr double kMinTau = 1.1754943508222875e-38;
constexpr double kMinAlpha = 1e-30;
constexpr double kMaxNoiseParam = 1e30;

// Exported to Python as softkernels._C.NOISE_* (csrc/ops.cpp).
enum NoiseKind : int { kNoiseNone = 0, kNoiseGumbel = 1, kNoiseDirichlet = 2, kNoiseGaussian = 3 };

// Per-row status bits written by soft_embed; the Python wrapper turns them into ValueErrors when
// validate=True. A flagged row's float outputs are NaN so that validate=False never hides it.
enum RowStatus : int {
  kStatusOk = 0,
  kStatusNonFinite = 1,   // NaN or +inf among the logits
  kStatusAllMasked = 2,   // every logit is -inf
  kStatusBadParam = 4,    // a per-row parameter (tensor) is out of range
  kStatusBadHardId = 8,   // hard_ids[b] outside [0, V)
};

// Philox stream tags: each noise kind draws from its own counter space.
enum StreamTag : uint32_t { kTagGumbel = 1, kTagDirichlet = 2, kTagGaussian = 3 };

template <typename T>
SK_HD T sk_min(T a, T b) { return a < b ? a : b; }
template <typename T>
SK_HD T sk_max(T a, T b) { return a > b ? a : b; }

}  // namespace softkernels
