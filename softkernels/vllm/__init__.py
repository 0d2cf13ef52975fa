"""Soft thinking inside an unmodified vLLM (a plug-in; docs/vllm.md).

::

    import vllm, softkernels as sk
    from softkernels import vllm as skv
    llm = vllm.LLM(model=path, **skv.engine_kwargs())
    p = vllm.SamplingParams(temperature=0.0, max_tokens=256,
                            extra_args=skv.request_args(sk.SoftThinkingConfig(k=10)))
    outs = llm.generate(prompts, p)
    traces = skv.pop_traces(llm, [o.request_id for o in outs])   # {request_id: SoftTrace}

The semantics are the Hugging Face layer's (``softkernels.patch``): both run the per-step policy
of :mod:`softkernels.policy`. Tested with the vLLM versions in :data:`SUPPORTED_VLLM`; any other
is refused at engine creation. Importing this module does not import vLLM.
"""

from __future__ import annotations

from typing import Dict, Iterable, Optional

from ..hf.config import SoftThinkingConfig
from ..hf.trace import SoftTrace
from .args import KEY, config_from_args, request_args
from ._engine import check_supported
from ._worker import SUPPORTED_VLLM, check_vllm_version, sharded_mixture

__all__ = ["engine_kwargs", "request_args", "pop_traces", "pop_traces_async", "register",
           "config_from_args", "installed", "SUPPORTED_VLLM", "sharded_mixture"]

PROCESSOR = "softkernels.vllm._worker:SoftThinkingLogitsProcessor"


def installed() -> bool:
    """Whether vLLM is installed, without importing it.

    A folder named ``vllm`` without ``__init__.py`` on sys.path (this project's tests/vllm, when
    pytest puts tests/ on the path) is found as a namespace package: that is not vLLM.
    """
    import importlib.util
    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin is not None


def register() -> None:
    """Installs the plug-in's hooks in this process (idempotent).

    vLLM calls it in every process it starts, through the ``vllm.general_plugins`` entry point
    (pyproject.toml); :func:`engine_kwargs` calls it too, for engines in this process. On a vLLM
    version this plug-in was not tested with it installs nothing (plain vLLM keeps working);
    engines created with :func:`engine_kwargs` then refuse to start.
    """
    try:
        check_vllm_version()
    except (ValueError, ImportError):
        return
    from . import _engine, _worker
    _engine.install()
    _worker.install()


def engine_kwargs(default: Optional[SoftThinkingConfig] = None) -> Dict:
    """Keyword arguments for ``vllm.LLM(...)`` / ``AsyncEngineArgs(...)`` that add soft thinking.

    Args:
        default: the config of every request that does not say otherwise in its
            ``extra_args`` (:func:`request_args`), or None (default): requests are plain unless they
            ask. A per-request ``request_args(False)`` turns a default off.

    Returns:
        ``{"logits_processors": [...], "enable_prompt_embeds": True, "additional_config": {...}}``.
        If you pass your own ``additional_config`` or ``logits_processors``, merge them. Over the
        OpenAI-compatible server the same settings are ``--logits-processors
        softkernels.vllm._worker:SoftThinkingLogitsProcessor --enable-prompt-embeds
        --additional-config '{"softkernels": ...}'``.

    Raises:
        ValueError: the installed vLLM is not a tested version; ``default`` is invalid or has
            ``k=None`` (the whole vocabulary is not supported in vLLM).
        TypeError: ``default`` is not a SoftThinkingConfig.
    """
    check_vllm_version()
    register()
    if default is not None and not isinstance(default, SoftThinkingConfig):
        raise TypeError(f"softkernels.vllm.engine_kwargs: default must be a "
                        f"softkernels.SoftThinkingConfig or None, got {type(default).__name__} "
                        f"{default!r}")
    out = {"logits_processors": [PROCESSOR], "enable_prompt_embeds": True}
    if default is not None:
        check_supported(default)   # k=None: refused at engine creation, not per request
        out["additional_config"] = {KEY: request_args(default)}
    return out


def _merge(results) -> Dict[str, SoftTrace]:
    from ._worker import from_wire
    merged: Dict[str, SoftTrace] = {}
    for r in results:          # every tensor-parallel rank holds the same traces: keep one
        for k, v in (r or {}).items():
            if k not in merged:
                merged[k] = from_wire(v)
    return merged


def pop_traces(llm, request_ids: Iterable[str]) -> Dict[str, SoftTrace]:
    """The soft-thinking traces of finished requests, removed from the engine.

    Args:
        llm: a ``vllm.LLM`` created with :func:`engine_kwargs`.
        request_ids: ``RequestOutput.request_id`` values.

    Returns:
        ``{request_id: SoftTrace}`` (B = 1, CPU tensors) for the ids that were soft requests and
        have finished; plain requests and unknown ids are left out. Traces nobody pops are
        dropped, oldest first, beyond 4096 finished requests per engine.
    """
    from ._worker import POP_METHOD
    return _merge(llm.collective_rpc(POP_METHOD, args=(list(request_ids),)))


async def pop_traces_async(engine, request_ids: Iterable[str]) -> Dict[str, SoftTrace]:
    """:func:`pop_traces` for a ``vllm.v1.engine.async_llm.AsyncLLM`` (awaits its collective_rpc)."""
    from ._worker import POP_METHOD
    return _merge(await engine.collective_rpc(POP_METHOD, args=(list(request_ids),)))
