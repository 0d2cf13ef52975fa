// Small vector helpers for the CPU kernels: load any supported dtype as float lanes, store back.
#pragma once

#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

namespace softkernels::cpu {

using FVec = at::vec::Vectorized<float>;

template <typename T>
constexpr bool is_reduced_v = std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>;

// Loads 2 * FVec::size() values starting at p as two float vectors.
template <typename T>
inline void load2(const T* p, FVec& lo, FVec& hi) {
  if constexpr (std::is_same_v<T, float>) {
    lo = FVec::loadu(p);
    hi = FVec::loadu(p + FVec::size());
  } else {
    static_assert(is_reduced_v<T>);
    auto v = at::vec::Vectorized<T>::loadu(p);
    std::tie(lo, hi) = at::vec::convert_to_float<T>(v);
  }
}

template <typename T>
inline void store2(T* p, const FVec& lo, const FVec& hi) {
  if constexpr (std::is_same_v<T, float>) {
    lo.store(p);
    hi.store(p + FVec::size());
  } else {
    static_assert(is_reduced_v<T>);
    at::vec::convert_from_float<T>(lo, hi).store(p);
  }
}

inline float hsum(const FVec& v) {
  alignas(64) float tmp[FVec::size()];
  v.store(tmp);
  float s = 0.f;
  for (int i = 0; i < FVec::size(); ++i) s += tmp[i];
  return s;
}

}  // namespace softkernels::cpu
