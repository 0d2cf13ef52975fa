"""Selective iteration (Think-at-Hard): pick the hard rows, build their iteration input, add the
iteration's logits back. docs/iterate_hard.md has the semantics and decisions.

* :func:`select_rows` (fused op, CPU and CUDA): the rows whose score is below a threshold,
  compacted, and their count, both on the scores' device (no host sync).
* :func:`iteration_embeds`: the iteration input of chosen rows, ``sum_i softmax(top-M logits)_i
  E[i]`` (one fused :func:`softkernels.soft_embed` call with ``k = M``, temperature 1, no filters).
* :func:`add_rows_` (fused op, CPU and CUDA): ``logits[idx[j]] += src[j]`` for ``j < count``,
  in place, with ``count`` read on the device (no host sync).

The float64 references are in :mod:`softkernels.reference` (``select_rows_reference``,
``iteration_embeds_reference``, ``add_rows_reference``).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Union

import torch

from . import _C  # noqa: F401  (loads the op library)
from ._checks import (FLOAT_DTYPES, MAX_K, check_bool, check_float, check_int, check_tensor,
                      skip_data_checks)
from .ops import soft_embed

__all__ = ["SelectedRows", "select_rows", "iteration_embeds", "add_rows_", "max_prob"]


class SelectedRows(NamedTuple):
    """Result of :func:`select_rows`.

    idx: int64 [B], a stable partition of ``0..B-1``: the hard rows in ascending order, then the
        easy rows in ascending order (so every entry is a valid row index).
    count: int64 [1], the number of hard rows, on the scores' device. ``idx[:count]`` are the
        hard rows.
    """

    idx: torch.Tensor
    count: torch.Tensor


@torch.library.register_fake("softkernels::select_rows")
def _select_rows_fake(scores, threshold):
    return (scores.new_empty((scores.shape[0],), dtype=torch.int64),
            scores.new_empty((1,), dtype=torch.int64))


@torch.library.register_fake("softkernels::add_rows_")
def _add_rows_fake(logits, src, idx, count):
    return None


def _threshold(fn: str, threshold) -> float:
    return check_float(fn, "threshold", threshold)


def select_rows(scores: torch.Tensor, threshold: float) -> SelectedRows:
    """The rows whose score is below ``threshold``, compacted, without a host sync.

    Row b is hard when ``scores[b] < threshold`` (compared exactly, in float64; NaN is never
    hard). Returns :class:`SelectedRows` ``(idx, count)``: ``idx`` int64 [B] lists the hard rows in
    ascending order followed by the easy rows in ascending order, ``count`` int64 [1] is the number
    of hard rows. Both stay on the scores' device; read ``int(count)`` only where the host needs
    the number (e.g. to size a batch).

    Args:
        scores: float32 / float64 / bfloat16 / float16 [B], e.g. each row's max probability
            (:func:`max_prob`) or a decider's output.
        threshold: a number (``-inf`` selects nothing, ``+inf`` every non-NaN row).
    """
    fn = "select_rows"
    check_tensor(fn, "scores", scores, ndim=1, dtypes=FLOAT_DTYPES, shape_hint=" [B]")
    t = _threshold(fn, threshold)
    idx, count = torch.ops.softkernels.select_rows(scores.contiguous(), t)
    return SelectedRows(idx, count)


def max_prob(logits: torch.Tensor) -> torch.Tensor:
    """float32 [B]: the largest probability of softmax(logits) per row (temperature 1), the
    default score of selective iteration. ``exp(max - logsumexp)`` in float32 (float64 for
    float64 logits)."""
    check_tensor("max_prob", "logits", logits, dtypes=FLOAT_DTYPES)
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"max_prob: logits must be a [..., V] tensor with V >= 1, got shape "
                         f"{tuple(logits.shape)}")
    x = logits if logits.dtype == torch.float64 else logits.float()
    return torch.exp(x.amax(-1) - torch.logsumexp(x, -1))


def iteration_embeds(logits: torch.Tensor, embedding: torch.Tensor, rows: torch.Tensor = None, *,
                     top_m: int = 100, validate: bool = True) -> torch.Tensor:
    """Iteration input of the given rows: ``sum_i softmax(top-M logits)_i * E[i]``.

    For each selected row r, the M largest logits of ``logits[r]`` (ties by the lower token id),
    their softmax (temperature 1, renormalised over the M), and the weighted sum of the matching
    embedding rows, accumulated in fp32 and returned in E's dtype. This is
    :func:`softkernels.soft_embed` with ``k = min(top_m, V)`` and every filter off, so it runs as
    one fused pass per row on CPU and CUDA.

    Args:
        logits: [B, V] (cumulative) logits.
        embedding: [V_e, D] input embedding matrix (unscaled; multiply by the model's embed scale
            yourself).
        rows: int64 index tensor [N] of the rows to compute (e.g. ``idx[:n]`` from
            :func:`select_rows` with ``n = int(count)``: work proportional to the hard rows; or the
            whole ``idx``, which needs no host sync). None: every row.
        top_m: M, 1 <= top_m <= 1024 (TaH uses 100); clamped to V.
        validate: check the data (NaN / +inf logits); reads a status back to the host.

    Returns:
        embeds [N, D] in E's dtype, row j for ``rows[j]``.
    """
    fn = "iteration_embeds"
    check_tensor(fn, "logits", logits, ndim=2, dtypes=FLOAT_DTYPES, shape_hint=" [B, V]")
    top_m = check_int(fn, "top_m", top_m, 1, MAX_K)
    check_bool(fn, "validate", validate)
    if rows is not None:
        check_tensor(fn, "rows", rows, ndim=1, dtypes=(torch.int64, torch.int32),
                     device=logits.device)
        B = logits.shape[0]
        if rows.numel() and not skip_data_checks(logits, rows):
            bad = ((rows < 0) | (rows >= B)).nonzero()
            if bad.numel():
                j = int(bad[0, 0])
                raise ValueError(f"{fn}: rows[{j}] = {int(rows[j])} is not a row of logits "
                                 f"(B = {B})")
        logits = logits.index_select(0, rows)
    k = min(top_m, logits.shape[1]) if logits.shape[1] > 0 else top_m
    return soft_embed(logits, embedding, k=k, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
                      validate=validate).embeds


def _shares_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.numel() == 0 or b.numel() == 0 or a.device != b.device or a.device.type == "meta":
        return False
    sa, sb = a.untyped_storage(), b.untyped_storage()
    if sa.data_ptr() != sb.data_ptr():
        return False
    # Same storage: the byte ranges the two views span.
    def span(t):
        lo = t.storage_offset() * t.element_size()
        hi = lo + (sum((s - 1) * st for s, st in zip(t.shape, t.stride())) + 1) * t.element_size()
        return lo, hi
    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1


def _check_in_place(fn: str, logits, src, idx, count) -> None:
    """What torch's own in-place ops refuse: a leaf that requires grad (and, since add_rows_ is
    not differentiable, any logits in an autograd graph), a destination with elements that share
    memory, and inputs that overlap the destination."""
    if logits.requires_grad and (logits.is_leaf or torch.is_grad_enabled()):
        raise ValueError(f"{fn}: logits requires grad; add_rows_ modifies it in place and is not "
                         "differentiable: call it under torch.no_grad() on a tensor that is not "
                         "a leaf requiring grad (e.g. logits.detach())")
    if logits.numel() > 1 and logits.device.type != "meta" and \
            torch._debug_has_internal_overlap(logits) == 1:
        raise ValueError(f"{fn}: logits has elements that share memory (an expanded or "
                         f"overlapping view, strides {logits.stride()}); writing to it in place "
                         "is ambiguous: pass a tensor with distinct elements (e.g. .clone())")
    for name, t in (("src", src), ("idx", idx), ("count", count)):
        if _shares_memory(logits, t):
            raise ValueError(f"{fn}: {name} overlaps logits in memory; pass a copy "
                             f"({name}.clone())")


def add_rows_(logits: torch.Tensor, src: torch.Tensor, idx: torch.Tensor,
              count: Union[torch.Tensor, int], *, validate: bool = True) -> torch.Tensor:
    """In place: ``logits[idx[j]] += src[j]`` for ``j < count``; returns ``logits``.

    ``count`` is clamped to ``[0, min(len(idx), len(src))]`` and, as a tensor, read on the device:
    no host sync, so ``src`` may hold only the first ``n`` hard rows (work proportional to them)
    or all B rows (static shapes). Rows are added in j order (a row listed twice gets both
    additions); each sum is computed in float32 (float64 for float64) and rounded once to the
    logits' dtype. Not differentiable (an inference op).

    Args:
        logits: [B, V] float tensor with contiguous rows (a view such as ``out.logits[:, -1]`` is
            fine), modified in place.
        src: [N, V], same dtype and device.
        idx: int64 [L] row indices into logits (e.g. :func:`select_rows`' ``idx``).
        count: int64 tensor with one element (e.g. :func:`select_rows`' ``count``) or an int.
        validate: check that ``idx[:count]`` are row indices in ``[0, B)`` (reads idx and count
            back to the host). With validate=False out-of-range entries are skipped.
    """
    fn = "add_rows_"
    check_tensor(fn, "logits", logits, ndim=2, dtypes=FLOAT_DTYPES, shape_hint=" [B, V]")
    dev = logits.device
    B, V = logits.shape
    check_tensor(fn, "src", src, ndim=2, dtypes=(logits.dtype,), device=dev, shape_hint=" [N, V]")
    if src.shape[1] != V:
        raise ValueError(f"{fn}: src must have V = {V} columns like logits, got shape "
                         f"{tuple(src.shape)}")
    check_tensor(fn, "idx", idx, ndim=1, dtypes=(torch.int64,), device=dev)
    if isinstance(count, torch.Tensor):
        if count.numel() != 1 or count.dtype != torch.int64:
            raise ValueError(f"{fn}: count must be an int64 tensor with one element or an int, "
                             f"got {count.dtype} of shape {tuple(count.shape)}")
        if count.device != dev:
            raise ValueError(f"{fn}: count is on {count.device} but must be on {dev} (the "
                             "logits' device)")
        count_t = count.reshape(1)
    else:
        count = check_int(fn, "count", count, 0)
        count_t = torch.tensor([count], dtype=torch.int64, device=dev)
    check_bool(fn, "validate", validate)
    _check_in_place(fn, logits, src, idx, count_t)
    if logits.shape[1] > 1 and logits.stride(1) != 1:
        raise ValueError(f"{fn}: logits must have contiguous rows (stride 1 along V), got "
                         f"strides {logits.stride()}")
    if src.shape[1] > 1 and src.stride(1) != 1:
        src = src.contiguous()
    idx = idx.contiguous()
    if validate and not skip_data_checks(logits, idx, count_t) and idx.numel():
        n = max(0, min(int(count_t), idx.shape[0], src.shape[0]))
        head = idx[:n]
        bad = ((head < 0) | (head >= B)).nonzero()
        if bad.numel():
            j = int(bad[0, 0])
            raise ValueError(f"{fn}: idx[{j}] = {int(head[j])} is not a row of logits "
                             f"(B = {B})")
    torch.ops.softkernels.add_rows_(logits, src, idx, count_t)
    return logits
