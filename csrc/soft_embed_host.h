// Host-side glue shared by the CPU and CUDA implementations of soft_embed: unpacking the op's
// arguments into the POD views of csrc/common/params.h and allocating the outputs. Kept to light
// ATen headers so that .cu files including it compile quickly.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Optional.h>

#include <sstream>
#include <string>
#include <tuple>

#include "common/filters.h"
#include "common/params.h"
#include "soft_embed_decl.h"

namespace softkernels {

using OptTensor = std::optional<at::Tensor>;

// The op returns (embeds, ids, weights, entropy, max_prob, noise, status).
using SoftEmbedOutputs =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

inline at::ScalarType stats_dtype(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Checks of the raw op's arguments. User-facing validation (with argument names and values)
// happens first in softkernels/ops.py; these checks make a direct call of the raw op
// (torch.ops.softkernels.soft_embed, whatever the caller passes) unable to read or write out of
// bounds: every shape, stride, dtype and device the kernels index with, and every size the
// per-row scratch depends on (the candidate pool), is checked here, on the host, without reading
// tensor data (so no host sync). Per-row tensor values are checked by the kernel itself
// (row_params_ok, hard_ids), which flags the row instead.
inline bool is_float_type(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

// A [R, C] tensor whose rows the kernels walk with stride(0) and elements with stride 1 (any
// stride is fine along a dimension of size <= 1).
inline void check_rows_tensor(const at::Tensor& t, const char* name, const char* shape) {
  TORCH_CHECK(t.dim() == 2, "softkernels: ", name, " must be 2-D ", shape, ", got shape ",
              t.sizes());
  TORCH_CHECK(is_float_type(t.scalar_type()), "softkernels: ", name,
              " must be float32/float64/bfloat16/float16, got ", t.scalar_type());
  TORCH_CHECK(t.size(1) <= 1 || t.stride(1) == 1, "softkernels: ", name,
              " must have contiguous rows (stride 1 along the last dimension), got strides ",
              t.strides());
}

inline int64_t row_stride(const at::Tensor& t) {
  // stride(0) of a tensor with one row may be anything; rows are then never stepped over.
  return t.size(0) <= 1 ? 0 : t.stride(0);
}

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
  check_rows_tensor(logits, "logits", "[B, V]");
  check_rows_tensor(embedding, "embedding", "[V_e, D]");
  TORCH_CHECK(logits.device() == embedding.device(),
              "softkernels: logits and embedding must be on one device");
  SoftEmbedShape s;
  s.B = logits.size(0);
  s.V = logits.size(1);
  s.Ve = embedding.size(0);
  s.D = embedding.size(1);
  s.k = k;
  s.pool = pool;
  s.logits_stride = row_stride(logits);
  s.emb_stride = row_stride(embedding);
  TORCH_CHECK(s.V >= 1 && s.Ve >= s.V, "softkernels: need 1 <= V <= V_e, got V = ", s.V,
              ", V_e = ", s.Ve);
  TORCH_CHECK(k >= 1 && k <= s.V && k <= kMaxK, "softkernels: k = ", k,
              " out of range [1, min(V, ", kMaxK, ")] (V = ", s.V, ")");
  TORCH_CHECK(pool >= k && pool <= s.V && pool <= kMaxPool, "softkernels: pool = ", pool,
              " out of range [k, min(V, ", kMaxPool, ")] (k = ", k, ", V = ", s.V, ")");
  return s;
}

// The per-row parameters of SK_SOFT_EMBED_ROW_PARAMS: each [B] tensor checked, then pointed to.
#define SK_ROW_UNPACK(X, kind, name, ...)                                                   \
  check_row_tensor(name##_rows, #name, SK_ROW_ATEN_##kind, logits.size(0), logits);          \
  r.name = name;                                                                             \
  r.name##_rows = name##_rows ? name##_rows->data_ptr<SK_ROW_HOST_##kind>() : nullptr;

// "temperature = 0.6, top_k = 30, ..." of the scalar row parameters (for error messages).
inline std::string row_scalars_text(const RowParamSource& r) {
  std::ostringstream os;
  const char* sep = "";
#define SK_ROW_TEXT(X, kind, name, ...) \
  os << sep << #name " = " << r.name;   \
  sep = ", ";
  SK_SOFT_EMBED_ROW_PARAMS(SK_ROW_TEXT, _)
#undef SK_ROW_TEXT
  return os.str();
}

// Noise constants as the kernels use them (float32 for every dtype but float64): each must stay
// finite there, and tau / alpha must not round to 0 (softkernels/noise.py documents the ranges).
inline NoiseParams make_noise(int64_t kind, double tau, double scale, double clamp_lo,
                              double clamp_hi, double alpha, double sigma) {
  TORCH_CHECK(kind >= kNoiseNone && kind <= kNoiseLast, "softkernels: bad noise kind ",
              kind);
  if (noise_uses_gumbel(static_cast<int>(kind))) {
    TORCH_CHECK(tau >= kMinTau && tau <= kMaxNoiseParam, "softkernels: Gumbel tau = ", tau,
                " out of range [", kMinTau, ", ", kMaxNoiseParam, "]");
    TORCH_CHECK(scale >= 0 && scale <= kMaxNoiseParam, "softkernels: Gumbel scale = ", scale,
                " out of range [0, ", kMaxNoiseParam, "]");
    TORCH_CHECK(clamp_lo < clamp_hi, "softkernels: Gumbel clamp needs lo < hi, got (",
                clamp_lo, ", ", clamp_hi, ")");
  }
  if (kind == kNoiseDirichlet || kind == kNoiseDirichletGumbel || kind == kNoiseTopKDirichlet) {
    TORCH_CHECK(alpha >= kMinAlpha && alpha <= kMaxNoiseParam, "softkernels: Dirichlet alpha = ",
                alpha, " out of range [", kMinAlpha, ", ", kMaxNoiseParam, "]");
  } else if (kind == kNoiseGaussian || kind == kNoiseWeightGaussian) {
    TORCH_CHECK(sigma >= 0 && sigma <= kMaxNoiseParam, "softkernels: Gaussian sigma = ", sigma,
                " out of range [0, ", kMaxNoiseParam, "]");
  }
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

// Everything one soft_embed call needs, checked: the one host preamble of the CPU kernel, the
// CUDA launcher and the CUDA emulation (tools/cuda_emu).
struct SoftEmbedCall {
  SoftEmbedShape sh;
  RowParamSource rs;
  NoiseParams np;
  const bool* hard;
  const int64_t* hard_ids;
};

inline SoftEmbedCall prepare_soft_embed(SK_SOFT_EMBED_CPP_PARAMS) {
  SoftEmbedCall c;
  c.sh = make_shape(logits, embedding, k, pool);
  {
    RowParamSource& r = c.rs;
    SK_SOFT_EMBED_ROW_PARAMS(SK_ROW_UNPACK, _)
  }
  c.np = make_noise(noise_kind, tau, scale, clamp_lo, clamp_hi, alpha, sigma);
  TORCH_CHECK(ties == kTiesExact || ties == kTiesKeepAll, "softkernels: bad ties rule ", ties);
  c.rs.keep_ties = ties == kTiesKeepAll;
  check_hard(hard, hard_ids, logits);
  c.hard = hard ? hard->data_ptr<bool>() : nullptr;
  c.hard_ids = hard_ids ? hard_ids->data_ptr<int64_t>() : nullptr;
  // Scalar parameters are the same for every row: check them here, as the kernel sees them
  // (float32 unless the logits are float64). With a per-row tensor among them the kernel checks
  // every row itself (row_params_ok) and flags the bad ones. Either way no row may need a larger
  // candidate pool than the `pool` its scratch is sized for.
  if (!c.rs.any_rows() && c.sh.B > 0) {
    const bool ok = logits.scalar_type() == at::kDouble
                        ? row_params_ok(c.rs.row<double>(0), c.sh.V, k, c.np.kind, pool)
                        : row_params_ok(c.rs.row<float>(0), c.sh.V, k, c.np.kind, pool);
    TORCH_CHECK(ok, "softkernels: scalar parameters out of range or needing a candidate pool "
                "larger than pool = ", pool, ": ", row_scalars_text(c.rs), " (needed pool ",
                row_pool_size(c.sh.V, k, top_k, noise_redraws_support(c.np.kind), c.rs.keep_ties), ")");
  }
  return c;
}

// The one host preamble of soft_embed_backward (CPU kernel and CUDA launcher): every tensor the
// kernels index, checked, and the optional gradients made contiguous. Slot ids are data (not read
// here): the kernels skip a slot whose id is outside [0, V) for the logits' gradient and outside
// [0, V_e) for the embedding's, and slots whose weight is not > 0 (zero, or NaN in a row the
// forward flagged), so that neither a hostile call nor a poisoned row writes out of bounds or
// spreads NaN into the table's gradient.
struct SoftEmbedBackwardCall {
  int64_t B, k, V, Ve, D;
  OptTensor ge, gw, gn;
  RowParamSource rs;
  const bool* hard;
  at::Tensor grad_logits, grad_embedding;  // zeros, written by the kernels
};

inline SoftEmbedBackwardCall prepare_soft_embed_backward(SK_SOFT_EMBED_BACKWARD_CPP_PARAMS) {
  check_rows_tensor(logits, "logits", "[B, V]");
  check_rows_tensor(embedding, "embedding", "[V_e, D]");
  const auto dev = logits.device();
  TORCH_CHECK(embedding.device() == dev, "softkernels: logits and embedding must be on one device");
  SoftEmbedBackwardCall c;
  c.B = logits.size(0);
  c.V = logits.size(1);
  c.Ve = embedding.size(0);
  c.D = embedding.size(1);
  TORCH_CHECK(ids.dim() == 2 && ids.is_contiguous() && ids.size(0) == c.B &&
                  ids.scalar_type() == at::kLong && ids.device() == dev,
              "softkernels: ids must be a contiguous int64 [B, k] tensor on the logits' device, "
              "got ", ids.scalar_type(), " of shape ", ids.sizes());
  c.k = ids.size(1);
  TORCH_CHECK(c.k <= kMaxK, "softkernels: ids must have k <= ", kMaxK, " slots, got ", c.k);
  TORCH_CHECK(weights.is_contiguous() && weights.sizes() == ids.sizes() &&
                  weights.scalar_type() == stats_dtype(logits) && weights.device() == dev,
              "softkernels: weights must be a contiguous [B, k] tensor in the logits' stats dtype");
  TORCH_CHECK(noise_kind >= kNoiseNone && noise_kind <= kNoiseLast,
              "softkernels: bad noise kind ", noise_kind);
  if (noise_kind == kNoiseGumbel) {
    TORCH_CHECK(noise.is_contiguous() && noise.sizes() == ids.sizes() &&
                    noise.scalar_type() == weights.scalar_type() && noise.device() == dev,
                "softkernels: noise must be the forward's g' [B, k]");
    TORCH_CHECK(tau >= kMinTau && tau <= kMaxNoiseParam, "softkernels: Gumbel tau = ", tau,
                " out of range");
  }
  auto contig = [](const OptTensor& t) -> OptTensor {
    return t ? OptTensor(t->contiguous()) : OptTensor();
  };
  c.ge = contig(grad_embeds);
  c.gw = contig(grad_weights);
  c.gn = noise_kind == kNoiseGumbel ? contig(grad_noise) : OptTensor();
  if (c.ge) {
    TORCH_CHECK(c.ge->scalar_type() == embedding.scalar_type() && c.ge->dim() == 2 &&
                    c.ge->size(0) == c.B && c.ge->size(1) == c.D && c.ge->device() == dev,
                "softkernels: grad_embeds must be [B, D] in the embedding's dtype");
  }
  if (c.gw) {
    TORCH_CHECK(c.gw->sizes() == ids.sizes() && c.gw->scalar_type() == weights.scalar_type() &&
                    c.gw->device() == dev,
                "softkernels: grad_weights must be [B, k] in the weights' dtype");
  }
  if (c.gn) {
    TORCH_CHECK(c.gn->sizes() == ids.sizes() && c.gn->scalar_type() == weights.scalar_type() &&
                    c.gn->device() == dev,
                "softkernels: grad_noise must be [B, k] in the weights' dtype");
  }
  check_row_tensor(hard, "hard", at::kBool, c.B, logits);
  c.hard = hard ? hard->data_ptr<bool>() : nullptr;
  c.rs = RowParamSource::neutral();
  {
    RowParamSource& r = c.rs;  // only the temperature: the gradient keeps the forward's slots
    SK_ROW_UNPACK(_, Real, temperature, _)
  }
  (void)logits_grad;
  (void)embedding_grad;
  c.grad_logits = at::zeros(logits.sizes(), logits.options());
  c.grad_embedding = at::zeros(embedding.sizes(), embedding.options());
  return c;
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
      noise_has_slots(static_cast<int>(noise_kind)) ? at::empty({B, k}, fopt)
                                                    : at::empty({0}, fopt),
      at::empty({B}, logits.options().dtype(at::kInt)),
  };
}

}  // namespace softkernels
