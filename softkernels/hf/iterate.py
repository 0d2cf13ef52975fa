"""Think-at-Hard inside a patched ``generate()``: extra iterations for the hard rows only.

For the duration of one ``generate`` call, :class:`_Iterator` is part of the call's forward wrapper
(``_CallState.forward`` in hf/patching.py; no hook is registered on the model):

* ``before`` asks the main forward for its hidden states when a decider needs them;
* ``after`` runs after every main forward (prefill and each decoding step), i.e. after
  the model produced the step's logits and before Hugging Face's logits processors (and so before
  the soft-thinking processor) see them. It scores the rows, selects the hard ones
  (:func:`softkernels.select_rows`, no host sync), reads their number once (the only host read it
  adds per step: the model forward needs the batch size), builds their iteration input
  (:func:`softkernels.iteration_embeds`, one fused pass per hard row), runs the model on those
  rows only, and adds the iteration's logits into the step's logits in place
  (:func:`softkernels.add_rows_`).

The iteration forward of a hard row sees the row's committed KV cache of the main pass (every
position up to and including the current one, iteration 0) plus its own key/value, at the current
position's position id: it runs on a per-call copy of the cache that holds only the hard rows
(the tensors are gathered; the main cache object and its tensors are never modified). Without a
cache (``use_cache=False``) the iteration recomputes the row's sequence with the iteration token
appended at the same position id, which is the same computation. docs/iterate_hard.md has the
reasoning.
"""

from __future__ import annotations

import copy
import inspect
import sys
import threading
from typing import List, Optional

import torch
from torch import nn

from .. import iterate as _it
from .config import IterateHard

__all__ = ["check_adapter_api", "adapter_controller"]

_FN = "softkernels (iterate_hard)"


def check_adapter_api(model, adapter: str) -> None:
    """Raises a clear error unless ``model`` can switch the PEFT adapter ``adapter`` on and off."""
    missing = [m for m in ("set_adapter", "enable_adapters", "disable_adapters")
               if not callable(getattr(model, m, None))]
    if missing:
        raise TypeError(f"{_FN}: IterateHard.adapter = {adapter!r} needs a model with PEFT adapters "
                        f"(methods set_adapter / enable_adapters / disable_adapters, as "
                        f"transformers models have after load_adapter); {type(model).__name__} "
                        f"lacks {', '.join(missing)}")
    if getattr(model, "_hf_peft_config_loaded", True) is False:
        raise ValueError(f"{_FN}: IterateHard.adapter = {adapter!r} but {type(model).__name__} has "
                         "no adapter loaded; call model.load_adapter(...) first")
    names = getattr(model, "peft_config", None)
    if isinstance(names, dict) and adapter not in names:
        raise ValueError(f"{_FN}: IterateHard.adapter = {adapter!r} is not an adapter of this model "
                         f"(loaded: {sorted(names)})")


def _peft_layers(model) -> list:
    """The PEFT tuner layers and modules_to_save wrappers inside ``model`` (empty without peft)."""
    peft = sys.modules.get("peft")
    if peft is None:
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper
    return [m for m in model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]


class _TransformersAdapters:
    """Adapter switching through transformers' PEFT integration (``model.load_adapter``)."""

    def __init__(self, model, adapter: str):
        check_adapter_api(model, adapter)
        self.model, self.adapter = model, adapter

    def start(self) -> None:
        self.model.set_adapter(self.adapter)
        self.model.disable_adapters()           # iteration 0 runs the base model

    def enable(self) -> None:
        self.model.enable_adapters()

    def disable(self) -> None:
        self.model.disable_adapters()

    def restore(self) -> None:
        self.model.enable_adapters()            # the state after load_adapter: enabled, active


class _PeftLayerAdapters:
    """Adapter switching for a model wrapped by ``peft.PeftModel`` (``get_peft_model``,
    ``PeftModel.from_pretrained``): the patch acts on the base transformers model, whose tuner
    layers are switched on and off directly (what ``PeftModel.disable_adapter()`` does), and put
    back in the state they had before the call. The adapter must be the active one
    (``peft_model.set_adapter(name)``): activating an adapter in PEFT also changes which
    parameters require gradients, which a generate call should not do behind the user's back."""

    def __init__(self, model, adapter: str, layers: list):
        names = getattr(model, "peft_config", None)
        if isinstance(names, dict) and adapter not in names:
            raise ValueError(f"{_FN}: IterateHard.adapter = {adapter!r} is not an adapter of this "
                             f"PEFT model (adapters: {sorted(names)})")
        holders = [m for m in layers if adapter in _adapter_names(m)]
        if not holders:
            raise ValueError(f"{_FN}: IterateHard.adapter = {adapter!r}: no PEFT layer of "
                             f"{type(model).__name__} holds an adapter of that name")
        inactive = [m for m in holders if adapter not in list(m.active_adapters)]
        if inactive:
            raise ValueError(f"{_FN}: IterateHard.adapter = {adapter!r} is not the active adapter "
                             f"(active: {list(inactive[0].active_adapters)}); call "
                             f"peft_model.set_adapter({adapter!r}) before generating")
        self.layers = layers
        self.was_disabled = None

    def start(self) -> None:
        self.was_disabled = [bool(m.disable_adapters) for m in self.layers]
        self.disable()

    def enable(self) -> None:
        for m in self.layers:
            m.enable_adapters(True)

    def disable(self) -> None:
        for m in self.layers:
            m.enable_adapters(False)

    def restore(self) -> None:
        if self.was_disabled is not None:
            for m, off in zip(self.layers, self.was_disabled):
                m.enable_adapters(not off)
            self.was_disabled = None


def _adapter_names(layer) -> set:
    names = set()
    for attr in getattr(layer, "adapter_layer_names", ()):
        d = getattr(layer, attr, None)
        if hasattr(d, "keys"):
            names.update(d.keys())
    return names


def adapter_controller(model, adapter: str):
    """How to switch the PEFT adapter ``adapter`` of ``model`` on and off: ``start()`` (active,
    off), ``enable()``, ``disable()``, ``restore()`` (the state expected after the call)."""
    layers = _peft_layers(model)
    if layers and getattr(model, "_hf_peft_config_loaded", False) is not True:
        return _PeftLayerAdapters(model, adapter, layers)
    return _TransformersAdapters(model, adapter)


# Models whose adapter state a generate call is switching: a second concurrent call with an
# adapter would switch it under the first one.
_ADAPTER_CALLS = set()
_ADAPTER_LOCK = threading.Lock()


def _supported_cache(cache) -> Optional[str]:
    """None if the iterations can run on a row-gathered copy of ``cache``, else why not."""
    from transformers.cache_utils import DynamicCache, DynamicLayer, DynamicSlidingWindowLayer
    if not isinstance(cache, DynamicCache):
        return f"the cache is a {type(cache).__name__}"
    if getattr(cache, "offloading", False):
        return "the cache offloads layers to the CPU"
    for layer in cache.layers:
        if type(layer) not in (DynamicLayer, DynamicSlidingWindowLayer):
            return f"the cache holds a {type(layer).__name__} layer"
    return None


def _cache_rows(cache) -> int:
    """The batch size of a (dynamic) cache, -1 if it holds nothing yet."""
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if getattr(layer, "is_initialized", True) and keys is not None and keys.dim() == 4:
            return keys.shape[0]
    return -1


def _gather_cache(cache, rows: torch.Tensor, all_rows: bool):
    """A new cache object holding the given rows of ``cache`` (the main cache is not touched).

    Layers are shallow copies (window size, cumulative length, flags) whose key/value tensors are
    the gathered rows. With all rows (in order) the tensors are shared instead: cache layers only
    ever replace their tensors (``torch.cat``), never write into them.
    """
    sub = copy.copy(cache)
    layers = []
    for layer in cache.layers:
        new = copy.copy(layer)
        if not all_rows and getattr(layer, "is_initialized", True) and \
                layer.keys is not None and layer.keys.numel():
            new.keys = layer.keys.index_select(0, rows)
            new.values = layer.values.index_select(0, rows)
        layers.append(new)
    sub.layers = layers
    return sub


class _Iterator:
    """Per-call state and hooks of selective iteration (one ``generate`` call)."""

    def __init__(self, model: nn.Module, cfg: IterateHard, emb: nn.Module,
                 scale: Optional[torch.Tensor], record: bool):
        self.model = model
        self.cfg = cfg
        self.emb = emb
        self.weight = emb.weight
        self.scale = scale
        self.record = record
        self.rec: List[torch.Tensor] = []       # int8 [B] extra iterations per row and step
        self.inside = False                    # True while an iteration forward runs
        self.main_embeds = None                # the main forward's input embeddings (no cache)
        self.main_ids = None                   # ... or its input_ids (prefill)
        params = inspect.signature(model.forward).parameters
        if "position_ids" not in params:
            raise ValueError(f"{_FN}: {type(model).__name__}.forward takes no position_ids; the "
                             "extra iterations run at the current token's position and need it")
        self.logits_to_keep = "logits_to_keep" in params
        self.cache_param = "cache" if "cache" in params else (
            "past_key_values" if "past_key_values" in params else None)
        self.adapters = adapter_controller(model, cfg.adapter) if cfg.adapter is not None \
            else None
        self.adapter_set = False

    # ---- installation (adapter state for the duration of the call) -------------------------
    def install(self) -> None:
        if self.adapters is not None:
            with _ADAPTER_LOCK:
                if id(self.model) in _ADAPTER_CALLS:
                    raise RuntimeError(
                        f"{_FN}: another generate call with IterateHard.adapter is running on "
                        "this model; PEFT adapters are switched per model, so two such calls "
                        "cannot run at once on one model object (use one model per thread)")
                _ADAPTER_CALLS.add(id(self.model))
            self.adapter_set = True
            self.adapters.start()

    def remove(self) -> None:
        self.main_embeds = self.main_ids = None
        if self.adapter_set:
            self.adapter_set = False
            try:
                self.adapters.restore()
            finally:
                with _ADAPTER_LOCK:
                    _ADAPTER_CALLS.discard(id(self.model))

    # ---- around every main forward (called by the call's forward wrapper) ------------------
    def before(self, kwargs):
        """The main forward's kwargs (hidden states asked for when a decider needs them)."""
        # The main forward's input embeddings, for the no-cache path: the decoding forwards get
        # inputs_embeds (soft rows included); the prefill gets input_ids (embedded when needed).
        self.main_embeds = kwargs.get("inputs_embeds")
        self.main_ids = kwargs.get("input_ids") if self.main_embeds is None else None
        if self.cfg.decider is not None and not kwargs.get("output_hidden_states"):
            kwargs = dict(kwargs)
            kwargs["output_hidden_states"] = True
        return kwargs

    def after(self, kwargs, output) -> None:
        if self.inside:
            return
        self.inside = True
        try:
            self._step(kwargs, output)
        finally:
            self.inside = False
            self.main_embeds = self.main_ids = None

    # ---- one decoding step ----------------------------------------------------------------
    def _score(self, hidden, logits: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        if cfg.decider is None:
            return _it.max_prob(logits)
        s = cfg.decider(tuple(h[:, -1] for h in hidden), logits)
        N = logits.shape[0]
        if not isinstance(s, torch.Tensor) or not s.dtype.is_floating_point:
            raise TypeError(f"{_FN}: IterateHard.decider must return a float tensor of shape "
                            f"[{N}], got {type(s).__name__} {getattr(s, 'dtype', '')}")
        if s.dim() == 2 and s.shape[1] == 1:
            s = s[:, 0]
        if s.shape != (N,) or s.device != logits.device:
            raise ValueError(f"{_FN}: IterateHard.decider must return one score per row, shape "
                             f"[{N}] on {logits.device}; got shape {tuple(s.shape)} on {s.device}")
        return s

    def _step(self, kwargs, output) -> None:
        cfg = self.cfg
        logits = output.logits[:, -1]           # [B, V] view, modified in place
        B = logits.shape[0]
        iters = torch.zeros(B, dtype=torch.int8, device=logits.device) if self.record else None
        if cfg.max_iter > 1 and B > 0:
            if cfg.decider is not None and getattr(output, "hidden_states", None) is None:
                raise RuntimeError(f"{_FN}: the model returned no hidden_states for the decider")
            sel = _it.select_rows(self._score(getattr(output, "hidden_states", None), logits),
                                  cfg.threshold)
            idx, count = sel.idx, sel.count
            n = int(count)                      # the one host read per step (sizes the batch)
            base = inputs = None                # base: (cache, row in it for each row of idx)
            done = 1
            while n > 0 and done < cfg.max_iter:
                rows = idx[:n]
                if base is None:
                    main = self._main_cache(kwargs, output)
                    inputs = self._inputs(kwargs)
                    base = self._base_cache(main, inputs, rows, idx)
                cache, where = base
                mix = _it.iteration_embeds(logits, self.weight, rows, top_m=cfg.top_m,
                                           validate=False)
                if self.scale is not None:
                    mix = mix * self.scale
                in_base = where[:n]
                # Hard rows are ascending (select_rows), so n == the cache's batch size means
                # in_base is 0..n-1: the cache tensors can be shared instead of gathered.
                out = self._forward(rows, in_base, n == _cache_rows(cache), mix, inputs, cache)
                _it.add_rows_(logits, out.logits[:, -1].to(logits.dtype), idx, count,
                              validate=False)
                if iters is not None:
                    iters[rows] += 1                # rows are distinct
                done += 1
                if done < cfg.max_iter:
                    score = self._score(getattr(out, "hidden_states", None),
                                        logits.index_select(0, rows))
                    sub = _it.select_rows(score, cfg.threshold)
                    idx, count = rows.index_select(0, sub.idx), sub.count
                    base = (cache, in_base.index_select(0, sub.idx))
                    n = int(count)
        if iters is not None:
            self.rec.append(iters)

    def _inputs(self, kwargs):
        """(2-D padding mask or None, position ids [B or 1, L] or None, input length L)."""
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            raise ValueError(f"{_FN}: the model was given a {mask.dim()}-D attention mask; the "
                             "extra iterations need the 2-D padding mask (use the default dynamic "
                             "cache)")
        pos = kwargs.get("position_ids")
        if pos is not None and pos.dim() != 2:
            raise ValueError(f"{_FN}: position_ids of shape {tuple(pos.shape)} are not supported "
                             "(expected [B, L])")
        L = (kwargs["input_ids"].shape[1] if kwargs.get("input_ids") is not None
             else kwargs["inputs_embeds"].shape[1])
        return mask, pos, L

    def _main_cache(self, kwargs, output):
        """The main pass's cache (checked), or None when it ran without one."""
        key = self.cache_param
        cache = kwargs.get(key) if key is not None else None
        if cache is None and key is not None and kwargs.get("use_cache"):
            cache = getattr(output, key, None)      # a cache the forward created itself
        if cache is not None:
            why = _supported_cache(cache)
            if why is not None:
                raise ValueError(f"{_FN}: {why}; the extra iterations support the default "
                                 "DynamicCache (or use_cache=False)")
        return cache

    def _base_cache(self, cache, inputs, rows, idx):
        """The committed key/values the iterations attend to, and where each row of ``idx`` is in
        it: the main pass's cache (all B rows), or, without one, a fresh cache of the hard rows'
        sequences recomputed by a forward without adapter (iteration 0 exactly as the main pass
        computed it, up to rounding)."""
        if cache is not None:
            return cache, idx
        key = self.cache_param
        mask, pos, L = inputs
        full = self.main_embeds
        if full is None and self.main_ids is not None:
            full = self.emb(self.main_ids)
        if full is None or full.shape[1] != L or key is None:
            raise RuntimeError(f"{_FN}: cannot run the iterations without a cache here (the main "
                               "forward's input embeddings were not seen)")
        n = rows.shape[0]
        pr = None if pos is None else (pos.index_select(0, rows) if pos.shape[0] > 1
                                       else pos.expand(n, -1))
        extra = {"logits_to_keep": 1} if self.logits_to_keep else {}
        mr = torch.ones(n, L, dtype=torch.long, device=rows.device) if mask is None else \
            mask.index_select(0, rows)
        out = self.model(inputs_embeds=full.index_select(0, rows), attention_mask=mr,
                         position_ids=pr, use_cache=True, return_dict=True, **extra)
        cache = getattr(out, key, None)
        why = "the model returned no cache" if cache is None else _supported_cache(cache)
        if why is not None:
            raise ValueError(f"{_FN}: {why}; the extra iterations support the default "
                             "DynamicCache")
        return cache, torch.arange(n, device=rows.device)

    def _forward(self, rows: torch.Tensor, in_base: torch.Tensor, all_base_rows: bool,
                 mix: torch.Tensor, inputs, cache):
        """The iteration forward of ``rows`` (indices into the batch; ``in_base``: the same rows
        in ``cache``): input ``mix`` [n, D] at the current token's position id, attending to the
        committed cache entries of those rows and to itself."""
        mask, pos, L = inputs
        n = rows.shape[0]
        dev = mix.device
        total = mask.shape[1] if mask is not None else cache.get_seq_length()
        ones = torch.ones(n, 1, dtype=torch.long if mask is None else mask.dtype, device=dev)
        m = torch.cat([mask.index_select(0, rows), ones], 1) if mask is not None else \
            torch.ones(n, total + 1, dtype=torch.long, device=dev)
        if pos is not None:
            p = pos[:, -1:].index_select(0, rows) if pos.shape[0] > 1 else pos[:, -1:].expand(n, 1)
        else:
            p = torch.full((n, 1), total - 1, dtype=torch.long, device=dev)
        extra = dict(return_dict=True, output_hidden_states=self.cfg.decider is not None)
        if self.logits_to_keep:
            extra["logits_to_keep"] = 1
        sub = _gather_cache(cache, in_base, all_base_rows)
        return self._run(inputs_embeds=mix.unsqueeze(1), attention_mask=m, position_ids=p,
                         use_cache=True, **{self.cache_param: sub}, **extra)

    def _run(self, **kwargs):
        """The model forward of one iteration, with the adapter (if any) enabled around it."""
        if self.adapters is None:
            return self.model(**kwargs)
        self.adapters.enable()
        try:
            return self.model(**kwargs)
        finally:
            self.adapters.disable()
