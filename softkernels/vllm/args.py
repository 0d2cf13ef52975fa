"""Per-request soft-thinking settings as a flat, JSON-serialisable dict (``SamplingParams.extra_args``).

vLLM's OpenAI-compatible server accepts per-request ``vllm_xargs`` whose values are strings,
numbers or lists of them, so every field of :class:`softkernels.SoftThinkingConfig` is one flat
key here (booleans as 0/1, absent = None; ``k=None``, the whole vocabulary, is
``softkernels_k: "all"``). The same dict works in ``SamplingParams(extra_args=...)``
and in an HTTP request's ``vllm_xargs``.

This module imports neither vLLM nor transformers.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Union

from ..hf.config import ColdStop, ConfidenceRouter, SoftThinkingConfig
from ..noise import NOISE_CLASSES
from ..ops import FILTERS, ROW_PARAMS

__all__ = ["KEY", "ROW", "request_args", "config_from_args", "row_of"]

KEY = "softkernels"        # 1 = soft thinking on for this request, 0 = off
_P = KEY + "_"             # prefix of every other key
# Set by the plug-in, not by users: child i of a request with SamplingParams.n > 1 has row i, and
# its noise is keyed like row i of a Hugging Face batch (policy.row_seed(seed, i)).
ROW = _P + "row"

# The noise on the wire: softkernels_noise = the class's wire name (Gumbel.wire_name, "gumbel";
# TopKDirichlet's "topk_dirichlet", ...), and softkernels_noise_<field> per field of its dataclass
# (a clamp as noise_clamp_lo / noise_clamp_hi; absent keys take the class's defaults, an absent
# clamp is None). A new noise class needs nothing here.
_NOISES = {cls.wire_name: cls for cls in NOISE_CLASSES}
_NOISE_KEYS = tuple(dict.fromkeys(
    key for cls in NOISE_CLASSES for f in dataclasses.fields(cls)
    for key in (("noise_clamp_lo", "noise_clamp_hi") if f.name == "clamp" else
                ("noise_" + f.name,))))

# Every key this module writes or reads (anything else with the prefix is refused).
_FIELDS = ("k", *FILTERS, "noise", *_NOISE_KEYS,
           "think_end", "cold_stop_entropy", "cold_stop_patience", "cold_stop_answer_abort",
           "cold_stop_normalized", "router_threshold",
           "max_think_tokens", "seed", "ties", "row")

_K_ALL = "all"   # softkernels_k for SoftThinkingConfig(k=None)


def request_args(config: Union[SoftThinkingConfig, bool]) -> Dict[str, Any]:
    """The ``extra_args`` that make one vLLM request think as ``config`` says.

    Args:
        config: a :class:`softkernels.SoftThinkingConfig`, or ``False`` to turn soft thinking off
            for this request on an engine whose ``engine_kwargs(default=...)`` turned it on for
            every request.

    Returns:
        A flat dict (str keys; int, float or str values), e.g.
        ``{"softkernels": 1, "softkernels_k": 10, "softkernels_temperature": 0.6, ...}``. Merge it
        with your own extra_args if you have any: ``extra_args={**mine, **request_args(cfg)}``.

    Raises:
        TypeError: ``config`` is neither a SoftThinkingConfig nor False.
        ValueError: ``config.iterate_hard`` is set (Think-at-Hard runs extra forwards per step,
            which vLLM's scheduler cannot schedule; use the Hugging Face layer for it).
    """
    if config is False:
        return {KEY: 0}
    if not isinstance(config, SoftThinkingConfig):
        raise TypeError(f"softkernels.vllm.request_args: config must be a "
                        f"softkernels.SoftThinkingConfig or False, got {type(config).__name__} "
                        f"{config!r}")
    if config.iterate_hard is not None:
        raise ValueError("softkernels.vllm.request_args: SoftThinkingConfig.iterate_hard is not "
                         "supported in vLLM (Think-at-Hard runs extra forwards per step for some "
                         "rows, which vLLM's scheduler cannot schedule); use softkernels.patch on "
                         "a Hugging Face model for it")
    out: Dict[str, Any] = {KEY: 1, _P + "k": _K_ALL if config.k is None else config.k,
                           **{_P + n: v for n, v in config.filters.items()}}
    noise = config.noise
    if noise is not None:
        out[_P + "noise"] = type(noise).wire_name
        for f in dataclasses.fields(noise):
            v = getattr(noise, f.name)
            if f.name == "clamp":
                if v is not None:
                    out[_P + "noise_clamp_lo"], out[_P + "noise_clamp_hi"] = v
            else:
                out[_P + "noise_" + f.name] = int(v) if isinstance(v, bool) else v
    if config.think_end is not None:
        out[_P + "think_end"] = config.think_end
    if config.cold_stop is not None:
        out[_P + "cold_stop_entropy"] = config.cold_stop.entropy_threshold
        out[_P + "cold_stop_patience"] = config.cold_stop.patience
        if config.cold_stop.answer_abort:
            out[_P + "cold_stop_answer_abort"] = 1
        if config.cold_stop.normalized:
            out[_P + "cold_stop_normalized"] = 1
    if config.router is not None:
        out[_P + "router_threshold"] = config.router.threshold
    if config.max_think_tokens is not None:
        out[_P + "max_think_tokens"] = config.max_think_tokens
    if config.seed is not None:
        out[_P + "seed"] = config.seed
    if config.ties != "exact":
        out[_P + "ties"] = config.ties
    return out


def row_of(extra_args: Optional[Mapping[str, Any]]) -> int:
    """The request's row index among its SamplingParams.n siblings (0 without siblings)."""
    return _int(extra_args, ROW) if extra_args and ROW in extra_args else 0


def _int(args: Mapping[str, Any], key: str) -> int:
    v = args[key]
    if isinstance(v, str):      # vllm_xargs from a form or a query string may arrive as text
        try:
            v = int(v)
        except ValueError:
            pass
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"extra_args[{key!r}] must be an int, got {type(v).__name__} {v!r}")
    return v


def _float(args: Mapping[str, Any], key: str) -> float:
    v = args[key]
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            pass
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"extra_args[{key!r}] must be a number, got {type(v).__name__} {v!r}")
    return float(v)


def _flag(args: Mapping[str, Any], name: str) -> bool:
    """An optional 0/1 key (absent = False)."""
    key = _P + name
    if key not in args:
        return False
    v = _int(args, key)
    if v not in (0, 1):
        raise ValueError(f"extra_args[{key!r}] must be 0 or 1, got {v!r}")
    return bool(v)


def _noise_from_args(cls, args: Mapping[str, Any]):
    """An instance of noise class ``cls`` from its softkernels_noise_<field> keys."""
    kw: Dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name == "clamp":
            lo_hi = [_P + "noise_clamp_lo" in args, _P + "noise_clamp_hi" in args]
            if lo_hi[0] != lo_hi[1]:
                raise ValueError("extra_args: give both softkernels_noise_clamp_lo and "
                                 "softkernels_noise_clamp_hi, or neither (no clamp)")
            kw["clamp"] = ((_float(args, _P + "noise_clamp_lo"),
                            _float(args, _P + "noise_clamp_hi")) if lo_hi[0] else None)
            continue
        key = _P + "noise_" + f.name
        if key not in args:
            continue
        default = f.default
        if isinstance(default, bool):
            kw[f.name] = bool(_int(args, key))
        elif isinstance(default, float):
            kw[f.name] = _float(args, key)
        elif isinstance(default, int):
            kw[f.name] = _int(args, key)
        else:
            kw[f.name] = args[key]   # a str option: the class names a bad value
    return cls(**kw)


def config_from_args(extra_args: Optional[Mapping[str, Any]],
                     default: Optional[Mapping[str, Any]] = None) -> Optional[SoftThinkingConfig]:
    """The SoftThinkingConfig of a request, or None when it does not think softly.

    Args:
        extra_args: the request's ``SamplingParams.extra_args`` (other keys are ignored).
        default: the engine's default, as :func:`request_args` wrote it (or None: requests are
            plain unless they ask). A request's own ``softkernels`` key wins; when it has none,
            the default's keys are used.

    Raises:
        ValueError / TypeError: a key with the ``softkernels_`` prefix that is unknown, or a value
            that SoftThinkingConfig refuses (the message names the key or the field).
    """
    extra_args = extra_args or {}
    if KEY in extra_args:
        if not _int(extra_args, KEY):
            return None
        args = extra_args
    elif default is not None and KEY in default and _int(default, KEY):
        args = default
    else:
        return None
    for key in args:
        if isinstance(key, str) and key.startswith(_P) and key[len(_P):] not in _FIELDS:
            raise ValueError(f"extra_args: unknown soft-thinking key {key!r}; known keys: "
                             f"{KEY!r} and " + ", ".join(repr(_P + f) for f in _FIELDS))

    def has(name):
        return _P + name in args

    kw: Dict[str, Any] = {}
    if has("k"):
        kw["k"] = None if args[_P + "k"] in (_K_ALL, None) else _int(args, _P + "k")
    for name in FILTERS:
        if has(name):
            kw[name] = (_int if ROW_PARAMS[name].integer else _float)(args, _P + name)
    kind = args.get(_P + "noise")
    if kind is not None:
        if kind not in _NOISES:
            raise ValueError(f"extra_args['softkernels_noise'] must be one of "
                             f"{', '.join(repr(n) for n in _NOISES)}, got {kind!r}")
        kw["noise"] = _noise_from_args(_NOISES[kind], args)
    if has("think_end"):
        te = args[_P + "think_end"]
        kw["think_end"] = te if isinstance(te, str) and not te.lstrip("-").isdigit() \
            else _int(args, _P + "think_end")
    if any(has(n) for n in ("cold_stop_entropy", "cold_stop_patience", "cold_stop_answer_abort",
                            "cold_stop_normalized")):
        kw["cold_stop"] = ColdStop(
            entropy_threshold=_float(args, _P + "cold_stop_entropy")
            if has("cold_stop_entropy") else 0.01,
            patience=_int(args, _P + "cold_stop_patience") if has("cold_stop_patience") else 256,
            answer_abort=_flag(args, "cold_stop_answer_abort"),
            normalized=_flag(args, "cold_stop_normalized"))
    if has("router_threshold"):
        kw["router"] = ConfidenceRouter(_float(args, _P + "router_threshold"))
    if has("max_think_tokens"):
        kw["max_think_tokens"] = _int(args, _P + "max_think_tokens")
    if has("seed"):
        kw["seed"] = _int(args, _P + "seed")
    if has("ties"):
        kw["ties"] = args[_P + "ties"]   # SoftThinkingConfig names a bad value
    return SoftThinkingConfig(**kw)
