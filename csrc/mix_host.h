// Host-side glue shared by the CPU and CUDA implementations of mix_embeddings: argument checks
// (internal invariants; user-facing validation with names and values is in softkernels/mix.py)
// and the output allocation. Light ATen headers only, so that .cu files can include it.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Optional.h>

#include "common/macros.h"

namespace softkernels {

struct MixShape {
  int64_t N, k, Ve, D, emb_stride;
};

inline void check_mix_row_tensor(const std::optional<at::Tensor>& t, const char* name, int64_t N,
                                 const at::Tensor& ids) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->scalar_type() == at::kLong && t->dim() == 1 && t->size(0) == N &&
                  t->is_contiguous() && t->device() == ids.device(),
              "softkernels.mix_embeddings: ", name, " must be a contiguous int64 [", N,
              "] tensor on the ids' device");
}

inline MixShape check_mix_inputs(const at::Tensor& embedding, const at::Tensor& ids,
                                 const at::Tensor& weights,
                                 const std::optional<at::Tensor>& seed_rows,
                                 const std::optional<at::Tensor>& offset_rows) {
  TORCH_CHECK(embedding.dim() == 2 && (embedding.size(1) <= 1 || embedding.stride(1) == 1),
              "softkernels.mix_embeddings: embedding must be [V_e, D] with contiguous rows");
  TORCH_CHECK(embedding.scalar_type() == at::kFloat || embedding.scalar_type() == at::kDouble ||
                  embedding.scalar_type() == at::kBFloat16 || embedding.scalar_type() == at::kHalf,
              "softkernels.mix_embeddings: embedding must be float32/float64/bfloat16/float16");
  TORCH_CHECK(ids.dim() == 2 && ids.scalar_type() == at::kLong && ids.is_contiguous(),
              "softkernels.mix_embeddings: ids must be a contiguous int64 [N, k] tensor");
  TORCH_CHECK(weights.sizes() == ids.sizes() && weights.is_contiguous() &&
                  (weights.scalar_type() == at::kFloat || weights.scalar_type() == at::kDouble),
              "softkernels.mix_embeddings: weights must be a contiguous float32/float64 tensor "
              "shaped like ids");
  TORCH_CHECK(embedding.device() == ids.device() && weights.device() == ids.device(),
              "softkernels.mix_embeddings: tensors must be on one device");
  TORCH_CHECK(ids.size(1) <= kMaxK, "softkernels.mix_embeddings: k must be <= ", kMaxK);
  const int64_t N = ids.size(0);
  check_mix_row_tensor(seed_rows, "seed_rows", N, ids);
  check_mix_row_tensor(offset_rows, "offset_rows", N, ids);
  return MixShape{N, ids.size(1), embedding.size(0), embedding.size(1),
                  embedding.size(0) <= 1 ? 0 : embedding.stride(0)};
}

inline at::Tensor allocate_mix_output(const at::Tensor& embedding, const MixShape& s) {
  return at::empty({s.N, s.D}, embedding.options());
}

}  // namespace softkernels
