"""The per-step policy of soft thinking, written once for every engine.

One decoding step, for a group of rows that think with the same configuration:

1. :func:`softkernels.soft_embed` on the step's scores (after the engine's own logits
   processors): the soft token of every row, its entropy and top probability;
2. :func:`softkernels.route_step`: each row's Cold Stop / router / budget state machine (and,
   with ``ColdStop(answer_abort=True)``, Soft Thinking's answer-phase counter, here);
3. the token each row must emit: soft rows their top-1 slot (the readable trace), thinking rows
   whose token is the think-end token (forced, or the model's own top-1) that token; every other
   row is left to the engine's normal sampling;
4. the pending mixture: the soft embeddings that the engine feeds, at the next position, to the
   rows whose step was soft.

The Hugging Face layer (softkernels/hf/patching.py), its naive reference (softkernels/hf/reference.py)
and the vLLM plug-in (softkernels/vllm/) all call :func:`step`; the tests check the engines against
each other through it. Only the engine-specific parts (how scores are masked, where the pending
mixture goes) live with the engines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Tuple, Union

import torch

from .noise import Gaussian, Noise
from .ops import soft_embed
from ._checks import I32_MAX, check_int
from .routing import MODE_SOFT, PHASE_ANSWER, PHASE_THINKING, RouteState, route_step
from .soft_tokens import SoftTokens

__all__ = ["StepConfig", "Step", "step", "force_scores", "row_seed", "row_seeds"]

_MASK64 = (1 << 64) - 1


def row_seed(base: int, row: int) -> int:
    """The Philox key of row ``row`` of a call seeded with ``base``: SplitMix64 of both (int64).

    The Hugging Face layer keys batch row b with ``row_seed(seed, b)``; the vLLM plug-in keys each
    request with ``row_seed(seed, 0)``, so a request generates what the same prompt generates as a
    batch of one in Hugging Face, whatever its batch mates.
    """
    z = (base + (row + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    z ^= z >> 31
    return z - (1 << 64) if z >= (1 << 63) else z


def row_seeds(base: int, batch_size: int, device=None) -> torch.Tensor:
    """int64 [batch_size]: ``row_seed(base, b)`` for every row b."""
    return torch.tensor([row_seed(base, b) for b in range(batch_size)], dtype=torch.int64,
                        device=device)


@dataclass(frozen=True)
class StepConfig:
    """A :class:`softkernels.SoftThinkingConfig` resolved against one model (hashable).

    ``think_end_id`` is the resolved token id (or None); ``noise`` is absolute (a relative
    Gaussian sigma is multiplied by RMS(E) once, in :meth:`resolve`). ``eos_id`` is the token
    that finishes a row aborted by ``ColdStop(answer_abort=True)`` (None when the option is off).
    ``k`` None is the whole vocabulary (k = V of the step's scores); ``ties`` is soft_embed's.
    Rows with equal StepConfigs (ties and k included) can share one :func:`step` call.
    """

    k: Optional[int]
    filters: Tuple[Tuple[str, Any], ...]   # soft_embed's filter arguments, (name, value) pairs
    noise: Optional[Noise]
    think_end_id: Optional[int]
    cold_stop_entropy: Optional[float]
    cold_stop_patience: int
    router_threshold: Optional[float]
    max_think_tokens: Optional[int]
    cold_stop_normalized: bool = False
    cold_stop_answer_abort: bool = False
    eos_id: Optional[int] = None
    ties: str = "exact"

    @staticmethod
    def resolve(config, think_end_id: Optional[int], embedding: torch.Tensor,
                eos_id: Optional[int] = None) -> "StepConfig":
        """``config`` (SoftThinkingConfig) with ``think_end_id`` and the noise resolved against
        the embedding matrix ``embedding`` [V_e, D] (one pass over E for a relative Gaussian).

        ``eos_id`` (int >= 0 or None) is the engine's end-of-sequence token; it is required by
        ``ColdStop(answer_abort=True)`` (ValueError without one) and ignored otherwise.
        """
        noise = config.noise
        if isinstance(noise, Gaussian) and noise.relative:
            noise = noise.absolute(embedding)
        cs = config.cold_stop
        abort = cs is not None and cs.answer_abort
        if abort:
            if eos_id is None:
                raise ValueError("softkernels: ColdStop(answer_abort=True) finishes a row by "
                                 "forcing the end-of-sequence token, but the model has none "
                                 "(generation_config.eos_token_id is None); set one or use "
                                 "answer_abort=False")
            eos_id = check_int("StepConfig.resolve", "eos_id", eos_id, 0)
        return StepConfig(
            k=config.k, filters=tuple(config.filters.items()), noise=noise,
            think_end_id=think_end_id,
            cold_stop_entropy=None if cs is None else cs.entropy_threshold,
            cold_stop_patience=256 if cs is None else cs.patience,
            router_threshold=None if config.router is None else config.router.threshold,
            max_think_tokens=config.max_think_tokens,
            cold_stop_normalized=cs is not None and cs.normalized,
            cold_stop_answer_abort=abort, eos_id=eos_id if abort else None, ties=config.ties)


class Step(NamedTuple):
    """One step of a group of B rows.

    tokens: the :class:`SoftTokens` of every row (embeds [B, D] in E's dtype, ids/weights [B, k]
        (k = V for ``k=None``),
        entropy/max_prob [B], noise [B, k] or None).
    mode: int8 [B] 0 hard, 1 soft, 2 forced think-end (route_step's).
    token: int64 [B] the token of rows in ``force`` (top-1 slot or the think-end token).
    force: bool [B] rows that must emit ``token``; the others sample as the engine would.
    soft: bool [B] rows whose next input is ``tokens.embeds`` (mode 1) instead of E[token].
    state: the rows' new :class:`RouteState`.
    abort: bool [B] answering rows whose ``token`` is the forced end-of-sequence token
        (``ColdStop(answer_abort=True)``), or None when the option is off.
    """

    tokens: SoftTokens
    mode: torch.Tensor
    token: torch.Tensor
    force: torch.Tensor
    soft: torch.Tensor
    state: RouteState
    abort: Optional[torch.Tensor] = None


def end_thinking_on(state: RouteState, last_token: torch.Tensor,
                    think_end_id: Optional[int]) -> RouteState:
    """Rows still thinking whose last emitted token was the think-end token are answering.

    route_step only sees the top-1 soft candidate; a token the engine chose itself (a router-hard
    step's sample, or an engine rule that overrides the forced token, such as vLLM's thinking
    budget) reaches the state machine here, one step later. Their Cold Stop counter restarts at
    0, as route_step's does when it ends thinking (the answer-phase abort counts from there).
    """
    if think_end_id is None:
        return state
    ended = (state.phase == PHASE_THINKING) & (last_token == think_end_id)
    return RouteState(state.phase.masked_fill(ended, PHASE_ANSWER),
                      state.low_count.masked_fill(ended, 0), state.think_steps)


def _answer_counter(entropy: torch.Tensor, before: RouteState, after: RouteState, threshold: float,
                    patience: int):
    """Soft Thinking's answer-phase Cold Stop (docs/fidelity.md): the rows that answered before
    this step count consecutive steps with ``entropy < threshold`` (route_step leaves answering
    rows' counters alone); a row whose count had reached ``patience`` at an earlier step is
    aborted now. Returns (abort bool [B], the new state)."""
    answering = before.phase == PHASE_ANSWER
    low = before.low_count
    # Same comparison as route.h: in the entropy's dtype; the counter saturates.
    low_entropy = entropy < torch.tensor(threshold, dtype=entropy.dtype, device=entropy.device)
    counted = torch.where(low_entropy, torch.where(low < I32_MAX, low + 1, low),
                          torch.zeros_like(low))
    abort = answering & (low >= patience)
    return abort, RouteState(after.phase, torch.where(answering, counted, after.low_count),
                             after.think_steps)


def step(scores: torch.Tensor, embedding: torch.Tensor, cfg: StepConfig, state: RouteState,
         seed: torch.Tensor, offset: Union[int, torch.Tensor], *,
         last_token: Optional[torch.Tensor] = None, validate: bool = False) -> Step:
    """One soft-thinking step of B rows that share ``cfg``.

    Args:
        scores: float [B, V] the step's scores after the engine's logits processors.
        embedding: [V_e, D] the input embedding matrix (V_e >= V), before any embed scale.
        cfg: the rows' :class:`StepConfig`.
        state: the rows' :class:`RouteState` before this step.
        seed: int64 [B] the rows' Philox keys (:func:`row_seed`).
        offset: the rows' step index (Philox offset): int, or int64 [B] when rows are at
            different steps.
        last_token: int64 [B] the token each row emitted at its previous step, or None at the
            first step (see :func:`end_thinking_on`).
        validate: soft_embed's data check (NaN / inf logits) and route_step's state check; each
            reads a status back to the host, so engines pass it on their first step only.
    """
    te = cfg.think_end_id
    if last_token is not None:
        state = end_thinking_on(state, last_token, te)
    tok = soft_embed(scores, embedding, k=cfg.k, **dict(cfg.filters), noise=cfg.noise, seed=seed,
                     offset=offset, validate=validate, ties=cfg.ties)
    threshold = cfg.cold_stop_entropy
    if threshold is not None and cfg.cold_stop_normalized:
        # RST compares entropy / ln V; multiplying the threshold is the same rule up to rounding
        # at the boundary, and keeps route_step's units (nats).
        threshold = threshold * math.log(scores.shape[1]) if scores.shape[1] > 1 else 0.0
    rs = route_step(tok.entropy, tok.max_prob, tok.ids[:, 0], state, think_end_id=te,
                    cold_stop_entropy=threshold,
                    cold_stop_patience=cfg.cold_stop_patience,
                    router_threshold=cfg.router_threshold, max_think_tokens=cfg.max_think_tokens,
                    validate=validate)
    soft = rs.mode == MODE_SOFT
    force = soft if te is None else soft | ((state.phase == PHASE_THINKING) & (rs.token == te))
    if not (cfg.cold_stop_answer_abort and threshold is not None):
        return Step(tok, rs.mode, rs.token, force, soft, rs.state)
    abort, new_state = _answer_counter(tok.entropy, state, rs.state, threshold,
                                       cfg.cold_stop_patience)
    token = torch.where(abort, torch.full_like(rs.token, cfg.eos_id), rs.token)
    return Step(tok, rs.mode, token, force | abort, soft, new_state, abort)


def force_scores(scores: torch.Tensor, force: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """``scores`` with every row in ``force`` set to -inf except 0 at ``token`` (a new tensor).

    Greedy and multinomial sampling then both pick ``token``, and no top-k / top-p / min-p warper
    removes it (they all keep the most likely token). Other rows are bitwise unchanged:
    ``x - 0 == x`` (signed zeros included), and a broadcast subtraction is ~8x faster on CPU than a
    masked_fill with a broadcast row mask.
    """
    token = token.unsqueeze(1)
    keep = scores.gather(1, token)
    penalty = torch.zeros_like(keep).masked_fill_(force.unsqueeze(1), math.inf)
    out = scores - penalty
    out.scatter_(1, token, torch.where(force.unsqueeze(1), torch.zeros_like(keep), keep))
    return out
