"""Property-based fuzzing of soft_embed (tests/_fuzz.py): random valid calls against the float64
reference, random invalid arguments against a ValueError / TypeError naming them."""

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

import softkernels as sk
from _compare import assert_matches_reference
from _fuzz import (FUZZ, expect_call_names, expect_named_error, generator, invalid_arguments,
                   keys, seeds)

noises = st.one_of(
    st.none(),
    st.builds(sk.Gumbel, tau=st.floats(0.1, 2.0), scale=st.floats(0.0, 2.0),
              clamp=st.sampled_from([(-1.5, 3.0), None, (-0.5, 0.5)])),
    st.builds(sk.Dirichlet, alpha=st.floats(0.5, 8.0)),
    st.builds(sk.Gaussian, sigma=st.floats(0.0, 1.0), relative=st.booleans()),
    # issue 12's kinds (WeightGaussian's sigma kept small: sum x near 0 makes the weights blow up)
    st.builds(sk.TopKDirichlet, alpha=st.floats(0.5, 8.0)),
    st.builds(sk.WeightGaussian, sigma=st.floats(0.0, 0.1)),
    st.builds(sk.DirichletGumbel, alpha=st.floats(0.5, 8.0), tau=st.floats(0.1, 2.0),
              scale=st.floats(0.0, 2.0), clamp=st.sampled_from([(-1.5, 3.0), None])),
    st.builds(sk.Gumbel, tau=st.floats(0.1, 2.0), scale=st.floats(0.0, 2.0),
              gprime=st.just("soft_grpo")),
)


@st.composite
def valid_calls(draw):
    B = draw(st.integers(0, 4))
    V = draw(st.integers(1, 48))
    D = draw(st.integers(1, 6))
    k = draw(st.integers(1, min(V, 8)))
    noise = draw(noises)
    # float32 logits: only noise-free / Gaussian rows, whose weights do not go through fp32
    # random draws the float64 reference recomputes differently.
    f32_ok = noise is None or isinstance(noise, sk.Gaussian)
    dtype = draw(st.sampled_from([torch.float64, torch.float32] if f32_ok else [torch.float64]))
    g = generator(draw(seeds))
    scale = draw(st.sampled_from([0.1, 1.0, 4.0]))
    logits = (torch.randn(B, V, generator=g, dtype=torch.float64) * scale).to(dtype)
    tied = draw(st.booleans())
    if tied:
        logits = logits.round()                            # ties at the cuts (ties= matters)
    if V > 1 and B and draw(st.booleans()):
        mask = torch.rand(B, V, generator=g) < 0.3
        mask[:, 0] = False                                 # keep one token per row
        logits[mask] = -math.inf
    emb = torch.randn(V + draw(st.integers(0, 3)), D, generator=g, dtype=torch.float64).to(dtype)

    def per_row(scalar_strategy, tensor_dtype):
        if B and draw(st.booleans()):
            return torch.tensor([draw(scalar_strategy) for _ in range(B)], dtype=tensor_dtype)
        return draw(scalar_strategy)

    kw = dict(k=k, noise=noise,
              temperature=per_row(st.floats(0.1, 4.0), torch.float64),
              top_k=per_row(st.integers(0, V + 2), torch.int64),
              # With tied logits the kept mass is often i / n exactly: keep top_p off those
              # limits, where float rounding decides (documented in csrc/common/filters.h).
              top_p=per_row(st.floats(0.05, 1.0).filter(
                  lambda x: x == 1.0 or not tied or
                  all(abs(x * n - round(x * n)) > 1e-6 for n in range(1, 50))), torch.float64),
              min_p=per_row(st.floats(0.0, 0.5), torch.float64),
              seed=per_row(keys, torch.int64), offset=per_row(keys, torch.int64),
              ties=draw(st.sampled_from(["exact", "keep_all"])))
    if B and draw(st.booleans()):
        kw["hard"] = torch.rand(B, generator=g) < 0.5
        if draw(st.booleans()):
            kw["hard_ids"] = torch.randint(0, V, (B,), generator=g)
    return logits, emb, kw


@FUZZ
@given(valid_calls())
def test_random_valid_calls_match_the_float64_reference(call):
    logits, emb, kw = call
    out = sk.soft_embed(logits, emb, **kw)
    ref_kw = dict(kw)
    if isinstance(kw["noise"], sk.Gaussian):
        ref_kw["noise"] = kw["noise"].absolute(emb)
    assert_matches_reference(out, logits, emb, **ref_kw)


B, V, D = 3, 12, 4
BAD = [
    ("k", [0, V + 1, 2.5, True, "2", 10 ** 30]),  # None is valid: k = V
    ("temperature", [0.0, -1.0, math.nan, math.inf, "hot", 1e-40, 10 ** 400,
                     torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1.0, math.nan, 1.0]),
                     torch.ones(B + 1), torch.ones(B, dtype=torch.int64)]),
    ("top_k", [-1, 1.5, "3", torch.tensor([1, -1, 2]), torch.ones(B)]),
    ("top_p", [0.0, 1.5, math.nan, -0.1, torch.tensor([0.5, 0.0, 1.0]),
               torch.tensor([0.5, 1e-50, 1.0], dtype=torch.float64)]),
    ("min_p", [1.0, -0.1, math.nan, torch.tensor([0.0, 1.0, 0.0])]),
    ("seed", [2 ** 64, -(2 ** 63) - 1, 1.5, torch.ones(B), torch.ones(B + 2, dtype=torch.int64)]),
    ("offset", [2 ** 63, "0", torch.zeros(2, dtype=torch.int64)]),
    ("noise", ["gumbel", 3, object()]),
    ("validate", [1, None, "yes"]),
    ("ties", ["all", 1, None, "EXACT"]),
    ("hard", [torch.ones(B), torch.ones(B + 1, dtype=torch.bool), [True] * B]),
    ("logits", [[[1.0]], torch.randn(V), torch.randint(0, 5, (B, V)), torch.randn(B, 0)]),
    ("embedding", [torch.randn(V - 1, D), torch.randn(V), torch.randn(V, D).to(torch.int32)]),
]


def _valid_args(g):
    r = lambda lo, hi: float(torch.empty(()).uniform_(lo, hi, generator=g))  # noqa: E731
    return dict(logits=torch.randn(B, V, generator=g), embedding=torch.randn(V, D, generator=g),
                k=int(torch.randint(1, 5, (), generator=g)), temperature=r(0.5, 2.0),
                top_k=int(torch.randint(0, V + 1, (), generator=g)), top_p=r(0.1, 1.0))


@FUZZ
@given(invalid_arguments(BAD, _valid_args))
def test_random_invalid_arguments_are_named(call):
    expect_call_names(sk.soft_embed, ("logits", "embedding"), call)


@FUZZ
@given(seeds, st.integers(1, 3))
def test_hard_ids_out_of_range_and_without_hard_are_named(seed, B):
    g = generator(seed)
    logits, emb = torch.randn(B, V, generator=g), torch.randn(V, D, generator=g)
    bad = torch.randint(V, 2 * V, (B,), generator=g)
    expect_named_error(lambda: sk.soft_embed(logits, emb, k=2, hard=torch.ones(B, dtype=torch.bool),
                                             hard_ids=bad), "hard_ids")
    expect_named_error(lambda: sk.soft_embed(logits, emb, k=2, hard_ids=bad % V), "hard_ids")
