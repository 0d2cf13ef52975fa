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

// ---------------------------------------------------------------------------------------------
// gumbel_logprob

struct GumbelLpShape {
  int64_t N;  // rows (product of the batch dimensions)
  int64_t V;
  int64_t k;
  RowIndexer logits_rows;
};

inline GumbelLpShape gumbel_lp_check(const at::Tensor& logits, const at::Tensor& ids,
                                     const at::Tensor& g_prime, const LpOptTensor& hard) {
  TORCH_CHECK(logits.dim() >= 1, "softkernels.gumbel_logprob: logits must be [..., V]");
  const int64_t nb = logits.dim() - 1;
  TORCH_CHECK(logits.stride(nb) == 1 || logits.size(nb) <= 1,
              "softkernels.gumbel_logprob: logits' last dimension must be contiguous");
  TORCH_CHECK(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble ||
                  logits.scalar_type() == at::kBFloat16 || logits.scalar_type() == at::kHalf,
              "softkernels.gumbel_logprob: logits dtype");
  TORCH_CHECK(ids.dim() == nb + 1 && ids.scalar_type() == at::kLong && ids.is_contiguous(),
              "softkernels.gumbel_logprob: ids must be a contiguous int64 [..., k] tensor");
  TORCH_CHECK(g_prime.sizes() == ids.sizes() && g_prime.is_contiguous() &&
                  g_prime.scalar_type() == lp_stats_dtype(logits),
              "softkernels.gumbel_logprob: g_prime must be contiguous, shaped like ids, in the "
              "logits' stats dtype");
  for (int64_t d = 0; d < nb; ++d) {
    TORCH_CHECK(ids.size(d) == logits.size(d),
                "softkernels.gumbel_logprob: ids' batch shape differs from logits'");
  }
  TORCH_CHECK(ids.device() == logits.device() && g_prime.device() == logits.device(),
              "softkernels.gumbel_logprob: inputs must be on one device");
  if (hard.has_value()) {
    TORCH_CHECK(hard->scalar_type() == at::kBool && hard->is_contiguous() &&
                    hard->dim() == nb && hard->device() == logits.device(),
                "softkernels.gumbel_logprob: hard must be a contiguous bool [...] tensor");
    for (int64_t d = 0; d < nb; ++d) {
      TORCH_CHECK(hard->size(d) == logits.size(d),
                  "softkernels.gumbel_logprob: hard's shape differs from logits' batch shape");
    }
  }
  GumbelLpShape s;
  s.N = batch_numel(logits, nb);
  s.V = logits.size(nb);
  s.k = ids.size(nb);
  TORCH_CHECK(s.V >= 1 && s.k >= 1 && s.k <= kMaxK,
              "softkernels.gumbel_logprob: need V >= 1 and 1 <= k <= ", kMaxK);
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
                                     const at::Tensor& lse) {
  const int64_t nb = logits.dim() - 1;
  const auto sizes = batch_sizes(logits, nb);
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(sizes) && grad.is_contiguous() &&
                  grad.scalar_type() == lp_stats_dtype(logits) &&
                  grad.device() == logits.device(),
              "softkernels.gumbel_logprob_backward: grad must be contiguous [...] in the stats "
              "dtype");
  TORCH_CHECK(lse.sizes() == at::IntArrayRef(sizes) && lse.is_contiguous() &&
                  lse.scalar_type() == lp_stats_dtype(logits) && lse.device() == logits.device(),
              "softkernels.gumbel_logprob_backward: lse must be the forward's");
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
  if (sigma_rows.has_value()) {
    TORCH_CHECK(sigma_rows->dim() == nb && sigma_rows->is_contiguous() &&
                    sigma_rows->scalar_type() == lp_stats_dtype(x) &&
                    sigma_rows->device() == x.device(),
                "softkernels.gaussian_logprob: sigma_rows must be a contiguous [...] tensor in "
                "the stats dtype");
    for (int64_t d = 0; d < nb; ++d) {
      TORCH_CHECK(sigma_rows->size(d) == x.size(d),
                  "softkernels.gaussian_logprob: sigma_rows' shape differs from x's batch shape");
    }
  }
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

}  // namespace softkernels
