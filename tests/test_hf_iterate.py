"""Think-at-Hard in the patched generate() (SoftThinkingConfig.iterate_hard), on tiny models of every
family: token for token against the naive reference (no cache, all rows, masking), the main KV
cache left bit-identical, work only on the hard rows, decider, adapter, errors."""

import dataclasses

import pytest
import torch

import softkernels as sk
import softkernels.hf.iterate as hf_iterate
from softkernels.hf.reference import generate_reference
from _hf_models import FAMILIES, make_model, prompts

transformers = pytest.importorskip("transformers")

NEW = 12
FAMS = [f for f in FAMILIES if f != "qwen3"]   # Llama, Qwen2, GPT-2, Gemma3 (qwen3 in one test)


def _gen(model, ids, mask, **kw):
    kw.setdefault("max_new_tokens", NEW)
    kw.setdefault("do_sample", False)
    kw.setdefault("return_dict_in_generate", True)
    return model.generate(ids, attention_mask=mask, **kw)


def _config(soft: bool, iterate: sk.IterateHard, **kw):
    if soft:
        return sk.SoftThinkingConfig(k=4, seed=11, iterate_hard=iterate, **kw)
    # Plain hard decoding with iterations: the budget of 0 thinking tokens makes every step hard.
    return sk.SoftThinkingConfig(max_think_tokens=0, iterate_hard=iterate, **kw)


def _pick_threshold(model, ids, mask, make, margin=1e-3):
    """A threshold with some hard and some easy steps whose deciding scores all lie at least
    `margin` away from it (so rounding differences between the cached and the naive computation
    cannot flip a decision). Returns (config, reference output)."""
    base = generate_reference(model, ids, mask, make(-float("inf")), NEW)
    s = torch.cat(base.scores).sort().values
    mids = ((s[1:] + s[:-1]) / 2)[(s[1:] - s[:-1]) > 2 * margin]
    target = s[int(0.5 * (len(s) - 1))]
    for thr in sorted(mids.tolist(), key=lambda x: abs(x - float(target)))[:12]:
        cfg = make(thr)
        ref = generate_reference(model, ids, mask, cfg, NEW)
        sc = torch.cat(ref.scores)
        frac = (ref.iterations > 0).float().mean().item()
        if (sc - thr).abs().min().item() > margin and 0.05 < frac < 0.95:
            return cfg, ref
    pytest.fail("no threshold with a safe margin found")


# --------------------------------------------------------------------------------------------
# Token for token against the naive reference.

@pytest.mark.parametrize("family", FAMS)
@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
@pytest.mark.parametrize("max_iter", [2, 3])
def test_matches_naive_reference(models, family, soft, max_iter):
    m = models(family)
    ids, mask = prompts(batch=4)     # left padding: rows with 6, 5, 4, 4 real tokens
    cfg, ref = _pick_threshold(
        m, ids, mask, lambda t: _config(soft, sk.IterateHard(max_iter=max_iter, threshold=t)))
    sk.patch(m, cfg)
    out = _gen(m, ids, mask)
    assert torch.equal(out.sequences, ref.sequences)
    tr = out.soft_trace
    assert torch.equal(tr.iterations, ref.iterations)
    assert torch.equal(tr.mode, ref.mode)
    assert 0 < (tr.iterations > 0).sum() < tr.iterations.numel()
    if max_iter == 3:
        assert tr.iterations.max() <= 2
    if soft:
        assert (tr.mode == 1).any()
    else:
        assert (tr.mode == 0).all()


def test_matches_reference_with_noise_router_cold_stop_and_think_end(models):
    m = models("qwen3")
    ids, mask = prompts(batch=4)

    def make(t):
        return sk.SoftThinkingConfig(k=5, seed=3, noise=sk.Gumbel(), think_end=7,
                                     router=sk.ConfidenceRouter(0.3), max_think_tokens=6,
                                     cold_stop=sk.ColdStop(0.05, 3),
                                     iterate_hard=sk.IterateHard(threshold=t, top_m=17))
    cfg, ref = _pick_threshold(m, ids, mask, make)
    sk.patch(m, cfg)
    out = _gen(m, ids, mask)
    assert torch.equal(out.sequences, ref.sequences)
    assert torch.equal(out.soft_trace.iterations, ref.iterations)
    assert torch.equal(out.soft_trace.mode, ref.mode)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_cache_off_matches_cache_on(models, family):
    m = models(family)
    ids, mask = prompts(batch=4)
    cfg, _ = _pick_threshold(m, ids, mask,
                             lambda t: _config(True, sk.IterateHard(max_iter=3, threshold=t)))
    sk.patch(m, cfg)
    a = _gen(m, ids, mask)
    b = _gen(m, ids, mask, use_cache=False)
    assert torch.equal(a.sequences, b.sequences)
    assert torch.equal(a.soft_trace.iterations, b.soft_trace.iterations)


# --------------------------------------------------------------------------------------------
# Selectivity: only hard rows run, the main cache is untouched, threshold 0 changes nothing.

def _is_iteration(kwargs, main_cache: list) -> bool:
    """Whether a forward is an iteration forward: the main forwards all get generate()'s cache
    (the one the first forward, the prefill, got); an iteration runs on a copy of it."""
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if not main_cache:
        main_cache.append(cache)
        return False
    return cache is not main_cache[0]


def _record_iteration_batches(model):
    """Batch sizes of the iteration forwards."""
    sizes, main = [], []

    def pre(mod, args, kwargs):
        if _is_iteration(kwargs, main):
            sizes.append(kwargs["inputs_embeds"].shape[0])
    return sizes, model.register_forward_pre_hook(pre, with_kwargs=True)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_only_hard_rows_run_iterations(models, family):
    m = models(family)
    ids, mask = prompts(batch=4)
    cfg, _ = _pick_threshold(m, ids, mask,
                             lambda t: _config(False, sk.IterateHard(threshold=t)))
    sk.patch(m, cfg)
    sizes, h = _record_iteration_batches(m)
    try:
        out = _gen(m, ids, mask)
    finally:
        h.remove()
    it = out.soft_trace.iterations
    per_step = (it > 0).sum(0).tolist()
    assert sizes == [n for n in per_step if n > 0]


def test_threshold_zero_runs_nothing_and_changes_nothing(models):
    m = models("llama")
    ids, mask = prompts(batch=3)
    sk.patch(m, sk.SoftThinkingConfig(k=4, seed=1))
    plain = _gen(m, ids, mask)
    sk.patch(m, sk.SoftThinkingConfig(k=4, seed=1, iterate_hard=sk.IterateHard(threshold=0.0)))
    sizes, h = _record_iteration_batches(m)
    try:
        out = _gen(m, ids, mask, output_logits=True)
    finally:
        h.remove()
    assert sizes == []
    assert torch.equal(out.sequences, plain.sequences)
    assert (out.soft_trace.iterations == 0).all()
    assert torch.equal(out.soft_trace.weights, plain.soft_trace.weights)


def test_max_iter_one_is_off(models):
    m = models("qwen2")
    ids, mask = prompts(batch=3)
    sk.patch(m, sk.SoftThinkingConfig(k=4, seed=1))
    plain = _gen(m, ids, mask)
    sk.patch(m, sk.SoftThinkingConfig(k=4, seed=1,
                                      iterate_hard=sk.IterateHard(max_iter=1, threshold=2.0)))
    out = _gen(m, ids, mask)
    assert torch.equal(out.sequences, plain.sequences)
    assert (out.soft_trace.iterations == 0).all()


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_main_cache_is_bit_identical_after_the_iterations(models, family, monkeypatch):
    m = models(family)
    ids, mask = prompts(batch=3)
    sk.patch(m, _config(True, sk.IterateHard(max_iter=3, threshold=1.1)))   # every row, twice
    original = hf_iterate._Iterator._step
    checked = []

    def step(self, kwargs, output):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        layers = list(cache.layers)
        before = [(layer, layer.keys, layer.values, layer.keys.clone(), layer.values.clone(),
                   getattr(layer, "cumulative_length", None)) for layer in layers]
        logits_before = output.logits.clone()
        original(self, kwargs, output)
        assert list(cache.layers) == layers
        for layer, k, v, k0, v0, cum in before:
            assert layer.keys is k and layer.values is v           # same tensors ...
            assert torch.equal(k, k0) and torch.equal(v, v0)       # ... bit for bit
            assert getattr(layer, "cumulative_length", None) == cum
        assert not torch.equal(output.logits, logits_before)       # the iterations did add
        checked.append(True)

    monkeypatch.setattr(hf_iterate._Iterator, "_step", step)
    out = _gen(m, ids, mask)
    assert len(checked) == NEW and (out.soft_trace.iterations == 2).all()


def test_iteration_logits_reach_output_logits_and_soft_embed(models):
    """output_logits holds the cumulative logits; the soft tokens are built from them."""
    m = models("llama")
    ids, mask = prompts(batch=2, pad_rows=False)
    sk.patch(m, _config(True, sk.IterateHard(threshold=1.1)))          # every row iterates
    out = _gen(m, ids, mask, output_logits=True, max_new_tokens=3)
    E = m.get_input_embeddings().weight
    for t, lg in enumerate(out.logits):
        st = sk.soft_embed(lg, E, k=4, temperature=0.6, top_k=30, top_p=0.95, min_p=0.001)
        assert torch.equal(st.ids, out.soft_trace.ids[:, t])
    # ... and they differ from the first pass alone.
    sk.patch(m, _config(True, sk.IterateHard(threshold=0.0)))
    first = _gen(m, ids, mask, output_logits=True, max_new_tokens=1)
    assert not torch.equal(first.logits[0], out.logits[0])


# --------------------------------------------------------------------------------------------
# Decider.

class _Decider:
    """A row-wise score from the last hidden state and the logits (like TaH's MLP decider)."""

    def __init__(self, D, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(D, generator=g)
        self.calls = []

    def __call__(self, hidden, logits):
        self.calls.append((len(hidden), tuple(hidden[-1].shape), tuple(logits.shape)))
        top = logits.float().topk(5, -1).values
        return torch.tanh(hidden[-1].float() @ self.w / 8) + 0.1 * (top[:, 0] - top[:, 1])


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_decider_matches_reference(models, family):
    m = models(family)
    ids, mask = prompts(batch=4)
    D = m.config.hidden_size
    dec = _Decider(D)
    cfg, ref = _pick_threshold(
        m, ids, mask,
        lambda t: _config(True, sk.IterateHard(max_iter=3, threshold=t, decider=dec)))
    sk.patch(m, cfg)
    dec.calls.clear()
    out = _gen(m, ids, mask)
    assert torch.equal(out.sequences, ref.sequences)
    assert torch.equal(out.soft_trace.iterations, ref.iterations)
    n_layers = m.config.num_hidden_layers
    B, V = 4, m.config.vocab_size
    assert dec.calls[0] == (n_layers + 1, (B, D), (B, V))          # first pass: all rows
    assert any(c[1][0] < B for c in dec.calls)                       # later: the hard rows only


def test_hidden_states_requested_only_with_a_decider(models):
    m = models("llama")
    ids, mask = prompts(batch=2)
    seen = []
    h = m.register_forward_hook(lambda mod, a, out: seen.append(out.hidden_states is not None))
    try:
        sk.patch(m, _config(False, sk.IterateHard(threshold=1.1)))
        _gen(m, ids, mask, max_new_tokens=3)
        assert not any(seen)
        seen.clear()
        sk.patch(m, _config(False, sk.IterateHard(threshold=1.1,
                                                  decider=lambda hs, lg: torch.zeros(len(lg)))))
        _gen(m, ids, mask, max_new_tokens=3)
        assert all(seen) and len(seen) == 6       # 3 main forwards + 3 iteration forwards
    finally:
        h.remove()


@pytest.mark.parametrize("bad,exc,match", [
    (lambda h, l: torch.zeros(len(l) + 1), ValueError, r"one score per row, shape \[3\]"),
    (lambda h, l: [0.0] * len(l), TypeError, r"must return a float tensor"),
    (lambda h, l: torch.zeros(len(l), dtype=torch.long), TypeError, r"must return a float tensor"),
])
def test_bad_decider_output(models, bad, exc, match):
    m = models("llama")
    ids, mask = prompts(batch=3)
    sk.patch(m, _config(False, sk.IterateHard(threshold=0.5, decider=bad)))
    with pytest.raises(exc, match=match):
        _gen(m, ids, mask, max_new_tokens=2)
    assert not m._forward_hooks and not m._forward_pre_hooks   # hooks removed on error


# --------------------------------------------------------------------------------------------
# Adapter (duck-typed PEFT API), tested with a fake adapter that shifts layer 0's input.

class _FakeAdapter:
    def __init__(self, model, name="tah"):
        self.model = model
        self.enabled = True
        self.active = None
        self.log = []
        D = model.config.hidden_size
        g = torch.Generator().manual_seed(5)
        self.delta = torch.randn(D, generator=g) * 0.5
        model._hf_peft_config_loaded = True
        model.peft_config = {name: object()}
        model.set_adapter = self.set_adapter
        model.enable_adapters = lambda: self._enable(True)
        model.disable_adapters = lambda: self._enable(False)
        layer0 = model.model.layers[0] if hasattr(model, "model") else model.transformer.h[0]
        self.handle = layer0.register_forward_pre_hook(self._shift, with_kwargs=True)

    def set_adapter(self, name):
        self.active = name

    def _enable(self, on):
        self.enabled = on
        self.log.append(on)

    def _shift(self, mod, args, kwargs):
        if not (self.enabled and self.active):
            return None
        if args:
            return (args[0] + self.delta,) + args[1:], kwargs
        kwargs = dict(kwargs)
        kwargs["hidden_states"] = kwargs["hidden_states"] + self.delta
        return args, kwargs

    def remove(self):
        self.handle.remove()
        for k in ("_hf_peft_config_loaded", "peft_config", "set_adapter", "enable_adapters",
                  "disable_adapters"):
            self.model.__dict__.pop(k, None)


def test_adapter_enabled_only_during_iterations():
    m = make_model("llama")
    ids, mask = prompts(batch=4)
    fake = _FakeAdapter(m)
    try:
        states, main = [], []   # adapter state of every forward: (is iteration forward, enabled)
        h = m.register_forward_pre_hook(
            lambda mod, a, kw: states.append((_is_iteration(kw, main), fake.enabled)),
            with_kwargs=True)
        cfg, ref = _pick_threshold(
            m, ids, mask,
            lambda t: _config(True, sk.IterateHard(threshold=t, adapter="tah")))
        states.clear()
        main.clear()
        sk.patch(m, cfg)
        out = _gen(m, ids, mask)
        h.remove()
        assert torch.equal(out.sequences, ref.sequences)
        assert torch.equal(out.soft_trace.iterations, ref.iterations)
        iteration_forwards = [on for it, on in states if it]
        main_forwards = [on for it, on in states if not it]
        assert iteration_forwards and all(iteration_forwards)
        assert len(main_forwards) == NEW and not any(main_forwards)
        assert fake.enabled and fake.active == "tah"         # after the call: enabled, active
        # The adapter matters: without it the iterations give other tokens or iterations.
        sk.patch(m, dataclasses.replace(cfg, iterate_hard=dataclasses.replace(
            cfg.iterate_hard, adapter=None)))
        fake.active = None
        plain = _gen(m, ids, mask)
        assert not (torch.equal(plain.sequences, out.sequences)
                    and torch.equal(plain.soft_trace.iterations, out.soft_trace.iterations))
    finally:
        fake.remove()


def test_adapter_errors(models):
    with pytest.raises(TypeError, match=r"IterateHard.adapter = 'x' needs a model with PEFT "
                                        r"adapters .* lacks set_adapter, enable_adapters, "
                                        r"disable_adapters"):
        hf_iterate.check_adapter_api(torch.nn.Linear(2, 2), "x")
    m = models("llama")
    ids, mask = prompts(batch=2)
    sk.patch(m, _config(False, sk.IterateHard(threshold=0.5, adapter="tah")))
    with pytest.raises(ValueError, match=r"no adapter loaded; call model.load_adapter"):
        _gen(m, ids, mask, max_new_tokens=2)
    fake = _FakeAdapter(m, name="other")
    try:
        with pytest.raises(ValueError, match=r"'tah' is not an adapter of this model "
                                             r"\(loaded: \['other'\]\)"):
            _gen(m, ids, mask, max_new_tokens=2)
    finally:
        fake.remove()


# --------------------------------------------------------------------------------------------
# Configuration, errors, unpatch.

@pytest.mark.parametrize("kw,exc,name", [
    (dict(threshold=0.5, max_iter=0), ValueError, "IterateHard.max_iter"),
    (dict(threshold=0.5, max_iter=65), ValueError, "IterateHard.max_iter"),
    (dict(threshold=0.5, max_iter=2.0), TypeError, "IterateHard.max_iter"),
    (dict(threshold=float("nan")), ValueError, "IterateHard.threshold"),
    (dict(threshold="0.5"), TypeError, "IterateHard.threshold"),
    (dict(threshold=0.5, top_m=0), ValueError, "IterateHard.top_m"),
    (dict(threshold=0.5, top_m=1025), ValueError, "IterateHard.top_m"),
    (dict(threshold=0.5, decider="mlp"), TypeError, "IterateHard.decider"),
    (dict(threshold=0.5, adapter=""), TypeError, "IterateHard.adapter"),
    (dict(threshold=0.5, adapter=3), TypeError, "IterateHard.adapter"),
])
def test_bad_iterate_hard_fields(kw, exc, name):
    with pytest.raises(exc, match=name):
        sk.IterateHard(**kw)


def test_iterate_hard_defaults_and_config_field():
    it = sk.IterateHard(threshold=0.7)
    assert (it.max_iter, it.threshold, it.top_m, it.decider, it.adapter) == (2, 0.7, 100, None,
                                                                              None)
    with pytest.raises(TypeError, match="threshold"):
        sk.IterateHard()
    assert sk.SoftThinkingConfig().iterate_hard is None
    with pytest.raises(TypeError, match="SoftThinkingConfig.iterate_hard"):
        sk.SoftThinkingConfig(iterate_hard=0.5)


def test_static_cache_is_refused_clearly(models):
    m = models("llama")
    ids, mask = prompts(batch=2)
    sk.patch(m, _config(False, sk.IterateHard(threshold=1.1)))
    with pytest.raises(ValueError, match=r"the cache is a StaticCache; the extra iterations "
                                         r"support the default DynamicCache"):
        _gen(m, ids, mask, max_new_tokens=2, cache_implementation="static")
    assert not m._forward_hooks and not m._forward_pre_hooks


def test_unpatch_is_exact_after_iterating(models):
    m = models("gemma3")
    ids, mask = prompts(batch=2)
    before = dict(m.__dict__)
    emb = m.get_input_embeddings()
    sk.patch(m, _config(True, sk.IterateHard(threshold=1.1)))
    _gen(m, ids, mask, max_new_tokens=3)
    assert not m._forward_hooks and not m._forward_pre_hooks and not emb._forward_hooks
    sk.unpatch(m)
    assert m.__dict__.keys() == before.keys()


def test_sampling_with_iterations_is_reproducible(models):
    m = models("qwen2")
    ids, mask = prompts(batch=3)
    sk.patch(m, _config(True, sk.IterateHard(threshold=0.9), router=sk.ConfidenceRouter(0.5)))
    kw = dict(do_sample=True, temperature=1.2, top_k=40)
    torch.manual_seed(0)
    a = _gen(m, ids, mask, **kw)
    torch.manual_seed(0)
    b = _gen(m, ids, mask, **kw)
    assert torch.equal(a.sequences, b.sequences)
    assert torch.equal(a.soft_trace.iterations, b.soft_trace.iterations)
    assert a.soft_trace.iterations.dtype == torch.int8


def test_no_trace_iterations_without_iterate_hard(models):
    m = models("llama")
    ids, mask = prompts(batch=2)
    sk.patch(m, sk.SoftThinkingConfig(k=3))
    assert _gen(m, ids, mask, max_new_tokens=2).soft_trace.iterations is None


# --------------------------------------------------------------------------------------------
# On the GPU (skipped without one): the same token-for-token check with the model on CUDA.

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_cuda_generate_matches_reference(family):
    m = make_model(family).to("cuda")
    ids, mask = prompts(batch=4)
    ids, mask = ids.cuda(), mask.cuda()
    cfg, ref = _pick_threshold(
        m, ids, mask, lambda t: _config(True, sk.IterateHard(max_iter=3, threshold=t)))
    sk.patch(m, cfg)
    out = _gen(m, ids, mask)
    assert out.sequences.device.type == "cuda"
    assert torch.equal(out.sequences, ref.sequences)
    assert torch.equal(out.soft_trace.iterations, ref.iterations)
    b = _gen(m, ids, mask, use_cache=False)
    assert torch.equal(b.sequences, out.sequences)
