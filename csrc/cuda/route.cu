// CUDA implementation of softkernels::route_step: csrc/common/route.h, one thread per row.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

#include "common/route.h"
#include "cuda/launch.h"
#include "cuda/soft_embed_fwd.h"
#include "route_host.h"

namespace softkernels::cuda {
namespace {

template <typename T>
__global__ void route_kernel(const T* entropy, const T* max_prob, const int64_t* next_ids,
                             const int8_t* phase, const int32_t* low_count,
                             const int32_t* think_steps, RouteConfig cfg, int64_t B, int8_t* mode,
                             int64_t* token, int8_t* phase_out, int32_t* low_out,
                             int32_t* steps_out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= B) return;
  RouteState s{phase[i], low_count[i], think_steps[i]};
  int64_t tok = 0;
  mode[i] = route_row<T>(s, entropy[i], max_prob[i], next_ids[i], cfg, tok);
  token[i] = tok;
  phase_out[i] = s.phase;
  low_out[i] = s.low_count;
  steps_out[i] = s.think_steps;
}

RouteOutputs route_step_cuda(SK_ROUTE_STEP_CPP_PARAMS) {
  TORCH_CHECK(SK_ON_DEVICE(entropy), "softkernels.route_step: tensors must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(entropy.device());
  RouteCall c = prepare_route_step(SK_ROUTE_STEP_CPP_ARGS);
  RouteOutputs& outs = c.outs;
  auto& [mode, token, phase_out, low_out, steps_out] = outs;
  const int64_t B = c.B;
  if (B == 0) return outs;
  const RouteConfig& cfg = c.cfg;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  constexpr int kT = 256;
  const dim3 grid(static_cast<unsigned>((B + kT - 1) / kT));
  if (entropy.scalar_type() == at::kDouble) {
    SK_LAUNCH(grid, kT, 0, stream, route_kernel<double>)(
        entropy.data_ptr<double>(), max_prob.data_ptr<double>(), next_ids.data_ptr<int64_t>(),
        phase.data_ptr<int8_t>(), low_count.data_ptr<int32_t>(), think_steps.data_ptr<int32_t>(),
        cfg, B, mode.data_ptr<int8_t>(), token.data_ptr<int64_t>(), phase_out.data_ptr<int8_t>(),
        low_out.data_ptr<int32_t>(), steps_out.data_ptr<int32_t>());
  } else {
    SK_LAUNCH(grid, kT, 0, stream, route_kernel<float>)(
        entropy.data_ptr<float>(), max_prob.data_ptr<float>(), next_ids.data_ptr<int64_t>(),
        phase.data_ptr<int8_t>(), low_count.data_ptr<int32_t>(), think_steps.data_ptr<int32_t>(),
        cfg, B, mode.data_ptr<int8_t>(), token.data_ptr<int64_t>(), phase_out.data_ptr<int8_t>(),
        low_out.data_ptr<int32_t>(), steps_out.data_ptr<int32_t>());
  }
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw_cuda_error(err, "route_step launch");
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(softkernels, CUDA, m) { m.impl("route_step", &route_step_cuda); }

}  // namespace softkernels::cuda
