"""softkernels.vllm on a real vLLM engine (CPU build) and SmolLM2-135M-Instruct.

The oracle is the Hugging Face layer (softkernels.patch on the same checkpoint): both engines run
softkernels.policy, so tokens must agree token for token and traces field for field (weights to
a few 1e-3: the two engines' fp32 logits differ in the last bits, and soft inputs carry
that difference forward from step to step).
"""

import dataclasses
import json

import pytest
import torch

import softkernels as sk
import softkernels.vllm as skv
from _vllm_engines import PROMPTS, engine

vllm = pytest.importorskip("vllm")

N = 32


def _sp(cfg=None, n=N, **kw):
    kw.setdefault("temperature", 0.0)
    extra = None if cfg is None else skv.request_args(cfg)
    return vllm.SamplingParams(max_tokens=n, extra_args=extra, **kw)


def _tokens(outs):
    return [list(o.outputs[0].token_ids) for o in outs]


def _hf(hf, prompt, cfg, n=N):
    model, tok = hf
    sk.patch(model, cfg, tokenizer=tok)
    try:
        enc = tok(prompt, return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=n, do_sample=False,
                             return_dict_in_generate=True)
    finally:
        sk.unpatch(model)
    P = enc.input_ids.shape[1]
    seq = out.sequences[0, P:].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    T = next((i + 1 for i, t in enumerate(seq) if t in eos), len(seq))
    return seq[:T], out.soft_trace, T


def _mixture_gap(tv, th, t):
    """Largest |w_vllm(id) - w_hf(id)| over the ids of step t's two mixtures."""
    a = dict(zip(tv.ids[0, t].tolist(), tv.weights[0, t].tolist()))
    b = dict(zip(th.ids[0, t].tolist(), th.weights[0, t].tolist()))
    return max(abs(a.get(i, 0.0) - b.get(i, 0.0)) for i in set(a) | set(b))


def _agree(vllm_tokens, hf_tokens, tv, th, tight=5e-3, least=12):
    """The number of leading steps on which the two engines agree tightly.

    Their fp32 logits differ in the last bits, and soft thinking carries that forward: a soft
    input is a mixture, so a tiny change of one step's weights changes every later input (Hugging
    Face's own sdpa and eager attention drift apart the same way, by ~0.1 in weight after ~20
    steps on SmolLM2). So: the first ``least`` steps must agree to ``tight``; tokens may differ
    only after the mixtures already drifted apart (a bug shows at once, a drift only later).
    """
    n = min(len(vllm_tokens), len(hf_tokens), tv.num_steps)
    first_token_diff = next((t for t in range(n) if vllm_tokens[t] != hf_tokens[t]), n)
    drift = next((t for t in range(first_token_diff) if _mixture_gap(tv, th, t) > tight),
                 first_token_diff)
    assert drift >= min(least, len(hf_tokens)), (drift, first_token_diff)
    if first_token_diff < n or len(vllm_tokens) != len(hf_tokens):
        assert drift < first_token_diff or first_token_diff == n, (drift, first_token_diff)
    return drift


def _same_trace(tv, th, T, cfg):
    """A vLLM trace (B = 1) against the first T steps of a Hugging Face trace (B = 1)."""
    assert tv.num_steps >= T
    tv = dataclasses.replace(tv, ids=tv.ids[:, :T], weights=tv.weights[:, :T],
                             noise=None if tv.noise is None else tv.noise[:, :T],
                             entropy=tv.entropy[:, :T], max_prob=tv.max_prob[:, :T],
                             mode=tv.mode[:, :T], phase=tv.phase[:, :T])
    assert torch.equal(tv.ids[0, :, 0], th.ids[0, :T, 0])       # the emitted tokens
    assert torch.equal(tv.mode[0], th.mode[0, :T])
    assert torch.equal(tv.phase[0], th.phase[0, :T])
    for t in range(T):
        # Slots are sorted by weight: nearly tied tail slots may swap between the engines, so
        # the mixtures are compared id by id.
        assert _mixture_gap(tv, th, t) <= 5e-3, t
    torch.testing.assert_close(tv.entropy[0], th.entropy[0, :T], atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(tv.max_prob[0], th.max_prob[0, :T], atol=5e-3, rtol=0)
    if th.noise is None:
        assert tv.noise is None
    else:
        torch.testing.assert_close(tv.noise[0, :, 0], th.noise[0, :T, 0], atol=1e-2, rtol=1e-2)
    if int(th.end_step[0]) < T:
        assert int(tv.end_step[0]) == int(th.end_step[0])
    if cfg.seed is not None:
        assert int(tv.seed[0]) == int(th.seed[0])
    assert (tv.k, tv.temperature, tv.top_k, tv.top_p, tv.min_p, tv.ties) == \
        (th.k, th.temperature, th.top_k, th.top_p, th.min_p, th.ties)


def test_k1_equals_plain_greedy(llm):
    plain = _tokens(llm.generate(PROMPTS, _sp(), use_tqdm=False))
    soft = llm.generate(PROMPTS, _sp(sk.SoftThinkingConfig(k=1)), use_tqdm=False)
    assert _tokens(soft) == plain
    traces = skv.pop_traces(llm, [o.request_id for o in soft])
    assert set(traces) == {o.request_id for o in soft}
    for o in soft:
        t = traces[o.request_id]
        assert t.batch_size == 1 and t.num_steps == len(o.outputs[0].token_ids)
        assert (t.mode == 1).all()
        assert t.ids[0, :, 0].tolist() == list(o.outputs[0].token_ids)
    assert skv.pop_traces(llm, [o.request_id for o in soft]) == {}   # popped: gone


@pytest.mark.parametrize("cfg", [
    sk.SoftThinkingConfig(k=4),
    sk.SoftThinkingConfig(k=8, noise=sk.Gumbel(), seed=7),
    sk.SoftThinkingConfig(k=5, noise=sk.Gaussian(0.2), seed=3, top_p=0.9),
    sk.SoftThinkingConfig(k=3, noise=sk.Dirichlet(4.0), seed=11),
    sk.SoftThinkingConfig(k=4, ties="keep_all"),
], ids=["greedy-k4", "gumbel", "gaussian-relative", "dirichlet", "keep_all"])
def test_equals_hf_patch_token_for_token(llm, hf, cfg):
    outs = llm.generate(PROMPTS[:3], _sp(cfg), use_tqdm=False)
    traces = skv.pop_traces(llm, [o.request_id for o in outs])
    for prompt, o in zip(PROMPTS[:3], outs):
        seq, th, T = _hf(hf, prompt, cfg)
        T = _agree(list(o.outputs[0].token_ids), seq, traces[o.request_id], th)
        _same_trace(traces[o.request_id], th, T, cfg)
        assert traces[o.request_id].noise_params == th.noise_params


def test_mixed_batch_rows_equal_solo(llm):
    cfgs = [sk.SoftThinkingConfig(k=4), None, sk.SoftThinkingConfig(k=6, noise=sk.Gumbel(), seed=1),
            sk.SoftThinkingConfig(k=2, temperature=0.9, top_k=5), None,
            sk.SoftThinkingConfig(k=4)]
    params = [_sp(c, n=24 + 2 * i) for i, c in enumerate(cfgs)]   # rows finish at different steps
    batch = llm.generate(PROMPTS, params, use_tqdm=False)
    solo = [llm.generate([p], [sp], use_tqdm=False)[0] for p, sp in zip(PROMPTS, params)]
    assert _tokens(batch) == _tokens(solo)
    tb = skv.pop_traces(llm, [o.request_id for o in batch])
    ts = skv.pop_traces(llm, [o.request_id for o in solo])
    assert len(tb) == len(ts) == 4
    for b, s, c in zip(batch, solo, cfgs):
        if c is None:
            assert b.request_id not in tb
            continue
        # vLLM's forward is not batch-invariant (matmul blocking depends on the batch), so the
        # weights agree to fp32 drift, not bitwise; the soft-thinking state is per row.
        x, y = tb[b.request_id], ts[s.request_id]
        assert x.num_steps == y.num_steps and torch.equal(x.mode, y.mode)
        assert torch.equal(x.ids[0, :, 0], y.ids[0, :, 0])
        if c.seed is not None:
            assert int(x.seed) == int(y.seed)
        for t in range(min(12, x.num_steps)):
            assert _mixture_gap(x, y, t) <= 5e-3, t


def _think_end(tok):
    ids = tok.encode(" So", add_special_tokens=False)
    assert len(ids) == 1
    return ids[0]


@pytest.mark.parametrize("rule", ["cold_stop", "router", "budget"])
def test_routing_rules_equal_hf(llm, hf, rule):
    te = _think_end(hf[1])
    kw = {"cold_stop": dict(cold_stop=sk.ColdStop(entropy_threshold=8.0, patience=3)),
          "router": dict(router=sk.ConfidenceRouter(0.5)),
          "budget": dict(max_think_tokens=5)}[rule]
    cfg = sk.SoftThinkingConfig(k=4, think_end=te, **kw)
    outs = llm.generate(PROMPTS[:3], _sp(cfg), use_tqdm=False)
    traces = skv.pop_traces(llm, [o.request_id for o in outs])
    for prompt, o in zip(PROMPTS[:3], outs):
        seq, th, T = _hf(hf, prompt, cfg)
        tv = traces[o.request_id]
        T = _agree(list(o.outputs[0].token_ids), seq, tv, th)
        _same_trace(tv, th, T, cfg)
        assert int(tv.end_reason[0]) == int(th.end_reason[0])
        if rule == "budget":
            assert int(tv.end_step[0]) == 5 and seq[5] == te and int(tv.mode[0, 5]) == 2
        if rule == "cold_stop":
            # patience 3: the third low-entropy step (step 2) already emits the think-end token
            assert int(tv.end_step[0]) == 2 and tv.end_reason_text(0) == "Cold Stop"
            assert seq[2] == te and int(tv.mode[0, 2]) == 2
        if rule == "router":
            assert (tv.mode[0] == 0).any() or (tv.max_prob[0] >= 0.5).all()


def test_cold_stop_answer_abort_equals_hf(llm, hf):
    """ColdStop(answer_abort=True): Soft Thinking's counter keeps running after thinking and the
    request is finished (EOS forced through the logits processor) after `patience` low-entropy
    answer steps, as in the Hugging Face layer."""
    te = _think_end(hf[1])
    cfg = sk.SoftThinkingConfig(k=4, think_end=te, cold_stop=sk.ColdStop(
        entropy_threshold=8.0, patience=3, answer_abort=True))
    outs = llm.generate(PROMPTS[:2], _sp(cfg), use_tqdm=False)
    eos = hf[0].generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    for prompt, o in zip(PROMPTS[:2], outs):
        seq, th, T = _hf(hf, prompt, cfg)
        got = list(o.outputs[0].token_ids)
        # Thinking ends at step 2 (Cold Stop), answer steps 3-5 are low: EOS at step 6.
        assert seq[2] == te and T == 7 and seq[6] in eos
        assert got == seq and o.outputs[0].finish_reason == "stop"
    skv.pop_traces(llm, [o.request_id for o in outs])


def test_think_end_string_resolved_with_engine_tokenizer(llm, hf):
    tok = hf[1]
    cfg = sk.SoftThinkingConfig(k=4, think_end="<|im_end|>", max_think_tokens=3)
    o = llm.generate(PROMPTS[:1], _sp(cfg), use_tqdm=False)[0]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    assert list(o.outputs[0].token_ids)[3] == im_end
    t = skv.pop_traces(llm, [o.request_id])[o.request_id]
    assert t.think_end_id == im_end
    with pytest.raises(ValueError, match="not a single token"):
        llm.generate(PROMPTS[:1], _sp(sk.SoftThinkingConfig(think_end="</think>")),
                     use_tqdm=False)


def test_seedless_requests_draw_distinct_seeds_and_record_them(llm):
    cfg = sk.SoftThinkingConfig(k=4, noise=sk.Gumbel())
    outs = llm.generate(PROMPTS[:2] * 2, _sp(cfg), use_tqdm=False)
    traces = skv.pop_traces(llm, [o.request_id for o in outs])
    seeds = {int(t.seed[0]) for t in traces.values()}
    assert len(seeds) == 4


def test_request_args_are_flat_json_and_round_trip():
    cfgs = [sk.SoftThinkingConfig(), sk.SoftThinkingConfig(k=3, noise=sk.Gumbel(tau=0.7, clamp=None)),
            sk.SoftThinkingConfig(noise=sk.Gaussian(0.1, relative=False), think_end="</think>",
                                  cold_stop=sk.ColdStop(0.1, 5), router=sk.ConfidenceRouter(0.6),
                                  max_think_tokens=100, seed=-5),
            sk.SoftThinkingConfig(noise=sk.Dirichlet(2.0), think_end=17)]
    for c in cfgs:
        a = skv.request_args(c)
        assert all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in a.values())
        assert skv.config_from_args(json.loads(json.dumps(a))) == c
    assert skv.request_args(False) == {"softkernels": 0}
    assert skv.config_from_args({"softkernels": 0}, skv.request_args(cfgs[0])) is None
    assert skv.config_from_args({}, skv.request_args(cfgs[1])) == cfgs[1]
    assert skv.config_from_args({"other": 1}) is None
    # over HTTP, xargs may come as strings
    s = {k: str(v) for k, v in skv.request_args(cfgs[2]).items()}
    assert skv.config_from_args(s) == cfgs[2]


@pytest.mark.parametrize("bad, match", [
    ({"softkernels": 1, "softkernels_kk": 3}, "unknown soft-thinking key 'softkernels_kk'"),
    ({"softkernels": 1, "softkernels_k": 0}, "SoftThinkingConfig.k"),
    ({"softkernels": 1, "softkernels_noise": "uniform"}, "softkernels_noise"),
    ({"softkernels": 1, "softkernels_top_p": "abc"}, "softkernels_top_p"),
    ({"softkernels": 1, "softkernels_noise": "gumbel", "softkernels_noise_clamp_lo": -1.0},
     "clamp_hi"),
])
def test_bad_request_args_named(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        skv.config_from_args(bad)


def test_request_args_refuses(llm):
    with pytest.raises(ValueError, match="iterate_hard"):
        skv.request_args(sk.SoftThinkingConfig(iterate_hard=sk.IterateHard(threshold=0.5)))
    with pytest.raises(TypeError, match="SoftThinkingConfig or False"):
        skv.request_args(True)
    with pytest.raises(TypeError, match="default must be"):
        skv.engine_kwargs(default={"k": 3})
    # a bad request fails at admission with the field named; the engine keeps serving
    with pytest.raises(ValueError, match="repetition_penalty"):
        llm.generate(PROMPTS[:1], _sp(sk.SoftThinkingConfig(), repetition_penalty=1.2),
                     use_tqdm=False)
    with pytest.raises((ValueError, TypeError), match="softkernels_k"):
        llm.generate(PROMPTS[:1], vllm.SamplingParams(
            max_tokens=4, extra_args={"softkernels": 1, "softkernels_k": "x"}), use_tqdm=False)
    with pytest.raises(ValueError, match="top_k"):
        llm.generate(PROMPTS[:1], _sp(sk.SoftThinkingConfig(top_k=5000)), use_tqdm=False)
    # the whole vocabulary (k=None) is refused at admission and at engine creation
    with pytest.raises(ValueError, match=r"SoftThinkingConfig.k = None"):
        llm.generate(PROMPTS[:1], _sp(sk.SoftThinkingConfig(k=None)), use_tqdm=False)
    with pytest.raises(ValueError, match=r"SoftThinkingConfig.k = None"):
        skv.engine_kwargs(default=sk.SoftThinkingConfig(k=None))
    assert len(_tokens(llm.generate(PROMPTS[:1], _sp(sk.SoftThinkingConfig()),
                                    use_tqdm=False))[0]) > 0


def test_openai_request_vllm_xargs_carry_the_config(llm):
    """The OpenAI-compatible server's request models: request_args as `vllm_xargs` (JSON over
    HTTP) become the SamplingParams' extra_args, which then think as the config says."""
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    cfg = sk.SoftThinkingConfig(k=4, noise=sk.Gumbel(clamp=None), seed=9,
                                cold_stop=sk.ColdStop(0.5, 4))
    body = json.loads(json.dumps({"model": "m", "prompt": PROMPTS[0], "max_tokens": 16,
                                  "temperature": 0.0, "vllm_xargs": skv.request_args(cfg)}))
    sp = CompletionRequest(**body).to_sampling_params(max_tokens=16)
    assert skv.config_from_args(sp.extra_args) == cfg
    chat = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "hi"}],
                                 vllm_xargs=skv.request_args(cfg))
    assert skv.config_from_args(chat.to_sampling_params(16, {}).extra_args) == cfg
    got = llm.generate(PROMPTS[:1], sp, use_tqdm=False)[0]
    want = llm.generate(PROMPTS[:1], _sp(cfg, n=16), use_tqdm=False)[0]
    skv.pop_traces(llm, [got.request_id, want.request_id])
    assert list(got.outputs[0].token_ids) == list(want.outputs[0].token_ids)
