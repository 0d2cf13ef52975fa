"""Property-based fuzzing of mix_embeddings (tests/_fuzz.py)."""

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

import softkernels as sk
from softkernels.reference import mix_embeddings_reference
from _fuzz import (FUZZ, expect_call_names, expect_named_error, generator, invalid_arguments,
                   keys, seeds)


@st.composite
def valid_calls(draw):
    lead = tuple(draw(st.lists(st.integers(0, 3), min_size=0, max_size=2)))
    k = draw(st.integers(1, 6))
    Ve, D = draw(st.integers(1, 30)), draw(st.integers(1, 7))
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    g = generator(draw(seeds))
    emb = torch.randn(Ve, D, generator=g, dtype=torch.float64).to(dtype)
    ids = torch.randint(0, Ve, (*lead, k), generator=g)
    weights = torch.rand(*lead, k, generator=g, dtype=torch.float64).to(dtype)
    # Zero-weight slots may hold any id (padding): they are not read.
    pad = torch.rand(*lead, k, generator=g) < 0.3
    weights[pad] = 0
    ids[pad] = draw(st.sampled_from([-1, Ve, 2 ** 40]))
    noise = draw(st.one_of(st.none(), st.builds(sk.Gaussian, sigma=st.floats(0.0, 1.0),
                                                relative=st.booleans()),
                           st.just(sk.Gumbel()), st.just(sk.Dirichlet())))
    return emb, ids, weights, dict(noise=noise, seed=draw(keys), offset=draw(keys))


@FUZZ
@given(valid_calls())
def test_random_valid_calls_match_the_float64_reference(call):
    emb, ids, weights, kw = call
    got = sk.mix_embeddings(emb, ids, weights, **kw)
    want = mix_embeddings_reference(emb, ids, weights, **kw)
    assert got.shape == (*ids.shape[:-1], emb.shape[1]) and got.dtype == emb.dtype
    tol = 1e-9 if emb.dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol * 10)


V, D, N, K = 10, 3, 4, 3
BAD = [
    ("embedding", [torch.randn(V), torch.randn(V, D).long(), [[1.0]]]),
    ("ids", [torch.zeros(N, K), torch.zeros(()), [[0]]]),
    ("weights", [torch.ones(N, K + 1), torch.ones(N, K, dtype=torch.int64), torch.ones(N + 1, K)]),
    ("seed", [2 ** 63, 1.5, torch.zeros(N + 1, dtype=torch.int64), torch.zeros(N)]),
    ("offset", [-(2 ** 63) - 1, "0", torch.zeros(2, N, dtype=torch.int64)]),
    ("noise", ["gaussian", 0.5]),
    ("validate", [0, None]),
]


@FUZZ
@given(invalid_arguments(BAD, lambda g: dict(embedding=torch.randn(V, D, generator=g),
                                             ids=torch.randint(0, V, (N, K), generator=g),
                                             weights=torch.rand(N, K, generator=g))))
def test_random_invalid_arguments_are_named(call):
    expect_call_names(sk.mix_embeddings, ("embedding", "ids", "weights"), call)


@FUZZ
@given(seeds, st.sampled_from([-1, V, 2 ** 62, -(2 ** 62)]))
def test_weighted_ids_outside_the_table_are_named(seed, bad):
    g = generator(seed)
    ids = torch.randint(0, V, (N, K), generator=g)
    r, j = int(torch.randint(0, N, (1,), generator=g)), int(torch.randint(0, K, (1,), generator=g))
    ids[r, j] = bad
    w = torch.rand(N, K, generator=g) + 0.1
    expect_named_error(lambda: sk.mix_embeddings(torch.randn(V, D), ids, w), "ids")
    out = sk.mix_embeddings(torch.randn(V, D), ids, w, validate=False)
    assert torch.isnan(out[r]).all() and not math.isnan(float(out[(r + 1) % N, 0]))
