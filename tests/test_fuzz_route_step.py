"""Property-based fuzzing of route_step (tests/_fuzz.py): the fused state machine against the
reference loop, bit for bit, including counters at the int32 limit."""

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

import softkernels as sk
from softkernels.reference import route_step_reference
from _fuzz import FUZZ, expect_call_names, generator, invalid_arguments, seeds

I32 = 2 ** 31 - 1
counters = st.one_of(st.integers(0, 40), st.integers(I32 - 3, I32))


@st.composite
def valid_calls(draw):
    B = draw(st.integers(0, 6))
    g = generator(draw(seeds))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    entropy = (torch.rand(B, generator=g, dtype=torch.float64) * 0.05).to(dtype)
    max_prob = torch.rand(B, generator=g, dtype=torch.float64).to(dtype)
    te = draw(st.one_of(st.none(), st.integers(0, 5)))
    next_ids = torch.randint(0, 6, (B,), generator=g)
    state = sk.RouteState(torch.randint(0, 2, (B,), generator=g).to(torch.int8),
                          torch.tensor([draw(counters) for _ in range(B)], dtype=torch.int32),
                          torch.tensor([draw(counters) for _ in range(B)], dtype=torch.int32))
    kw = dict(think_end_id=te,
              cold_stop_entropy=draw(st.one_of(st.none(), st.floats(0.0, 0.05))),
              cold_stop_patience=draw(st.one_of(st.integers(1, 50), st.integers(I32 - 2, 2 ** 62))),
              router_threshold=draw(st.one_of(st.none(), st.floats(0.01, 1.0))),
              max_think_tokens=draw(st.one_of(st.none(), st.integers(0, 60), st.just(I32))))
    return entropy, max_prob, next_ids, state, kw


@FUZZ
@given(valid_calls())
def test_random_valid_steps_match_the_reference(call):
    entropy, max_prob, next_ids, state, kw = call
    got = sk.route_step(entropy, max_prob, next_ids, state, **kw)
    want = route_step_reference(entropy, max_prob, next_ids, state, **kw)
    assert torch.equal(got.mode, want.mode)
    assert torch.equal(got.token, want.token)
    for a, b in zip(got.state, want.state):
        assert a.dtype == b.dtype and torch.equal(a, b)


B = 3
BAD = [
    ("think_end_id", [-1, 2 ** 63, 1.0, "5", True]),
    ("cold_stop_entropy", [-0.1, math.nan, math.inf, "x", 10 ** 400]),
    ("cold_stop_patience", [0, -5, 2 ** 63, 1.5, None]),
    ("router_threshold", [0.0, 1.5, math.nan, "0.5"]),
    ("max_think_tokens", [-1, 2 ** 63, 2.0]),
    ("validate", [1, "no"]),
    ("entropy", [torch.zeros(B, dtype=torch.int64), torch.zeros(B, 1), [0.0] * B]),
    ("max_prob", [torch.zeros(B + 1), torch.zeros(B, dtype=torch.float64)]),
    ("next_ids", [torch.zeros(B), torch.zeros(B + 1, dtype=torch.int64)]),
    ("state", [None, (1, 2), "state"]),
    ("state.phase", [torch.full((B,), 2, dtype=torch.int8), torch.ones(B, dtype=torch.int32)]),
    ("state.low_count", [torch.full((B,), -1, dtype=torch.int32), torch.zeros(B + 1, dtype=torch.int32)]),
    ("state.think_steps", [torch.tensor([0, -3, 0], dtype=torch.int32), torch.zeros(B)]),
]


@FUZZ
@given(invalid_arguments(BAD, lambda g: dict(entropy=torch.rand(B, generator=g),
                                             max_prob=torch.rand(B, generator=g),
                                             next_ids=torch.zeros(B, dtype=torch.long),
                                             state=sk.RouteState.start(B))))
def test_random_invalid_arguments_are_named(call):
    expect_call_names(sk.route_step, ("entropy", "max_prob", "next_ids", "state"), call)
