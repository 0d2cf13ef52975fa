// Host-side glue of gumbel_logprob / gaussian_logprob shared by the CPU and CUDA implementations:
// internal invariant checks, the row indexers, output allocation. Light ATen headers only, so that
// .cu files including it compile quickly. User-facing validation (naming arguments and values)
// happens first in softkernels/logprob.py; these checks only stop a direct call of the raw op from
// reading out of bounds.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Optional.h>

#include <cmath>
#include <limits>
#include <string>
#include <tuple>
#include <vector>

#include "common/logprob.h"

namespace softkernels {

using LpOptTensor = std::optional<at::Tensor>;

inline at::ScalarType lp_stats_dtype(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Indexer over the first `nbatch` dimensions of t.
inline RowIndexer make_row_indexer(const at::Tensor& t, int64_t nbatch) {
  TORCH_CHECK(nbatch <= kMaxBatchDims, "softkernels: at most ", kMaxBatchDims,
              " batch dimensions, got ", nbatch);
  RowIndexer ix{};
  ix.ndim = static_cast<int>(nbatch);
  for (int64_t d = 0; d < nbatch; ++d) {
    ix.sizes[d] = t.size(d);
    ix.strides[d] = t.stride(d);
  }
  return ix;
}

inline std::vector<int64_t> batch_sizes(const at::Tensor& t, int64_t nbatch) {
  return std::vector<int64_t>(t.sizes().begin(), t.sizes().begin() + nbatch);
}

inline int64_t batch_numel(const at::Tensor& t, int64_t nbatch) {
  int64_t n = 1;
  for (int64_t d = 0; d < nbatch; ++d) n *= t.size(d);
  return n;
}

// An optional per-row tensor: contiguous, of dtype `dtype`, shaped like the first nb dims of ref.
inline void check_rows_like(const LpOptTensor& t, const at::Tensor& ref, int64_t nb,
                            at::ScalarType dtype, const char* what) {
  if (!t.has_value()) return;
  bool ok = t->scalar_type() == dtype && t->is_contiguous() && t->dim() == nb &&
            t->device() == ref.device();
  for (int64_t d = 0; ok && d < nb; ++d) ok = t->size(d) == ref.size(d);
  TORCH_CHECK(ok, "softkernels: ", what, " must be a contiguous ", dtype, " tensor of the batch "
              "shape ", ref.sizes().slice(0, nb), ", got ", t->scalar_type(), " ", t->sizes());
}

// ---------------------------------------------------------------------------------------------
// gumbel_logprob

struct GumbelLpShape {
  int64_t N;  // rows (product of the batch dimensions)
  int64_t V;
  int64_t k;
  RowIndexer logits_rows;
};

// Shared by gumbel_logprob and slot_logprob: logits [..., V], ids [..., k], the per-slot noise
// [..., k] (`noise`: its argument name) in the stats dtype, hard [...].
inline GumbelLpShape slot_rows_check(const char* op, const char* noise, const at::Tensor& logits,
                                     const at::Tensor& ids, const at::Tensor& g_prime,
                                     const LpOptTensor& hard) {
  TORCH_CHECK(logits.dim() >= 1, "softkernels.", op, ": logits must be [..., V]");
  const int64_t nb = logits.dim() - 1;
  TORCH_CHECK(logits.stride(nb) == 1 || logits.size(nb) <= 1,
              "softkernels.", op, ": logits' last dimension must be contiguous");
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble ||
                  logits.scalar_type() == at::kBFloat16 || logits.scalar_type() == at::kHalf,
              "softkernels.", op, ": logits dtype");
  TORCH_CHECK(ids.dim() == nb + 1 && ids.scalar_type() == at::kLong && ids.is_contiguous(),
              "softkernels.", op, ": ids must be a contiguous int64 [..., k] tensor");
  TORCH_CHECK(g_prime.sizes() == ids.sizes() && g_prime.is_contiguous() &&
                  g_prime.scalar_type() == lp_stats_dtype(logits),
              "softkernels.", op, ": ", noise, " must be contiguous, shaped like ids, in the "
              "logits' stats dtype");
  for (int64_t d = 0; d < nb; ++d) {
    TORCH_CHECK(ids.size(d) == logits.size(d),
                "softkernels.", op, ": ids' batch shape differs from logits'");
  }
  TORCH_CHECK(ids.device() == logits.device() && g_prime.device() == logits.device(),
              "softkernels.", op, ": inputs must be on one device");
  check_rows_like(hard, logits, nb, at::kBool, (std::string(op) + ": hard").c_str());
  GumbelLpShape s;
  s.N = batch_numel(logits, nb);
  s.V = logits.size(nb);
  s.k = ids.size(nb);
  TORCH_CHECK(s.V >= 1 && s.k >= 1 && s.k <= kMaxK,
              "softkernels.", op, ": need V >= 1 and 1 <= k <= ", kMaxK);
  s.logits_rows = make_row_indexer(logits, nb);
  return s;
}

template <typename T>
GumbelLpParams<T> gumbel_lp_params(double temperature, double scale, double clamp_lo,
                                   double clamp_hi, double min_weight) {
  TORCH_CHECK(temperature > 0 && scale > 0 && clamp_lo < clamp_hi && min_weight >= 0 &&
                  min_weight < 1,
              "softkernels.gumbel_logprob: parameter out of range");
  GumbelLpParams<T> p;
  p.inv_temp = static_cast<T>(1.0 / temperature);
  p.scale = static_cast<T>(scale);
  p.lo = static_cast<T>(clamp_lo);
  p.hi = static_cast<T>(clamp_hi);
  p.log_min_weight = min_weight > 0 ? static_cast<T>(std::log(min_weight))
                                    : -std::numeric_limits<T>::infinity();
  return p;
}

// (logprob [...], lse [...], status int32 [...]).
using GumbelLpOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

inline GumbelLpOutputs gumbel_lp_allocate(const at::Tensor& logits) {
  const auto sizes = batch_sizes(logits, logits.dim() - 1);
  const auto fopt = logits.options().dtype(lp_stats_dtype(logits));
  return GumbelLpOutputs{at::empty(sizes, fopt), at::empty(sizes, fopt),
                         at::empty(sizes, logits.options().dtype(at::kInt))};
}

inline void gumbel_lp_backward_check(const at::Tensor& grad, const at::Tensor& logits,
                                     const at::Tensor& lse,
                                     const char* op = "gumbel_logprob_backward") {
  const int64_t nb = logits.dim() - 1;
  const auto sizes = batch_sizes(logits, nb);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(sizes) && grad.is_contiguous() &&
                  grad.scalar_type() == lp_stats_dtype(logits) &&
                  grad.device() == logits.device(),
              "softkernels.", op, ": grad must be contiguous [...] in the stats dtype");
  TORCH_CHECK(lse.sizes() == at::IntArrayRef(sizes) && lse.is_contiguous() &&
                  lse.scalar_type() == lp_stats_dtype(logits) && lse.device() == logits.device(),
              "softkernels.", op, ": lse must be the forward's");
}

// ---------------------------------------------------------------------------------------------
// slot_logprob (TopKDirichlet / WeightGaussian)

template <typename T>
SlotLpParams<T> slot_lp_params(int64_t kind, double temperature, double alpha, double clamp_lo,
                               double clamp_hi, double sigma, double radius, double min_weight) {
  TORCH_CHECK(kind == kNoiseTopKDirichlet || kind == kNoiseWeightGaussian,
              "softkernels.slot_logprob: bad noise kind ", kind, " (need ", kNoiseTopKDirichlet,
              " TopKDirichlet or ", kNoiseWeightGaussian, " WeightGaussian)");
  TORCH_CHECK(temperature > 0 && alpha > 0 && clamp_lo < clamp_hi && sigma > 0 &&
                  sigma < std::numeric_limits<double>::infinity() && radius > 0 &&
                  min_weight >= 0 && min_weight < 1,
              "softkernels.slot_logprob: parameter out of range");
  SlotLpParams<T> p;
  p.kind = static_cast<int>(kind);
  p.inv_temp = static_cast<T>(1.0 / temperature);
  p.alpha = static_cast<T>(alpha);
  p.lo = static_cast<T>(clamp_lo);
  p.hi = static_cast<T>(clamp_hi);
  p.var = static_cast<T>(sigma * sigma);
  p.two_var = static_cast<T>(2.0 * sigma * sigma);
  p.log_norm = static_cast<T>(std::log(sigma) + 0.91893853320467274178032973640562);
  p.radius = static_cast<T>(radius);
  p.min_weight = static_cast<T>(min_weight);
  return p;
}

// ---------------------------------------------------------------------------------------------
// gaussian_logprob

struct GaussianLpShape {
  int64_t N;
  int64_t D;
  RowIndexer x_rows;
  RowIndexer mean_rows;
};

inline GaussianLpShape gaussian_lp_check(const at::Tensor& x, const at::Tensor& mean,
                                         const LpOptTensor& sigma_rows) {
  TORCH_CHECK(x.dim() >= 1 && x.sizes() == mean.sizes(),
              "softkernels.gaussian_logprob: x and mean must both be [..., D]");
  TORCH_CHECK(x.scalar_type() == mean.scalar_type(),
              "softkernels.gaussian_logprob: x and mean must have one dtype");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble ||
                  x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf,
              "softkernels.gaussian_logprob: x dtype");
  TORCH_CHECK(x.device() == mean.device(), "softkernels.gaussian_logprob: one device");
  const int64_t nb = x.dim() - 1;
  TORCH_CHECK((x.stride(nb) == 1 || x.size(nb) <= 1) && (mean.stride(nb) == 1 || mean.size(nb) <= 1),
              "softkernels.gaussian_logprob: the last dimension must be contiguous");
  check_rows_like(sigma_rows, x, nb, lp_stats_dtype(x), "gaussian_logprob: sigma_rows");
  GaussianLpShape s;
  s.N = batch_numel(x, nb);
  s.D = x.size(nb);
  s.x_rows = make_row_indexer(x, nb);
  s.mean_rows = make_row_indexer(mean, nb);
  return s;
}

// (logprob [...], sqdist [...]) in the stats dtype.
inline std::tuple<at::Tensor, at::Tensor> gaussian_lp_allocate(const at::Tensor& x) {
  const auto sizes = batch_sizes(x, x.dim() - 1);
  const auto fopt = x.options().dtype(lp_stats_dtype(x));
  return {at::empty(sizes, fopt), at::empty(sizes, fopt)};
}

inline void gaussian_lp_backward_check(const at::Tensor& grad, const at::Tensor& x) {
  const auto sizes = batch_sizes(x, x.dim() - 1);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(sizes) && grad.is_contiguous() &&
                  grad.scalar_type() == lp_stats_dtype(x) && grad.device() == x.device(),
              "softkernels.gaussian_logprob_backward: grad must be contiguous [...] in the stats "
              "dtype");
}

// ---------------------------------------------------------------------------------------------
// The host preambles, one per op, shared by the CPU kernels and the CUDA launchers: contiguous
// inputs, every check above, and the outputs.

// The ops' parameter lists, once for the CPU kernels and the CUDA launchers (schemas:
// csrc/ops.cpp).
#define SK_GUMBEL_LP_CPP_PARAMS                                                                   \
  const at::Tensor &logits, const at::Tensor &ids_in, const at::Tensor &g_prime_in,               \
      const LpOptTensor &hard_in, double temperature, double scale, double clamp_lo,              \
      double clamp_hi, double min_weight
#define SK_GUMBEL_LP_BACKWARD_CPP_PARAMS                                                          \
  const at::Tensor &grad_in, const at::Tensor &logits, const at::Tensor &ids_in,                  \
      const at::Tensor &g_prime_in, const LpOptTensor &hard_in, const at::Tensor &lse_in,         \
      double temperature, double scale, double clamp_lo, double clamp_hi, double min_weight,      \
      bool g_prime_grad
#define SK_SLOT_LP_CPP_PARAMS                                                                     \
  const at::Tensor &logits, const at::Tensor &ids_in, const at::Tensor &draws_in,                 \
      const LpOptTensor &hard_in, int64_t kind, double temperature, double alpha,                 \
      double clamp_lo, double clamp_hi, double sigma, double radius, double min_weight
#define SK_SLOT_LP_BACKWARD_CPP_PARAMS                                                            \
  const at::Tensor &grad_in, const at::Tensor &logits, const at::Tensor &ids_in,                  \
      const at::Tensor &draws_in, const LpOptTensor &hard_in, const at::Tensor &lse_in,           \
      int64_t kind, double temperature, double alpha, double clamp_lo, double clamp_hi,           \
      double sigma, double radius, double min_weight
#define SK_SLOT_LP_PARAM_VALUES temperature, alpha, clamp_lo, clamp_hi, sigma, radius, min_weight
#define SK_GUMBEL_LP_PARAM_VALUES temperature, scale, clamp_lo, clamp_hi, min_weight
// The arguments of the lists above, to pass them on.
#define SK_GUMBEL_LP_CPP_ARGS logits, ids_in, g_prime_in, hard_in, SK_GUMBEL_LP_PARAM_VALUES
#define SK_GUMBEL_LP_BACKWARD_CPP_ARGS \
  grad_in, logits, ids_in, g_prime_in, hard_in, lse_in, SK_GUMBEL_LP_PARAM_VALUES, g_prime_grad
#define SK_SLOT_LP_CPP_ARGS logits, ids_in, draws_in, hard_in, kind, SK_SLOT_LP_PARAM_VALUES
#define SK_SLOT_LP_BACKWARD_CPP_ARGS \
  grad_in, logits, ids_in, draws_in, hard_in, lse_in, kind, SK_SLOT_LP_PARAM_VALUES
#define SK_GAUSSIAN_LP_CPP_PARAMS                                                                 \
  const at::Tensor &x, const at::Tensor &mean, const LpOptTensor &sigma_in, double sigma
#define SK_GAUSSIAN_LP_BACKWARD_CPP_PARAMS                                                        \
  const at::Tensor &grad_in, const at::Tensor &x, const at::Tensor &mean,                         \
      const LpOptTensor &sigma_in, double sigma, bool x_grad, bool mean_grad

// Registers the six log-prob ops of one backend: the functions <op>_<suffix> (cpu, cuda).
#define SK_LOGPROB_IMPLS(m, suffix)                                          \
  m.impl("gumbel_logprob", &gumbel_logprob_##suffix);                        \
  m.impl("gumbel_logprob_backward", &gumbel_logprob_backward_##suffix);      \
  m.impl("gaussian_logprob", &gaussian_logprob_##suffix);                    \
  m.impl("gaussian_logprob_backward", &gaussian_logprob_backward_##suffix); \
  m.impl("slot_logprob", &slot_logprob_##suffix);                            \
  m.impl("slot_logprob_backward", &slot_logprob_backward_##suffix)

// One preamble for both slot-row ops: gumbel_logprob's per-slot draws are its g_prime, the slot
// op's are the Dirichlet / Gaussian draws; `draws_name` names them in the error messages.
struct SlotRowsCall {
  at::Tensor ids, draws;
  LpOptTensor hard;
  GumbelLpShape sh;
  const bool* hard_p;
  GumbelLpOutputs outs;  // forward only
};

inline SlotRowsCall prepare_slot_rows(const char* op, const char* draws_name,
                                      const at::Tensor& logits, const at::Tensor& ids_in,
                                      const at::Tensor& draws_in, const LpOptTensor& hard_in) {
  SlotRowsCall c;
  c.ids = ids_in.contiguous();
  c.draws = draws_in.contiguous();
  c.hard = hard_in ? LpOptTensor(hard_in->contiguous()) : LpOptTensor();
  c.sh = slot_rows_check(op, draws_name, logits, c.ids, c.draws, c.hard);
  c.hard_p = c.hard ? c.hard->data_ptr<bool>() : nullptr;
  return c;
}

inline SlotRowsCall prepare_slot_rows_forward(const char* op, const char* draws_name,
                                              const at::Tensor& logits, const at::Tensor& ids_in,
                                              const at::Tensor& draws_in,
                                              const LpOptTensor& hard_in) {
  SlotRowsCall c = prepare_slot_rows(op, draws_name, logits, ids_in, draws_in, hard_in);
  c.outs = gumbel_lp_allocate(logits);
  return c;
}

// grad_draws is allocated only when asked for (gumbel_logprob's g_prime gradient), else empty.
struct SlotRowsBackwardCall : SlotRowsCall {
  at::Tensor grad, lse, grad_logits, grad_draws;
};

inline SlotRowsBackwardCall prepare_slot_rows_backward(
    const char* op, const char* draws_name, const at::Tensor& grad_in, const at::Tensor& logits,
    const at::Tensor& ids_in, const at::Tensor& draws_in, const LpOptTensor& hard_in,
    const at::Tensor& lse_in, bool draws_grad) {
  SlotRowsBackwardCall c;
  static_cast<SlotRowsCall&>(c) =
      prepare_slot_rows(op, draws_name, logits, ids_in, draws_in, hard_in);
  c.grad = grad_in.contiguous();
  c.lse = lse_in.contiguous();
  gumbel_lp_backward_check(c.grad, logits, c.lse, op);
  c.grad_logits = at::empty(logits.sizes(), logits.options());
  c.grad_draws = draws_grad ? at::empty(c.draws.sizes(), c.draws.options())
                            : at::empty({0}, c.draws.options());
  return c;
}

// The four slot-row preambles: the scalar parameters are checked first, so that a bad value
// never passes (not even with no rows).
inline SlotRowsCall prepare_gumbel_lp_forward(SK_GUMBEL_LP_CPP_PARAMS) {
  (void)gumbel_lp_params<double>(SK_GUMBEL_LP_PARAM_VALUES);
  return prepare_slot_rows_forward("gumbel_logprob", "g_prime", logits, ids_in, g_prime_in,
                                   hard_in);
}

inline SlotRowsBackwardCall prepare_gumbel_lp_backward(SK_GUMBEL_LP_BACKWARD_CPP_PARAMS) {
  (void)gumbel_lp_params<double>(SK_GUMBEL_LP_PARAM_VALUES);
  return prepare_slot_rows_backward("gumbel_logprob_backward", "g_prime", grad_in, logits,
                                    ids_in, g_prime_in, hard_in, lse_in, g_prime_grad);
}

inline SlotRowsCall prepare_slot_lp_forward(SK_SLOT_LP_CPP_PARAMS) {
  (void)slot_lp_params<double>(kind, SK_SLOT_LP_PARAM_VALUES);
  return prepare_slot_rows_forward("slot_logprob", "draws", logits, ids_in, draws_in, hard_in);
}

inline SlotRowsBackwardCall prepare_slot_lp_backward(SK_SLOT_LP_BACKWARD_CPP_PARAMS) {
  (void)slot_lp_params<double>(kind, SK_SLOT_LP_PARAM_VALUES);
  return prepare_slot_rows_backward("slot_logprob_backward", "draws", grad_in, logits, ids_in,
                                    draws_in, hard_in, lse_in, false);
}

struct GaussianLpCall {
  LpOptTensor sigma_rows;
  GaussianLpShape sh;
  std::tuple<at::Tensor, at::Tensor> outs;  // forward only: (logprob, sqdist)
};

inline GaussianLpCall prepare_gaussian_lp(const at::Tensor& x, const at::Tensor& mean,
                                          const LpOptTensor& sigma_in) {
  GaussianLpCall c;
  c.sigma_rows = sigma_in ? LpOptTensor(sigma_in->contiguous()) : LpOptTensor();
  c.sh = gaussian_lp_check(x, mean, c.sigma_rows);
  return c;
}

inline GaussianLpCall prepare_gaussian_lp_forward(const at::Tensor& x, const at::Tensor& mean,
                                                  const LpOptTensor& sigma_in) {
  GaussianLpCall c = prepare_gaussian_lp(x, mean, sigma_in);
  c.outs = gaussian_lp_allocate(x);
  return c;
}

struct GaussianLpBackwardCall : GaussianLpCall {
  at::Tensor grad, gx, gm;
  bool idle;  // no row or no gradient asked for: gx / gm are returned as allocated
};

inline GaussianLpBackwardCall prepare_gaussian_lp_backward(const at::Tensor& grad_in,
                                                           const at::Tensor& x,
                                                           const at::Tensor& mean,
                                                           const LpOptTensor& sigma_in,
                                                           bool x_grad, bool mean_grad) {
  GaussianLpBackwardCall c;
  static_cast<GaussianLpCall&>(c) = prepare_gaussian_lp(x, mean, sigma_in);
  c.grad = grad_in.contiguous();
  gaussian_lp_backward_check(c.grad, x);
  c.gx = x_grad ? at::empty(x.sizes(), x.options()) : at::empty({0}, x.options());
  c.gm = mean_grad ? at::empty(x.sizes(), x.options()) : at::empty({0}, x.options());
  c.idle = c.sh.N == 0 || (!x_grad && !mean_grad);
  return c;
}

}  // namespace softkernels
