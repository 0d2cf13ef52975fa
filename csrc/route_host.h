// Host-side glue of route_step shared by the CPU and CUDA implementations.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <tuple>

#include "common/route.h"

namespace softkernels {

using RouteOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

inline void check_route_inputs(const at::Tensor& entropy, const at::Tensor& max_prob,
                               const at::Tensor& next_ids, const at::Tensor& phase,
                               const at::Tensor& low_count, const at::Tensor& think_steps) {
  const int64_t B = entropy.numel();
  auto check = [&](const at::Tensor& t, const char* name, at::ScalarType dtype) {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == B && t.is_contiguous(), "softkernels.route_step: ",
                name, " must be a contiguous [B] tensor");
    TORCH_CHECK(t.scalar_type() == dtype, "softkernels.route_step: ", name, " must be ", dtype);
    TORCH_CHECK(t.device() == entropy.device(), "softkernels.route_step: ", name,
                " must be on one device with entropy");
  };
  TORCH_CHECK(entropy.scalar_type() == at::kFloat || entropy.scalar_type() == at::kDouble,
              "softkernels.route_step: entropy must be float32 or float64");
  check(entropy, "entropy", entropy.scalar_type());
  check(max_prob, "max_prob", entropy.scalar_type());
  check(next_ids, "next_ids", at::kLong);
  check(phase, "phase", at::kChar);
  check(low_count, "low_count", at::kInt);
  check(think_steps, "think_steps", at::kInt);
}

// route_step's parameters, once for the CPU kernel and the CUDA launcher (schema: csrc/ops.cpp).
#define SK_ROUTE_STEP_CPP_PARAMS                                                                  \
  const at::Tensor &entropy, const at::Tensor &max_prob, const at::Tensor &next_ids,              \
      const at::Tensor &phase, const at::Tensor &low_count, const at::Tensor &think_steps,        \
      int64_t think_end_id, double cold_stop_entropy, int64_t cold_stop_patience,                 \
      double router_threshold, int64_t max_think_tokens
#define SK_ROUTE_STEP_CPP_ARGS                                                                    \
  entropy, max_prob, next_ids, phase, low_count, think_steps, think_end_id, cold_stop_entropy,    \
      cold_stop_patience, router_threshold, max_think_tokens

inline RouteOutputs allocate_route_outputs(const at::Tensor& phase);

// The one host preamble of route_step: checked inputs, the rules' configuration, the outputs.
struct RouteCall {
  int64_t B;
  RouteConfig cfg;
  RouteOutputs outs;
};

inline RouteCall prepare_route_step(SK_ROUTE_STEP_CPP_PARAMS) {
  check_route_inputs(entropy, max_prob, next_ids, phase, low_count, think_steps);
  return RouteCall{phase.numel(),
                   RouteConfig{think_end_id, cold_stop_entropy, cold_stop_patience,
                               router_threshold, max_think_tokens},
                   allocate_route_outputs(phase)};
}

inline RouteOutputs allocate_route_outputs(const at::Tensor& phase) {
  const int64_t B = phase.numel();
  return RouteOutputs{at::empty({B}, phase.options()),
                      at::empty({B}, phase.options().dtype(at::kLong)),
                      at::empty({B}, phase.options()),
                      at::empty({B}, phase.options().dtype(at::kInt)),
                      at::empty({B}, phase.options().dtype(at::kInt))};
}

}  // namespace softkernels
