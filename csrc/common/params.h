// Plain-old-data views of soft_embed's arguments, passed by value to the CPU loops and to CUDA
// kernels alike. Each per-row parameter is either one number or a pointer to [B] values.
#pragma once

#include <cstdint>

#include "common/filters.h"
#include "common/macros.h"

namespace softkernels {

struct RowParamSource {
  double temperature;
  int64_t top_k;
  double top_p;
  double min_p;
  int64_t seed;
  int64_t offset;
  bool keep_ties;  // TiesRule kTiesKeepAll (one value for the batch)
  const double* temperature_rows;  // nullptr: use the scalar
  const int64_t* top_k_rows;
  const double* top_p_rows;
  const double* min_p_rows;
  const int64_t* seed_rows;
  const int64_t* offset_rows;

  SK_HD bool any_rows() const {
    return temperature_rows || top_k_rows || top_p_rows || min_p_rows;
  }

  template <typename T>
  SK_HD RowParams<T> row(int64_t b) const {
    RowParams<T> rp;
    const double t = temperature_rows ? temperature_rows[b] : temperature;
    rp.inv_temp = static_cast<T>(1.0 / t);
    rp.top_k = top_k_rows ? top_k_rows[b] : top_k;
    rp.top_p = static_cast<T>(top_p_rows ? top_p_rows[b] : top_p);
    rp.min_p = static_cast<T>(min_p_rows ? min_p_rows[b] : min_p);
    rp.seed = seed_rows ? seed_rows[b] : seed;
    rp.offset = offset_rows ? offset_rows[b] : offset;
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
