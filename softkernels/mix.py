"""``mix_embeddings``: soft_embed's embedding mixture on given ids and weights.

``soft_embed`` chooses the slots (ids, weights) from logits and mixes the embedding rows;
``mix_embeddings`` does only the second half, with the very same kernel code (csrc/cpu/mix_row.h,
csrc/cuda/mix_row.cuh): fp32 accumulation (fp64 for fp64 tables) in slot order, zero-weight slots
skipped, then the Gaussian term keyed by (seed, offset), then one rounding to the table's dtype.
Mixing the ids and weights soft_embed returned therefore gives back its embeds bit for bit, which
is what a training forward needs to see exactly the inputs a rollout saw
(:func:`softkernels.soft_inputs_from_trace`).

The op is registered with CPU and CUDA kernels, a fake kernel and autograd (gradients to the
weights and to the embedding table), so it runs under torch.compile(fullgraph=True) and
torch.library.opcheck.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

from . import _C  # noqa: F401  (loads the op library)
from ._checks import (FLOAT_DTYPES, I64_MAX, I64_MIN, INT_DTYPES, MAX_K, check_bool, check_int,
                      check_tensor, skip_data_checks)
from .noise import Gaussian, Noise, noise_kind

__all__ = ["mix_embeddings"]

_MAX_K = MAX_K
_INT_DTYPES = INT_DTYPES


@torch.library.register_fake("softkernels::mix_embeddings")
def _mix_fake(embedding, ids, weights, seed, offset, seed_rows, offset_rows, gaussian, sigma):
    return embedding.new_empty((ids.shape[0], embedding.shape[1]))


def _mix_setup_context(ctx, inputs, output):
    embedding, ids, weights = inputs[:3]
    ctx.save_for_backward(embedding, ids, weights)


def _mix_backward(ctx, grad):
    """out[n] = sum_j w[n, j] E[ids[n, j]] (+ a constant): linear in w and in E.

    d/dw[n, j] = <grad[n], E[ids[n, j]]> for every slot whose id is a row of E (0 otherwise);
    d/dE[v] = sum over (n, j) with ids[n, j] = v of w[n, j] grad[n]. Accumulated in fp32 (fp64
    when the table or the weights are fp64) with ATen ops, so the backward works on any device
    and traces under torch.compile; the table's gradient uses embedding_dense_backward (the
    gradient of nn.Embedding), deterministic on CPU and CUDA.
    """
    embedding, ids, weights = ctx.saved_tensors
    need_emb, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
    Ve = embedding.shape[0]
    acc = torch.float64 if torch.float64 in (embedding.dtype, weights.dtype) else torch.float32
    in_table = (ids >= 0) & (ids < Ve)
    safe_ids = torch.where(in_table, ids, torch.zeros_like(ids))
    g = grad.to(acc)
    grad_emb = grad_w = None
    if need_w:
        rows = torch.nn.functional.embedding(safe_ids, embedding).to(acc)        # [N, k, D]
        dots = torch.bmm(rows, g.unsqueeze(-1)).squeeze(-1)                     # [N, k]
        grad_w = torch.where(in_table, dots, torch.zeros_like(dots)).to(weights.dtype)
    if need_emb:
        w = torch.where(in_table & (weights != 0), weights.to(acc), torch.zeros((), dtype=acc,
                                                                                 device=g.device))
        contrib = w.unsqueeze(-1) * g.unsqueeze(1)                                # [N, k, D]
        grad_emb = torch.ops.aten.embedding_dense_backward(contrib, safe_ids, Ve, -1, False)
        grad_emb = grad_emb.to(embedding.dtype)
    return (grad_emb, None, grad_w) + (None,) * 6


torch.library.register_autograd("softkernels::mix_embeddings", _mix_backward,
                                setup_context=_mix_setup_context)


def _row_keys(fn: str, name: str, value, lead, device) -> tuple:
    """(scalar, [N] int64 tensor or None) from an int or an integer tensor of the leading shape."""
    if isinstance(value, torch.Tensor):
        if value.dtype not in _INT_DTYPES:
            raise TypeError(f"{fn}: {name} must be an int or an integer tensor, got {value.dtype}")
        if tuple(value.shape) != tuple(lead):
            raise ValueError(f"{fn}: {name} must be an int or a tensor of the leading shape "
                             f"{tuple(lead)} (one value per mixed row), got shape "
                             f"{tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"{fn}: {name} is on {value.device} but the ids are on {device}")
        return 0, value.to(torch.int64).reshape(-1).contiguous()
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn}: {name} must be an int or an integer tensor, got "
                        f"{type(value).__name__} {value!r}")
    return check_int(fn, name, value, I64_MIN, I64_MAX), None


def mix_embeddings(
    embedding: torch.Tensor,
    ids: torch.Tensor,
    weights: torch.Tensor,
    *,
    noise: Optional[Noise] = None,
    seed: Union[int, torch.Tensor] = 0,
    offset: Union[int, torch.Tensor] = 0,
    validate: bool = True,
) -> torch.Tensor:
    """Mixes embedding rows with given weights exactly as :func:`soft_embed` does.

    ``out[...] = sum_j weights[..., j] * embedding[ids[..., j]]`` (+ ``sigma * N(0, I_D)`` keyed
    by ``(seed, offset)`` with Gaussian noise), accumulated in fp32 (fp64 for an fp64 table) in
    slot order, skipping slots whose weight is 0, and rounded once to the table's dtype. Given the
    ``ids`` and ``weights`` that ``soft_embed(..., noise=noise, seed=seed, offset=offset)``
    returned for a soft (not hard) row, the result equals its ``embeds`` bit for bit.

    Args:
        embedding: [V_e, D] float32 / bfloat16 / float16 / float64 table.
        ids: integer tensor [..., k] (any leading shape; k <= 1024). Slots with weight 0 are not
            read and may hold any id (e.g. -1 padding).
        weights: float tensor shaped like ``ids`` (float32 or float64 are used as they are; bfloat16
            / float16 are widened to float32, which is exact). Not renormalised.
        noise: the rollout's noise. Only :class:`Gaussian` adds anything here (relative sigma is
            resolved against ``embedding``, as soft_embed does); the other kinds act on the
            weights, which already carry them, and are accepted as no-ops. None: no noise.
        seed, offset: int, or an integer tensor of the leading shape (one key per mixed row): the
            Philox key of the Gaussian noise (as passed to soft_embed for that row).
        validate: raise ValueError when a weighted slot's id is outside [0, V_e) (a host sync).
            With ``validate=False``, and always under torch.compile, such rows come back as NaN.

    Returns:
        [..., D] in the embedding's dtype. Differentiable with respect to ``weights`` and
        ``embedding`` (the Gaussian term is a constant).
    """
    fn = "mix_embeddings"
    check_tensor(fn, "embedding", embedding, ndim=2, dtypes=FLOAT_DTYPES, shape_hint=" [V_e, D]")
    check_tensor(fn, "ids", ids, dtypes=_INT_DTYPES)
    check_tensor(fn, "weights", weights, dtypes=FLOAT_DTYPES)
    if ids.dim() < 1:
        raise ValueError(f"{fn}: ids must have a last dimension of slots [..., k], got a scalar")
    if tuple(weights.shape) != tuple(ids.shape):
        raise ValueError(f"{fn}: weights must have the shape of ids {tuple(ids.shape)}, got "
                         f"{tuple(weights.shape)}")
    device = ids.device
    for name, t in (("embedding", embedding), ("weights", weights)):
        if t.device != device:
            raise ValueError(f"{fn}: {name} is on {t.device} but ids are on {device}; move them "
                             "to one device")
    k = ids.shape[-1]
    if k > _MAX_K:
        raise ValueError(f"{fn}: at most {_MAX_K} slots per row, got k = {k}")
    kind = noise_kind(noise)  # TypeError for anything that is not a noise spec
    del kind
    check_bool(fn, "validate", validate)
    lead = tuple(ids.shape[:-1])
    seed_s, seed_t = _row_keys(fn, "seed", seed, lead, device)
    offset_s, offset_t = _row_keys(fn, "offset", offset, lead, device)
    gaussian = isinstance(noise, Gaussian)
    sigma = noise.absolute(embedding).sigma if gaussian else 0.0

    N = math.prod(lead)
    flat_ids = ids.reshape(N, k).to(torch.int64).contiguous()
    if weights.dtype not in (torch.float32, torch.float64):
        weights = weights.to(torch.float32)
    flat_w = weights.reshape(N, k).contiguous()
    if validate and not skip_data_checks(embedding, ids) and N > 0 and k > 0:
        Ve = embedding.shape[0]
        bad = ((flat_w != 0) & ((flat_ids < 0) | (flat_ids >= Ve))).any(1).nonzero()
        if bad.numel():
            n = int(bad[0, 0])
            row = tuple(int(i) for i in torch.unravel_index(torch.tensor(n), lead)) if lead else ()
            raise ValueError(
                f"{fn}: row {row} gives weight to an id outside [0, V_e) = [0, {Ve}): ids "
                f"{flat_ids[n].tolist()}, weights {flat_w[n].tolist()} (pass validate=False to "
                "get a NaN row instead)")
    if embedding.stride(-1) != 1:
        embedding = embedding.contiguous()
    out = torch.ops.softkernels.mix_embeddings(embedding, flat_ids, flat_w, seed_s, offset_s,
                                               seed_t, offset_t, gaussian, sigma)
    return out.reshape(*lead, embedding.shape[1])
