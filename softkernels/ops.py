"""Python side of the softkernels ops: argument checking, fake (meta) kernels and autograd.

The C++ extension (softkernels._C) defines the schemas (csrc/ops.cpp) and the CPU / CUDA kernels.
This module registers what torch.compile and autograd need, and exposes the user-facing function
:func:`soft_embed`, which validates every argument before any kernel runs.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

from . import _C  # noqa: F401  (loads the op library)
from ._checks import FLOAT_DTYPES, check_int, check_tensor, is_compiling, row_param
from .noise import (NOISE_DIRICHLET, NOISE_GAUSSIAN, NOISE_GUMBEL, Dirichlet, Gaussian, Gumbel,
                    Noise, noise_kind)
from .soft_tokens import SoftTokens

__all__ = ["soft_embed", "MAX_K", "MAX_POOL"]

# Must match csrc/common/macros.h.
MAX_K = 1024
MAX_POOL = 1024
_I64_MIN, _I64_MAX = -(2 ** 63), 2 ** 63 - 1

# Status bits written by the kernel (csrc/common/macros.h RowStatus).
_STATUS_NONFINITE, _STATUS_ALL_MASKED, _STATUS_BAD_PARAM, _STATUS_BAD_HARD_ID = 1, 2, 4, 8


# --------------------------------------------------------------------------------------------
# Fake kernels: output shapes and dtypes for torch.compile / meta tensors.

def _stats_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


@torch.library.register_fake("softkernels::soft_embed")
def _soft_embed_fake(logits, embedding, k, temperature, top_k, top_p, min_p, seed, offset,
                     temperature_rows, top_k_rows, top_p_rows, min_p_rows, seed_rows, offset_rows,
                     hard, hard_ids, noise_kind, tau, scale, clamp_lo, clamp_hi, alpha, sigma, pool):
    B = logits.shape[0]
    D = embedding.shape[1]
    f = _stats_dtype(logits)
    return (
        logits.new_empty((B, D), dtype=embedding.dtype),
        logits.new_empty((B, k), dtype=torch.int64),
        logits.new_empty((B, k), dtype=f),
        logits.new_empty((B,), dtype=f),
        logits.new_empty((B,), dtype=f),
        logits.new_empty((B, k) if noise_kind == NOISE_GUMBEL else (0,), dtype=f),
        logits.new_empty((B,), dtype=torch.int32),
    )


@torch.library.register_fake("softkernels::soft_embed_backward")
def _soft_embed_backward_fake(grad_embeds, grad_weights, grad_noise, logits, embedding, ids,
                              weights, noise, hard, temperature, temperature_rows, noise_kind,
                              tau, logits_grad, embedding_grad):
    return torch.empty_like(logits), torch.empty_like(embedding)


# --------------------------------------------------------------------------------------------
# Autograd: gradients reach logits and embedding through embeds, weights and (Gumbel) noise.

def _soft_embed_setup_context(ctx, inputs, output):
    (logits, embedding, k, temperature, top_k, top_p, min_p, seed, offset, temperature_rows,
     top_k_rows, top_p_rows, min_p_rows, seed_rows, offset_rows, hard, hard_ids, noise_kind, tau,
     scale, clamp_lo, clamp_hi, alpha, sigma, pool) = inputs
    embeds, ids, weights, entropy, max_prob, noise, status = output
    ctx.mark_non_differentiable(ids, entropy, max_prob, status)
    ctx.save_for_backward(logits, embedding, ids, weights, noise, hard, temperature_rows)
    ctx.temperature = temperature
    ctx.noise_kind = noise_kind
    ctx.tau = tau


def _soft_embed_backward(ctx, g_embeds, g_ids, g_weights, g_entropy, g_max_prob, g_noise, g_status):
    logits, embedding, ids, weights, noise, hard, temperature_rows = ctx.saved_tensors
    need_logits, need_embedding = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_logits = grad_embedding = None
    if need_logits or need_embedding:
        gl, ge = torch.ops.softkernels.soft_embed_backward(
            g_embeds, g_weights, g_noise if ctx.noise_kind == NOISE_GUMBEL else None,
            logits, embedding, ids, weights, noise, hard, ctx.temperature, temperature_rows,
            ctx.noise_kind, ctx.tau, need_logits, need_embedding)
        grad_logits = gl if need_logits else None
        grad_embedding = ge if need_embedding else None
    return (grad_logits, grad_embedding) + (None,) * 23


torch.library.register_autograd("softkernels::soft_embed", _soft_embed_backward,
                                setup_context=_soft_embed_setup_context)


# --------------------------------------------------------------------------------------------
# Public function.

def _row_pool_size(V: int, k: int, top_k, dirichlet: bool):
    """Candidate pool a row needs (csrc/common/filters.h row_pool_size); works on ints or tensors."""
    if isinstance(top_k, torch.Tensor):
        on = (top_k > 0) & (top_k < V)
        other = V if dirichlet else k
        return torch.where(on, top_k.clamp(min=k), torch.full_like(top_k, other)).clamp(max=V)
    if 0 < top_k < V:
        return min(max(k, top_k), V)
    return min(V if dirichlet else k, V)


def _raise_for_status(status: torch.Tensor, B: int) -> None:
    bad = status.nonzero()
    if bad.numel() == 0:
        return
    b = int(bad[0, 0])
    s = int(status[b])
    if s & _STATUS_NONFINITE:
        raise ValueError(f"soft_embed: logits row {b} contains NaN or +inf (the first such row of "
                         f"{B}); -inf is allowed for masked tokens. Pass validate=False to skip "
                         "this check (flagged rows then come back as NaN).")
    if s & _STATUS_ALL_MASKED:
        raise ValueError(f"soft_embed: every logit of row {b} is -inf (the first such row of {B}); "
                         "at least one token must be allowed.")
    if s & _STATUS_BAD_HARD_ID:
        raise ValueError(f"soft_embed: hard_ids[{b}] is not a token id in [0, V)")
    raise ValueError(f"soft_embed: a per-row parameter of row {b} is out of range")


def soft_embed(
    logits: torch.Tensor,
    embedding: torch.Tensor,
    *,
    k: int,
    temperature: Union[float, torch.Tensor] = 1.0,
    top_k: Union[int, torch.Tensor] = 0,
    top_p: Union[float, torch.Tensor] = 1.0,
    min_p: Union[float, torch.Tensor] = 0.0,
    noise: Optional[Noise] = None,
    seed: Union[int, torch.Tensor] = 0,
    offset: Union[int, torch.Tensor] = 0,
    hard: Optional[torch.Tensor] = None,
    hard_ids: Optional[torch.Tensor] = None,
    validate: bool = True,
) -> SoftTokens:
    """Soft tokens from logits in one fused pass: softmax, filters, noise, embedding mixture.

    For each row b (ties broken by the lower token id): z = logits / temperature; p = softmax(z)
    over all V; entropy and max_prob of p; top_k, then top_p, then min_p filtering (each followed
    by renormalisation); optional Dirichlet resampling of the survivors; the k largest survivors,
    renormalised; optional Gumbel perturbation; embeds = sum_j w_j E[id_j] (fp32 accumulation);
    optional Gaussian noise on embeds. Hard rows return E[token] bit for bit. docs/semantics.md
    has the full rules.

    Args:
        logits: [B, V] float32 / bfloat16 / float16 (float64 for gradcheck). -inf marks a masked
            token.
        embedding: [V_e, D] with V_e >= V, on the logits' device (any of the same dtypes).
        k: mixture width, 1 <= k <= min(V, 1024).
        temperature: > 0; a number or a [B] tensor of per-row values.
        top_k: 0 (off) or >= 1; a number or a [B] tensor. top_k >= V keeps everything (off).
            Between 1024 and V it is refused: all filtering happens inside a row's 1024 most
            likely tokens.
        top_p: in (0, 1] (1 = off); a number or a [B] tensor.
        min_p: in [0, 1) (0 = off), relative to the row's max probability; number or [B] tensor.
        noise: None, :class:`Gumbel`, :class:`Dirichlet` or :class:`Gaussian`.
        seed, offset: int or int64 [B] tensor keying the row's random stream (Philox 4x32-10).
            Use a new offset per decoding step.
        hard: optional bool [B]: rows that take a discrete token instead of a mixture.
        hard_ids: optional int64 [B]: the token of each hard row (default: the row's argmax).
        validate: check the data (NaN / +inf logits, all -inf rows, per-row tensor ranges) and
            raise ValueError naming the first bad row. This reads values back to the host; pass
            False inside CUDA graphs (bad rows then come back as NaN). Under torch.compile the data
            checks are skipped.

    Returns:
        :class:`SoftTokens` (embeds, ids, weights, entropy, max_prob, noise).
    """
    fn = "soft_embed"
    check_tensor(fn, "logits", logits, ndim=2, dtypes=FLOAT_DTYPES, shape_hint=" [B, V]")
    device = logits.device
    check_tensor(fn, "embedding", embedding, ndim=2, dtypes=FLOAT_DTYPES,
                 shape_hint=" [V_e, D]")
    if embedding.device != device:
        raise ValueError(f"{fn}: embedding is on {embedding.device} but logits are on {device}; "
                         "move both to one device")
    B, V = logits.shape
    Ve, D = embedding.shape
    if V < 1:
        raise ValueError(f"{fn}: logits must have at least one column (V >= 1), got shape "
                         f"{tuple(logits.shape)}")
    if Ve < V:
        raise ValueError(f"{fn}: embedding has {Ve} rows but logits have V = {V} columns; "
                         "need V_e >= V")
    k = check_int(fn, "k", k, 1, min(V, MAX_K))
    kind = noise_kind(noise)
    if not isinstance(validate, bool):
        raise TypeError(f"{fn}: validate must be a bool, got {validate!r}")
    check_data = validate and not is_compiling()

    common = dict(B=B, device=device, check_data=check_data)
    temperature_s, temperature_t = row_param(fn, "temperature", temperature, integer=False,
                                             lo=0.0, hi=math.inf, lo_open=True, hi_open=True,
                                             **common)
    # top_k >= V keeps every token, like top_k = 0 (as Hugging Face's top-k warper clamps).
    top_k_s, top_k_t = row_param(fn, "top_k", top_k, integer=True, lo=0, hi=_I64_MAX,
                                 lo_open=False, hi_open=False, **common)
    top_p_s, top_p_t = row_param(fn, "top_p", top_p, integer=False, lo=0.0, hi=1.0, lo_open=True,
                                 hi_open=False, **common)
    min_p_s, min_p_t = row_param(fn, "min_p", min_p, integer=False, lo=0.0, hi=1.0,
                                 lo_open=False, hi_open=True, **common)
    seed_s, seed_t = row_param(fn, "seed", seed, integer=True, lo=_I64_MIN, hi=_I64_MAX,
                               lo_open=False, hi_open=False, **common)
    offset_s, offset_t = row_param(fn, "offset", offset, integer=True, lo=_I64_MIN, hi=_I64_MAX,
                                   lo_open=False, hi_open=False, **common)

    # Candidate pool: the filters run inside each row's P most likely tokens (P <= 1024).
    dirichlet = kind == NOISE_DIRICHLET
    if top_k_t is None:
        pool = _row_pool_size(V, k, top_k_s, dirichlet)
        if pool > MAX_POOL:
            if dirichlet:
                raise ValueError(
                    f"{fn}: Dirichlet noise redraws every surviving token, so it needs "
                    f"1 <= top_k <= {MAX_POOL} when V = {V} > {MAX_POOL}; got top_k = {top_k_s}")
            raise ValueError(
                f"{fn}: top_k = {top_k_s} is larger than the candidate pool ({MAX_POOL} tokens; "
                f"filters run inside a row's {MAX_POOL} most likely tokens). Use top_k <= "
                f"{MAX_POOL}, or top_k = 0 / top_k >= V to switch it off")
    elif check_data:
        sizes = _row_pool_size(V, k, top_k_t, dirichlet)
        over = (sizes > MAX_POOL).nonzero()
        if over.numel():
            b = int(over[0, 0])
            raise ValueError(
                f"{fn}: top_k[{b}] = {int(top_k_t[b])} needs a candidate pool larger than "
                f"{MAX_POOL} tokens; use top_k <= {MAX_POOL} (or 0 / >= V for off"
                f"{', which Dirichlet noise does not allow when V > 1024' if dirichlet else ''})")
        pool = max(k, int(sizes.max())) if B > 0 else k
    else:
        pool = min(V, MAX_POOL)

    if hard is not None:
        check_tensor(fn, "hard", hard, ndim=1, dtypes=(torch.bool,), device=device)
        if hard.shape[0] != B:
            raise ValueError(f"{fn}: hard must have shape [B] = [{B}], got {tuple(hard.shape)}")
        hard = hard.contiguous()
    if hard_ids is not None:
        if hard is None:
            raise ValueError(f"{fn}: hard_ids was given without hard; pass hard=<bool [B]> to say "
                             "which rows are hard")
        check_tensor(fn, "hard_ids", hard_ids, ndim=1,
                     dtypes=(torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8),
                     device=device)
        if hard_ids.shape[0] != B:
            raise ValueError(f"{fn}: hard_ids must have shape [B] = [{B}], got "
                             f"{tuple(hard_ids.shape)}")
        hard_ids = hard_ids.to(torch.int64).contiguous()
        if check_data and B > 0:
            bad = (hard & ((hard_ids < 0) | (hard_ids >= V))).nonzero()
            if bad.numel():
                b = int(bad[0, 0])
                raise ValueError(f"{fn}: hard_ids[{b}] = {int(hard_ids[b])} is not a token id "
                                 f"in [0, V) = [0, {V})")

    tau = scale = alpha = sigma = 0.0
    clamp_lo, clamp_hi = -math.inf, math.inf
    if isinstance(noise, Gumbel):
        tau, scale = noise.tau, noise.scale
        clamp_lo, clamp_hi = noise.bounds
    elif isinstance(noise, Dirichlet):
        alpha = noise.alpha
    elif isinstance(noise, Gaussian):
        sigma = noise.absolute(embedding).sigma

    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    if embedding.stride(-1) != 1:
        embedding = embedding.contiguous()
    embeds, ids, weights, entropy, max_prob, g_prime, status = torch.ops.softkernels.soft_embed(
        logits, embedding, k, temperature_s, top_k_s, top_p_s, min_p_s, seed_s, offset_s,
        temperature_t, top_k_t, top_p_t, min_p_t, seed_t, offset_t, hard, hard_ids, kind, tau,
        scale, clamp_lo, clamp_hi, alpha, sigma, pool)
    if check_data and B > 0:
        _raise_for_status(status, B)
    return SoftTokens(embeds, ids, weights, entropy, max_prob,
                      g_prime if kind == NOISE_GUMBEL else None)
