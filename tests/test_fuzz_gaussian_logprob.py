"""Property-based fuzzing of gaussian_logprob (tests/_fuzz.py): values and gradients against the
float64 reference over shapes, broadcasting, per-row sigma and extreme (but finite) sigma."""

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

import softkernels as sk
from softkernels.reference import gaussian_logprob_reference
from _fuzz import FUZZ, expect_call_names, generator, invalid_arguments, seeds

sigmas = st.one_of(st.floats(1e-3, 1e3), st.sampled_from([1e-25, 1e-12, 1e12, 1e20, 1e30]))


@st.composite
def valid_calls(draw):
    lead = tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=3)))
    D = draw(st.integers(1, 8))
    g = generator(draw(seeds))
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    x = torch.randn(*lead, D, generator=g, dtype=torch.float64)
    s = draw(sigmas)
    # x - mean on the scale of sigma (within float32's range), so the value is finite.
    mean = x + torch.randn(*lead, D, generator=g, dtype=torch.float64) * min(s, 1e3)
    if lead and draw(st.booleans()):
        mean = mean[(slice(0, 1),) * len(lead)]          # broadcast over the leading dims
    if lead and draw(st.booleans()):
        sigma = torch.rand(lead, generator=g, dtype=torch.float64) * s + s / 2
    else:
        sigma = s
    return x.to(dtype), mean.to(dtype), sigma


@FUZZ
@given(valid_calls())
def test_random_valid_calls_match_the_float64_reference(call):
    x, mean, sigma = call
    xg = x.clone().requires_grad_()
    got = sk.gaussian_logprob(xg, mean, sigma)
    want = gaussian_logprob_reference(x, mean, sigma)
    if x.dtype == torch.float32:
        want = want.float().double()       # what float32 can represent (+-inf where it cannot)
    tol = 1e-9 if x.dtype == torch.float64 else 1e-5
    assert torch.equal(torch.isinf(got), torch.isinf(want.to(got.dtype)))
    fin = torch.isfinite(want)
    torch.testing.assert_close(got.double()[fin], want[fin], rtol=tol, atol=tol)
    if bool(fin.all()) and x.dtype == torch.float64:
        (gx,) = torch.autograd.grad(got.sum(), xg)
        ref = -(x - mean) / (torch.as_tensor(sigma, dtype=torch.float64).unsqueeze(-1) ** 2)
        torch.testing.assert_close(gx, ref.expand_as(gx), rtol=1e-9, atol=1e-12)


B, D = 3, 4
BAD = [
    ("x", [torch.randn(B, D).long(), [[0.0]], torch.randn(B, 0)]),
    ("mean", [torch.randn(B, D).double(), torch.randn(B, D + 1), torch.randn(2, D)]),
    ("sigma", [0.0, -1.0, math.nan, math.inf, "1", 10 ** 400, torch.zeros(B),
               torch.tensor([1.0, -1.0, 1.0]), torch.ones(B, dtype=torch.int64), torch.ones(B + 1)]),
    ("validate", [1, None]),
]


@FUZZ
@given(invalid_arguments(BAD, lambda g: dict(x=torch.randn(B, D, generator=g),
                                             mean=torch.randn(B, D, generator=g), sigma=0.5)))
def test_random_invalid_arguments_are_named(call):
    expect_call_names(sk.gaussian_logprob, ("x", "mean", "sigma"), call)
