"""An independent port of FlashInfer's top-k / top-p renormalisation rules (the cut the released
Soft Thinking, RST and SofT-GRPO samplers apply before mixing), for comparison with
soft_embed(ties="keep_all").

Rewritten from flashinfer-ai/flashinfer at commit fb28d7242b3506a2348265962041acc1fb56cca4:
- top_k_renorm_prob: the pivot is the k-th largest probability and every p >= pivot is kept
  (include/flashinfer/topk.cuh:1910-1980, RadixTopKRenormProbKernel);
- top_p_renorm_prob: with f(x) = sum(p[p > x]), the search finds the largest `low` with
  f(low) >= top_p and keeps p > low (include/flashinfer/sampling.cuh:1741-1838,
  TopPRenormProbKernel). The port evaluates f on the exact candidate thresholds (the distinct
  probabilities and 0) instead of their ternary search.
"""

from __future__ import annotations

import torch


def top_k_renorm(probs: torch.Tensor, top_k: int) -> torch.Tensor:
    pivot = torch.topk(probs, top_k, dim=-1).values[..., -1:]
    kept = torch.where(probs >= pivot, probs, torch.zeros_like(probs))
    return kept / kept.sum(-1, keepdim=True)


def top_p_renorm(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    out = torch.zeros_like(probs)
    for b in range(probs.shape[0]):
        p = probs[b]
        cands = torch.cat([torch.unique(p), p.new_zeros(1)])
        mass = torch.stack([p[p > x].sum() for x in cands])
        low = cands[mass >= top_p].max()
        kept = torch.where(p > low, p, torch.zeros_like(p))
        out[b] = kept / kept.sum()
    return out
