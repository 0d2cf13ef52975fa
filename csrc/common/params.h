// Plain-old-data views of soft_embed's arguments, passed by value to the CPU loops and to CUDA
// kernels alike. Each per-row parameter is either one number or a pointer to [B] values.
#pragma once

#include <cstdint>

#include "common/filters.h"
#include "common/macros.h"

namespace softkernels {

struct RowParamSource {
#define SK_ROW_SOURCE_FIELD(X, kind, name, ...) \
  SK_ROW_HOST_##kind name;                      \
  const SK_ROW_HOST_##kind* name##_rows;  // nullptr: use the scalar
  SK_SOFT_EMBED_ROW_PARAMS(SK_ROW_SOURCE_FIELD, _)
#undef SK_ROW_SOURCE_FIELD
  bool keep_ties;  // TiesRule kTiesKeepAll (one value for the batch)

  // Every parameter at its neutral value, no per-row tensors.
  static RowParamSource neutral() {
    RowParamSource r;
#define SK_ROW_NEUTRAL(X, kind, name, lo, hi, lo_open, hi_open, neutral, warp) \
  r.name = static_cast<SK_ROW_HOST_##kind>(neutral);                           \
  r.name##_rows = nullptr;
    SK_SOFT_EMBED_ROW_PARAMS(SK_ROW_NEUTRAL, _)
#undef SK_ROW_NEUTRAL
    r.keep_ties = false;
    return r;
  }

  // A per-row tensor of a parameter with a range: the kernel checks each row (row_params_ok).
  SK_HD bool any_rows() const {
#define SK_ROW_ANY(X, kind, name, lo, hi, ...) \
  || (name##_rows != nullptr && ((lo) != SK_ROW_LOWEST_##kind || (hi) != SK_ROW_HIGHEST_##kind))
    return false SK_SOFT_EMBED_ROW_PARAMS(SK_ROW_ANY, _);
#undef SK_ROW_ANY
  }

  template <typename T>
  SK_HD RowParams<T> row(int64_t b) const {
    RowParams<T> rp;
#define SK_ROW_GET(X, kind, name, ...) \
  rp.name = static_cast<SK_ROW_KERNEL_##kind(T)>(name##_rows ? name##_rows[b] : name);
    SK_SOFT_EMBED_ROW_PARAMS(SK_ROW_GET, _)
#undef SK_ROW_GET
    rp.inv_temp = static_cast<T>(1.0 / (temperature_rows ? temperature_rows[b] : temperature));
    rp.keep_ties = keep_ties;
    return rp;
  }
};

// Shapes and options of one soft_embed call.
struct SoftEmbedShape {
  int64_t B, V, D, Ve;
  int64_t k;
  int64_t pool;  // candidate pool kept per row (>= every row's row_pool_size)
  int64_t logits_stride, emb_stride;
};

}  // namespace softkernels
