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
enum NoiseKind : int {
  kNoiseNone = 0,
  kNoiseGumbel = 1,
  kNoiseDirichlet = 2,
  kNoiseGaussian = 3,
  kNoiseTopKDirichlet = 4,   // SofT-GRPO "-dir": Gamma(alpha * w) on the k slots after top-k
  kNoiseWeightGaussian = 5,  // SofT-GRPO default: N(w, sigma^2) on the k slots, divided by the sum
  kNoiseDirichletGumbel = 6, // RST with both: Dirichlet over the support, then Gumbel-softmax
  kNoiseGumbelSoftGrpo = 7,  // Gumbel with SofT-GRPO's rollout g' (log(w + 1e-6), all k slots)
  kNoiseLast = 7,
};

// Kinds whose soft_embed output `noise` is a [B, k] tensor (g' or the raw draws of each slot).
SK_HD bool noise_has_slots(int kind) {
  return kind == kNoiseGumbel || kind == kNoiseTopKDirichlet || kind == kNoiseWeightGaussian ||
         kind == kNoiseDirichletGumbel || kind == kNoiseGumbelSoftGrpo;
}
// Kinds that redraw the whole surviving support (their candidate pool is the full support).
SK_HD bool noise_redraws_support(int kind) {
  return kind == kNoiseDirichlet || kind == kNoiseDirichletGumbel;
}
// Kinds whose Gumbel step uses tau / scale / clamp.
SK_HD bool noise_uses_gumbel(int kind) {
  return kind == kNoiseGumbel || kind == kNoiseDirichletGumbel || kind == kNoiseGumbelSoftGrpo;
}
// Kinds whose weights soft_embed's backward differentiates w.r.t. the logits (the others' weights
// are treated as random constants: Dirichlet draws, SofT-GRPO's rollout modes, whose trainer
// detaches the soft inputs).
SK_HD bool noise_weights_differentiable(int kind) {
  return kind == kNoiseNone || kind == kNoiseGumbel || kind == kNoiseGaussian;
}

// soft_embed's `ties` (exported as softkernels._C.TIES_*): how the top_k / top_p cuts treat
// tokens whose probability equals the last kept one's.
enum TiesRule : int {
  kTiesExact = 0,    // exactly top_k tokens / the top_p prefix, equal ones by the lower id
  kTiesKeepAll = 1,  // every token tied with the last kept one stays (FlashInfer's renorm)
};

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
enum StreamTag : uint32_t { kTagGumbel = 1, kTagDirichlet = 2, kTagGaussian = 3, kTagWeightGaussian = 4 };

template <typename T>
SK_HD T sk_min(T a, T b) { return a < b ? a : b; }
template <typename T>
SK_HD T sk_max(T a, T b) { return a > b ? a : b; }

}  // namespace softkernels
