"""Property-based fuzzing (tests/_fuzz.py) of the ColdStop options in softkernels.policy against
the port of Soft Thinking's / RST's stopping rule (tests/ports/soft_thinking.py): random score
sequences (confident / flat steps, model-chosen think-end tokens), thresholds, patience,
normalisation, batch sizes including 1."""

import math

import torch
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

import softkernels as sk
from softkernels import policy
from ports import soft_thinking as port
from _fuzz import EXAMPLES, FUZZ, generator, seeds

EOS, TE = 2, 5


@settings(FUZZ, max_examples=max(EXAMPLES // 10, 10))
@given(seed=seeds, B=st.integers(1, 5), T=st.integers(1, 30), V=st.integers(8, 80),
       patience=st.integers(1, 6), p_low=st.floats(0.0, 1.0), p_end=st.floats(0.0, 0.2),
       normalized=st.booleans(), temperature=st.sampled_from([0.6, 1.0]))
def test_policy_matches_port(seed, B, T, V, patience, p_low, p_end, normalized, temperature):
    g = generator(seed)
    s = torch.randn(T, B, V, generator=g)
    low = torch.rand(T, B, generator=g) < p_low
    top = torch.randint(6, V, (T, B), generator=g)
    top = torch.where(torch.rand(T, B, generator=g) < p_end, torch.full_like(top, TE), top)
    s.scatter_add_(2, top[..., None], torch.where(low, 40.0, 3.0)[..., None])
    s[..., EOS] = -50.0
    thr = 0.01 / math.log(V) if normalized else 0.01
    config = sk.SoftThinkingConfig(k=min(4, V), temperature=temperature, think_end=TE,
                                   cold_stop=sk.ColdStop(thr, patience, answer_abort=True,
                                                         normalized=normalized))
    E = torch.randn(V, 4, generator=g)
    cfg = policy.StepConfig.resolve(config, TE, E, EOS)
    state, seeds_ = sk.RouteState.start(B), policy.row_seeds(seed, B)
    ours, done, last = [[] for _ in range(B)], [False] * B, None
    for t in range(T):
        st_ = policy.step(s[t], E, cfg, state, seeds_, t, last_token=last)
        tok = torch.where(st_.force, st_.token, s[t].argmax(-1))
        for b in range(B):
            if not done[b]:
                ours[b].append(int(tok[b]))
                done[b] = int(tok[b]) == EOS
        state, last = st_.state, tok
    ent = port.entropy(s.reshape(T * B, V), temperature, normalized).reshape(T, B)
    theirs = port.run(s.argmax(-1).T.tolist(), ent.T.tolist(), threshold=thr, patience=patience,
                      think_end=TE, eos=EOS)
    assert ours == [r.output[:-1] + [EOS] if r.finished == "abort" else r.output for r in theirs]
