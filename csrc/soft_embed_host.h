// Host-side glue shared by the CPU and CUDA implementations of soft_embed: unpacking the op's
// arguments into the POD views of csrc/common/params.h and allocating the outputs. Kept to light
// ATen headers so that .cu files including it compile quickly.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Optional.h>

#include <tuple>

#include "common/filters.h"
#include "common/params.h"

namespace softkernels {

using OptTensor = std::optional<at::Tensor>;

// The op returns (embeds, ids, weights, entropy, max_prob, noise, status).
using SoftEmbedOutputs =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

inline at::ScalarType stats_dtype(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Internal invariants. User-facing validation (with argument names and values) happens first in
// softkernels/ops.py; these checks only stop a direct call of the raw op from reading out of
// bounds.
inline void check_row_tensor(const OptTensor& t, const char* name, at::ScalarType dtype,
                             int64_t B, const at::Tensor& logits) {
  if (!t.has_value()) return;
  TORCH_CHECK(t->scalar_type() == dtype, "softkernels: ", name, " must have dtype ", dtype,
              ", got ", t->scalar_type());
  TORCH_CHECK(t->dim() == 1 && t->size(0) == B, "softkernels: ", name, " must have shape [",
              B, "], got ", t->sizes());
  TORCH_CHECK(t->is_contiguous(), "softkernels: ", name, " must be contiguous");
  TORCH_CHECK(t->device() == logits.device(), "softkernels: ", name,
              " must be on the logits' device");
}

inline SoftEmbedShape make_shape(const at::Tensor& logits, const at::Tensor& embedding,
                                 int64_t k, int64_t pool) {
  TORCH_CHECK(logits.dim() == 2, "softkernels: logits must be 2-D [B, V]");
  TORCH_CHECK(embedding.dim() == 2, "softkernels: embedding must be 2-D [V_e, D]");
  TORCH_CHECK(logits.stride(1) == 1, "softkernels: logits rows must be contiguous");
  TORCH_CHECK(embedding.stride(1) == 1, "softkernels: embedding rows must be contiguous");
  TORCH_CHECK(logits.device() == embedding.device(),
              "softkernels: logits and embedding must be on one device");
  SoftEmbedShape s;
  s.B = logits.size(0);
  s.V = logits.size(1);
  s.Ve = embedding.size(0);
  s.D = embedding.size(1);
  s.k = k;
  s.pool = pool;
  s.logits_stride = logits.stride(0);
  s.emb_stride = embedding.stride(0);
  TORCH_CHECK(s.V >= 1 && s.Ve >= s.V, "softkernels: need 1 <= V <= V_e");
  TORCH_CHECK(k >= 1 && k <= s.V && k <= kMaxK, "softkernels: k out of range");
  TORCH_CHECK(pool >= k && pool <= s.V && pool <= kMaxPool, "softkernels: pool out of range");
  return s;
}

inline RowParamSource make_row_source(const at::Tensor& logits, double temperature,
                                      int64_t top_k, double top_p, double min_p, int64_t seed,
                                      int64_t offset, const OptTensor& temperature_rows,
                                      const OptTensor& top_k_rows, const OptTensor& top_p_rows,
                                      const OptTensor& min_p_rows, const OptTensor& seed_rows,
                                      const OptTensor& offset_rows) {
  const int64_t B = logits.size(0);
  check_row_tensor(temperature_rows, "temperature", at::kDouble, B, logits);
  check_row_tensor(top_k_rows, "top_k", at::kLong, B, logits);
  check_row_tensor(top_p_rows, "top_p", at::kDouble, B, logits);
  check_row_tensor(min_p_rows, "min_p", at::kDouble, B, logits);
  check_row_tensor(seed_rows, "seed", at::kLong, B, logits);
  check_row_tensor(offset_rows, "offset", at::kLong, B, logits);
  RowParamSource r;
  r.temperature = temperature;
  r.top_k = top_k;
  r.top_p = top_p;
  r.min_p = min_p;
  r.seed = seed;
  r.offset = offset;
  r.temperature_rows = temperature_rows ? temperature_rows->data_ptr<double>() : nullptr;
  r.top_k_rows = top_k_rows ? top_k_rows->data_ptr<int64_t>() : nullptr;
  r.top_p_rows = top_p_rows ? top_p_rows->data_ptr<double>() : nullptr;
  r.min_p_rows = min_p_rows ? min_p_rows->data_ptr<double>() : nullptr;
  r.seed_rows = seed_rows ? seed_rows->data_ptr<int64_t>() : nullptr;
  r.offset_rows = offset_rows ? offset_rows->data_ptr<int64_t>() : nullptr;
  return r;
}

inline NoiseParams make_noise(int64_t kind, double tau, double scale, double clamp_lo,
                              double clamp_hi, double alpha, double sigma) {
  TORCH_CHECK(kind >= kNoiseNone && kind <= kNoiseGaussian, "softkernels: bad noise kind");
  return NoiseParams{static_cast<int>(kind), tau, scale, clamp_lo, clamp_hi, alpha, sigma};
}

inline void check_hard(const OptTensor& hard, const OptTensor& hard_ids,
                       const at::Tensor& logits) {
  const int64_t B = logits.size(0);
  check_row_tensor(hard, "hard", at::kBool, B, logits);
  check_row_tensor(hard_ids, "hard_ids", at::kLong, B, logits);
  TORCH_CHECK(!hard_ids.has_value() || hard.has_value(),
              "softkernels: hard_ids needs hard");
}

inline SoftEmbedOutputs allocate_outputs(const at::Tensor& logits, const at::Tensor& embedding,
                                         int64_t k, int64_t noise_kind) {
  const int64_t B = logits.size(0), D = embedding.size(1);
  const auto fopt = logits.options().dtype(stats_dtype(logits));
  return SoftEmbedOutputs{
      at::empty({B, D}, embedding.options()),
      at::empty({B, k}, logits.options().dtype(at::kLong)),
      at::empty({B, k}, fopt),
      at::empty({B}, fopt),
      at::empty({B}, fopt),
      noise_kind == kNoiseGumbel ? at::empty({B, k}, fopt) : at::empty({0}, fopt),
      at::empty({B}, logits.options().dtype(at::kInt)),
  };
}

}  // namespace softkernels
