"""Soft thinking inside Hugging Face generate(), on tiny random models of every supported family."""

import inspect

import pytest
import torch

import softkernels as sk
from _hf_models import BOS, EOS, FAMILIES, PAD, VOCAB, make_model, prompts

transformers = pytest.importorskip("transformers")

NEW = 12


def _gen(model, ids, mask, **kw):
    kw.setdefault("max_new_tokens", NEW)
    kw.setdefault("do_sample", False)
    return model.generate(ids, attention_mask=mask, **kw)


# --------------------------------------------------------------------------------------------
# Greedy equivalence: k=1, no noise == plain greedy, token for token.

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("use_cache", [True, False])
def test_k1_greedy_equals_plain_greedy(models, family, use_cache):
    m = models(family)
    ids, mask = prompts(batch=3)   # left padding: rows have 6, 5 and 4 real tokens
    plain = _gen(m, ids, mask, use_cache=use_cache)
    sk.patch(m, sk.SoftThinkingConfig(k=1))
    out = _gen(m, ids, mask, use_cache=use_cache, return_dict_in_generate=True)
    assert torch.equal(out.sequences, plain)
    assert (out.soft_trace.mode == 1).all()          # every step was a (k=1) soft step
    assert torch.equal(out.soft_trace.ids[:, :, 0], plain[:, ids.shape[1]:])


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_k1_greedy_tied_and_untied(family):
    for tied in (True, False):
        m = make_model(family, tied=tied)
        assert (m.lm_head.weight is m.get_input_embeddings().weight) == tied
        ids, mask = prompts(batch=2)
        plain = _gen(m, ids, mask)
        sk.patch(m, sk.SoftThinkingConfig(k=1))
        assert torch.equal(_gen(m, ids, mask), plain)


# --------------------------------------------------------------------------------------------
# Against soft thinking written out by hand (a manual decoding loop with inputs_embeds).

def _cache_kwarg(model):
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _reference(model, ids, config, steps, seeds):
    """Greedy soft thinking, step by step, feeding inputs_embeds by hand (no padding)."""
    emb = model.get_input_embeddings()
    scale = getattr(emb, "embed_scale", None)
    noise = config.noise
    if isinstance(noise, sk.Gaussian):
        noise = noise.absolute(emb.weight)
    te = config.think_end
    cs = config.cold_stop
    ckw = _cache_kwarg(model)
    state = sk.RouteState.start(ids.shape[0])
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    emitted, recs = [], []
    with torch.no_grad():
        for t in range(steps):
            cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            scores = out.logits[:, -1].float()
            st = sk.soft_embed(scores, emb.weight, k=config.k, temperature=config.temperature,
                               top_k=config.top_k, top_p=config.top_p, min_p=config.min_p,
                               noise=noise, seed=seeds, offset=t)
            rs = sk.route_step(st.entropy, st.max_prob, st.ids[:, 0], state, think_end_id=te,
                               cold_stop_entropy=None if cs is None else cs.entropy_threshold,
                               cold_stop_patience=256 if cs is None else cs.patience,
                               router_threshold=None if config.router is None
                               else config.router.threshold,
                               max_think_tokens=config.max_think_tokens)
            soft = rs.mode == 1
            force = soft if te is None else soft | ((state.phase == 1) & (rs.token == te))
            nxt = torch.where(force, rs.token, scores.argmax(-1))
            e = emb(nxt[:, None])
            se = st.embeds if scale is None else st.embeds * scale.to(st.embeds.dtype)
            e = torch.where(soft[:, None, None], se[:, None], e)
            out = model(inputs_embeds=e, use_cache=True, logits_to_keep=1, **{ckw: cache})
            state = rs.state
            emitted.append(nxt)
            recs.append((st, rs.mode))
    return torch.stack(emitted, 1), recs


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("noise", [None, "gumbel", "gaussian", "dirichlet"])
def test_matches_manual_loop(models, family, noise):
    m = models(family)
    nz = {None: None, "gumbel": sk.Gumbel(), "gaussian": sk.Gaussian(),
          "dirichlet": sk.Dirichlet()}[noise]
    config = sk.SoftThinkingConfig(k=4, noise=nz, seed=1234, think_end=7, max_think_tokens=6,
                                   router=sk.ConfidenceRouter(0.3))
    ids, _ = prompts(batch=2, pad_rows=False)
    sk.patch(m, config)
    out = m.generate(ids, max_new_tokens=10, do_sample=False, return_dict_in_generate=True)
    tr = out.soft_trace
    want, recs = _reference(m, ids, config, 10, tr.seed)
    assert torch.equal(out.sequences[:, ids.shape[1]:], want)
    for t, (st, mode) in enumerate(recs):
        assert torch.equal(tr.ids[:, t], st.ids)
        assert torch.equal(tr.weights[:, t], st.weights)
        assert torch.equal(tr.entropy[:, t], st.entropy)
        assert torch.equal(tr.max_prob[:, t], st.max_prob)
        assert torch.equal(tr.mode[:, t], mode)
        if noise == "gumbel":
            assert torch.equal(tr.noise[:, t], st.noise)
        else:
            assert tr.noise is None
    assert (tr.end_step == 6).all() and (tr.end_reason == 2).all()   # budget: 6 thinking tokens
    assert (out.sequences[:, ids.shape[1] + 6] == 7).all()             # then forced "</think>"


# --------------------------------------------------------------------------------------------
# KV cache on / off, sampling, streamers, stopping criteria.

@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_cache_off_matches_cache_on(models, family):
    m = models(family)
    ids, mask = prompts(batch=3)
    sk.patch(m, sk.SoftThinkingConfig(k=6, seed=5, noise=sk.Gumbel()))
    a = _gen(m, ids, mask, return_dict_in_generate=True)
    b = _gen(m, ids, mask, use_cache=False, return_dict_in_generate=True)
    assert torch.equal(a.sequences, b.sequences)
    assert torch.equal(a.soft_trace.ids, b.soft_trace.ids)
    # Cache on and off reach the logits by different attention arithmetic (transformers 4.56's
    # Gemma3 differs by ~1.2e-4 in a weight); the tokens above must be the same.
    torch.testing.assert_close(a.soft_trace.weights, b.soft_trace.weights, atol=5e-4, rtol=0)


def test_sampling_soft_rows_emit_top1_and_seeds_reproduce(models):
    m = models("qwen3")
    ids, mask = prompts(batch=4)
    sk.patch(m, sk.SoftThinkingConfig(k=5, noise=sk.Gumbel(), router=sk.ConfidenceRouter(0.6)))
    kw = dict(do_sample=True, temperature=1.3, top_k=50, top_p=0.9, return_dict_in_generate=True,
              max_new_tokens=16)
    torch.manual_seed(3)
    a = _gen(m, ids, mask, **kw)
    torch.manual_seed(3)
    b = _gen(m, ids, mask, **kw)
    assert torch.equal(a.sequences, b.sequences)
    assert torch.equal(a.soft_trace.noise, b.soft_trace.noise)
    tr = a.soft_trace
    gen = a.sequences[:, ids.shape[1]:]
    soft = tr.mode == 1
    assert soft.any() and (tr.mode == 0).any()   # the router made some thinking steps hard
    assert torch.equal(gen[soft], tr.ids[:, :, 0][soft])
    # Another torch seed draws another noise seed (config.seed=None) ...
    torch.manual_seed(4)
    c = _gen(m, ids, mask, **kw)
    assert not torch.equal(c.soft_trace.seed, tr.seed)
    # ... and a fixed config seed fixes the noise whatever torch's seed.
    sk.patch(m, sk.SoftThinkingConfig(k=5, noise=sk.Gumbel(), seed=99))
    torch.manual_seed(5)
    d = _gen(m, ids, mask, return_dict_in_generate=True)
    torch.manual_seed(6)
    e = _gen(m, ids, mask, return_dict_in_generate=True)
    assert torch.equal(d.sequences, e.sequences) and torch.equal(d.soft_trace.noise,
                                                                 e.soft_trace.noise)


def test_row_noise_does_not_depend_on_the_batch(models):
    m = models("llama")
    ids, _ = prompts(batch=3, pad_rows=False)
    sk.patch(m, sk.SoftThinkingConfig(k=5, noise=sk.Gumbel(), seed=7))
    full = _gen(m, ids, None, return_dict_in_generate=True).soft_trace
    alone = _gen(m, ids[:1], None, return_dict_in_generate=True).soft_trace
    assert full.seed[0] == alone.seed[0]
    assert torch.equal(full.ids[:1], alone.ids)
    torch.testing.assert_close(full.noise[:1], alone.noise, atol=1e-4, rtol=0)


class _Collect(transformers.generation.streamers.BaseStreamer):
    def __init__(self):
        self.chunks = []
        self.ended = False

    def put(self, value):
        self.chunks.append(value.clone())

    def end(self):
        self.ended = True


class _StopAt(transformers.StoppingCriteria):
    def __init__(self, length):
        self.length = length

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.length,
                          dtype=torch.bool)


def test_streamer_and_stopping_criteria(models):
    m = models("gpt2")
    ids, mask = prompts(batch=1)
    sk.patch(m, sk.SoftThinkingConfig(k=3))
    streamer = _Collect()
    out = _gen(m, ids, mask, streamer=streamer, max_new_tokens=20,
               stopping_criteria=transformers.StoppingCriteriaList([_StopAt(ids.shape[1] + 5)]),
               return_dict_in_generate=True)
    assert out.sequences.shape[1] == ids.shape[1] + 5
    assert streamer.ended
    assert torch.equal(streamer.chunks[0].reshape(-1), ids.reshape(-1))     # the prompt first
    streamed = torch.cat([c.reshape(-1) for c in streamer.chunks[1:]])
    assert torch.equal(streamed, out.sequences[0, ids.shape[1]:])
    assert out.soft_trace.num_steps == 5


# --------------------------------------------------------------------------------------------
# Per-row phases: think-end, Cold Stop, budget and router, driven by a user logits processor.

class _Drive:
    """A user logits processor: at given (row, step) pairs, makes token `tok` (nearly) certain;
    over given steps, makes row distributions confident (low entropy)."""

    def __init__(self, prompt_len, force=(), peaked_rows=(), uncertain=()):
        self.P = prompt_len
        self.force = dict(force)          # (row, step) -> token
        self.peaked = set(peaked_rows)    # rows that are always confident
        self.uncertain = set(uncertain)   # (row, step) pairs made flat (low max_prob)

    def __call__(self, input_ids, scores):
        t = input_ids.shape[1] - self.P
        scores = scores.clone()
        for (b, step), tok in self.force.items():
            if step == t:
                scores[b] = -30.0
                scores[b, tok] = 30.0
        for b in self.peaked:
            top = scores[b].argmax()
            scores[b, top] += 50.0
        for (b, step) in self.uncertain:
            if step == t:
                scores[b] = 0.0
        return scores


def test_rows_end_thinking_at_different_steps(models):
    m = models("llama")
    ids, mask = prompts(batch=3)
    P = ids.shape[1]
    TE = 9
    drive = _Drive(P, force={(0, 2): TE, (1, 5): TE})
    sk.patch(m, sk.SoftThinkingConfig(k=4, think_end=TE))
    layer_inputs = []
    h = m.model.layers[0].register_forward_pre_hook(
        lambda mod, args, kw: layer_inputs.append(kw.get("hidden_states", args[0] if args else None)
                                                  .detach().clone()), with_kwargs=True)
    try:
        out = _gen(m, ids, mask, logits_processor=[drive], return_dict_in_generate=True)
    finally:
        h.remove()
    tr = out.soft_trace
    gen = out.sequences[:, P:]
    assert tr.end_step.tolist() == [2, 5, -1]
    assert tr.end_reason.tolist() == [1, 1, 0]
    assert gen[0, 2] == TE and gen[1, 5] == TE
    # mode: soft while thinking, hard from the think-end step on; row 2 thinks throughout.
    assert (tr.mode[0, :2] == 1).all() and (tr.mode[0, 2:] == 0).all()
    assert (tr.mode[1, :5] == 1).all() and (tr.mode[1, 5:] == 0).all()
    assert (tr.mode[2] == 1).all()
    assert tr.phase[0, :2].tolist() == [1, 1] and (tr.phase[0, 2:] == 0).all()
    # What the model was fed at step t's position (the input of forward t+1): soft rows the
    # mixture, hard rows the plain embedding of the emitted token.
    E = m.get_input_embeddings().weight
    for t in range(NEW - 1):
        fed = layer_inputs[t + 1][:, -1]
        for b in range(3):
            if tr.mode[b, t] == 1:
                mix = (tr.weights[b, t, :, None].double() * E[tr.ids[b, t]].double()).sum(0)
                torch.testing.assert_close(fed[b].double(), mix, atol=1e-5, rtol=1e-5)
            else:
                assert torch.equal(fed[b], E[gen[b, t]])


def test_cold_stop_budget_and_router(models):
    m = models("qwen2")
    ids, mask = prompts(batch=3)
    P = ids.shape[1]
    TE = 11
    # Row 1 is always confident: Cold Stop (patience 3) ends it at step 2. Row 2 is made
    # uncertain at steps 1 and 3: the router takes those steps hard.
    drive = _Drive(P, peaked_rows=[1], uncertain=[(2, 1), (2, 3)])
    config = sk.SoftThinkingConfig(k=4, think_end=TE, max_think_tokens=7,
                                   cold_stop=sk.ColdStop(entropy_threshold=0.01, patience=3),
                                   router=sk.ConfidenceRouter(0.05))
    sk.patch(m, config)
    out = _gen(m, ids, mask, logits_processor=[drive], return_dict_in_generate=True)
    tr = out.soft_trace
    gen = out.sequences[:, P:]
    assert tr.end_step.tolist()[1] == 2 and tr.end_reason[1] == 3         # Cold Stop
    assert tr.mode[1, 2] == 2 and gen[1, 2] == TE
    assert tr.end_step[2] == 7 and tr.end_reason[2] == 2                  # budget
    assert tr.mode[2, 7] == 2 and gen[2, 7] == TE
    assert tr.mode[2, 1] == 0 and tr.mode[2, 3] == 0                      # router: hard
    assert (tr.mode[2, [0, 2, 4, 5, 6]] == 1).all()
    assert (tr.mode[:, 8:] == 0).all()


def test_think_end_none_switches_to_hard_tokens(models):
    m = models("gemma3")
    ids, mask = prompts(batch=2)
    P = ids.shape[1]
    sk.patch(m, sk.SoftThinkingConfig(k=4, max_think_tokens=4))
    out = _gen(m, ids, mask, return_dict_in_generate=True)
    tr = out.soft_trace
    assert (tr.mode[:, :4] == 1).all() and (tr.mode[:, 4:] == 0).all()
    assert tr.end_step.tolist() == [4, 4] and tr.end_reason.tolist() == [2, 2]
    assert (tr.phase[:, 4:] == 0).all()
    # After the budget the row decodes greedily: the emitted token is the argmax of the scores.
    assert out.sequences.shape[1] == P + NEW


def test_sampled_think_end_at_a_hard_step_ends_thinking(models):
    """A router-hard thinking step samples the think-end token (not its top-1 soft candidate)."""
    m = models("llama")
    ids, _ = prompts(batch=1, pad_rows=False)
    P = ids.shape[1]
    TE = 13

    class TwoWay:
        # At step 1: think-end and token 20 nearly tied, everything else impossible.
        def __call__(self, input_ids, scores):
            if input_ids.shape[1] - P == 1:
                scores = torch.full_like(scores, -1e4)
                scores[:, 20] = 0.0
                scores[:, TE] = 0.0
            return scores
    found = False
    for seed in range(40):
        sk.patch(m, sk.SoftThinkingConfig(k=2, think_end=TE, router=sk.ConfidenceRouter(0.9),
                                          seed=seed))
        torch.manual_seed(seed)
        out = _gen(m, ids, None, do_sample=True, logits_processor=[TwoWay()],
                   return_dict_in_generate=True, max_new_tokens=5)
        tr = out.soft_trace
        if out.sequences[0, P + 1] == TE:
            assert tr.mode[0, 1] == 0                      # a hard step (max_prob 0.5 < 0.9)
            assert tr.end_step[0] == 1 and tr.end_reason[0] == 1
            assert (tr.phase[0, 1:] == 0).all() and (tr.mode[0, 2:] == 0).all()
            found = True
            break
    assert found


def test_eos_finishes_a_row_and_the_trace_marks_it(models):
    m = models("qwen3")
    ids, mask = prompts(batch=2)
    P = ids.shape[1]
    drive = _Drive(P, force={(1, 3): EOS})
    sk.patch(m, sk.SoftThinkingConfig(k=4))
    out = _gen(m, ids, mask, logits_processor=[drive], return_dict_in_generate=True)
    tr = out.soft_trace
    gen = out.sequences[:, P:]
    assert gen[1, 3] == EOS and (gen[1, 4:] == PAD).all()
    assert tr.valid[1].tolist() == [True] * 4 + [False] * (NEW - 4)
    assert tr.valid[0].all()
    assert (tr.mode[1, 4:] == 0).all()


# --------------------------------------------------------------------------------------------
# The trace.

@pytest.mark.parametrize("noise", [None, "gumbel", "dirichlet", "gaussian"])
def test_trace_fields(models, noise):
    m = models("gemma3")
    nz = {None: None, "gumbel": sk.Gumbel(), "dirichlet": sk.Dirichlet(),
          "gaussian": sk.Gaussian(sigma=0.33)}[noise]
    ids, mask = prompts(batch=3)
    sk.patch(m, sk.SoftThinkingConfig(k=5, noise=nz, seed=3))
    out = _gen(m, ids, mask, return_dict_in_generate=True, output_scores=True)
    assert isinstance(out, transformers.generation.utils.GenerateDecoderOnlyOutput)
    assert len(out.scores) == NEW               # the usual fields are still there
    tr = out.soft_trace
    assert out["soft_trace"] is tr
    B, T, k = 3, NEW, 5
    assert tr.ids.shape == (B, T, k) and tr.ids.dtype == torch.int64
    assert tr.weights.shape == (B, T, k) and tr.weights.dtype == torch.float32
    assert tr.entropy.shape == (B, T) and tr.max_prob.shape == (B, T)
    assert tr.mode.shape == (B, T) and tr.mode.dtype == torch.int8
    assert tr.phase.dtype == torch.int8 and tr.valid.dtype == torch.bool
    assert tr.seed.shape == (B,) and tr.offset.shape == (B, T)
    assert tr.offset[0].tolist() == list(range(T))
    torch.testing.assert_close(tr.weights.sum(-1), torch.ones(B, T))
    assert tr.prompt_length == ids.shape[1] and tr.num_steps == T and tr.batch_size == B
    assert (tr.k, tr.temperature, tr.top_k, tr.top_p, tr.min_p) == (5, 0.6, 30, 0.95, 0.001)
    E = m.get_input_embeddings()
    assert tr.embed_scale == float(E.embed_scale.to(E.weight.dtype))
    if noise == "gumbel":
        assert tr.noise.shape == (B, T, k) and tr.noise.dtype == torch.float32
        assert isinstance(tr.noise_params, sk.Gumbel)
    else:
        assert tr.noise is None
    if noise == "gaussian":
        rms = float(E.weight.detach().float().pow(2).mean().sqrt())
        assert not tr.noise_params.relative
        assert tr.sigma == pytest.approx(0.33 * rms)
    moved = tr.to("cpu")
    assert torch.equal(moved.ids, tr.ids)


def test_no_trace_without_return_dict(models):
    m = models("llama")
    ids, mask = prompts(batch=2)
    sk.patch(m, sk.SoftThinkingConfig())
    out = _gen(m, ids, mask)
    assert isinstance(out, torch.Tensor) and out.shape == (2, ids.shape[1] + NEW)


def test_soft_thinking_false_runs_plain_generate(models):
    m = models("llama")
    ids, mask = prompts(batch=2)
    plain = _gen(m, ids, mask)
    sk.patch(m, sk.SoftThinkingConfig(k=8, noise=sk.Gaussian(sigma=2.0)))
    assert torch.equal(_gen(m, ids, mask, soft_thinking=False), plain)
    over = _gen(m, ids, mask, soft_thinking=sk.SoftThinkingConfig(k=1),
                return_dict_in_generate=True)
    assert torch.equal(over.sequences, plain)
    assert over.soft_trace.k == 1


def test_inputs_embeds_prompt(models):
    """A prompt given as inputs_embeds: the generated positions still get their soft tokens."""
    m = models("llama")
    ids, mask = prompts(batch=2)
    embeds = m.get_input_embeddings()(ids).detach()
    plain = m.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=8,
                       do_sample=False)
    sk.patch(m, sk.SoftThinkingConfig(k=1))
    out = m.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=8,
                     do_sample=False, return_dict_in_generate=True)
    assert torch.equal(out.sequences, plain)
    assert out.soft_trace.prompt_length == 0 and out.soft_trace.num_steps == 8


def test_num_return_sequences_with_sampling(models):
    m = models("qwen2")
    ids, mask = prompts(batch=2)
    sk.patch(m, sk.SoftThinkingConfig(k=4, noise=sk.Dirichlet(), max_think_tokens=3))
    out = _gen(m, ids, mask, do_sample=True, num_return_sequences=3, return_dict_in_generate=True)
    tr = out.soft_trace
    assert out.sequences.shape[0] == 6 and tr.batch_size == 6
    assert len(set(tr.seed.tolist())) == 6            # every row its own noise stream
    assert (tr.end_step == 3).all()


@pytest.mark.parametrize("warpers", [
    dict(temperature=0.3, top_k=3, top_p=0.5, min_p=0.3),
    dict(typical_p=0.4, epsilon_cutoff=0.05, eta_cutoff=0.05, repetition_penalty=1.3,
         no_repeat_ngram_size=2, renormalize_logits=True),
])
def test_hf_processors_and_warpers_cannot_undo_soft_choices(models, warpers):
    m = models("llama")
    ids, mask = prompts(batch=3)
    sk.patch(m, sk.SoftThinkingConfig(k=6, think_end=5, max_think_tokens=5))
    out = _gen(m, ids, mask, do_sample=True, return_dict_in_generate=True, output_logits=True,
               **warpers)
    tr = out.soft_trace
    gen = out.sequences[:, ids.shape[1]:]
    soft = tr.mode == 1
    assert soft[:, :5].all()
    assert torch.equal(gen[soft], tr.ids[..., 0][soft])
    assert (gen[:, 5] == 5).all() and (tr.mode[:, 5] == 2).all()
    # output_logits keeps the model's raw logits (the forcing mask is applied on a copy).
    assert all(torch.isfinite(x).all() for x in out.logits)
