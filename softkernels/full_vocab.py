"""soft_embed's full-vocabulary path (k = V beyond the fused kernel's 1024 slots).

Soft Tokens, Hard Truths mixes the whole vocabulary; at temperature 1 the tail past the 1024 most
likely tokens is a few percent of the embedding. The fused kernel keeps at most 1024 candidates
per row (its per-row scratch), so ``soft_embed(k=None)`` (or any k > 1024) runs this path instead:
the same rules (docs/semantics.md) written with ATen ops over all V tokens, so it runs on every
device, under torch.compile and autograd (gradients through the weights with the kept set fixed,
as the fused op's backward). The mixture is a [B, V] x [V, D] product in fp32 (fp64 for fp64
tables); it matches the fused op up to summation order.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from . import _C
from .noise import Gaussian, Noise
from .soft_tokens import SoftTokens

_STATUS_NONFINITE, _STATUS_ALL_MASKED, _STATUS_BAD_HARD_ID = (
    _C.STATUS_NONFINITE, _C.STATUS_ALL_MASKED, _C.STATUS_BAD_HARD_ID)


# The row parameters of soft_embed (softkernels.ops.ROW_PARAMS) this path applies; soft_embed
# refuses a non-neutral value of any other.
ROW_PARAMS_APPLIED = ("temperature", "top_k", "top_p", "min_p", "seed", "offset")


def _rows(x, B, dtype, device):
    """A per-row parameter (number or [B] tensor) as a [B, 1] tensor."""
    if isinstance(x, torch.Tensor):
        return x.to(dtype=dtype, device=device).reshape(B, 1)
    return torch.full((B, 1), x, dtype=dtype, device=device)


def _filters_off(V, top_k, top_p, min_p) -> bool:
    """Whether top_k / top_p / min_p keep every token of every row (numbers at their neutral
    values, no per-row tensors)."""
    if any(isinstance(x, torch.Tensor) for x in (top_k, top_p, min_p)):
        return False
    return not (0 < top_k < V) and top_p >= 1 and min_p <= 0


def _filtered(zc, V, device, top_k, top_p, min_p, hard, hard_ids, keep_ties, status):
    """Slots (ids [B, V] best first), weights, entropy, max_prob and status of rows with filters
    or hard rows: the rules of docs/semantics.md on the rows sorted by probability."""
    B, f = zc.shape[0], zc.dtype
    # Ties by the lower id: a stable sort keeps equal logits in id order.
    zs, order = torch.sort(zc.detach(), dim=-1, descending=True, stable=True)
    zs = torch.gather(zc, -1, order)  # differentiable copy of the sorted logits
    logp = torch.log_softmax(zs, -1)
    ps = logp.exp()
    p_pos = ps > 0
    entropy = (-torch.where(p_pos, ps * logp, torch.zeros_like(ps)).sum(-1)).clamp(min=0)
    max_prob = ps[:, 0]
    pd = ps.detach()
    rank = torch.arange(V, device=device).expand(B, V)

    # top_k (keep_ties: every token tied with the top_k-th stays).
    tk = _rows(top_k, B, torch.int64, device)
    on = (tk > 0) & (tk < V)
    kth = torch.gather(pd, -1, (tk.clamp(1, V) - 1))
    keep = p_pos & torch.where(on, (pd >= kth) if keep_ties else (rank < tk), True)
    # top_p on the top_k-renormalised mass: keep while the mass before is < top_p.
    tp = _rows(top_p, B, f, device)
    q = torch.where(keep, pd, torch.zeros_like(pd))
    q = q / q.sum(-1, keepdim=True)
    before = torch.cumsum(q, -1) - q
    keep_p = keep & ((before < tp) | (rank == 0))
    if keep_ties:
        last = torch.where(keep_p, pd, torch.full_like(pd, math.inf)).min(-1, keepdim=True).values
        keep_p = keep_p | (keep & (pd == last))
    keep = torch.where(tp < 1, keep_p, keep)
    # min_p relative to the max probability.
    mp = _rows(min_p, B, f, device)
    keep = keep & ((pd >= mp * pd[:, :1]) | (mp <= 0))
    w = torch.softmax(torch.where(keep, zs, torch.full_like(zs, -math.inf)), -1)

    ids = order
    if hard is not None:
        hid = order[:, 0] if hard_ids is None else hard_ids.to(device)
        badh = hard & ((hid < 0) | (hid >= V)) if hard_ids is not None else torch.zeros_like(hard)
        status = torch.where((status == 0) & badh, _STATUS_BAD_HARD_ID, status)
        hid = hid.clamp(0, V - 1)
        # Hard rows: the forced token first, then the others in probability order.
        key = torch.where(order == hid[:, None], torch.full_like(rank, -1), rank)
        hard_order = torch.gather(order, -1, torch.argsort(key, dim=-1, stable=True))
        ids = torch.where(hard[:, None], hard_order, order)
        onehot = (rank == 0).to(w.dtype)
        w = torch.where(hard[:, None], onehot, w)

    return ids, w, entropy, max_prob, status


def soft_embed_full(logits: torch.Tensor, embedding: torch.Tensor, *, temperature, top_k, top_p,
                    min_p, noise: Optional[Noise], sigma: float, seed, offset,
                    hard: Optional[torch.Tensor], hard_ids: Optional[torch.Tensor],
                    keep_ties: bool):
    """Every output of soft_embed with k = V, and the per-row status (the kernel's codes).
    Arguments are validated by soft_embed; ``sigma`` is the Gaussian noise in embedding units."""
    B, V = logits.shape
    device = logits.device
    f = torch.float64 if logits.dtype == torch.float64 else torch.float32
    macc = torch.float64 if embedding.dtype == torch.float64 else torch.float32
    z = logits.to(f) / _rows(temperature, B, f, device)
    nonfinite = (torch.isnan(z) | (z == math.inf)).any(-1)
    masked = (z == -math.inf).all(-1)
    zc = torch.where(nonfinite[:, None], torch.zeros_like(z), z)
    status = torch.zeros(B, dtype=torch.int32, device=device)
    status = torch.where(nonfinite, _STATUS_NONFINITE, status)
    status = torch.where((status == 0) & masked, _STATUS_ALL_MASKED, status)
    if hard is None and _filters_off(V, top_k, top_p, min_p):
        # Soft Tokens, Hard Truths' case: every token, weights = softmax(z). The mixture reads p in
        # vocabulary order; only the returned slots are sorted.
        logp_v = torch.log_softmax(zc, -1)
        p_v = logp_v.exp()
        entropy = (-torch.where(p_v > 0, p_v * logp_v, torch.zeros_like(p_v)).sum(-1)).clamp(min=0)
        ids = torch.sort(zc.detach(), dim=-1, descending=True, stable=True).indices
        w = torch.gather(p_v, -1, ids)
        max_prob = w[:, 0]
        acc = p_v.to(macc) @ embedding[:V].to(macc)
    else:
        ids, w, entropy, max_prob, status = _filtered(zc, V, device, top_k, top_p, min_p, hard,
                                                      hard_ids, keep_ties, status)
        full = torch.zeros(B, V, dtype=macc, device=device).scatter(-1, ids, w.to(macc))
        acc = full @ embedding[:V].to(macc)
    if isinstance(noise, Gaussian) and sigma > 0 and B:
        from .mix import mix_embeddings  # the kernels' noise stream, added in the mixture dtype
        zero_e = torch.zeros(1, embedding.shape[1], dtype=macc, device=device)
        slot = torch.zeros(B, 1, dtype=torch.int64, device=device)
        acc = acc + mix_embeddings(zero_e, slot, torch.zeros(B, 1, dtype=macc, device=device),
                                   noise=Gaussian(sigma, relative=False), seed=seed,
                                   offset=offset, validate=False)
    embeds = acc.to(embedding.dtype)
    if hard is not None:
        embeds = torch.where(hard[:, None], embedding[ids[:, 0]], embeds)
    # Flagged rows come back NaN (ids 0), as the kernel writes them; no host sync here.
    bad = status != 0
    nan = torch.tensor(math.nan, dtype=f, device=device)
    w = torch.where(bad[:, None], nan, w)
    ids = torch.where(bad[:, None], torch.zeros_like(ids), ids)
    entropy = torch.where(bad, nan, entropy)
    max_prob = torch.where(bad, nan, max_prob)
    embeds = torch.where(bad[:, None], nan.to(embeds.dtype), embeds)
    return SoftTokens(embeds, ids, w, entropy, max_prob, None), status
