// Online softmax statistics of one row (or one slice of it) and their merge.
//
// For z = logits / T a slice keeps m = max z, s = sum exp(z - m) and a = sum exp(z - m) (z - m).
// Then p_max = 1 / s and the entropy -sum p log p = log s - a / s, so a single read of the logits
// gives max_prob and entropy without materialising p. Two slices merge exactly (up to rounding),
// which lets a long row be split across threads or CUDA blocks.
#pragma once

#include "common/macros.h"
#include "common/math.h"

namespace softkernels {

template <typename T>
struct RowStats {
  T m;  // running max of z (-inf when the slice has no finite entry)
  T s;  // sum exp(z - m)
  T a;  // sum exp(z - m) * (z - m)
};

template <typename T>
SK_HD RowStats<T> stats_empty() {
  return RowStats<T>{-sk_inf<T>(), T(0), T(0)};
}

// Rescale a slice's sums to a larger reference max.
template <typename T>
SK_HD RowStats<T> stats_rebase(const RowStats<T>& x, T m) {
  if (x.s == T(0)) return RowStats<T>{m, T(0), T(0)};
  const T delta = x.m - m;  // <= 0; -inf when the difference of two finite maxima overflows
  const T f = sk_exp(delta);
  // A slice whose weight underflows to 0 contributes nothing (and not 0 * -inf = NaN).
  if (!(f > T(0))) return RowStats<T>{m, T(0), T(0)};
  return RowStats<T>{m, x.s * f, f * (x.a + x.s * delta)};
}

template <typename T>
SK_HD RowStats<T> stats_merge(const RowStats<T>& x, const RowStats<T>& y) {
  if (x.s == T(0)) return y;
  if (y.s == T(0)) return x;
  const T m = sk_max(x.m, y.m);
  const RowStats<T> xr = stats_rebase(x, m), yr = stats_rebase(y, m);
  return RowStats<T>{m, xr.s + yr.s, xr.a + yr.a};
}

// Add one finite z (callers skip -inf entries: they carry no probability).
template <typename T>
SK_HD void stats_push(RowStats<T>& st, T z) {
  if (z > st.m) {
    st = stats_rebase(st, z);
  }
  const T t = z - st.m;
  const T e = sk_exp(t);
  st.s += e;
  if (e > T(0)) st.a += e * t;  // t = -inf (z - m overflowed) carries no mass
}

template <typename T>
SK_HD T stats_entropy(const RowStats<T>& st) {
  const T h = sk_log(st.s) - st.a / st.s;
  return h < T(0) ? T(0) : h;  // rounding can leave a tiny negative for one-hot rows; NaN stays
}

template <typename T>
SK_HD T stats_max_prob(const RowStats<T>& st) {
  return T(1) / st.s;
}

// A candidate token: its tempered logit and id. "Better" means more probable; equal logits are
// ordered by the lower id, which is the tie rule of every selection in softkernels.
template <typename T>
struct Candidate {
  T z;
  int64_t id;
};

template <typename T>
SK_HD bool better(const Candidate<T>& a, const Candidate<T>& b) {
  return a.z > b.z || (a.z == b.z && a.id < b.id);
}

}  // namespace softkernels
