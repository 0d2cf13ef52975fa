// CUDA implementation of softkernels::mix_embeddings: one block per row, the mixing code of
// soft_embed's forward (mix_row.cuh), so that mixing the ids and weights soft_embed returned
// gives back its embeds bit for bit. No host synchronisation.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <limits>

#include "common/macros.h"
#include "common/math.h"
#include "cuda/mix_row.cuh"
#include "mix_host.h"

namespace softkernels::cuda {
namespace {

template <typename E, typename T>
__global__ void __launch_bounds__(kThreads) mix_kernel(const E* __restrict__ table, int64_t es,
                                                       int64_t Ve, int64_t D,
                                                       const int64_t* __restrict__ ids,
                                                       const T* __restrict__ weights, int k,
                                                       int64_t seed, int64_t offset,
                                                       const int64_t* __restrict__ seed_rows,
                                                       const int64_t* __restrict__ offset_rows,
                                                       bool gauss, double sigma, E* out) {
  __shared__ int nz[kMaxK];
  __shared__ int nnz_s, bad_s;
  const int64_t n = blockIdx.x;
  const int64_t* id = ids + n * k;
  const T* w = weights + n * k;
  E* o = out + n * D;
  if (threadIdx.x == 0) {
    // The slots with w != 0 in slot order, as soft_embed's epilogue lists them; a weighted slot
    // naming no row of the table makes the row NaN.
    int cnt = 0, bad = 0;
    for (int j = 0; j < k; ++j) {
      if (w[j] != T(0)) {
        if (id[j] < 0 || id[j] >= Ve) bad = 1;
        nz[cnt++] = j;
      }
    }
    nnz_s = cnt;
    bad_s = bad;
  }
  __syncthreads();
  if (bad_s) {
    for (int64_t d = threadIdx.x; d < D; d += kThreads) store_scalar<E>(o + d, sk_nan<acc_t<E>>());
    return;
  }
  mix_row<E, T>(table, es, D, o, id, w, nz, nnz_s, gauss, sigma,
                seed_rows != nullptr ? seed_rows[n] : seed,
                offset_rows != nullptr ? offset_rows[n] : offset);
}

template <typename E, typename T>
void launch(const at::Tensor& embedding, const at::Tensor& ids, const at::Tensor& weights,
            int64_t seed, int64_t offset, const int64_t* seed_rows, const int64_t* offset_rows,
            bool gauss, double sigma, const MixShape& sh, at::Tensor& out, cudaStream_t stream) {
  SK_LAUNCH(static_cast<unsigned>(sh.N), kThreads, 0, stream, mix_kernel<E, T>)(
      static_cast<const E*>(embedding.data_ptr()), sh.emb_stride, sh.Ve, sh.D,
      ids.data_ptr<int64_t>(), static_cast<const T*>(weights.data_ptr()),
      static_cast<int>(sh.k), seed, offset, seed_rows, offset_rows, gauss, sigma,
      static_cast<E*>(out.data_ptr()));
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw_cuda_error(err, "mix_embeddings launch");
}

template <typename T>
void launch_for_table(const at::Tensor& embedding, const at::Tensor& ids,
                      const at::Tensor& weights, int64_t seed, int64_t offset,
                      const int64_t* seed_rows, const int64_t* offset_rows, bool gauss,
                      double sigma, const MixShape& sh, at::Tensor& out, cudaStream_t stream) {
  switch (embedding.scalar_type()) {
    case at::kFloat:
      launch<float, T>(embedding, ids, weights, seed, offset, seed_rows, offset_rows, gauss,
                       sigma, sh, out, stream);
      break;
    case at::kDouble:
      launch<double, T>(embedding, ids, weights, seed, offset, seed_rows, offset_rows, gauss,
                        sigma, sh, out, stream);
      break;
    case at::kBFloat16:
      launch<c10::BFloat16, T>(embedding, ids, weights, seed, offset, seed_rows, offset_rows,
                               gauss, sigma, sh, out, stream);
      break;
    case at::kHalf:
      launch<c10::Half, T>(embedding, ids, weights, seed, offset, seed_rows, offset_rows, gauss,
                           sigma, sh, out, stream);
      break;
    default:
      TORCH_CHECK(false, "softkernels.mix_embeddings: embedding must be float32/float64/"
                         "bfloat16/float16, got ", embedding.scalar_type());
  }
}

at::Tensor mix_embeddings_cuda(const at::Tensor& embedding, const at::Tensor& ids,
                               const at::Tensor& weights, int64_t seed, int64_t offset,
                               const std::optional<at::Tensor>& seed_rows,
                               const std::optional<at::Tensor>& offset_rows, bool gaussian,
                               double sigma) {
  TORCH_CHECK(SK_ON_DEVICE(ids), "softkernels.mix_embeddings: tensors must be on a CUDA device");
  const MixShape sh = check_mix_inputs(embedding, ids, weights, seed_rows, offset_rows);
  TORCH_CHECK(sh.N <= std::numeric_limits<int32_t>::max(),
              "softkernels.mix_embeddings: N must be below 2^31 on CUDA, got ", sh.N);
  const c10::cuda::CUDAGuard guard(ids.device());
  at::Tensor out = allocate_mix_output(embedding, sh);
  if (sh.N == 0 || sh.D == 0) return out;
  const int64_t* sr = seed_rows ? seed_rows->data_ptr<int64_t>() : nullptr;
  const int64_t* orows = offset_rows ? offset_rows->data_ptr<int64_t>() : nullptr;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (weights.scalar_type() == at::kDouble) {
    launch_for_table<double>(embedding, ids, weights, seed, offset, sr, orows, gaussian, sigma,
                             sh, out, stream);
  } else {
    launch_for_table<float>(embedding, ids, weights, seed, offset, sr, orows, gaussian, sigma, sh,
                            out, stream);
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(softkernels, CUDA, m) { m.impl("mix_embeddings", &mix_embeddings_cuda); }

}  // namespace softkernels::cuda
