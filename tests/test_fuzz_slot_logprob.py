"""Property-based fuzzing of topk_dirichlet_logprob / weight_gaussian_logprob (the slot_logprob
kernels; tests/_fuzz.py): the log-probability of the soft tokens soft_embed(noise=TopKDirichlet /
WeightGaussian) produced, recomputed from perturbed logits (some -inf, some rows hard, leading
dims), against the float64 reference (values and gradients), and invalid arguments against named
errors."""

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

import softkernels as sk
from softkernels.reference import (topk_dirichlet_logprob_reference,
                                   weight_gaussian_logprob_reference)
from _fuzz import FUZZ, expect_call_names, generator, invalid_arguments, keys, seeds



@st.composite
def valid_calls(draw):
    kind = draw(st.sampled_from(["dir", "gau"]))
    batch = draw(st.sampled_from([(1,), (3,), (2, 3), (0,), (2, 1, 2)]))
    B = math.prod(batch)
    V = draw(st.integers(1, 40))
    k = draw(st.integers(1, min(V, 8)))
    g = generator(draw(seeds))
    if kind == "dir":
        noise = sk.TopKDirichlet(alpha=draw(st.sampled_from([1.0, 0.3, 2.5])))
        kw = dict(alpha=noise.alpha, clamp=draw(st.sampled_from([(-5.0, 3.0), None, (-2.0, 1.0)])))
    else:
        noise = sk.WeightGaussian(sigma=draw(st.sampled_from([0.05, 0.2, 1e-3])))
        kw = dict(sigma=noise.sigma, radius=draw(st.sampled_from([0.15, math.inf, 0.01])))
    kw["min_weight"] = draw(st.sampled_from([0.05, 0.0, 0.3, 0.9]))
    T = draw(st.floats(0.3, 3.0))
    logits = torch.randn(B, V, generator=g, dtype=torch.float64) * 2
    if V > 1 and draw(st.booleans()):
        logits[torch.rand(B, V, generator=g) < 0.3] = -math.inf
        logits[:, 0] = 0.0                                 # a finite logit per row
    hard = torch.rand(B, generator=g) < 0.3
    out = sk.soft_embed(logits, torch.randn(V, 3, dtype=torch.float64), k=k, noise=noise,
                        temperature=T, top_k=draw(st.integers(0, V)), seed=draw(keys), hard=hard)
    shift = draw(st.sampled_from([0.0, 0.1, 1.0]))
    new = logits + torch.randn(B, V, generator=g, dtype=torch.float64) * shift
    if draw(st.booleans()):
        new = new.round()                                  # ties among the slot logits
    dtype = draw(st.sampled_from([torch.float64, torch.float32, torch.bfloat16]))
    stats = torch.float64 if dtype == torch.float64 else torch.float32
    V_ = new.shape[-1]
    return (kind, new.to(dtype).reshape(*batch, V_), out.ids.reshape(*batch, k),
            out.noise.to(stats).reshape(*batch, k), T,
            hard.reshape(batch) if draw(st.booleans()) else None, kw)


@FUZZ
@given(valid_calls())
def test_random_valid_calls_match_the_float64_reference(call):
    kind, logits, ids, draws, T, hard, kw = call
    fn, ref = ((sk.topk_dirichlet_logprob, topk_dirichlet_logprob_reference) if kind == "dir"
               else (sk.weight_gaussian_logprob, weight_gaussian_logprob_reference))
    x = logits.clone().requires_grad_()
    got = fn(x, ids, draws, T, hard, **kw)
    xr = logits.double().requires_grad_()
    want = ref(xr, ids, draws.double(), T, hard, **kw)
    tol = 1e-9 if logits.dtype == torch.float64 else 5e-4
    atol = tol
    if kind == "gau" and logits.dtype != torch.float64:
        # fp32 rounding of p~ (about 1e-7 (1 + max |z|)) moves v by up to |x - p~| / sigma^2
        # times that: the conditioning of the formula, not of the kernel.
        zmax = float(torch.nan_to_num(logits.double() / T, posinf=0.0, neginf=0.0).abs().max()
                     ) if logits.numel() else 0.0
        atol += 1e-6 * (1.0 + zmax) * min(kw["radius"], 2.0) / kw["sigma"] ** 2
    assert torch.equal(torch.isnan(got), torch.isnan(want)), (got, want)
    fin = torch.isfinite(want)
    assert torch.equal(torch.isinf(got), torch.isinf(want)), (got, want)
    torch.testing.assert_close(got.double()[fin], want.detach()[fin], rtol=tol, atol=atol)
    if got.numel() == 0 or logits.dtype == torch.bfloat16:
        return
    w = torch.randn(got.shape, dtype=torch.float64)
    gl, = torch.autograd.grad((torch.where(fin, got, 0.0) * w.to(got.dtype)).sum(), x)
    rgl, = torch.autograd.grad((torch.where(fin, want, 0.0) * w).sum(), xr)
    # A TopKDirichlet slot's derivative alpha (log G - digamma(c)) grows like 1 / p~.
    scale = 1.0 + float(rgl.abs().max())
    torch.testing.assert_close(gl.double(), rgl, rtol=tol * 10, atol=tol * 10 * scale)


B, V, K = 3, 10, 3
COMMON_BAD = [
    ("logits", [torch.randn(B, V).long(), [[0.0]], torch.randn(B, 0)]),
    ("ids", [torch.zeros(B, K), torch.zeros(B + 1, K, dtype=torch.long),
             torch.zeros(B, 1025, dtype=torch.long), torch.full((B, K), V),
             torch.full((B, K), -1)]),
    ("draws", [torch.zeros(B, K + 1), torch.zeros(B, K, dtype=torch.long),
               torch.full((B, K), math.nan), torch.full((B, K), math.inf)]),
    ("temperature", [0.0, math.inf, "1", -1.0]),
    ("hard", [torch.ones(B), torch.ones(B + 1, dtype=torch.bool)]),
    ("min_weight", [1.0, -0.1, math.nan]),
    ("validate", [1]),
]
DIR_BAD = COMMON_BAD + [
    ("alpha", [0.0, -1.0, math.nan, "1"]),
    ("clamp", [(1.0, 0.0), (0, math.nan), "x", (1,)]),
    ("draws", [-torch.ones(B, K)]),
]
GAU_BAD = COMMON_BAD + [
    ("sigma", [0.0, -0.1, math.nan, math.inf]),
    ("radius", [0.0, -1.0, math.nan]),
]


def _valid(g):
    return dict(logits=torch.randn(B, V, generator=g), ids=torch.randint(0, V, (B, K), generator=g),
                draws=torch.rand(B, K, generator=g))


@FUZZ
@given(invalid_arguments(DIR_BAD, _valid))
def test_random_invalid_topk_dirichlet_arguments_are_named(call):
    expect_call_names(sk.topk_dirichlet_logprob, ("logits", "ids", "draws"), call)


@FUZZ
@given(invalid_arguments(GAU_BAD, _valid))
def test_random_invalid_weight_gaussian_arguments_are_named(call):
    expect_call_names(sk.weight_gaussian_logprob, ("logits", "ids", "draws"), call)
