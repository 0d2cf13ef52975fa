"""topk_dirichlet_logprob / weight_gaussian_logprob: the slot_logprob kernels against the ATen
composition they replaced (kept here, and only here, as the baseline).

Times forward and forward + backward (w.r.t. the logits) of a [B, T, V] batch with k slots per
row, some rows hard, at the default (validate=True) and with validate=False. Each variant runs
`--repeats` times after a warm-up, interleaved; the table shows medians (ms) and the ratio
baseline / kernel. Prints only (it does not write benchmarks/RESULTS.md).

    python benchmarks/bench_slot_logprob.py [--B 8] [--T 256] [--V 32000] [--k 8]
                                            [--repeats 7] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

import softkernels as sk


# --------------------------------------------------------------------------------------------
# The ATen composition of softkernels/logprob.py before the kernels (same checks, same numbers).

def _old_check(logits, ids, draws, hard, kind):
    V = logits.shape[-1]
    soft = (~hard[..., None] if hard is not None else torch.ones_like(ids, dtype=torch.bool))
    read = soft.expand(ids.shape).clone()
    read[..., 0] = True
    if (((ids < 0) | (ids >= V)) & read).reshape(-1).nonzero().numel():
        raise ValueError("ids")
    if bool((~torch.isfinite(draws) & soft).any()):
        raise ValueError("draws")
    if kind == "dir" and (draws < 0).reshape(-1).nonzero().numel():
        raise ValueError("draws")


def _slot_probs(logits, ids, temperature):
    z = logits.to(torch.float64 if logits.dtype == torch.float64 else torch.float32) / temperature
    zs = torch.gather(z, -1, ids.clamp(0, z.shape[-1] - 1))
    return z, torch.softmax(zs, dim=-1)


def _masked_mean(lp, p, min_weight):
    mask = p > min_weight
    top = torch.nn.functional.one_hot(p.argmax(-1), p.shape[-1]).to(torch.bool)
    mask = torch.where(mask.any(-1, keepdim=True), mask, top)
    return torch.where(mask, lp, torch.zeros_like(lp)).sum(-1) / mask.sum(-1).to(lp.dtype)


def _with_hard(out, z, ids, hard):
    if hard is None:
        return out
    lsm = torch.log_softmax(z, dim=-1)
    first = torch.gather(lsm, -1, ids[..., :1].clamp(0, z.shape[-1] - 1))[..., 0]
    return torch.where(hard, first, out)


def old_topk_dirichlet(logits, ids, draws, temperature=1.0, hard=None, *, alpha=1.0,
                       clamp=(-5.0, 3.0), min_weight=0.05, validate=True):
    if validate:
        _old_check(logits, ids, draws, hard, "dir")
    lo, hi = clamp
    z, p = _slot_probs(logits, ids, temperature)
    x = draws.to(p.dtype)
    c = alpha * p
    valid = (x > 0) & (c > 0)
    xs = torch.where(valid, x, torch.ones_like(x))
    cs = torch.where(valid, c, torch.ones_like(c))
    lp = torch.xlogy(cs - 1, xs) - xs - torch.lgamma(cs)
    with torch.no_grad():
        edge = torch.xlogy(c - 1, x) - x - torch.lgamma(c)
    lp = torch.where(valid, lp, edge).clamp(lo, hi)
    keep = ~torch.isnan(lp)
    out = _masked_mean(torch.where(keep, lp, torch.zeros_like(lp)),
                       torch.where(keep, p, torch.zeros_like(p)), min_weight)
    return _with_hard(out, z, ids, hard)


def old_weight_gaussian(logits, ids, draws, temperature=1.0, hard=None, *, sigma=0.05,
                        radius=0.15, min_weight=0.05, validate=True):
    if validate:
        _old_check(logits, ids, draws, hard, "gau")
    z, p = _slot_probs(logits, ids, temperature)
    x = draws.to(p.dtype)
    xc = torch.minimum(torch.maximum(x, p - radius), p + radius)
    lp = -((xc - p) ** 2) / (2 * sigma * sigma) - math.log(sigma) - 0.5 * math.log(2 * math.pi)
    return _with_hard(_masked_mean(lp, p, min_weight), z, ids, hard)


# --------------------------------------------------------------------------------------------

def _inputs(B, T, V, k, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 2
    ids = torch.stack([torch.randperm(V, generator=g)[:k] for _ in range(B * T)]).reshape(B, T, k)
    zs = torch.gather(logits, -1, ids)
    p = torch.softmax(zs, -1)
    gamma = torch.distributions.Gamma(p.clamp_min(1e-6), torch.ones_like(p)).sample()
    gauss = p + 0.05 * torch.randn(p.shape, generator=g)
    hard = torch.rand(B, T, generator=g) < 0.25
    return [t.to(device) for t in (logits, ids, gamma, gauss, hard)]


def _once(fn, device):
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--B", type=int, default=8)
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--V", type=int, default=32000)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    logits, ids, gamma, gauss, hard = _inputs(a.B, a.T, a.V, a.k, a.device)
    print(f"B={a.B} T={a.T} V={a.V} k={a.k} device={a.device} threads={torch.get_num_threads()} "
          f"hard rows {float(hard.float().mean()):.0%}, medians of {a.repeats} runs (ms)")
    print(f"{'case':44s} {'ATen':>9s} {'kernel':>9s} {'ratio':>7s}")
    variants = [("TopKDirichlet", sk.topk_dirichlet_logprob, old_topk_dirichlet, gamma),
                ("WeightGaussian", sk.weight_gaussian_logprob, old_weight_gaussian, gauss)]
    for name, new, old, draws in variants:
        for h_name, h in (("no hard rows", None), ("25% hard rows", hard)):
            # Same numbers first (a benchmark of a wrong kernel is worthless): float64, batch 0.
            h0 = h[:1] if h is not None else None
            want = old(logits[:1].double(), ids[:1], draws[:1].double(), 0.8, h0)
            got = new(logits[:1].double(), ids[:1], draws[:1].double(), 0.8, h0)
            assert torch.allclose(got, want, atol=1e-9, rtol=1e-9), name
            for validate in (True, False):
                for backward in (False, True):
                    x = logits.detach().requires_grad_(backward)

                    def run(f):
                        lp = f(x, ids, draws, 0.8, h, validate=validate)
                        if backward:
                            lp.sum().backward()
                            x.grad = None
                    _once(lambda: run(old), a.device)  # warm-up
                    _once(lambda: run(new), a.device)
                    t_old, t_new = [], []
                    for _ in range(a.repeats):  # interleaved
                        t_old.append(_once(lambda: run(old), a.device))
                        t_new.append(_once(lambda: run(new), a.device))
                    mo, mn = statistics.median(t_old) * 1e3, statistics.median(t_new) * 1e3
                    case = (f"{name}, {h_name}, validate={validate}, "
                            f"{'fwd+bwd' if backward else 'fwd'}")
                    print(f"{case:44s} {mo:9.2f} {mn:9.2f} {mo / mn:6.1f}x", flush=True)


if __name__ == "__main__":
    main()
