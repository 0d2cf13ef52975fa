"""Front-end side of the vLLM plug-in: request admission (validation, defaults) and the prefix
cache's block keys.

``InputProcessor.process_inputs`` (wrapped by :func:`install`) turns each request's soft-thinking
settings into their final, explicit form before the request reaches the engine core:

* the engine default (``engine_kwargs(default=...)``, kept in ``additional_config``) is merged in,
  so the scheduler and the workers only ever read the request's own ``extra_args``;
* the config is validated (a ValueError reaches the caller, HTTP 400 over the server), the
  think-end string resolved with the engine's tokenizer, a missing seed drawn once (so the trace
  names it and a recomputed request draws the same noise);
* with ``SamplingParams.n > 1``, each child request gets its row index (``ParentRequest``'s
  fan-out, wrapped), so siblings draw different noise, keyed like the rows of a Hugging Face batch.

In the scheduler, vLLM's ``generate_block_hash_extra_keys`` (wrapped) adds the request's own id
to the key of every block of a soft request that holds a generated position: vLLM's prefix cache
keys blocks by token ids, and a soft request's KV from its first generated position on is
computed from soft inputs, so no other request (a sibling included) may reuse those blocks, and
they may reuse no one else's. Block keys chain (each hash includes its parent's), so one keyed
block makes every later block of the request private too. Blocks that lie wholly inside the
prompt keep vLLM's key: their KV depends on the prompt's token ids only, so soft and plain
requests share prompt prefixes as plain ones do.
"""

from __future__ import annotations

import copy
import dataclasses
import secrets

from ..hf.config import MAX_K
from ..hf.patching import _check_top_k, _resolve_think_end
from . import args as _args

__all__ = ["install", "admit", "check_supported"]

_PENALTIES = (("repetition_penalty", 1.0), ("frequency_penalty", 0.0), ("presence_penalty", 0.0))


def _default_of(vllm_config):
    addl = getattr(vllm_config, "additional_config", None) or {}
    return addl.get(_args.KEY) if isinstance(addl, dict) else None


def _engine_has_plugin(vllm_config) -> bool:
    procs = getattr(vllm_config.model_config, "logits_processors", None) or ()
    return any((p if isinstance(p, str) else f"{p.__module__}:{p.__qualname__}").endswith(
        "SoftThinkingLogitsProcessor") for p in procs)


def check_supported(cfg) -> None:
    """Refuses what the Hugging Face layer runs but the vLLM worker does not (ValueError).

    ``k=None`` (the whole vocabulary): the worker keeps every step's ids and weights on the GPU
    for the trace and the next step's mixture, [k] per request and step, and mixes with
    ``sharded_mixture`` (a gather of k embedding rows per request); at k = V that is V int64 +
    float32 values per generated token (~0.6 MB for V = 49152) and a [V, D] gather per step, which
    it is not built for (nor tested with). Use k <= 1024 with vLLM, or the Hugging Face layer.
    """
    if cfg.k is None:
        raise ValueError("softkernels.vllm: SoftThinkingConfig.k = None (the whole vocabulary) is "
                         "not supported by the vLLM plug-in (its per-step trace and mixture hold "
                         "k ids and weights per request and step, V of them here); use an int k "
                         f"<= {MAX_K} (e.g. presets.soft_tokens_hard_truths(k={MAX_K})) or "
                         "softkernels.patch on a Hugging Face model")


def admit(input_processor, sampling_params) -> bool:
    """Resolves a request's soft-thinking settings in place (its private SamplingParams copy).

    Returns whether the request thinks softly. Raises ValueError naming what is wrong.
    """
    vllm_config = input_processor.vllm_config
    default = _default_of(vllm_config)
    extra = sampling_params.extra_args
    if default is None and not (extra and _args.KEY in extra):
        return False
    cfg = _args.config_from_args(extra, default)
    if cfg is None:
        return False
    check_supported(cfg)
    if not _engine_has_plugin(vllm_config):
        raise ValueError("softkernels.vllm: this request asks for soft thinking but the engine was "
                         "not created with **softkernels.vllm.engine_kwargs(); create it with them")
    for name, neutral in _PENALTIES:
        value = getattr(sampling_params, name, neutral)
        if value != neutral:
            raise ValueError(f"softkernels.vllm: SamplingParams.{name}={value} is not supported "
                             "with soft thinking (vLLM applies penalties after logits processors, "
                             "so soft tokens would be computed without them, unlike the Hugging "
                             f"Face layer); use {name}={neutral} or turn soft thinking off for "
                             "this request")
    mc = vllm_config.model_config
    V = mc.get_vocab_size()
    _check_top_k(cfg, V)
    te = cfg.think_end
    if isinstance(te, str):
        te = _resolve_think_end(te, input_processor.get_tokenizer(), V)
    elif te is not None:
        te = _resolve_think_end(te, None, V)
    seed = cfg.seed if cfg.seed is not None else secrets.randbits(63)
    resolved = dataclasses.replace(cfg, think_end=te, seed=seed)
    sampling_params.extra_args = {**(extra or {}), **_args.request_args(resolved)}
    return True


def _soft(sampling_params) -> bool:
    extra = getattr(sampling_params, "extra_args", None)
    return bool(extra) and extra.get(_args.KEY) == 1


def _keyed_extra_keys(extra_keys_fn):
    """vLLM's ``generate_block_hash_extra_keys`` plus ("softkernels", request id) for the blocks
    of a soft request that reach past its prompt."""
    def generate_block_hash_extra_keys(request, start_token_idx, end_token_idx, start_mm_idx):
        keys, next_mm_idx = extra_keys_fn(request, start_token_idx, end_token_idx, start_mm_idx)
        if end_token_idx > request.num_prompt_tokens and _soft(
                getattr(request, "sampling_params", None)):
            keys = (keys or ()) + (("softkernels", request.request_id),)
        return keys, next_mm_idx
    generate_block_hash_extra_keys.__wrapped__ = extra_keys_fn
    return generate_block_hash_extra_keys


def install() -> None:
    """Wraps InputProcessor.process_inputs, ParentRequest's fan-out and the scheduler's block
    keys, vLLM's generate_block_hash_extra_keys (idempotent)."""
    from vllm.v1.core import block_pool, kv_cache_utils
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.engine.parallel_sampling import ParentRequest
    if getattr(InputProcessor, "_softkernels_installed", False):
        return
    process = InputProcessor.process_inputs
    child_params = ParentRequest._get_child_sampling_params

    def process_inputs(self, *args, **kwargs):
        request = process(self, *args, **kwargs)
        sp = getattr(request, "sampling_params", None)
        if sp is not None:
            admit(self, sp)
        return request

    def _get_child_sampling_params(self, index):
        params = child_params(self, index)
        if not _soft(params):
            return params
        params = copy.copy(params)       # vLLM may hand every child the same object
        params.extra_args = {**params.extra_args, _args.ROW: index}
        return params

    for fn, orig in ((process_inputs, process), (_get_child_sampling_params, child_params)):
        fn.__wrapped__ = orig
    InputProcessor.process_inputs = process_inputs
    ParentRequest._get_child_sampling_params = _get_child_sampling_params
    # kv_cache_utils' request block hasher looks the function up in its module at each call;
    # block_pool imported it by name (its KV-event paths), so both names are replaced.
    keyed = _keyed_extra_keys(kv_cache_utils.generate_block_hash_extra_keys)
    kv_cache_utils.generate_block_hash_extra_keys = keyed
    block_pool.generate_block_hash_extra_keys = keyed
    InputProcessor._softkernels_installed = True
