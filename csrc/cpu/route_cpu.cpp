// CPU implementation of route_step: csrc/common/route.h applied to every row.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "common/route.h"
#include "route_host.h"

namespace softkernels::cpu {
namespace {

RouteOutputs route_step_cpu(SK_ROUTE_STEP_CPP_PARAMS) {
  RouteCall c = prepare_route_step(SK_ROUTE_STEP_CPP_ARGS);
  RouteOutputs& outs = c.outs;
  auto& [mode, token, phase_out, low_out, steps_out] = outs;
  const RouteConfig& cfg = c.cfg;
  const int64_t B = c.B;
  AT_DISPATCH_FLOATING_TYPES(entropy.scalar_type(), "route_step", [&] {
    const scalar_t* h = entropy.data_ptr<scalar_t>();
    const scalar_t* pm = max_prob.data_ptr<scalar_t>();
    const int64_t* nid = next_ids.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      RouteState s{phase.data_ptr<int8_t>()[b], low_count.data_ptr<int32_t>()[b],
                   think_steps.data_ptr<int32_t>()[b]};
      int64_t tok;
      mode.data_ptr<int8_t>()[b] = route_row<scalar_t>(s, h[b], pm[b], nid[b], cfg, tok);
      token.data_ptr<int64_t>()[b] = tok;
      phase_out.data_ptr<int8_t>()[b] = s.phase;
      low_out.data_ptr<int32_t>()[b] = s.low_count;
      steps_out.data_ptr<int32_t>()[b] = s.think_steps;
    }
  });
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(softkernels, CPU, m) { m.impl("route_step", &route_step_cpu); }

}  // namespace softkernels::cpu
