"""route_step (Cold Stop, router, budget) against its reference, over many random steps."""

import pytest
import torch

import softkernels as sk
from softkernels.reference import route_step_reference

CONFIGS = [
    dict(),
    dict(think_end_id=7),
    dict(think_end_id=7, cold_stop_entropy=0.5, cold_stop_patience=3),
    dict(cold_stop_entropy=0.5, cold_stop_patience=2),                  # no think-end token
    dict(think_end_id=7, router_threshold=0.4),
    dict(think_end_id=7, max_think_tokens=5),
    dict(max_think_tokens=0),
    dict(think_end_id=3, cold_stop_entropy=1.0, cold_stop_patience=1, router_threshold=0.9,
         max_think_tokens=6),
]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_matches_reference_over_steps(device, cfg):
    B, steps = 37, 20
    state = sk.RouteState.start(B, device=device)
    ref_state = sk.RouteState.start(B)
    for _ in range(steps):
        entropy = torch.rand(B, device=device) * 1.2
        max_prob = torch.rand(B, device=device)
        next_ids = torch.randint(0, 12, (B,), device=device)
        got = sk.route_step(entropy, max_prob, next_ids, state, **cfg)
        want = route_step_reference(entropy.cpu(), max_prob.cpu(), next_ids.cpu(), ref_state, **cfg)
        assert torch.equal(got.mode.cpu(), want.mode)
        assert torch.equal(got.token.cpu(), want.token)
        for g, w in zip(got.state, want.state):
            assert torch.equal(g.cpu(), w)
        state, ref_state = got.state, want.state


def test_cold_stop_forces_think_end_after_patience():
    B = 2
    state = sk.RouteState.start(B)
    ids = torch.tensor([1, 1])
    modes = []
    for t in range(5):
        ent = torch.tensor([0.001, 0.001 if t != 1 else 1.0])   # row 1 resets at t = 1
        step = sk.route_step(ent, torch.ones(B), ids, state, think_end_id=9,
                             cold_stop_entropy=0.01, cold_stop_patience=3)
        modes.append(step.mode.tolist())
        if step.mode[0] == 2:
            assert step.token[0] == 9
        state = step.state
    # row 0: soft, soft, forced end at the third low-entropy step, then answering (hard)
    assert [m[0] for m in modes] == [1, 1, 2, 0, 0]
    # row 1: the reset at t = 1 delays its Cold Stop to t = 4
    assert [m[1] for m in modes] == [1, 1, 1, 1, 2]


def test_natural_think_end_and_budget():
    state = sk.RouteState.start(3)
    step = sk.route_step(torch.ones(3), torch.ones(3), torch.tensor([9, 1, 1]), state,
                         think_end_id=9, max_think_tokens=1)
    assert step.mode.tolist() == [0, 1, 1] and step.state.phase.tolist() == [0, 1, 1]
    step = sk.route_step(torch.ones(3), torch.ones(3), torch.tensor([1, 1, 9]), step.state,
                         think_end_id=9, max_think_tokens=1)
    assert step.mode.tolist() == [0, 2, 0] and step.token.tolist() == [1, 9, 9]


def test_router_makes_low_confidence_steps_hard():
    state = sk.RouteState.start(3)
    step = sk.route_step(torch.ones(3), torch.tensor([0.2, 0.5, 0.9]), torch.zeros(3, dtype=torch.long),
                         state, router_threshold=0.5)
    assert step.mode.tolist() == [0, 1, 1]
    assert step.state.phase.tolist() == [1, 1, 1]   # a routed hard step does not end thinking


@pytest.mark.parametrize("kw,match", [
    (dict(think_end_id=-1), r"think_end_id \(a token id or None\) must be in \[0, .*got -1"),
    (dict(cold_stop_entropy=-0.1), r"cold_stop_entropy must be in \[0.0, inf\), got -0.1"),
    (dict(cold_stop_patience=0), r"cold_stop_patience must be in \[1, .*got 0"),
    (dict(router_threshold=1.5), r"router_threshold must be in \(0.0, 1.0\], got 1.5"),
    (dict(max_think_tokens=-2), r"max_think_tokens must be in \[0, .*got -2"),
])
def test_bad_config(kw, match):
    state = sk.RouteState.start(2)
    with pytest.raises(ValueError, match=match):
        sk.route_step(torch.ones(2), torch.ones(2), torch.zeros(2, dtype=torch.long), state, **kw)


def test_bad_tensors():
    state = sk.RouteState.start(2)
    with pytest.raises(TypeError, match="next_ids must have dtype"):
        sk.route_step(torch.ones(2), torch.ones(2), torch.zeros(2), state)
    with pytest.raises(ValueError, match=r"max_prob must be a 1-D tensor"):
        sk.route_step(torch.ones(2), torch.ones(2, 1), torch.zeros(2, dtype=torch.long), state)
    with pytest.raises(ValueError, match=r"next_ids must have shape \[B\] = \[2\]"):
        sk.route_step(torch.ones(2), torch.ones(2), torch.zeros(3, dtype=torch.long), state)


def test_opcheck(device):
    state = sk.RouteState.start(5, device=device)
    args = (torch.rand(5, device=device), torch.rand(5, device=device),
            torch.randint(0, 9, (5,), device=device), *state, 3, 0.5, 2, 0.3, 4)
    torch.library.opcheck(torch.ops.softkernels.route_step.default, args)
