"""softkernels' SofT-GRPO / RST noise kinds against independent ports of the papers' code
(tests/ports/), fed the very random draws softkernels used. Prints the measured differences
(pytest -s) that docs/fidelity.md reports."""

import math

import torch

import softkernels as sk
from softkernels import reference as R
from ports import rst_dirichlet_gumbel as rst
from ports import soft_grpo as sg

B, V, K, TOPK, SEED = 400, 200, 8, 5, 11


def _logits():
    torch.manual_seed(0)
    return torch.randn(B, V) * 2.5


def _draws(fn, ids):
    """Per-row draws of softkernels' Philox stream at the given ids ([B, k])."""
    return torch.stack([fn(SEED, 0, ids[b]) for b in range(ids.shape[0])])


def _plain(logits, k=K):
    out = sk.soft_embed(logits, torch.zeros(V, 1), k=k, top_k=TOPK, seed=SEED)
    return out.weights.double(), out.ids


def _report(name, w_got, w_want, ids_got, ids_want, extra=""):
    support = int((ids_got != ids_want).any(-1).sum())
    dw = float((w_got.double() - w_want.double()).abs().max())
    print(f"\n{name}: N={w_got.shape[0]} rows, max |w diff| {dw:.2e}, rows with different ids "
          f"{support}{extra}")
    return dw, support


def test_topk_dirichlet_vs_port():
    logits = _logits()
    w0, ids0 = _plain(logits)
    noise = sk.TopKDirichlet(alpha=1.0)
    out = sk.soft_embed(logits, torch.zeros(V, 1), k=K, top_k=TOPK, noise=noise, seed=SEED)
    # Their rollout from the same filtered top-k and the same Gamma(alpha * w) draws.
    logg = torch.stack([R.log_gamma_sample(w0[b], SEED, 0, ids0[b]) for b in range(B)])
    G = torch.where(w0 > 0, logg.exp(), torch.zeros_like(w0))
    pw, pids, pG, plogp = sg.rollout_dirichlet(w0, ids0, G)
    dw, sup = _report("TopKDirichlet vs SofT-GRPO rollout", out.weights, pw, out.ids, pids)
    assert sup == 0 and dw < 1e-6
    torch.testing.assert_close(out.noise.double(), pG, rtol=1e-5, atol=1e-30)
    # Their trainer's log-prob on moved logits vs topk_dirichlet_logprob.
    new = logits + 0.5 * torch.randn_like(logits)
    mine = sk.topk_dirichlet_logprob(new.double(), out.ids, out.noise.double())
    theirs = sg.train_logprob_dirichlet(new.double(), out.ids, out.noise.double())
    d = float((mine - theirs).abs().max())
    print(f"topk_dirichlet_logprob vs their trainer: N={B}, max |diff| {d:.2e}")
    assert d < 1e-9
    # Their sampler's own log-prob (not stored; the trainer recomputes) scores the unweighted
    # slots with Gamma(0).log_prob(0) = NaN, times the mask 0: NaN whenever k > top_k.
    print(f"their sampler's Dirichlet log-prob NaN in {int(torch.isnan(plogp).sum())}/{B} rows "
          f"(k = {K} > top_k = {TOPK})")
    assert bool(torch.isnan(plogp).all()) and bool(torch.isfinite(mine).all())


def test_weight_gaussian_vs_port():
    logits = _logits()
    w0, ids0 = _plain(logits)
    noise = sk.WeightGaussian(0.05)
    out = sk.soft_embed(logits, torch.zeros(V, 1), k=K, top_k=TOPK, noise=noise, seed=SEED)
    n = _draws(R.weight_normal_noise, ids0)
    pw, pids, px, plogp = sg.rollout_gaussian(w0, ids0, n)
    dw, sup = _report("WeightGaussian vs SofT-GRPO rollout", out.weights, pw, out.ids, pids,
                      f", negative weights in {int((out.weights < 0).any(-1).sum())} rows")
    assert sup == 0 and dw < 1e-5
    new = logits + 0.5 * torch.randn_like(logits)
    mine = sk.weight_gaussian_logprob(new.double(), out.ids, out.noise.double())
    theirs = sg.train_logprob_normal(new.double(), out.ids, out.noise.double())
    d = float((mine - theirs).abs().max())
    print(f"weight_gaussian_logprob vs their trainer: N={B}, max |diff| {d:.2e}")
    assert d < 1e-9
    # Their trainer renormalises the unfiltered softmax over the k slot tokens, their sampler
    # uses the top-k-filtered weights (0 on the k - top_k extra slots): with k > top_k the two
    # differ even at the rollout's own logits.
    at_rollout = sk.weight_gaussian_logprob(logits.double(), out.ids, out.noise.double())
    gap = float((at_rollout - plogp.double()).abs().max())
    print(f"their trainer vs their sampler at the rollout's logits (k = {K} > top_k = {TOPK}): "
          f"max |diff| {gap:.3f}")
    assert gap > 1e-3


def test_gumbel_soft_grpo_vs_port():
    logits = _logits()
    w0, ids0 = _plain(logits)
    for tau, scale in ((1.0, 1.0), (0.5, 0.5)):
        noise = sk.Gumbel(tau=tau, scale=scale, gprime="soft_grpo")
        out = sk.soft_embed(logits, torch.zeros(V, 1), k=K, top_k=TOPK, noise=noise, seed=SEED)
        g = _draws(R.gumbel_noise, ids0)
        pw, pids, pgp = sg.rollout_gumbel(w0, ids0, g, scale, tau)
        dw, sup = _report(f"Gumbel(gprime='soft_grpo', tau={tau}, scale={scale}) vs SofT-GRPO",
                          out.weights, pw, out.ids, pids)
        assert sup == 0 and dw < 1e-5
        torch.testing.assert_close(out.noise.double(), pgp.double(), rtol=1e-5, atol=1e-5)
        # softkernels' default g' (log w, -inf on unweighted slots) fed to their trainer:
        dflt = sk.soft_embed(logits, torch.zeros(V, 1), k=K, top_k=TOPK,
                             noise=sk.Gumbel(tau=tau, scale=scale), seed=SEED)
        theirs_on_compat = sg.train_logprob_gumbel(logits.double(), out.ids, out.noise.double())
        theirs_on_default = sg.train_logprob_gumbel(logits.double(), dflt.ids,
                                                    dflt.noise.double())
        fin = torch.isfinite(theirs_on_default)
        print(f"their trainer's log pi at rollout: soft_grpo g' finite in "
              f"{int(torch.isfinite(theirs_on_compat).sum())}/{B} rows; softkernels g' finite in "
              f"{int(fin.sum())}/{B} rows, max |diff| where finite "
              f"{float((theirs_on_compat[fin] - theirs_on_default[fin]).abs().max()):.3f}")
        assert bool(torch.isfinite(theirs_on_compat).all())


def test_dirichlet_gumbel_vs_rst_port():
    logits = _logits()
    noise = sk.DirichletGumbel(alpha=4.0, tau=0.5)
    out = sk.soft_embed(logits, torch.zeros(V, 1), k=K, top_k=TOPK, noise=noise, seed=SEED)
    all_ids = torch.arange(V)
    gam = torch.zeros(B, V, dtype=torch.float64)
    gum = torch.zeros(B, V, dtype=torch.float64)
    for b in range(B):
        z = logits[b].double()
        top = torch.topk(z, TOPK).indices
        p = torch.softmax(z[top], 0)
        gam[b, top] = R.log_gamma_sample(4.0 * p, SEED, 0, top).exp()
        gum[b] = R.gumbel_noise(SEED, 0, all_ids)
    pw, pids = rst.rollout_dirichlet_gumbel(logits.double(), 1.0, TOPK, K, gam, gum, 0.5)
    # Their top-k of max_topk = 8 > top_k = 5 puts 3 zero-probability slots in; log(0) = -inf
    # keeps their weight 0, so the first 5 slots carry the mixture in both.
    dw, sup = _report("DirichletGumbel vs RST rollout (weighted slots)", out.weights[:, :TOPK],
                      pw[:, :TOPK], out.ids[:, :TOPK], pids[:, :TOPK])
    assert dw < 1e-5 and sup <= B // 100


def test_default_gprime_through_their_trainer():
    """A rollout with softkernels' default g' (log w, filtered slots -inf) scored by their trainer
    (port of TRAIN:140-164) against the same rollout with gprime="soft_grpo" (log(w + 1e-6),
    filtered slots finite): their trainer recovers g against the unfiltered training p and clamps
    it to [-1.5, 3], so a filtered slot scores the same in both conventions. Measured with top_p
    cutting slots that carry p > 0.05 of the k (the issue's up-to-0.98 was not reproduced)."""
    torch.manual_seed(3)
    logits = torch.randn(2000, V) * 3
    worst = {}
    for top_p in (0.95, 0.6):
        lp, filtered = {}, 0
        for gp in ("softkernels", "soft_grpo"):
            nz = sk.Gumbel(tau=0.1, scale=1.0, clamp=(-1.5, 3.0), gprime=gp)
            out = sk.soft_embed(logits, torch.zeros(V, 1), k=5, top_k=5, top_p=top_p, noise=nz,
                                seed=SEED, ties="keep_all")
            lp[gp] = sg.train_logprob_gumbel(logits, out.ids, out.noise)
            if gp == "softkernels":
                cut = ~torch.isfinite(out.noise)
                p = torch.softmax(logits, -1).gather(1, out.ids)
                filtered = int((cut & (p / p.sum(-1, keepdim=True) > 0.05)).sum())
        # With top_p 0.6 some filtered slots pass their trainer's p > 0.05 mask (0.95 cuts
        # only slots below it, the preset's case).
        assert filtered > 0 or top_p > 0.9
        worst[top_p] = float((lp["softkernels"] - lp["soft_grpo"]).abs().max())
        assert worst[top_p] < 1e-4, worst
    print(f"\ndefault g' vs soft_grpo g' through their trainer: max |d log pi| {worst}, "
          f"filtered slots inside their mask at top_p 0.6: {filtered}")
