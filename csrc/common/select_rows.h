// Per-row rules of the selective-iteration ops (Think-at-Hard), shared by the CPU and CUDA
// implementations of softkernels::select_rows and softkernels::add_rows_.
//
// select_rows: a row is hard when its score is below the threshold. The comparison is done in
// double (the exact real values; a float32 score and a double threshold compare without rounding
// the threshold). NaN scores are not hard. The output `idx` is a stable partition of 0..B-1: the
// hard rows in ascending order, then the easy rows in ascending order; `count` = number of hard
// rows. So idx[:count] are the hard rows, and every entry of idx is a valid row index.
//
// add_rows_: logits[idx[j]] += src[j] for j < rows_to_add(count, ...), in j order (a row listed
// twice gets both additions, in that order); each sum is formed in the accumulation type (float,
// double for double) and rounded once to the logits' dtype. Entries of idx outside [0, B) are
// skipped (never an out-of-bounds write).
#pragma once

#include <cstdint>

#include "common/macros.h"

namespace softkernels {

template <typename T>
SK_HD bool row_is_hard(T score, double threshold) {
  return static_cast<double>(score) < threshold;  // false for NaN
}

// How many leading entries of idx add_rows_ applies: count clamped to [0, min(B_idx, N_src)].
SK_HD int64_t rows_to_add(int64_t count, int64_t n_idx, int64_t n_src) {
  const int64_t hi = sk_min(n_idx, n_src);
  return count < 0 ? 0 : (count > hi ? hi : count);
}

SK_HD bool row_in_range(int64_t row, int64_t B) { return row >= 0 && row < B; }

}  // namespace softkernels
