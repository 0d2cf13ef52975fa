"""``patch`` / ``unpatch``: soft thinking inside a Hugging Face model's own ``generate()``.

Mechanism (docs/hf.md has the reasoning):

* ``patch`` sets one instance attribute, ``model.generate``, to a wrapper (and keeps its state in
  ``model._softkernels_patch``); ``unpatch`` deletes both. Nothing else on the model changes, and
  no hook is ever registered on it or on its modules.
* Each wrapped call checks the generation mode, creates per-call state, appends one logits
  processor to a copy of the caller's ``logits_processor`` list (custom processors run after
  Hugging Face's own processors and before its sampling warpers) and runs Hugging Face's
  ``generate`` on a *call view* of the model: a second Python object of the model's class that
  shares the model's ``__dict__`` entries (modules, parameters, buffers, hooks, config), except
  that calling it (``view(...)``, ``view.__call__``, ``view.get_compiled_call(...)``, which is all
  ``generate`` uses to run the forward) goes through the call's own forward wrapper. No other
  caller can see the view: plain forwards of the model, other threads and other generate calls
  run the model unchanged.
* The processor runs :func:`softkernels.policy.step` on the step's scores (all rows at once:
  soft_embed, route_step, the forced token), keeps the soft embeddings for the next forward and
  masks the scores of forced rows to the one token the row must emit, so that greedy and sampling
  both pick it.
* The forward wrapper replaces, in every decoding forward, ``input_ids`` by ``inputs_embeds``:
  the input embedding module's own output for the ids, with the rows whose last step was soft
  replaced by their soft embedding (scaled like the module scales its rows). Hard rows keep the
  module's own output, so with k=1 and no noise the patched model reproduces plain greedy decoding
  bit for bit. Because the soft rows are an *input* of the forward, a compiled forward (the user's
  ``torch.compile``, or Hugging Face's own static-cache compiled path) sees them like eager does.
"""

from __future__ import annotations

import copy
import inspect
import math
import sys
from typing import Any, List, Optional

import torch
from torch import nn

from .. import ops as _ops
from .. import policy
from ..routing import RouteState
from .config import SoftThinkingConfig
from .iterate import _Iterator
from .trace import SoftTrace, trace_from_steps

__all__ = ["patch", "unpatch", "is_patched"]

_ATTR = "_softkernels_patch"


# --------------------------------------------------------------------------------------------
# Model inspection (done once, in patch).

def _peft_embedding(emb):
    """For a PEFT wrapper of the input embedding: the nn.Embedding its forward runs now, or a
    TypeError saying why soft thinking cannot feed it; ``emb`` itself otherwise."""
    if sys.modules.get("peft") is None:
        return emb
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import ModulesToSaveWrapper
    if isinstance(emb, ModulesToSaveWrapper):
        # modules_to_save=["embed_tokens"]: a full trained copy per adapter; its forward runs the
        # active adapter's copy, or the original module when adapters are off (PEFT's rule).
        active = list(emb.active_adapters)
        if emb.disable_adapters or not active or any(a not in emb.modules_to_save
                                                      for a in active):
            return emb.original_module
        return emb.modules_to_save[active[0]]
    if isinstance(emb, BaseTunerLayer):
        raise TypeError(
            f"softkernels.patch: the input embedding is a PEFT {type(emb).__module__}."
            f"{type(emb).__name__} layer (an adapter such as LoRA on embed_tokens). Its rows are "
            "the base rows plus the adapter's low-rank update, a matrix the model never forms; "
            "soft thinking mixes rows of one embedding matrix in a fused kernel, so it cannot feed "
            "this layer. Merge the adapter first (peft_model.merge_and_unload()), leave "
            "embed_tokens out of target_modules, or train it with modules_to_save=['embed_tokens'] "
            "(supported)")
    return emb


def _input_embedding(model) -> nn.Embedding:
    get = getattr(model, "get_input_embeddings", None)
    if get is None:
        raise TypeError(f"softkernels.patch: {type(model).__name__} has no get_input_embeddings(); "
                        "pass a Hugging Face causal language model")
    try:
        emb = get()
    except NotImplementedError:
        emb = None
    emb = _peft_embedding(emb)
    if not isinstance(emb, nn.Embedding):
        raise TypeError(
            f"softkernels.patch: the input embedding of {type(model).__name__} is "
            f"{type(emb).__name__}, not a torch.nn.Embedding; soft thinking mixes rows of the "
            "embedding matrix, so only models whose input embedding is an nn.Embedding (plain or "
            "scaled, like Gemma's) are supported")
    return emb


def _embed_scale(emb: nn.Embedding) -> Optional[torch.Tensor]:
    """The scalar the module multiplies looked-up rows by, or None; checks that this is all it does."""
    scale = None
    if type(emb).forward is not nn.Embedding.forward:
        s = getattr(emb, "embed_scale", None)
        if isinstance(s, torch.Tensor) and s.numel() == 1:
            scale = s.detach().reshape(())
        elif isinstance(s, (int, float)) and not isinstance(s, bool):
            scale = torch.tensor(float(s))
    if emb.weight.device.type == "meta":
        return scale
    n = min(emb.num_embeddings, 8)
    ids = torch.arange(n, device=emb.weight.device)
    with torch.no_grad():
        got = emb(ids)
        want = nn.functional.embedding(ids, emb.weight)
        if scale is not None:
            want = want * scale.to(device=want.device, dtype=emb.weight.dtype)
    if not (isinstance(got, torch.Tensor) and got.shape == want.shape and torch.equal(got, want)):
        raise TypeError(
            f"softkernels.patch: the input embedding ({type(emb).__name__}) computes something "
            "other than a table lookup (optionally times a scalar embed_scale); soft tokens "
            "cannot be fed through it")
    return scale


def _resolve_think_end(think_end, tokenizer, vocab_size: int) -> Optional[int]:
    if think_end is None:
        return None
    if isinstance(think_end, int):
        if think_end >= vocab_size:
            raise ValueError(f"SoftThinkingConfig.think_end = {think_end} is not a token id of "
                             f"this model (vocabulary size {vocab_size})")
        return think_end
    if tokenizer is None:
        raise ValueError(f"SoftThinkingConfig.think_end = {think_end!r} is a string: pass the "
                         "tokenizer (patch(model, config, tokenizer=tok) or "
                         "model.generate(..., tokenizer=tok)) or give the token id")
    ids = tokenizer.encode(think_end, add_special_tokens=False)
    if len(ids) != 1:
        tid = tokenizer.convert_tokens_to_ids(think_end)
        unk = getattr(tokenizer, "unk_token_id", None)
        if isinstance(tid, int) and tid >= 0 and tid != unk:
            ids = [tid]
    if len(ids) != 1:
        raise ValueError(f"SoftThinkingConfig.think_end = {think_end!r} is not a single token "
                         f"for this tokenizer (it encodes to {len(ids)} tokens: {ids}); pass a "
                         "string that is one token, or the token id")
    return _resolve_think_end(int(ids[0]), None, vocab_size)


def _check_top_k(config: SoftThinkingConfig, V: int) -> None:
    if config.k is None:
        return  # the full-vocabulary path takes any top_k (soft_embed(k=None))
    if _ops.MAX_POOL < config.top_k < V:
        raise ValueError(f"SoftThinkingConfig.top_k = {config.top_k} is larger than the kernels' "
                         f"candidate pool ({_ops.MAX_POOL} tokens) but smaller than the "
                         f"vocabulary ({V}); use top_k <= {_ops.MAX_POOL}, or 0 for off")
    if config.k > V:
        raise ValueError(f"SoftThinkingConfig.k = {config.k} is larger than the vocabulary ({V})")


class _Patch:
    """What patch() stores on the model (plain attributes: survives deepcopy and pickling)."""

    def __init__(self, config, tokenizer, think_end_id, had_previous, previous):
        self.config = config
        self.tokenizer = tokenizer
        self.think_end_id = think_end_id
        self.had_previous = had_previous   # was there an instance-level generate before patching?
        self.previous = previous           # ... and if so, that object

    def original(self, model):
        """The generate() that was in place before patching, bound to ``model``."""
        return self.previous if self.had_previous else type(model).generate.__get__(model)


class _SoftGenerate:
    """``model.generate`` while patched: a picklable, deep-copyable stand-in for a bound method."""

    def __init__(self, model):
        self.__self__ = model

    @property
    def __wrapped__(self):          # inspect.signature(model.generate) shows generate's own
        return self.__self__.__dict__[_ATTR].original(self.__self__)

    @property
    def __doc__(self):
        return _soft_generate.__doc__

    def __call__(self, *args, **kwargs):
        return _soft_generate(self.__self__, *args, **kwargs)


def _target(model):
    """The module patch() acts on: ``model`` itself, or the module a wrapper delegates
    ``generate`` to.

    * ``torch.compile(model)`` (an OptimizedModule): its ``generate`` attribute is the wrapped
      module's (``__getattr__`` forwards it), and that generate runs the wrapped module, exactly
      as it does unpatched. Patching the wrapped module gives the same behaviour with soft
      thinking. (To compile the forward *with* soft thinking, use Hugging Face's compiled path,
      ``cache_implementation="static"`` plus ``compile_config``, or ``model.forward =
      torch.compile(model.forward)``: see docs/hf.md.)
    * a PEFT ``PeftModel``: its ``generate`` ends in the base transformers model's ``generate``
      (through the tuner, e.g. LoraModel); the adapters are layers inside that model. Patching the
      base model keeps every call form of ``PeftModel.generate`` and survives
      ``merge_and_unload()`` (which returns that same base model).
    """
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        orig = getattr(model, "__dict__", {}).get("_modules", {}).get("_orig_mod")
        if orig is not None and type(model).__name__ == "OptimizedModule":
            model = orig
            continue
        peft = sys.modules.get("peft")
        if peft is not None and isinstance(model, peft.PeftModel):
            model = model.get_base_model()
            continue
        break
    return model


def is_patched(model) -> bool:
    """Whether ``softkernels.patch`` is in effect on ``model`` (or the module it wraps)."""
    return isinstance(getattr(_target(model), "__dict__", {}).get(_ATTR), _Patch)


def patch(model, config: SoftThinkingConfig = SoftThinkingConfig(), *, tokenizer=None):
    """Makes ``model.generate()`` run soft thinking; returns the model.

    After patching, the model's own ``generate`` (greedy or sampling, batched with left padding,
    with or without the KV cache, streamers, stopping criteria, logits processors) thinks with
    soft tokens as ``config`` says; ``generate(..., return_dict_in_generate=True)`` also returns
    ``output.soft_trace`` (:class:`softkernels.SoftTrace`). Per call, ``generate(...,
    soft_thinking=False)`` runs the unpatched generation and ``soft_thinking=<SoftThinkingConfig>``
    overrides the config.

    Patching again replaces the config (patch is idempotent: the wrapper is never stacked).
    :func:`unpatch` restores the model exactly.

    Args:
        model: a Hugging Face decoder-only model with ``generate`` whose input embedding is an
            ``nn.Embedding`` (optionally scaled by ``embed_scale``, as Gemma's), or a
            ``peft.PeftModel`` or ``torch.compile``'d module wrapping one: then the wrapped
            transformers model is patched (and the wrapper returned); see docs/hf.md.
        config: :class:`softkernels.SoftThinkingConfig`.
        tokenizer: needed only when ``config.think_end`` is a string.

    Raises:
        TypeError: model or config of the wrong type, or an input embedding that is not an
            ``nn.Embedding`` lookup.
        ValueError: a config that does not fit the model (think_end not a single token, ...).
    """
    given, model = model, _target(model)
    if not isinstance(config, SoftThinkingConfig):
        raise TypeError(f"softkernels.patch: config must be a softkernels.SoftThinkingConfig, got "
                        f"{type(config).__name__} {config!r}")
    if not isinstance(model, nn.Module) or not callable(getattr(model, "generate", None)):
        raise TypeError(f"softkernels.patch: model must be a Hugging Face model with generate(), "
                        f"got {type(model).__name__}")
    model_config = getattr(model, "config", None)
    if getattr(model_config, "is_encoder_decoder", False):
        raise ValueError(f"softkernels.patch: {type(model).__name__} is an encoder-decoder model; "
                         "soft thinking supports decoder-only models")
    emb = _input_embedding(model)
    _embed_scale(emb)
    _check_top_k(config, emb.num_embeddings)
    if tokenizer is not None and not callable(getattr(tokenizer, "encode", None)):
        raise TypeError(f"softkernels.patch: tokenizer must be None or a Hugging Face tokenizer "
                        f"(with encode()), got {type(tokenizer).__name__} {tokenizer!r}")
    think_end_id = _resolve_think_end(config.think_end, tokenizer, emb.num_embeddings)

    existing = model.__dict__.get(_ATTR)
    if isinstance(existing, _Patch):
        existing.config = config
        existing.tokenizer = tokenizer if tokenizer is not None else existing.tokenizer
        existing.think_end_id = think_end_id
        return given
    had_previous = "generate" in model.__dict__
    p = _Patch(config, tokenizer, think_end_id, had_previous, model.__dict__.get("generate"))
    model.__dict__[_ATTR] = p
    model.__dict__["generate"] = _SoftGenerate(model)
    return given


def unpatch(model):
    """Undoes :func:`patch` exactly (a no-op on a model that is not patched); returns the model."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"softkernels.unpatch: model must be a torch.nn.Module (the model given to "
                        f"patch), got {type(model).__name__} {model!r}")
    given, model = model, _target(model)
    p = model.__dict__.get(_ATTR)
    if not isinstance(p, _Patch):
        return given
    del model.__dict__[_ATTR]
    if not p.had_previous:
        model.__dict__.pop("generate", None)
    else:
        model.__dict__["generate"] = p.previous
    return given


# --------------------------------------------------------------------------------------------
# The generate() wrapper.

def _effective_generation_config(model, generation_config, kwargs):
    """The GenerationConfig that generate() will use (same merge rules), for validation only."""
    import warnings
    from transformers.utils import logging as hf_logging
    prepare = getattr(model, "_prepare_generation_config", None)
    if prepare is not None:
        # generate() repeats this merge and emits its warnings itself: keep this one quiet.
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                gc, _ = prepare(generation_config, **dict(kwargs))
            return gc
        except TypeError:
            pass
        finally:
            hf_logging.set_verbosity(verbosity)
    gc = copy.deepcopy(generation_config if generation_config is not None
                       else model.generation_config)
    gc.update(**{k: v for k, v in kwargs.items() if hasattr(gc, k)})
    return gc


def _check_mode(model, gc, args) -> None:
    fn = "softkernels (patched generate)"
    if args.get("custom_generate") is not None:
        raise ValueError(f"{fn}: custom_generate={args['custom_generate']!r} is not supported "
                         "with soft thinking; unpatch the model or pass soft_thinking=False")
    if args.get("assistant_model") is not None or getattr(gc, "prompt_lookup_num_tokens", None) \
            is not None or getattr(gc, "assistant_early_exit", None) is not None \
            or getattr(gc, "use_mtp", False):
        raise ValueError(f"{fn}: assisted decoding (assistant_model / prompt_lookup_num_tokens / "
                         "assistant_early_exit) is not supported with soft thinking; unpatch the "
                         "model or pass soft_thinking=False")
    num_beams = getattr(gc, "num_beams", None)
    if num_beams is not None and num_beams > 1:
        raise ValueError(f"{fn}: beam search (num_beams={num_beams}) is not supported with soft "
                         "thinking; use greedy or sampling (num_beams=1), or pass "
                         "soft_thinking=False")
    gen_mode = gc.get_generation_mode(args.get("assistant_model"))
    mode = str(getattr(gen_mode, "value", gen_mode))
    if mode not in ("greedy_search", "sample"):
        raise ValueError(f"{fn}: generation mode {mode!r} is not supported with soft thinking; "
                         "only greedy search and sampling are (num_beams=1, no penalty_alpha, "
                         "no constraints)")
    guidance = getattr(gc, "guidance_scale", None)
    if guidance is not None and guidance != 1:
        raise ValueError(f"{fn}: classifier-free guidance (guidance_scale={guidance}) is not "
                         "supported with soft thinking")
    if getattr(gc, "cache_implementation", None) == "paged":
        raise ValueError(f"{fn}: continuous batching (cache_implementation='paged') is not "
                         "supported with soft thinking")


def _soft_generate(self, *args, soft_thinking=None, **kwargs):
    """Hugging Face ``generate`` with soft thinking (installed by ``softkernels.patch``)."""
    p: _Patch = self.__dict__[_ATTR]
    if soft_thinking is False:
        return p.original(self)(*args, **kwargs)
    if soft_thinking is None or soft_thinking is True:
        config, think_end_id = p.config, p.think_end_id
    elif isinstance(soft_thinking, SoftThinkingConfig):
        config = soft_thinking
    else:
        raise TypeError(f"generate: soft_thinking must be None, False or a "
                        f"softkernels.SoftThinkingConfig, got {type(soft_thinking).__name__}")

    original = p.original(self)
    signature = inspect.signature(original)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"generate: {e}") from None
    arguments = dict(bound.arguments)
    extra = arguments.pop("kwargs", {}) if "kwargs" in signature.parameters else {}
    emb = _input_embedding(self)
    if isinstance(soft_thinking, SoftThinkingConfig):
        _check_top_k(config, emb.num_embeddings)
        think_end_id = _resolve_think_end(config.think_end, extra.get("tokenizer", p.tokenizer),
                                          emb.num_embeddings)

    gc = _effective_generation_config(self, arguments.get("generation_config"), extra)
    _check_mode(self, gc, {**arguments, **extra})
    use_cache = gc.use_cache is not False
    record = bool(gc.return_dict_in_generate)

    eos = gc.eos_token_id
    eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
    state = _CallState(config, think_end_id, emb, _embed_scale(emb), use_cache, record,
                       None if isinstance(eos, (list, tuple)) else eos)
    processors = _logits_processor_list(arguments.get("logits_processor"))
    processors.append(_SoftThinkingProcessor(state))
    arguments["logits_processor"] = processors
    iterator = None
    if config.iterate_hard is not None:
        # Think-at-Hard: extra iterations for the hard rows after every main forward, run by the
        # call's forward wrapper (see hf/iterate.py).
        iterator = _Iterator(self, config.iterate_hard, emb, state.scale, record)
        state.iter_rec = iterator.rec
    state.iterator = iterator
    generate = _generate_function(self, p)
    view = _call_view(self, state)
    try:
        if iterator is not None:
            iterator.install()
        result = generate(view, **arguments, **extra)
    finally:
        if iterator is not None:
            iterator.remove()
        state.release()
        _copy_back(view, self)
    if record and state.steps and hasattr(result, "sequences"):
        trace = state.build_trace(result.sequences, gc.eos_token_id)
        result = _with_trace(result, trace)
    return result


def _generate_function(model, p: "_Patch"):
    """The generate() in place before patching, as a function of the model object it runs on."""
    if not p.had_previous:
        return type(model).generate
    prev = p.previous
    if getattr(prev, "__self__", None) is model and hasattr(prev, "__func__"):
        return prev.__func__            # an instance-level bound method: rebound to the view
    raise TypeError(f"softkernels (patched generate): {type(model).__name__} had an "
                    f"instance-level generate ({type(prev).__name__}) that is not a method of "
                    "the model; soft thinking cannot run it on the call's view of the model. "
                    "Unpatch, remove it, and patch again")


# Entries of the model's __dict__ that the call view leaves out (the patch itself) or replaces
# (the three ways generate() runs the forward).
_VIEW_DROP = (_ATTR, "generate")


def _call_view(model, state: "_CallState"):
    """A per-call stand-in for ``model`` on which Hugging Face's generate() runs.

    It is an instance of the model's class whose ``__dict__`` is a shallow copy of the model's:
    the same modules, parameters, buffers, hook dictionaries, config and generation config
    objects, so it computes exactly what the model computes. Three entries differ, and they are
    the only ways generate() runs the forward:

    * ``_compiled_call_impl``: ``nn.Module.__call__`` (``view(**inputs)``, the prefill) calls it
      when set (it is how ``nn.Module.compile`` installs a compiled call);
    * ``__call__``: generate()'s uncompiled decoding forward is ``self.__call__``;
    * ``get_compiled_call``: its compiled decoding forward (static cache + compile_config); the
      view asks the model for its compiled call (compiled and cached on the model, as an
      unpatched generate() does) and wraps it.

    Each of them calls ``state.forward``, which feeds the pending soft rows as ``inputs_embeds``
    and then calls the model itself (so the model's own compiled call, hooks and forward run).
    """
    view = object.__new__(type(model))
    # transformers 4.x keeps a static cache on the model (``_cache``) for the next call: this
    # call takes it exclusively (a concurrent call then makes its own) and gives it back.
    cache = model.__dict__.pop("_cache", None)
    d = {k: v for k, v in model.__dict__.items() if k not in _VIEW_DROP}
    if cache is not None:
        d["_cache"] = cache

    def call(*args, **kwargs):
        return state.forward(model, args, kwargs)

    def get_compiled_call(compile_config):
        compiled = model.get_compiled_call(compile_config)
        if compiled is getattr(model, "__call__"):
            return call

        def compiled_call(*args, **kwargs):
            return state.forward(compiled, args, kwargs)
        return compiled_call

    d["_compiled_call_impl"] = call
    d["__call__"] = call
    d["get_compiled_call"] = get_compiled_call
    view.__dict__.update(d)
    return view


def _copy_back(view, model) -> None:
    """What generate() records on the model for later calls (so a later call, patched or not,
    reuses it as after an unpatched call): the static cache length that avoids recompiles
    (transformers 5) or the static cache itself (transformers 4, unless another call put one
    back first)."""
    n = view.__dict__.get("_previous_max_cache_length")
    if isinstance(n, int) and n > model.__dict__.get("_previous_max_cache_length", -1):
        model.__dict__["_previous_max_cache_length"] = n
    cache = view.__dict__.get("_cache")
    if cache is not None:
        model.__dict__.setdefault("_cache", cache)


def _logits_processor_list(user):
    from transformers import LogitsProcessorList
    out = LogitsProcessorList()
    if user is not None:
        out.extend(list(user))
    return out


_OUTPUT_CLASSES = {}


def _with_trace(result, trace: SoftTrace):
    """The output as an instance of a subclass of its own class with a ``soft_trace`` field."""
    from dataclasses import dataclass
    cls = type(result)
    sub = _OUTPUT_CLASSES.get(cls)
    if sub is None:
        ns = {"__annotations__": {"soft_trace": Optional[SoftTrace]}, "soft_trace": None,
              "__doc__": f"{cls.__name__} with the soft-thinking trace (softkernels.SoftTrace).",
              "__module__": __name__}
        sub = dataclass(type("Soft" + cls.__name__, (cls,), ns))
        _OUTPUT_CLASSES[cls] = sub
    values = {k: v for k, v in result.items()}
    out = sub(**values, soft_trace=trace)
    return out


class _CallState:
    """Per-generate-call state shared by the logits processor and the forward wrapper."""

    def __init__(self, config: SoftThinkingConfig, think_end_id, emb: nn.Embedding, scale,
                 use_cache: bool, record: bool, eos_id=None):
        self.config = config
        self.think_end_id = think_end_id
        self.emb = emb
        self.weight = emb.weight
        self.iterator = None
        self.scale = None if scale is None else scale.to(device=emb.weight.device,
                                                         dtype=emb.weight.dtype)
        self.step_config = policy.StepConfig.resolve(config, think_end_id, emb.weight, eos_id)
        self.use_cache = use_cache
        self.record = record
        if config.seed is None:
            self.base_seed = int(torch.randint(-(2 ** 62), 2 ** 62, (1,)).item())
        else:
            self.base_seed = config.seed
        # The fix-up for a think-end token sampled at a router-hard step (see _step).
        self.fixup = think_end_id is not None and config.router is not None
        self.steps = 0
        self.B = None
        self.prompt_length = None
        self.route: Optional[RouteState] = None
        self.seeds = None
        self.pending_embeds = None   # [B, D] soft embeddings of the last step (E's dtype)
        self.pending_mask = None     # bool [B]: rows whose last step was soft
        self.history: List[Any] = []  # use_cache=False: (embeds, mask) of every step
        self.iter_rec: Optional[List[torch.Tensor]] = None   # iterate_hard: int8 [B] per step
        self.rec = {k: [] for k in ("ids", "weights", "noise", "entropy", "max_prob", "mode",
                                    "phase")}

    # ---- logits processor side --------------------------------------------------------------
    def start(self, input_ids: torch.Tensor, scores: torch.Tensor) -> None:
        B, V = scores.shape
        if V > self.weight.shape[0]:
            raise ValueError(f"softkernels: the model scores {V} tokens but its input embedding "
                             f"has only {self.weight.shape[0]} rows")
        if scores.device != self.weight.device:
            raise ValueError(f"softkernels: generate() produced scores on {scores.device} but the "
                             f"input embedding is on {self.weight.device}; move input_ids (and "
                             "attention_mask) to the model's device")
        self.B = B
        self.prompt_length = input_ids.shape[1]
        self.route = RouteState.start(B, device=scores.device)
        self.seeds = policy.row_seeds(self.base_seed, B, scores.device)

    def step(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.steps == 0:
            self.start(input_ids, scores)
        # With a router, a think-end token sampled at a router-hard step ends thinking; without
        # one every thinking step emits route_step's token, so the check would change nothing.
        last = input_ids[:, -1] if self.fixup and self.steps > 0 else None
        # First step validates the data (NaN / inf, parameter ranges); later steps skip the
        # data check, which would read values back to the host every step.
        st = policy.step(scores, self.weight, self.step_config, self.route, self.seeds,
                         self.steps, last_token=last, validate=self.steps == 0)
        tok, soft = st.tokens, st.soft
        out = policy.force_scores(scores, st.force, st.token)

        self.pending_embeds = tok.embeds
        self.pending_mask = soft
        if not self.use_cache:
            self.history.append((tok.embeds, soft))
        if self.record:
            r = self.rec
            r["ids"].append(tok.ids)
            r["weights"].append(tok.weights)
            r["noise"].append(tok.noise)
            r["entropy"].append(tok.entropy)
            r["max_prob"].append(tok.max_prob)
            r["mode"].append(st.mode)
            r["phase"].append(st.state.phase)
        self.route = st.state
        self.steps += 1
        return out

    # ---- forward side ------------------------------------------------------------------------
    def soft_rows(self, embeds: torch.Tensor) -> torch.Tensor:
        return embeds if self.scale is None else embeds * self.scale

    def inputs_embeds(self, ids: torch.Tensor) -> torch.Tensor:
        """[B, L, D]: the input embedding module's output for ``ids`` [B, L], with the generated
        positions whose step was soft replaced by their soft embedding (times embed_scale)."""
        out = self.emb(ids)
        if out.dim() != 3 or out.shape[0] != self.B:
            raise RuntimeError(f"softkernels: unexpected decoding forward with input_ids of shape "
                               f"{tuple(ids.shape)} during soft-thinking generation (batch "
                               f"{self.B})")
        L = out.shape[1]
        if L == 1:
            soft = self.soft_rows(self.pending_embeds).unsqueeze(1).to(out.dtype)
            return torch.where(self.pending_mask[:, None, None], soft, out)
        if not self.history:
            raise RuntimeError("softkernels: the model re-ran several positions during decoding "
                               "although the cache is on; this generation path is not supported")
        G = min(L, len(self.history))
        embeds = torch.stack([e for e, _ in self.history[-G:]], 1)
        mask = torch.stack([m for _, m in self.history[-G:]], 1)
        out = out.clone()
        out[:, L - G:] = torch.where(mask.unsqueeze(-1), self.soft_rows(embeds).to(out.dtype),
                                     out[:, L - G:])
        return out

    def forward(self, fn, args, kwargs):
        """One forward of the generating call: ``fn`` is the model (or its compiled call)."""
        if self.pending_mask is not None and kwargs.get("input_ids") is not None:
            kwargs = dict(kwargs)
            kwargs["inputs_embeds"] = self.inputs_embeds(kwargs["input_ids"])
            kwargs["input_ids"] = None
        it = self.iterator
        if it is None:
            return fn(*args, **kwargs)
        kwargs = it.before(kwargs)
        out = fn(*args, **kwargs)
        it.after(kwargs, out)
        return out

    def release(self) -> None:
        self.pending_embeds = self.pending_mask = None
        self.history = []

    # ---- trace ------------------------------------------------------------------------------
    def build_trace(self, sequences: torch.Tensor, eos_token_id) -> SoftTrace:
        P = self.prompt_length
        T = min(self.steps, sequences.shape[1] - P)
        r = self.rec
        rec = {name: (torch.stack(v, 1)[:, :T] if v[0] is not None else None)
               for name, v in r.items()}
        iterations = torch.stack(self.iter_rec, 1)[:, :T] if self.iter_rec else None
        return trace_from_steps(rec, sequences[:, P:P + T], eos_token_id, self.step_config,
                                self.seeds, P, None if self.scale is None else float(self.scale),
                                iterations)


class _SoftThinkingProcessor:
    """Logits processor that turns thinking steps into soft steps (added by the wrapper)."""

    def __init__(self, state: _CallState):
        self.state = state

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return self.state.step(input_ids, scores)
