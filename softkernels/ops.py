"""Python side of the softkernels ops: argument checking, fake (meta) kernels and autograd.

The C++ extension (softkernels._C) defines the schemas (csrc/ops.cpp) and the CPU / CUDA kernels.
This module registers what torch.compile and autograd need, and exposes the user-facing function
:func:`soft_embed`, which validates every argument before any kernel runs.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Union

import torch

from . import _C  # noqa: F401  (loads the op library)
from ._checks import (FLOAT_DTYPES, I64_MAX, I64_MIN, MAX_K, MAX_POOL, check_bool, check_float,
                      check_int, check_tensor, is_compiling, row_param, skip_data_checks,
                      to_f32)
from .noise import (NOISE_DIRICHLET, NOISE_DIRICHLET_GUMBEL, NOISE_GUMBEL, NOISE_WITH_SLOTS,
                    Gaussian, Noise, noise_constants, noise_kind)
from .soft_tokens import SoftTokens

__all__ = ["soft_embed", "MAX_K", "MAX_POOL", "TIES", "ROW_PARAMS", "FILTERS"]

# soft_embed(ties=...): name -> the kernels' code (csrc/common/macros.h TiesRule).
TIES = {"exact": _C.TIES_EXACT, "keep_all": _C.TIES_KEEP_ALL}


# Status bits written by the kernel (csrc/common/macros.h RowStatus, exported by the extension).
_STATUS_NONFINITE, _STATUS_ALL_MASKED, _STATUS_BAD_PARAM, _STATUS_BAD_HARD_ID = (
    _C.STATUS_NONFINITE, _C.STATUS_ALL_MASKED, _C.STATUS_BAD_PARAM, _C.STATUS_BAD_HARD_ID)


# --------------------------------------------------------------------------------------------
# Fake kernels: output shapes and dtypes for torch.compile / meta tensors.

def _stats_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


# The raw ops' parameters in schema order, from their one declaration (csrc/soft_embed_decl.h).
SOFT_EMBED_PARAMS = tuple(_C.SOFT_EMBED_PARAMS.split(","))
SOFT_EMBED_BACKWARD_PARAMS = tuple(_C.SOFT_EMBED_BACKWARD_PARAMS.split(","))


class RowParam(NamedTuple):
    """One per-row parameter of soft_embed, as csrc/soft_embed_decl.h declares it: a number for the
    batch or a [B] tensor; valid values in [lo, hi] (either end open); ``neutral`` leaves a row
    unchanged. ``kind`` is "real", "int" or "key" (an int64 keying the random stream)."""
    name: str
    kind: str
    lo: Union[int, float]
    hi: Union[int, float]
    lo_open: bool
    hi_open: bool
    neutral: Union[int, float]

    @property
    def integer(self) -> bool:
        return self.kind != "real"

    @property
    def bounded(self) -> bool:
        """Whether some values of its type are out of range (the kernels check per-row tensors)."""
        return not (self.integer and self.lo == I64_MIN and self.hi == I64_MAX)

    def check(self, fn: str, value, **common):
        """(scalar, [B] tensor or None): softkernels._checks.row_param with this range."""
        return row_param(fn, self.name, value, integer=self.integer, lo=self.lo, hi=self.hi,
                         lo_open=self.lo_open, hi_open=self.hi_open, **common)


# soft_embed's per-row parameters in schema order (temperature, top_k, top_p, min_p, seed, offset)
# and the sampling filters among them (all but the random-stream keys): what SoftThinkingConfig
# carries to soft_embed.
ROW_PARAMS = {p[0]: RowParam(*p) for p in _C.SOFT_EMBED_ROW_PARAMS}
FILTERS = tuple(n for n, p in ROW_PARAMS.items() if p.kind != "key")


@torch.library.register_fake("softkernels::soft_embed")
def _soft_embed_fake(*args):
    a = dict(zip(SOFT_EMBED_PARAMS, args))
    logits, k = a["logits"], a["k"]
    B = logits.shape[0]
    D = a["embedding"].shape[1]
    f = _stats_dtype(logits)
    return (
        logits.new_empty((B, D), dtype=a["embedding"].dtype),
        logits.new_empty((B, k), dtype=torch.int64),
        logits.new_empty((B, k), dtype=f),
        logits.new_empty((B,), dtype=f),
        logits.new_empty((B,), dtype=f),
        logits.new_empty((B, k) if a["noise_kind"] in NOISE_WITH_SLOTS else (0,), dtype=f),
        logits.new_empty((B,), dtype=torch.int32),
    )


@torch.library.register_fake("softkernels::soft_embed_backward")
def _soft_embed_backward_fake(*args):
    a = dict(zip(SOFT_EMBED_BACKWARD_PARAMS, args))
    return torch.empty_like(a["logits"]), torch.empty_like(a["embedding"])


# --------------------------------------------------------------------------------------------
# Autograd: gradients reach logits and embedding through embeds, weights and (Gumbel) noise.

def _soft_embed_setup_context(ctx, inputs, output):
    a = dict(zip(SOFT_EMBED_PARAMS, inputs))
    embeds, ids, weights, entropy, max_prob, noise, status = output
    ctx.mark_non_differentiable(ids, entropy, max_prob, status)
    if a["noise_kind"] != NOISE_GUMBEL and noise.numel():
        ctx.mark_non_differentiable(noise)  # raw draws, or g' of a kind without a logits gradient
    ctx.save_for_backward(a["logits"], a["embedding"], ids, weights, noise, a["hard"],
                          a["temperature_rows"])
    ctx.temperature = a["temperature"]
    ctx.noise_kind = a["noise_kind"]
    ctx.tau = a["tau"]


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
    return (grad_logits, grad_embedding) + (None,) * (len(SOFT_EMBED_PARAMS) - 2)


torch.library.register_autograd("softkernels::soft_embed", _soft_embed_backward,
                                setup_context=_soft_embed_setup_context)


def refuse_double_backward(op: str, public: str) -> None:
    """Registers an autograd formula for a backward op that raises: a second derivative (through
    torch.autograd.grad(..., create_graph=True)) would otherwise come back silently as zero."""
    def setup_context(ctx, inputs, output):
        pass

    def backward(ctx, *grads):
        raise RuntimeError(f"{public}: double backward (a derivative of its gradient) is not "
                           "implemented; its gradient is first-order only")

    torch.library.register_autograd(f"softkernels::{op}", backward, setup_context=setup_context)


refuse_double_backward("soft_embed_backward", "soft_embed")


# --------------------------------------------------------------------------------------------
# Public function.

def _row_pool_size(V: int, k: int, top_k, dirichlet: bool, keep_ties: bool = False):
    """Candidate pool a row needs (csrc/common/filters.h row_pool_size); works on ints or tensors."""
    lo = max(k, min(V, MAX_POOL)) if keep_ties else k  # keep_ties: room for ties past top_k
    if isinstance(top_k, torch.Tensor):
        on = (top_k > 0) & (top_k < V)
        other = V if dirichlet else k
        return torch.where(on, top_k.clamp(min=lo), torch.full_like(top_k, other)).clamp(max=V)
    if 0 < top_k < V:
        return min(max(lo, top_k), V)
    return min(V if dirichlet else k, V)


def _check_inverse_temperature(fn, scalar, rows, f32, check_data) -> None:
    """The kernels multiply by 1 / temperature: it must be a positive finite number in their
    precision (float32 unless the logits are float64)."""
    def ok(inv: float) -> bool:
        v = to_f32(inv) if f32 else inv
        return 0.0 < v < math.inf
    prec = "float32" if f32 else "float64"
    if rows is None:
        if not ok(1.0 / scalar):
            raise ValueError(f"{fn}: temperature = {scalar} is outside the range the kernels can "
                             f"use: 1 / temperature = {1.0 / scalar} is not a positive finite "
                             f"{prec} number")
    elif check_data and rows.numel():
        inv = 1.0 / rows
        if f32:
            inv = inv.float()
        bad = (~(torch.isfinite(inv) & (inv > 0))).nonzero()
        if bad.numel():
            i = int(bad[0, 0])
            raise ValueError(f"{fn}: temperature[{i}] = {rows[i].item()} is outside the range the "
                             f"kernels can use: 1 / temperature is not a positive finite {prec} "
                             "number")


def _raise_for_status(status: torch.Tensor, B: int, rows=None) -> None:
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
    named = ", ".join(f"{n}[{b}] = {t[b].item()}" for n, t in (rows or {}).items()
                      if t is not None)
    raise ValueError(f"soft_embed: the per-row parameters of row {b} are out of range for the "
                     f"kernel or need a candidate pool over {MAX_POOL} tokens ({named})")


def soft_embed(
    logits: torch.Tensor,
    embedding: torch.Tensor,
    *,
    k: Optional[int],
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
    ties: str = "exact",
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
        k: mixture width, 1 <= k <= V; None means V (the whole vocabulary, as Soft Tokens, Hard
            Truths mixes). k <= 1024 runs the fused kernel; k > 1024 runs the full-vocabulary
            path (softkernels/full_vocab.py: ATen ops over all V tokens, k must then be V, noise
            None or Gaussian; filters and ties as here).
        temperature: > 0; a number or a [B] tensor of per-row values.
        top_k: 0 (off) or >= 1; a number or a [B] tensor. top_k >= V keeps everything (off).
            Between 1024 and V it is refused: all filtering happens inside a row's 1024 most
            likely tokens.
        top_p: in (0, 1] (1 = off); a number or a [B] tensor.
        min_p: in [0, 1) (0 = off), relative to the row's max probability; number or [B] tensor.
        noise: None, :class:`Gumbel`, :class:`Dirichlet`, :class:`Gaussian`,
            :class:`TopKDirichlet`, :class:`WeightGaussian` or :class:`DirichletGumbel`.
        seed, offset: int or int64 [B] tensor keying the row's random stream (Philox 4x32-10).
            Use a new offset per decoding step.
        hard: optional bool [B]: rows that take a discrete token instead of a mixture.
        hard_ids: optional int64 [B]: the token of each hard row (default: the row's argmax).
        ties: how the top_k and top_p cuts treat tokens whose probability equals the last kept
            one's. ``"exact"`` (default): exactly top_k tokens / the shortest top_p prefix, equal
            ones by the lower id. ``"keep_all"``: every token tied with the last kept one stays,
            as FlashInfer's top_k / top_p renorm does (flashinfer-ai/flashinfer@fb28d72,
            include/flashinfer/topk.cuh:1918-1980 keeps ``p >= pivot``; sampling.cuh:1741-1838
            keeps ``p > low`` with ``sum(p > low) >= top_p``), which the released Soft Thinking,
            RST and SofT-GRPO samplers use. Ties are equal float32 (float64) probabilities; with
            top_k on, those past a row's 1024 most likely tokens are cut. min_p keeps ties either
            way.
        validate: check the data (NaN / +inf logits, all -inf rows, per-row tensor ranges) and
            raise ValueError naming the first bad row. This reads values back to the host; pass
            False inside CUDA graphs (bad rows then come back as NaN). Under torch.compile the data
            checks are skipped.

    Returns:
        :class:`SoftTokens` (embeds, ids, weights, entropy, max_prob, noise). ``noise`` is
        [B, k] for the kinds in ``softkernels.noise.NOISE_WITH_SLOTS`` (g' for the Gumbel kinds,
        the draws for TopKDirichlet / WeightGaussian), else None.
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
    if k is None:
        k = V
    k = check_int(fn, "k", k, 1, V)
    full = k > MAX_K
    if full and k != V:
        raise ValueError(f"{fn}: k = {k} is above the fused kernel's {MAX_K} slots but below "
                         f"V = {V}; use k <= {MAX_K}, or k = V / None for the full-vocabulary "
                         "mixture")
    kind = noise_kind(noise)
    if full and noise is not None and not isinstance(noise, Gaussian):
        raise ValueError(f"{fn}: the full-vocabulary mixture (k = V = {V} > {MAX_K}) takes noise "
                         f"None or Gaussian(...), got {type(noise).__name__}")
    check_bool(fn, "validate", validate)
    if not isinstance(ties, str) or ties not in TIES:
        raise ValueError(f"{fn}: ties must be one of {tuple(TIES)}, got {ties!r}")
    keep_ties = ties == "keep_all"
    check_data = validate and not skip_data_checks(logits, embedding)

    # The kernels compute in float32 (float64 for float64 logits): ranges are checked on the
    # values they will see.
    f32 = logits.dtype != torch.float64
    common = dict(B=B, device=device, check_data=check_data, f32=f32)
    # The row parameters by name, each checked against its declared range (ROW_PARAMS): a new
    # one needs only its keyword above.
    given = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, seed=seed,
                 offset=offset)
    scalars, rows = {}, {}
    for name, p in ROW_PARAMS.items():
        scalars[name], rows[name] = p.check(fn, given[name], **common)
    _check_inverse_temperature(fn, scalars["temperature"], rows["temperature"], f32, check_data)
    top_k_s, top_k_t = scalars["top_k"], rows["top_k"]

    # Candidate pool: the filters run inside each row's P most likely tokens (P <= 1024).
    dirichlet = kind in (NOISE_DIRICHLET, NOISE_DIRICHLET_GUMBEL)  # they redraw the support
    if full:
        pool = k  # unused: the full-vocabulary path keeps every token
    elif top_k_t is None:
        pool = _row_pool_size(V, k, top_k_s, dirichlet, keep_ties)
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
        sizes = _row_pool_size(V, k, top_k_t, dirichlet, keep_ties)
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

    tau, scale, clamp_lo, clamp_hi, alpha, sigma = (
        noise_constants(noise) if not isinstance(noise, Gaussian) else (0.0,) * 6)
    if isinstance(noise, Gaussian):
        clamp_lo, clamp_hi = -math.inf, math.inf
        if noise.relative and is_compiling():
            raise ValueError(f"{fn}: a relative Gaussian noise (Gaussian(relative=True)) needs the "
                             "embedding's RMS, a data-dependent value that torch.compile cannot "
                             "trace; resolve it outside the compiled region with "
                             "noise.absolute(embedding)")
        sigma = check_float(fn, "noise.sigma (in embedding units)",
                            noise.absolute(embedding).sigma, lo=0.0, hi=_C.MAX_NOISE_PARAM)

    if full:
        from .full_vocab import ROW_PARAMS_APPLIED, soft_embed_full
        for name in ROW_PARAMS.keys() - set(ROW_PARAMS_APPLIED):
            if rows[name] is not None or scalars[name] != ROW_PARAMS[name].neutral:
                raise ValueError(f"{fn}: the full-vocabulary mixture (k = V = {V} > {MAX_K}) does "
                                 f"not apply {name}; leave it at {ROW_PARAMS[name].neutral}")
        out, status = soft_embed_full(
            logits, embedding, noise=noise, sigma=sigma, hard=hard, hard_ids=hard_ids,
            keep_ties=keep_ties, **{n: scalars[n] if rows[n] is None else rows[n]
                                    for n in ROW_PARAMS_APPLIED})
        if check_data and B > 0:
            _raise_for_status(status, B)
        return out

    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    if embedding.stride(-1) != 1:
        embedding = embedding.contiguous()
    args = dict(logits=logits, embedding=embedding, k=k, **scalars,
                **{f"{n}_rows": t for n, t in rows.items()}, hard=hard, hard_ids=hard_ids,
                noise_kind=kind, tau=tau, scale=scale, clamp_lo=clamp_lo, clamp_hi=clamp_hi,
                alpha=alpha, sigma=sigma, pool=pool, ties=TIES[ties])
    embeds, ids, weights, entropy, max_prob, g_prime, status = torch.ops.softkernels.soft_embed(
        *(args[n] for n in SOFT_EMBED_PARAMS))
    if check_data and B > 0:
        _raise_for_status(status, B, {n: rows[n] for n, p in ROW_PARAMS.items() if p.bounded})
    return SoftTokens(embeds, ids, weights, entropy, max_prob,
                      g_prime if kind in NOISE_WITH_SLOTS else None)
