// CUDA implementation of softkernels::soft_embed (forward): argument unpacking, outputs and
// workspace, one kernel launch (soft_embed_fwd.cuh). No host synchronisation: every per-row
// value (parameters, seeds, offsets, hard flags) is read by the kernel from device memory, so a
// decode step can be captured in a CUDA graph.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "cuda/soft_embed_fwd.h"
#include "cuda/soft_embed_fwd_host.h"
#include "soft_embed_host.h"

namespace softkernels::cuda {

void throw_cuda_error(cudaError_t err, const char* what) {
  TORCH_CHECK(false, "softkernels: ", what, " failed: ", cudaGetErrorName(err), ": ",
              cudaGetErrorString(err));
}

namespace {

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw_cuda_error(err, what);
}

SoftEmbedOutputs soft_embed_cuda(SK_SOFT_EMBED_CPP_PARAMS) {
  TORCH_CHECK(logits.is_cuda(), "softkernels: logits must be a CUDA tensor");
  const SoftEmbedCall c = prepare_soft_embed(SK_SOFT_EMBED_CPP_ARGS);
  const SoftEmbedShape& sh = c.sh;
  const int ltag = dtype_tag(logits.scalar_type(), "logits");
  const int etag = dtype_tag(embedding.scalar_type(), "embedding");
  TORCH_CHECK(sh.V < std::numeric_limits<int32_t>::max(),
              "softkernels: V must be below 2^31 on CUDA, got ", sh.V);

  const c10::cuda::CUDAGuard guard(logits.device());
  SoftEmbedOutputs outs = allocate_outputs(logits, embedding, k, noise_kind);
  if (sh.B == 0) return outs;

  const FwdPlan plan = plan_fwd(sh, ltag == kTagF64);
  TORCH_CHECK(sh.B * plan.S <= std::numeric_limits<int32_t>::max(),
              "softkernels: B * ceil(V / 8192) must be below 2^31 on CUDA");
  const int smem = plan.smem;
  if (smem > kSmemDefault) {
    int dev = 0, optin = 0;
    check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
               "cudaDeviceGetAttribute");
    TORCH_CHECK(smem + 1024 <= optin, "softkernels: soft_embed needs ", smem,
                " bytes of shared memory per block (pool ", plan.P, ", k ", k,
                "), the device allows ", optin);
  }

  at::Tensor ws = at::empty({plan.ws_bytes}, logits.options().dtype(at::kByte));
  auto* base = static_cast<unsigned char*>(ws.data_ptr());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (plan.S > 1) check_cuda(cudaMemsetAsync(base, 0, sh.B * 4, stream), "cudaMemsetAsync");
  const FwdArgs a = make_fwd_args(logits, embedding, c, etag, outs, plan, base);

  switch (ltag) {
    case kTagF32: launch_soft_embed_fwd<float>(a, smem, stream); break;
    case kTagF64: launch_soft_embed_fwd<double>(a, smem, stream); break;
    case kTagBF16: launch_soft_embed_fwd<c10::BFloat16>(a, smem, stream); break;
    default: launch_soft_embed_fwd<c10::Half>(a, smem, stream); break;
  }
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(softkernels, CUDA, m) { m.impl("soft_embed", &soft_embed_cuda); }

}  // namespace softkernels::cuda
