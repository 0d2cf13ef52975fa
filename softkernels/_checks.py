"""Argument validation shared by the public ops: every message names the argument and its value."""

from __future__ import annotations

import math
from typing import Iterable, Optional, Tuple, Union

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)


def is_compiling() -> bool:
    """True while torch.compile traces: data-dependent checks (host syncs) are skipped then."""
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - old torch
        return False


def check_tensor(fn: str, name: str, t, *, ndim: Optional[int] = None,
                 dtypes: Optional[Iterable[torch.dtype]] = None,
                 device: Optional[torch.device] = None, shape_hint: str = "") -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{fn}: {name} must be a {ndim}-D tensor{shape_hint}, "
                         f"got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in tuple(dtypes):
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{fn}: {name} must have dtype in ({names}), got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{fn}: {name} is on {t.device} but must be on {device} "
                         "(the logits' device)")
    return t


def check_int(fn: str, name: str, value, lo: int, hi: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn}: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < lo or (hi is not None and value > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{fn}: {name} must be in {rng}, got {value}")
    return value


def check_float(fn: str, name: str, value, *, lo: float, hi: float, lo_open: bool,
                hi_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{fn}: {name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    ok = not v != v and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        raise ValueError(f"{fn}: {name} must be in {_interval(lo, hi, lo_open, hi_open)}, got {value}")
    return v


def _interval(lo, hi, lo_open, hi_open) -> str:
    return f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


RowValue = Union[int, float, torch.Tensor]


def row_param(fn: str, name: str, value: RowValue, *, B: int, device: torch.device,
              integer: bool, lo: float, hi: float, lo_open: bool, hi_open: bool,
              check_data: bool) -> Tuple[Union[int, float], Optional[torch.Tensor]]:
    """Splits a per-row parameter into (scalar, [B] tensor or None) in the op's dtypes.

    A Python number is range-checked here. A [B] tensor is range-checked when ``check_data`` is
    true (this reads its values: a host sync on CUDA).
    """
    # Fast path for plain numbers in range (the common case, on every decoding step).
    tv = type(value)
    if tv is float or tv is int:
        if integer and tv is int:
            if (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi):
                return value, None
        elif not integer and value == value:
            if (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi):
                return float(value), None
    if isinstance(value, torch.Tensor):
        if value.dim() != 1 or value.shape[0] != B:
            raise ValueError(f"{fn}: {name} must be a number or a [B] = [{B}] tensor, "
                             f"got shape {tuple(value.shape)}")
        if value.device != device:
            raise ValueError(f"{fn}: {name} is on {value.device} but must be on {device} "
                             "(the logits' device)")
        if integer:
            if value.dtype.is_floating_point or value.dtype.is_complex or value.dtype == torch.bool:
                raise TypeError(f"{fn}: {name} must be an integer tensor, got {value.dtype}")
            t = value.to(torch.int64).contiguous()
        else:
            if not value.dtype.is_floating_point:
                raise TypeError(f"{fn}: {name} must be a floating-point tensor, got {value.dtype}")
            t = value.to(torch.float64).contiguous()
        if check_data and B > 0:
            ok = torch.ones_like(t, dtype=torch.bool)
            if math.isfinite(lo):
                ok &= (t > lo) if lo_open else (t >= lo)
            if math.isfinite(hi):
                ok &= (t < hi) if hi_open else (t <= hi)
            if not integer:
                ok &= ~torch.isnan(t)
            bad = (~ok).nonzero()
            if bad.numel():
                i = int(bad[0, 0])
                raise ValueError(f"{fn}: {name}[{i}] = {t[i].item()} is outside "
                                 f"{_interval(lo, hi, lo_open, hi_open)}")
        return (0 if integer else 1.0), t
    if integer:
        v = check_int(fn, name, value, int(lo) + (1 if lo_open else 0),
                      None if not math.isfinite(hi) else int(hi) - (1 if hi_open else 0))
        return v, None
    return check_float(fn, name, value, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open), None
