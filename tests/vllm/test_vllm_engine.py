"""softkernels.vllm under what vLLM does to requests: preemption and recompute, chunked prefill,
prefix caching, aborts, AsyncLLM, a multi-process engine that loads the plug-in from its entry
point; and the engine settings it refuses."""

import asyncio
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import softkernels as sk
import softkernels.vllm as skv
from _vllm_engines import PROMPTS, engine
from test_vllm_plugin import _mixture_gap, _sp, _tokens

vllm = pytest.importorskip("vllm")


def test_preemption_and_chunked_recompute_give_the_same_tokens(llm, smollm_path, monkeypatch):
    from vllm.v1.core.sched.scheduler import Scheduler
    preempted = []
    original = Scheduler._preempt_request

    def counting(self, request, *a, **kw):
        preempted.append(request.request_id)
        return original(self, request, *a, **kw)

    monkeypatch.setattr(Scheduler, "_preempt_request", counting)
    # 8 blocks of 32 tokens for 6 requests of ~8 + 72 tokens: vLLM must preempt, then recompute
    # the preempted requests (prompt and soft history) in chunks of at most 48 tokens.
    small = engine(smollm_path, max_model_len=128, num_gpu_blocks_override=8,
                   enable_chunked_prefill=True, max_num_batched_tokens=48, max_num_seqs=6)
    cfgs = [sk.SoftThinkingConfig(k=4), sk.SoftThinkingConfig(k=6, noise=sk.Gumbel(), seed=2),
            sk.SoftThinkingConfig(k=4, noise=sk.Gaussian(0.2), seed=5)]
    params = [_sp(cfgs[i % 3], n=72, ignore_eos=True) for i in range(6)]
    got = small.generate(PROMPTS, params, use_tqdm=False)
    traces = skv.pop_traces(small, [o.request_id for o in got])
    assert preempted, "the small KV cache did not preempt: the test would prove nothing"
    want = llm.generate(PROMPTS, params, use_tqdm=False)
    want_traces = skv.pop_traces(llm, [o.request_id for o in want])
    assert _tokens(got) == _tokens(want)
    for g, w in zip(got, want):
        x, y = traces[g.request_id], want_traces[w.request_id]
        assert x.num_steps == y.num_steps == 72
        assert torch.equal(x.mode, y.mode) and torch.equal(x.ids[0, :, 0], y.ids[0, :, 0])
        for t in range(12):
            assert _mixture_gap(x, y, t) <= 5e-3


def test_prefix_cache_never_serves_blocks_computed_from_soft_inputs(llm, smollm_path):
    from vllm.inputs import TokensPrompt
    assert llm.llm_engine.vllm_config.cache_config.enable_prefix_caching
    soft = llm.generate(PROMPTS[:1], _sp(sk.SoftThinkingConfig(k=8), n=48, ignore_eos=True),
                        use_tqdm=False)[0]
    # A plain request whose prompt is the soft request's prompt and thought: its first blocks
    # have the same token ids as blocks the soft request computed from soft inputs.
    ids = list(soft.prompt_token_ids) + list(soft.outputs[0].token_ids)
    got = llm.generate([TokensPrompt(prompt_token_ids=ids)], _sp(n=16), use_tqdm=False)[0]
    fresh = engine(smollm_path, enable_prefix_caching=False)
    want = fresh.generate([TokensPrompt(prompt_token_ids=ids)], _sp(n=16), use_tqdm=False)[0]
    assert list(got.outputs[0].token_ids) == list(want.outputs[0].token_ids)
    # and a soft request repeated gives the same thought (its thought's blocks are its own)
    again = llm.generate(PROMPTS[:1], _sp(sk.SoftThinkingConfig(k=8), n=48, ignore_eos=True),
                         use_tqdm=False)[0]
    assert list(again.outputs[0].token_ids) == list(soft.outputs[0].token_ids)
    skv.pop_traces(llm, [soft.request_id, again.request_id])


def test_blocks_past_the_prompt_of_a_soft_request_are_its_own(llm):
    """Block keys: shared inside the prompt, private to a soft request from the block holding its
    first generated position on (chained, so every later block is private too)."""
    from vllm.utils.hashing import sha256
    from vllm.v1.core.kv_cache_utils import get_request_block_hasher
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.request import Request
    ip = llm.llm_engine.input_processor
    assert isinstance(ip, InputProcessor)
    tasks = llm.llm_engine.get_supported_tasks() if hasattr(llm.llm_engine,
                                                           "get_supported_tasks") else ("generate",)
    bs = 16
    prompt = list(range(100, 140))                    # 40 tokens: blocks 0, 1 inside, 2 across
    hasher = get_request_block_hasher(bs, sha256)
    kinds = {"soft_a": _sp(sk.SoftThinkingConfig()), "soft_b": _sp(sk.SoftThinkingConfig()),
             "plain_a": _sp(), "plain_b": _sp()}
    hashes = {}
    for name, sp in kinds.items():
        req = ip.process_inputs(name, {"prompt_token_ids": prompt}, sp, tasks)
        core = Request.from_engine_core_request(req, hasher)     # as the engine core does
        assert core.cache_salt is None                           # no salt: prompts are shared
        core.append_output_token_ids(list(range(200, 224)))      # 64 tokens: 4 full blocks
        hashes[name] = list(core.block_hashes)
        assert len(hashes[name]) == 4
    sa, sb, pa, pb = hashes["soft_a"], hashes["soft_b"], hashes["plain_a"], hashes["plain_b"]
    assert pa == pb                                              # plain vLLM as it is
    assert sa[:2] == sb[:2] == pa[:2]                            # the prompt's blocks, shared
    for i in (2, 3):                                             # holding generated positions
        assert len({sa[i], sb[i], pa[i]}) == 3
    # the request's own copy of the params holds the resolved config (seed drawn, k, ...)
    core_req = ip.process_inputs("r", {"prompt": "Hello"}, _sp(sk.SoftThinkingConfig()), tasks)
    cfg = skv.config_from_args(core_req.sampling_params.extra_args)
    assert cfg.seed is not None and cfg.k == 10


def test_soft_requests_share_prompt_prefixes(llm):
    """A soft request repeated hits the prefix cache for its prompt's full blocks (and only
    those: its thought is computed from soft inputs)."""
    prompt = " ".join(["The quick brown fox jumps over the lazy dog."] * 8)
    cfg = sk.SoftThinkingConfig(k=8)
    first = llm.generate([prompt], _sp(cfg, n=40, ignore_eos=True), use_tqdm=False)[0]
    again = llm.generate([prompt], _sp(cfg, n=40, ignore_eos=True), use_tqdm=False)[0]
    skv.pop_traces(llm, [first.request_id, again.request_id])
    bs = llm.llm_engine.vllm_config.cache_config.block_size
    P = len(again.prompt_token_ids)
    assert P >= bs, "the prompt must fill a block for the test to mean anything"
    assert again.num_cached_tokens == (P // bs) * bs or \
        (P % bs == 0 and again.num_cached_tokens == P - bs)   # vLLM recomputes a full last block
    assert list(again.outputs[0].token_ids) == list(first.outputs[0].token_ids)


def test_n_children_are_keyed_like_hf_batch_rows(llm, hf):
    """SamplingParams(n=2): child i draws the noise of row i of a Hugging Face batch."""
    cfg = sk.SoftThinkingConfig(k=6, noise=sk.Gumbel(), seed=21)
    # vLLM wants sampling for n > 1; every step is soft (forced), so the sampler never chooses
    sp = vllm.SamplingParams(temperature=1.0, max_tokens=20, n=2, seed=0,
                             extra_args=skv.request_args(cfg))
    out = llm.generate(PROMPTS[:1], sp, use_tqdm=False)[0]
    assert len(out.outputs) == 2
    model, tok = hf
    sk.patch(model, cfg)
    try:
        enc = tok([PROMPTS[0]] * 2, return_tensors="pt")
        want = model.generate(**enc, max_new_tokens=20, do_sample=False,
                              return_dict_in_generate=True)
    finally:
        sk.unpatch(model)
    P = enc.input_ids.shape[1]
    got = sorted(list(c.token_ids) for c in out.outputs)
    hf_rows = sorted(want.sequences[:, P:].tolist())
    assert got[0] != got[1]                       # different noise, different thoughts
    for g, h in zip(got, hf_rows):
        n = next((t for t in range(len(h)) if g[t] != h[t]), len(h))
        assert n >= 12, (n, g, h)                 # cross-engine drift only late (see _agree)


def test_async_llm_abort_and_pop_traces_async(llm, smollm_path):
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM
    args = AsyncEngineArgs(model=smollm_path, dtype="float32", enforce_eager=True, block_size=32,
                           max_model_len=512, seed=0, **skv.engine_kwargs())
    eng = AsyncLLM.from_engine_args(args)
    cfg = sk.SoftThinkingConfig(k=4)
    sp = _sp(cfg, n=40, ignore_eos=True)

    async def run(i, abort_after=None):
        last = None
        async for out in eng.generate(PROMPTS[i], sp, request_id=f"req{i}"):
            last = out
            if abort_after is not None and len(out.outputs[0].token_ids) >= abort_after:
                await eng.abort(f"req{i}")
                break
        return last

    async def main():
        outs = await asyncio.gather(run(0), run(1, abort_after=5), run(2))
        await asyncio.sleep(0.5)
        traces = await skv.pop_traces_async(eng, ["req0", "req1", "req2"])
        return outs, traces

    try:
        outs, traces = asyncio.run(main())
    finally:
        eng.shutdown()
    want = llm.generate([PROMPTS[0], PROMPTS[2]], sp, use_tqdm=False)
    skv.pop_traces(llm, [o.request_id for o in want])
    assert list(outs[0].outputs[0].token_ids) == list(want[0].outputs[0].token_ids)
    assert list(outs[2].outputs[0].token_ids) == list(want[1].outputs[0].token_ids)
    assert traces["req0"].num_steps == 40 and traces["req2"].num_steps == 40
    assert traces["req0"].ids[0, :, 0].tolist() == list(outs[0].outputs[0].token_ids)
    if "req1" in traces:     # aborted after >= 5 tokens: its steps so far
        assert 5 <= traces["req1"].num_steps < 40


_CHILD = textwrap.dedent("""
    import json, os, sys
    import vllm, softkernels as sk
    from softkernels import vllm as skv
    llm = vllm.LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, block_size=32,
                   max_model_len=256, seed=0, **skv.engine_kwargs())
    sp = vllm.SamplingParams(temperature=0.0, max_tokens=24,
                             extra_args=skv.request_args(sk.SoftThinkingConfig(k=4)))
    outs = llm.generate(json.loads(sys.argv[2]), sp, use_tqdm=False)
    tr = skv.pop_traces(llm, [o.request_id for o in outs])
    print("RESULT", json.dumps({"tokens": [list(o.outputs[0].token_ids) for o in outs],
                                "top1": [tr[o.request_id].ids[0, :, 0].tolist() for o in outs],
                                "pid": os.getpid()}))
""")


def test_multiprocess_engine_loads_the_plugin_from_its_entry_point(llm, smollm_path):
    from importlib.metadata import entry_points
    eps = [e for e in entry_points(group="vllm.general_plugins") if e.name == "softkernels"]
    assert eps and eps[0].value == "softkernels.vllm:register"
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="1", VLLM_WORKER_MULTIPROC_METHOD="spawn")
    # spawn: the engine-core process starts from a fresh interpreter, so the hooks it runs come
    # from vLLM's plug-in loader (the entry point), not from this process.
    r = subprocess.run([sys.executable, "-c", _CHILD, smollm_path, json.dumps(PROMPTS[:2])],
                       env=env, capture_output=True, text=True, timeout=600)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, r.stderr[-3000:]
    res = json.loads(line[len("RESULT "):])
    want = llm.generate(PROMPTS[:2], _sp(sk.SoftThinkingConfig(k=4), n=24), use_tqdm=False)
    skv.pop_traces(llm, [o.request_id for o in want])
    assert res["tokens"] == _tokens(want)
    assert res["top1"] == res["tokens"]


def _config(smollm_path, **kw):
    from vllm.engine.arg_utils import EngineArgs
    return EngineArgs(model=smollm_path, dtype="float32", enforce_eager=True, block_size=32,
                      max_model_len=256, **kw).create_engine_config()


@pytest.mark.parametrize("kw, match", [
    (dict(speculative_config={"method": "ngram", "num_speculative_tokens": 2,
                              "prompt_lookup_max": 2}), "speculative decoding"),
    (dict(kv_transfer_config={"kv_connector": "ExampleConnector", "kv_role": "kv_both",
                              "kv_connector_extra_config": {"shared_storage_path": "/tmp/x"}}),
     "kv_transfer_config"),
    (dict(), "enable_prompt_embeds"),
])
def test_unsupported_engine_settings_are_refused_at_creation(smollm_path, kw, match):
    from softkernels.vllm._worker import SoftThinkingLogitsProcessor
    if "speculative_config" in kw or "kv_transfer_config" in kw:
        kw["enable_prompt_embeds"] = True
    try:
        cfg = _config(smollm_path, **kw)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"vLLM refuses this setting on the CPU itself: {e}")
    with pytest.raises(ValueError, match=match):
        SoftThinkingLogitsProcessor(cfg, torch.device("cpu"), False)


def test_model_runner_v2_is_refused(smollm_path, monkeypatch):
    from softkernels.vllm._worker import _unsupported
    cfg = _config(smollm_path, enable_prompt_embeds=True)
    assert _unsupported(cfg) is None
    monkeypatch.setattr(type(cfg), "use_v2_model_runner", property(lambda self: True))
    assert "Model Runner V2" in _unsupported(cfg)


def test_untested_vllm_version_is_refused(monkeypatch):
    monkeypatch.setattr(vllm, "__version__", "0.31.1")
    with pytest.raises(ValueError, match=r"vLLM 0.31.1 is not supported.*0\.32\.0"):
        skv.engine_kwargs()
    from softkernels.vllm._worker import check_vllm_version
    with pytest.raises(ValueError, match="0.31.1"):
        check_vllm_version()


def test_request_without_engine_plugin_is_refused(smollm_path):
    from _vllm_engines import _ALIVE
    plain = vllm.LLM(model=smollm_path, dtype="float32", enforce_eager=True, block_size=32,
                     max_model_len=256)
    _ALIVE.append(plain)
    with pytest.raises(ValueError, match="engine_kwargs"):
        plain.generate(PROMPTS[:1], _sp(sk.SoftThinkingConfig()), use_tqdm=False)
    assert len(_tokens(plain.generate(PROMPTS[:1], _sp(n=4), use_tqdm=False))[0]) == 4


def test_engine_default_config(smollm_path, llm):
    cfg = sk.SoftThinkingConfig(k=4)
    e = engine(smollm_path, default=cfg)
    outs = e.generate(PROMPTS[:2], [_sp(n=16), vllm.SamplingParams(
        temperature=0.0, max_tokens=16, extra_args=skv.request_args(False))], use_tqdm=False)
    traces = skv.pop_traces(e, [o.request_id for o in outs])
    assert set(traces) == {outs[0].request_id}             # the default applies; False opts out
    soft = llm.generate(PROMPTS[:1], _sp(cfg, n=16), use_tqdm=False)
    plain = llm.generate(PROMPTS[1:2], _sp(n=16), use_tqdm=False)
    skv.pop_traces(llm, [soft[0].request_id])
    assert _tokens(outs) == _tokens(soft) + _tokens(plain)


def test_rl_rollout_example_runs():
    """examples/vllm_rollout.py (in its own process: it owns an engine): rollouts through vLLM,
    the trainer's forward from the traces, answer-token log-probabilities equal to vLLM's."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, os.path.join(root, "examples", "vllm_rollout.py"),
                        "--prompts", "2", "--group", "2", "--new-tokens", "16",
                        "--think-tokens", "6"], capture_output=True, text=True, timeout=600)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, r.stderr[-3000:]
    res = json.loads(line[len("RESULT "):])
    assert res["rollouts"] == 4 and res["soft_steps"] == 4 * 6
    assert res["max_ratio_dev"] < 1e-3
    assert res["grad_norm"] > 0


_TP_CHILD = textwrap.dedent("""
    import json, sys
    import vllm, softkernels as sk
    from softkernels import vllm as skv

    def main():
        llm = vllm.LLM(model=sys.argv[1], dtype="float32", enforce_eager=True, block_size=32,
                       max_model_len=256, tensor_parallel_size=3,
                       distributed_executor_backend="mp", **skv.engine_kwargs())
        prompts = json.loads(sys.argv[2])
        res = {}
        for name, cfg in (("plain", None), ("k1", sk.SoftThinkingConfig(k=1)),
                          ("k4", sk.SoftThinkingConfig(k=4, noise=sk.Gaussian(0.1), seed=1))):
            extra = None if cfg is None else skv.request_args(cfg)
            sp = vllm.SamplingParams(temperature=0.0, max_tokens=16, extra_args=extra)
            outs = llm.generate(prompts, sp, use_tqdm=False)
            res[name] = [list(o.outputs[0].token_ids) for o in outs]
            if cfg is not None:
                tr = skv.pop_traces(llm, [o.request_id for o in outs])
                res[name + "_sigma"] = [tr[o.request_id].sigma for o in outs]
        print("RESULT", json.dumps(res), flush=True)

    if __name__ == "__main__":
        main()
""")


def test_tensor_parallel_3_ranks_mix_the_sharded_embedding(llm, smollm_path, tmp_path):
    """tensor_parallel_size=3 (SmolLM2 has 9 heads; 3 ranks share this machine's 2 cores):
    k=1 equals plain greedy, and soft tokens (vocab-sharded mixture, one all-reduce, Gaussian
    with RMS from the shards) equal the single-rank engine's."""
    script = tmp_path / "tp_child.py"
    script.write_text(_TP_CHILD)
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="1",
               VLLM_CPU_OMP_THREADS_BIND="0|1|0")   # vLLM's NUMA binding wants a core per rank
    r = subprocess.run([sys.executable, str(script), smollm_path, json.dumps(PROMPTS[:2])],
                       env=env, capture_output=True, text=True, timeout=600)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, r.stderr[-3000:]
    res = json.loads(line[len("RESULT "):])
    assert res["k1"] == res["plain"]
    cfg = sk.SoftThinkingConfig(k=4, noise=sk.Gaussian(0.1), seed=1)
    want = llm.generate(PROMPTS[:2], _sp(cfg, n=16), use_tqdm=False)
    tr = skv.pop_traces(llm, [o.request_id for o in want])
    for got, w in zip(res["k4"], want):
        wt = list(w.outputs[0].token_ids)
        n = next((t for t in range(len(wt)) if got[t] != wt[t]), len(wt))
        assert n >= 12, (n, got, wt)
        assert res["k4_sigma"][0] == pytest.approx(tr[w.request_id].sigma, rel=1e-5)
