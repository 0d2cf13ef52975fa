// soft_embed's parameters, declared once: name, schema type and position. Everything that lists
// them is generated from this table: the schema string (csrc/ops.cpp and the CUDA emulation's
// copy), the C++ parameter and argument lists of the CPU kernel, the CUDA launcher and
// tools/cuda_emu, and the name list the Python layer reads (softkernels._C.SOFT_EMBED_PARAMS:
// the fake kernel and autograd's bookkeeping in softkernels/ops.py). Ranges and defaults of the
// user-facing values are in softkernels/ops.py (validation) and docs/ops.md.
//
// SK_SOFT_EMBED_PARAMS(FIRST, NEXT) expands FIRST(type, name) for the first parameter and
// NEXT(type, name) for each further one (NEXT adds the separating comma). Types: Tensor,
// OptTensor (Tensor?), Int (int64), Float (double), Bool, and IntZero (int64 with the schema
// default 0, for parameters added after callers existed: positional calls may leave them out).
// soft_embed_backward has its own table.
#pragma once

#define SK_SOFT_EMBED_PARAMS(FIRST, NEXT)                                                       \
  FIRST(Tensor, logits) NEXT(Tensor, embedding) NEXT(Int, k) NEXT(Float, temperature)           \
  NEXT(Int, top_k) NEXT(Float, top_p) NEXT(Float, min_p) NEXT(Int, seed) NEXT(Int, offset)       \
  NEXT(OptTensor, temperature_rows) NEXT(OptTensor, top_k_rows) NEXT(OptTensor, top_p_rows)      \
  NEXT(OptTensor, min_p_rows) NEXT(OptTensor, seed_rows) NEXT(OptTensor, offset_rows)            \
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
