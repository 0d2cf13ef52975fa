// CPU implementation of gumbel_logprob / slot_logprob / gaussian_logprob and their backward ops.
//
// Rows run in parallel (at::parallel_for); each row is handled by one thread with the formulas of
// csrc/common/logprob.h. Soft rows of gumbel_logprob read only their k slot logits; hard rows
// read the whole vocabulary row (vectorised: one max pass, one sum-exp pass). Accumulation is in
// fp32 for fp32 / bf16 / fp16 inputs and fp64 for fp64 inputs.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "common/logprob.h"
#include "cpu/vec_utils.h"
#include "logprob_host.h"

namespace softkernels::cpu {
namespace {

// ---------------------------------------------------------------------------------------------
// Whole-row helpers (hard rows of gumbel_logprob).

// NaN-propagating max of x * inv_temp over a row (+inf and NaN show up in the result).
template <typename scalar_t>
acc_t<scalar_t> row_max(const scalar_t* x, int64_t V, acc_t<scalar_t> inv_temp) {
  using T = acc_t<scalar_t>;
  T m = -sk_inf<T>();
  auto fold = [&m](T v) { m = (sk_isnan(v) || sk_isnan(m)) ? sk_nan<T>() : std::max(m, v); };
  int64_t i = 0;
  if constexpr (!std::is_same_v<scalar_t, double>) {
    constexpr int64_t W = FVec::size();
    const FVec vinv(inv_temp);
    FVec vmax(-sk_inf<float>());
    for (; i + 2 * W <= V; i += 2 * W) {
      FVec lo, hi;
      load2(x + i, lo, hi);
      vmax = at::vec::maximum(vmax, at::vec::maximum(lo * vinv, hi * vinv));
    }
    alignas(64) float lanes[W];
    vmax.store(lanes);
    for (int64_t l = 0; l < W; ++l) fold(lanes[l]);
  }
  for (; i < V; ++i) fold(static_cast<T>(x[i]) * inv_temp);
  return m;
}

// sum exp(x * inv_temp - m) over a row, m finite.
template <typename scalar_t>
acc_t<scalar_t> row_sum_exp(const scalar_t* x, int64_t V, acc_t<scalar_t> inv_temp,
                            acc_t<scalar_t> m) {
  using T = acc_t<scalar_t>;
  T s = T(0);
  int64_t i = 0;
  if constexpr (!std::is_same_v<scalar_t, double>) {
    constexpr int64_t W = FVec::size();
    const FVec vinv(inv_temp), vm(m), vfloor(-1e4f);
    FVec vs(0.f);
    for (; i + 2 * W <= V; i += 2 * W) {
      FVec lo, hi;
      load2(x + i, lo, hi);
      // Clamping keeps -inf entries at exp = 0 without -inf arithmetic.
      vs = vs + at::vec::maximum(lo * vinv - vm, vfloor).exp_u20();
      vs = vs + at::vec::maximum(hi * vinv - vm, vfloor).exp_u20();
    }
    s = hsum(vs);
  }
  for (; i < V; ++i) {
    const T z = static_cast<T>(x[i]) * inv_temp;
    if (z != -sk_inf<T>()) s += std::exp(z - m);
  }
  return s;
}

// out[v] = -c * exp(x[v] * inv_temp - lse) over a row.
template <typename scalar_t>
void row_softmax_grad(const scalar_t* x, int64_t V, acc_t<scalar_t> inv_temp,
                      acc_t<scalar_t> lse, acc_t<scalar_t> c, scalar_t* out) {
  using T = acc_t<scalar_t>;
  int64_t i = 0;
  if constexpr (!std::is_same_v<scalar_t, double>) {
    constexpr int64_t W = FVec::size();
    const FVec vinv(inv_temp), vl(lse), vfloor(-1e4f), vc(-c);
    for (; i + 2 * W <= V; i += 2 * W) {
      FVec lo, hi;
      load2(x + i, lo, hi);
      lo = at::vec::maximum(lo * vinv - vl, vfloor).exp_u20() * vc;
      hi = at::vec::maximum(hi * vinv - vl, vfloor).exp_u20() * vc;
      store2(out + i, lo, hi);
    }
  }
  for (; i < V; ++i) {
    const T z = static_cast<T>(x[i]) * inv_temp;
    out[i] = static_cast<scalar_t>(z == -sk_inf<T>() ? T(0) : -c * std::exp(z - lse));
  }
}

// ---------------------------------------------------------------------------------------------
// gumbel_logprob

// Gathers a soft row's included slots: z_j (NaN marks an excluded slot) and the argmax slot.
// Returns the status bits of the row.
template <typename scalar_t, typename T>
int gather_soft_row(const scalar_t* x, const int64_t* id, const T* gp, int64_t k, int64_t V,
                    T inv_temp, T* z, int64_t& best) {
  int status = kLpOk;
  best = -1;
  for (int64_t j = 0; j < k; ++j) {
    z[j] = sk_nan<T>();
    status |= gumbel_noise_status(gp[j]);
    if (!gumbel_slot_included(gp[j])) continue;
    if (id[j] < 0 || id[j] >= V) {
      status |= kLpBadId;
      continue;
    }
    z[j] = static_cast<T>(x[id[j]]) * inv_temp;
    status |= logit_status(z[j]);
    if (best < 0 || z[j] > z[best]) best = j;
  }
  if (best < 0 && !(status & kLpBadId)) status |= kLpNoSlot;
  if (status == kLpOk && z[best] == -sk_inf<T>()) status |= kLpAllMasked;
  return status;
}

// A hard row: (log pi, lse) over the whole row, or NaN with the status bits set.
template <typename scalar_t, typename T>
void hard_row_logprob(const scalar_t* x, int64_t id0, int64_t V, T inv_temp, int& status, T& lp,
                      T& lse) {
  const T m = row_max(x, V, inv_temp);
  if (sk_isnan(m) || m == sk_inf<T>()) {
    status |= kLpNonFinite;
  } else if (m == -sk_inf<T>()) {
    status |= kLpAllMasked;
  }
  if (id0 < 0 || id0 >= V) status |= kLpBadId;
  if (status == kLpOk) {
    lse = m + std::log(row_sum_exp(x, V, inv_temp, m));
    lp = static_cast<T>(x[id0]) * inv_temp - lse;
  }
}

// parallel_for grain of row loops over D values: about 32K values a task.
int64_t row_grain(int64_t D) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(D, 1)); }

// The pointers of a slot-row op's prepared call (csrc/logprob_host.h), shared by the four
// slot-row kernels: logits rows, ids / draws [N, k] (draws: g_prime for Gumbel), hard [N].
template <typename scalar_t>
struct SlotRows {
  using T = acc_t<scalar_t>;
  const scalar_t* X;
  const int64_t* I;
  const T* D;
  const bool* hard;
  int64_t N, V, k;
  RowIndexer rows;
  SlotRows(const at::Tensor& logits, const SlotRowsCall& c)
      : X(logits.data_ptr<scalar_t>()), I(c.ids.data_ptr<int64_t>()), D(c.draws.data_ptr<T>()),
        hard(c.hard_p), N(c.sh.N), V(c.sh.V), k(c.sh.k), rows(c.sh.logits_rows) {}
  const scalar_t* x(int64_t n) const { return X + row_offset(rows, n); }
  const int64_t* id(int64_t n) const { return I + n * k; }
  const T* draws(int64_t n) const { return D + n * k; }
  bool is_hard(int64_t n) const { return hard != nullptr && hard[n]; }
};

// The forward outputs (logprob, lse, status) of a slot-row op, written a row at a time.
template <typename T>
struct SlotRowsOut {
  T* LP;
  T* LSE;
  int* ST;
  explicit SlotRowsOut(GumbelLpOutputs& o)
      : LP(std::get<0>(o).data_ptr<T>()), LSE(std::get<1>(o).data_ptr<T>()),
        ST(std::get<2>(o).data_ptr<int>()) {}
  void put(int64_t n, T lp, T lse, int status) const {
    LP[n] = lp;
    LSE[n] = lse;
    ST[n] = status;
  }
};

// Per-thread slot buffers of a soft row (k values each).
template <typename T>
struct SlotScratch {
  std::vector<T> z, pr, v, dv;
  explicit SlotScratch(int64_t k) : z(k), pr(k), v(k), dv(k) {}
};

// d log pi / d logits of a hard row, times the upstream gradient g.
template <typename scalar_t, typename T>
void hard_row_grad(const scalar_t* x, int64_t id0, int64_t V, T inv_temp, T lse, T g,
                   scalar_t* gl) {
  const T c = g * inv_temp;
  row_softmax_grad(x, V, inv_temp, lse, c, gl);
  const T z0 = static_cast<T>(x[id0]) * inv_temp;
  gl[id0] = static_cast<scalar_t>(c * (T(1) - std::exp(z0 - lse)));
}

// A soft row of gumbel_logprob: the mean of the clamped per-slot terms over the counted slots
// (the best slot alone when none counts). Returns the status; lp / lse are set when it is ok.
template <typename scalar_t, typename T>
int soft_row_forward(const scalar_t* x, const int64_t* id, const T* gp, int64_t k, int64_t V,
                     const GumbelLpParams<T>& p, SlotScratch<T>& b, T& lp, T& lse) {
  T* z = b.z.data();
  int64_t best;
  const int status = gather_soft_row(x, id, gp, k, V, p.inv_temp, z, best);
  if (status != kLpOk) return status;
  const T m = z[best];
  T s = T(0);
  for (int64_t j = 0; j < k; ++j) {
    if (!sk_isnan(z[j]) && z[j] != -sk_inf<T>()) s += std::exp(z[j] - m);
  }
  lse = m + std::log(s);
  T sum_f = T(0), dfdu;
  int64_t count = 0;
  for (int64_t j = 0; j < k; ++j) {
    if (sk_isnan(z[j])) continue;
    const T l = z[j] - lse;
    if (!gumbel_slot_counts(l, p)) continue;
    sum_f += gumbel_slot_term(gp[j], l, p, dfdu);
    ++count;
  }
  if (count == 0) {
    sum_f = gumbel_slot_term(gp[best], z[best] - lse, p, dfdu);
    count = 1;
  }
  lp = sum_f / static_cast<T>(count);
  return status;
}

template <typename scalar_t>
void gumbel_backward_kernel(const at::Tensor& logits, const SlotRowsBackwardCall& c,
                            const GumbelLpParams<acc_t<scalar_t>>& p, bool g_prime_grad) {
  using T = acc_t<scalar_t>;
  const SlotRows<scalar_t> r(logits, c);
  const T* GR = c.grad.data_ptr<T>();
  const T* LSE = c.lse.data_ptr<T>();
  scalar_t* GL = c.grad_logits.data_ptr<scalar_t>();
  T* GG = g_prime_grad ? c.grad_draws.data_ptr<T>() : nullptr;
  const int64_t V = r.V, k = r.k;
  at::parallel_for(0, r.N, row_grain(V), [&](int64_t begin, int64_t end) {
    std::vector<T> z(k), a(k);
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* x = r.x(n);
      const int64_t* id = r.id(n);
      const T* gp = r.draws(n);
      scalar_t* gl = GL + n * V;
      T* gg = GG ? GG + n * k : nullptr;
      const T g = GR[n], lse = LSE[n];
      const bool is_hard = r.is_hard(n);
      int64_t best = -1;
      bool bad = sk_isnan(lse);
      if (!bad && !is_hard) bad = gather_soft_row(x, id, gp, k, V, p.inv_temp, z.data(), best) != kLpOk;
      if (!bad && is_hard) bad = id[0] < 0 || id[0] >= V;
      if (bad) {
        // A row the forward flagged: NaN gradients (never an out-of-bounds read).
        std::fill(gl, gl + V, static_cast<scalar_t>(sk_nan<T>()));
        if (gg) std::fill(gg, gg + k, sk_nan<T>());
        continue;
      }
      if (is_hard) {
        hard_row_grad(x, id[0], V, p.inv_temp, lse, g, gl);
        if (gg) std::fill(gg, gg + k, T(0));
        continue;
      }
      std::fill(gl, gl + V, static_cast<scalar_t>(0));
      int64_t count = 0;
      for (int64_t j = 0; j < k; ++j) {
        a[j] = T(0);
        if (!sk_isnan(z[j]) && gumbel_slot_counts(z[j] - lse, p)) ++count;
      }
      T dfdu;
      if (count == 0) {
        gumbel_slot_term(gp[best], z[best] - lse, p, dfdu);
        a[best] = g * dfdu;
      } else {
        const T inv_count = T(1) / static_cast<T>(count);
        for (int64_t j = 0; j < k; ++j) {
          if (sk_isnan(z[j])) continue;
          const T l = z[j] - lse;
          if (!gumbel_slot_counts(l, p)) continue;
          gumbel_slot_term(gp[j], l, p, dfdu);
          a[j] = g * dfdu * inv_count;
        }
      }
      T a_sum = T(0);
      for (int64_t j = 0; j < k; ++j) a_sum += a[j];
      for (int64_t j = 0; j < k; ++j) {
        if (gg) gg[j] = a[j] / p.scale;
        if (sk_isnan(z[j])) continue;
        const T gz = gumbel_grad_z(a[j], z[j] - lse, a_sum, p) * p.inv_temp;
        // A repeated id accumulates (soft_embed never repeats ids within a row).
        gl[id[j]] = static_cast<scalar_t>(static_cast<T>(gl[id[j]]) + gz);
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// slot_logprob (TopKDirichlet / WeightGaussian)

// Gathers a soft row's k slot logits z and their max m; returns the row's status bits.
template <typename scalar_t, typename T>
int gather_slot_row(const scalar_t* x, const int64_t* id, const T* dr, int64_t k, int64_t V,
                    const SlotLpParams<T>& p, T* z, T& m) {
  int status = kLpOk;
  m = -sk_inf<T>();
  for (int64_t j = 0; j < k; ++j) {
    status |= slot_draw_status(dr[j], p.kind);
    if (id[j] < 0 || id[j] >= V) {
      status |= kLpBadId;
      z[j] = sk_nan<T>();
      continue;
    }
    z[j] = static_cast<T>(x[id[j]]) * p.inv_temp;
    status |= logit_status(z[j]);
    if (z[j] > m) m = z[j];
  }
  if (!(status & kLpSlotFatal) && m == -sk_inf<T>()) status |= kLpAllMasked;
  return status;
}

// A scored soft row: p_j, v_j, d v_j / d p_j and M (count, and the fallback slot when count = 0)
// from the gathered z and the row's lse. Returns log pi.
template <typename T>
T score_slot_row(const T* z, const T* dr, int64_t k, T lse, const SlotLpParams<T>& p, T* pr,
                 T* v, T* dv, int64_t& count, int64_t& best) {
  count = 0;
  best = 0;
  T sum_v = T(0), best_key = -sk_inf<T>();
  for (int64_t j = 0; j < k; ++j) {
    pr[j] = sk_exp(z[j] - lse);
    v[j] = slot_value(pr[j], dr[j], p, dv[j]);
    if (slot_counts(pr[j], v[j], p)) {
      sum_v += v[j];
      ++count;
    }
    const T key = slot_fallback_key(pr[j], v[j]);
    if (key > best_key) {
      best_key = key;
      best = j;
    }
  }
  return count > 0 ? sum_v / static_cast<T>(count) : v[best];
}

template <typename T>
T slot_row_lse(const T* z, int64_t k, T m) {
  T s = T(0);
  for (int64_t j = 0; j < k; ++j) {
    if (z[j] != -sk_inf<T>()) s += std::exp(z[j] - m);
  }
  return m + std::log(s);
}

// A soft row of slot_logprob (csrc/common/logprob.h). Returns the status; lp / lse are set
// unless a fatal bit is.
template <typename scalar_t, typename T>
int soft_row_forward(const scalar_t* x, const int64_t* id, const T* dr, int64_t k, int64_t V,
                     const SlotLpParams<T>& p, SlotScratch<T>& b, T& lp, T& lse) {
  T m;
  const int status = gather_slot_row(x, id, dr, k, V, p, b.z.data(), m);
  if (status & kLpSlotFatal) return status;
  lse = slot_row_lse(b.z.data(), k, m);
  int64_t count, best;
  lp = score_slot_row(b.z.data(), dr, k, lse, p, b.pr.data(), b.v.data(), b.dv.data(), count,
                      best);
  return status;
}

// The forward of both slot-row ops: P (GumbelLpParams / SlotLpParams) picks the soft-row rule;
// a soft row costs about `slot_cost` values a slot (parallel_for grain).
template <typename scalar_t, typename P>
void slot_rows_forward(const at::Tensor& logits, SlotRowsCall& c, const P& p, int64_t slot_cost) {
  using T = acc_t<scalar_t>;
  const SlotRows<scalar_t> r(logits, c);
  const SlotRowsOut<T> out(c.outs);
  const int64_t V = r.V, k = r.k;
  at::parallel_for(0, r.N, row_grain(r.hard ? V : slot_cost * k), [&](int64_t begin,
                                                                       int64_t end) {
    SlotScratch<T> b(k);
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* x = r.x(n);
      const int64_t* id = r.id(n);
      int status = kLpOk;
      T lp = sk_nan<T>(), lse = sk_nan<T>();
      if (r.is_hard(n)) {
        hard_row_logprob(x, id[0], V, p.inv_temp, status, lp, lse);
      } else {
        status = soft_row_forward(x, id, r.draws(n), k, V, p, b, lp, lse);
      }
      out.put(n, lp, lse, status);
    }
  });
}

template <typename scalar_t>
void slot_backward_kernel(const at::Tensor& logits, const SlotRowsBackwardCall& c,
                          const SlotLpParams<acc_t<scalar_t>>& p) {
  using T = acc_t<scalar_t>;
  const SlotRows<scalar_t> r(logits, c);
  const T* GR = c.grad.data_ptr<T>();
  const T* LSE = c.lse.data_ptr<T>();
  scalar_t* GL = c.grad_logits.data_ptr<scalar_t>();
  const int64_t V = r.V, k = r.k;
  at::parallel_for(0, r.N, row_grain(V), [&](int64_t begin, int64_t end) {
    std::vector<T> z(k), pr(k), v(k), dv(k);
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* x = r.x(n);
      const int64_t* id = r.id(n);
      const T* dr = r.draws(n);
      scalar_t* gl = GL + n * V;
      const T g = GR[n], lse = LSE[n];
      const bool is_hard = r.is_hard(n);
      bool bad = sk_isnan(lse);
      if (!bad && is_hard) bad = id[0] < 0 || id[0] >= V;
      if (!bad && !is_hard) {
        T m;
        bad = (gather_slot_row(x, id, dr, k, V, p, z.data(), m) & kLpSlotFatal) != 0;
      }
      if (bad) {
        // A row the forward flagged: NaN gradients (never an out-of-bounds read).
        std::fill(gl, gl + V, static_cast<scalar_t>(sk_nan<T>()));
        continue;
      }
      if (is_hard) {
        hard_row_grad(x, id[0], V, p.inv_temp, lse, g, gl);
        continue;
      }
      std::fill(gl, gl + V, static_cast<scalar_t>(0));
      int64_t count, best;
      score_slot_row(z.data(), dr, k, lse, p, pr.data(), v.data(), dv.data(), count, best);
      // b_j (in dv) and sum_i p_i b_i.
      T pb = T(0);
      for (int64_t j = 0; j < k; ++j) {
        const bool in_m = count > 0 ? slot_counts(pr[j], v[j], p) : j == best;
        dv[j] = in_m ? g * dv[j] / static_cast<T>(count > 0 ? count : 1) : T(0);
        pb += pr[j] * dv[j];
      }
      for (int64_t j = 0; j < k; ++j) {
        const T gz = pr[j] * (dv[j] - pb) * p.inv_temp;
        // A repeated id accumulates (soft_embed never repeats ids within a row).
        gl[id[j]] = static_cast<scalar_t>(static_cast<T>(gl[id[j]]) + gz);
      }
    }
  });
}

GumbelLpOutputs gumbel_logprob_cpu(SK_GUMBEL_LP_CPP_PARAMS) {
  SlotRowsCall c = prepare_gumbel_lp_forward(SK_GUMBEL_LP_CPP_ARGS);
  if (c.sh.N == 0) return c.outs;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(),
                                  "gumbel_logprob", [&] {
    const auto p = gumbel_lp_params<acc_t<scalar_t>>(SK_GUMBEL_LP_PARAM_VALUES);
    slot_rows_forward<scalar_t>(logits, c, p, 8);
  });
  return c.outs;
}

std::tuple<at::Tensor, at::Tensor> gumbel_logprob_backward_cpu(SK_GUMBEL_LP_BACKWARD_CPP_PARAMS) {
  SlotRowsBackwardCall c = prepare_gumbel_lp_backward(SK_GUMBEL_LP_BACKWARD_CPP_ARGS);
  if (c.sh.N == 0) return {c.grad_logits, c.grad_draws};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(),
                                  "gumbel_logprob_backward", [&] {
    const auto p = gumbel_lp_params<acc_t<scalar_t>>(SK_GUMBEL_LP_PARAM_VALUES);
    gumbel_backward_kernel<scalar_t>(logits, c, p, g_prime_grad);
  });
  return {c.grad_logits, c.grad_draws};
}

GumbelLpOutputs slot_logprob_cpu(SK_SLOT_LP_CPP_PARAMS) {
  SlotRowsCall c = prepare_slot_lp_forward(SK_SLOT_LP_CPP_ARGS);
  if (c.sh.N == 0) return c.outs;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(),
                                  "slot_logprob", [&] {
    const auto p = slot_lp_params<acc_t<scalar_t>>(kind, SK_SLOT_LP_PARAM_VALUES);
    slot_rows_forward<scalar_t>(logits, c, p, 16);
  });
  return c.outs;
}

at::Tensor slot_logprob_backward_cpu(SK_SLOT_LP_BACKWARD_CPP_PARAMS) {
  SlotRowsBackwardCall c = prepare_slot_lp_backward(SK_SLOT_LP_BACKWARD_CPP_ARGS);
  if (c.sh.N == 0) return c.grad_logits;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(),
                                  "slot_logprob_backward", [&] {
    const auto p = slot_lp_params<acc_t<scalar_t>>(kind, SK_SLOT_LP_PARAM_VALUES);
    slot_backward_kernel<scalar_t>(logits, c, p);
  });
  return c.grad_logits;
}

// ---------------------------------------------------------------------------------------------
// gaussian_logprob

template <typename scalar_t>
acc_t<scalar_t> row_sq_dist(const scalar_t* x, const scalar_t* m, int64_t D) {
  using T = acc_t<scalar_t>;
  T q = T(0);
  int64_t i = 0;
  if constexpr (!std::is_same_v<scalar_t, double>) {
    constexpr int64_t W = FVec::size();
    FVec v0(0.f), v1(0.f);
    for (; i + 2 * W <= D; i += 2 * W) {
      FVec xl, xh, ml, mh;
      load2(x + i, xl, xh);
      load2(m + i, ml, mh);
      const FVec dl = xl - ml, dh = xh - mh;
      v0 = at::vec::fmadd(dl, dl, v0);
      v1 = at::vec::fmadd(dh, dh, v1);
    }
    q = hsum(v0 + v1);
  }
  for (; i < D; ++i) {
    const T d = static_cast<T>(x[i]) - static_cast<T>(m[i]);
    q += d * d;
  }
  return q;
}

std::tuple<at::Tensor, at::Tensor> gaussian_logprob_cpu(SK_GAUSSIAN_LP_CPP_PARAMS) {
  GaussianLpCall c = prepare_gaussian_lp_forward(x, mean, sigma_in);
  const GaussianLpShape& sh = c.sh;
  if (sh.N == 0) return c.outs;
  auto& [logprob, sqdist] = c.outs;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(),
                                  "gaussian_logprob", [&] {
    using T = acc_t<scalar_t>;
    const scalar_t* X = x.data_ptr<scalar_t>();
    const scalar_t* M = mean.data_ptr<scalar_t>();
    const T* S = c.sigma_rows ? c.sigma_rows->data_ptr<T>() : nullptr;
    T* LP = logprob.data_ptr<T>();
    T* Q = sqdist.data_ptr<T>();
    const int64_t D = sh.D;
    at::parallel_for(0, sh.N, row_grain(D), [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const T q = row_sq_dist(X + row_offset(sh.x_rows, n), M + row_offset(sh.mean_rows, n), D);
        const T s = S ? S[n] : static_cast<T>(sigma);
        Q[n] = q;
        LP[n] = gaussian_logprob_value(q, s, D);
      }
    });
  });
  return c.outs;
}

std::tuple<at::Tensor, at::Tensor> gaussian_logprob_backward_cpu(SK_GAUSSIAN_LP_BACKWARD_CPP_PARAMS) {
  GaussianLpBackwardCall c =
      prepare_gaussian_lp_backward(grad_in, x, mean, sigma_in, x_grad, mean_grad);
  if (c.idle) return {c.gx, c.gm};
  const GaussianLpShape& sh = c.sh;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(),
                                  "gaussian_logprob_backward", [&] {
    using T = acc_t<scalar_t>;
    const T* GR = c.grad.data_ptr<T>();
    const T* S = c.sigma_rows ? c.sigma_rows->data_ptr<T>() : nullptr;
    const scalar_t* X = x.data_ptr<scalar_t>();
    const scalar_t* M = mean.data_ptr<scalar_t>();
    scalar_t* GX = x_grad ? c.gx.data_ptr<scalar_t>() : nullptr;
    scalar_t* GM = mean_grad ? c.gm.data_ptr<scalar_t>() : nullptr;
    const int64_t D = sh.D;
    at::parallel_for(0, sh.N, row_grain(D), [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        const scalar_t* xr = X + row_offset(sh.x_rows, n);
        const scalar_t* mr = M + row_offset(sh.mean_rows, n);
        const T s = S ? S[n] : static_cast<T>(sigma);
        // d/dx = c (x - mean), d/dmean = -c (x - mean); NaN for a bad sigma.
        const T c = gaussian_grad_factor(GR[n], s);
        scalar_t* gxr = GX ? GX + n * D : nullptr;
        scalar_t* gmr = GM ? GM + n * D : nullptr;
        int64_t i = 0;
        if constexpr (!std::is_same_v<scalar_t, double>) {
          constexpr int64_t W = FVec::size();
          const FVec vc(c), vnc(-c);
          for (; i + 2 * W <= D; i += 2 * W) {
            FVec xl, xh, ml, mh;
            load2(xr + i, xl, xh);
            load2(mr + i, ml, mh);
            const FVec dl = xl - ml, dh = xh - mh;
            if (gxr) store2(gxr + i, dl * vc, dh * vc);
            if (gmr) store2(gmr + i, dl * vnc, dh * vnc);
          }
        }
        for (; i < D; ++i) {
          const T d = static_cast<T>(xr[i]) - static_cast<T>(mr[i]);
          if (gxr) gxr[i] = static_cast<scalar_t>(c * d);
          if (gmr) gmr[i] = static_cast<scalar_t>(-c * d);
        }
      }
    });
  });
  return {c.gx, c.gm};
}

}  // namespace

TORCH_LIBRARY_IMPL(softkernels, CPU, m) { SK_LOGPROB_IMPLS(m, cpu); }

}  // namespace softkernels::cpu
