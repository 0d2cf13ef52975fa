// CPU implementation of mix_embeddings: out[n] = sum_j w[n, j] E[ids[n, j]] (+ sigma * N(0, I)
// keyed by (seed_n, offset_n)), with the very mixing code soft_embed uses (cpu/mix_row.h), so
// that mixing the ids and weights soft_embed returned reproduces its embeds bit for bit.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/math.h"
#include "cpu/mix_row.h"
#include "mix_host.h"

namespace softkernels::cpu {
namespace {

template <typename emb_t, typename T>
void mix_kernel(const at::Tensor& embedding, const at::Tensor& ids, const at::Tensor& weights,
                int64_t seed, int64_t offset, const int64_t* seed_rows,
                const int64_t* offset_rows, bool gaussian, double sigma, const MixShape& sh,
                at::Tensor& out) {
  const emb_t* E = embedding.data_ptr<emb_t>();
  const int64_t* I = ids.data_ptr<int64_t>();
  const T* W = weights.data_ptr<T>();
  emb_t* O = out.data_ptr<emb_t>();
  const int64_t k = sh.k, D = sh.D;
  at::parallel_for(0, sh.N, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> acc64;
    std::vector<float> acc32;
    for (int64_t n = begin; n < end; ++n) {
      const int64_t* id = I + n * k;
      const T* w = W + n * k;
      emb_t* o = O + n * D;
      // A slot that carries weight must name a row of the table; else the row is NaN (the
      // wrapper raises before this with validate=True). Zero-weight slots are never read.
      bool ok = true;
      for (int64_t j = 0; j < k; ++j) {
        if (w[j] != T(0) && (id[j] < 0 || id[j] >= sh.Ve)) ok = false;
      }
      if (!ok) {
        for (int64_t d = 0; d < D; ++d) o[d] = static_cast<emb_t>(sk_nan<float>());
        continue;
      }
      mix_row<emb_t, T>(E, sh.emb_stride, D, id, w, k, gaussian, sigma,
                        seed_rows ? seed_rows[n] : seed, offset_rows ? offset_rows[n] : offset,
                        o, acc64, acc32);
    }
  });
}

at::Tensor mix_embeddings_cpu(const at::Tensor& embedding, const at::Tensor& ids,
                              const at::Tensor& weights, int64_t seed, int64_t offset,
                              const std::optional<at::Tensor>& seed_rows,
                              const std::optional<at::Tensor>& offset_rows, bool gaussian,
                              double sigma) {
  const MixShape sh = check_mix_inputs(embedding, ids, weights, seed_rows, offset_rows);
  at::Tensor out = allocate_mix_output(embedding, sh);
  if (sh.N == 0 || sh.D == 0) return out;
  const int64_t* sr = seed_rows ? seed_rows->data_ptr<int64_t>() : nullptr;
  const int64_t* orows = offset_rows ? offset_rows->data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, embedding.scalar_type(),
                                  "mix_embeddings", [&] {
    using emb_t = scalar_t;
    if (weights.scalar_type() == at::kDouble) {
      mix_kernel<emb_t, double>(embedding, ids, weights, seed, offset, sr, orows, gaussian, sigma,
                                sh, out);
    } else {
      mix_kernel<emb_t, float>(embedding, ids, weights, seed, offset, sr, orows, gaussian, sigma,
                               sh, out);
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(softkernels, CPU, m) { m.impl("mix_embeddings", &mix_embeddings_cpu); }

}  // namespace softkernels::cpu
