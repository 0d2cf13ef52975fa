"""softkernels.presets: the papers' released settings by name (values cited in presets.py)."""

import dataclasses

import pytest
import torch

import softkernels as sk
from softkernels import presets
from _hf_models import VOCAB, prompts

transformers = pytest.importorskip("transformers")

PRESETS = [("soft_thinking", presets.soft_thinking, {}),
           ("rst_gumbel", presets.randomized_soft_thinking, {"noise": "gumbel"}),
           ("rst_dirichlet", presets.randomized_soft_thinking, {"noise": "dirichlet"}),
           ("sgrpo_gumbel", presets.soft_grpo, {"noise": "gumbel"}),
           ("sgrpo_dirichlet", presets.soft_grpo, {"noise": "dirichlet"}),
           ("sgrpo_gaussian", presets.soft_grpo, {"noise": "gaussian"}),
           ("sthth", presets.soft_tokens_hard_truths, {}),
           ("think_router", presets.think_router, {"threshold": 0.4}),
           ("tah", presets.think_at_hard, {"threshold": 0.5})]


def test_soft_thinking_values():
    c = presets.soft_thinking()
    assert (c.k, c.temperature, c.top_p, c.top_k, c.min_p, c.noise) == (10, 0.6, 0.95, 30, 0.001,
                                                                        None)
    assert c.think_end == "</think>"
    assert c.cold_stop == sk.ColdStop(0.01, 256, answer_abort=True, normalized=False)


@pytest.mark.parametrize("noise", ["gumbel", "dirichlet"])
def test_randomized_soft_thinking_values(noise):
    c = presets.randomized_soft_thinking(noise)
    assert (c.k, c.temperature, c.top_p, c.top_k, c.min_p) == (15, 0.6, 0.95, 30, 0.0)
    assert c.noise == (sk.Gumbel(tau=0.5, scale=1.0, clamp=None) if noise == "gumbel"
                       else sk.Dirichlet(alpha=4.0))
    # RST's Gumbel has no clamp: the library default's clamp (SofT-GRPO's) is not used.
    assert c.noise != sk.Gumbel() if noise == "gumbel" else True
    assert c.cold_stop == sk.ColdStop(0.1, 32768, answer_abort=True, normalized=True)


def test_soft_grpo_values():
    c = presets.soft_grpo()
    assert (c.k, c.temperature, c.top_p, c.top_k, c.min_p) == (5, 1.0, 0.95, 5, 0.0)
    assert c.noise == sk.Gumbel(tau=0.1, scale=1.0, clamp=(-1.5, 3.0), gprime="soft_grpo")
    assert c.cold_stop is None and c.think_end == "</think>"
    for noise, want in (("dirichlet", sk.TopKDirichlet(alpha=1.0)),
                        ("gaussian", sk.WeightGaussian(sigma=0.05))):
        c = presets.soft_grpo(noise)
        assert c.noise == want and (c.k, c.top_k, c.temperature) == (5, 5, 1.0)


def test_soft_tokens_hard_truths_values():
    c = presets.soft_tokens_hard_truths()
    assert c.k is None and (c.top_k, c.top_p, c.min_p) == (0, 1.0, 0.0)   # the whole vocabulary
    assert c.temperature == 0.5 and c.noise == sk.Gaussian(0.33, relative=True)


def test_think_router_is_soft_thinking_plus_a_router():
    c = presets.think_router(0.7)
    assert c.router == sk.ConfidenceRouter(0.7)
    assert dataclasses.replace(c, router=None) == presets.soft_thinking()
    with pytest.raises(ValueError, match="ConfidenceRouter.threshold"):
        presets.think_router(1.5)


def test_think_at_hard():
    c = presets.think_at_hard(0.3)
    ih = c.iterate_hard
    assert (ih.max_iter, ih.top_m, ih.threshold, ih.decider) == (2, 100, 0.3, None)
    assert c.max_think_tokens == 0 and c.think_end is None
    # TaH's decider gives the probability to continue; hard when p > 0.9, i.e. 1 - p < 0.1.
    p = torch.tensor([0.95, 0.5])
    d = presets.think_at_hard(decider=lambda h, logits: p, adapter="tah")
    assert d.iterate_hard.adapter == "tah"
    assert d.iterate_hard.threshold == pytest.approx(0.1)
    hard = d.iterate_hard.decider(None, None) < d.iterate_hard.threshold
    assert hard.tolist() == [True, False]
    with pytest.raises(TypeError, match="threshold"):
        presets.think_at_hard()
    with pytest.raises(TypeError, match="decider"):
        presets.think_at_hard(decider=3)


@pytest.mark.parametrize("name,fn,kw", PRESETS, ids=[p[0] for p in PRESETS])
def test_overrides_replace_and_validate(name, fn, kw):
    c = fn(**kw)
    assert fn(**kw, k=3, seed=11) == dataclasses.replace(c, k=3, seed=11)
    with pytest.raises(TypeError, match="'temprature'"):
        fn(**kw, temprature=0.5)
    with pytest.raises(ValueError, match="SoftThinkingConfig.k"):
        fn(**kw, k=0)
    with pytest.raises(TypeError, match="SoftThinkingConfig.cold_stop"):
        fn(**kw, cold_stop=0.01)


@pytest.mark.parametrize("fn", [presets.randomized_soft_thinking, presets.soft_grpo])
def test_bad_noise_name(fn):
    with pytest.raises(ValueError, match="noise must be one of"):
        fn("uniform")


@pytest.mark.parametrize("name,fn,kw", PRESETS, ids=[p[0] for p in PRESETS])
def test_every_preset_generates(models, name, fn, kw):
    """Each preset drives a patched generate on a tiny model (think_end as a token id: the tiny
    models have no tokenizer); soft steps happen and the output is well formed."""
    m = models("qwen2")
    ids, mask = prompts(batch=2)
    over = dict(seed=3)
    if fn(**kw).think_end is not None:
        over["think_end"] = 7
    config = fn(**kw, **over)
    sk.patch(m, config)
    out = m.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                     return_dict_in_generate=True)
    sk.unpatch(m)
    tr = out.soft_trace
    assert out.sequences.shape[0] == 2 and out.sequences.shape[1] <= ids.shape[1] + 6
    assert tr.k == (VOCAB if config.k is None else config.k) == tr.ids.shape[2]
    if config.max_think_tokens == 0:
        assert (tr.mode == 0).all()
    else:
        assert (tr.mode[:, 0] == 1).all()


@pytest.mark.parametrize("name,fn,kw", [p for p in PRESETS if p[0] != "tah"],
                         ids=[p[0] for p in PRESETS if p[0] != "tah"])
def test_presets_travel_to_vllm(name, fn, kw):
    from softkernels.vllm.args import config_from_args, request_args
    c = fn(**kw)
    assert config_from_args(request_args(c)) == c


def test_vllm_args_carry_ties_and_k_none():
    from softkernels.vllm.args import config_from_args, request_args
    for c in (sk.SoftThinkingConfig(k=None), sk.SoftThinkingConfig(ties="keep_all"),
              sk.SoftThinkingConfig(k=None, ties="keep_all", noise=sk.Gaussian(0.2))):
        a = request_args(c)
        assert config_from_args(a) == c
        assert (a["softkernels_k"] == "all") == (c.k is None)
        assert a.get("softkernels_ties", "exact") == c.ties
    assert "softkernels_ties" not in request_args(sk.SoftThinkingConfig())   # the default
    # JSON null for k also means the whole vocabulary; a bad ties value is named.
    assert config_from_args({"softkernels": 1, "softkernels_k": None}).k is None
    with pytest.raises(ValueError, match="SoftThinkingConfig.ties"):
        config_from_args({"softkernels": 1, "softkernels_ties": "all"})
    with pytest.raises(TypeError, match="softkernels_k"):
        config_from_args({"softkernels": 1, "softkernels_k": "most"})


def test_soft_tokens_hard_truths_in_vllm_needs_an_int_k():
    """vLLM refuses k=None (the whole vocabulary) at engine creation / request admission with a
    ValueError naming k; the preset's documented vLLM form (k=1024) passes."""
    from softkernels.vllm._engine import check_supported
    with pytest.raises(ValueError, match=r"SoftThinkingConfig.k = None"):
        check_supported(presets.soft_tokens_hard_truths())
    check_supported(presets.soft_tokens_hard_truths(k=sk.hf.config.MAX_K))


@pytest.mark.parametrize("name", ["soft_thinking", "randomized_soft_thinking", "soft_grpo"])
def test_preset_cuts_ties_as_the_papers_samplers(name):
    """The preset's own filters through soft_embed, on bf16-rounded logits (many exact ties at the
    cut): the support and weights of Soft Thinking's sampler port (FlashInfer's keep-every-tie
    top-k / top-p renorm, which RST's and SofT-GRPO's samplers share) with max_topk = V, where
    the default ties="exact" would differ on some rows."""
    from ports import soft_thinking as st
    c = getattr(presets, name)()   # its noise is not applied here: the cut is compared
    B, V = 300, 48
    logits = (torch.randn(B, V) * 2).to(torch.bfloat16).float()
    ids, w = st.sampler(logits, temperature=c.temperature, top_k=c.top_k, top_p=c.top_p,
                        min_p=c.min_p, max_topk=V, dtype=torch.float64)
    theirs = torch.zeros(B, V, dtype=torch.float64).scatter(1, ids, w)
    differ = {}
    for ties in (c.ties, "exact"):
        out = sk.soft_embed(logits, torch.zeros(V, 1), k=V, **c.filters, ties=ties)
        mine = torch.zeros(B, V, dtype=torch.float64).scatter(1, out.ids, out.weights.double())
        differ[ties] = int(((mine > 0) != (theirs > 0)).any(-1).sum())
        if ties == c.ties:
            assert differ[ties] == 0, f"{name}: {differ[ties]} rows differ in support"
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    assert c.ties == "keep_all" and differ["exact"] > 0, differ
