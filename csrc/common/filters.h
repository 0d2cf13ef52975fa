// The per-row epilogue of soft_embed: from a row's candidate pool (its P most likely tokens,
// sorted best first) and its softmax statistics to the k mixture slots. Filters (top_k, top_p,
// min_p), Dirichlet and Gumbel noise and the renormalisations all happen here, on at most
// kMaxPool candidates, written once for the CPU and the CUDA kernels.
//
// Semantics: docs/semantics.md; float64 oracle: softkernels/reference.py.
#pragma once

#include <cstdint>

#include "common/macros.h"
#include "common/math.h"
#include "common/philox.h"
#include "common/row_state.h"
#include "soft_embed_decl.h"

namespace softkernels {

// One row's parameters as the kernels use them: one field per entry of
// SK_SOFT_EMBED_ROW_PARAMS (csrc/soft_embed_decl.h), plus what is derived from them.
template <typename T>
struct RowParams {
#define SK_ROW_FIELD(X, kind, name, ...) SK_ROW_KERNEL_##kind(T) name;
  SK_SOFT_EMBED_ROW_PARAMS(SK_ROW_FIELD, _)
#undef SK_ROW_FIELD
  T inv_temp;              // 1 / temperature, rounded once from float64
  bool keep_ties = false;  // TiesRule kTiesKeepAll (one value for the batch)

  // True when the parameters the CUDA warp epilogue does not apply are all neutral.
  SK_HD bool warp_epilogue_ok() const {
#define SK_ROW_WARP_OK(X, kind, name, lo, hi, lo_open, hi_open, neutral, warp) \
  &&(warp || name == static_cast<SK_ROW_KERNEL_##kind(T)>(neutral))
    return true SK_SOFT_EMBED_ROW_PARAMS(SK_ROW_WARP_OK, _);
#undef SK_ROW_WARP_OK
  }
};

// v in [lo, hi] with either end open; NaN is never in range.
template <typename V>
SK_HD bool row_value_in_range(V v, V lo, V hi, bool lo_open, bool hi_open) {
  return (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
}

struct NoiseParams {
  int kind;  // NoiseKind
  double tau, scale, clamp_lo, clamp_hi;  // Gumbel
  double alpha;                           // Dirichlet
  double sigma;                           // Gaussian (absolute)
};

// Size of row b's candidate pool: every filter decision for the row can be made inside it.
// top_k (when it is on) needs its top_k tokens; without top_k, only the k mixture slots matter
// (top_p's normaliser is then the full softmax sum), except that Dirichlet noise (and
// Dirichlet + Gumbel) redraws the whole surviving support (`dirichlet`: noise_redraws_support).
// With keep_ties, a top_k cut may keep tokens tied with the top_k-th beyond top_k: the pool is
// then the largest one (ties beyond kMaxPool candidates are cut there).
SK_HD int64_t row_pool_size(int64_t V, int64_t k, int64_t top_k, bool dirichlet,
                            bool keep_ties = false) {
  int64_t p;
  if (top_k > 0 && top_k < V) {
    p = sk_max(k, top_k);
    if (keep_ties) p = sk_max(p, sk_min<int64_t>(V, kMaxPool));
  } else {
    p = dirichlet ? V : k;
  }
  return sk_min(p, V);
}

// Range check of one row's parameters (used for per-row tensors when validate=False, where the
// kernel must not trust them; with validate=True Python has already raised).
template <typename T>
SK_HD bool row_params_ok(const RowParams<T>& rp, int64_t V, int64_t k, int noise_kind,
                         int64_t pool_bound) {
#define SK_ROW_RANGE_OK(X, kind, name, lo, hi, lo_open, hi_open, ...)                           \
  if (!row_value_in_range<SK_ROW_KERNEL_##kind(T)>(                                             \
          rp.name, static_cast<SK_ROW_KERNEL_##kind(T)>(lo),                                    \
          static_cast<SK_ROW_KERNEL_##kind(T)>(hi), lo_open, hi_open))                          \
    return false;
  SK_SOFT_EMBED_ROW_PARAMS(SK_ROW_RANGE_OK, _)
#undef SK_ROW_RANGE_OK
  // The kernels multiply by 1 / temperature: a temperature that is in range may still have an
  // inverse that overflows.
  if (!(rp.inv_temp > T(0)) || rp.inv_temp == sk_inf<T>()) return false;
  const int64_t p =
      row_pool_size(V, k, rp.top_k, noise_redraws_support(noise_kind), rp.keep_ties);
  return p <= pool_bound;
}

// Sort idx[0..n) so that key[idx] is descending, equal keys by ascending idx (heapsort: bounded
// work and no recursion, usable by one GPU thread).
template <typename T>
SK_HD bool key_before(const T* key, int a, int b) {
  return key[a] > key[b] || (key[a] == key[b] && a < b);
}

// Moves idx[root] down a heap of n entries whose top is the entry that comes *last* in
// key_before order (a parent never comes before its children).
template <typename T>
SK_HD void sift_last_to_top(const T* key, int* idx, int root, int n) {
  while (true) {
    int child = 2 * root + 1;
    if (child >= n) return;
    if (child + 1 < n && key_before(key, idx[child], idx[child + 1])) ++child;
    if (!key_before(key, idx[root], idx[child])) return;
    const int t = idx[root];
    idx[root] = idx[child];
    idx[child] = t;
    root = child;
  }
}

template <typename T>
SK_HD void sort_indices_by_key_desc(const T* key, int* idx, int n) {
  // Build the heap, then repeatedly move its top (the entry that comes last) to the back.
  for (int i = n / 2 - 1; i >= 0; --i) sift_last_to_top(key, idx, i, n);
  for (int end = n - 1; end > 0; --end) {
    const int t = idx[0];
    idx[0] = idx[end];
    idx[end] = t;
    sift_last_to_top(key, idx, 0, end);
  }
}

// w_j = exp(key[idx[j]]) / sum over the n sorted entries, computed as a softmax (shifted by the
// largest key, idx[0]): the normalised Gamma draws G / sum G from their logs.
template <typename T>
SK_HD void softmax_of_sorted_keys(const T* key, const int* idx, int n, T* w) {
  const T top = key[idx[0]];
  T sum = T(0);
  for (int j = 0; j < n; ++j) {
    w[j] = sk_exp(key[idx[j]] - top);
    sum += w[j];
  }
  for (int j = 0; j < n; ++j) w[j] /= sum;
}

// Scratch space for finish_row, each array at least `pool` long.
template <typename T>
struct RowScratch {
  T* e;            // exp(z - m) of the pool entries
  T* key;          // sort keys (Dirichlet log-gamma draws, Gumbel g', WeightGaussian w)
  int* order;      // pool indices of the chosen slots, in output order
  uint8_t* taken;  // 1 where a pool entry already fills a slot
  // Set by callers that filled e[i] = finish_row_e(pool, i), taken[i] = 0 and n0 (1 + the last i
  // with e[i] > 0) themselves, e.g. in parallel on a GPU; finish_row then skips step 1.
  bool e_ready = false;
  int n0 = 0;
};

// Step 1 of finish_row for one pool entry: its probability up to the common factor 1 / sum.
template <typename T>
SK_HD T finish_row_e(const Candidate<T>* pool, int i) {
  return sk_exp(pool[i].z - pool[0].z);
}

// The per-entry rules of finish_row's filters, shared by the CPU's sequential loops (finish_row)
// and the CUDA kernel's warp-parallel epilogue (csrc/cuda/soft_embed_fwd.cuh). The two differ only
// in the order in which they add up sums (the top_k normaliser, the top_p prefix mass, the weight
// normaliser): sequential here, warp trees on the GPU, so a top_p decision taken within an ulp of
// its limit can differ between devices.
template <typename T>
SK_HD bool top_k_on(const RowParams<T>& rp, int64_t V) {
  return rp.top_k > 0 && rp.top_k < V;
}

// Entries left after top_k, of the n0 with nonzero probability.
template <typename T>
SK_HD int top_k_count(int n0, const RowParams<T>& rp, int64_t V) {
  return top_k_on(rp, V) ? static_cast<int>(sk_min<int64_t>(n0, rp.top_k)) : n0;
}

// top_p's normaliser without top_k: the full softmax sum, rebased to the pool's max m.
template <typename T>
SK_HD T full_softmax_norm(const RowStats<T>& st, T m) {
  return st.s * sk_exp(st.m - m);
}

// top_p keeps entry i (in pool order) iff it is the first one or the mass kept before it is
// below limit = top_p * norm.
template <typename T>
SK_HD bool top_p_keeps(int i, T mass_before, T limit) {
  return i == 0 || mass_before < limit;
}

// min_p: p_i >= min_p * p_max  <=>  e_i >= min_p (e_0 = 1 is the max).
template <typename T>
SK_HD bool min_p_keeps(T e, T min_p) {
  return e >= min_p;
}

// Gumbel: g' = log w + scale * clamp(g, lo, hi); the new weights are softmax(g' / tau).
template <typename T>
struct GumbelConsts {
  T scale, lo, hi, inv_tau;
};
template <typename T>
SK_HD GumbelConsts<T> gumbel_consts(const NoiseParams& np) {
  return GumbelConsts<T>{static_cast<T>(np.scale), static_cast<T>(np.clamp_lo),
                         static_cast<T>(np.clamp_hi), T(1) / static_cast<T>(np.tau)};
}
template <typename T>
SK_HD T gumbel_key(T w, T g, const GumbelConsts<T>& gc) {
  g = sk_min(sk_max(g, gc.lo), gc.hi);
  return sk_log(w) + gc.scale * g;  // -inf where w == 0
}
// Unnormalised new weight of a slot with key gp; top = the largest key of the row.
template <typename T>
SK_HD T gumbel_weight(T gp, T top, const GumbelConsts<T>& gc) {
  return gp == -sk_inf<T>() ? T(0) : sk_exp((gp - top) * gc.inv_tau);
}

// Computes the k output slots of a soft (non-hard) row.
//   pool[0..pool_n): the row's best candidates, sorted by `better`; pool_n >= k.
//   st: the row's softmax statistics (st.m == pool[0].z).
// Writes out_ids[k], out_w[k] and, for the kinds with noise_has_slots, out_noise[k]: g' (-inf
// where w = 0) for the Gumbel kinds, the Gamma draws G (0 where w = 0) for TopKDirichlet, the
// normal draws x for WeightGaussian.
template <typename T>
SK_HD void finish_row(const Candidate<T>* pool, int pool_n, int k, int64_t V,
                      const RowStats<T>& st, const RowParams<T>& rp, const NoiseParams& np,
                      RowScratch<T> sc, int64_t* out_ids, T* out_w, T* out_noise) {
  const T m = pool[0].z;
  // 1. Probabilities up to the common factor 1 / sum: e_0 = 1 is the row's max.
  int n0 = sc.n0;
  if (!sc.e_ready) {
    n0 = 0;
    for (int i = 0; i < pool_n; ++i) {
      sc.e[i] = finish_row_e(pool, i);
      sc.taken[i] = 0;
      if (sc.e[i] > T(0)) n0 = i + 1;
    }
  }
  // 2. top_k (keep_ties: and every later pool entry tied with the last kept one).
  int n1 = top_k_count(n0, rp, V);
  if (rp.keep_ties && top_k_on(rp, V)) {
    while (n1 < n0 && sc.e[n1] == sc.e[n1 - 1]) ++n1;
  }
  // 3. top_p: keep while the mass kept before an entry is < top_p (the first always stays),
  //    mass measured after top_k's renormalisation.
  int n2 = n1;
  if (rp.top_p < T(1)) {
    T norm = T(0);
    if (top_k_on(rp, V)) {
      for (int i = 0; i < n1; ++i) norm += sc.e[i];
    } else {
      norm = full_softmax_norm(st, m);
    }
    const T limit = rp.top_p * norm;
    T cum = T(0);
    n2 = 0;
    for (int i = 0; i < n1; ++i) {
      if (!top_p_keeps(i, cum, limit)) break;
      cum += sc.e[i];
      n2 = i + 1;
    }
    if (rp.keep_ties) {
      while (n2 < n1 && sc.e[n2] == sc.e[n2 - 1]) ++n2;
    }
  }
  // 4. min_p.
  int n3 = n2;
  if (rp.min_p > T(0)) {
    n3 = 0;
    for (int i = 0; i < n2 && min_p_keeps(sc.e[i], rp.min_p); ++i) n3 = i + 1;
  }
  const int nk = sk_min(k, n3);
  const int kind = np.kind;
  int nw = nk;  // output slots that carry weight (the noise of some kinds weights all k)

  // 5-7. Choose the nk weighted slots and their weights.
  if (noise_redraws_support(kind)) {
    T s3 = T(0);
    for (int i = 0; i < n3; ++i) s3 += sc.e[i];
    const T alpha = static_cast<T>(np.alpha);
    for (int i = 0; i < n3; ++i) {
      sc.key[i] = log_gamma_sample<T>(alpha * (sc.e[i] / s3), rp.seed, rp.offset, pool[i].id);
      sc.order[i] = i;
    }
    sort_indices_by_key_desc(sc.key, sc.order, n3);
    // w = G / sum G over the kept slots.
    softmax_of_sorted_keys(sc.key, sc.order, nk, out_w);
  } else {
    T sum = T(0);
    for (int j = 0; j < nk; ++j) sum += sc.e[j];
    for (int j = 0; j < nk; ++j) {
      sc.order[j] = j;
      out_w[j] = sc.e[j] / sum;
    }
    // The unweighted slots are the next pool entries (pool_n >= k); the kinds that perturb all
    // k slots start from them with w = 0.
    for (int j = nk; j < k; ++j) {
      sc.order[j] = j;
      out_w[j] = T(0);
    }
  }

  // 8a. TopKDirichlet (SofT-GRPO): G_j ~ Gamma(alpha * w_j) on the nk weighted slots, then
  //     w = G / sum G (in log space) and a re-sort by G. The draws G are returned.
  if (kind == kNoiseTopKDirichlet) {
    const T alpha = static_cast<T>(np.alpha);
    for (int j = 0; j < nk; ++j) {
      const int i = sc.order[j];
      sc.key[i] = log_gamma_sample<T>(alpha * out_w[j], rp.seed, rp.offset, pool[i].id);
    }
    sort_indices_by_key_desc(sc.key, sc.order, nk);
    softmax_of_sorted_keys(sc.key, sc.order, nk, out_w);
    for (int j = 0; j < nk; ++j) out_noise[j] = sk_exp(sc.key[sc.order[j]]);
    for (int j = nk; j < k; ++j) out_noise[j] = T(0);
  }

  // 8b. WeightGaussian (SofT-GRPO's default): x_j = w_j + sigma * n_j on all k slots (the
  //     unweighted ones too), not clamped; w = x / sum x, re-sorted by w. The draws x are
  //     returned. Weights may be negative.
  if (kind == kNoiseWeightGaussian) {
    const T sigma = static_cast<T>(np.sigma);
    T sum = T(0);
    for (int j = 0; j < k; ++j) {
      sc.e[j] = out_w[j] + sigma * weight_normal_noise<T>(rp.seed, rp.offset, pool[j].id);
      sum += sc.e[j];
    }
    for (int j = 0; j < k; ++j) sc.key[j] = sc.e[j] / sum;
    sort_indices_by_key_desc(sc.key, sc.order, k);
    for (int j = 0; j < k; ++j) {
      out_w[j] = sc.key[sc.order[j]];
      out_noise[j] = sc.e[sc.order[j]];
    }
    nw = k;
  }

  // 8c. Gumbel: g' = log w + scale * clamp(g, lo, hi); w = softmax(g' / tau); re-sort. After
  //     Dirichlet for DirichletGumbel (RST's order). SofT-GRPO's rollout g' (GumbelSoftGrpo) is
  //     log(w + 1e-6) + scale * clamp(g) on all k slots, so the unweighted ones get a finite g'.
  if (noise_uses_gumbel(kind)) {
    const GumbelConsts<T> gc = gumbel_consts<T>(np);
    const bool all_slots = kind == kNoiseGumbelSoftGrpo;
    const int ng = all_slots ? k : nk;
    // key is indexed by pool index so that ties resolve by pool order.
    T top = -sk_inf<T>();
    for (int j = 0; j < ng; ++j) {
      const int i = sc.order[j];
      const T w = all_slots ? out_w[j] + static_cast<T>(1e-6) : out_w[j];
      const T gp = gumbel_key(w, gumbel_noise<T>(rp.seed, rp.offset, pool[i].id), gc);
      sc.key[i] = gp;
      top = sk_max(top, gp);
    }
    sort_indices_by_key_desc(sc.key, sc.order, ng);
    T sum = T(0);
    for (int j = 0; j < ng; ++j) {
      out_w[j] = gumbel_weight(sc.key[sc.order[j]], top, gc);
      sum += out_w[j];
    }
    for (int j = 0; j < ng; ++j) {
      out_w[j] /= sum;
      out_noise[j] = sc.key[sc.order[j]];
    }
    for (int j = ng; j < k; ++j) out_noise[j] = -sk_inf<T>();
    nw = ng;
  }

  // Output slots: the weighted ones, then the most probable remaining pool entries.
  for (int j = 0; j < nw; ++j) {
    const int i = sc.order[j];
    out_ids[j] = pool[i].id;
    sc.taken[i] = 1;
  }
  int j = nw;
  for (int i = 0; i < pool_n && j < k; ++i) {
    if (sc.taken[i]) continue;
    out_ids[j] = pool[i].id;
    out_w[j] = T(0);
    ++j;
  }
}

// A hard row: slot 0 is the forced token (hard_id, or the argmax when hard_id < 0) with weight 1;
// the other slots hold the most probable other tokens with weight 0. The noise of a kind with
// noise_has_slots is the one that reproduces those weights: g' = (0, -inf, ...) for the Gumbel
// kinds, draws (1, 0, ...) for TopKDirichlet and WeightGaussian.
template <typename T>
SK_HD void finish_hard_row(const Candidate<T>* pool, int pool_n, int k, int64_t hard_id,
                           int kind, int64_t* out_ids, T* out_w, T* out_noise) {
  const int64_t first = hard_id >= 0 ? hard_id : pool[0].id;
  out_ids[0] = first;
  out_w[0] = T(1);
  int j = 1;
  for (int i = 0; i < pool_n && j < k; ++i) {
    if (pool[i].id == first) continue;
    out_ids[j] = pool[i].id;
    out_w[j] = T(0);
    ++j;
  }
  if (noise_uses_gumbel(kind)) {
    out_noise[0] = T(0);  // log of the one-hot weight
    for (int jj = 1; jj < k; ++jj) out_noise[jj] = -sk_inf<T>();
  } else if (noise_has_slots(kind)) {
    for (int jj = 0; jj < k; ++jj) out_noise[jj] = out_w[jj];
  }
}

// Writes a flagged row: NaN floats, ids 0, so that an unchecked bad row cannot pass unnoticed.
template <typename T>
SK_HD void poison_row(int k, bool has_noise, int64_t* out_ids, T* out_w, T* out_noise) {
  for (int j = 0; j < k; ++j) {
    out_ids[j] = 0;
    out_w[j] = sk_nan<T>();
    if (has_noise) out_noise[j] = sk_nan<T>();
  }
}

}  // namespace softkernels
