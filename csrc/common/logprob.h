// Per-slot and per-row math of the RL log-probability ops (gumbel_logprob, gaussian_logprob),
// shared by the CPU and the CUDA kernels. The reductions over a row's slots / dimensions are
// written per backend (serial on the CPU, block- or warp-wide on the GPU); every formula that
// turns the reduced values into outputs lives here. docs/training.md states the semantics;
// softkernels/reference.py is the float64 oracle.
#pragma once

#include <cstdint>

#include "common/macros.h"
#include "common/math.h"

namespace softkernels {

// Tensors with arbitrary leading ("batch") dimensions are addressed row by row: row n (in
// row-major order over the batch shape) starts at element offset row_offset(ix, n). This lets the
// kernels read sliced or expanded inputs (e.g. logits[:, :-1], or a broadcast mean) in place.
constexpr int kMaxBatchDims = 8;

struct RowIndexer {
  int ndim;                         // number of batch dimensions (0: a single row)
  int64_t sizes[kMaxBatchDims];
  int64_t strides[kMaxBatchDims];   // in elements
};

SK_HD int64_t row_offset(const RowIndexer& ix, int64_t n) {
  int64_t off = 0;
  for (int d = ix.ndim - 1; d >= 0; --d) {
    const int64_t s = ix.sizes[d];
    off += (n % s) * ix.strides[d];
    n /= s;
  }
  return off;
}

// Per-row status bits written by gumbel_logprob; the Python wrapper turns them into ValueErrors
// when validate=True. A flagged row's log-probability (and saved lse) is NaN, so validate=False
// never hides it; its gradient is NaN too.
enum LogprobStatus : int {
  kLpOk = 0,
  kLpNonFinite = 1,   // NaN or +inf among the logits the row reads
  kLpAllMasked = 2,   // every logit the row reads is -inf
  kLpNoSlot = 4,      // soft row whose g' are all -inf (no slot carried weight)
  kLpBadNoise = 8,    // NaN or +inf in g'
  kLpBadId = 16,      // a slot id the row reads is outside [0, V)
};

// ---------------------------------------------------------------------------------------------
// gumbel_logprob (SofT-GRPO). For a soft row with slots S = {j : g'_j finite}:
//   z_j  = logits[id_j] / T,             lse = logsumexp_{j in S} z_j
//   l_j  = z_j - lse                      (log p~_j: p~ renormalised over S)
//   u_j  = (g'_j - l_j) / scale,          ghat_j = clamp(u_j, lo, hi)
//   f_j  = -ghat_j - exp(-ghat_j)         (log-density of a standard Gumbel at ghat_j)
//   M    = {j in S : l_j > log(min_weight)}, or {argmax_j l_j} when that is empty
//   log pi = (1 / |M|) sum_{j in M} f_j
// A hard row's log pi is log softmax(logits / T)[id_0] over the whole vocabulary.
// Gradient (M and the clamp's active set held fixed, clamp passes where lo <= u <= hi):
//   a_j = [j in M] (exp(-ghat_j) - 1) [lo <= u_j <= hi] / |M|       (d log pi / d u_j)
//   d log pi / d z_j  = -(a_j - p~_j sum_i a_i) / scale,   d log pi / d g'_j = a_j / scale
//   d log pi / d logits[id_j] = (d log pi / d z_j) / T

template <typename T>
struct GumbelLpParams {
  T inv_temp;        // 1 / temperature
  T scale;           // g' = log w + scale * clamp(g): divide to recover g
  T lo, hi;          // clamp bounds (+-inf when off)
  T log_min_weight;  // log(min_weight); -inf when min_weight = 0
};

// One slot's term f and its derivative d f / d u (0 where the clamp is active).
template <typename T>
SK_HD T gumbel_slot_term(T g_prime, T l, const GumbelLpParams<T>& p, T& dfdu) {
  const T u = (g_prime - l) / p.scale;
  T gh = u;
  bool inside = true;
  if (u < p.lo) {
    gh = p.lo;
    inside = false;
  } else if (u > p.hi) {
    gh = p.hi;
    inside = false;
  }
  const T e = sk_exp(-gh);
  dfdu = inside ? e - T(1) : T(0);
  return -gh - e;
}

// Whether a slot with log p~ = l is "non-negligible" (counted in the mean).
template <typename T>
SK_HD bool gumbel_slot_counts(T l, const GumbelLpParams<T>& p) {
  return l > p.log_min_weight;
}

// Gradient of log pi w.r.t. z_j given a_j, p~_j = exp(l_j) and sum_i a_i.
template <typename T>
SK_HD T gumbel_grad_z(T a, T l, T a_sum, const GumbelLpParams<T>& p) {
  return -(a - sk_exp(l) * a_sum) / p.scale;
}

// Slot validity as the kernels see it: excluded (g' = -inf, not read further), or flags.
template <typename T>
SK_HD int gumbel_noise_status(T g_prime) {
  if (sk_isnan(g_prime) || g_prime == sk_inf<T>()) return kLpBadNoise;
  return kLpOk;
}

template <typename T>
SK_HD bool gumbel_slot_included(T g_prime) {
  return g_prime > -sk_inf<T>() && g_prime < sk_inf<T>();
}

template <typename T>
SK_HD int logit_status(T z) {
  return (sk_isnan(z) || z == sk_inf<T>()) ? kLpNonFinite : kLpOk;
}

// Online (max, sum exp) pair for the log-sum-exp of a hard row, and its merge.
template <typename T>
struct LseState {
  T m;  // running max (-inf while empty)
  T s;  // sum exp(z - m)
};

template <typename T>
SK_HD LseState<T> lse_empty() {
  return LseState<T>{-sk_inf<T>(), T(0)};
}

template <typename T>
SK_HD void lse_push(LseState<T>& st, T z) {
  if (z == -sk_inf<T>()) return;
  if (z > st.m) {
    st.s = st.s * sk_exp(st.m - z) + T(1);  // exp(-inf) = 0 for the first entry
    st.m = z;
  } else {
    st.s += sk_exp(z - st.m);
  }
}

template <typename T>
SK_HD LseState<T> lse_merge(const LseState<T>& x, const LseState<T>& y) {
  if (x.s == T(0)) return y;
  if (y.s == T(0)) return x;
  const T m = sk_max(x.m, y.m);
  return LseState<T>{m, x.s * sk_exp(x.m - m) + y.s * sk_exp(y.m - m)};
}

template <typename T>
SK_HD T lse_value(const LseState<T>& st) {
  return st.s == T(0) ? -sk_inf<T>() : st.m + sk_log(st.s);
}

// ---------------------------------------------------------------------------------------------
// gaussian_logprob (Soft Tokens, Hard Truths): with q = ||x - mean||^2 over the last dim D,
//   log N(x; mean, sigma^2 I) = -q / (2 sigma^2) - (D / 2) log(2 pi sigma^2)
//   d/dx = -(x - mean) / sigma^2,  d/dmean = (x - mean) / sigma^2,
//   d/dsigma = q / sigma^3 - D / sigma.

// A row whose sigma is not finite and > 0 (only possible with validate=False) yields NaN.
template <typename T>
SK_HD bool gaussian_sigma_ok(T sigma) {
  return sigma > T(0) && sigma < sk_inf<T>();
}

// The per-row combination runs in float64 and never forms sigma^2: sigma^2 under- or overflows
// float32 for sigma outside about [1e-19, 1e19] although the log-density is finite there
// (q / sigma^2 = (sqrt(q) / sigma)^2, log sigma^2 = 2 log sigma).
template <typename T>
SK_HD T gaussian_logprob_value(T q, T sigma, int64_t D) {
  if (!gaussian_sigma_ok(sigma)) return sk_nan<T>();
  const double half_log_two_pi = 0.91893853320467274178032973640562;
  const double s = static_cast<double>(sigma);
  const double r = sk_sqrt(static_cast<double>(q)) / s;
  const double d = static_cast<double>(D);
  return static_cast<T>(-0.5 * r * r - d * (sk_log(s) + half_log_two_pi));
}

// The factor of (x - mean) in the gradients, -grad / sigma^2, computed in float64 (as above).
template <typename T>
SK_HD T gaussian_grad_factor(T grad, T sigma) {
  if (!gaussian_sigma_ok(sigma)) return sk_nan<T>();
  const double s = static_cast<double>(sigma);
  return static_cast<T>(-(static_cast<double>(grad) / s) / s);
}

// ---------------------------------------------------------------------------------------------
// slot_logprob: SofT-GRPO's log-probabilities of TopKDirichlet and WeightGaussian soft tokens
// (kind = kNoiseTopKDirichlet / kNoiseWeightGaussian). A soft row reads only its k slot logits:
//   z_j = logits[id_j] / T,  lse = logsumexp over all k slots,  p_j = exp(z_j - lse)
//   v_j = the slot's value (slot_value below); NaN marks a slot left out (K = the others)
//   M   = {j in K : p_j > min_weight}, or {the first j maximising [j in K] p_j} when that is empty
//   log pi = (1 / |M|) sum_{j in M} v_j        (NaN when the fallback slot is not in K)
// A hard row's log pi is log softmax(logits / T)[id_0] over the whole vocabulary.
// Gradient w.r.t. the logits (M and the clamps' active sets held fixed; the draws are data):
//   b_j = [j in M] (d v_j / d p_j) / |M|,   d log pi / d z_j = p_j (b_j - sum_i p_i b_i).

template <typename T>
struct SlotLpParams {
  int kind;          // kNoiseTopKDirichlet or kNoiseWeightGaussian
  T inv_temp;        // 1 / temperature
  T alpha;           // TopKDirichlet: concentration c_j = alpha * p_j
  T lo, hi;          // TopKDirichlet: clamp of v_j (+-inf when off)
  T var, two_var;    // WeightGaussian: sigma^2 and 2 sigma^2
  T log_norm;        // WeightGaussian: log sigma + log(2 pi) / 2
  T radius;          // WeightGaussian: the draw is clamped to p_j +- radius
  T min_weight;
};

#if defined(__CUDA_ARCH__)
SK_HD float sk_lgamma(float x) { return ::lgammaf(x); }
SK_HD double sk_lgamma(double x) { return ::lgamma(x); }
#else
// The reentrant forms: lgamma writes the global signgam, from every CPU thread at once.
SK_HD float sk_lgamma(float x) {
  int sign;
  return ::lgammaf_r(x, &sign);
}
SK_HD double sk_lgamma(double x) {
  int sign;
  return ::lgamma_r(x, &sign);
}
#endif

// digamma(x) for x > 0 (NaN in, NaN out): the recurrence psi(x) = psi(x + 1) - 1 / x up to
// x >= 10, then the asymptotic series to the x^-14 term (truncation error < 1e-16 there).
SK_HD double sk_digamma(double x) {
  double r = 0.0;
  while (x < 10.0) {
    r -= 1.0 / x;
    x += 1.0;
  }
  const double f = 1.0 / (x * x);
  const double t =
      f * (-1.0 / 12 +
           f * (1.0 / 120 +
                f * (-1.0 / 252 +
                     f * (1.0 / 240 + f * (-1.0 / 132 + f * (691.0 / 32760 + f * (-1.0 / 12)))))));
  return r + ::log(x) - 0.5 / x + t;
}

// One slot's value v and its derivative d v / d p (0 where a clamp is active or v is an edge
// value). TopKDirichlet: v = clamp((c - 1) log G - G - lgamma(c), lo, hi), c = alpha p; at G = 0
// or c = 0 it is SofT-GRPO's xlogy(c - 1, G) - G - lgamma(c) (+inf, 0, -inf or NaN) with no
// gradient. WeightGaussian: v = log N(clamp(x, p - radius, p + radius); p, sigma^2).
template <typename T>
SK_HD T slot_value(T p, T draw, const SlotLpParams<T>& q, T& dvdp) {
  dvdp = T(0);
  if (q.kind == kNoiseTopKDirichlet) {
    const T c = q.alpha * p;
    T v;
    if (draw > T(0) && c > T(0)) {
      const T lx = sk_log(draw);
      v = (c - T(1)) * lx - draw - sk_lgamma(c);
      dvdp = q.alpha * (lx - static_cast<T>(sk_digamma(static_cast<double>(c))));
    } else {
      const T a = c - T(1);
      const T xlogy = sk_isnan(draw) ? draw : (a == T(0) ? T(0) : a * sk_log(draw));
      v = xlogy - draw - sk_lgamma(c);
    }
    if (v < q.lo) {
      v = q.lo;
      dvdp = T(0);
    } else if (v > q.hi) {
      v = q.hi;
      dvdp = T(0);
    }
    return v;
  }
  const T lo = p - q.radius, hi = p + q.radius;
  T xc = draw;
  bool inside = true;
  if (draw < lo) {
    xc = lo;
    inside = false;
  } else if (draw > hi) {
    xc = hi;
    inside = false;
  }
  const T d = xc - p;
  if (inside) dvdp = d / q.var;
  return -(d * d) / q.two_var - q.log_norm;
}

// Whether a slot is in M before the fallback, and its key for the fallback's argmax.
template <typename T>
SK_HD bool slot_counts(T p, T v, const SlotLpParams<T>& q) {
  return !sk_isnan(v) && p > q.min_weight;
}

template <typename T>
SK_HD T slot_fallback_key(T p, T v) {
  return sk_isnan(v) ? T(0) : p;
}

// Draws the wrapper refuses (validate=True): NaN / inf, and negative Gamma draws. Only flagged:
// with validate=False the row is scored from them as given.
template <typename T>
SK_HD int slot_draw_status(T draw, int kind) {
  if (sk_isnan(draw) || draw == sk_inf<T>() || draw == -sk_inf<T>()) return kLpBadNoise;
  if (kind == kNoiseTopKDirichlet && draw < T(0)) return kLpBadNoise;
  return kLpOk;
}

// Status bits after which a soft row is not scored (NaN): its slot logits are unusable.
constexpr int kLpSlotFatal = kLpBadId | kLpNonFinite | kLpAllMasked;

}  // namespace softkernels
