"""The one validation library of softkernels: every public function and config class checks its
arguments with these helpers (ops, noise, routing, logprob, mix, iterate, hf/config), so that each
bad value raises ValueError or TypeError naming the argument and the value, before any kernel
runs, in one style.

Limits and codes come from the extension (softkernels._C, defined once in csrc/common/).
"""

from __future__ import annotations

import math
import struct
from typing import Iterable, Optional, Tuple, Union

import torch

from . import _C

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
I64_MIN, I64_MAX = -(2 ** 63), 2 ** 63 - 1
I32_MAX = _C.INT32_MAX
F32_MAX = 3.4028234663852886e38
MAX_K = _C.MAX_K
MAX_POOL = _C.MAX_POOL


def is_compiling() -> bool:
    """True while torch.compile traces: data-dependent checks (host syncs) are skipped then."""
    try:
        return torch.compiler.is_compiling()
    except AttributeError:  # pragma: no cover - old torch
        return False


def skip_data_checks(*tensors) -> bool:
    """Data-dependent checks read tensor values: impossible while tracing and on meta tensors."""
    return is_compiling() or any(isinstance(t, torch.Tensor) and t.device.type == "meta"
                                 for t in tensors)


def to_f32(v: float) -> float:
    """v rounded to float32 (to +-inf beyond its range), as the fp32 kernels see it."""
    if v != v or math.isinf(v):
        return v
    try:
        return struct.unpack("f", struct.pack("f", v))[0]
    except OverflowError:
        return math.copysign(math.inf, v)


def _interval(lo, hi, lo_open, hi_open) -> str:
    return f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def _in(v, lo, hi, lo_open, hi_open) -> bool:
    return v == v and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)


def int_arg(where: str, value, lo: int = I64_MIN, hi: Optional[int] = I64_MAX) -> int:
    """An int in [lo, hi] (int64 by default). ``where`` starts the message ("fn: name")."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{where} must be an int, got {type(value).__name__} {value!r}")
    if hi is None:
        hi = I64_MAX
    if value < lo or value > hi:
        raise ValueError(f"{where} must be in [{lo}, {hi}], got {value}")
    return int(value)


def float_arg(where: str, value, *, lo: float = -math.inf, hi: float = math.inf,
              lo_open: bool = False, hi_open: bool = False, f32: bool = False) -> float:
    """A real number in the interval (NaN never is). With ``f32``, also its float32 rounding
    must be (what an fp32 kernel computes with)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{where} must be a number, got {type(value).__name__} {value!r}")
    try:
        v = float(value)
    except OverflowError:
        raise ValueError(f"{where} must be in {_interval(lo, hi, lo_open, hi_open)}, got "
                         f"{value} (too large for a float)") from None
    if not _in(v, lo, hi, lo_open, hi_open):
        raise ValueError(f"{where} must be in {_interval(lo, hi, lo_open, hi_open)}, got {value}")
    if f32 and not _in(to_f32(v), lo, hi, lo_open, hi_open):
        raise ValueError(f"{where} = {value} rounds to {to_f32(v)} in float32, outside "
                         f"{_interval(lo, hi, lo_open, hi_open)}")
    return v


def bool_arg(where: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{where} must be a bool, got {type(value).__name__} {value!r}")
    return value


def pair_arg(where: str, value) -> Tuple[float, float]:
    """A (lo, hi) pair of numbers with lo < hi (each may be infinite)."""
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in value)):
        raise TypeError(f"{where} must be a (lo, hi) pair of numbers or None, got {value!r}")
    lo = float_arg(f"{where}[0]", value[0])
    hi = float_arg(f"{where}[1]", value[1])
    if not lo < hi:
        raise ValueError(f"{where} must satisfy lo < hi, got {value!r}")
    return lo, hi


def check_bool(fn: str, name: str, value) -> bool:
    return bool_arg(f"{fn}: {name}", value)


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


def check_int(fn: str, name: str, value, lo: int = I64_MIN, hi: Optional[int] = I64_MAX) -> int:
    return int_arg(f"{fn}: {name}", value, lo, hi)


def check_float(fn: str, name: str, value, *, lo: float = -math.inf, hi: float = math.inf,
                lo_open: bool = False, hi_open: bool = False, f32: bool = False) -> float:
    return float_arg(f"{fn}: {name}", value, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open,
                     f32=f32)


RowValue = Union[int, float, torch.Tensor]


def row_param(fn: str, name: str, value: RowValue, *, B: int, device: torch.device,
              integer: bool, lo: float, hi: float, lo_open: bool, hi_open: bool,
              check_data: bool, f32: bool = False
              ) -> Tuple[Union[int, float], Optional[torch.Tensor]]:
    """Splits a per-row parameter into (scalar, [B] tensor or None) in the op's dtypes.

    A Python number is range-checked here. A [B] tensor is range-checked when ``check_data`` is
    true (this reads its values: a host sync on CUDA). With ``f32`` a float must stay in range
    after rounding to float32 (the kernels' precision for all but float64 logits).
    """
    # Fast path for plain numbers in range (the common case, on every decoding step).
    tv = type(value)
    if tv is float or tv is int:
        if integer and tv is int:
            if (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi):
                return value, None
        elif not integer and value == value and -F32_MAX <= value <= F32_MAX:
            v = to_f32(value) if f32 else value
            if (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi):
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
            checked = [t] if integer or not f32 else [t, t.float().double()]
            for c in checked:
                ok = torch.ones_like(c, dtype=torch.bool)
                if math.isfinite(lo):
                    ok &= (c > lo) if lo_open else (c >= lo)
                if math.isfinite(hi):
                    ok &= (c < hi) if hi_open else (c <= hi)
                if not integer:
                    ok &= ~torch.isnan(c)
                bad = (~ok).nonzero()
                if bad.numel():
                    i = int(bad[0, 0])
                    rounded = "" if c is t else f" (rounds to {c[i].item()} in float32)"
                    raise ValueError(f"{fn}: {name}[{i}] = {t[i].item()}{rounded} is outside "
                                     f"{_interval(lo, hi, lo_open, hi_open)}")
        return (0 if integer else 1.0), t
    if integer:
        v = check_int(fn, name, value, int(lo) + (1 if lo_open else 0),
                      None if not math.isfinite(hi) else int(hi) - (1 if hi_open else 0))
        return v, None
    return check_float(fn, name, value, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open,
                       f32=f32), None
