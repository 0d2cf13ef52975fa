// CUDA implementation of softkernels::soft_embed_backward: the math of the CPU backward_kernel
// (csrc/cpu/soft_embed_cpu.cpp), with the selection held fixed.
//
// grad_logits: zeros + one block per row; warp-parallel dot products c_j = <grad_embeds, E[id_j]>,
//   then each selected slot writes its own entry (a row's ids are distinct, so no conflicts).
// grad_embedding: deterministic. The (row, slot) pairs are stably sorted by token id; the block of
//   the first pair of each id sums all pairs of that id in (row, slot) order, in fp32 (fp64 for
//   fp64 tables), and rounds once: the same order as the CPU kernel, no atomics.
#include <ATen/core/Tensor.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>

#include "common/math.h"
#include "common/params.h"
#include "cuda/cuda_common.cuh"
#include "cuda/soft_embed_fwd.h"
#include "cuda/soft_embed_fwd_host.h"
#include "soft_embed_host.h"

namespace softkernels::cuda {
namespace {

constexpr int kBwdThreads = 256;

struct BwdLogitsArgs {
  const void* logits;
  int64_t ls;
  void* grad_logits;
  int64_t gls;
  const void* emb;
  int64_t es;
  int emb_tag;
  const int64_t* ids;
  const void* weights;  // T [B, k]
  const void* noise;    // T [B, k] (Gumbel g') or nullptr
  const void* ge;       // emb dtype [B, D] contiguous, or nullptr
  const void* gw;       // T [B, k] or nullptr
  const void* gn;       // T [B, k] or nullptr (only with noise)
  const bool* hard;
  RowParamSource rs;
  double tau;
  int64_t B, V, k, D;
};

// Rounds v to the storage type S and back (what writing and re-reading an S entry does).
template <typename S, typename T>
SK_DEV T round_to(T v) {
  if constexpr (std::is_same_v<S, c10::BFloat16>) {
    return static_cast<T>(__bfloat162float(__float2bfloat16_rn(static_cast<float>(v))));
  } else if constexpr (std::is_same_v<S, c10::Half>) {
    return static_cast<T>(__half2float(__float2half_rn(static_cast<float>(v))));
  } else {
    return static_cast<T>(static_cast<S>(v));
  }
}

template <typename scalar_t>
__global__ void __launch_bounds__(kBwdThreads) bwd_logits_kernel(const BwdLogitsArgs a) {
  using T = acc_t<scalar_t>;
  SK_DYN_SMEM(smem_raw);
  T* c = reinterpret_cast<T*>(smem_raw);  // [k]
  T* vals = c + a.k;                      // wc, zmax, sum, gsum
  const int64_t b = blockIdx.x;
  if (a.hard != nullptr && a.hard[b]) return;  // uniform
  const int k = static_cast<int>(a.k);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t* id = a.ids + b * k;
  const T* w = static_cast<const T*>(a.weights) + b * k;
  const T* n = a.noise ? static_cast<const T*>(a.noise) + b * k : nullptr;
  // As on the CPU: a slot that carried weight (not NaN) and names a token of the row.
  auto in_set = [&](int j) {
    return (n ? n[j] > -sk_inf<T>() : w[j] > T(0)) && id[j] >= 0 && id[j] < a.V;
  };

  for (int j = warp; j < k; j += kBwdThreads / 32) {
    const bool on = in_set(j);  // warp-uniform
    T dot = T(0);
    if (on && a.ge != nullptr) {
      dispatch_tag(a.emb_tag, [&](auto* tag) {
        using E = std::remove_pointer_t<decltype(tag)>;
        const E* row = static_cast<const E*>(a.emb) + id[j] * a.es;
        const E* g = static_cast<const E*>(a.ge) + b * a.D;
        for (int64_t d = lane; d < a.D; d += 32) {
          dot += static_cast<T>(load_scalar<E>(g + d)) * static_cast<T>(load_scalar<E>(row + d));
        }
      });
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) dot += __shfl_down_sync(0xFFFFFFFFu, dot, off);
    }
    if (lane == 0) {
      T cj = T(0);
      if (on) {
        cj = dot;
        if (a.gw != nullptr) cj += static_cast<const T*>(a.gw)[b * k + j];
      }
      c[j] = cj;
    }
  }
  __syncthreads();

  const T inv_temp = a.rs.row<T>(b).inv_temp;
  const scalar_t* x = static_cast<const scalar_t*>(a.logits) + b * a.ls;
  const T* gn = a.gn ? static_cast<const T*>(a.gn) + b * k : nullptr;
  if (tid == 0) {
    T wc = T(0);
    for (int j = 0; j < k; ++j) {
      if (in_set(j)) wc += w[j] * c[j];
    }
    vals[0] = wc;
    if (gn != nullptr && n != nullptr) {
      T zmax = -sk_inf<T>(), sum = T(0), gsum = T(0);
      for (int j = 0; j < k; ++j) {
        if (in_set(j)) zmax = sk_max(zmax, load_scalar<scalar_t>(x + id[j]) * inv_temp);
      }
      for (int j = 0; j < k; ++j) {
        sum += in_set(j) ? sk_exp(load_scalar<scalar_t>(x + id[j]) * inv_temp - zmax) : T(0);
        if (in_set(j)) gsum += gn[j];
      }
      vals[1] = zmax;
      vals[2] = sum;
      vals[3] = gsum;
    }
  }
  __syncthreads();
  const T wc = vals[0];
  const T wscale = n ? T(1) / static_cast<T>(a.tau) : T(1);
  scalar_t* gl = static_cast<scalar_t*>(a.grad_logits) + b * a.gls;
  for (int j = tid; j < k; j += kBwdThreads) {
    if (!in_set(j)) continue;
    const T dz = wscale * w[j] * (c[j] - wc);
    T v = round_to<scalar_t>(T(0) + dz * inv_temp);
    if (gn != nullptr && n != nullptr) {
      const T w0 = sk_exp(load_scalar<scalar_t>(x + id[j]) * inv_temp - vals[1]);
      const T dz2 = gn[j] - (w0 / vals[2]) * vals[3];
      v = round_to<scalar_t>(v + dz2 * inv_temp);
    }
    store_scalar<scalar_t>(gl + id[j], static_cast<acc_t<scalar_t>>(v));
  }
}

template <typename E>
__global__ void __launch_bounds__(kBwdThreads)
    bwd_embedding_kernel(const int64_t* sorted, const int64_t* perm, const void* W, bool w_double,
                         const E* GE, int64_t n, int64_t k, int64_t D, int64_t Ve, E* out) {
  using M = acc_t<E>;
  const int64_t p = blockIdx.x;
  const int64_t id = sorted[p];
  if (p > 0 && sorted[p - 1] == id) return;  // not the first pair of this id
  if (id < 0 || id >= Ve) return;
  for (int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x; d < D;
       d += static_cast<int64_t>(gridDim.y) * blockDim.x) {
    M acc = M(0);
    for (int64_t q = p; q < n && sorted[q] == id; ++q) {
      const int64_t pair = perm[q];
      M wj;
      if (w_double) {
        const double wd = static_cast<const double*>(W)[pair];
        if (!(wd > 0.0 || wd < 0.0)) continue;  // not 0, not NaN (WeightGaussian: < 0)
        wj = static_cast<M>(wd);
      } else {
        const float wf = static_cast<const float*>(W)[pair];
        if (!(wf > 0.f || wf < 0.f)) continue;
        wj = static_cast<M>(wf);
      }
      acc += wj * load_scalar<E>(GE + (pair / k) * D + d);
    }
    store_scalar<E>(out + id * D + d, acc);
  }
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw_cuda_error(err, what);
}

std::tuple<at::Tensor, at::Tensor> soft_embed_backward_cuda(SK_SOFT_EMBED_BACKWARD_CPP_PARAMS) {
  TORCH_CHECK(SK_ON_DEVICE(logits), "softkernels: logits must be a CUDA tensor");
  SoftEmbedBackwardCall c = prepare_soft_embed_backward(SK_SOFT_EMBED_BACKWARD_CPP_ARGS);
  const int64_t B = c.B, k = c.k;
  const OptTensor &ge = c.ge, &gw = c.gw, &gn = c.gn;
  const RowParamSource& rs = c.rs;
  const int ltag = dtype_tag(logits.scalar_type(), "logits");
  const int etag = dtype_tag(embedding.scalar_type(), "embedding");

  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor &grad_logits = c.grad_logits, &grad_embedding = c.grad_embedding;
  if (B == 0 || k == 0) return {grad_logits, grad_embedding};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const bool gumbel = noise_kind == kNoiseGumbel;

  if (logits_grad && noise_weights_differentiable(static_cast<int>(noise_kind))) {
    BwdLogitsArgs a{};
    a.logits = logits.data_ptr();
    a.ls = row_stride(logits);
    a.grad_logits = grad_logits.data_ptr();
    a.gls = grad_logits.stride(0);
    a.emb = embedding.data_ptr();
    a.es = row_stride(embedding);
    a.emb_tag = etag;
    a.ids = ids.data_ptr<int64_t>();
    a.weights = weights.data_ptr();
    a.noise = gumbel ? noise.data_ptr() : nullptr;
    a.ge = ge ? ge->data_ptr() : nullptr;
    a.gw = gw ? gw->data_ptr() : nullptr;
    a.gn = (gn && gumbel) ? gn->data_ptr() : nullptr;
    a.hard = c.hard;
    a.rs = rs;
    a.tau = tau;
    a.B = B;
    a.V = c.V;
    a.k = k;
    a.D = embedding.size(1);
    const int tsize = ltag == kTagF64 ? 8 : 4;
    const size_t smem = static_cast<size_t>(k + 4) * tsize;  // k <= 1024: at most 8 KB
    const dim3 grid(static_cast<unsigned>(B));
    switch (ltag) {
      case kTagF32:
        SK_LAUNCH(grid, kBwdThreads, smem, stream, bwd_logits_kernel<float>)(a);
        break;
      case kTagF64:
        SK_LAUNCH(grid, kBwdThreads, smem, stream, bwd_logits_kernel<double>)(a);
        break;
      case kTagBF16:
        SK_LAUNCH(grid, kBwdThreads, smem, stream, bwd_logits_kernel<c10::BFloat16>)(a);
        break;
      default:
        SK_LAUNCH(grid, kBwdThreads, smem, stream, bwd_logits_kernel<c10::Half>)(a);
        break;
    }
    check_launch("soft_embed_backward (logits)");
  }

  if (embedding_grad && ge) {
    const at::Tensor flat = ids.reshape({-1});
    auto sorted = at::sort(flat, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    const at::Tensor& sorted_ids = std::get<0>(sorted);
    const at::Tensor& perm = std::get<1>(sorted);
    const int64_t n = flat.numel();
    const int64_t D = embedding.size(1);
    const unsigned gy = static_cast<unsigned>(
        std::max<int64_t>(1, std::min<int64_t>((D + kBwdThreads - 1) / kBwdThreads, 65535)));
    const dim3 grid(static_cast<unsigned>(n), gy);
    const bool w_double = weights.scalar_type() == at::kDouble;
    const int64_t Ve = embedding.size(0);
    const int64_t* sp = sorted_ids.data_ptr<int64_t>();
    const int64_t* pp = perm.data_ptr<int64_t>();
    const void* W = weights.data_ptr();
    switch (etag) {
      case kTagF32:
        SK_LAUNCH(grid, kBwdThreads, 0, stream, bwd_embedding_kernel<float>)(
            sp, pp, W, w_double, ge->data_ptr<float>(), n, k, D, Ve,
            grad_embedding.data_ptr<float>());
        break;
      case kTagF64:
        SK_LAUNCH(grid, kBwdThreads, 0, stream, bwd_embedding_kernel<double>)(
            sp, pp, W, w_double, ge->data_ptr<double>(), n, k, D, Ve,
            grad_embedding.data_ptr<double>());
        break;
      case kTagBF16:
        SK_LAUNCH(grid, kBwdThreads, 0, stream, bwd_embedding_kernel<c10::BFloat16>)(
            sp, pp, W, w_double, ge->data_ptr<c10::BFloat16>(), n, k, D, Ve,
            grad_embedding.data_ptr<c10::BFloat16>());
        break;
      default:
        SK_LAUNCH(grid, kBwdThreads, 0, stream, bwd_embedding_kernel<c10::Half>)(
            sp, pp, W, w_double, ge->data_ptr<c10::Half>(), n, k, D, Ve,
            grad_embedding.data_ptr<c10::Half>());
        break;
    }
    check_launch("soft_embed_backward (embedding)");
  }
  return {grad_logits, grad_embedding};
}

}  // namespace

TORCH_LIBRARY_IMPL(softkernels, CUDA, m) {
  m.impl("soft_embed_backward", &soft_embed_backward_cuda);
}

}  // namespace softkernels::cuda
