"""An independent port of SofT-GRPO's rollout noise and its log-probabilities, for comparison.

Rewritten (not copied) from zz1358m/SofT-GRPO-master at commit
2b9d8ec6d8f022f2aefe7a1c2512dcb9924cddfe. SAMPLER below is
Soft-Thinking+noise+loss-main/sglang_soft_thinking_pkg/python/sglang/srt/layers/sampler.py and
TRAIN is verl-0.4.x/verl/utils/torch_functional.py. Their random draws come from torch's global
generator; the port takes the draws as arguments so that a test can hand it the very draws
softkernels used (from softkernels.reference's Philox), and compare the transforms.

Reproduced behaviours (file:line):
- top-k renorm, min_p renorm, top-k of max_topk, renormalise: SAMPLER:149-162.
- Dirichlet after top-k: conc = topk_probs * 1.0, Gamma(conc, 1), log-prob clamped (-5, 3) and
  averaged over topk_probs > 0.05, w = G / sum G, sorted descending, G returned: SAMPLER:165-180.
- Gumbel: log(p + 1e-6) + noise_factor * clamp(g, -1.5, 3), softmax(./tau), sorted, g' returned:
  SAMPLER:183-204.
- Gaussian on the weights: N(p, 0.05^2) on all k slots, not clamped, divided by the sum, sorted,
  x returned; log-prob of the draw clamped to p +- 0.15, averaged over p > 0.05: SAMPLER:206-221.
- Training log-probs: TRAIN:84-108 (normal, std 0.05 hard-coded), TRAIN:111-137 (Dirichlet,
  dirichlet_alphas 1.0), TRAIN:140-164 (Gumbel). Their answer branch (ids[1:] == 0) is left out.
"""

from __future__ import annotations

import torch


def filtered_topk(logits, temperature, top_k, max_topk, min_p=0.0):
    """SAMPLER:119-162 without top_p: softmax(logits / T), keep the top_k, renormalise, min_p,
    then the max_topk largest renormalised. Returns (topk_probs, topk_indices)."""
    probs = torch.softmax(logits / temperature, dim=-1)
    kth = torch.topk(probs, top_k, dim=-1).values[:, -1:]
    probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    probs = probs / probs.sum(-1, keepdim=True)
    if min_p > 0:
        probs = torch.where(probs < probs.max(-1, keepdim=True).values * min_p,
                            torch.zeros_like(probs), probs)
        probs = probs / probs.sum(-1, keepdim=True)
    vals, idx = torch.topk(probs, max_topk, dim=-1)
    return vals / vals.sum(-1, keepdim=True), idx


def _sort_slots(weights, ids, noise):
    w, order = torch.sort(weights, dim=-1, descending=True)
    return w, torch.gather(ids, 1, order), torch.gather(noise, 1, order)


def rollout_dirichlet(topk_probs, topk_ids, gamma_draws):
    """SAMPLER:165-180 with the Gamma(topk_probs * 1.0) draws given. Returns (w, ids, G, logp)."""
    conc = topk_probs * 1.0
    dist = torch.distributions.Gamma(conc, torch.ones_like(conc), validate_args=False)
    lp = dist.log_prob(gamma_draws).clamp(min=-5, max=3)
    mask = (topk_probs > 0.05).float()
    logp = (lp * mask).sum(-1) / mask.sum(-1)
    w = gamma_draws / gamma_draws.sum(-1, keepdim=True)
    return (*_sort_slots(w, topk_ids, gamma_draws), logp)


def rollout_gumbel(topk_probs, topk_ids, gumbel_draws, noise_factor, tau):
    """SAMPLER:183-204 with the standard Gumbel draws given. Returns (w, ids, g')."""
    base = torch.log(topk_probs + 1e-6)
    g = gumbel_draws.clamp(-1.5, 3)
    gp = base + noise_factor * g
    w = (gp / tau).softmax(-1)
    return _sort_slots(w, topk_ids, gp)


def rollout_gaussian(topk_probs, topk_ids, normal_draws, std=0.05):
    """SAMPLER:206-221 with the standard normal draws given. Returns (w, ids, x, logp)."""
    mu = topk_probs
    x = mu + std * normal_draws
    dist = torch.distributions.Normal(mu, torch.ones_like(mu) * std)
    lp = dist.log_prob(torch.clamp(x, mu - 0.15, mu + 0.15))
    mask = (topk_probs > 0.05).float()
    logp = (lp * mask).sum(-1) / mask.sum(-1)
    return (*_sort_slots(x / x.sum(-1, keepdim=True), topk_ids, x), logp)


def _slot_probs(logits, ids):
    p = torch.softmax(logits, dim=-1).gather(-1, ids)
    return p / p.sum(-1, keepdim=True)


def train_logprob_normal(logits, ids, draws):
    """TRAIN:84-108 (logits already divided by the temperature, dp_actor.py:224)."""
    p = _slot_probs(logits, ids)
    dist = torch.distributions.Normal(p, torch.ones_like(p) * 0.05)
    lp = dist.log_prob(draws.clamp(p - 0.15, p + 0.15))
    mask = (p > 0.05).float()
    return (lp * mask).sum(-1) / mask.sum(-1)


def train_logprob_dirichlet(logits, ids, draws, alphas=1.0):
    """TRAIN:111-137."""
    p = _slot_probs(logits, ids)
    conc = p * alphas
    dist = torch.distributions.Gamma(conc, torch.ones_like(conc), validate_args=False)
    lp = dist.log_prob(draws).clamp(min=-5, max=3)
    mask = (p > 0.05).float()
    return (lp * mask).sum(-1) / mask.sum(-1)


def train_logprob_gumbel(logits, ids, g_prime):
    """TRAIN:140-164."""
    logp = (_slot_probs(logits, ids) + 1e-6).log()
    g = (g_prime - logp).clamp(-1.5, 3)
    out = -g - (-g).exp()
    mask = (logp > -3).float()
    return (out * mask).sum(-1) / mask.sum(-1)
