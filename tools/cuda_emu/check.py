"""The CUDA kernels' device code, run on the CPU by the emulator, against the CPU kernels.
soft_embed forward: the checks of tests/test_cuda.py (same ids, status flags, weights /
statistics / embeds within fp32 rounding, NaN-poisoned bad rows, bitwise determinism across
thread and block schedules, bitwise batch invariance). The other ops (their csrc/cuda launchers
as built for the GPU): soft_embed_backward, the log-probs and their backward, route_step,
mix_embeddings, select_rows / add_rows_ on random inputs, to the CPU kernels' rounding or
bitwise. Usage: python tools/cuda_emu/check.py [--quick] [-k NAME]"""
import argparse
import math
import pathlib
import sys
import time

import torch

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent / "tests"))

import softkernels as sk  # noqa: E402
from _compare import _close  # noqa: E402
from skemu import emulated, load  # noqa: E402

NOISES = {"none": None, "gumbel": sk.Gumbel(tau=0.5), "dirichlet": sk.Dirichlet(4.0),
          "gaussian": sk.Gaussian(0.3, relative=False)}
ST = dict(temperature=0.6, top_k=30, top_p=0.95, min_p=0.001)


def emu_call(logits, emb, sched=1, random_blocks=True, **kw):
    with emulated(seed=sched, random_blocks=random_blocks):
        return sk.soft_embed(logits, emb, **kw)


def assert_same(g, c, emb, what):
    stats = c.weights.dtype
    if not torch.equal(g.ids, c.ids):
        bad = (g.ids != c.ids).any(1).nonzero().flatten().tolist()
        for b in bad:
            gi, go = g.ids[b].sort()
            ci, co = c.ids[b].sort()
            if not (torch.equal(gi, ci) and torch.allclose(
                    g.weights[b][go].double(), c.weights[b][co].double(), rtol=1e-4, atol=1e-6)):
                raise AssertionError(f"{what}: ids differ in rows {bad[:8]}; row {b}: emu "
                                     f"{g.ids[b].tolist()} w {g.weights[b].tolist()} / cpu "
                                     f"{c.ids[b].tolist()} w {c.weights[b].tolist()}")
        keep = torch.ones(g.ids.shape[0], dtype=torch.bool)
        keep[bad] = False
        assert len(bad) <= max(1, g.ids.shape[0] // 50), f"{what}: {len(bad)} rows reordered"
        g = type(g)(*(x[keep] if x is not None else None for x in g))
        c = type(c)(*(x[keep] if x is not None else None for x in c))
    _close(f"{what} weights", g.weights, c.weights, stats)
    _close(f"{what} entropy", g.entropy, c.entropy, stats)
    _close(f"{what} max_prob", g.max_prob, c.max_prob, stats)
    scale = float(emb.detach().abs().max()) if emb.numel() else 0.0
    etol = stats if (emb.dtype == torch.float64 and stats != torch.float64) else emb.dtype
    _close(f"{what} embeds", g.embeds, c.embeds, etol, scale=scale)
    assert (g.noise is None) == (c.noise is None)
    if c.noise is not None:
        _close(f"{what} noise", g.noise, c.noise, stats)


def bitwise(a, b, what):
    for name, x, y in zip(a._fields, a, b):
        if x is None:
            assert y is None
            continue
        assert torch.equal(x, y) or (x.is_floating_point() and torch.equal(
            x.view(torch.int8 if x.element_size() == 1 else
                   {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]),
            y.view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[
                y.element_size()]))), f"{what}: {name} differs bitwise"


def both(logits, emb, what, determinism=False, **kw):
    g = emu_call(logits, emb, sched=1, **kw)
    c = sk.soft_embed(logits, emb, **kw)
    assert_same(g, c, emb, what)
    if determinism:
        g2 = emu_call(logits, emb, sched=7, **kw)
        bitwise(g, g2, what + " (another schedule)")
    return g


CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


@case
def shapes(quick):
    shapes = [(1, 151936, 64, 10), (3, 40000, 48, 30), (5, 8193, 24, 30), (2, 16389, 16, 10),
              (5, 1031, 40, 64), (4, 8192, 8, 1), (2, 300, 8, 5)]
    if quick:
        shapes = shapes[1:4]
    dt = [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32),
          (torch.float16, torch.bfloat16), (torch.bfloat16, torch.float32)]
    for i, (B, V, D, k) in enumerate(shapes):
        for j, noise in enumerate(NOISES):
            ld, ed = dt[(i + j) % 4]
            torch.manual_seed(100 * i + j)
            logits = (torch.randn(B, V) * 3).to(ld)
            emb = torch.randn(V + 3, D).to(ed)
            kw = dict(k=k, noise=NOISES[noise], seed=torch.randint(0, 2 ** 40, (B,)), offset=7,
                      **ST)
            both(logits, emb, f"B{B} V{V} D{D} k{k} {noise} {ld}/{ed}", determinism=(j == 0),
                 **kw)


@case
def dtypes(quick):
    lds = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    for ld in lds:
        for ed in (lds if not quick else lds[:2]):
            torch.manual_seed(3)
            logits = (torch.randn(3, 20000) * 3).to(ld)
            emb = torch.randn(20003, 24).to(ed)
            for noise in (None, NOISES["gaussian"]):
                both(logits, emb, f"{ld}/{ed} {noise}", k=12, noise=noise, seed=5, **ST)


@case
def pools_and_filters(quick):
    cases = [dict(k=64, top_k=1024, top_p=0.9), dict(k=10, top_k=300, min_p=0.01),
             dict(k=30, top_k=1024, noise="dirichlet"), dict(k=16, top_p=0.5),
             dict(k=8, top_k=5), dict(k=12, min_p=0.999), dict(k=1024, temperature=2.0),
             dict(k=40, top_k=0), dict(k=3, top_k=3, top_p=0.3),
             dict(k=30, top_k=30, noise="gumbel"), dict(k=33, top_k=50, noise="gumbel"),
             dict(k=10, top_p=0.999, min_p=0.0001)]
    if quick:
        cases = cases[:2] + cases[3:6]
    torch.manual_seed(11)
    logits = (torch.randn(2, 151936 if not quick else 40000) * 1.5).to(torch.bfloat16)
    emb = torch.randn(logits.shape[1], 16)
    for cs in cases:
        cs = dict(cs)
        noise = NOISES[cs.pop("noise", "none")]
        both(logits, emb, str(cs), noise=noise, seed=11, offset=3, **cs)


@case
def merge_paths(quick):
    # staged lists but too many heads (P = 200, S = 10): the last-entry threshold, bitonic merge
    torch.manual_seed(12)
    logits = (torch.randn(2, 80000) * 2).to(torch.bfloat16)
    emb = torch.randn(80000, 8)
    both(logits, emb, "top_k 200", k=10, top_k=200, temperature=0.8)
    both(logits, emb, "top_k 100 gumbel", k=20, top_k=100, noise=NOISES["gumbel"], seed=4)


@case
def ties_and_masks(quick):
    B, V = 3, 40000
    for kind in ["integer_ties", "all_equal", "mostly_masked", "few_finite", "negative_zero"]:
        torch.manual_seed(5)
        if kind == "integer_ties":
            logits = torch.randint(-3, 4, (B, V)).float()
        elif kind == "all_equal":
            logits = torch.zeros(B, V)
        elif kind == "mostly_masked":
            logits = torch.randn(B, V).masked_fill(torch.rand(B, V) < 0.999, -math.inf)
            logits[:, 123] = 2.0
        elif kind == "few_finite":
            logits = torch.full((B, V), -math.inf)
            logits[:, 39999] = 0.5
            logits[:, 7] = 0.5
        else:
            logits = torch.randn(B, V) * 0.0
            logits[:, ::3] = -0.0
        emb = torch.randn(V, 8)
        kws = [dict(k=10, **ST), dict(k=40, top_k=0), dict(k=5, noise=sk.Gumbel())]
        for kw in (kws if not quick else kws[:2]):
            both(logits, emb, f"{kind} {kw}", **kw)


@case
def status_flags(quick):
    B, V = 8, 40000
    torch.manual_seed(1)
    logits = torch.randn(B, V)
    logits[1, 35000] = math.nan
    logits[2, 5] = math.inf
    logits[3] = -math.inf
    emb = torch.randn(V, 16)
    temperature = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    top_p = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 7.0, 1.0, 1.0], dtype=torch.float64)
    hard = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    hard_ids = torch.tensor([0, 0, 0, 0, 0, 0, 10 ** 6, 17])
    for noise in (None, sk.Gumbel()):
        outs = []
        for emu in (True, False):
            args = (logits, emb, 4, 1.0, 0, 1.0, 0.0, 0, 0, temperature, None, top_p, None, None,
                    None, hard, hard_ids, 1 if noise else 0, 0.5, 1.0, -1.5, 3.0, 0.0, 0.0, 4)
            if emu:
                with emulated(seed=2):
                    outs.append(torch.ops.softkernels.soft_embed(*args))
            else:
                outs.append(torch.ops.softkernels.soft_embed(*args))
        g, c = outs
        assert torch.equal(g[6], c[6]), (g[6], c[6])
        assert c[6].tolist() == [0, 1, 1, 2, 4, 4, 8, 0]
        bad = c[6] != 0
        for i in (0, 2, 3, 4):
            assert torch.isnan(g[i][bad]).all(), i
        assert torch.equal(g[1], c[1])
        assert torch.equal(g[0][7], emb[17])
        _close("weights", g[2][~bad], c[2][~bad], torch.float32)


@case
def batch_invariance(quick):
    B, V, D = 6, 40000 if quick else 151936, 32
    torch.manual_seed(4)
    logits = (torch.randn(B, V) * 2).to(torch.bfloat16)
    emb = torch.randn(V, D).to(torch.bfloat16)
    seeds = torch.randint(0, 2 ** 31, (B,))
    offsets = torch.randint(0, 1000, (B,))
    for noise in (["none", "gumbel"] if quick else list(NOISES)):
        kw = dict(k=10, noise=NOISES[noise], **ST)
        if noise == "dirichlet":
            kw["top_k"] = 40
        a = emu_call(logits, emb, sched=3, **dict(kw, seed=seeds, offset=offsets))
        for r in (0, B - 1):
            one = emu_call(logits[r:r + 1], emb, sched=9,
                           **dict(kw, seed=int(seeds[r]), offset=int(offsets[r])))
            for x, y in zip(one, a):
                assert (x is None and y is None) or torch.equal(x[0], y[r]), noise
        sub = torch.tensor([4, 1])
        part = emu_call(logits[sub], emb, sched=5, **dict(kw, seed=seeds[sub], offset=offsets[sub]))
        for x, y in zip(part, a):
            assert (x is None and y is None) or torch.equal(x, y[sub]), noise


@case
def k1_bitwise(quick):
    for edtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        torch.manual_seed(2)
        logits = torch.randn(3, 40000)
        emb = torch.randn(40000, 24).to(edtype)
        out = emu_call(logits, emb, k=1, **ST)
        argmax = logits.argmax(-1)
        assert torch.equal(out.ids[:, 0], argmax)
        assert torch.equal(out.embeds, emb[argmax])


@case
def misaligned(quick):
    B, V, D = 2, 20000, 16
    torch.manual_seed(6)
    flat = torch.randn(B * V + 1)
    shifted = flat[1:].view(B, V)
    packed = shifted.clone()
    eflat = torch.randn((V + 1) * D + 1).to(torch.bfloat16)
    emb_shifted = eflat[1:].view(V + 1, D)
    emb_packed = emb_shifted.clone()
    a = emu_call(shifted, emb_shifted, k=10, **ST)
    b = emu_call(packed, emb_packed, k=10, **ST)
    bitwise(a, b, "misaligned")
    emb_odd = torch.randn(V, 37)
    both(packed, emb_odd, "odd D", k=10, noise=NOISES["gaussian"], seed=2, **ST)



@case
def soft_grpo_noise_and_ties(quick):
    """Issue 12's noise kinds (finish_row on one thread) and ties="keep_all", with multi-slice
    rows, per-row parameters and hard rows."""
    torch.manual_seed(12)
    noises = [sk.TopKDirichlet(), sk.WeightGaussian(0.1), sk.DirichletGumbel(alpha=50.0),
              sk.Gumbel(gprime="soft_grpo")]
    for V in ((300, 40000) if not quick else (300,)):
        B = 6
        logits = torch.randint(-4, 5, (B, V)).float() * 0.7 + torch.randn(B, V) * 0.01
        emb = torch.randn(V, 16)
        hard = torch.tensor([False, True, False, False, False, False])
        for noise in noises:
            both(logits, emb, f"V{V} {type(noise).__name__}", k=8, top_k=5, noise=noise,
                 seed=3, hard=hard)
        ties = torch.randint(0, 4, (B, V)).float()
        for kw in (dict(k=6, top_k=4), dict(k=12, top_p=0.4), dict(k=40, top_k=30, top_p=0.9)):
            both(ties, emb, f"V{V} ties keep_all {kw}", ties="keep_all",
                 temperature=torch.linspace(0.5, 1.5, B, dtype=torch.float64), **kw)

# ---- the other launchers (csrc/cuda/<op>.cu run by the emulator), against the CPU kernels -----

def emu_grads(ops, seed, fn):
    """fn() under the emulation of ``ops`` (schedule ``seed``)."""
    with emulated(seed=seed, ops=ops):
        return fn()


@case
def soft_embed_backward(quick):
    # The CPU forward's outputs, the emulated CUDA backward: gradients of logits and table
    # (rows share their top tokens, so the table gradient sums over rows), bitwise repeatable
    # across schedules.
    B, V, D = (6, 9000, 24) if quick else (10, 20000, 40)
    for ldtype, edtype, noise in [(torch.float32, torch.float32, "none"),
                                  (torch.float64, torch.float64, "gumbel"),
                                  (torch.bfloat16, torch.bfloat16, "gaussian"),
                                  (torch.float16, torch.float32, "dirichlet"),
                                  (torch.float32, torch.bfloat16, "gumbel")]:
        torch.manual_seed(21)
        base = (torch.randn(B, V, dtype=torch.float64) * 3)
        base[:, :4] += 12.0
        base = base.to(ldtype)
        emb0 = torch.randn(V + 2, D).to(edtype)
        hard = torch.zeros(B, dtype=torch.bool)
        hard[[1, B - 2]] = True
        kw = dict(k=7, noise=NOISES[noise], temperature=0.8, top_k=20, top_p=0.95, seed=3,
                  offset=1, hard=hard)

        def grads():
            logits = base.clone().requires_grad_()
            emb = emb0.clone().requires_grad_()
            out = sk.soft_embed(logits, emb, **kw)
            gen = torch.Generator().manual_seed(5)
            ge = torch.randn(out.embeds.shape, generator=gen).to(out.embeds.dtype)
            gw = torch.randn(out.weights.shape, generator=gen, dtype=out.weights.dtype)
            loss = (out.embeds.double() * ge.double()).sum() + (out.weights * gw).sum()
            if out.noise is not None:
                gn = torch.randn(out.noise.shape, generator=gen, dtype=out.noise.dtype)
                loss = loss + (torch.where(torch.isinf(out.noise), 0.0, out.noise) * gn).sum()
            return torch.autograd.grad(loss, (logits, emb))

        c = grads()
        g = emu_grads(["soft_embed_backward"], 1, grads)
        g2 = emu_grads(["soft_embed_backward"], 8, grads)
        what = f"{ldtype}/{edtype} {noise}"
        for x, y in zip(g, g2):
            assert torch.equal(x, y), f"{what}: another schedule gives other bits"
        _close(f"{what} grad_logits", g[0], c[0], ldtype)
        _close(f"{what} grad_embedding", g[1], c[1], edtype,
               scale=float(c[1].abs().max()))


@case
def logprob(quick):
    from test_gumbel_logprob import TOL as LP_TOL, assert_close, make_case
    dtypes = [torch.float32, torch.bfloat16] if quick else [torch.float32, torch.bfloat16,
                                                               torch.float16, torch.float64]
    for dtype in dtypes:
        for batch, V, k in [((4, 5), 3000, 10), ((3,), 20000, 64), ((2,), 500, 1)]:
            torch.manual_seed(31)
            logits, ids, gp, hard = make_case(batch, V, k, dtype, neg_inf=True)

            def run():
                x = logits.clone().requires_grad_()
                g = gp.clone().requires_grad_()
                lp = sk.gumbel_logprob(x, ids, g, 0.5, hard=hard)
                w = torch.randn(lp.shape, dtype=lp.dtype, generator=torch.Generator().manual_seed(2))
                (torch.where(torch.isfinite(lp), lp, 0.0) * w).sum().backward()
                return lp.detach(), x.grad, g.grad

            c = run()
            e = emu_grads(["gumbel_logprob", "gumbel_logprob_backward"], 1, run)
            e2 = emu_grads(["gumbel_logprob", "gumbel_logprob_backward"], 6, run)
            what = f"gumbel {dtype} {batch} V{V} k{k}"
            assert all(torch.equal(a, b) for a, b in zip(e, e2)), what + ": schedule-dependent"
            assert_close(e[0], c[0], *LP_TOL[dtype][0], what + " logprob")
            assert_close(e[1], c[1], *LP_TOL[dtype][1], what + " grad_logits")
            assert_close(e[2], c[2], *LP_TOL[dtype][0], what + " grad_g_prime")
        for shape, D, sigma in [((5, 7), 2048, 0.3), ((3,), 33, "rows"), ((1,), 1, 2.0)]:
            torch.manual_seed(32)
            x0 = torch.randn(*shape, D).to(dtype)
            m0 = torch.randn(D).to(dtype)
            sg = (torch.rand(shape, dtype=torch.float64) + 0.1).to(
                torch.float64 if dtype == torch.float64 else torch.float32) \
                if sigma == "rows" else sigma

            def run():
                x = x0.clone().requires_grad_()
                m = m0.clone().requires_grad_()
                lp = sk.gaussian_logprob(x, m, sg)
                lp.sum().backward()
                return lp.detach(), x.grad, m.grad

            c = run()
            e = emu_grads(["gaussian_logprob", "gaussian_logprob_backward"], 2, run)
            what = f"gaussian {dtype} {shape} D{D}"
            assert_close(e[0], c[0], *LP_TOL[dtype][0], what + " logprob")
            assert_close(e[1], c[1], *LP_TOL[dtype][1], what + " grad_x")
            assert_close(e[2], c[2], *LP_TOL[dtype][1], what + " grad_mean")


@case
def slot_logprob(quick):
    # topk_dirichlet_logprob / weight_gaussian_logprob: the emulated CUDA forward and backward
    # against the CPU kernels (-inf logits, hard rows, k up to 700: several slots a thread, a
    # repeated id in the last case), bitwise across schedules.
    from test_slot_logprob import TOL as SL_TOL, assert_close, make_case
    dtypes = [torch.float32, torch.bfloat16] if quick else [torch.float32, torch.bfloat16,
                                                               torch.float16, torch.float64]
    ops = ["slot_logprob", "slot_logprob_backward"]
    fns = {"dir": sk.topk_dirichlet_logprob, "gau": sk.weight_gaussian_logprob}
    for kind, fn in fns.items():
        for dtype in dtypes:
            for batch, V, k in [((4, 5), 3000, 10), ((3,), 20000, 64), ((2,), 500, 1),
                                ((2,), 1500, 700)]:
                logits, ids, draws, hard = make_case(kind, batch, V, k, dtype, neg_inf=True,
                                                     seed=V + k)
                if k == 700:
                    ids = ids.clone()
                    ids[..., 5] = ids[..., 300]

                def run():
                    x = logits.clone().requires_grad_()
                    lp = fn(x, ids, draws, 0.7, hard, min_weight=0.01)
                    w = torch.randn(lp.shape, dtype=lp.dtype,
                                    generator=torch.Generator().manual_seed(2))
                    (torch.where(torch.isfinite(lp), lp, 0.0) * w).sum().backward()
                    return lp.detach(), x.grad

                c = run()
                e = emu_grads(ops, 1, run)
                e2 = emu_grads(ops, 6, run)
                what = f"slot {kind} {dtype} {batch} V{V} k{k}"
                assert all(torch.equal(a, b) for a, b in zip(e, e2)), what + ": schedule-dependent"
                assert_close(e[0], c[0], *SL_TOL[dtype][0], what + " logprob")
                assert_close(e[1], c[1], *SL_TOL[dtype][1], what + " grad_logits")


@case
def route_step(quick):
    B = 700
    emu_state = sk.RouteState.start(B)
    cpu_state = sk.RouteState.start(B)
    torch.manual_seed(41)
    cfg = dict(think_end_id=7, cold_stop_entropy=0.3, cold_stop_patience=3,
               router_threshold=0.3, max_think_tokens=20)
    for step in range(10 if quick else 30):
        dtype = torch.float64 if step % 2 else torch.float32
        entropy = (torch.rand(B) * 0.8).to(dtype)
        max_prob = torch.rand(B).to(dtype)
        next_ids = torch.randint(0, 12, (B,))
        with emulated(seed=step, ops=["route_step"]):
            g = sk.route_step(entropy, max_prob, next_ids, emu_state, **cfg)
        c = sk.route_step(entropy, max_prob, next_ids, cpu_state, **cfg)
        assert torch.equal(g.mode, c.mode) and torch.equal(g.token, c.token), step
        for x, y in zip(g.state, c.state):
            assert torch.equal(x, y), step
        emu_state, cpu_state = g.state, c.state


@case
def mix_embeddings(quick):
    for edtype in [torch.float32, torch.bfloat16, torch.float16, torch.float64]:
        for noise in [None, NOISES["gaussian"], sk.Gaussian(0.05)]:
            torch.manual_seed(51)
            V, D = 3000, 72
            emb = torch.randn(V, D).to(edtype)
            ids = torch.randint(-2, V + 3, (3, 4, 9))           # some slots outside the table
            w = torch.rand(3, 4, 9, dtype=torch.float64 if edtype == torch.float64
                           else torch.float32)
            w[0, 0, 3:] = 0.0
            kw = dict(noise=noise, seed=torch.randint(0, 2 ** 40, (3, 4)), offset=5,
                      validate=False)
            with emulated(seed=3, ops=["mix_embeddings"]):
                g = sk.mix_embeddings(emb, ids, w, **kw)
            c = sk.mix_embeddings(emb, ids, w, **kw)
            _close(f"mix {edtype} {noise}", g, c, edtype, scale=float(emb.abs().max()))


@case
def select_and_add_rows(quick):
    for B in [0, 1, 7, 1023, 1024, 1025, 3001]:
        for dtype in [torch.float32, torch.float64, torch.bfloat16, torch.float16]:
            torch.manual_seed(B)
            scores = torch.rand(B).to(dtype)
            if B > 3:
                scores[1] = float("nan")
                scores[2] = 0.5
            for thr in (0.5, -math.inf, math.inf, 0.06):
                with emulated(seed=B, ops=["select_rows"]):
                    g = sk.select_rows(scores, thr)
                c = sk.select_rows(scores, thr)
                assert torch.equal(g.idx, c.idx) and torch.equal(g.count, c.count), (B, dtype, thr)
    for dtype in [torch.float32, torch.float64, torch.bfloat16, torch.float16]:
        B, V = 11, 3000
        torch.manual_seed(61)
        logits = torch.randn(B, V).to(dtype)
        src = torch.randn(B, V).to(dtype)
        idx, count = sk.select_rows(torch.rand(B), 0.6)
        n = int(count)
        for s, cnt in ((src, count), (src[:n], count), (src, torch.tensor([B + 5])),
                       (src, torch.tensor([-2])), (src, 3), (src, 0)):
            got, want = logits.clone(), logits.clone()
            with emulated(seed=4, ops=["add_rows_"]):
                sk.add_rows_(got, s, idx, cnt)
            sk.add_rows_(want, s, idx, cnt)
            assert torch.equal(got, want), (dtype, cnt)
        view = torch.randn(4, 3, 50).to(dtype)
        a, b = view.clone(), view.clone()
        rows = torch.tensor([2, 0, 2, 1])
        with emulated(seed=5, ops=["add_rows_"]):
            sk.add_rows_(a[:, -1], src[:3, :50], rows, torch.tensor([3]))
        sk.add_rows_(b[:, -1], src[:3, :50], rows, torch.tensor([3]))
        assert torch.equal(a, b), dtype


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-k", default="")
    args = ap.parse_args()
    torch.set_num_threads(2)
    load()
    failed = 0
    for name, fn in CASES.items():
        if args.k and args.k not in name:
            continue
        t = time.time()
        try:
            fn(args.quick)
            print(f"ok    {name} ({time.time() - t:.1f}s)", flush=True)
        except Exception as e:  # noqa: BLE001
            failed += 1
            print(f"FAIL  {name} ({time.time() - t:.1f}s): {type(e).__name__}: {e}"[:2000],
                  flush=True)
    print("paths taken (blocks or rows):")
    for line in sorted(torch.ops.skemu.counters().split()):
        print("   ", line)
    print("emu check:", "FAILED" if failed else "ok")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
