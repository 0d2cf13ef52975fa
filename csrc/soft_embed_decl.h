// soft_embed's parameters, declared once: name, schema type and position. Everything that lists
// them is generated from this file: the schema string (csrc/ops.cpp and the CUDA emulation's
// copy), the C++ parameter and argument lists of the CPU kernel, the CUDA launcher and
// tools/cuda_emu, the per-row parameter block of the kernels (RowParamSource / RowParams, their
// unpacking and range check: csrc/common/params.h, filters.h, soft_embed_host.h) and what the
// Python layer reads (softkernels._C.SOFT_EMBED_PARAMS: the fake kernel and autograd's
// bookkeeping; softkernels._C.SOFT_EMBED_ROW_PARAMS: the validation of softkernels/ops.py and
// hf/config.py). docs/ops.md lists what adding a parameter touches.
//
// SK_SOFT_EMBED_PARAMS(FIRST, NEXT) expands FIRST(type, name) for the first parameter and
// NEXT(type, name) for each further one (NEXT adds the separating comma). Types: Tensor,
// OptTensor (Tensor?), Int (int64), Float (double), Bool, and IntZero (int64 with the schema
// default 0, for parameters added after callers existed: positional calls may leave them out).
// soft_embed_backward has its own table.
#pragma once

#include <cstdint>

// The kernels' per-row parameters (the filters and the noise key). Each is one number for the
// batch (schema `<name>`) or a [B] tensor that overrides it (`<name>_rows`: float64 for Real,
// int64 for Int). SK_SOFT_EMBED_ROW_PARAMS(ROW, X) expands, per parameter,
//   ROW(X, kind, name, lo, hi, lo_open, hi_open, neutral, warp)
// kind: Real (compared and used in the kernels' stats type: float32, float64 for float64 logits),
//   Int (int64), or Key (int64 keying the row's random stream, not a sampling filter: the
//   Hugging Face / vLLM configs derive it per row instead of taking it as a filter field);
// lo, hi, lo_open, hi_open: the valid values. Python raises a ValueError naming a value outside
//   them (as the kernels will see it); the kernels re-check per-row tensors and flag the row;
// neutral: the value that leaves a row unchanged (a filter switched off);
// warp: 1 if the CUDA warp epilogue (csrc/cuda/soft_embed_fwd.cuh) applies the parameter itself.
//   A row whose warp = 0 parameters are not all neutral runs filters.h's finish_row instead, so a
//   new filter needs no device code beyond its rule in filters.h.
// X is passed through to ROW (the caller's own macro, for tables built from this one).
#define SK_INF __builtin_huge_val()
#define SK_SOFT_EMBED_ROW_PARAMS(ROW, X)                                                        \
  ROW(X, Real, temperature, 0.0, SK_INF, 1, 1, 1.0, 1)                                         \
  ROW(X, Int, top_k, 0, INT64_MAX, 0, 0, 0, 1)                                                 \
  ROW(X, Real, top_p, 0.0, 1.0, 1, 0, 1.0, 1)                                                  \
  ROW(X, Real, min_p, 0.0, 1.0, 0, 1, 0.0, 1)                                                  \
  ROW(X, Key, seed, INT64_MIN, INT64_MAX, 0, 0, 0, 1)                                          \
  ROW(X, Key, offset, INT64_MIN, INT64_MAX, 0, 0, 0, 1)

// Types of a row parameter: schema (SK_SCHEMA_*), host (RowParamSource, the [B] tensor's element)
// and kernel (RowParams<T>). SK_ROW_FULL_RANGE_*: lo / hi that need no check.
#define SK_ROW_SCHEMA_Real Float
#define SK_ROW_SCHEMA_Int Int
#define SK_ROW_SCHEMA_Key Int
#define SK_ROW_HOST_Real double
#define SK_ROW_HOST_Int int64_t
#define SK_ROW_HOST_Key int64_t
#define SK_ROW_KERNEL_Real(T) T
#define SK_ROW_KERNEL_Int(T) int64_t
#define SK_ROW_KERNEL_Key(T) int64_t
#define SK_ROW_ATEN_Real at::kDouble
#define SK_ROW_ATEN_Int at::kLong
#define SK_ROW_ATEN_Key at::kLong
#define SK_ROW_LOWEST_Real (-SK_INF)
#define SK_ROW_LOWEST_Int INT64_MIN
#define SK_ROW_LOWEST_Key INT64_MIN
#define SK_ROW_HIGHEST_Real SK_INF
#define SK_ROW_HIGHEST_Int INT64_MAX
#define SK_ROW_HIGHEST_Key INT64_MAX

// The row parameters in the op's schema: every scalar, then every [B] tensor (the order callers
// of the raw op use).
#define SK_ROW_CALL(M, T, name) M(T, name)
#define SK_ROW_AS_SCALAR(NEXT, kind, name, ...) SK_ROW_CALL(NEXT, SK_ROW_SCHEMA_##kind, name)
#define SK_ROW_AS_TENSOR(NEXT, kind, name, ...) NEXT(OptTensor, name##_rows)

#define SK_SOFT_EMBED_PARAMS(FIRST, NEXT)                                                       \
  FIRST(Tensor, logits) NEXT(Tensor, embedding) NEXT(Int, k)                                    \
  SK_SOFT_EMBED_ROW_PARAMS(SK_ROW_AS_SCALAR, NEXT)                                              \
  SK_SOFT_EMBED_ROW_PARAMS(SK_ROW_AS_TENSOR, NEXT)                                              \
  NEXT(OptTensor, hard) NEXT(OptTensor, hard_ids) NEXT(Int, noise_kind) NEXT(Float, tau)          \
  NEXT(Float, scale) NEXT(Float, clamp_lo) NEXT(Float, clamp_hi) NEXT(Float, alpha)               \
  NEXT(Float, sigma) NEXT(Int, pool) NEXT(IntZero, ties)

#define SK_SOFT_EMBED_RETURNS                                                                   \
  "(Tensor embeds, Tensor ids, Tensor weights, Tensor entropy, Tensor max_prob, Tensor noise, " \
  "Tensor status)"

// soft_embed_backward: the gradients of embeds / weights / noise w.r.t. logits and embedding.
#define SK_SOFT_EMBED_BACKWARD_PARAMS(FIRST, NEXT)                                              \
  FIRST(OptTensor, grad_embeds) NEXT(OptTensor, grad_weights) NEXT(OptTensor, grad_noise)        \
  NEXT(Tensor, logits) NEXT(Tensor, embedding) NEXT(Tensor, ids) NEXT(Tensor, weights)           \
  NEXT(Tensor, noise) NEXT(OptTensor, hard) NEXT(Float, temperature)                             \
  NEXT(OptTensor, temperature_rows) NEXT(Int, noise_kind) NEXT(Float, tau)                       \
  NEXT(Bool, logits_grad) NEXT(Bool, embedding_grad)

#define SK_SOFT_EMBED_BACKWARD_RETURNS "(Tensor grad_logits, Tensor grad_embedding)"

// Schema types.
#define SK_SCHEMA_Tensor "Tensor"
#define SK_SCHEMA_OptTensor "Tensor?"
#define SK_SCHEMA_Int "int"
#define SK_SCHEMA_Float "float"
#define SK_SCHEMA_Bool "bool"
#define SK_SCHEMA_IntZero "int"
#define SK_DEFAULT_Tensor ""
#define SK_DEFAULT_OptTensor ""
#define SK_DEFAULT_Int ""
#define SK_DEFAULT_Float ""
#define SK_DEFAULT_Bool ""
#define SK_DEFAULT_IntZero "=0"
#define SK_SCHEMA_FIRST(T, name) SK_SCHEMA_##T " " #name SK_DEFAULT_##T
#define SK_SCHEMA_NEXT(T, name) ", " SK_SCHEMA_##T " " #name SK_DEFAULT_##T

// "soft_embed(Tensor logits, ...) -> (...)"
#define SK_SOFT_EMBED_SCHEMA(opname)                                                            \
  opname "(" SK_SOFT_EMBED_PARAMS(SK_SCHEMA_FIRST, SK_SCHEMA_NEXT) ") -> " SK_SOFT_EMBED_RETURNS

#define SK_SOFT_EMBED_BACKWARD_SCHEMA(opname)                                                   \
  opname "(" SK_SOFT_EMBED_BACKWARD_PARAMS(SK_SCHEMA_FIRST, SK_SCHEMA_NEXT) ") -> "              \
      SK_SOFT_EMBED_BACKWARD_RETURNS

// "logits,embedding,k,..." (exported to Python).
#define SK_NAME_FIRST(T, name) #name
#define SK_NAME_NEXT(T, name) "," #name
#define SK_SOFT_EMBED_NAMES SK_SOFT_EMBED_PARAMS(SK_NAME_FIRST, SK_NAME_NEXT)
#define SK_SOFT_EMBED_BACKWARD_NAMES SK_SOFT_EMBED_BACKWARD_PARAMS(SK_NAME_FIRST, SK_NAME_NEXT)

// C++ parameter list (what the dispatcher expects for each schema type) and argument list.
#define SK_CPP_Tensor const at::Tensor&
#define SK_CPP_OptTensor const std::optional<at::Tensor>&
#define SK_CPP_Int int64_t
#define SK_CPP_Float double
#define SK_CPP_Bool bool
#define SK_CPP_IntZero int64_t
#define SK_PARAM_FIRST(T, name) SK_CPP_##T name
#define SK_PARAM_NEXT(T, name) , SK_CPP_##T name
#define SK_ARG_FIRST(T, name) name
#define SK_ARG_NEXT(T, name) , name
#define SK_SOFT_EMBED_CPP_PARAMS SK_SOFT_EMBED_PARAMS(SK_PARAM_FIRST, SK_PARAM_NEXT)
#define SK_SOFT_EMBED_CPP_ARGS SK_SOFT_EMBED_PARAMS(SK_ARG_FIRST, SK_ARG_NEXT)
#define SK_SOFT_EMBED_BACKWARD_CPP_PARAMS \
  SK_SOFT_EMBED_BACKWARD_PARAMS(SK_PARAM_FIRST, SK_PARAM_NEXT)
#define SK_SOFT_EMBED_BACKWARD_CPP_ARGS SK_SOFT_EMBED_BACKWARD_PARAMS(SK_ARG_FIRST, SK_ARG_NEXT)
