// Host-side glue of select_rows / add_rows_ shared by the CPU and CUDA implementations: internal
// invariants (user-facing validation with argument names and values is in softkernels/iterate.py)
// and output allocation. Light ATen headers only, so that .cu files including it compile quickly.
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <tuple>

#include "common/select_rows.h"

namespace softkernels {

using SelectOutputs = std::tuple<at::Tensor, at::Tensor>;

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

inline void check_select_inputs(const at::Tensor& scores) {
  TORCH_CHECK(scores.dim() == 1 && scores.is_contiguous(),
              "softkernels.select_rows: scores must be a contiguous [B] tensor");
  TORCH_CHECK(is_float_dtype(scores.scalar_type()),
              "softkernels.select_rows: scores must be float32/float64/bfloat16/float16");
}

inline SelectOutputs allocate_select_outputs(const at::Tensor& scores) {
  const auto opts = scores.options().dtype(at::kLong);
  return SelectOutputs{at::empty({scores.size(0)}, opts), at::empty({1}, opts)};
}

inline void check_add_rows_inputs(const at::Tensor& logits, const at::Tensor& src,
                                  const at::Tensor& idx, const at::Tensor& count) {
  TORCH_CHECK(logits.dim() == 2 && (logits.size(1) <= 1 || logits.stride(1) == 1),
              "softkernels.add_rows_: logits must be [B, V] with contiguous rows");
  TORCH_CHECK(src.dim() == 2 && (src.size(1) <= 1 || src.stride(1) == 1),
              "softkernels.add_rows_: src must be [N, V] with contiguous rows");
  TORCH_CHECK(src.size(1) == logits.size(1), "softkernels.add_rows_: src must have V = ",
              logits.size(1), " columns, got ", src.size(1));
  TORCH_CHECK(is_float_dtype(logits.scalar_type()) && src.scalar_type() == logits.scalar_type(),
              "softkernels.add_rows_: logits and src must have one float dtype");
  TORCH_CHECK(idx.dim() == 1 && idx.is_contiguous() && idx.scalar_type() == at::kLong,
              "softkernels.add_rows_: idx must be a contiguous int64 [B] tensor");
  TORCH_CHECK(count.numel() == 1 && count.scalar_type() == at::kLong,
              "softkernels.add_rows_: count must be an int64 tensor with one element");
  // Like torch's in-place ops: no destination whose elements share memory (an expanded view),
  // no source or index that overlaps the destination.
  TORCH_CHECK(at::has_internal_overlap(logits) != at::MemOverlap::Yes,
              "softkernels.add_rows_: logits has elements that share memory (an expanded or "
              "overlapping view); pass a tensor with distinct elements (e.g. .clone())");
  for (const at::Tensor* t : {&src, &idx, &count}) {
    const auto st = at::get_overlap_status(logits, *t);
    TORCH_CHECK(st != at::MemOverlapStatus::Full && st != at::MemOverlapStatus::Partial,
                "softkernels.add_rows_: src, idx and count must not overlap logits' memory");
  }
  for (const at::Tensor* t : {&src, &idx, &count}) {
    TORCH_CHECK(t->device() == logits.device(),
                "softkernels.add_rows_: all tensors must be on the logits' device");
  }
}

}  // namespace softkernels
