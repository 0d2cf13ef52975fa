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
#include "soft_embed_host.h"

namespace softkernels::cuda {

void throw_cuda_error(cudaError_t err, const char* what) {
  TORCH_CHECK(false, "softkernels: ", what, " failed: ", cudaGetErrorName(err), ": ",
              cudaGetErrorString(err));
}

namespace {

int dtype_tag(at::ScalarType t, const char* name) {
  switch (t) {
    case at::kFloat: return kTagF32;
    case at::kDouble: return kTagF64;
    case at::kBFloat16: return kTagBF16;
    case at::kHalf: return kTagF16;
    default: TORCH_CHECK(false, "softkernels: ", name, " must be float32/float64/bfloat16/float16");
  }
  return 0;
}

int64_t align256(int64_t x) { return (x + 255) / 256 * 256; }

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw_cuda_error(err, what);
}

SoftEmbedOutputs soft_embed_cuda(const at::Tensor& logits, const at::Tensor& embedding, int64_t k,
                                 double temperature, int64_t top_k, double top_p, double min_p,
                                 int64_t seed, int64_t offset, const OptTensor& temperature_rows,
                                 const OptTensor& top_k_rows, const OptTensor& top_p_rows,
                                 const OptTensor& min_p_rows, const OptTensor& seed_rows,
                                 const OptTensor& offset_rows, const OptTensor& hard,
                                 const OptTensor& hard_ids, int64_t noise_kind, double tau,
                                 double scale, double clamp_lo, double clamp_hi, double alpha,
                                 double sigma, int64_t pool) {
  TORCH_CHECK(logits.is_cuda(), "softkernels: logits must be a CUDA tensor");
  const SoftEmbedShape sh = make_shape(logits, embedding, k, pool);
  const RowParamSource rs =
      make_row_source(logits, temperature, top_k, top_p, min_p, seed, offset, temperature_rows,
                      top_k_rows, top_p_rows, min_p_rows, seed_rows, offset_rows);
  const NoiseParams np = make_noise(noise_kind, tau, scale, clamp_lo, clamp_hi, alpha, sigma);
  check_hard(hard, hard_ids, logits);
  const int ltag = dtype_tag(logits.scalar_type(), "logits");
  const int etag = dtype_tag(embedding.scalar_type(), "embedding");
  TORCH_CHECK(sh.V < std::numeric_limits<int32_t>::max(),
              "softkernels: V must be below 2^31 on CUDA, got ", sh.V);

  const c10::cuda::CUDAGuard guard(logits.device());
  SoftEmbedOutputs outs = allocate_outputs(logits, embedding, k, noise_kind);
  if (sh.B == 0) return outs;
  auto& [embeds, ids, weights, entropy, max_prob, noise, status] = outs;

  const int64_t S = (sh.V + kSlice - 1) / kSlice;
  TORCH_CHECK(sh.B * S <= std::numeric_limits<int32_t>::max(),
              "softkernels: B * ceil(V / 8192) must be below 2^31 on CUDA");
  const int P = static_cast<int>(sh.pool);
  const int tsize = ltag == kTagF64 ? 8 : 4;
  int stage_cap = 0;
  if (S > 1) {
    const int64_t last = sh.V - (S - 1) * kSlice;
    const int64_t nmax = (S - 1) * std::min<int64_t>(P, kSlice) + std::min<int64_t>(P, last);
    stage_cap = static_cast<int>(std::min<int64_t>(nmax, kStageMax));
  }
  const FwdSmem layout = fwd_smem_layout(P, static_cast<int>(k), tsize, stage_cap);
  const int smem = layout.total;
  if (smem > kSmemDefault) {
    int dev = 0, optin = 0;
    check_cuda(cudaGetDevice(&dev), "cudaGetDevice");
    check_cuda(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev),
               "cudaDeviceGetAttribute");
    TORCH_CHECK(smem + 1024 <= optin, "softkernels: soft_embed needs ", smem,
                " bytes of shared memory per block (pool ", P, ", k ", k, "), the device allows ",
                optin);
  }

  // Workspace: [counters B x u32][stats B*S][cand z B*S*P][cand id B*S*P].
  const int64_t parts = sh.B * S;
  const int64_t stats_bytes =
      parts * static_cast<int64_t>(tsize == 8 ? sizeof(PartialStats<double>)
                                              : sizeof(PartialStats<float>));
  const int64_t off_stats = align256(S > 1 ? sh.B * 4 : 0);
  const int64_t off_z = off_stats + align256(stats_bytes);
  const int64_t off_id = off_z + align256(parts * P * tsize);
  const int64_t ws_bytes = off_id + align256(parts * P * 4);
  at::Tensor ws = at::empty({ws_bytes}, logits.options().dtype(at::kByte));
  auto* base = static_cast<unsigned char*>(ws.data_ptr());

  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (S > 1) check_cuda(cudaMemsetAsync(base, 0, sh.B * 4, stream), "cudaMemsetAsync");

  FwdArgs a{};
  a.logits = logits.data_ptr();
  a.logits_stride = sh.logits_stride;
  a.emb = embedding.data_ptr();
  a.emb_stride = sh.emb_stride;
  a.emb_tag = etag;
  a.B = sh.B;
  a.V = sh.V;
  a.D = sh.D;
  a.k = static_cast<int>(k);
  a.pool = P;
  a.S = static_cast<int>(S);
  a.L = kSlice;
  a.stage_cap = stage_cap;
  a.rs = rs;
  a.np = np;
  a.hard = hard ? hard->data_ptr<bool>() : nullptr;
  a.hard_ids = hard_ids ? hard_ids->data_ptr<int64_t>() : nullptr;
  a.embeds = embeds.data_ptr();
  a.ids = ids.data_ptr<int64_t>();
  a.weights = weights.data_ptr();
  a.entropy = entropy.data_ptr();
  a.max_prob = max_prob.data_ptr();
  a.noise = noise_kind == kNoiseGumbel ? noise.data_ptr() : nullptr;
  a.status = status.data_ptr<int32_t>();
  a.ws_stats = base + off_stats;
  a.ws_z = base + off_z;
  a.ws_id = reinterpret_cast<int32_t*>(base + off_id);
  a.counters = reinterpret_cast<unsigned int*>(base);

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
