// CUDA implementations of select_rows and add_rows_ (selective iteration, Think-at-Hard): the
// rules of csrc/common/select_rows.h. Both read their sizes from device memory where the result
// of an earlier op decides them (count), so neither synchronises with the host.
//
// select_rows: one block of 1024 threads. Pass 1 counts the hard rows (block-wide sum); pass 2
// walks the rows in tiles of 1024 and writes the stable partition with a block-wide exclusive
// scan of the hard flags (csrc/cuda/cuda_common.cuh): a hard row b goes to idx[hard rows before
// b], an easy row to idx[total hard + easy rows before b]. No atomics: the output is a pure
// function of the scores. [B] is small (a batch), so one block is plenty.
//
// add_rows_: one thread per column v (grid-stride); each thread adds src[j, v] into
// logits[idx[j], v] for j = 0 .. n-1 in order, n = clamp(count) read on the device. Rows listed
// twice therefore get both additions in j order, exactly like the CPU kernel, and there are no
// write races. Consecutive threads touch consecutive columns (coalesced).
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "common/select_rows.h"
#include "cuda/cuda_common.cuh"
#include "cuda/soft_embed_fwd.h"
#include "select_rows_host.h"

namespace softkernels::cuda {
namespace {

constexpr int kSelectThreads = 1024;
constexpr int kAddThreads = 256;

template <typename S>
__global__ void __launch_bounds__(kSelectThreads)
    select_rows_kernel(const S* __restrict__ scores, int64_t B, double threshold,
                       int64_t* __restrict__ idx, int64_t* __restrict__ count) {
  __shared__ int wsum[kSelectThreads / kWarp];
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t step = blockDim.x;

  // Pass 1: the number of hard rows.
  int mine = 0;
  for (int64_t b = tid; b < B; b += step) mine += row_is_hard(load_scalar<S>(scores + b), threshold);
  int total = 0;
  (void)block_exclusive_scan(mine, wsum, total);

  // Pass 2: stable partition, one tile of blockDim rows at a time.
  int64_t hard_before_tile = 0;
  for (int64_t t0 = 0; t0 < B; t0 += step) {
    const int64_t b = t0 + tid;
    const int flag = (b < B && row_is_hard(load_scalar<S>(scores + b), threshold)) ? 1 : 0;
    int tile_total = 0;
    const int before = block_exclusive_scan(flag, wsum, tile_total);
    if (b < B) {
      const int64_t hard_before = hard_before_tile + before;
      idx[flag ? hard_before : static_cast<int64_t>(total) + (b - hard_before)] = b;
    }
    hard_before_tile += tile_total;
  }
  if (tid == 0) count[0] = total;
}

template <typename S>
__global__ void __launch_bounds__(kAddThreads)
    add_rows_kernel(S* __restrict__ logits, int64_t B, int64_t V, int64_t logits_stride,
                    const S* __restrict__ src, int64_t src_rows, int64_t src_stride,
                    const int64_t* __restrict__ idx, int64_t idx_rows,
                    const int64_t* __restrict__ count) {
  const int64_t n = rows_to_add(count[0], idx_rows, src_rows);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < V;
       v += stride) {
    for (int64_t j = 0; j < n; ++j) {
      const int64_t row = idx[j];
      if (!row_in_range(row, B)) continue;
      S* d = logits + row * logits_stride + v;
      store_scalar<S>(d, load_scalar<S>(d) + load_scalar<S>(src + j * src_stride + v));
    }
  }
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw_cuda_error(err, what);
}

template <typename F>
void dispatch_float(at::ScalarType t, const char* name, F&& f) {
  switch (t) {
    case at::kFloat: f(float{}); break;
    case at::kDouble: f(double{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_CHECK(false, "softkernels.", name, ": unsupported dtype ", t);
  }
}

SelectOutputs select_rows_cuda(const at::Tensor& scores, double threshold) {
  check_select_inputs(scores);
  TORCH_CHECK(SK_ON_DEVICE(scores), "softkernels.select_rows: scores must be on a CUDA device");
  TORCH_CHECK(scores.size(0) < std::numeric_limits<int>::max(),
              "softkernels.select_rows: more than 2^31 - 1 rows");
  const c10::cuda::CUDAGuard guard(scores.device());
  SelectOutputs outs = allocate_select_outputs(scores);
  auto& [idx, count] = outs;
  const int64_t B = scores.size(0);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch_float(scores.scalar_type(), "select_rows", [&](auto tag) {
    using S = decltype(tag);
    SK_LAUNCH(1, kSelectThreads, 0, stream, select_rows_kernel<S>)(
        scores.data_ptr<S>(), B, threshold, idx.data_ptr<int64_t>(), count.data_ptr<int64_t>());
  });
  check_launch("select_rows launch");
  return outs;
}

void add_rows_cuda(const at::Tensor& logits, const at::Tensor& src, const at::Tensor& idx,
                   const at::Tensor& count) {
  check_add_rows_inputs(logits, src, idx, count);
  TORCH_CHECK(SK_ON_DEVICE(logits), "softkernels.add_rows_: tensors must be on a CUDA device");
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t B = logits.size(0), V = logits.size(1);
  if (B == 0 || V == 0 || src.size(0) == 0 || idx.size(0) == 0) return;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t blocks = std::min<int64_t>((V + kAddThreads - 1) / kAddThreads, 65535);
  dispatch_float(logits.scalar_type(), "add_rows_", [&](auto tag) {
    using S = decltype(tag);
    SK_LAUNCH(static_cast<unsigned>(blocks), kAddThreads, 0, stream, add_rows_kernel<S>)(
        logits.data_ptr<S>(), B, V, logits.stride(0), src.data_ptr<S>(), src.size(0),
        src.stride(0), idx.data_ptr<int64_t>(), idx.size(0), count.data_ptr<int64_t>());
  });
  check_launch("add_rows_ launch");
}

}  // namespace

TORCH_LIBRARY_IMPL(softkernels, CUDA, m) {
  m.impl("select_rows", &select_rows_cuda);
  m.impl("add_rows_", &add_rows_cuda);
}

}  // namespace softkernels::cuda
