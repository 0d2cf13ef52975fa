"""Property-based fuzzing of selective iteration's ops (tests/_fuzz.py): select_rows, add_rows_
and iteration_embeds against their float64 references."""

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

import softkernels as sk
from softkernels.reference import (add_rows_reference, iteration_embeds_reference,
                                   select_rows_reference)
from _fuzz import FUZZ, expect_named_error, generator, seeds

dtypes = st.sampled_from([torch.float32, torch.float64, torch.bfloat16, torch.float16])


@FUZZ
@given(seeds, st.integers(0, 12), dtypes, st.one_of(st.floats(-2, 2), st.just(math.inf),
                                                   st.just(-math.inf)), st.booleans())
def test_select_rows_matches_the_reference(seed, B, dtype, threshold, with_nan):
    scores = torch.randn(B, generator=generator(seed)).to(dtype)
    if with_nan and B:
        scores[B // 2] = math.nan
    idx, count = sk.select_rows(scores, threshold)
    want_idx, want_count = select_rows_reference(scores, threshold)
    assert torch.equal(idx, want_idx) and torch.equal(count, want_count)


@FUZZ
@given(seeds, st.integers(1, 6), st.integers(1, 9), st.integers(0, 8), dtypes,
       st.integers(-3, 12), st.booleans())
def test_add_rows_matches_the_reference(seed, B, V, N, dtype, count, as_tensor):
    g = generator(seed)
    logits = torch.randn(B, V, generator=g).to(dtype)
    src = torch.randn(N, V, generator=g).to(dtype)
    idx = torch.randint(0, B, (max(N, 1),), generator=g)
    want = add_rows_reference(logits, src, idx, max(count, 0))
    c = torch.tensor([count]) if as_tensor else max(count, 0)
    sk.add_rows_(logits, src, idx, c)
    torch.testing.assert_close(logits, want, rtol=0, atol=0)


@FUZZ
@given(seeds, st.integers(0, 5), st.integers(1, 40), st.integers(1, 6), st.integers(1, 50),
       st.booleans())
def test_iteration_embeds_matches_the_reference(seed, B, V, D, top_m, subset):
    g = generator(seed)
    logits = torch.randn(B, V, generator=g, dtype=torch.float64)
    emb = torch.randn(V, D, generator=g, dtype=torch.float64)
    rows = torch.randint(0, B, (3,), generator=g) if subset and B else None
    got = sk.iteration_embeds(logits, emb, rows, top_m=top_m)
    want = iteration_embeds_reference(logits if rows is None else logits[rows], emb, top_m)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


B, V = 3, 8
BAD = [
    ("select_rows", "scores", [torch.zeros(B, dtype=torch.int64), torch.zeros(B, 2), [0.1]]),
    ("select_rows", "threshold", [math.nan, "0.5", True, 10 ** 400]),
    ("add_rows_", "count", [-1, 2 ** 63, 1.5, torch.tensor([1, 2]), torch.tensor([1.0])]),
    ("add_rows_", "idx", [torch.tensor([0, B]), torch.tensor([-1]), torch.zeros(B)]),
    ("add_rows_", "src", [torch.zeros(B, V + 1), torch.zeros(B, V, dtype=torch.float64)]),
    ("add_rows_", "validate", [1]),
    ("iteration_embeds", "top_m", [0, 1025, 2.0, 10 ** 30]),
    ("iteration_embeds", "rows", [torch.tensor([B]), torch.tensor([-1]), torch.zeros(1)]),
    ("iteration_embeds", "validate", ["yes"]),
]


@st.composite
def invalid_calls(draw):
    op, name, values = draw(st.sampled_from(BAD))
    return op, name, draw(st.sampled_from(values)), draw(seeds)


@FUZZ
@given(invalid_calls())
def test_random_invalid_arguments_are_named(call):
    op, name, value, seed = call
    g = generator(seed)
    logits = torch.randn(B, V, generator=g)
    if op == "select_rows":
        args = dict(scores=torch.rand(B, generator=g), threshold=0.5)
        args[name] = value
        expect_named_error(lambda: sk.select_rows(**args), name)
    elif op == "add_rows_":
        args = dict(src=torch.randn(B, V, generator=g), idx=torch.arange(B), count=B)
        args[name] = value
        expect_named_error(lambda: sk.add_rows_(logits, **args), name)
    else:
        args = dict(rows=None, top_m=4)
        args[name] = value
        expect_named_error(lambda: sk.iteration_embeds(logits, torch.randn(V, 2), **args), name)
