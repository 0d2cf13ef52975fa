"""topk_dirichlet_logprob / weight_gaussian_logprob (the slot_logprob kernels) against their float64
references on fresh random inputs: values and gradients over shapes (B = 0 and 1, leading dims,
strided logits, k = 1, k = V), -inf logits, hard rows, ties, G = 0 and clamped draws; gradcheck,
opcheck, torch.compile, double backward, validate=False on bad data, and the raw op's status."""

import math

import pytest
import torch

import softkernels as sk
from softkernels import _C
from softkernels.reference import (topk_dirichlet_logprob_reference,
                                   weight_gaussian_logprob_reference)

INF = math.inf
DIR, GAU = _C.NOISE_TOPK_DIRICHLET, _C.NOISE_WEIGHT_GAUSSIAN
FNS = {"dir": (sk.topk_dirichlet_logprob, topk_dirichlet_logprob_reference),
       "gau": (sk.weight_gaussian_logprob, weight_gaussian_logprob_reference)}
TOL = {  # (rtol, atol) of the logprob (stats dtype) and of grad_logits (logits' dtype)
    torch.float64: ((1e-10, 1e-10), (1e-9, 1e-10)),
    torch.float32: ((2e-4, 2e-4), (1e-3, 1e-4)),
    torch.bfloat16: ((2e-4, 2e-4), (2e-2, 2e-3)),
    torch.float16: ((2e-4, 2e-4), (4e-3, 4e-4)),
}


def make_case(kind, batch, V, k, dtype=torch.float32, device="cpu", *, hard_frac=0.3,
              neg_inf=False, ties=False, temperature=1.0, seed=0, alpha=1.0, sigma=0.05):
    """Random logits, distinct slot ids and the rollout's draws at (other) logits: Gamma(alpha p~)
    draws with some exact zeros (TopKDirichlet), or p~ + sigma n with some far outside the clamp
    radius (WeightGaussian)."""
    g = torch.Generator().manual_seed(seed)
    N = math.prod(batch)
    X = torch.randn(N, V, generator=g, dtype=torch.float64) * 2
    if ties:
        X = X.round()                                   # many equal logits
    ids = torch.rand(N, V, generator=g).argsort(-1)[:, :k]
    if neg_inf:
        X[torch.rand(N, V, generator=g) < 0.3] = -INF
        X.scatter_(1, ids[:, :1], torch.randn(N, 1, generator=g, dtype=torch.float64))
    z = X.gather(1, ids) / temperature
    p = torch.softmax(z + 0.3 * torch.randn(z.shape, generator=g, dtype=torch.float64), -1)
    if kind == "dir":
        conc = (alpha * p).clamp_min(1e-3)
        draws = torch._standard_gamma(conc.float()).double()
        draws[torch.rand(N, k, generator=g) < 0.15] = 0.0
    else:
        draws = p + sigma * torch.randn(N, k, generator=g, dtype=torch.float64)
        far = torch.rand(N, k, generator=g) < 0.2
        draws = torch.where(far, p + torch.randn(N, k, generator=g, dtype=torch.float64), draws)
    hard = torch.rand(N, generator=g) < hard_frac
    stats = torch.float64 if dtype == torch.float64 else torch.float32
    return (X.to(dtype).reshape(*batch, V).to(device), ids.reshape(*batch, k).to(device),
            draws.to(stats).reshape(*batch, k).to(device), hard.reshape(batch).to(device))


def assert_close(got, want, rtol, atol, what):
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.equal(torch.isnan(got), torch.isnan(want)), f"{what}: NaN pattern differs"
    assert torch.equal(torch.isinf(got), torch.isinf(want)), f"{what}: inf pattern differs"
    fin = torch.isfinite(want)
    torch.testing.assert_close(got[fin], want[fin], rtol=rtol, atol=atol,
                               msg=lambda m: f"{what}: {m}")


def check(kind, logits, ids, draws, hard, temperature=1.0, **kw):
    fn, ref = FNS[kind]
    (vr, va), (gr, ga) = TOL[logits.dtype]
    x = logits.detach().clone().requires_grad_()
    out = fn(x, ids, draws, temperature, hard, **kw)
    stats = torch.float64 if logits.dtype == torch.float64 else torch.float32
    assert out.dtype == stats and out.shape == logits.shape[:-1] and out.device == logits.device
    xr = logits.detach().cpu().double().requires_grad_()
    want = ref(xr, ids.cpu(), draws.cpu(), temperature,
               hard.cpu() if hard is not None else None, **kw)
    assert_close(out, want, vr, va, f"{kind} logprob")
    if out.numel() == 0:
        return out
    w = torch.randn(out.shape, dtype=torch.float64)
    (gl,) = torch.autograd.grad((torch.where(torch.isfinite(out), out, 0.0)
                                 * w.to(out.device, out.dtype)).sum(), x)
    ref_loss = (torch.where(torch.isfinite(want), want, 0.0) * w).sum()
    # A row whose counted slots are all clamped is a constant: the reference has no graph then.
    rgl = (torch.autograd.grad(ref_loss, xr)[0] if ref_loss.requires_grad
           else torch.zeros_like(xr))
    assert gl.dtype == logits.dtype and gl.shape == logits.shape
    assert_close(gl, rgl, gr, ga, f"{kind} grad_logits")
    return out


DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
SHAPES = [((7,), 50, 5), ((2, 3), 300, 12), ((), 20, 3), ((1,), 9, 1), ((4,), 6, 6),
          ((0,), 10, 4), ((2, 0, 3), 10, 2), ((2, 2, 2), 33, 33)]


@pytest.mark.parametrize("kind", ["dir", "gau"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,V,k", SHAPES)
def test_matches_reference(kind, dtype, batch, V, k, device):
    # From the test's own torch stream (conftest), so SOFTKERNELS_TEST_SEED replays the case.
    case = make_case(kind, batch, V, k, dtype, device, seed=int(torch.randint(0, 2 ** 31, ())))
    check(kind, *case)


@pytest.mark.parametrize("kind", ["dir", "gau"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_neg_inf_ties_and_temperature(kind, dtype, device):
    for seed, (neg_inf, ties) in enumerate([(True, False), (False, True), (True, True)]):
        case = make_case(kind, (5, 6), 40, 7, dtype, device, neg_inf=neg_inf, ties=ties,
                         temperature=0.7, seed=seed)
        check(kind, *case, 0.7)
    # k = V: every token is a slot (the soft row's lse is the whole row's).
    check(kind, *make_case(kind, (3,), 12, 12, dtype, device, neg_inf=True), 1.3)


@pytest.mark.parametrize("kw", [dict(), dict(alpha=2.0, clamp=(-3.0, 2.0), min_weight=0.2),
                                dict(clamp=None), dict(alpha=0.3, min_weight=0.0),
                                dict(min_weight=0.6)])
def test_topk_dirichlet_parameters(kw, device):
    for dtype in (torch.float32, torch.float64):
        check("dir", *make_case("dir", (6, 5), 30, 6, dtype, device, alpha=kw.get("alpha", 1.0)),
              **kw)


@pytest.mark.parametrize("kw", [dict(), dict(sigma=0.1, radius=0.05, min_weight=0.0),
                                dict(radius=INF), dict(sigma=1e-3, min_weight=0.6)])
def test_weight_gaussian_parameters(kw, device):
    for dtype in (torch.float32, torch.float64):
        check("gau", *make_case("gau", (6, 5), 30, 6, dtype, device), 0.9, **kw)


def test_strided_and_expanded_logits(device):
    for kind in ("dir", "gau"):
        X, ids, draws, hard = make_case(kind, (3, 8), 41, 5, torch.float32, device)
        view = X[:, :-1]                                           # a sliced [B, T - 1, V] view
        check(kind, view, ids[:, :-1].contiguous(), draws[:, :-1].contiguous(),
              hard[:, :-1].contiguous())
        wide = torch.zeros(3, 8, 2 * 41, device=device)[..., ::2]  # last dim not contiguous
        wide.copy_(X)
        check(kind, wide, ids, draws, hard)
        row = X[:1, :1].expand(3, 8, 41)                           # stride 0 batch dims
        check(kind, row, ids, draws, None)


def test_many_leading_dims(device):
    # More than the kernels' 8 batch dimensions: the wrapper flattens them.
    X, ids, draws, hard = make_case("dir", (1, 2, 1, 2, 1, 2, 1, 2, 2), 12, 3, torch.float64,
                                    device)
    check("dir", X, ids, draws, hard)


def test_edge_slots_topk_dirichlet(device):
    # G = 0 with c < 1, c = 1 and c > 1 (xlogy: +inf, 0, -inf, then clamped), and a slot whose
    # c underflows to 0 (-inf logit: p~ = 0; left out of M).
    logits = torch.tensor([[0.0, 0.0, -INF, 1.0], [2.0, 0.0, 0.0, 0.0]], dtype=torch.float64,
                          device=device)
    ids = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]], device=device)
    draws = torch.tensor([[0.0, 0.3, 0.0, 0.0], [0.0, 0.0, 0.5, 1.0]], dtype=torch.float64,
                         device=device)
    for alpha in (1.0, 4.0, 0.5):
        for clamp in ((-5.0, 3.0), None):
            out = check("dir", logits, ids, draws, None, alpha=alpha, clamp=clamp, min_weight=0.0)
            # Unclamped, +inf and -inf slots in one mean give NaN (as in the reference).
            assert clamp is None or torch.isfinite(out).all()


def test_fallback_to_the_most_probable_slot(device):
    # min_weight above every p~: M is the single most probable slot (the first of tied ones).
    for kind in ("dir", "gau"):
        X, ids, draws, hard = make_case(kind, (20,), 30, 8, torch.float64, device, ties=True)
        out = check(kind, X, ids, draws, None, min_weight=0.99)
        tied = torch.zeros_like(X)                                 # all slots tied
        check(kind, tied, ids, draws, None, min_weight=0.5)
        assert out.shape == (20,)


def test_hard_rows_are_log_softmax(device):
    X, ids, draws, _ = make_case("gau", (4, 3), 25, 4, torch.float64, device)
    hard = torch.ones(4, 3, dtype=torch.bool, device=device)
    for fn, _ in FNS.values():
        got = fn(X, ids, draws, 0.5, hard)
        want = torch.log_softmax(X / 0.5, -1).gather(-1, ids[..., :1])[..., 0]
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        # Their draws and slots 1.. are not read: garbage there changes nothing.
        junk = ids.clone()
        junk[..., 1:] = 10 ** 9
        torch.testing.assert_close(fn(X, junk, torch.full_like(draws, math.nan), 0.5, hard), got)


@pytest.mark.parametrize("kind", ["dir", "gau"])
def test_gradcheck(kind, device):
    X, ids, draws, hard = make_case(kind, (3, 4), 15, 4, torch.float64, device, temperature=0.8)
    fn = FNS[kind][0]
    x = X.clone().requires_grad_()
    torch.autograd.gradcheck(lambda l: fn(l, ids, draws, 0.8, hard), (x,))
    torch.autograd.gradcheck(lambda l: fn(l, ids, draws, 1.0, None, min_weight=0.0), (x,))


def test_no_gradient_to_draws_and_no_double_backward(device):
    X, ids, draws, hard = make_case("dir", (4,), 20, 3, torch.float64, device)
    x = X.clone().requires_grad_()
    d = draws.clone().requires_grad_()
    for fn, _ in FNS.values():
        out = fn(x, ids, d, 1.0, hard)
        gx, gd = torch.autograd.grad(out.sum(), (x, d), allow_unused=True, create_graph=True)
        assert gd is None
        with pytest.raises(RuntimeError, match="double backward"):
            torch.autograd.grad(gx.sum(), x)


def test_compile_fullgraph_forward_and_backward(device):
    X, ids, draws, hard = make_case("gau", (2, 5), 30, 4, torch.float32, device)
    for fn, _ in FNS.values():
        d = draws.abs() if fn is sk.topk_dirichlet_logprob else draws

        def loss(l):
            return fn(l, ids, d, 0.9, hard).sum()

        f = torch.compile(loss, fullgraph=True, backend="aot_eager")
        x1, x2 = X.clone().requires_grad_(), X.clone().requires_grad_()
        torch.testing.assert_close(f(x1), loss(x2))
        (g1,) = torch.autograd.grad(f(x1), x1)
        (g2,) = torch.autograd.grad(loss(x2), x2)
        torch.testing.assert_close(g1, g2)


def test_opcheck(device):
    for kind, code in (("dir", DIR), ("gau", GAU)):
        X, ids, draws, hard = make_case(kind, (3, 4), 40, 5, torch.float32, device)
        X.requires_grad_()
        args = (X, ids, draws, hard, code, 0.8, 1.0, -5.0, 3.0, 0.05, 0.15, 0.05)
        torch.library.opcheck(torch.ops.softkernels.slot_logprob.default, args)
        torch.library.opcheck(torch.ops.softkernels.slot_logprob.default,
                              (X[:, :2], ids[:, :2].contiguous(), draws[:, :2].contiguous(), None,
                               code, 1.0, 2.0, -INF, INF, 0.1, INF, 0.0))
        lp, lse, _ = torch.ops.softkernels.slot_logprob(*args)
        torch.library.opcheck(torch.ops.softkernels.slot_logprob_backward.default,
                              (torch.randn_like(lp), X.detach(), ids, draws, hard, lse) + args[4:])


def test_validate_false_bad_rows_come_back_nan(device):
    X, ids, draws, _ = make_case("dir", (4,), 10, 3, torch.float32, device)
    ids = ids.clone()
    ids[1, 2] = 10          # out of range: the row is not read (NaN), never clamped
    ids[2, 0] = -1
    hard = torch.tensor([False, False, True, False], device=device)
    for fn, _ in FNS.values():
        x = X.clone().requires_grad_()
        out = fn(x, ids, draws, 1.0, hard, validate=False)
        assert torch.isnan(out[1:3]).all() and torch.isfinite(out[[0, 3]]).all()
        (g,) = torch.autograd.grad(out.nansum(), x)
        assert torch.isnan(g[1:3]).all() and torch.isfinite(g[[0, 3]]).all()
        with pytest.raises(ValueError, match=r"ids\[1, 2\] = 10 is not a token id"):
            fn(X, ids, draws, 1.0, hard)


def test_raw_op_status_bits(device):
    X = torch.tensor([[0.0, 1.0, 2.0], [-INF, -INF, 0.0], [math.nan, 0.0, 0.0],
                      [0.0, 0.0, 0.0]], device=device)
    ids = torch.tensor([[0, 1], [0, 1], [0, 1], [0, 5]], device=device)
    draws = torch.tensor([[0.5, -1.0], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]], device=device)
    for code in (DIR, GAU):
        lp, lse, status = torch.ops.softkernels.slot_logprob(
            X, ids, draws, None, code, 1.0, 1.0, -5.0, 3.0, 0.05, 0.15, 0.05)
        want = [_C.LP_BAD_NOISE if code == DIR else 0, _C.LP_ALL_MASKED, _C.LP_NONFINITE,
                _C.LP_BAD_ID]
        assert status.tolist() == want
        assert torch.isnan(lp[1:]).all() and torch.isnan(lse[1:]).all()
        assert torch.isfinite(lp[0]) and torch.isfinite(lse[0])


def test_raw_op_refuses_bad_kind_and_parameters():
    X, ids, draws, _ = make_case("gau", (2,), 10, 3)
    base = [X, ids, draws, None, GAU, 1.0, 1.0, -5.0, 3.0, 0.05, 0.15, 0.05]
    for i, v in [(4, 0), (4, 8), (4, _C.NOISE_GUMBEL), (5, 0.0), (6, -1.0), (7, 4.0),
                 (9, math.nan), (10, 0.0), (11, 1.0)]:
        args = list(base)
        args[i] = v
        with pytest.raises(RuntimeError, match="bad noise kind|parameter out of range"):
            torch.ops.softkernels.slot_logprob(*args)
    # Even with no rows: a bad kind never passes silently.
    with pytest.raises(RuntimeError, match="bad noise kind 9"):
        torch.ops.softkernels.slot_logprob(X[:0], ids[:0], draws[:0], None, 9, 1.0, 1.0, -5.0,
                                           3.0, 0.05, 0.15, 0.05)


@pytest.mark.cuda
def test_cuda_matches_cpu():
    for kind, code in (("dir", DIR), ("gau", GAU)):
        for dtype in DTYPES:
            for batch, V, k in [((5, 7), 3000, 10), ((3,), 20000, 64), ((2,), 500, 1),
                                ((2,), 2000, 1024)]:
                X, ids, draws, hard = make_case(kind, batch, V, k, dtype, neg_inf=True)
                fn = FNS[kind][0]
                xc = X.clone().requires_grad_()
                xg = X.cuda().requires_grad_()
                oc = fn(xc, ids, draws, 0.7, hard)
                og = fn(xg, ids.cuda(), draws.cuda(), 0.7, hard.cuda())
                (vr, va), (gr, ga) = TOL[dtype]
                assert_close(og, oc, vr, va, f"{kind} {dtype} cuda logprob")
                w = torch.randn(oc.shape, dtype=oc.dtype)
                (gc,) = torch.autograd.grad((oc * w).sum(), xc)
                (gg,) = torch.autograd.grad((og * w.cuda()).sum(), xg)
                assert_close(gg, gc, gr, ga, f"{kind} {dtype} cuda grad")
