"""Property-based fuzzing of gumbel_logprob (tests/_fuzz.py): the log-probability of the soft tokens
soft_embed(noise=Gumbel) produced, recomputed from perturbed logits, against the float64 reference
(values and gradients), and invalid arguments against named errors."""

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

import softkernels as sk
from softkernels.reference import gumbel_logprob_reference
from _fuzz import FUZZ, expect_call_names, generator, invalid_arguments, keys, seeds


@st.composite
def valid_calls(draw):
    B = draw(st.integers(1, 4))
    V = draw(st.integers(2, 40))
    k = draw(st.integers(1, min(V, 6)))
    g = generator(draw(seeds))
    noise = sk.Gumbel(tau=draw(st.floats(0.1, 2.0)), scale=draw(st.floats(0.25, 2.0)),
                      clamp=draw(st.sampled_from([(-1.5, 3.0), None, (-0.5, 1.0)])))
    T = draw(st.floats(0.3, 3.0))
    logits = torch.randn(B, V, generator=g, dtype=torch.float64) * 2
    st_ = sk.soft_embed(logits, torch.randn(V, 3, dtype=torch.float64), k=k, noise=noise,
                        temperature=T, top_k=draw(st.integers(0, V)), seed=draw(keys),
                        hard=torch.rand(B, generator=g) < 0.3)
    shift = draw(st.sampled_from([0.0, 0.1, 1.0]))
    new = logits + torch.randn(B, V, generator=g, dtype=torch.float64) * shift
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    kw = dict(tau=noise.tau, temperature=T, clamp=noise.clamp, scale=noise.scale,
              min_weight=draw(st.sampled_from([math.exp(-3.0), 0.0, 0.2])))
    hard = (st_.weights[:, 0] == 1) & (st_.noise[:, 1:] == -math.inf).all(-1) if k > 1 else None
    # At the rollout's own logits a clamped draw is recovered exactly at the clamp bound, where
    # the derivative is one-sided: values are compared there, gradients only off the bounds.
    kw["_grad"] = shift > 0 or noise.clamp is None
    return new.to(dtype), st_.ids, st_.noise.to(torch.float64 if dtype == torch.float64 else
                                                torch.float32), hard, kw


@FUZZ
@given(valid_calls())
def test_random_valid_calls_match_the_float64_reference(call):
    logits, ids, gp, hard, kw = call
    x = logits.clone().requires_grad_()
    tau = kw.pop("tau")
    check_grad = kw.pop("_grad")
    got = sk.gumbel_logprob(x, ids, gp, tau, hard=hard, **kw)
    xr = logits.double().requires_grad_()
    want = gumbel_logprob_reference(xr, ids, gp.double(), tau, hard=hard, **kw)
    tol = 1e-9 if logits.dtype == torch.float64 else 2e-4
    torch.testing.assert_close(got.double(), want.detach(), rtol=tol, atol=tol)
    if not check_grad:
        return
    w = torch.randn(got.shape, dtype=torch.float64)
    gl, = torch.autograd.grad((got * w.to(got.dtype)).sum(), x)
    rgl, = torch.autograd.grad((want * w).sum(), xr)
    torch.testing.assert_close(gl.double(), rgl, rtol=tol * 10, atol=tol * 10)


B, V, K = 3, 10, 3
BAD = [
    ("logits", [torch.randn(B, V).long(), [[0.0]], torch.randn(B, 0)]),
    ("ids", [torch.zeros(B, K), torch.zeros(B + 1, K, dtype=torch.long),
             torch.zeros(B, 1025, dtype=torch.long), torch.full((B, K), V)]),
    ("g_prime", [torch.zeros(B, K + 1), torch.zeros(B, K, dtype=torch.long),
                 torch.full((B, K), math.nan)]),
    ("tau", [0.0, -1.0, math.nan, "0.5", 10 ** 400]),
    ("temperature", [0.0, math.inf, "1"]),
    ("clamp", [(1.0, 0.0), (0, math.nan), "x", (0, 10 ** 400), (1,)]),
    ("hard", [torch.ones(B), torch.ones(B + 1, dtype=torch.bool)]),
    ("scale", [0.0, -2.0]),
    ("min_weight", [1.0, -0.1, math.nan]),
    ("validate", [1]),
]


@FUZZ
@given(invalid_arguments(BAD, lambda g: dict(logits=torch.randn(B, V, generator=g),
                                             ids=torch.randint(0, V, (B, K), generator=g),
                                             g_prime=torch.randn(B, K, generator=g), tau=0.5)))
def test_random_invalid_arguments_are_named(call):
    expect_call_names(sk.gumbel_logprob, ("logits", "ids", "g_prime", "tau"), call)
