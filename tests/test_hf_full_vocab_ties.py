"""SoftThinkingConfig(k=None) (the whole vocabulary) and ties="keep_all" through patched generate.

The patched generate is compared with softkernels/hf/reference.py's naive decoder (no KV cache,
every step recomputed from its input embeddings), on tiny random models (tests/_hf_models.py):
vocabularies of 320 (k = V runs the fused kernel) and 1100 (> 1024: soft_embed's
full-vocabulary path).
"""

import dataclasses

import pytest
import torch

import softkernels as sk
from softkernels import policy
from softkernels.hf.reference import generate_reference
from _hf_models import make_model, prompts

transformers = pytest.importorskip("transformers")

NEW = 10
# Thinking for 6 steps (budget), then "</think>" (id 7), then hard greedy answer steps.
_BASE = dict(think_end=7, max_think_tokens=6, seed=5,
             iterate_hard=sk.IterateHard(max_iter=1, threshold=0.0))  # the reference's switch


def _gen(model, ids, mask):
    return model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                          return_dict_in_generate=True)


# --------------------------------------------------------------------------------------------
# Configuration.

@pytest.mark.parametrize("noise", [sk.Gumbel(), sk.Dirichlet(), sk.TopKDirichlet(),
                                   sk.WeightGaussian(), sk.DirichletGumbel()],
                         ids=lambda n: type(n).__name__)
def test_k_none_refuses_noise_the_full_path_lacks(noise):
    with pytest.raises(ValueError, match=r"k = None .* noise None or Gaussian.*"
                                         + type(noise).__name__):
        sk.SoftThinkingConfig(k=None, noise=noise)
    sk.SoftThinkingConfig(k=4, noise=noise)   # the same noise with an int k is fine


def test_k_none_and_ties_values():
    assert sk.SoftThinkingConfig(k=None).k is None
    assert sk.SoftThinkingConfig(k=None, noise=sk.Gaussian(0.1)).noise == sk.Gaussian(0.1)
    assert sk.SoftThinkingConfig().ties == "exact"
    assert sk.SoftThinkingConfig(ties="keep_all").ties == "keep_all"
    for bad in ("all", "", None, 1):
        with pytest.raises(ValueError, match="SoftThinkingConfig.ties"):
            sk.SoftThinkingConfig(ties=bad)
    for bad in (0, 1025):
        with pytest.raises(ValueError, match="SoftThinkingConfig.k"):
            sk.SoftThinkingConfig(k=bad)
    with pytest.raises(TypeError, match="SoftThinkingConfig.k"):
        sk.SoftThinkingConfig(k=2.5)


def test_step_configs_group_by_ties_and_k():
    """Rows with different ties or k never share a step (StepConfig equality and hash)."""
    E = torch.randn(50, 8)
    a, b, c = (policy.StepConfig.resolve(sk.SoftThinkingConfig(k=k, ties=t), None, E)
               for k, t in ((4, "exact"), (4, "keep_all"), (None, "exact")))
    assert len({a, b, c}) == 3 and (a.ties, b.ties, c.k) == ("exact", "keep_all", None)
    assert a == policy.StepConfig.resolve(sk.SoftThinkingConfig(k=4), None, E)


def test_policy_step_applies_ties_and_k_none():
    # Scores in pairs of equal values: the top_k = 3 cut falls inside a tie.
    scores = torch.tensor([[3.0, 3.0, 2.0, 2.0, 1.0, 1.0, 0.0, 0.0]]).repeat(2, 1)
    E = torch.randn(8, 4)
    state = sk.RouteState.start(2)
    seeds = policy.row_seeds(0, 2)
    got = {}
    for ties in ("exact", "keep_all"):
        cfg = policy.StepConfig.resolve(
            sk.SoftThinkingConfig(k=8, top_k=3, top_p=1.0, min_p=0.0, temperature=1.0,
                                  ties=ties), None, E)
        st = policy.step(scores, E, cfg, state, seeds, 0, validate=True)
        want = sk.soft_embed(scores, E, k=8, top_k=3, ties=ties, seed=seeds)
        assert torch.equal(st.tokens.weights, want.weights)
        got[ties] = int((st.tokens.weights[0] > 0).sum())
    assert got == {"exact": 3, "keep_all": 4}
    cfg = policy.StepConfig.resolve(sk.SoftThinkingConfig(k=None, top_k=0, top_p=1.0, min_p=0.0),
                                    None, E)
    st = policy.step(scores, E, cfg, state, seeds, 0, validate=True)
    assert st.tokens.ids.shape == (2, 8) and bool((st.tokens.weights > 0).all())


# --------------------------------------------------------------------------------------------
# Patched generate == the naive reference.

@pytest.mark.parametrize("vocab", [320, 1100])
@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("noise", [None, "gaussian"])
def test_k_none_generate_matches_reference(family, vocab, noise):
    m = make_model(family, vocab=vocab)
    ids, mask = prompts(batch=3)
    cfg = sk.SoftThinkingConfig(k=None, top_k=0, top_p=1.0, min_p=0.0, temperature=1.0,
                                noise=sk.Gaussian(0.2) if noise else None, **_BASE)
    ref = generate_reference(m, ids, mask, cfg, NEW)
    fed = []     # the decoder's inputs_embeds at every one-position (cached) decoding forward

    def hook(module, args, kwargs):
        e = kwargs.get("inputs_embeds")
        if e is not None and e.shape[1] == 1:
            fed.append(e[:, 0].detach().clone())

    handle = m.model.register_forward_pre_hook(hook, with_kwargs=True)
    sk.patch(m, cfg)
    try:
        out = _gen(m, ids, mask)
    finally:
        handle.remove()
    assert torch.equal(out.sequences, ref.sequences)
    tr = out.soft_trace
    assert torch.equal(tr.mode, ref.mode) and bool((tr.mode[:, :6] == 1).all())
    # The whole vocabulary is mixed: every slot of a soft step has a weight (no filter).
    assert tr.k == vocab and tr.ids.shape == (3, tr.num_steps, vocab)
    assert bool((tr.weights[tr.soft] > 0).all())
    torch.testing.assert_close(tr.weights.sum(-1), torch.ones(3, tr.num_steps))
    # The trace rebuilds bit for bit what the rollout fed (for vocab 1100 by the
    # full-vocabulary mixture): position P + t was fed at the forward after step t.
    inputs = sk.soft_inputs_from_trace(tr, m, out.sequences)
    P = ids.shape[1]
    assert len(fed) == tr.num_steps - 1
    for t, e in enumerate(fed):
        assert torch.equal(inputs[:, P + t], e), t


def _twin_model(vocab=320):
    """An untied Llama whose output head maps token i and token i + vocab/2 to the same row, so
    every probability is tied with its twin's (tests that ties reach the cut)."""
    m = make_model("llama", vocab=vocab, tied=False)
    with torch.no_grad():
        w = m.lm_head.weight
        w[vocab // 2:] = w[:vocab // 2]
    return m


@pytest.mark.parametrize("k,top_k,top_p", [(8, 3, 1.0), (8, 0, 0.5), (None, 5, 1.0)],
                         ids=["top_k", "top_p", "k_none"])
def test_keep_all_ties_generate_matches_reference(k, top_k, top_p):
    m = _twin_model()
    ids, mask = prompts(batch=3)
    support = {}
    for ties in ("exact", "keep_all"):
        cfg = sk.SoftThinkingConfig(k=k, top_k=top_k, top_p=top_p, min_p=0.0, temperature=1.0,
                                    ties=ties, **_BASE)
        ref = generate_reference(m, ids, mask, cfg, NEW)
        sk.patch(m, cfg)
        out = _gen(m, ids, mask)
        sk.unpatch(m)
        assert torch.equal(out.sequences, ref.sequences)
        tr = out.soft_trace
        assert torch.equal(tr.mode, ref.mode) and tr.ties == ties
        support[ties] = (tr.weights[tr.soft] > 0).sum(-1)
    # keep_all keeps the twin of the last kept token: more survivors than exact at some step,
    # never fewer (the first soft step's inputs are the same prompt, so compare it exactly).
    assert bool((support["keep_all"][:3] >= support["exact"][:3]).all())
    assert bool((support["keep_all"] > support["exact"]).any())
    if top_k == 3:
        assert bool((support["exact"] == 3).all()) and bool((support["keep_all"][:3] == 4).all())


def test_trace_of_k_none_travels_with_ties():
    m = make_model("qwen2")
    ids, mask = prompts(batch=2)
    sk.patch(m, sk.SoftThinkingConfig(k=None, ties="keep_all", seed=1))
    tr = _gen(m, ids, mask).soft_trace
    from softkernels.vllm._worker import from_wire, to_wire
    back = from_wire(to_wire(tr))
    assert back.ties == "keep_all" and back.k == tr.k == 320
    assert torch.equal(back.ids, tr.ids) and torch.equal(back.weights, tr.weights)
    assert dataclasses.replace(tr, ties="exact").ties == "exact"
