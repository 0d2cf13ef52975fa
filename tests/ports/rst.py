"""An independent port of Randomized Soft Thinking's soft-token noise
(WJMacro/Randomized-Soft-Thinking@4a95b5a, sglang_soft_thinking_pkg/python/sglang/srt/
layers/sampler.py), rewritten from reading the code. Filters are Soft Thinking's
(tests/ports/soft_thinking.py: RST's sampler.py:205-214 is the same code).

* Dirichlet (sampler.py:221-230): on the filtered distribution p, G_i ~ Gamma(alpha * p_i),
  w = G / sum G, zeroed where p <= 1e-7 and renormalised; then top ``max_topk`` and renormalise
  (:233-234).
* Gumbel (sampler.py:236-238): ``F.gumbel_softmax(log w, tau)`` on the top-k weights, i.e.
  ``softmax((log w + g) / tau)`` with g ~ Gumbel(0, 1) unclamped and unscaled; the slots are then
  re-sorted by weight (:241-243).
"""

from __future__ import annotations

import torch

from .soft_thinking import _flashinfer_top_k, _flashinfer_top_p


def _filtered(logits, temperature, top_k, top_p, min_p):
    p = torch.softmax(logits.float() / temperature, dim=-1)
    p = _flashinfer_top_p(_flashinfer_top_k(p, top_k), top_p)
    if min_p > 0:
        p = p.masked_fill(p < p.max(-1, keepdim=True).values * min_p, 0.0)
        p = p / p.sum(-1, keepdim=True)
    return p


def sampler(logits: torch.Tensor, *, temperature: float, top_k: int, top_p: float, min_p: float,
            max_topk: int, dirichlet_alpha=None, gumbel_tau=None, generator=None):
    """(ids, weights) [B, max_topk] of RST's soft rows, sorted by descending weight."""
    p = _filtered(logits, temperature, top_k, top_p, min_p)
    if dirichlet_alpha is not None:
        support = p > 1e-7
        conc = (p * dirichlet_alpha).clamp(min=1e-30)
        g = torch._standard_gamma(conc.double(), generator=generator).float()
        q = g / g.sum(-1, keepdim=True) * support
        p = q / q.sum(-1, keepdim=True)
    w, ids = torch.topk(p, k=max_topk, dim=-1)
    w = w / w.sum(-1, keepdim=True)
    if gumbel_tau is not None:
        u = torch.rand(w.shape, generator=generator, dtype=torch.float64).clamp(min=1e-300)
        gum = -torch.log(-torch.log(u))
        w = torch.softmax((torch.log(w.double()) + gum) / gumbel_tau, dim=-1).float()
    w, order = w.sort(-1, descending=True)
    return ids.gather(-1, order), w
