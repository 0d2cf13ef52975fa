// CPU implementations of select_rows and add_rows_ (selective iteration, Think-at-Hard): the rules
// of csrc/common/select_rows.h applied row by row.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "common/select_rows.h"
#include "select_rows_host.h"

namespace softkernels::cpu {
namespace {

SelectOutputs select_rows_cpu(const at::Tensor& scores, double threshold) {
  check_select_inputs(scores);
  SelectOutputs outs = allocate_select_outputs(scores);
  auto& [idx, count] = outs;
  const int64_t B = scores.size(0);
  int64_t* out = idx.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, scores.scalar_type(), "select_rows",
                                  [&] {
    const scalar_t* s = scores.data_ptr<scalar_t>();
    int64_t hard = 0;
    for (int64_t b = 0; b < B; ++b) hard += row_is_hard(s[b], threshold) ? 1 : 0;
    // Stable partition: hard rows ascending in [0, hard), easy rows ascending in [hard, B).
    int64_t h = 0, e = hard;
    for (int64_t b = 0; b < B; ++b) {
      if (row_is_hard(s[b], threshold)) {
        out[h++] = b;
      } else {
        out[e++] = b;
      }
    }
    count.data_ptr<int64_t>()[0] = hard;
  });
  return outs;
}

template <typename scalar_t>
void add_rows_kernel(const at::Tensor& logits, const at::Tensor& src, const int64_t* idx,
                     int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = logits.size(0), V = logits.size(1);
  scalar_t* dst = logits.data_ptr<scalar_t>();
  const scalar_t* add = src.data_ptr<scalar_t>();
  const int64_t dst_stride = logits.stride(0), src_stride = src.stride(0);
  // Parallel over columns; within a column the rows are added in j order, so a row listed twice
  // gets both additions in that order (deterministic, the same order as the CUDA kernel).
  at::parallel_for(0, V, 4096, [&](int64_t lo, int64_t hi) {
    for (int64_t j = 0; j < n; ++j) {
      const int64_t row = idx[j];
      if (!row_in_range(row, B)) continue;
      scalar_t* d = dst + row * dst_stride;
      const scalar_t* a = add + j * src_stride;
      for (int64_t v = lo; v < hi; ++v) {
        d[v] = static_cast<scalar_t>(static_cast<acc_t>(d[v]) + static_cast<acc_t>(a[v]));
      }
    }
  });
}

void add_rows_cpu(const at::Tensor& logits, const at::Tensor& src, const at::Tensor& idx,
                  const at::Tensor& count) {
  check_add_rows_inputs(logits, src, idx, count);
  TORCH_CHECK(logits.device().is_cpu(), "softkernels.add_rows_: expected CPU tensors");
  const int64_t n = rows_to_add(count.data_ptr<int64_t>()[0], idx.size(0), src.size(0));
  if (n == 0 || logits.size(1) == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "add_rows_", [&] {
    add_rows_kernel<scalar_t>(logits, src, idx.data_ptr<int64_t>(), n);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(softkernels, CPU, m) {
  m.impl("select_rows", &select_rows_cpu);
  m.impl("add_rows_", &add_rows_cpu);
}

}  // namespace softkernels::cpu
