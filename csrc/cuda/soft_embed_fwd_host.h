// Host side of the CUDA soft_embed forward, shared by the launcher (soft_embed.cu) and the CPU
// emulation harness (tools/cuda_emu): the launch plan (slices, shared memory, workspace layout)
// and the kernel's argument block. No CUDA API calls here.
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>

#include "cuda/soft_embed_fwd.h"
#include "soft_embed_host.h"

namespace softkernels::cuda {

struct FwdPlan {
  int64_t S;       // slices per row
  int P;           // pool (candidates kept per slice and per row)
  int tsize;       // bytes of a statistics value (4, or 8 for fp64 logits)
  int stage_cap;   // candidates of a row staged in shared memory by the merge
  int smem;        // dynamic shared memory per block
  // workspace: [counters B x u32][stats B*S][cand z B*S*P][cand id B*S*P]
  int64_t off_stats, off_z, off_id, ws_bytes;
};

// The DTypeTag of a floating dtype (the preambles have checked it; `name`: the argument).
inline int dtype_tag(at::ScalarType t, const char* name) {
  switch (t) {
    case at::kFloat: return kTagF32;
    case at::kDouble: return kTagF64;
    case at::kBFloat16: return kTagBF16;
    case at::kHalf: return kTagF16;
    default: TORCH_CHECK(false, "softkernels: ", name, " must be float32/float64/bfloat16/float16");
  }
  return 0;
}

inline int64_t fwd_align256(int64_t x) { return (x + 255) / 256 * 256; }

inline FwdPlan plan_fwd(const SoftEmbedShape& sh, bool f64_logits) {
  FwdPlan p{};
  p.S = (sh.V + kSlice - 1) / kSlice;
  p.P = static_cast<int>(sh.pool);
  p.tsize = f64_logits ? 8 : 4;
  p.stage_cap = 0;
  if (p.S > 1) {
    const int64_t last = sh.V - (p.S - 1) * kSlice;
    const int64_t nmax = (p.S - 1) * std::min<int64_t>(p.P, kSlice) + std::min<int64_t>(p.P, last);
    p.stage_cap = static_cast<int>(std::min<int64_t>(nmax, kStageMax));
  }
  p.smem = fwd_smem_layout(p.P, static_cast<int>(sh.k), p.tsize, p.stage_cap).total;
  const int64_t parts = sh.B * p.S;
  const int64_t stats_bytes =
      parts * static_cast<int64_t>(f64_logits ? sizeof(PartialStats<double>)
                                              : sizeof(PartialStats<float>));
  p.off_stats = fwd_align256(p.S > 1 ? sh.B * 4 : 0);
  p.off_z = p.off_stats + fwd_align256(stats_bytes);
  p.off_id = p.off_z + fwd_align256(parts * p.P * p.tsize);
  p.ws_bytes = p.off_id + fwd_align256(parts * p.P * 4);
  return p;
}

inline FwdArgs make_fwd_args(const at::Tensor& logits, const at::Tensor& embedding,
                             const SoftEmbedCall& c, int emb_tag, const SoftEmbedOutputs& outs,
                             const FwdPlan& plan, unsigned char* ws) {
  const SoftEmbedShape& sh = c.sh;
  const NoiseParams& np = c.np;
  const auto& [embeds, ids, weights, entropy, max_prob, noise, status] = outs;
  FwdArgs a{};
  a.logits = logits.data_ptr();
  a.logits_stride = sh.logits_stride;
  a.emb = embedding.data_ptr();
  a.emb_stride = sh.emb_stride;
  a.emb_tag = emb_tag;
  a.B = sh.B;
  a.V = sh.V;
  a.D = sh.D;
  a.k = static_cast<int>(sh.k);
  a.pool = plan.P;
  a.S = static_cast<int>(plan.S);
  a.L = kSlice;
  a.stage_cap = plan.stage_cap;
  a.rs = c.rs;
  a.np = np;
  a.hard = c.hard;
  a.hard_ids = c.hard_ids;
  a.embeds = embeds.data_ptr();
  a.ids = ids.data_ptr<int64_t>();
  a.weights = weights.data_ptr();
  a.entropy = entropy.data_ptr();
  a.max_prob = max_prob.data_ptr();
  a.noise = noise_has_slots(np.kind) ? noise.data_ptr() : nullptr;
  a.status = status.data_ptr<int32_t>();
  a.ws_stats = ws + plan.off_stats;
  a.ws_z = ws + plan.off_z;
  a.ws_id = reinterpret_cast<int32_t*>(ws + plan.off_id);
  a.counters = reinterpret_cast<unsigned int*>(ws);
  return a;
}

}  // namespace softkernels::cuda
