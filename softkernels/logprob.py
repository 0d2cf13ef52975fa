"""Log-probabilities of soft tokens for RL training: SofT-GRPO (Gumbel, TopKDirichlet,
WeightGaussian) and Soft Tokens, Hard Truths (Gaussian).

Each is a fused C++ / CUDA kernel (csrc/cpu/logprob_cpu.cpp, csrc/cuda/logprob.cu: gumbel_logprob,
slot_logprob for both TopKDirichlet and WeightGaussian, gaussian_logprob) with fake kernels and
autograd registered here, so they run under torch.compile(fullgraph=True) and
torch.library.opcheck. docs/training.md states the exact formulas and where they differ from the
papers' code; softkernels/reference.py holds the float64 reference the tests compare against.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch

from . import _C
from .ops import refuse_double_backward
from ._checks import (FLOAT_DTYPES, INT_DTYPES, MAX_K, check_bool, check_float, check_tensor,
                      pair_arg, skip_data_checks)

__all__ = ["gumbel_logprob", "gaussian_logprob", "topk_dirichlet_logprob",
           "weight_gaussian_logprob", "DEFAULT_MIN_WEIGHT", "DEFAULT_CLAMP"]

# SofT-GRPO counts a slot when log(p~ + 1e-6) > -3, i.e. p~ > exp(-3) (up to the 1e-6).
DEFAULT_MIN_WEIGHT = math.exp(-3.0)
# SofT-GRPO's clamp of the recovered Gumbel variable (also softkernels.Gumbel's default).
DEFAULT_CLAMP = (-1.5, 3.0)

# The kernels' limits and status bits (csrc/common/, exported by the extension).
_MAX_K = MAX_K
_MAX_BATCH_DIMS = _C.MAX_BATCH_DIMS
_LP_NONFINITE, _LP_ALL_MASKED, _LP_NO_SLOT, _LP_BAD_NOISE, _LP_BAD_ID = (
    _C.LP_NONFINITE, _C.LP_ALL_MASKED, _C.LP_NO_SLOT, _C.LP_BAD_NOISE, _C.LP_BAD_ID)

_INT_DTYPES = INT_DTYPES


def _stats_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------------
# Fake kernels.

@torch.library.register_fake("softkernels::gumbel_logprob")
def _gumbel_logprob_fake(logits, ids, g_prime, hard, temperature, scale, clamp_lo, clamp_hi,
                         min_weight):
    batch = logits.shape[:-1]
    f = _stats_dtype(logits)
    return (logits.new_empty(batch, dtype=f), logits.new_empty(batch, dtype=f),
            logits.new_empty(batch, dtype=torch.int32))


@torch.library.register_fake("softkernels::gumbel_logprob_backward")
def _gumbel_logprob_backward_fake(grad, logits, ids, g_prime, hard, lse, temperature, scale,
                                  clamp_lo, clamp_hi, min_weight, g_prime_grad):
    return (logits.new_empty(logits.shape),
            g_prime.new_empty(g_prime.shape if g_prime_grad else (0,)))


@torch.library.register_fake("softkernels::gaussian_logprob")
def _gaussian_logprob_fake(x, mean, sigma_rows, sigma):
    batch = x.shape[:-1]
    f = _stats_dtype(x)
    return x.new_empty(batch, dtype=f), x.new_empty(batch, dtype=f)


@torch.library.register_fake("softkernels::gaussian_logprob_backward")
def _gaussian_logprob_backward_fake(grad, x, mean, sigma_rows, sigma, x_grad, mean_grad):
    return (x.new_empty(x.shape if x_grad else (0,)),
            x.new_empty(x.shape if mean_grad else (0,)))


# --------------------------------------------------------------------------------------------
# Autograd. The backward ops are themselves registered ops (CPU + CUDA, with fake kernels), so
# the backward graph compiles too. First-order gradients only.

def _gumbel_setup_context(ctx, inputs, output):
    logits, ids, g_prime, hard, temperature, scale, clamp_lo, clamp_hi, min_weight = inputs
    _, lse, status = output
    ctx.mark_non_differentiable(lse, status)
    ctx.save_for_backward(logits, ids, g_prime, hard, lse)
    ctx.params = (temperature, scale, clamp_lo, clamp_hi, min_weight)


def _gumbel_backward(ctx, grad, grad_lse, grad_status):
    logits, ids, g_prime, hard, lse = ctx.saved_tensors
    need_logits, need_g = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
    grad_logits = grad_g = None
    if need_logits or need_g:
        gl, gg = torch.ops.softkernels.gumbel_logprob_backward(
            grad.contiguous(), logits, ids, g_prime, hard, lse, *ctx.params, need_g)
        grad_logits = gl if need_logits else None
        grad_g = gg if need_g else None
    return (grad_logits, None, grad_g) + (None,) * 6


torch.library.register_autograd("softkernels::gumbel_logprob", _gumbel_backward,
                                setup_context=_gumbel_setup_context)


def _gaussian_setup_context(ctx, inputs, output):
    x, mean, sigma_rows, sigma = inputs
    _, sqdist = output
    ctx.mark_non_differentiable(sqdist)
    ctx.save_for_backward(x, mean, sigma_rows, sqdist)
    ctx.sigma = sigma


def _gaussian_backward(ctx, grad, grad_sqdist):
    x, mean, sigma_rows, sqdist = ctx.saved_tensors
    need_x, need_mean, need_sigma = ctx.needs_input_grad[:3]
    grad = grad.contiguous()
    grad_x = grad_mean = grad_sigma = None
    if need_x or need_mean:
        gx, gm = torch.ops.softkernels.gaussian_logprob_backward(
            grad, x, mean, sigma_rows, ctx.sigma, need_x, need_mean)
        grad_x = gx if need_x else None
        grad_mean = gm if need_mean else None
    if need_sigma:
        # d/dsigma = q / sigma^3 - D / sigma: a composition of ATen ops (compiles as is).
        grad_sigma = grad * (sqdist / sigma_rows ** 3 - x.shape[-1] / sigma_rows)
    return grad_x, grad_mean, grad_sigma, None


torch.library.register_autograd("softkernels::gaussian_logprob", _gaussian_backward,
                                setup_context=_gaussian_setup_context)

refuse_double_backward("gumbel_logprob_backward", "gumbel_logprob")
refuse_double_backward("gaussian_logprob_backward", "gaussian_logprob")


# --------------------------------------------------------------------------------------------
# Public functions.

def _row_index(flat: int, shape: Sequence[int]) -> Tuple[int, ...]:
    idx = []
    for s in reversed(tuple(shape)):
        idx.append(flat % s)
        flat //= s
    return tuple(reversed(idx))


def _raise_for_status(fn: str, status: torch.Tensor, ids: torch.Tensor, V: int) -> None:
    bad = (status.reshape(-1) != 0).nonzero()
    if bad.numel() == 0:
        return
    flat = int(bad[0, 0])
    s = int(status.reshape(-1)[flat])
    row = _row_index(flat, status.shape)
    where = f"row {row}" if row else "the row"
    if s & _LP_BAD_ID:
        raise ValueError(f"{fn}: {where} reads an id outside [0, V) = [0, {V}): ids{list(row)} = "
                         f"{ids.reshape(-1, ids.shape[-1])[flat].tolist()}")
    if s & _LP_BAD_NOISE:
        raise ValueError(f"{fn}: g_prime of {where} contains NaN or +inf (-inf marks an "
                         "excluded slot)")
    if s & _LP_NONFINITE:
        raise ValueError(f"{fn}: the logits {where} reads contain NaN or +inf (soft rows read the "
                         "logits at their ids, hard rows the whole row); -inf is allowed for "
                         "masked tokens. Pass validate=False to skip this check (flagged rows "
                         "then come back as NaN).")
    if s & _LP_ALL_MASKED:
        raise ValueError(f"{fn}: every logit {where} reads is -inf, so its log-probability is "
                         "undefined")
    if s & _LP_NO_SLOT:
        raise ValueError(f"{fn}: {where} is soft but all its g_prime are -inf (no slot carried "
                         "weight); mark it hard or pass the g' that soft_embed returned")
    raise ValueError(f"{fn}: {where} was flagged (status {s})")  # pragma: no cover


def _check_clamp(fn: str, clamp) -> Tuple[float, float]:
    if clamp is None:
        return -math.inf, math.inf
    return pair_arg(f"{fn}: clamp", clamp)


def _positive(fn: str, name: str, value) -> float:
    return check_float(fn, name, value, lo=0.0, hi=math.inf, lo_open=True, hi_open=True)


def gumbel_logprob(
    logits: torch.Tensor,
    ids: torch.Tensor,
    g_prime: torch.Tensor,
    tau: float,
    temperature: float = 1.0,
    clamp: Optional[Tuple[float, float]] = DEFAULT_CLAMP,
    hard: Optional[torch.Tensor] = None,
    *,
    scale: float = 1.0,
    min_weight: float = DEFAULT_MIN_WEIGHT,
    validate: bool = True,
) -> torch.Tensor:
    """SofT-GRPO log-probability of Gumbel soft tokens, recomputed from (new) logits.

    For each row (a position whose soft token was built by :func:`soft_embed` with
    ``noise=Gumbel(tau, scale, clamp)``), with z = logits / temperature and
    S = {slots j with finite g'_j} (the slots that carried weight at rollout):

    * ``log p~_j = z[id_j] - logsumexp_{i in S} z[id_i]`` (softmax at the ids, renormalised on S);
    * ``ghat_j = clamp((g'_j - log p~_j) / scale, lo, hi)`` (recovers the rollout's Gumbel draw
      exactly when the logits are the rollout's);
    * ``log pi = mean over M of (-ghat_j - exp(-ghat_j))``, M = {j in S : p~_j > min_weight}, or the
      single most probable slot when no slot passes.

    Hard rows use ``log softmax(z)[ids[..., 0]]`` over the whole vocabulary. docs/training.md has
    the derivation, the gradient and the differences from SofT-GRPO's code.

    Args:
        logits: [..., V] float32 / bfloat16 / float16 (float64 for gradcheck): the policy's
            logits at the positions of the soft tokens (any leading shape, e.g. [B, T, V]; may be
            a strided view such as ``logits[:, :-1]``). -inf marks a masked token.
        ids: [..., k] integer slot ids (``SoftTokens.ids``), same leading shape. Ids of excluded
            slots (g' = -inf) are not read; for hard rows only ``ids[..., 0]`` is read.
        g_prime: [..., k] float perturbed log-weights (``SoftTokens.noise``); -inf excludes a slot.
            Not read for hard rows.
        tau: the Gumbel-softmax temperature used at rollout (> 0). Validated and recorded only:
            the density of g' does not depend on it, and the exact Gumbel-softmax (Concrete)
            density of the weights differs from it only by terms constant in the logits, so tau
            cancels in importance ratios and gradients (docs/training.md).
        temperature: sampling temperature T (> 0) applied to the logits, as at rollout.
        clamp: ``(lo, hi)`` applied to the recovered Gumbel variable, or None. Default
            (-1.5, 3.0), SofT-GRPO's values (and :class:`Gumbel`'s).
        hard: optional bool [...]: rows that took a discrete token.
        scale: the rollout's ``Gumbel.scale`` (> 0): g' - log p~ is divided by it, so that ghat is
            the Gumbel variable itself. Default 1. SofT-GRPO's code defaults noise_factor to 0.5
            (trainer: verl-0.4.x/verl/trainer/config/ppo_trainer.yaml:132; sampler:
            sampling_params.py:68, server_args.py:203; zz1358m/SofT-GRPO-master@2b9d8ec); their
            training scripts pass 1 (SofT-GRPO-deepscaler-8k.sh:40): pass the rollout's value.
        min_weight: slots with p~ <= min_weight are left out of the mean, in [0, 1). Default
            exp(-3) ~ 0.0498, SofT-GRPO's mask ``log p~ > -3``.
        validate: raise ValueError naming the first bad row (NaN / +inf logits or g', ids out of
            range, rows with every logit -inf, soft rows without a finite g'). Reads a per-row
            status back to the host; with False (or under torch.compile) bad rows come back NaN.

    Returns:
        log pi [...], float32 (float64 for float64 logits). Differentiable w.r.t. ``logits`` (and
        ``g_prime``), with the slot mask and the clamp's active set held fixed.
    """
    fn = "gumbel_logprob"
    batch, V, k, temperature = _check_slot_inputs(fn, logits, ids, g_prime, temperature, hard,
                                                  validate, draws_name="g_prime")
    _positive(fn, "tau", tau)
    scale = _positive(fn, "scale", scale)
    lo, hi = _check_clamp(fn, clamp)
    min_weight = check_float(fn, "min_weight", min_weight, lo=0.0, hi=1.0, lo_open=False,
                             hi_open=True)
    check_data = validate and not skip_data_checks(logits)
    logits, ids, g_prime, hard = _slot_rows_args(logits, ids, g_prime, hard)
    logprob, _, status = torch.ops.softkernels.gumbel_logprob(
        logits, ids, g_prime, hard, temperature, scale, lo, hi, min_weight)
    if check_data and status.numel() > 0:
        _raise_for_status(fn, status.reshape(batch), ids.reshape(*batch, k), V)
    return logprob.reshape(batch)


def gaussian_logprob(
    x: torch.Tensor,
    mean: torch.Tensor,
    sigma: Union[float, torch.Tensor],
    *,
    validate: bool = True,
) -> torch.Tensor:
    """Soft Tokens, Hard Truths: log N(x; mean, sigma^2 I) over the last dimension D.

    ``log pi = -||x - mean||^2 / (2 sigma^2) - (D / 2) log(2 pi sigma^2)``, accumulated in fp32
    (fp64 for fp64 inputs).

    Args:
        x: [..., D] float tensor: the noisy input embeddings that were fed to the model.
        mean: [..., D] float tensor of x's dtype: the noise-free embeddings under the current
            policy. The leading shapes of x and mean broadcast.
        sigma: the noise's standard deviation in embedding units: a number > 0, or a float tensor
            broadcastable to the leading shape [...] (per-row sigma; differentiable).
        validate: check a tensor sigma for values <= 0, NaN or inf (a host sync); skipped under
            torch.compile. With False such rows come back as NaN / inf.

    Returns:
        log pi [...] float32 (float64 for float64 x). Differentiable w.r.t. x, mean and a tensor
        sigma.
    """
    fn = "gaussian_logprob"
    check_tensor(fn, "x", x, dtypes=FLOAT_DTYPES)
    check_tensor(fn, "mean", mean, dtypes=FLOAT_DTYPES)
    if x.dim() < 1 or mean.dim() < 1:
        raise ValueError(f"{fn}: x and mean must be [..., D] tensors, got shapes "
                         f"{tuple(x.shape)} and {tuple(mean.shape)}")
    if mean.device != x.device:
        raise ValueError(f"{fn}: mean is on {mean.device} but x is on {x.device}; move both to "
                         "one device")
    if mean.dtype != x.dtype:
        raise TypeError(f"{fn}: x and mean must have one dtype, got x {x.dtype} and mean "
                        f"{mean.dtype}")
    D = x.shape[-1]
    if D < 1 or mean.shape[-1] != D:
        raise ValueError(f"{fn}: x and mean must share a last dimension D >= 1, got shapes "
                         f"{tuple(x.shape)} and {tuple(mean.shape)}")
    try:
        batch = tuple(torch.broadcast_shapes(x.shape[:-1], mean.shape[:-1]))
    except RuntimeError:
        raise ValueError(f"{fn}: the leading shapes of x {tuple(x.shape)} and mean "
                         f"{tuple(mean.shape)} do not broadcast") from None
    check_bool(fn, "validate", validate)
    stats = _stats_dtype(x)
    sigma_rows = None
    sigma_s = 1.0
    if isinstance(sigma, torch.Tensor):
        if not sigma.dtype.is_floating_point:
            raise TypeError(f"{fn}: sigma must be a number or a floating-point tensor, got "
                            f"{sigma.dtype}")
        if sigma.device != x.device:
            raise ValueError(f"{fn}: sigma is on {sigma.device} but x is on {x.device}")
        try:
            ok = tuple(torch.broadcast_shapes(sigma.shape, batch)) == batch
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(f"{fn}: sigma must broadcast to the leading shape {batch}, got shape "
                             f"{tuple(sigma.shape)}")
        if validate and not skip_data_checks(x, sigma) and sigma.numel() > 0:
            bad = (~(torch.isfinite(sigma) & (sigma > 0))).reshape(-1).nonzero()
            if bad.numel():
                i = int(bad[0, 0])
                raise ValueError(f"{fn}: sigma must be finite and > 0, got sigma"
                                 f"{list(_row_index(i, sigma.shape))} = "
                                 f"{sigma.reshape(-1)[i].item()}")
        sigma_rows = sigma.to(stats).expand(batch).contiguous()
    else:
        sigma_s = _positive(fn, "sigma", sigma)

    x = x.expand(*batch, D)
    mean = mean.expand(*batch, D)
    if len(batch) > _MAX_BATCH_DIMS:
        x, mean = x.reshape(-1, D), mean.reshape(-1, D)
        sigma_rows = sigma_rows.reshape(-1) if sigma_rows is not None else None
    if x.stride(-1) != 1 and D > 1:
        x = x.contiguous()
    if mean.stride(-1) != 1 and D > 1:
        mean = mean.contiguous()
    logprob, _ = torch.ops.softkernels.gaussian_logprob(x, mean, sigma_rows, sigma_s)
    return logprob.reshape(batch)


# --------------------------------------------------------------------------------------------
# SofT-GRPO's two other rollout noises: log-probabilities of TopKDirichlet and WeightGaussian
# soft tokens, one op pair for both (slot_logprob: csrc/cpu/logprob_cpu.cpp, csrc/cuda/logprob.cu;
# docs/training.md says why one op).

_KIND_TOPK_DIRICHLET, _KIND_WEIGHT_GAUSSIAN = _C.NOISE_TOPK_DIRICHLET, _C.NOISE_WEIGHT_GAUSSIAN


@torch.library.register_fake("softkernels::slot_logprob")
def _slot_logprob_fake(logits, ids, draws, hard, kind, temperature, alpha, clamp_lo, clamp_hi,
                       sigma, radius, min_weight):
    batch = logits.shape[:-1]
    f = _stats_dtype(logits)
    return (logits.new_empty(batch, dtype=f), logits.new_empty(batch, dtype=f),
            logits.new_empty(batch, dtype=torch.int32))


@torch.library.register_fake("softkernels::slot_logprob_backward")
def _slot_logprob_backward_fake(grad, logits, ids, draws, hard, lse, kind, temperature, alpha,
                                clamp_lo, clamp_hi, sigma, radius, min_weight):
    return logits.new_empty(logits.shape)


def _slot_setup_context(ctx, inputs, output):
    logits, ids, draws, hard = inputs[:4]
    _, lse, status = output
    ctx.mark_non_differentiable(lse, status)
    ctx.save_for_backward(logits, ids, draws, hard, lse)
    ctx.params = tuple(inputs[4:])


def _slot_backward(ctx, grad, grad_lse, grad_status):
    logits, ids, draws, hard, lse = ctx.saved_tensors
    grad_logits = None
    if ctx.needs_input_grad[0]:
        grad_logits = torch.ops.softkernels.slot_logprob_backward(
            grad.contiguous(), logits, ids, draws, hard, lse, *ctx.params)
    return (grad_logits,) + (None,) * 11


torch.library.register_autograd("softkernels::slot_logprob", _slot_backward,
                                setup_context=_slot_setup_context)
refuse_double_backward("slot_logprob_backward", "slot_logprob")


def _check_slot_inputs(fn, logits, ids, draws, temperature, hard, validate, *,
                       draws_name="draws"):
    """Shared checks of the slot-row log-prob functions (gumbel_logprob's draws are its
    ``g_prime``); returns (batch, V, k, temperature)."""
    check_tensor(fn, "logits", logits, dtypes=FLOAT_DTYPES)
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"{fn}: logits must be a [..., V] tensor with V >= 1, got shape "
                         f"{tuple(logits.shape)}")
    device = logits.device
    V = logits.shape[-1]
    batch = tuple(logits.shape[:-1])
    check_tensor(fn, "ids", ids, dtypes=_INT_DTYPES, device=device)
    if ids.dim() != logits.dim() or tuple(ids.shape[:-1]) != batch:
        raise ValueError(f"{fn}: ids must have shape [..., k] with the logits' leading shape "
                         f"{batch}, got {tuple(ids.shape)} (logits {tuple(logits.shape)})")
    k = ids.shape[-1]
    if not 1 <= k <= _MAX_K:
        raise ValueError(f"{fn}: ids must have 1 <= k <= {_MAX_K} slots, got k = {k}")
    check_tensor(fn, draws_name, draws, dtypes=FLOAT_DTYPES, device=device)
    if draws.shape != ids.shape:
        raise ValueError(f"{fn}: {draws_name} must have the shape of ids {tuple(ids.shape)}, got "
                         f"{tuple(draws.shape)}")
    temperature = _positive(fn, "temperature", temperature)
    if hard is not None:
        check_tensor(fn, "hard", hard, dtypes=(torch.bool,), device=device)
        if tuple(hard.shape) != batch:
            raise ValueError(f"{fn}: hard must have the logits' leading shape {batch}, got "
                             f"{tuple(hard.shape)}")
    check_bool(fn, "validate", validate)
    return batch, V, k, temperature


def _slot_rows_args(logits, ids, draws, hard):
    """The tensors of a slot-row op in the layout the raw op asks for: at most _MAX_BATCH_DIMS
    batch dimensions, unit-stride vocabulary, int64 ids, draws in the stats dtype."""
    V, k = logits.shape[-1], ids.shape[-1]
    if logits.dim() - 1 > _MAX_BATCH_DIMS:
        logits, ids, draws = logits.reshape(-1, V), ids.reshape(-1, k), draws.reshape(-1, k)
        hard = hard.reshape(-1) if hard is not None else None
    if logits.stride(-1) != 1 and V > 1:
        logits = logits.contiguous()
    ids = ids.to(torch.int64).contiguous()
    draws = draws.to(_stats_dtype(logits)).contiguous()
    return logits, ids, draws, (hard.contiguous() if hard is not None else None)


def _raise_for_slot_inputs(fn, kind, ids, draws, hard, V):
    """The first bad id or draw a row the kernel flagged reads, as a ValueError (the kernel's
    status says that one exists; this names it)."""
    # Soft rows read every slot, hard rows only slot 0 (and none of their draws).
    soft = (~hard[..., None] if hard is not None else torch.ones_like(ids, dtype=torch.bool))
    soft = soft.expand(ids.shape)
    read = soft.clone()
    read[..., 0] = True
    bad = (((ids < 0) | (ids >= V)) & read).reshape(-1).nonzero()
    if bad.numel():
        i = int(bad[0, 0])
        raise ValueError(f"{fn}: ids{list(_row_index(i, ids.shape))} = "
                         f"{int(ids.reshape(-1)[i])} is not a token id in [0, V) = [0, {V})")
    nonfinite = (~torch.isfinite(draws) & soft).reshape(-1).nonzero()
    if nonfinite.numel():
        i = int(nonfinite[0, 0])
        raise ValueError(f"{fn}: draws{list(_row_index(i, draws.shape))} = "
                         f"{draws.reshape(-1)[i].item()} is not finite")
    if kind == _KIND_TOPK_DIRICHLET:
        neg = ((draws < 0) & soft).reshape(-1).nonzero()
        if neg.numel():
            i = int(neg[0, 0])
            raise ValueError(f"{fn}: draws{list(_row_index(i, draws.shape))} = "
                             f"{draws.reshape(-1)[i].item()} is negative; Gamma draws are >= 0")
    raise ValueError(f"{fn}: a row was flagged by the kernel (bad id or draw)")  # pragma: no cover


def _slot_logprob(fn, kind, logits, ids, draws, temperature, hard, validate, *, alpha=1.0,
                  lo=-math.inf, hi=math.inf, sigma=1.0, radius=math.inf, min_weight):
    batch, V, k = tuple(logits.shape[:-1]), logits.shape[-1], ids.shape[-1]
    check_data = validate and not skip_data_checks(logits, ids, draws)
    ids_in, draws_in, hard_in = ids, draws, hard
    # The draws are data: no gradient flows to them.
    logits, ids, draws, hard = _slot_rows_args(logits, ids, draws.detach(), hard)
    logprob, _, status = torch.ops.softkernels.slot_logprob(
        logits, ids, draws, hard, kind, temperature, alpha, lo, hi, sigma, radius, min_weight)
    if check_data and status.numel() > 0 and bool(
            ((status & (_LP_BAD_ID | _LP_BAD_NOISE)) != 0).any()):
        _raise_for_slot_inputs(fn, kind, ids_in, draws_in, hard_in, V)
    return logprob.reshape(batch)


def topk_dirichlet_logprob(
    logits: torch.Tensor,
    ids: torch.Tensor,
    draws: torch.Tensor,
    temperature: float = 1.0,
    hard: Optional[torch.Tensor] = None,
    *,
    alpha: float = 1.0,
    clamp: Optional[Tuple[float, float]] = (-5.0, 3.0),
    min_weight: float = 0.05,
    validate: bool = True,
) -> torch.Tensor:
    """SofT-GRPO log-probability of :class:`softkernels.TopKDirichlet` soft tokens.

    With z = logits / temperature and p~ = softmax of z at the k ids, renormalised over them:

    * ``l_j = clamp(log Gamma(G_j; alpha * p~_j, 1), lo, hi)`` with
      ``log Gamma(x; c, 1) = (c - 1) log x - x - lgamma(c)``;
    * ``log pi = mean of l_j over M = {j : p~_j > min_weight}`` (the most probable slot when M is
      empty).

    This is zz1358m/SofT-GRPO-master@2b9d8ec, verl-0.4.x/verl/utils/torch_functional.py:111-137
    (their ``dirichlet_alphas=1.0``, clamp (-5, 3), mask ``p > 0.05``). Slots with G = 0 (the
    unweighted ones) are scored as in their code (``xlogy``: +inf for c < 1, so ``hi`` after the
    clamp) but carry no gradient; a slot whose value is NaN (c = 0, p~ underflowed) is left out of
    M instead of making the row NaN. Hard rows use ``log softmax(z)[ids[..., 0]]`` (their code
    switches on ``ids[1:] == 0`` instead).

    Args:
        logits: [..., V] float (any leading shape); -inf marks a masked token.
        ids: [..., k] integer slot ids (``SoftTokens.ids``).
        draws: [..., k] the Gamma draws G (``SoftTokens.noise`` of TopKDirichlet), >= 0.
        temperature: sampling temperature (> 0) applied to the logits.
        hard: optional bool [...]: rows that took a discrete token.
        alpha: the rollout's ``TopKDirichlet.alpha`` (> 0). Default 1.0.
        clamp: ``(lo, hi)`` on each slot's log-density, or None. Default (-5, 3).
        min_weight: slots with p~ <= min_weight are left out of the mean, in [0, 1). Default 0.05.
        validate: check ids and draws (a host sync); skipped under torch.compile.

    Returns:
        log pi [...], float32 (float64 for float64 logits), differentiable w.r.t. ``logits``
        (zero where the clamp is active, as in their code).
    """
    fn = "topk_dirichlet_logprob"
    batch, V, k, temperature = _check_slot_inputs(fn, logits, ids, draws, temperature, hard,
                                                  validate)
    alpha = _positive(fn, "alpha", alpha)
    lo, hi = _check_clamp(fn, clamp)
    min_weight = check_float(fn, "min_weight", min_weight, lo=0.0, hi=1.0, lo_open=False,
                             hi_open=True)
    return _slot_logprob(fn, _KIND_TOPK_DIRICHLET, logits, ids, draws, temperature, hard,
                         validate, alpha=alpha, lo=lo, hi=hi, min_weight=min_weight)


def weight_gaussian_logprob(
    logits: torch.Tensor,
    ids: torch.Tensor,
    draws: torch.Tensor,
    temperature: float = 1.0,
    hard: Optional[torch.Tensor] = None,
    *,
    sigma: float = 0.05,
    radius: float = 0.15,
    min_weight: float = 0.05,
    validate: bool = True,
) -> torch.Tensor:
    """SofT-GRPO log-probability of :class:`softkernels.WeightGaussian` soft tokens.

    With z = logits / temperature and p~ = softmax of z at the k ids, renormalised over them:

    * ``l_j = log N(clamp(x_j, p~_j - radius, p~_j + radius); p~_j, sigma^2)``;
    * ``log pi = mean of l_j over M = {j : p~_j > min_weight}`` (the most probable slot when M is
      empty).

    This is zz1358m/SofT-GRPO-master@2b9d8ec, verl-0.4.x/verl/utils/torch_functional.py:84-108
    (sigma 0.05 hard-coded there, radius 0.15, mask ``p > 0.05``). Hard rows use
    ``log softmax(z)[ids[..., 0]]``.

    Args:
        logits: [..., V] float; -inf marks a masked token.
        ids: [..., k] integer slot ids (``SoftTokens.ids``).
        draws: [..., k] the draws x (``SoftTokens.noise`` of WeightGaussian).
        temperature: sampling temperature (> 0).
        hard: optional bool [...]: rows that took a discrete token.
        sigma: the rollout's ``WeightGaussian.sigma`` (> 0). Default 0.05.
        radius: half-width of the clamp of x around p~ (> 0, or inf for none). Default 0.15.
        min_weight: slots with p~ <= min_weight are left out of the mean, in [0, 1). Default 0.05.
        validate: check ids and draws (a host sync); skipped under torch.compile.

    Returns:
        log pi [...], float32 (float64 for float64 logits), differentiable w.r.t. ``logits``
        (zero for a slot whose draw is clamped).
    """
    fn = "weight_gaussian_logprob"
    batch, V, k, temperature = _check_slot_inputs(fn, logits, ids, draws, temperature, hard,
                                                  validate)
    sigma = _positive(fn, "sigma", sigma)
    radius = check_float(fn, "radius", radius, lo=0.0, hi=math.inf, lo_open=True,
                         hi_open=False)
    min_weight = check_float(fn, "min_weight", min_weight, lo=0.0, hi=1.0, lo_open=False,
                             hi_open=True)
    return _slot_logprob(fn, _KIND_WEIGHT_GAUSSIAN, logits, ids, draws, temperature, hard,
                         validate, sigma=sigma, radius=radius, min_weight=min_weight)
