"""gumbel_logprob (SofT-GRPO) against its float64 reference: values, gradients, edge cases,
gradcheck, opcheck and bad input."""

import math

import pytest
import torch

import softkernels as sk
from softkernels.reference import gumbel_logprob_reference, gumbel_noise

INF = math.inf
TOL = {  # (rtol, atol) of the logprob (stats dtype) and of grad_logits (logits' dtype)
    torch.float64: ((1e-10, 1e-10), (1e-9, 1e-11)),
    torch.float32: ((1e-5, 1e-5), (1e-4, 1e-6)),
    torch.bfloat16: ((1e-5, 1e-5), (2e-2, 1e-3)),
    torch.float16: ((1e-5, 1e-5), (2e-3, 1e-4)),
}


def make_case(batch, V, k, dtype=torch.float32, device="cpu", *, hard_frac=0.3, excl_frac=0.25,
              temperature=1.0, scale=1.0, spread=(-3.0, 5.0), neg_inf=False):
    """Random logits, distinct slot ids, and g' = log p~ + scale * g with g spread so that both
    clamped and unclamped slots occur; some slots excluded (-inf), some rows hard."""
    N = math.prod(batch)
    X = torch.randn(N, V, dtype=torch.float64) * 2
    ids = torch.rand(N, V).argsort(-1)[:, :k]
    incl = torch.rand(N, k) >= excl_frac
    incl[:, 0] = True
    if neg_inf:
        X[torch.rand(N, V) < 0.3] = -INF                     # masked tokens
        X.scatter_(1, ids[:, :1], torch.randn(N, 1, dtype=torch.float64))  # slot 0 stays finite
    z = X.gather(1, ids) / temperature
    zl = torch.where(incl, z, -INF)
    logp = zl - torch.logsumexp(zl, -1, keepdim=True)
    g = torch.empty(N, k, dtype=torch.float64).uniform_(*spread)
    gp = torch.where(incl, torch.where(torch.isfinite(logp), logp, 0.0) + scale * g, -INF)
    hard = torch.rand(N) < hard_frac
    return (X.to(dtype).reshape(*batch, V).to(device), ids.reshape(*batch, k).to(device),
            gp.to(torch.float32 if dtype != torch.float64 else torch.float64)
            .reshape(*batch, k).to(device), hard.reshape(batch).to(device))


def assert_close(got, want, rtol, atol, what):
    got = got.detach().double().cpu()
    want = want.detach().double().cpu()
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert not torch.isnan(got).any(), f"{what}: NaN"
    assert torch.equal(torch.isinf(got), torch.isinf(want)), f"{what}: inf pattern differs"
    fin = torch.isfinite(want)
    torch.testing.assert_close(got[fin], want[fin], rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def check_against_reference(logits, ids, gp, hard, **kw):
    tau = kw.pop("tau", 0.5)
    (vr, va), (gr, ga) = TOL[logits.dtype]
    x = logits.detach().clone().requires_grad_()
    out = sk.gumbel_logprob(x, ids, gp, tau, hard=hard, **kw)
    stats = torch.float64 if logits.dtype == torch.float64 else torch.float32
    assert out.dtype == stats and out.shape == logits.shape[:-1] and out.device == logits.device
    xr = logits.detach().cpu().double().requires_grad_()
    ref = gumbel_logprob_reference(xr, ids.cpu(), gp.cpu(), tau,
                                   hard=hard.cpu() if hard is not None else None, **kw)
    assert_close(out, ref, vr, va, "logprob")
    if out.numel() == 0:
        return out
    w = torch.randn(out.shape, dtype=torch.float64)
    loss = (torch.where(torch.isfinite(out), out, 0.0) * w.to(out.device, out.dtype)).sum()
    (gl,) = torch.autograd.grad(loss, x)
    (rgl,) = torch.autograd.grad((torch.where(torch.isfinite(ref), ref, 0.0) * w).sum(), xr)
    assert gl.dtype == logits.dtype and gl.shape == logits.shape
    assert_close(gl, rgl, gr, ga, "grad_logits")
    return out


DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,V,k", [((7,), 50, 5), ((2, 3), 300, 12), ((), 20, 3),
                                       ((3, 2, 2), 1000, 1), ((2, 9), 4100, 30)])
def test_matches_reference(device, dtype, batch, V, k):
    logits, ids, gp, hard = make_case(batch, V, k, dtype, device)
    check_against_reference(logits, ids, gp, hard, temperature=0.7)


@pytest.mark.parametrize("kw", [dict(), dict(clamp=None), dict(scale=0.6, clamp=(-2.0, 2.5)),
                                dict(min_weight=0.0), dict(min_weight=0.3, temperature=1.3),
                                dict(clamp=(-INF, 1.0))])
def test_options_match_reference(device, kw):
    scale = kw.get("scale", 1.0)
    logits, ids, gp, hard = make_case((4, 6), 64, 8, torch.float32, device, scale=scale,
                                      temperature=kw.get("temperature", 1.0))
    check_against_reference(logits, ids, gp, hard, **kw)


def test_no_hard_rows_and_all_hard(device):
    logits, ids, gp, _ = make_case((5,), 40, 4, torch.float32, device)
    check_against_reference(logits, ids, gp, None)
    check_against_reference(logits, ids, gp, torch.ones(5, dtype=torch.bool, device=device))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_neg_inf_logits(device, dtype):
    logits, ids, gp, hard = make_case((6, 5), 80, 6, dtype, device, neg_inf=True)
    # An included slot whose logit is -inf: p~ = 0, so it is never counted.
    logits[0, 0, ids[0, 0, 1]] = -INF
    gp[0, 0, 1] = 0.3
    hard[0, 0] = False
    # A hard row whose token is masked: log pi = -inf (zero gradient through the finite loss).
    logits[1, 1, ids[1, 1, 0]] = -INF
    hard[1, 1] = True
    out = check_against_reference(logits, ids, gp, hard)
    assert out[1, 1] == -INF and torch.isfinite(out[0, 0])
    check_against_reference(logits, ids, gp, hard, clamp=None)


def test_hard_rows_are_ordinary_logprob(device):
    logits, ids, gp, _ = make_case((3, 4), 100, 5, torch.float32, device)
    hard = torch.ones(3, 4, dtype=torch.bool, device=device)
    gp = torch.full_like(gp, -INF)          # g' of hard rows is not read
    x = logits.clone().requires_grad_()
    out = sk.gumbel_logprob(x, ids, gp, 0.5, temperature=0.8, hard=hard)
    want = torch.log_softmax(logits.double() / 0.8, -1).gather(-1, ids[..., :1].long()).squeeze(-1)
    torch.testing.assert_close(out.double(), want, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    xw = logits.double().clone().requires_grad_()
    torch.log_softmax(xw / 0.8, -1).gather(-1, ids[..., :1].long()).sum().backward()
    torch.testing.assert_close(x.grad.double(), xw.grad, rtol=1e-4, atol=1e-6)


def test_k1_is_the_gumbel_density_of_g_prime(device):
    logits = torch.randn(6, 30, device=device)
    ids = torch.randint(0, 30, (6, 1), device=device)
    gp = torch.linspace(-3, 5, 6, device=device).reshape(6, 1)
    out = sk.gumbel_logprob(logits, ids, gp, 0.5)
    gh = gp.double().squeeze(1).clamp(-1.5, 3.0)          # p~ = 1: log p~ = 0
    torch.testing.assert_close(out.double(), -gh - torch.exp(-gh), rtol=1e-6, atol=1e-6)
    # ... and constant in the logits.
    x = logits.clone().requires_grad_()
    sk.gumbel_logprob(x, ids, gp, 0.5).sum().backward()
    assert x.grad.abs().max() == 0


def test_no_slot_passes_keeps_most_probable(device):
    # 40 equal logits: p~ = 1/40 < exp(-3) for every slot; the first (lowest-index) slot of the
    # most probable ones is kept.
    k = 40
    logits = torch.zeros(2, 100, device=device)
    logits[1, 7] = 0.5                      # row 1: slot 3 holds the most probable token
    ids = torch.arange(k, device=device).repeat(2, 1)
    ids[1, 3] = 7
    gp = torch.randn(2, k, device=device)
    out = sk.gumbel_logprob(logits, ids, gp, 0.5)
    ref = gumbel_logprob_reference(logits.cpu(), ids.cpu(), gp.cpu(), 0.5)
    torch.testing.assert_close(out.double().cpu(), ref, rtol=1e-5, atol=1e-5)
    lse0 = math.log(k)
    gh = (gp[0, 0].double().cpu() + lse0).clamp(-1.5, 3.0)
    torch.testing.assert_close(out[0].double().cpu(), -gh - torch.exp(-gh), rtol=1e-5, atol=1e-5)
    check_against_reference(logits, ids, gp, None)


def test_tau_does_not_enter(device):
    logits, ids, gp, hard = make_case((4, 3), 50, 6, torch.float32, device)
    a = sk.gumbel_logprob(logits, ids, gp, 0.1, hard=hard)
    b = sk.gumbel_logprob(logits, ids, gp, 10.0, hard=hard)
    assert torch.equal(a, b)


def test_excluded_and_hard_ids_are_not_read(device):
    logits, ids, gp, hard = make_case((5, 4), 60, 6, torch.float32, device)
    a = sk.gumbel_logprob(logits, ids, gp, 0.5, hard=hard)
    ids2 = ids.clone()
    ids2[torch.isinf(gp)] = -1                              # padding in excluded slots
    ids2[..., 1:][hard] = 10 ** 9                           # hard rows read ids[..., 0] only
    gp2 = gp.clone()
    gp2[hard] = torch.nan                                   # hard rows do not read g'
    b = sk.gumbel_logprob(logits, ids2, gp2, 0.5, hard=hard)
    assert torch.equal(a, b)


def test_duplicate_ids_gradient(device):
    logits, ids, gp, _ = make_case((6,), 30, 5, torch.float64, device, excl_frac=0.0)
    ids[:, 3] = ids[:, 1]
    check_against_reference(logits, ids, gp, None, min_weight=0.0)


def test_strided_and_broadcast_inputs(device):
    logits, ids, gp, hard = make_case((3, 6), 70, 4, torch.float32, device)
    full = torch.randn(3, 7, 70, device=device)
    full[:, :6] = logits
    view = full[:, :6]                                      # not collapsible to [N, V]
    assert not view.is_contiguous()
    x1 = view.clone().requires_grad_()
    x2 = full.clone().requires_grad_()
    a = sk.gumbel_logprob(x1, ids, gp, 0.5, hard=hard)
    b = sk.gumbel_logprob(x2[:, :6], ids, gp, 0.5, hard=hard)
    assert torch.equal(a, b)
    a.sum().backward()
    b.sum().backward()
    assert torch.equal(x1.grad, x2.grad[:, :6]) and x2.grad[:, 6].abs().max() == 0
    # Non-contiguous ids / g' / hard and int32 ids are accepted.
    c = sk.gumbel_logprob(view, ids.int().transpose(0, 1).contiguous().transpose(0, 1),
                          gp.transpose(0, 1).contiguous().transpose(0, 1), 0.5,
                          hard=hard.t().contiguous().t())
    assert torch.equal(a, c)


def test_rows_are_batch_independent(device):
    logits, ids, gp, hard = make_case((9,), 5000, 7, torch.float32, device)
    full = sk.gumbel_logprob(logits, ids, gp, 0.5, hard=hard)
    for n in (0, 4, 8):
        one = sk.gumbel_logprob(logits[n:n + 1], ids[n:n + 1], gp[n:n + 1], 0.5,
                                hard=hard[n:n + 1])
        assert torch.equal(one[0], full[n])


def test_empty_batch(device):
    logits = torch.randn(0, 3, 10, device=device, requires_grad=True)
    out = sk.gumbel_logprob(logits, torch.zeros(0, 3, 2, dtype=torch.long, device=device),
                            torch.zeros(0, 3, 2, device=device), 0.5)
    assert out.shape == (0, 3)
    out.sum().backward()
    assert logits.grad.shape == logits.shape


@pytest.mark.parametrize("scale", [1.0, 0.7])
@pytest.mark.parametrize("clamp", [(-1.5, 3.0), None])
def test_rollout_policy_recovers_the_gumbel_draws(device, scale, clamp):
    """At the rollout's own logits, ghat = clamp(g) exactly: log pi is the mean Gumbel
    log-density of the (clamped) draws soft_embed used, over the counted slots."""
    B, V, k, T = 8, 200, 6, 0.7
    logits = torch.randn(B, V, device=device) * 3
    hard = torch.tensor([False, True] + [False] * (B - 2), device=device)
    noise = sk.Gumbel(tau=0.5, scale=scale, clamp=clamp)
    out = sk.soft_embed(logits, torch.randn(V, 4, device=device), k=k, temperature=T, top_k=20,
                        top_p=0.9, noise=noise, seed=5, offset=3, hard=hard)
    assert torch.isinf(out.noise).any()                    # some slots filtered out
    lp = sk.gumbel_logprob(logits, out.ids, out.noise, noise.tau, temperature=T, clamp=clamp,
                           hard=hard, scale=scale)
    lo, hi = noise.bounds
    for b in range(B):
        if hard[b]:
            want = torch.log_softmax(logits[b].double() / T, 0)[out.ids[b, 0]]
        else:
            incl = torch.isfinite(out.noise[b]).cpu()
            ids_b = out.ids[b].cpu()[incl]
            g = gumbel_noise(5, 3, ids_b).clamp(lo, hi)     # the draws soft_embed used
            p = torch.softmax(logits[b].double().cpu()[ids_b] / T, 0)
            counted = p > math.exp(-3)
            if not counted.any():
                counted = p == p.max()
            want = (-g - torch.exp(-g))[counted].mean()
        torch.testing.assert_close(lp[b].double().cpu(), want.cpu(), rtol=1e-4, atol=1e-4)


def test_gradcheck(device):
    logits, ids, gp, hard = make_case((3, 4), 12, 4, torch.float64, device)
    x = logits.clone().requires_grad_()
    g = gp.clone().requires_grad_()

    def fn(x, g):
        return sk.gumbel_logprob(x, ids, g, 0.5, temperature=0.9, hard=hard, scale=0.8)

    assert torch.autograd.gradcheck(fn, (x, g), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradcheck(
        lambda x: sk.gumbel_logprob(x, ids, gp, 0.5, clamp=None, min_weight=0.0), (x,),
        eps=1e-6, atol=1e-7)


def test_g_prime_gradient_matches_reference(device):
    logits, ids, gp, hard = make_case((4, 5), 30, 5, torch.float32, device, scale=0.5)
    g = gp.clone().requires_grad_()
    out = sk.gumbel_logprob(logits, ids, g, 0.5, hard=hard, scale=0.5)
    (gg,) = torch.autograd.grad(out.sum(), g)
    gr = gp.cpu().double().requires_grad_()
    ref = gumbel_logprob_reference(logits.cpu(), ids.cpu(), gr, 0.5, hard=hard.cpu(), scale=0.5)
    (rgg,) = torch.autograd.grad(ref.sum(), gr)
    torch.testing.assert_close(gg.double().cpu(), rgg, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("i,v", [(4, 0.0), (4, -1.0), (5, 0.0), (6, 3.0), (8, 1.0),
                                 (8, -0.1), (4, math.nan)])
def test_raw_op_checks_parameters_even_without_rows(i, v):
    """The preamble checks temperature / scale / clamp / min_weight before the no-row return,
    forward and backward (a bad value never passes silently)."""
    logits, ids, gp, _ = make_case((2,), 10, 3, torch.float32, "cpu")
    for n in (2, 0):
        args = [logits[:n], ids[:n], gp[:n], None, 1.0, 1.0, -1.5, 3.0, 0.05]
        args[i] = v
        with pytest.raises(RuntimeError, match="parameter out of range"):
            torch.ops.softkernels.gumbel_logprob(*args)
        grad, lse = torch.zeros(n), torch.zeros(n)
        bargs = [grad, *args[:4], lse, *args[4:], True]
        with pytest.raises(RuntimeError, match="parameter out of range"):
            torch.ops.softkernels.gumbel_logprob_backward(*bargs)


def test_opcheck(device):
    logits, ids, gp, hard = make_case((3, 4), 40, 5, torch.float32, device)
    logits.requires_grad_()
    args = (logits, ids, gp, hard, 0.8, 1.0, -1.5, 3.0, math.exp(-3))
    torch.library.opcheck(torch.ops.softkernels.gumbel_logprob.default, args)
    torch.library.opcheck(torch.ops.softkernels.gumbel_logprob.default,
                          (logits[:, :2], ids[:, :2].contiguous(), gp[:, :2].contiguous(), None, 1.0, 0.5, -INF, INF, 0.0))
    lp, lse, _ = torch.ops.softkernels.gumbel_logprob(*args)
    grad = torch.randn_like(lp)
    for g_grad in (True, False):
        torch.library.opcheck(torch.ops.softkernels.gumbel_logprob_backward.default,
                              (grad, logits.detach(), ids, gp, hard, lse, 0.8, 1.0, -1.5, 3.0,
                               math.exp(-3), g_grad))


# --------------------------------------------------------------------------------------------
# Bad data: ValueError naming the row (validate=True), NaN rows otherwise.

def _bad_data_cases():
    def nan_logit(x, ids, gp, hard):
        x[1, ids[1, 0]] = torch.nan
    def inf_logit_hard(x, ids, gp, hard):
        hard[2] = True
        x[2, 0] = INF
    def bad_id(x, ids, gp, hard):
        ids[1, 2] = 10 ** 6
    def bad_hard_id(x, ids, gp, hard):
        hard[1] = True
        ids[1, 0] = -3
    def nan_noise(x, ids, gp, hard):
        gp[1, 1] = torch.nan
    def no_slot(x, ids, gp, hard):
        gp[1] = -INF
    def all_masked(x, ids, gp, hard):
        x[1, ids[1]] = -INF
    def all_masked_hard(x, ids, gp, hard):
        hard[1] = True
        x[1] = -INF
    return [(nan_logit, r"logits row \(1,\) reads contain NaN or \+inf"),
            (inf_logit_hard, r"row \(2,\) reads contain NaN or \+inf"),
            (bad_id, r"row \(1,\) reads an id outside \[0, V\) = \[0, 20\)"),
            (bad_hard_id, r"row \(1,\) reads an id outside"),
            (nan_noise, r"g_prime of row \(1,\) contains NaN or \+inf"),
            (no_slot, r"row \(1,\) is soft but all its g_prime are -inf"),
            (all_masked, r"every logit row \(1,\) reads is -inf"),
            (all_masked_hard, r"every logit row \(1,\) reads is -inf")]


@pytest.mark.parametrize("corrupt,match", _bad_data_cases())
def test_bad_data(device, corrupt, match):
    logits, ids, gp, _ = make_case((4,), 20, 4, torch.float32, device, excl_frac=0.0)
    hard = torch.zeros(4, dtype=torch.bool, device=device)
    corrupt(logits, ids, gp, hard)
    with pytest.raises(ValueError, match=match):
        sk.gumbel_logprob(logits, ids, gp, 0.5, hard=hard)
    x = logits.clone().requires_grad_()
    g = gp.clone().requires_grad_()
    out = sk.gumbel_logprob(x, ids, g, 0.5, hard=hard, validate=False)
    assert torch.isnan(out[1:3]).any() and torch.isfinite(out[[0, 3]]).all()
    out[[0, 3]].sum().backward()
    bad = torch.isnan(out)
    assert torch.isnan(x.grad[bad]).all() and torch.isfinite(x.grad[~bad]).all()


@pytest.mark.parametrize("call,exc,match", [
    (lambda L, I, G, H: sk.gumbel_logprob(L.tolist(), I, G, 0.5), TypeError,
     r"logits must be a torch.Tensor"),
    (lambda L, I, G, H: sk.gumbel_logprob(L.long(), I, G, 0.5), TypeError,
     r"logits must have dtype in .*got torch.int64"),
    (lambda L, I, G, H: sk.gumbel_logprob(L[0, 0, 0], I, G, 0.5), ValueError,
     r"logits must be a \[..., V\] tensor with V >= 1, got shape \(\)"),
    (lambda L, I, G, H: sk.gumbel_logprob(L[..., :0], I, G, 0.5), ValueError,
     r"V >= 1, got shape \(2, 3, 0\)"),
    (lambda L, I, G, H: sk.gumbel_logprob(L, I.float(), G, 0.5), TypeError,
     r"ids must have dtype in .*got torch.float32"),
    (lambda L, I, G, H: sk.gumbel_logprob(L, I[0], G, 0.5), ValueError,
     r"ids must have shape \[..., k\] with the logits' leading shape \(2, 3\), got \(3, 4\)"),
    (lambda L, I, G, H: sk.gumbel_logprob(L, I[:, :2], G, 0.5), ValueError,
     r"leading shape \(2, 3\), got \(2, 2, 4\)"),
    (lambda L, I, G, H: sk.gumbel_logprob(L, I[..., :0], G[..., :0], 0.5), ValueError,
     r"1 <= k <= 1024 slots, got k = 0"),
    (lambda L, I, G, H: sk.gumbel_logprob(L, I, G[..., :3], 0.5), ValueError,
     r"g_prime must have the shape of ids \(2, 3, 4\), got \(2, 3, 3\)"),
    (lambda L, I, G, H: sk.gumbel_logprob(L, I, G.long(), 0.5), TypeError,
     r"g_prime must have dtype"),
    (lambda L, I, G, H: sk.gumbel_logprob(L, I, G, 0.0), ValueError,
     r"tau must be in \(0.0, inf\), got 0.0"),
    (lambda L, I, G, H: sk.gumbel_logprob(L, I, G, None), TypeError, r"tau must be a number"),
    (lambda L, I, G, H: sk.gumbel_logprob(L, I, G, 0.5, temperature=-1), ValueError,
     r"temperature must be in \(0.0, inf\), got -1"),
    (lambda L, I, G, H: sk.gumbel_logprob(L, I, G, 0.5, temperature=math.nan), ValueError,
     r"temperature .* got nan"),
    (lambda L, I, G, H: sk.gumbel_logprob(L, I, G, 0.5, clamp=(3.0, 1.0)), ValueError,
     r"clamp must satisfy lo < hi, got \(3.0, 1.0\)"),
    (lambda L, I, G, H: sk.gumbel_logprob(L, I, G, 0.5, clamp=1.0), TypeError,
     r"clamp must be a \(lo, hi\) pair"),
    (lambda L, I, G, H: sk.gumbel_logprob(L, I, G, 0.5, scale=0.0), ValueError,
     r"scale must be in \(0.0, inf\), got 0.0"),
    (lambda L, I, G, H: sk.gumbel_logprob(L, I, G, 0.5, min_weight=1.0), ValueError,
     r"min_weight must be in \[0.0, 1.0\), got 1.0"),
    (lambda L, I, G, H: sk.gumbel_logprob(L, I, G, 0.5, min_weight=-0.1), ValueError,
     r"min_weight must be in .* got -0.1"),
    (lambda L, I, G, H: sk.gumbel_logprob(L, I, G, 0.5, hard=H.int()), TypeError,
     r"hard must have dtype in \(bool\), got torch.int32"),
    (lambda L, I, G, H: sk.gumbel_logprob(L, I, G, 0.5, hard=H[0]), ValueError,
     r"hard must have the logits' leading shape \(2, 3\), got \(3,\)"),
    (lambda L, I, G, H: sk.gumbel_logprob(L, I, G, 0.5, validate=1), TypeError,
     r"validate must be a bool"),
])
def test_bad_arguments(call, exc, match):
    logits, ids, gp, hard = make_case((2, 3), 20, 4)
    with pytest.raises(exc, match=match):
        call(logits, ids, gp, hard)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bad_devices():
    logits, ids, gp, hard = make_case((2, 3), 20, 4)
    with pytest.raises(ValueError, match=r"ids is on cuda.* but must be on cpu"):
        sk.gumbel_logprob(logits, ids.cuda(), gp, 0.5)
    with pytest.raises(ValueError, match=r"g_prime is on cuda"):
        sk.gumbel_logprob(logits, ids, gp.cuda(), 0.5)
    with pytest.raises(ValueError, match=r"hard is on cuda"):
        sk.gumbel_logprob(logits, ids, gp, 0.5, hard=hard.cuda())


@pytest.mark.cuda
def test_cuda_matches_cpu():
    """The CUDA kernels agree with the CPU kernels (same formulas, different reductions)."""
    for dtype in DTYPES:
        logits, ids, gp, hard = make_case((4, 16), 3000, 10, dtype, neg_inf=True)
        xc = logits.clone().requires_grad_()
        xg = logits.cuda().requires_grad_()
        a = sk.gumbel_logprob(xc, ids, gp, 0.5, hard=hard)
        b = sk.gumbel_logprob(xg, ids.cuda(), gp.cuda(), 0.5, hard=hard.cuda())
        assert_close(b, a, *TOL[dtype][0], "logprob")
        w = torch.randn(a.shape, dtype=a.dtype)
        (torch.where(torch.isfinite(a), a, 0.0) * w).sum().backward()
        (torch.where(torch.isfinite(b), b, 0.0) * w.cuda()).sum().backward()
        assert_close(xg.grad, xc.grad, *TOL[dtype][1], "grad_logits")
