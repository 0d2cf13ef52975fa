"""Per-row thinking-phase routing for one decoding step: Cold Stop, ThinkRouter and the budget.

:func:`route_step` advances every row's state at once in a single fused op (no host sync, no
Python loop over rows). The rules are in csrc/common/route.h and docs/semantics.md; the float64
reference is :func:`softkernels.reference.route_step_reference`.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch

from . import _C
from ._checks import (I32_MAX, check_bool, check_float, check_int, check_tensor,
                      skip_data_checks)

__all__ = ["RouteState", "RouteStep", "route_step", "MODE_HARD", "MODE_SOFT", "MODE_FORCED_END",
           "PHASE_ANSWER", "PHASE_THINKING"]

# The kernel's codes (csrc/common/route.h, exported by the extension).
MODE_HARD, MODE_SOFT, MODE_FORCED_END = _C.MODE_HARD, _C.MODE_SOFT, _C.MODE_FORCED_END
PHASE_ANSWER, PHASE_THINKING = _C.PHASE_ANSWER, _C.PHASE_THINKING


class RouteState(NamedTuple):
    """Per-row state: phase int8 [B] (1 thinking, 0 answering), low_count int32 [B]
    (consecutive low-entropy thinking steps), think_steps int32 [B] (thinking tokens so far)."""

    phase: torch.Tensor
    low_count: torch.Tensor
    think_steps: torch.Tensor

    @staticmethod
    def start(batch_size: int, device=None, thinking: bool = True) -> "RouteState":
        """The state of rows that start generating (in the thinking phase by default)."""
        check_int("RouteState.start", "batch_size", batch_size, 0)
        check_bool("RouteState.start", "thinking", thinking)
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
               max_think_tokens: Optional[int] = None, validate: bool = True) -> RouteStep:
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
        validate: check the state's values (phase 0 or 1, counters >= 0): one host sync. Skipped
            under torch.compile. Counters saturate at 2^31 - 1 instead of overflowing.
    """
    fn = "route_step"
    check_tensor(fn, "entropy", entropy, ndim=1, dtypes=(torch.float32, torch.float64))
    dev = entropy.device
    B = entropy.shape[0]
    check_tensor(fn, "max_prob", max_prob, ndim=1, dtypes=(entropy.dtype,), device=dev)
    check_tensor(fn, "next_ids", next_ids, ndim=1, dtypes=(torch.int64,), device=dev)
    if not isinstance(state, RouteState):
        if not (isinstance(state, tuple) and len(state) == 3):
            raise TypeError(f"{fn}: state must be a RouteState (e.g. RouteState.start(B)), got "
                            f"{type(state).__name__}")
        state = RouteState(*state)
    for name, t, dt in (("state.phase", state.phase, torch.int8),
                        ("state.low_count", state.low_count, torch.int32),
                        ("state.think_steps", state.think_steps, torch.int32)):
        check_tensor(fn, name, t, ndim=1, dtypes=(dt,), device=dev)
    for name, t in (("max_prob", max_prob), ("next_ids", next_ids), ("state.phase", state.phase),
                    ("state.low_count", state.low_count),
                    ("state.think_steps", state.think_steps)):
        if t.shape[0] != B:
            raise ValueError(f"{fn}: {name} must have shape [B] = [{B}], got {tuple(t.shape)}")
    if think_end_id is not None:
        check_int(fn, "think_end_id (a token id or None)", think_end_id, 0)
    if cold_stop_entropy is not None:
        cold_stop_entropy = check_float(fn, "cold_stop_entropy", cold_stop_entropy, lo=0.0,
                                        hi=math.inf, hi_open=True)
    check_int(fn, "cold_stop_patience", cold_stop_patience, 1)
    if router_threshold is not None:
        router_threshold = check_float(fn, "router_threshold", router_threshold, lo=0.0, hi=1.0,
                                       lo_open=True)
    if max_think_tokens is not None:
        check_int(fn, "max_think_tokens", max_think_tokens, 0)
    check_bool(fn, "validate", validate)
    if validate and B > 0 and not skip_data_checks(entropy):
        bad = ((state.phase != PHASE_ANSWER) & (state.phase != PHASE_THINKING)) | \
              (state.low_count < 0) | (state.think_steps < 0)
        rows = bad.nonzero()
        if rows.numel():
            b = int(rows[0, 0])
            raise ValueError(
                f"{fn}: the state of row {b} is invalid: state.phase = {int(state.phase[b])} "
                f"(must be 0 or 1), state.low_count = {int(state.low_count[b])}, "
                f"state.think_steps = {int(state.think_steps[b])} (counters must be in "
                f"[0, {I32_MAX}])")
    mode, token, phase, low, steps = torch.ops.softkernels.route_step(
        entropy.contiguous(), max_prob.contiguous(), next_ids.contiguous(),
        state.phase.contiguous(), state.low_count.contiguous(), state.think_steps.contiguous(),
        -1 if think_end_id is None else think_end_id,
        -1.0 if cold_stop_entropy is None else float(cold_stop_entropy), cold_stop_patience,
        0.0 if router_threshold is None else float(router_threshold),
        -1 if max_think_tokens is None else max_think_tokens)
    return RouteStep(mode, token, RouteState(phase, low, steps))
