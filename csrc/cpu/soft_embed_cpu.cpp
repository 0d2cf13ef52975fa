// CPU implementation of soft_embed and its backward.
//
// Forward, per row: one read of the logits computes the softmax statistics (max, sum-exp,
// entropy) and the row's candidate pool together (vectorised, chunk by chunk, never
// materialising p), then csrc/common/filters.h turns the pool into the k slots, and the k
// embedding rows are mixed in fp32. Work items are (row, slice) pairs run in parallel; a row's
// slices are merged in a fixed order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/filters.h"
#include "common/params.h"
#include "common/philox.h"
#include "common/row_state.h"
#include "cpu/mix_row.h"
#include "cpu/topk_select.h"
#include "cpu/vec_utils.h"
#include "soft_embed_host.h"

namespace softkernels::cpu {
namespace {

// Softmax statistics of one fixed slice of a row.
template <typename T>
struct SliceStats {
  RowStats<T> st = stats_empty<T>();
  bool nonfinite = false;
};

// Rows are cut into fixed slices whose statistics are merged in slice order. The cut depends on V
// only, never on B or the thread count, so a row's result is bitwise the same in any batch. (The
// candidate selection is exact whatever order it sees the slices in, so one selector may run
// across several slices of a row.)
constexpr int64_t kSlice = 32768;
constexpr int64_t kChunk = 2048;

// Vectorised scan for fp32 accumulation (fp32 / bf16 / fp16 logits): one read of the logits,
// chunk by chunk; each chunk is converted and scaled into an L1-resident buffer, then a second
// loop over that buffer updates the sums and offers candidates to the selector.
template <typename scalar_t>
void scan_slice_f32(const scalar_t* x, int64_t begin, int64_t end, float inv_temp,
                    TopSelector<float>& sel, SliceStats<float>& out) {
  constexpr int64_t W = FVec::size();
  alignas(64) float z[kChunk];
  RowStats<float>& st = out.st;
  const FVec vinv(inv_temp), vfloor(-1e4f);
  for (int64_t c0 = begin; c0 < end; c0 += kChunk) {
    const int64_t n = std::min(kChunk, end - c0);
    // Convert, scale, and find the chunk max (NaN-propagating, so NaN is caught here).
    FVec vmax(-sk_inf<float>());
    int64_t i = 0;
    for (; i + 2 * W <= n; i += 2 * W) {
      FVec lo, hi;
      load2(x + c0 + i, lo, hi);
      lo = lo * vinv;
      hi = hi * vinv;
      lo.store(z + i);
      hi.store(z + i + W);
      vmax = at::vec::maximum(vmax, at::vec::maximum(lo, hi));
    }
    alignas(64) float lanes[W];
    vmax.store(lanes);
    float cmax = -sk_inf<float>();
    auto fold = [&cmax](float v) {
      cmax = sk_isnan(v) || sk_isnan(cmax) ? sk_nan<float>() : std::max(cmax, v);
    };
    for (int l = 0; l < W; ++l) fold(lanes[l]);
    for (; i < n; ++i) {
      z[i] = static_cast<float>(x[c0 + i]) * inv_temp;
      fold(z[i]);
    }
    if (sk_isnan(cmax) || cmax == sk_inf<float>()) {
      out.nonfinite = true;
      return;
    }
    const bool any_finite = cmax > -sk_inf<float>();
    if (any_finite && cmax > st.m) st = stats_rebase(st, cmax);
    // Candidates first offered one by one until the selector holds its P entries.
    i = 0;
    for (; i < n && !sel.full(); ++i) sel.push(z[i], c0 + i);
    const FVec vm(st.m);
    FVec vs(0.f), va(0.f);
    int64_t j = 0;
    if (any_finite) {
      for (; j + W <= n; j += W) {
        const FVec zj = FVec::loadu(z + j);
        // Clamping z - m keeps -inf entries at e = 0 and e * t = 0 (not 0 * -inf = NaN).
        const FVec t = at::vec::maximum(zj - vm, vfloor);
        const FVec e = t.exp_u20();
        vs = vs + e;
        va = at::vec::fmadd(e, t, va);
        if (j >= i) {
          const int zero = (zj > FVec(sel.threshold())).zero_mask();
          if (zero != (1 << W) - 1) {
            for (int l = 0; l < W; ++l) {
              if (!(zero & (1 << l))) sel.push(z[j + l], c0 + j + l);
            }
          }
        } else {
          for (int l = 0; l < W; ++l) {
            if (j + l >= i) sel.push(z[j + l], c0 + j + l);
          }
        }
      }
    }
    float s_sum = hsum(vs), a_sum = hsum(va);
    for (; j < n; ++j) {
      if (j >= i) sel.push(z[j], c0 + j);
      if (z[j] == -sk_inf<float>()) continue;
      // Clamped like the vector loop: z - m may overflow to -inf for finite z (e = 0 then).
      const float t = std::max(z[j] - st.m, -1e4f), e = std::exp(t);
      s_sum += e;
      a_sum += e * t;
    }
    st.s += s_sum;
    st.a += a_sum;
  }
}

// Scalar scan (float64 logits, used by gradcheck and the double-precision tests).
template <typename scalar_t, typename T>
void scan_slice_scalar(const scalar_t* x, int64_t begin, int64_t end, T inv_temp,
                       TopSelector<T>& sel, SliceStats<T>& out) {
  for (int64_t i = begin; i < end; ++i) {
    const T z = static_cast<T>(x[i]) * inv_temp;
    if (sk_isnan(z) || z == sk_inf<T>()) {
      out.nonfinite = true;
      return;
    }
    if (z != -sk_inf<T>()) stats_push(out.st, z);
    sel.push(z, i);
  }
}

template <typename scalar_t, typename T>
void scan_slice(const scalar_t* x, int64_t begin, int64_t end, T inv_temp, TopSelector<T>& sel,
                SliceStats<T>& out) {
  if constexpr (std::is_same_v<T, float>) {
    scan_slice_f32<scalar_t>(x, begin, end, inv_temp, sel, out);
  } else {
    scan_slice_scalar<scalar_t, T>(x, begin, end, inv_temp, sel, out);
  }
}

template <typename scalar_t, typename emb_t>
void forward_kernel(const at::Tensor& logits, const at::Tensor& embedding,
                    const SoftEmbedShape& sh, const RowParamSource& rs, const NoiseParams& np,
                    const bool* hard, const int64_t* hard_ids, const SoftEmbedOutputs& outs) {
  using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const auto& [embeds, ids, weights, entropy, max_prob, noise, status] = outs;
  const scalar_t* X = logits.data_ptr<scalar_t>();
  const emb_t* E = embedding.data_ptr<emb_t>();
  emb_t* out_e = embeds.data_ptr<emb_t>();
  int64_t* out_ids = ids.data_ptr<int64_t>();
  T* out_w = weights.data_ptr<T>();
  T* out_h = entropy.data_ptr<T>();
  T* out_pmax = max_prob.data_ptr<T>();
  const bool has_noise = noise_has_slots(np.kind);
  T* out_noise = has_noise ? noise.data_ptr<T>() : nullptr;
  int32_t* out_status = status.data_ptr<int32_t>();
  const int64_t B = sh.B, V = sh.V, k = sh.k, D = sh.D;

  const int64_t S = (V + kSlice - 1) / kSlice;
  // Work items: whole rows when there are enough of them for the threads, else single slices.
  const int64_t per_item = B >= at::get_num_threads() ? S : 1;
  const int64_t items_per_row = S / per_item;
  std::vector<SliceStats<T>> stats(static_cast<size_t>(B * S));
  std::vector<std::vector<Candidate<T>>> cands(static_cast<size_t>(B * items_per_row));
  at::parallel_for(0, B * items_per_row, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / items_per_row, s0 = (item % items_per_row) * per_item;
      const RowParams<T> rp = rs.row<T>(b);
      if (rs.any_rows() && !row_params_ok(rp, V, k, np.kind, sh.pool)) continue;
      const int64_t lo = s0 * kSlice, hi = std::min(V, (s0 + per_item) * kSlice);
      TopSelector<T> sel(std::min(sh.pool, hi - lo));
      for (int64_t s = s0; s < s0 + per_item; ++s) {
        SliceStats<T>& sl = stats[b * S + s];
        scan_slice<scalar_t, T>(X + b * sh.logits_stride, s * kSlice,
                                std::min(V, (s + 1) * kSlice), rp.inv_temp, sel, sl);
        if (sl.nonfinite) break;
      }
      cands[item] = std::move(sel.finish());
    }
  });

  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    const size_t P = static_cast<size_t>(sh.pool);
    std::vector<Candidate<T>> pool;
    std::vector<T> e(P), key(P);
    std::vector<int> order(P);
    std::vector<uint8_t> taken(P);
    std::vector<double> acc64;
    std::vector<float> acc32;
    for (int64_t b = begin; b < end; ++b) {
      int64_t* row_ids = out_ids + b * k;
      T* row_w = out_w + b * k;
      T* row_noise = has_noise ? out_noise + b * k : nullptr;
      emb_t* row_e = out_e + b * D;
      const RowParams<T> rp = rs.row<T>(b);
      int32_t flag = kStatusOk;
      if (rs.any_rows() && !row_params_ok(rp, V, k, np.kind, sh.pool)) flag = kStatusBadParam;

      RowStats<T> st = stats_empty<T>();
      pool.clear();
      for (int64_t s = 0; s < S && flag == kStatusOk; ++s) {
        const SliceStats<T>& sl = stats[b * S + s];
        if (sl.nonfinite) flag = kStatusNonFinite;
        st = stats_merge(st, sl.st);
      }
      for (int64_t it = 0; it < items_per_row && flag == kStatusOk; ++it) {
        const auto& c = cands[b * items_per_row + it];
        pool.insert(pool.end(), c.begin(), c.end());
      }
      if (flag == kStatusOk && st.s == T(0)) flag = kStatusAllMasked;
      const bool is_hard = hard && hard[b];
      const int64_t hard_id = (is_hard && hard_ids) ? hard_ids[b] : -1;  // -1: argmax
      if (flag == kStatusOk && is_hard && hard_ids && (hard_id < 0 || hard_id >= V)) {
        flag = kStatusBadHardId;
      }
      out_status[b] = flag;
      if (flag != kStatusOk) {
        poison_row(static_cast<int>(k), has_noise, row_ids, row_w, row_noise);
        out_h[b] = sk_nan<T>();
        out_pmax[b] = sk_nan<T>();
        for (int64_t d = 0; d < D; ++d) row_e[d] = static_cast<emb_t>(sk_nan<float>());
        continue;
      }
      if (items_per_row > 1) {
        const size_t keep = std::min(P, pool.size());
        std::partial_sort(pool.begin(), pool.begin() + keep, pool.end(), better<T>);
        pool.resize(keep);
      }
      out_h[b] = stats_entropy(st);
      out_pmax[b] = stats_max_prob(st);
      const bool dirichlet = noise_redraws_support(np.kind);
      const int pool_n =
          static_cast<int>(row_pool_size(V, k, rp.top_k, dirichlet, rp.keep_ties));
      if (is_hard) {
        finish_hard_row(pool.data(), pool_n, static_cast<int>(k), hard_id, np.kind, row_ids, row_w,
                        row_noise);
        // Hard rows carry the token's embedding bit for bit.
        std::memcpy(row_e, E + row_ids[0] * sh.emb_stride, sizeof(emb_t) * D);
        continue;
      }
      RowScratch<T> sc{e.data(), key.data(), order.data(), taken.data()};
      finish_row(pool.data(), pool_n, static_cast<int>(k), V, st, rp, np, sc, row_ids, row_w,
                 row_noise);
      mix_row(E, sh.emb_stride, D, row_ids, row_w, k, np.kind == kNoiseGaussian, np.sigma,
              rp.seed, rp.offset, row_e, acc64, acc32);
    }
  });
}

SoftEmbedOutputs soft_embed_cpu(SK_SOFT_EMBED_CPP_PARAMS) {
  const SoftEmbedCall c = prepare_soft_embed(SK_SOFT_EMBED_CPP_ARGS);
  const SoftEmbedShape& sh = c.sh;
  const RowParamSource& rs = c.rs;
  const NoiseParams& np = c.np;
  SoftEmbedOutputs outs = allocate_outputs(logits, embedding, k, noise_kind);
  if (sh.B == 0) return outs;
  const bool* hard_p = c.hard;
  const int64_t* hard_ids_p = c.hard_ids;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "soft_embed",
                                  [&] {
    using logits_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, embedding.scalar_type(),
                                    "soft_embed_mix", [&] {
      forward_kernel<logits_t, scalar_t>(logits, embedding, sh, rs, np, hard_p, hard_ids_p,
                                         outs);
    });
  });
  return outs;
}

// ---------------------------------------------------------------------------------------------
// Backward. With the selected slots S fixed (w_j > 0, or finite g' for Gumbel):
//   no noise / Gaussian: w = softmax_S(z)           -> dz_i = w_i (c_i - sum_j w_j c_j)
//   Gumbel:              w = softmax_S((z + n) / tau) -> dz_i = w_i (c_i - sum_j w_j c_j) / tau
//                        g' = z - logsumexp_S(z) + n  -> dz_i += gn_i - w0_i sum_j gn_j
//   Dirichlet, hard rows and the other kinds without noise_weights_differentiable: weights are
//   treated as constants (no logits gradient).
// with z = logits / T, c_j = <grad_embeds, E[id_j]> + grad_weights_j, and grad_logits = dz / T.
// grad_embedding[id_j] += w_j * grad_embeds (all rows; w_j may be negative with WeightGaussian).
template <typename scalar_t, typename emb_t>
void backward_kernel(const OptTensor& grad_embeds, const OptTensor& grad_weights,
                     const OptTensor& grad_noise, const at::Tensor& logits,
                     const at::Tensor& embedding, const at::Tensor& ids,
                     const at::Tensor& weights, const at::Tensor& noise, const bool* hard,
                     const RowParamSource& rs, int noise_kind, double tau, bool logits_grad,
                     bool embedding_grad, at::Tensor& grad_logits, at::Tensor& grad_embedding) {
  using T = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t B = logits.size(0), k = ids.size(1), D = embedding.size(1);
  const int64_t V = logits.size(1), Ve = embedding.size(0);
  const int64_t ls = row_stride(logits), es = row_stride(embedding);
  const int64_t gls = grad_logits.stride(0);  // grad_logits is contiguous; logits may not be
  const scalar_t* X = logits.data_ptr<scalar_t>();
  const emb_t* E = embedding.data_ptr<emb_t>();
  const int64_t* I = ids.data_ptr<int64_t>();
  const T* W = weights.data_ptr<T>();
  const T* N = noise_kind == kNoiseGumbel ? noise.data_ptr<T>() : nullptr;
  const emb_t* GE = grad_embeds ? grad_embeds->data_ptr<emb_t>() : nullptr;
  const T* GW = grad_weights ? grad_weights->data_ptr<T>() : nullptr;
  const T* GN = (grad_noise && N) ? grad_noise->data_ptr<T>() : nullptr;

  if (logits_grad && noise_weights_differentiable(noise_kind)) {
    scalar_t* GL = grad_logits.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> c(k), w0(k);
      for (int64_t b = begin; b < end; ++b) {
        if (hard && hard[b]) continue;
        const int64_t* id = I + b * k;
        const T* w = W + b * k;
        const T* n = N ? N + b * k : nullptr;
        const T inv_temp = rs.row<T>(b).inv_temp;
        // A slot is in the set when it carried weight (NaN, from a flagged row, does not) and
        // names a token of the row.
        auto in_set = [&](int64_t j) {
          return (n ? n[j] > -sk_inf<T>() : w[j] > T(0)) && id[j] >= 0 && id[j] < V;
        };
        T wc = T(0);
        for (int64_t j = 0; j < k; ++j) {
          c[j] = T(0);
          if (!in_set(j)) continue;
          if (GE) {
            const emb_t* row = E + id[j] * es;
            const emb_t* g = GE + b * D;
            T dot = T(0);
            for (int64_t d = 0; d < D; ++d) dot += static_cast<T>(g[d]) * static_cast<T>(row[d]);
            c[j] = dot;
          }
          if (GW) c[j] += GW[b * k + j];
          wc += w[j] * c[j];
        }
        const T wscale = n ? T(1) / static_cast<T>(tau) : T(1);
        scalar_t* gl = GL + b * gls;
        for (int64_t j = 0; j < k; ++j) {
          if (!in_set(j)) continue;
          const T dz = wscale * w[j] * (c[j] - wc);
          gl[id[j]] = static_cast<scalar_t>(static_cast<T>(gl[id[j]]) + dz * inv_temp);
        }
        if (GN) {
          // w0 = softmax over the set of z = logits / T, recomputed from the logits.
          const scalar_t* x = X + b * ls;
          T zmax = -sk_inf<T>(), sum = T(0), gsum = T(0);
          for (int64_t j = 0; j < k; ++j)
            if (in_set(j)) zmax = std::max(zmax, static_cast<T>(x[id[j]]) * inv_temp);
          for (int64_t j = 0; j < k; ++j) {
            w0[j] = in_set(j) ? std::exp(static_cast<T>(x[id[j]]) * inv_temp - zmax) : T(0);
            sum += w0[j];
            if (in_set(j)) gsum += GN[b * k + j];
          }
          for (int64_t j = 0; j < k; ++j) {
            if (!in_set(j)) continue;
            const T dz = GN[b * k + j] - (w0[j] / sum) * gsum;
            gl[id[j]] = static_cast<scalar_t>(static_cast<T>(gl[id[j]]) + dz * inv_temp);
          }
        }
      }
    });
  }

  if (embedding_grad && GE) {
    // Threads own disjoint column ranges, so the scatter-add needs no atomics. Accumulate in
    // fp32 (fp64 for fp64 tables) and round once.
    using macc_t = std::conditional_t<std::is_same_v<emb_t, double>, double, float>;
    at::Tensor acc = std::is_same_v<emb_t, macc_t>
                         ? grad_embedding
                         : at::zeros(grad_embedding.sizes(),
                                     grad_embedding.options().dtype(
                                         std::is_same_v<macc_t, double> ? at::kDouble : at::kFloat));
    macc_t* A = acc.data_ptr<macc_t>();
    const int64_t as = acc.stride(0);
    at::parallel_for(0, D, 64, [&](int64_t d0, int64_t d1) {
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t j = 0; j < k; ++j) {
          const T wj = W[b * k + j];
          const int64_t v = I[b * k + j];
          if (!(wj > T(0) || wj < T(0)) || v < 0 || v >= Ve) continue;  // not 0, not NaN
          macc_t* dst = A + v * as;
          const emb_t* g = GE + b * D;
          for (int64_t d = d0; d < d1; ++d)
            dst[d] += static_cast<macc_t>(wj) * static_cast<macc_t>(g[d]);
        }
      }
    });
    if (!acc.is_same(grad_embedding)) grad_embedding.copy_(acc);
  }
}

std::tuple<at::Tensor, at::Tensor> soft_embed_backward_cpu(SK_SOFT_EMBED_BACKWARD_CPP_PARAMS) {
  SoftEmbedBackwardCall c = prepare_soft_embed_backward(SK_SOFT_EMBED_BACKWARD_CPP_ARGS);
  const int64_t B = c.B, k = c.k;
  const OptTensor &ge = c.ge, &gw = c.gw, &gn = c.gn;
  const RowParamSource& rs = c.rs;
  at::Tensor &grad_logits = c.grad_logits, &grad_embedding = c.grad_embedding;
  if (B == 0 || k == 0) return {grad_logits, grad_embedding};
  const bool* hard_p = c.hard;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(),
                                  "soft_embed_backward", [&] {
    using logits_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, embedding.scalar_type(),
                                    "soft_embed_backward_mix", [&] {
      backward_kernel<logits_t, scalar_t>(ge, gw, gn, logits, embedding, ids, weights, noise,
                                          hard_p, rs, static_cast<int>(noise_kind), tau,
                                          logits_grad, embedding_grad, grad_logits,
                                          grad_embedding);
    });
  });
  return {grad_logits, grad_embedding};
}

}  // namespace

TORCH_LIBRARY_IMPL(softkernels, CPU, m) {
  m.impl("soft_embed", &soft_embed_cpu);
  m.impl("soft_embed_backward", &soft_embed_backward_cpu);
}

}  // namespace softkernels::cpu
