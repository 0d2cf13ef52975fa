"""Cold Stop options against an independent port of Soft Thinking's / RST's released stopping rule
(tests/ports/soft_thinking.py): ColdStop(answer_abort=True) and ColdStop(normalized=True).

The policy (softkernels.policy.step, shared by the Hugging Face layer and the vLLM plug-in) and
the port see the same scores; the port recomputes the entropy in float64 itself. The only
difference the port allows is the documented one: where their engine appends one more sampled
token after the abort, softkernels emits the end-of-sequence token there.
"""

import math

import pytest
import torch

import softkernels as sk
from softkernels import policy
from ports import soft_thinking as port

EOS, TE = 2, 5


def _scores(B, T, V, seed, p_low, p_end):
    """Rows of scores whose steps are either confident (entropy ~1e-10 nats) or flat (~1-3 nats);
    at some steps the think-end token is the top one. EOS is never the top token."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(T, B, V, generator=g)
    low = torch.rand(T, B, generator=g) < p_low
    top = torch.randint(6, V, (T, B), generator=g)
    end = torch.rand(T, B, generator=g) < p_end
    top = torch.where(end, torch.full_like(top, TE), top)
    bump = torch.where(low, 40.0, 3.0)
    s.scatter_add_(2, top[..., None], bump[..., None])
    s[..., EOS] = -50.0
    return s


def _policy_run(scores, config, V):
    T, B, _ = scores.shape
    E = torch.randn(V, 8, generator=torch.Generator().manual_seed(0))
    cfg = policy.StepConfig.resolve(config, TE, E, EOS)
    state = sk.RouteState.start(B)
    seeds = policy.row_seeds(0, B)
    out, done, last = [[] for _ in range(B)], [False] * B, None
    for t in range(T):
        st = policy.step(scores[t], E, cfg, state, seeds, t, last_token=last, validate=t == 0)
        tok = torch.where(st.force, st.token, scores[t].argmax(-1))
        for b in range(B):
            if not done[b]:
                out[b].append(int(tok[b]))
                done[b] = int(tok[b]) == EOS
        state, last = st.state, tok
    return out


@pytest.mark.parametrize("normalized", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_answer_abort_matches_soft_thinking_port(seed, normalized):
    B, T, V = 16, 60, 64
    scores = _scores(B, T, V, seed, p_low=0.75, p_end=0.04)
    thr = 0.01 / math.log(V) if normalized else 0.01
    config = sk.SoftThinkingConfig(k=4, temperature=0.6, think_end=TE, cold_stop=sk.ColdStop(
        thr, 3, answer_abort=True, normalized=normalized))
    ours = _policy_run(scores, config, V)
    ent = port.entropy(scores.reshape(T * B, V), 0.6, normalized).reshape(T, B)
    theirs = port.run(scores.argmax(-1).T.tolist(), ent.T.tolist(), threshold=thr, patience=3,
                      think_end=TE, eos=EOS)
    aborted = 0
    for b in range(B):
        r = theirs[b]
        if r.finished == "abort":
            aborted += 1
            assert ours[b] == r.output[:-1] + [EOS]
        else:
            assert ours[b] == r.output
    # The rule was exercised: rows ended thinking by Cold Stop and by the model, and aborted.
    forced_end = sum(TE in o for o in ours)
    assert aborted >= 3 and forced_end >= B // 2


def test_without_answer_abort_answering_rows_never_end():
    B, T, V = 8, 40, 64
    scores = _scores(B, T, V, 1, p_low=0.9, p_end=0.0)
    config = sk.SoftThinkingConfig(k=4, think_end=TE, cold_stop=sk.ColdStop(0.01, 3))
    ours = _policy_run(scores, config, V)
    assert all(len(o) == T and EOS not in o and TE in o for o in ours)
    ent = port.entropy(scores.reshape(T * B, V), 0.6).reshape(T, B)
    theirs = port.run(scores.argmax(-1).T.tolist(), ent.T.tolist(), threshold=0.01, patience=3,
                      think_end=TE, eos=EOS)
    assert sum(r.finished == "abort" for r in theirs) >= B // 2   # answer_abort would end them


def test_normalized_threshold_is_entropy_over_ln_v():
    """normalized=True with threshold t fires exactly where the port's entropy / ln V < t: rows
    whose entropy lies between t and t * ln V stop with it and not without it."""
    B, T, V = 6, 12, 200
    g = torch.Generator().manual_seed(3)
    # Entropy ~0.3 nats: above 0.1 nats, below 0.1 * ln 200 = 0.53 nats.
    scores = torch.randn(T, B, V, generator=g) * 0.01
    scores[..., 7] += 5.1
    scores[..., EOS] = -50.0
    ent = port.entropy(scores.reshape(T * B, V), 0.6, True).reshape(T, B)
    assert ((ent * math.log(V) > 0.1) & (ent < 0.1)).all()
    for normalized, want_end in ((True, True), (False, False)):
        config = sk.SoftThinkingConfig(k=4, think_end=TE, temperature=0.6,
                                       cold_stop=sk.ColdStop(0.1, 4, answer_abort=True,
                                                             normalized=normalized))
        ours = _policy_run(scores, config, V)
        assert all((o[3] == TE) == want_end for o in ours)
        theirs = port.run(scores.argmax(-1).T.tolist(),
                          (ent if normalized else ent * math.log(V)).T.tolist(), threshold=0.1,
                          patience=4, think_end=TE, eos=EOS)
        assert ours == [r.output[:-1] + [EOS] if r.finished == "abort" else r.output
                        for r in theirs]


def test_answer_abort_needs_an_eos_token():
    config = sk.SoftThinkingConfig(cold_stop=sk.ColdStop(answer_abort=True))
    with pytest.raises(ValueError, match="answer_abort"):
        policy.StepConfig.resolve(config, None, torch.zeros(4, 2), None)
    with pytest.raises(TypeError, match="ColdStop.answer_abort"):
        sk.ColdStop(answer_abort=1)
    with pytest.raises(TypeError, match="ColdStop.normalized"):
        sk.ColdStop(normalized="yes")


# --------------------------------------------------------------------------------------------
# Hugging Face generate end to end (tiny random models).

class _Confident:
    """Makes every row confident (low entropy) from step `start` on, except at `flat` steps."""

    def __init__(self, prompt_len, start, flat=()):
        self.P, self.start, self.flat = prompt_len, start, set(flat)

    def __call__(self, input_ids, scores):
        t = input_ids.shape[1] - self.P
        scores = scores.clone()
        scores[:, 2] = -1e4                       # the models' EOS (tests/_hf_models.py)
        if t >= self.start and (t % 7) not in self.flat:
            top = scores.argmax(-1, keepdim=True)
            scores.scatter_add_(1, top, torch.full_like(top, 60.0, dtype=scores.dtype))
        elif t >= self.start:
            scores = scores * 0.0
        return scores


@pytest.mark.parametrize("family", ["llama", "qwen3", "gpt2"])
def test_hf_generate_aborts_like_the_port(models, family):
    from _hf_models import EOS as MODEL_EOS, prompts
    m = models(family)
    ids, mask = prompts(batch=3)
    P = ids.shape[1]
    config = sk.SoftThinkingConfig(k=4, think_end=TE, cold_stop=sk.ColdStop(
        0.01, 3, answer_abort=True))
    sk.patch(m, config)
    # Confident from step 0: Cold Stop ends thinking at step 2 (3rd low step); the answer counter
    # starts at step 3 and reaches 3 at step 5, except at steps t % 7 == 4 (flat): it restarts.
    out = m.generate(ids, attention_mask=mask, max_new_tokens=30, do_sample=False,
                     logits_processor=[_Confident(P, 0, flat=(4,))], return_dict_in_generate=True)
    gen = out.sequences[:, P:]
    tr = out.soft_trace
    ent = tr.entropy
    theirs = port.run(gen.tolist(), ent.tolist(), threshold=0.01, patience=3, think_end=TE,
                      eos=MODEL_EOS)
    for b in range(gen.shape[0]):
        r = theirs[b]
        n = len(r.output)
        assert r.finished == "abort"
        assert gen[b, :n].tolist() == r.output and int(gen[b, n - 1]) == MODEL_EOS
        assert (gen[b, n:] == m.generation_config.pad_token_id).all()
    # Thinking ended by Cold Stop at step 2; flat at 4 restarts the count: 5, 6, 7 low -> EOS at 8.
    assert (gen[:, 2] == TE).all() and (gen[:, 8] == MODEL_EOS).all()
    sk.unpatch(m)


def test_hf_generate_without_abort_is_unchanged(models):
    from _hf_models import prompts
    m = models("llama")
    ids, mask = prompts(batch=2)
    P = ids.shape[1]
    proc = _Confident(P, 0, flat=(4,))
    sk.patch(m, sk.SoftThinkingConfig(k=4, think_end=TE, cold_stop=sk.ColdStop(0.01, 3)))
    a = m.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                   logits_processor=[proc])
    sk.unpatch(m)
    sk.patch(m, sk.SoftThinkingConfig(k=4, think_end=TE, cold_stop=sk.ColdStop(
        0.01, 3, answer_abort=True)))
    b = m.generate(ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                   logits_processor=[proc])
    sk.unpatch(m)
    # Identical up to the abort step, then EOS and padding.
    assert torch.equal(a[:, :P + 8], b[:, :P + 8]) and (b[:, P + 8] == 2).all()
    assert a.shape[1] == P + 20


def test_vllm_request_args_carry_the_options():
    from softkernels.vllm.args import config_from_args, request_args
    for cs in (sk.ColdStop(0.2, 7, answer_abort=True), sk.ColdStop(0.05, 3, normalized=True),
               sk.ColdStop(answer_abort=True, normalized=True)):
        c = sk.SoftThinkingConfig(think_end=5, cold_stop=cs)
        a = request_args(c)
        assert config_from_args(a) == c
        assert config_from_args({k: str(v) for k, v in a.items()}) == c   # HTTP xargs as text
    with pytest.raises(ValueError, match="softkernels_cold_stop_answer_abort"):
        config_from_args({"softkernels": 1, "softkernels_cold_stop_answer_abort": 2})
