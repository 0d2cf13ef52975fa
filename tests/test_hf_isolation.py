"""The soft rows reach the generating call's forward only, and reach it however it runs.

Defects of the former mechanism (a forward hook on the shared input embedding module), each a
test here: a compiled forward ignored the hook (soft steps in the trace, plain greedy tokens);
plain forwards in another thread got soft rows spliced in; two threads generating on one model
interfered; patch(torch.compile(model)) was accepted and then failed; HF's compiled generation
path was switched off (disable_compile).
"""

import threading

import pytest
import torch

import softkernels as sk
from _hf_models import FAMILIES, make_model, prompts

transformers = pytest.importorskip("transformers")

NEW = 8
# Wide mixtures (k=8 over an unfiltered, flattened distribution) for 5 steps: the soft rows
# change the tokens (checked in _soft_reference), so a path that loses them cannot pass.
SOFT = sk.SoftThinkingConfig(k=8, temperature=2.0, top_k=0, top_p=1.0, min_p=0.0,
                             max_think_tokens=5)


def _gen(model, ids, mask, **kw):
    kw.setdefault("max_new_tokens", NEW)
    kw.setdefault("do_sample", False)
    return model.generate(ids, attention_mask=mask, **kw)


def _soft_reference(family, ids, mask, config=SOFT, **kw):
    """(plain greedy, patched eager) sequences of a fresh model; the soft rows must matter."""
    m = make_model(family)
    plain = _gen(m, ids, mask, **kw)
    sk.patch(m, config)
    soft = _gen(m, ids, mask, **kw)
    if config.k > 1:
        assert not torch.equal(soft, plain)
    return plain, soft


def _static_compile_config(backend):
    """A CompileConfig that makes generate() compile its decoding forward on the CPU too (HF only
    auto-compiles on accelerators unless _compile_all_devices is set, as its own tests do)."""
    cc = transformers.CompileConfig(backend=backend, mode="default")
    cc._compile_all_devices = True
    return cc


# --------------------------------------------------------------------------------------------
# Compiled forwards.

@pytest.mark.parametrize("cache", ["dynamic", "static"])
@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_user_compiled_forward_gives_the_eager_tokens(backend, cache):
    """model.forward = torch.compile(model.forward), run once without soft thinking first (the
    former hook was then never seen by the compiled graph)."""
    ids, mask = prompts(batch=3)
    kw = {"cache_implementation": "static"} if cache == "static" else {}
    plain, soft = _soft_reference("llama", ids, mask, **kw)
    m = make_model("llama")
    m.forward = torch.compile(m.forward, backend=backend)
    assert torch.equal(_gen(m, ids, mask, **kw), plain)
    sk.patch(m, SOFT)
    out = _gen(m, ids, mask, return_dict_in_generate=True, **kw)
    assert (out.soft_trace.mode == 1).any()
    assert torch.equal(out.sequences, soft)


def test_module_compile_gives_the_eager_tokens():
    """nn.Module.compile() (a compiled __call__ on the model) after an unpatched call."""
    ids, mask = prompts(batch=3)
    plain, soft = _soft_reference("qwen2", ids, mask)
    m = make_model("qwen2")
    m.compile(backend="eager")
    assert torch.equal(_gen(m, ids, mask), plain)
    sk.patch(m, SOFT)
    assert torch.equal(_gen(m, ids, mask), soft)


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_hf_compiled_generation_path_runs_soft_thinking(backend):
    """Static cache + compile_config: generate() compiles its decoding forward (not disabled by
    the patch) and the compiled forward gets the soft rows."""
    ids, mask = prompts(batch=3)
    kw = dict(cache_implementation="static", compile_config=_static_compile_config(backend))
    plain, soft = _soft_reference("llama", ids, mask, cache_implementation="static")
    m = make_model("llama")
    assert torch.equal(_gen(m, ids, mask, **kw), plain)
    sk.patch(m, SOFT)
    m.__dict__.pop("_compiled_call", None)           # proves the patched call compiles again
    out = _gen(m, ids, mask, return_dict_in_generate=True, **kw)
    assert "_compiled_call" in m.__dict__            # HF's compiled path ran (cached on the model)
    assert torch.equal(out.sequences, soft)
    # k=1, no noise: token-identical to the unpatched compiled greedy decoding.
    out1 = _gen(m, ids, mask, soft_thinking=sk.SoftThinkingConfig(k=1), **kw)
    assert torch.equal(out1, plain)


@pytest.mark.parametrize("family", FAMILIES)
def test_k1_greedy_equals_plain_greedy_compiled(family):
    ids, mask = prompts(batch=3)
    kw = dict(cache_implementation="static", compile_config=_static_compile_config("eager"))
    m = make_model(family)
    plain = _gen(m, ids, mask, **kw)
    sk.patch(m, sk.SoftThinkingConfig(k=1))
    assert torch.equal(_gen(m, ids, mask, **kw), plain)
    assert torch.equal(_gen(m, ids, mask), plain)


# --------------------------------------------------------------------------------------------
# Threads.

def test_plain_forwards_in_another_thread_are_not_affected():
    m = make_model("llama")
    ids, mask = prompts(batch=3)
    _, soft = _soft_reference("llama", ids, mask, max_new_tokens=24)
    x, xm = prompts(batch=2, length=9, seed=7)
    with torch.no_grad():
        ref = m(x, attention_mask=xm).logits
    sk.patch(m, SOFT)
    stop, same, errors = threading.Event(), [], []

    def plain_forwards():
        try:
            while not stop.is_set():
                with torch.no_grad():
                    same.append(torch.equal(m(x, attention_mask=xm).logits, ref))
        except Exception as e:       # noqa: BLE001 (reported below, in the main thread)
            errors.append(e)

    th = threading.Thread(target=plain_forwards)
    th.start()
    try:
        outs = [_gen(m, ids, mask, max_new_tokens=24) for _ in range(3)]
    finally:
        stop.set()
        th.join()
    assert not errors
    assert len(same) >= 10 and all(same), f"{same.count(False)} of {len(same)} forwards changed"
    assert all(torch.equal(o, soft) for o in outs)


def test_concurrent_patched_generates_on_one_model_are_independent():
    m = make_model("llama")
    jobs = {  # name: (prompt, config): different batch sizes, lengths and configs
        "a": (prompts(batch=3), SOFT),
        "b": (prompts(batch=2, length=8, seed=4), sk.SoftThinkingConfig(k=1)),
        "c": (prompts(batch=4, seed=9), sk.SoftThinkingConfig(k=3, noise=sk.Gumbel(), seed=2,
                                                             max_think_tokens=6)),
    }
    want = {n: _gen(m, i, mk, max_new_tokens=16, soft_thinking=c) for n, ((i, mk), c) in
            jobs.items()} if sk.patch(m, SOFT) is m else None
    got, errors = {n: [] for n in jobs}, []

    def run(name):
        (i, mk), c = jobs[name]
        try:
            for _ in range(3):
                got[name].append(_gen(m, i, mk, max_new_tokens=16, soft_thinking=c))
        except Exception as e:       # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for n in jobs:
        assert len(got[n]) == 3 and all(torch.equal(o, want[n]) for o in got[n]), n


def test_the_model_is_untouched_during_and_after_a_patched_call():
    """No hook on any module, no new attribute on the model while generate() runs."""
    m = make_model("gpt2")
    ids, mask = prompts(batch=2)
    sk.patch(m, SOFT)
    before = dict(m.__dict__)
    seen = []

    def probe(input_ids, scores):
        seen.append((dict(m.__dict__) == before,
                     all(not (mod._forward_hooks or mod._forward_pre_hooks)
                         for mod in m.modules())))
        return scores

    _gen(m, ids, mask, logits_processor=[probe])
    assert len(seen) == NEW and all(a and b for a, b in seen)
    assert m.__dict__.keys() == before.keys()


# --------------------------------------------------------------------------------------------
# patch() on a torch.compile'd module.

def test_patch_on_an_optimized_module_patches_the_module_it_wraps():
    ids, mask = prompts(batch=3)
    plain, soft = _soft_reference("llama", ids, mask)
    m = make_model("llama")
    compiled = torch.compile(m, backend="eager")
    assert sk.patch(compiled, SOFT) is compiled
    assert sk.hf.is_patched(compiled) and sk.hf.is_patched(m)
    out = compiled.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                            return_dict_in_generate=True)
    assert torch.equal(out.sequences, soft) and out.soft_trace.num_steps == NEW
    sk.unpatch(compiled)
    assert not sk.hf.is_patched(m)
    assert torch.equal(_gen(compiled, ids, mask), plain)
