"""Per-row thinking-phase routing for one decoding step: Cold Stop, ThinkRouter and the budget.

:func:`route_step` advances every row's state at once in a single fused op (no host sync, no
Python loop over rows). The rules are in csrc/common/route.h and docs/semantics.md; the float64
reference is :func:`softkernels.reference.route_step_reference`.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from . import _C  # noqa: F401
from ._checks import check_tensor

__all__ = ["RouteState", "RouteStep", "route_step", "MODE_HARD", "MODE_SOFT", "MODE_FORCED_END",
           "PHASE_ANSWER", "PHASE_THINKING"]

# Must match csrc/common/route.h.
MODE_HARD, MODE_SOFT, MODE_FORCED_END = 0, 1, 2
PHASE_ANSWER, PHASE_THINKING = 0, 1


class RouteState(NamedTuple):
    """Per-row state: phase int8 [B] (1 thinking, 0 answering), low_count int32 [B]
    (consecutive low-entropy thinking steps), think_steps int32 [B] (thinking tokens so far)."""

    phase: torch.Tensor
    low_count: torch.Tensor
    think_steps: torch.Tensor

    @staticmethod
    def start(batch_size: int, device=None, thinking: bool = True) -> "RouteState":
        """The state of rows that start generating (in the thinking phase by default)."""
        return RouteState(
            torch.full((batch_size,), PHASE_THINKING if thinking else PHASE_ANSWER,
                       dtype=torch.int8, device=device),
            torch.zeros(batch_size, dtype=torch.int32, device=device),
            torch.zeros(batch_size, dtype=torch.int32, device=device))


class RouteStep(NamedTuple):
    """Result of one step: mode int8 [B] (0 hard, 1 soft, 2 forced think-end), token int64 [B]
    (think_end_id where forced, else next_ids) and the new state."""

    mode: torch.Tensor
    token: torch.Tensor
    state: RouteState


@torch.library.register_fake("softkernels::route_step")
def _route_step_fake(entropy, max_prob, next_ids, phase, low_count, think_steps, think_end_id,
                     cold_stop_entropy, cold_stop_patience, router_threshold, max_think_tokens):
    return (torch.empty_like(phase), torch.empty_like(next_ids), torch.empty_like(phase),
            torch.empty_like(low_count), torch.empty_like(think_steps))


def route_step(entropy: torch.Tensor, max_prob: torch.Tensor, next_ids: torch.Tensor,
               state: RouteState, *, think_end_id: Optional[int] = None,
               cold_stop_entropy: Optional[float] = None, cold_stop_patience: int = 256,
               router_threshold: Optional[float] = None,
               max_think_tokens: Optional[int] = None) -> RouteStep:
    """Advances each row's thinking state by one step.

    For a row that is thinking, in this order:
      1. ``next_ids == think_end_id`` (the model ended thinking itself): hard step, answering.
      2. budget: ``think_steps >= max_think_tokens`` forces the think-end token (mode 2);
         without a think-end token the row switches to hard decoding instead.
      3. Cold Stop: ``low_count`` counts consecutive thinking steps with
         ``entropy < cold_stop_entropy``; reaching ``cold_stop_patience`` forces the end as in 2.
      4. ThinkRouter: ``max_prob < router_threshold`` makes this step hard; otherwise soft.
    Rows that are answering stay hard.

    Args:
        entropy, max_prob: float32/float64 [B], this step's (from :func:`soft_embed`).
        next_ids: int64 [B], the token each row would emit (its top-1 soft slot).
        state: the rows' :class:`RouteState`.
        think_end_id: token id that ends thinking, or None.
        cold_stop_entropy: threshold in nats, or None for no Cold Stop.
        cold_stop_patience: consecutive low-entropy steps that trigger Cold Stop (>= 1).
        router_threshold: confidence below which a step is hard, in (0, 1], or None for no router.
        max_think_tokens: thinking budget in tokens (>= 0), or None.
    """
    fn = "route_step"
    check_tensor(fn, "entropy", entropy, ndim=1, dtypes=(torch.float32, torch.float64))
    dev = entropy.device
    B = entropy.shape[0]
    check_tensor(fn, "max_prob", max_prob, ndim=1, dtypes=(entropy.dtype,), device=dev)
    check_tensor(fn, "next_ids", next_ids, ndim=1, dtypes=(torch.int64,), device=dev)
    for name, t, dt in (("state.phase", state.phase, torch.int8),
                        ("state.low_count", state.low_count, torch.int32),
                        ("state.think_steps", state.think_steps, torch.int32)):
        check_tensor(fn, name, t, ndim=1, dtypes=(dt,), device=dev)
    for name, t in (("max_prob", max_prob), ("next_ids", next_ids), ("state.phase", state.phase),
                    ("state.low_count", state.low_count),
                    ("state.think_steps", state.think_steps)):
        if t.shape[0] != B:
            raise ValueError(f"{fn}: {name} must have shape [B] = [{B}], got {tuple(t.shape)}")
    if think_end_id is not None and (isinstance(think_end_id, bool) or not isinstance(think_end_id, int)
                                     or think_end_id < 0):
        raise ValueError(f"{fn}: think_end_id must be a token id >= 0 or None, got {think_end_id!r}")
    if cold_stop_entropy is not None and not (isinstance(cold_stop_entropy, (int, float))
                                              and math.isfinite(cold_stop_entropy)
                                              and cold_stop_entropy >= 0):
        raise ValueError(f"{fn}: cold_stop_entropy must be a number >= 0 or None, "
                         f"got {cold_stop_entropy!r}")
    if isinstance(cold_stop_patience, bool) or not isinstance(cold_stop_patience, int) \
            or cold_stop_patience < 1:
        raise ValueError(f"{fn}: cold_stop_patience must be an int >= 1, got {cold_stop_patience!r}")
    if router_threshold is not None and not (isinstance(router_threshold, (int, float))
                                             and 0 < router_threshold <= 1):
        raise ValueError(f"{fn}: router_threshold must be in (0, 1] or None, "
                         f"got {router_threshold!r}")
    if max_think_tokens is not None and (isinstance(max_think_tokens, bool)
                                         or not isinstance(max_think_tokens, int)
                                         or max_think_tokens < 0):
        raise ValueError(f"{fn}: max_think_tokens must be an int >= 0 or None, "
                         f"got {max_think_tokens!r}")
    mode, token, phase, low, steps = torch.ops.softkernels.route_step(
        entropy.contiguous(), max_prob.contiguous(), next_ids.contiguous(),
        state.phase.contiguous(), state.low_count.contiguous(), state.think_steps.contiguous(),
        -1 if think_end_id is None else think_end_id,
        -1.0 if cold_stop_entropy is None else float(cold_stop_entropy), cold_stop_patience,
        0.0 if router_threshold is None else float(router_threshold),
        -1 if max_think_tokens is None else max_think_tokens)
    return RouteStep(mode, token, RouteState(phase, low, steps))
