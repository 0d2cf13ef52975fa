// Overloads that pick the float or double libm function, in host and device code alike.
#pragma once

#include <cmath>
#include <limits>
#include <type_traits>

#include "common/macros.h"

namespace softkernels {

SK_HD float sk_exp(float x) { return ::expf(x); }
SK_HD double sk_exp(double x) { return ::exp(x); }
SK_HD float sk_log(float x) { return ::logf(x); }
SK_HD double sk_log(double x) { return ::log(x); }
SK_HD float sk_sqrt(float x) { return ::sqrtf(x); }
SK_HD double sk_sqrt(double x) { return ::sqrt(x); }
SK_HD float sk_cos(float x) { return ::cosf(x); }
SK_HD double sk_cos(double x) { return ::cos(x); }
SK_HD float sk_sin(float x) { return ::sinf(x); }
SK_HD double sk_sin(double x) { return ::sin(x); }

template <typename T>
SK_HD T sk_inf() { return std::numeric_limits<T>::infinity(); }
template <typename T>
SK_HD T sk_nan() { return std::numeric_limits<T>::quiet_NaN(); }

template <typename T>
SK_HD bool sk_isnan(T x) { return x != x; }

// Accumulation type of a storage type: double for double, float otherwise (bf16 / fp16 / fp32).
template <typename S>
using acc_t = std::conditional_t<std::is_same_v<S, double>, double, float>;

}  // namespace softkernels
