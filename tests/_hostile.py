"""Drives one raw op (torch.ops.softkernels.<op>) with hostile arguments: every argument of a valid
call replaced, one at a time, by values of the wrong shape, dtype, stride, size or range. Run as a
script (``python tests/_hostile.py OP``) by tests/test_raw_ops_hostile.py, in a subprocess, so that
a crash shows as a dead process instead of killing the test run; under ``make sanitize`` the same
calls run with AddressSanitizer and UBSan watching every memory access.

Prints one line per call ("<case>: ok" or "<case>: <ExceptionType>") and, last, "done <n>".
"""

from __future__ import annotations

import math
import sys

import torch

import softkernels  # noqa: F401  (loads the op library)

ops = torch.ops.softkernels
B, V, D, K = 3, 40, 8, 4


def _ids(n=B, k=K, hi=V):
    return torch.randint(0, hi, (n, k))


def _base():
    """A valid argument list of every raw op (tensors fresh per call)."""
    lg = torch.randn(B, V)
    E = torch.randn(V, D)
    w = torch.softmax(torch.randn(B, K), -1)
    return {
        "soft_embed": [lg, E, K, 1.0, 0, 1.0, 0.0, 0, 0, None, None, None, None, None, None,
                       None, None, 0, 0.5, 1.0, -1.5, 3.0, 4.0, 0.1, K],
        "soft_embed_backward": [torch.randn(B, D), torch.randn(B, K), None, lg, E, _ids(), w,
                                torch.randn(B, K), None, 1.0, None, 0, 0.5, True, True],
        "mix_embeddings": [E, _ids(), w, 0, 0, None, None, False, 0.0],
        "route_step": [torch.rand(B), torch.rand(B), torch.zeros(B, dtype=torch.long),
                       torch.ones(B, dtype=torch.int8), torch.zeros(B, dtype=torch.int32),
                       torch.zeros(B, dtype=torch.int32), 5, 0.5, 3, 0.5, 10],
        "select_rows": [torch.rand(B), 0.5],
        "add_rows_": [torch.randn(B, V), torch.randn(B, V), torch.arange(B),
                      torch.tensor([B])],
        "gumbel_logprob": [lg, _ids(), torch.randn(B, K), None, 1.0, 1.0, -1.5, 3.0, 0.05],
        "gumbel_logprob_backward": [torch.ones(B), lg, _ids(), torch.randn(B, K), None,
                                    torch.zeros(B), 1.0, 1.0, -1.5, 3.0, 0.05, True],
        "slot_logprob": [lg, _ids(), torch.rand(B, K), None, 4, 1.0, 1.0, -5.0, 3.0, 0.05, 0.15,
                         0.05],
        "slot_logprob_backward": [torch.ones(B), lg, _ids(), torch.rand(B, K), None,
                                  torch.zeros(B), 4, 1.0, 1.0, -5.0, 3.0, 0.05, 0.15, 0.05],
        "gaussian_logprob": [torch.randn(B, D), torch.randn(B, D), None, 0.5],
        "gaussian_logprob_backward": [torch.ones(B), torch.randn(B, D), torch.randn(B, D), None,
                                      0.5, True, True],
    }


_HUGE = 2 ** 62


def _tensor_variants(t: torch.Tensor):
    """Hostile replacements of a tensor argument."""
    out = [
        ("empty", t.new_empty((0,))),
        ("scalar", t.new_zeros(())),
        ("1-D", t.reshape(-1)[:1].clone()),
        ("3-D", t.reshape(1, *t.shape) if t.dim() else t.reshape(1, 1, 1)),
        ("bigger", torch.zeros(*(s + 3 for s in t.shape), dtype=t.dtype) if t.dim() else t),
        ("smaller", t[tuple(slice(0, max(s - 1, 0)) for s in t.shape)] if t.dim() else t),
        ("float64", t.double()), ("float16", t.half()), ("int64", t.long()),
        ("int32", t.int()), ("bool", t.bool()), ("int8", t.to(torch.int8)),
        ("meta", t.to("meta")),
    ]
    if t.dim() >= 1:
        out.append(("expanded", t.reshape(-1)[:1].expand(*t.shape)))
    if t.dim() == 2:
        out.append(("transposed", t.t()))
        out.append(("strided", torch.zeros(t.shape[0], t.shape[1] * 2, dtype=t.dtype)[:, ::2]))
    if not t.dtype.is_floating_point and t.dtype != torch.bool:
        info = torch.iinfo(t.dtype)
        out += [("ids=-1", torch.full_like(t, -1)), ("ids=V", torch.full_like(t, min(V, info.max))),
                ("ids=max", torch.full_like(t, info.max)), ("ids=min", torch.full_like(t, info.min))]
        if t.dtype == torch.int64:
            out += [("ids+huge", t + _HUGE), ("ids-huge", t - _HUGE)]
    if t.dtype.is_floating_point:
        out += [("nan", torch.full_like(t, math.nan)), ("inf", torch.full_like(t, math.inf)),
                ("-inf", torch.full_like(t, -math.inf)), ("neg", -t.abs() - 1)]
    return out


def _scalar_variants(v):
    if isinstance(v, bool):
        return [("flip", not v)]
    if isinstance(v, int):
        return [(str(x), x) for x in (-1, 0, 1, 2 ** 31, -2 ** 31 - 1, _HUGE, -_HUGE,
                                      2 ** 63 - 1, -2 ** 63)]
    if isinstance(v, float):
        return [(str(x), x) for x in (math.nan, math.inf, -math.inf, 0.0, -1.0, 1e-300, 1e300,
                                      1e-40, 2.0)]
    return []


def _optional_variants(name: str, op: str):
    """Tensors for an argument that is None in the base call (Tensor? in the schema)."""
    n = B
    return [("bool", torch.ones(n, dtype=torch.bool)), ("int64", torch.full((n,), _HUGE)),
            ("int64-neg", torch.full((n,), -5)), ("float64", torch.full((n,), 1e-300, dtype=torch.float64)),
            ("float64-nan", torch.full((n,), math.nan, dtype=torch.float64)),
            ("float32", torch.ones(n)), ("short", torch.ones(1, dtype=torch.bool)),
            ("long", torch.ones(n + 5, dtype=torch.int64))]


def cases(op: str):
    """(name, args) pairs: the valid call, then each argument replaced in turn."""
    base = _base()[op]
    yield "valid", base
    for i, v in enumerate(base):
        if isinstance(v, torch.Tensor):
            variants = _tensor_variants(v)
        elif v is None:
            variants = _optional_variants(str(i), op)
        else:
            variants = _scalar_variants(v)
        for vname, nv in variants:
            args = list(_base()[op])
            args[i] = nv
            yield f"arg{i}={vname}", args
    # Combinations that single replacements miss.
    if op == "soft_embed":
        lg, E = torch.randn(B, V), torch.randn(V, D)
        # Every noise kind (csrc/common/macros.h NoiseKind, 0..7) and both ties rules (the
        # keep_all pool is the largest one: a smaller `pool` must be refused).
        for kind in range(8):
            for top_k in (0, 1, 5, V - 1, V, V + 7, -3):
                for pool in (1, K, V):
                    yield (f"kind={kind},top_k={top_k},pool={pool},ties={kind % 2}",
                           [lg, E, K, 1.0, top_k, 0.9, 0.01, 0, 0, None, None, None, None, None,
                            None, None, None, kind, 0.5, 1.0, -1.5, 3.0, 4.0, 0.1, pool,
                            kind % 2])
        for ties in (-1, 2, _HUGE):
            yield (f"ties={ties}", [lg, E, K, 1.0, 0, 1.0, 0.0, 0, 0, None, None, None, None, None,
                                    None, None, None, 0, 0.5, 1.0, -1.5, 3.0, 4.0, 0.1, K, ties])
        rows = torch.tensor([0, 5, _HUGE])
        yield ("top_k_rows huge", [lg, E, K, 1.0, 0, 1.0, 0.0, 0, 0, None, rows, None, None, None,
                                   None, None, None, 2, 0.5, 1.0, -1.5, 3.0, 4.0, 0.1, K])
        yield ("hard_ids huge", [lg, E, K, 1.0, 0, 1.0, 0.0, 0, 0, None, None, None, None, None,
                                 None, torch.ones(B, dtype=torch.bool), torch.full((B,), _HUGE),
                                 0, 0.5, 1.0, -1.5, 3.0, 4.0, 0.1, K])
        yield ("hard_ids without hard", [lg, E, K, 1.0, 0, 1.0, 0.0, 0, 0, None, None, None, None,
                                         None, None, None, torch.zeros(B, dtype=torch.long),
                                         0, 0.5, 1.0, -1.5, 3.0, 4.0, 0.1, K])
        yield ("V=1 odd stride", [torch.randn(4, B).t()[:, :1], torch.randn(1, D).t().contiguous().t(),
                                  1, 1.0, 0, 1.0, 0.0, 0, 0, None, None, None, None, None, None,
                                  None, None, 0, 0.5, 1.0, -1.5, 3.0, 4.0, 0.1, 1])
    if op in ("soft_embed_backward",):
        lg, E = torch.randn(B, V), torch.randn(V, D)
        for kind in range(8):
            yield (f"kind={kind} ids huge",
                   [torch.randn(B, D), torch.randn(B, K), torch.randn(B, K), lg, E,
                    torch.full((B, K), _HUGE), torch.full((B, K), 0.25), torch.randn(B, K), None,
                    1.0, None, kind, 0.5, True, True])
            yield (f"kind={kind} ids in [V, V_e)",
                   [torch.randn(B, D), torch.randn(B, K), torch.randn(B, K), lg,
                    torch.randn(V + 10, D), torch.full((B, K), V + 3), torch.full((B, K), 0.25),
                    torch.randn(B, K), None, 1.0, None, kind, 0.5, True, True])
    if op in ("slot_logprob", "slot_logprob_backward"):
        # Every noise kind code (only 4 TopKDirichlet and 5 WeightGaussian are accepted), with
        # ids out of range in soft and in hard rows (a hard row reads ids[:, 0] only).
        lg = torch.randn(B, V)
        pre = [torch.ones(B)] if op == "slot_logprob_backward" else []
        lse = [torch.zeros(B)] if op == "slot_logprob_backward" else []
        hard = torch.tensor([True, False, True])
        for kind in range(-1, 9):
            for name, ids in (("ids huge", torch.full((B, K), _HUGE)), ("ids=V", torch.full((B, K), V)),
                              ("ids=-1", torch.full((B, K), -1))):
                for h in (None, hard):
                    yield (f"kind={kind} {name} hard={h is not None}",
                           pre + [lg, ids, torch.rand(B, K), h] + lse +
                           [kind, 1.0, 1.0, -5.0, 3.0, 0.05, 0.15, 0.05])
        yield ("k > MAX_K", pre + [lg, torch.zeros(B, 1025, dtype=torch.long),
                                   torch.rand(B, 1025), None] + lse +
               [5, 1.0, 1.0, -5.0, 3.0, 0.05, 0.15, 0.05])
        yield ("V=1 odd stride", pre + [torch.randn(4, B).t()[:, :1], torch.zeros(B, 1, dtype=torch.long),
                                        torch.rand(B, 1), None] + lse +
               [4, 1.0, 1.0, -5.0, 3.0, 0.05, 0.15, 0.05])
    if op == "add_rows_":
        lg = torch.randn(B, V)
        yield "src is logits", [lg, lg, torch.arange(B), torch.tensor([B])]
        yield "idx huge", [lg, torch.randn(B, V), torch.full((B,), _HUGE), torch.tensor([B])]
        yield "count huge", [lg, torch.randn(B, V), torch.arange(B), torch.tensor([2 ** 63 - 1])]
        yield "count neg", [lg, torch.randn(B, V), torch.arange(B), torch.tensor([-2 ** 63])]
    if op == "route_step":
        i32 = torch.int32
        big = torch.full((B,), 2 ** 31 - 1, dtype=i32)
        yield "counters at INT32_MAX", [torch.zeros(B), torch.ones(B), torch.zeros(B, dtype=torch.long),
                                        torch.ones(B, dtype=torch.int8), big, big.clone(), -1, 1.0,
                                        2 ** 62, 0.0, -1]
        yield "counters negative", [torch.zeros(B), torch.ones(B), torch.zeros(B, dtype=torch.long),
                                    torch.ones(B, dtype=torch.int8), -big, -big, -1, 1.0, 3, 0.0, 5]


def main(op: str) -> int:
    n = 0
    for name, args in cases(op):
        try:
            out = getattr(ops, op)(*args)
            # Touch the outputs: a garbage tensor would fail here.
            for t in (out if isinstance(out, tuple) else (out,)):
                if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                    t.sum()
            print(f"{name}: ok", flush=True)
        except (RuntimeError, ValueError, TypeError, IndexError, NotImplementedError) as e:
            print(f"{name}: {type(e).__name__}", flush=True)
        n += 1
    print(f"done {n}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
