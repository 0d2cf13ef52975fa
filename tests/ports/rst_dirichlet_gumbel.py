"""An independent port of Randomized Soft Thinking's sampler with both noises on (Dirichlet, then
Gumbel-softmax), for comparison with softkernels.DirichletGumbel.

Rewritten from WJMacro/Randomized-Soft-Thinking at commit
4a95b5a58ac8b4a9a130b6137263bf7983bf5be6, sglang_soft_thinking_pkg/python/sglang/srt/layers/
sampler.py (SAMPLER). The draws are arguments (their code uses torch's global generator).

Reproduced (file:line): top-k renorm SAMPLER:206; Dirichlet(probs * alpha) over the filtered
support, masked to probs > 1e-7, renormalised SAMPLER:221-230; top max_topk and renormalise
SAMPLER:233-234; F.gumbel_softmax(log p, tau) (softmax((log p + g) / tau)) SAMPLER:236-238;
sort descending SAMPLER:241-243.
"""

from __future__ import annotations

import torch


def rollout_dirichlet_gumbel(logits, temperature, top_k, max_topk, gamma_draws, gumbel_draws,
                             tau):
    """gamma_draws: [B, V] Gamma(probs * alpha) draws (0 off the support); gumbel_draws: [B, V]
    standard Gumbel draws of every token (gathered at the top max_topk). Returns (w, ids)."""
    probs = torch.softmax(logits / temperature, dim=-1)
    kth = torch.topk(probs, top_k, dim=-1).values[:, -1:]
    probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    probs = probs / probs.sum(-1, keepdim=True)
    support = probs > 1e-7
    new = gamma_draws / gamma_draws.sum(-1, keepdim=True)
    new = new * support
    probs = new / new.sum(-1, keepdim=True)
    vals, idx = torch.topk(probs, max_topk, dim=-1)
    vals = vals / vals.sum(-1, keepdim=True)
    g = torch.gather(gumbel_draws, 1, idx)
    w = ((torch.log(vals) + g) / tau).softmax(-1)
    w, order = torch.sort(w, dim=-1, descending=True)
    return w, torch.gather(idx, 1, order)
