// Counter-based randomness: Philox 4x32-10 (Salmon et al., SC'11) and the noise transforms built
// on it. A draw is a pure function of (seed, offset, stream tag, index, attempt), so a row's noise
// does not depend on the batch it sits in, on the device, or on thread scheduling.
//
// Counter layout (documented in docs/semantics.md, mirrored in softkernels/reference.py):
//   ctr = {index, (tag << 16) | attempt, offset_lo, offset_hi},  key = {seed_lo, seed_hi}
#pragma once

#include <cstdint>

#include "common/macros.h"
#include "common/math.h"

namespace softkernels {

struct U32x4 {
  uint32_t x, y, z, w;
};

SK_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

SK_HD U32x4 philox4x32_10(U32x4 c, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
#pragma unroll
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kM0, c.x, hi0, lo0);
    mulhilo32(kM1, c.z, hi1, lo1);
    c = U32x4{hi1 ^ c.y ^ k0, lo1, hi0 ^ c.w ^ k1, lo0};
    k0 += kW0;
    k1 += kW1;
  }
  return c;
}

SK_HD U32x4 philox_draw(int64_t seed, int64_t offset, uint32_t tag, uint32_t index,
                        uint32_t attempt) {
  const uint64_t s = static_cast<uint64_t>(seed), o = static_cast<uint64_t>(offset);
  U32x4 ctr{index, (tag << 16) | (attempt & 0xFFFFu), static_cast<uint32_t>(o),
            static_cast<uint32_t>(o >> 32)};
  return philox4x32_10(ctr, static_cast<uint32_t>(s), static_cast<uint32_t>(s >> 32));
}

// Uniform in the open interval (0, 1): an odd multiple of 2^-24, exact in float and double, so
// the float64 reference sees the very same number.
template <typename T>
SK_HD T uniform_open(uint32_t x) {
  return static_cast<T>(((x >> 9) << 1) | 1u) * static_cast<T>(5.9604644775390625e-08);  // 2^-24
}

// Standard Gumbel(0, 1).
template <typename T>
SK_HD T gumbel_from_bits(uint32_t x) {
  return -sk_log(-sk_log(uniform_open<T>(x)));
}

// Box-Muller: two standard normals from two uniforms.
template <typename T>
SK_HD void normal_pair(uint32_t a, uint32_t b, T& n0, T& n1) {
  const T r = sk_sqrt(T(-2) * sk_log(uniform_open<T>(a)));
  const T theta = static_cast<T>(6.283185307179586) * uniform_open<T>(b);
  n0 = r * sk_cos(theta);
  n1 = r * sk_sin(theta);
}

// The Gumbel variable of token `id` in a row.
template <typename T>
SK_HD T gumbel_noise(int64_t seed, int64_t offset, int64_t id) {
  return gumbel_from_bits<T>(philox_draw(seed, offset, kTagGumbel, static_cast<uint32_t>(id), 0).x);
}

// Standard normals of embedding dimensions 4q .. 4q+3 of a row (one Philox draw).
template <typename T>
SK_HD void gaussian_noise4(int64_t seed, int64_t offset, int64_t q, T out[4]) {
  const U32x4 r = philox_draw(seed, offset, kTagGaussian, static_cast<uint32_t>(q), 0);
  normal_pair<T>(r.x, r.y, out[0], out[1]);
  normal_pair<T>(r.z, r.w, out[2], out[3]);
}

// The standard normal of embedding dimension d of a row.
template <typename T>
SK_HD T gaussian_noise(int64_t seed, int64_t offset, int64_t d) {
  T n[4];
  gaussian_noise4<T>(seed, offset, d >> 2, n);
  return n[d & 3];
}

// The standard normal of token `id` in a row (WeightGaussian noise on the mixture weights).
template <typename T>
SK_HD T weight_normal_noise(int64_t seed, int64_t offset, int64_t id) {
  const U32x4 r = philox_draw(seed, offset, kTagWeightGaussian, static_cast<uint32_t>(id), 0);
  T n0, n1;
  normal_pair<T>(r.x, r.y, n0, n1);
  return n0;
}

constexpr int kGammaMaxAttempts = 16;

// log of a Gamma(shape, 1) sample for token `id` (Marsaglia-Tsang, with the shape < 1 boost
// G(a) = G(a + 1) * U^(1/a) done in log space so that tiny shapes do not underflow to 0).
// Attempt i uses Philox draw i; after kGammaMaxAttempts rejections (probability < 1e-20) the
// mean is returned, which keeps the loop bounded on every device.
template <typename T>
SK_HD T log_gamma_sample(T shape, int64_t seed, int64_t offset, int64_t id) {
  const bool boost = shape < T(1);
  const T a = boost ? shape + T(1) : shape;
  const T d = a - T(1) / T(3);
  const T c = T(1) / sk_sqrt(T(9) * d);
  T log_g = sk_log(a);
  T boost_u = T(0.5);
  for (int attempt = 0; attempt < kGammaMaxAttempts; ++attempt) {
    const U32x4 r = philox_draw(seed, offset, kTagDirichlet, static_cast<uint32_t>(id),
                                static_cast<uint32_t>(attempt));
    T n, unused;
    normal_pair<T>(r.x, r.y, n, unused);
    T v = T(1) + c * n;
    if (v <= T(0)) continue;
    v = v * v * v;
    const T u = uniform_open<T>(r.z);
    if (sk_log(u) < T(0.5) * n * n + d - d * v + d * sk_log(v)) {
      log_g = sk_log(d * v);
      boost_u = uniform_open<T>(r.w);
      break;
    }
  }
  if (boost) log_g += sk_log(boost_u) / shape;
  return log_g;
}

}  // namespace softkernels
