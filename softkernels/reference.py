"""Float64 pure-PyTorch reference of every softkernels op: the specification in code.

These functions are slow (a Python loop over rows, full sorts) and written for clarity. The tests
compare the fused kernels against them on random inputs. docs/semantics.md states the same rules
in prose; when the two disagree, that is a bug in one of them.

Conventions shared with the kernels:
* ties are broken by the lower token id in every selection;
* randomness is Philox 4x32-10 with counter ``(index, tag << 16 | attempt, offset_lo, offset_hi)``
  and key ``(seed_lo, seed_hi)``; uniforms are odd multiples of 2^-24 (exact in float32).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch

from .noise import (Dirichlet, DirichletGumbel, Gaussian, Gumbel, Noise, TopKDirichlet,
                    WeightGaussian)
from .soft_tokens import SoftTokens

__all__ = ["philox4x32_10", "philox_draw", "uniform_open", "gumbel_noise", "gaussian_noise",
           "log_gamma_sample", "soft_embed_reference", "route_step_reference", "TAG_GUMBEL", "TAG_DIRICHLET",
           "TAG_GAUSSIAN", "gumbel_logprob_reference", "gaussian_logprob_reference",
           "mix_embeddings_reference", "select_rows_reference", "iteration_embeds_reference",
           "add_rows_reference", "weight_normal_noise", "topk_dirichlet_logprob_reference",
           "weight_gaussian_logprob_reference", "TAG_WEIGHT_GAUSSIAN"]

TAG_GUMBEL, TAG_DIRICHLET, TAG_GAUSSIAN, TAG_WEIGHT_GAUSSIAN = 1, 2, 3, 4
GAMMA_MAX_ATTEMPTS = 16
_M32 = 0xFFFFFFFF


# --------------------------------------------------------------------------------------------
# Philox 4x32-10 on int64 tensors (every value kept in [0, 2^32)).

def _mulhilo(a: int, b: torch.Tensor):
    # a * b for 32-bit operands, split so that no intermediate leaves int64.
    lo16, hi16 = b & 0xFFFF, b >> 16
    p1 = a * lo16                      # < 2^48
    p2 = a * hi16                      # < 2^48
    mid = p1 + ((p2 & 0xFFFF) << 16)   # < 2^49
    lo = mid & _M32
    hi = (p2 >> 16) + (mid >> 32)
    return hi & _M32, lo


def philox4x32_10(ctr: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """Philox 4x32-10 of counters ``ctr`` [..., 4] under keys ``key`` [..., 2] (int64 holding uint32)."""
    c0, c1, c2, c3 = (ctr[..., i].clone() for i in range(4))
    k0, k1 = key[..., 0].clone(), key[..., 1].clone()
    for _ in range(10):
        hi0, lo0 = _mulhilo(0xD2511F53, c0)
        hi1, lo1 = _mulhilo(0xCD9E8D57, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + 0x9E3779B9) & _M32
        k1 = (k1 + 0xBB67AE85) & _M32
    return torch.stack([c0, c1, c2, c3], dim=-1)


def _u64_words(x: int):
    x &= (1 << 64) - 1
    return x & _M32, x >> 32


def philox_draw(seed: int, offset: int, tag: int, index: torch.Tensor, attempt: int = 0):
    """Four uint32 words (as int64) per entry of ``index`` for one row's (seed, offset)."""
    index = index.to(torch.int64) & _M32
    s0, s1 = _u64_words(int(seed))
    o0, o1 = _u64_words(int(offset))
    shape = index.shape
    ctr = torch.stack([index,
                       torch.full(shape, (tag << 16) | (attempt & 0xFFFF), dtype=torch.int64),
                       torch.full(shape, o0, dtype=torch.int64),
                       torch.full(shape, o1, dtype=torch.int64)], dim=-1)
    key = torch.tensor([s0, s1], dtype=torch.int64).expand(*shape, 2)
    return philox4x32_10(ctr, key)


def uniform_open(bits: torch.Tensor) -> torch.Tensor:
    """Uniform in (0, 1) from uint32 words: ((x >> 9) * 2 + 1) * 2^-24, in float64."""
    return (((bits >> 9) << 1) | 1).to(torch.float64) * 2.0 ** -24


def gumbel_noise(seed: int, offset: int, ids: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel variables of the given token ids for one row."""
    u = uniform_open(philox_draw(seed, offset, TAG_GUMBEL, ids)[..., 0])
    return -torch.log(-torch.log(u))


def _normal_pair(a: torch.Tensor, b: torch.Tensor):
    r = torch.sqrt(-2.0 * torch.log(uniform_open(a)))
    theta = 2.0 * math.pi * uniform_open(b)
    return r * torch.cos(theta), r * torch.sin(theta)


def gaussian_noise(seed: int, offset: int, dim: int) -> torch.Tensor:
    """Standard normal draws for embedding dimensions 0..dim-1 of one row (Box-Muller)."""
    q = torch.arange((dim + 3) // 4, dtype=torch.int64)
    w = philox_draw(seed, offset, TAG_GAUSSIAN, q)
    n0, n1 = _normal_pair(w[:, 0], w[:, 1])
    n2, n3 = _normal_pair(w[:, 2], w[:, 3])
    return torch.stack([n0, n1, n2, n3], dim=-1).reshape(-1)[:dim]


def weight_normal_noise(seed: int, offset: int, ids: torch.Tensor) -> torch.Tensor:
    """Standard normals of the given token ids for one row (WeightGaussian's stream)."""
    w = philox_draw(seed, offset, TAG_WEIGHT_GAUSSIAN, ids)
    return _normal_pair(w[..., 0], w[..., 1])[0]


def log_gamma_sample(shape: torch.Tensor, seed: int, offset: int, ids: torch.Tensor) -> torch.Tensor:
    """log of Gamma(shape, 1) draws keyed by token id (Marsaglia-Tsang; see csrc/common/philox.h)."""
    shape = shape.to(torch.float64)
    boost = shape < 1
    a = torch.where(boost, shape + 1, shape)
    d = a - 1.0 / 3.0
    c = 1.0 / torch.sqrt(9.0 * d)
    log_g = torch.log(a)                      # fallback after GAMMA_MAX_ATTEMPTS rejections
    boost_u = torch.full_like(shape, 0.5)
    done = torch.zeros_like(boost)
    for attempt in range(GAMMA_MAX_ATTEMPTS):
        w = philox_draw(seed, offset, TAG_DIRICHLET, ids, attempt)
        n, _ = _normal_pair(w[..., 0], w[..., 1])
        v = 1 + c * n
        ok = v > 0
        v3 = torch.where(ok, v, torch.ones_like(v)) ** 3
        u = uniform_open(w[..., 2])
        accept = ok & (torch.log(u) < 0.5 * n * n + d - d * v3 + d * torch.log(v3)) & ~done
        log_g = torch.where(accept, torch.log(d * v3), log_g)
        boost_u = torch.where(accept, uniform_open(w[..., 3]), boost_u)
        done = done | accept
        if bool(done.all()):
            break
    return torch.where(boost, log_g + torch.log(boost_u) / shape, log_g)


# --------------------------------------------------------------------------------------------
# soft_embed

def _row_value(x, b: int, cast):
    if isinstance(x, torch.Tensor):
        return cast(x.reshape(-1)[b].item()) if x.dim() > 0 else cast(x.item())
    return cast(x)


def _sort_desc(key: torch.Tensor) -> torch.Tensor:
    """Indices sorting ``key`` descending, equal keys by ascending index."""
    return torch.sort(-key, stable=True).indices


def soft_embed_reference(
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
    ties: str = "exact",
) -> SoftTokens:
    """Float64 reference of :func:`softkernels.soft_embed` (same arguments, no validation).

    Differentiable with respect to ``logits`` and ``embedding`` through the weights (selection
    and noise held fixed), like the kernels. All outputs are float64 (embeds too).
    """
    B, V = logits.shape
    D = embedding.shape[1]
    if isinstance(noise, Gaussian) and noise.relative:
        noise = noise.absolute(embedding)
    E = embedding.to(torch.float64)
    X = logits.to(torch.float64)
    rows_e, rows_ids, rows_w, rows_h, rows_pmax, rows_noise = [], [], [], [], [], []
    for b in range(B):
        T = _row_value(temperature, b, float)
        tk = _row_value(top_k, b, int)
        tp = _row_value(top_p, b, float)
        mp = _row_value(min_p, b, float)
        sd = _row_value(seed, b, int)
        off = _row_value(offset, b, int)

        z = X[b] / T                                   # 1. tempered logits
        p = torch.softmax(z, dim=0)
        pos = p > 0
        entropy = -(p[pos] * torch.log(p[pos])).sum()  # 2. entropy over all V, nats
        max_prob = p.max()
        order = _sort_desc(z.detach())                 # best first, ties by lower id
        ps = p.detach()[order]
        n = int((ps > 0).sum())

        is_hard = hard is not None and bool(hard[b])
        g_prime = None
        slot_noise = isinstance(noise, (Gumbel, TopKDirichlet, WeightGaussian, DirichletGumbel))
        gumbel_like = isinstance(noise, (Gumbel, DirichletGumbel))
        if is_hard:
            first = int(hard_ids[b]) if hard_ids is not None else int(order[0])
            rest = [int(i) for i in order.tolist() if int(i) != first][: k - 1]
            ids = torch.tensor([first] + rest, dtype=torch.int64)
            w = torch.zeros(k, dtype=torch.float64)
            w[0] = 1.0
            emb = E[first]
            if gumbel_like:
                g_prime = torch.full((k,), -math.inf, dtype=torch.float64)
                g_prime[0] = 0.0
            elif slot_noise:
                g_prime = w.clone()   # the draws that give the one-hot weights
        else:
            # 3. top_k
            n1 = min(n, tk) if 0 < tk < V else n
            if ties == "keep_all" and 0 < tk < V:
                # every token tied with the top_k-th, within the candidate pool (1024 tokens)
                cap = min(n, max(tk, k, min(V, 1024)))
                while n1 < cap and ps[n1] == ps[n1 - 1]:
                    n1 += 1
            q = ps[:n1] / ps[:n1].sum()
            # 4. top_p: keep while the mass kept before is < top_p; the first always stays.
            n2 = n1
            if tp < 1.0:
                before = torch.cumsum(q, 0) - q
                stop = (before >= tp).nonzero()
                stop = [int(i) for i in stop.flatten().tolist() if i > 0]
                n2 = stop[0] if stop else n1
                if ties == "keep_all":
                    while n2 < n1 and q[n2] == q[n2 - 1]:
                        n2 += 1
            # 5. min_p: keep p_i >= min_p * max p.
            n3 = n2
            if mp > 0.0:
                n3 = int((q[:n2] >= mp * q[0]).sum())
            nk = min(k, n3)
            surv_ids = order[:n3]
            if isinstance(noise, (Dirichlet, DirichletGumbel)):
                # 6. Dirichlet over the survivors; 7. keep the k largest draws, renormalise.
                ps3 = q[:n3] / q[:n3].sum()
                logg = log_gamma_sample(noise.alpha * ps3, sd, off, surv_ids)
                pick = _sort_desc(logg)[:nk]
                chosen = pick
                w_sel = torch.softmax(logg[pick], dim=0)       # G / sum G over the kept
            else:
                # 7. keep the k largest survivors, renormalise (differentiable in z).
                chosen = torch.arange(nk)
                w_sel = torch.softmax(z[order[:nk]], dim=0)
            if isinstance(noise, TopKDirichlet):
                # 8a. G ~ Gamma(alpha * w) on the nk slots; w = G / sum G; re-sort by G.
                logg = log_gamma_sample(noise.alpha * w_sel.detach(), sd, off, order[chosen])
                re = _sort_desc(logg)
                chosen, logg = chosen[re], logg[re]
                w_sel = torch.softmax(logg, dim=0)
                g_prime = torch.cat([logg.exp(), torch.zeros(k - nk, dtype=torch.float64)])
            elif isinstance(noise, WeightGaussian):
                # 8b. x = w + sigma * n on all k slots (the next pool entries with w = 0);
                #     w = x / sum x; re-sort by w.
                chosen = torch.arange(k)
                w0 = torch.cat([w_sel.detach(), torch.zeros(k - nk, dtype=torch.float64)])
                x = w0 + noise.sigma * weight_normal_noise(sd, off, order[:k])
                wx = x / x.sum()
                re = _sort_desc(wx)
                chosen, w_sel, g_prime = chosen[re], wx[re], x[re]
                nk = k
            elif gumbel_like:
                # 8c. g' = log w + scale * clamp(g); w = softmax(g' / tau); re-sort.
                #     SofT-GRPO's rollout g': log(w + 1e-6) on all k slots.
                lo, hi = noise.bounds
                if isinstance(noise, Gumbel) and noise.gprime == "soft_grpo":
                    chosen = torch.arange(k)
                    w_sel = torch.cat([w_sel.detach(), torch.zeros(k - nk, dtype=torch.float64)])
                    base = torch.log(w_sel + 1e-6)
                    nk = k
                else:
                    base = torch.log(w_sel)
                g = gumbel_noise(sd, off, order[chosen]).clamp(lo, hi)
                gp = base + noise.scale * g
                re = _sort_desc(gp.detach())
                chosen, gp = chosen[re], gp[re]
                w_sel = torch.softmax(gp / noise.tau, dim=0)
                g_prime = torch.cat([gp, torch.full((k - nk,), -math.inf, dtype=torch.float64)])
            taken = set(int(i) for i in chosen.tolist())
            rest = [i for i in range(len(order)) if i not in taken][: k - nk]
            slot_pos = torch.cat([chosen, torch.tensor(rest, dtype=torch.int64)])
            ids = order[slot_pos]
            w = torch.cat([w_sel, torch.zeros(k - nk, dtype=torch.float64)])
            # 9. mixture; 10. Gaussian noise.
            emb = (w[:nk, None] * E[ids[:nk]]).sum(0)
            if isinstance(noise, Gaussian):
                emb = emb + noise.sigma * gaussian_noise(sd, off, D)
        rows_e.append(emb)
        rows_ids.append(ids)
        rows_w.append(w)
        rows_h.append(entropy)
        rows_pmax.append(max_prob)
        rows_noise.append(g_prime)

    f64 = dict(dtype=torch.float64)
    slot_noise_kind = isinstance(noise, (Gumbel, TopKDirichlet, WeightGaussian, DirichletGumbel))
    if B == 0:
        return SoftTokens(torch.zeros(0, D, **f64), torch.zeros(0, k, dtype=torch.int64),
                          torch.zeros(0, k, **f64), torch.zeros(0, **f64), torch.zeros(0, **f64),
                          torch.zeros(0, k, **f64) if slot_noise_kind else None)
    return SoftTokens(
        embeds=torch.stack(rows_e),
        ids=torch.stack(rows_ids),
        weights=torch.stack(rows_w),
        entropy=torch.stack(rows_h),
        max_prob=torch.stack(rows_pmax),
        noise=torch.stack(rows_noise) if slot_noise_kind else None,
    )


# --------------------------------------------------------------------------------------------
# mix_embeddings

def mix_embeddings_reference(embedding, ids, weights, *, noise=None, seed=0, offset=0):
    """Float64 reference of :func:`softkernels.mix_embeddings` (same arguments, no validation).

    ``out[...] = sum_j weights[..., j] * E[ids[..., j]]`` over the slots whose id is a row of E,
    plus ``sigma * N(0, I_D)`` keyed by the row's (seed, offset) for Gaussian noise (relative sigma
    resolved against ``embedding``); other noise kinds add nothing. Differentiable with respect to
    ``embedding`` and ``weights`` by autograd. Result float64 [..., D].
    """
    k, D = ids.shape[-1], embedding.shape[1]
    lead = ids.shape[:-1]
    if isinstance(noise, Gaussian) and noise.relative:
        noise = noise.absolute(embedding)
    E = embedding.to(torch.float64)
    I = ids.to(torch.int64).reshape(-1, k)
    W = weights.to(torch.float64).reshape(-1, k)
    rows = []
    for n in range(I.shape[0]):
        # Zero-weight slots add nothing (the kernels skip them) but, when their id is a row of
        # E, still get d/dw = <grad, E[id]>: the mixture is linear in the weights.
        used = ((I[n] >= 0) & (I[n] < E.shape[0])).nonzero().flatten()
        row = (W[n, used, None] * E[I[n, used]]).sum(0) + 0 * W[n].sum()
        if isinstance(noise, Gaussian):
            row = row + noise.sigma * gaussian_noise(_row_value(seed, n, int),
                                                     _row_value(offset, n, int), D)
        rows.append(row)
    if not rows:
        return torch.zeros(*lead, D, dtype=torch.float64)
    return torch.stack(rows).reshape(*lead, D)


# --------------------------------------------------------------------------------------------
# route_step

def route_step_reference(entropy, max_prob, next_ids, state, *, think_end_id=None,
                         cold_stop_entropy=None, cold_stop_patience=256, router_threshold=None,
                         max_think_tokens=None):
    """Reference of :func:`softkernels.route_step` (a plain loop over rows)."""
    from .routing import RouteState, RouteStep
    B = entropy.shape[0]
    mode = torch.zeros(B, dtype=torch.int8)
    token = next_ids.clone().cpu()
    phase = state.phase.clone().cpu()
    low = state.low_count.clone().cpu()
    steps = state.think_steps.clone().cpu()
    for b in range(B):
        if phase[b] == 0:
            continue                                   # answering: hard, unchanged
        if think_end_id is not None and int(next_ids[b]) == think_end_id:
            phase[b], low[b] = 0, 0                    # the model ended thinking itself
            continue
        forced = max_think_tokens is not None and int(steps[b]) >= max_think_tokens
        if not forced and cold_stop_entropy is not None:
            # counters saturate at INT32_MAX (csrc/common/route.h route_inc)
            low[b] = min(int(low[b]) + 1, 2 ** 31 - 1) if float(entropy[b]) < cold_stop_entropy else 0
            forced = int(low[b]) >= cold_stop_patience
        if forced:
            phase[b], low[b] = 0, 0
            if think_end_id is not None:
                mode[b], token[b] = 2, think_end_id
            continue
        steps[b] = min(int(steps[b]) + 1, 2 ** 31 - 1)
        hard = router_threshold is not None and float(max_prob[b]) < router_threshold
        mode[b] = 0 if hard else 1
    return RouteStep(mode, token, RouteState(phase, low, steps))


# --------------------------------------------------------------------------------------------
# RL log-probabilities (docs/training.md)

def gumbel_logprob_reference(logits, ids, g_prime, tau, temperature=1.0, clamp=(-1.5, 3.0),
                             hard=None, *, scale=1.0, min_weight=math.exp(-3.0)):
    """Float64 reference of :func:`softkernels.gumbel_logprob` (same arguments, no validation).

    A plain loop over rows, differentiable w.r.t. ``logits`` and ``g_prime`` by autograd. Invalid
    rows give NaN or raise (the reference does not validate).
    """
    del tau  # does not enter the formula (docs/training.md)
    V, k = logits.shape[-1], ids.shape[-1]
    batch = logits.shape[:-1]
    X = logits.to(torch.float64).reshape(-1, V) / temperature
    I = ids.to(torch.int64).reshape(-1, k)
    G = g_prime.to(torch.float64).reshape(-1, k)
    H = hard.reshape(-1) if hard is not None else None
    lo, hi = clamp if clamp is not None else (-math.inf, math.inf)
    log_mw = math.log(min_weight) if min_weight > 0 else -math.inf
    rows = []
    for n in range(X.shape[0]):
        z = X[n]
        if H is not None and bool(H[n]):
            rows.append(torch.log_softmax(z, dim=0)[I[n, 0]])
            continue
        incl = torch.isfinite(G[n]).nonzero().flatten()        # slots that carried weight
        zs = z[I[n, incl]]
        log_p = zs - torch.logsumexp(zs, dim=0)                 # p~ renormalised over them
        ghat = ((G[n, incl] - log_p) / scale).clamp(lo, hi)      # the recovered Gumbel draw
        f = -ghat - torch.exp(-ghat)                             # log Gumbel(0, 1) density
        counted = (log_p > log_mw).nonzero().flatten()          # p~ > min_weight
        if counted.numel() == 0:
            counted = torch.argmax(zs.detach()).reshape(1)       # most probable (first) slot
        rows.append(f[counted].mean())
    if not rows:
        return torch.zeros(batch, dtype=torch.float64)
    return torch.stack(rows).reshape(batch)


def gaussian_logprob_reference(x, mean, sigma):
    """Float64 reference of :func:`softkernels.gaussian_logprob`:
    -||x - mean||^2 / (2 sigma^2) - (D / 2) log(2 pi sigma^2) over the last dimension."""
    x64, m64 = x.to(torch.float64), mean.to(torch.float64)
    D = x.shape[-1]
    q = ((x64 - m64) ** 2).sum(-1)
    if isinstance(sigma, torch.Tensor):
        var = sigma.to(torch.float64) ** 2
        return -q / (2 * var) - 0.5 * D * torch.log(2 * math.pi * var)
    var = float(sigma) ** 2
    return -q / (2 * var) - 0.5 * D * math.log(2 * math.pi * var)


# --------------------------------------------------------------------------------------------
# Selective iteration (Think-at-Hard, docs/iterate_hard.md)

def select_rows_reference(scores, threshold):
    """Reference of :func:`softkernels.select_rows`: (idx int64 [B], count int64 [1]) on the CPU.

    Hard rows (``float(score) < threshold``; NaN is not hard) in ascending order, then the easy
    rows in ascending order."""
    s = scores.detach().cpu().to(torch.float64).tolist()
    hard = [b for b, v in enumerate(s) if v < threshold]
    easy = [b for b, v in enumerate(s) if not v < threshold]
    return (torch.tensor(hard + easy, dtype=torch.int64),
            torch.tensor([len(hard)], dtype=torch.int64))


def iteration_embeds_reference(logits, embedding, top_m=100):
    """Float64 reference of :func:`softkernels.iteration_embeds` over every row:
    ``sum_i softmax(top-M logits)_i E[i]`` with ties broken by the lower token id.
    Returns float64 [B, D]."""
    x = logits.detach().to(torch.float64).cpu()
    E = embedding.detach().to(torch.float64).cpu()
    M = min(top_m, x.shape[1])
    out = []
    for b in range(x.shape[0]):
        order = _sort_desc(x[b])[:M]
        w = torch.softmax(x[b, order], dim=0)
        out.append((w[:, None] * E[order]).sum(0))
    if not out:
        return torch.zeros(0, E.shape[1], dtype=torch.float64)
    return torch.stack(out)


def add_rows_reference(logits, src, idx, count):
    """Reference of :func:`softkernels.add_rows_` (out of place): a copy of ``logits`` with
    ``src[j]`` added to row ``idx[j]`` for ``j < clamp(count, 0, min(len(idx), len(src)))``, in j
    order, each sum formed in float64 and rounded to the logits' dtype; out-of-range rows skipped."""
    out = logits.detach().cpu().clone()
    n = int(count.reshape(-1)[0]) if isinstance(count, torch.Tensor) else int(count)
    n = max(0, min(n, idx.shape[0], src.shape[0]))
    B = out.shape[0]
    for j in range(n):
        r = int(idx[j])
        if 0 <= r < B:
            out[r] = (out[r].to(torch.float64) + src[j].detach().cpu().to(torch.float64)).to(out.dtype)
    return out


# --------------------------------------------------------------------------------------------
# topk_dirichlet_logprob / weight_gaussian_logprob (SofT-GRPO's -dir and -gau log-probs)

def _slot_rows(logits, ids, draws, hard, temperature):
    """Per row: (z over V, p~ at the ids renormalised over them, the row's draws, is_hard)."""
    V = logits.shape[-1]
    k = ids.shape[-1]
    X = logits.to(torch.float64).reshape(-1, V)
    I = ids.reshape(-1, k).to(torch.int64)
    G = draws.to(torch.float64).reshape(-1, k)
    H = hard.reshape(-1) if hard is not None else None
    for r in range(X.shape[0]):
        z = X[r] / temperature
        zs = z[I[r]]
        p = torch.exp(zs - torch.logsumexp(zs, 0))
        yield z, p, G[r], I[r], H is not None and bool(H[r])


def _mean_over_mask(lp, p, min_weight):
    pd, lpd = p.detach(), lp.detach()   # the mask is held fixed
    keep = [j for j in range(len(lp)) if float(pd[j]) > min_weight and not math.isnan(float(lpd[j]))]
    if not keep:
        keep = [int(torch.argmax(torch.where(torch.isnan(lp), torch.zeros_like(p), p)))]
    return torch.stack([lp[j] for j in keep]).mean()


def topk_dirichlet_logprob_reference(logits, ids, draws, temperature=1.0, hard=None, *,
                                     alpha=1.0, clamp=(-5.0, 3.0), min_weight=0.05):
    """Float64 reference of :func:`softkernels.topk_dirichlet_logprob` (no validation).

    Per slot: clamp((c - 1) log G - G - lgamma(c), lo, hi) with c = alpha * p~; G = 0 with c < 1
    scores +inf before the clamp (no gradient), c = 0 scores NaN and leaves the mean."""
    lo, hi = clamp if clamp is not None else (-math.inf, math.inf)
    out = []
    for z, p, g, i, is_hard in _slot_rows(logits, ids, draws, hard, temperature):
        if is_hard:
            out.append(torch.log_softmax(z, 0)[i[0]])
            continue
        lps = []
        for j in range(len(p)):
            c = alpha * p[j]
            x = float(g[j])
            if x > 0 and float(c.detach()) > 0:
                lp = (c - 1) * math.log(x) - x - torch.lgamma(c)
            else:   # their xlogy at G = 0: +inf (c < 1), 0 (c = 1), -inf (c > 1); NaN at c = 0
                cf = float(c.detach())
                v = math.nan if cf == 0 else (math.inf if cf < 1 else (0.0 if cf == 1 else -math.inf))
                lp = torch.tensor(v, dtype=torch.float64)
            lps.append(lp.clamp(lo, hi))
        out.append(_mean_over_mask(torch.stack(lps), p, min_weight))
    shape = tuple(logits.shape[:-1])
    return torch.stack(out).reshape(shape) if out else torch.zeros(shape, dtype=torch.float64)


def weight_gaussian_logprob_reference(logits, ids, draws, temperature=1.0, hard=None, *,
                                      sigma=0.05, radius=0.15, min_weight=0.05):
    """Float64 reference of :func:`softkernels.weight_gaussian_logprob` (no validation)."""
    out = []
    for z, p, x, i, is_hard in _slot_rows(logits, ids, draws, hard, temperature):
        if is_hard:
            out.append(torch.log_softmax(z, 0)[i[0]])
            continue
        xc = torch.minimum(torch.maximum(x, p - radius), p + radius)
        lp = -((xc - p) ** 2) / (2 * sigma ** 2) - math.log(sigma * math.sqrt(2 * math.pi))
        out.append(_mean_over_mask(lp, p, min_weight))
    shape = tuple(logits.shape[:-1])
    return torch.stack(out).reshape(shape) if out else torch.zeros(shape, dtype=torch.float64)
