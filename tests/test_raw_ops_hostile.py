"""Every raw op (torch.ops.softkernels.*) driven with hostile arguments, each op in its own
subprocess (tests/_hostile.py): the process must survive every call (an error is fine, a crash is
not), and the calls that used to read or write out of bounds must now be refused. Under
``make sanitize`` the subprocesses inherit AddressSanitizer / UBSan, which turn any remaining
out-of-bounds access or undefined behaviour into a failure here."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import softkernels  # noqa: F401

HOSTILE = Path(__file__).resolve().parent / "_hostile.py"
OPS = ["soft_embed", "soft_embed_backward", "mix_embeddings", "route_step", "select_rows",
       "add_rows_", "gumbel_logprob", "gumbel_logprob_backward", "slot_logprob",
       "slot_logprob_backward", "gaussian_logprob", "gaussian_logprob_backward"]


def test_every_op_is_covered():
    registered = {s.name.split("::", 1)[1] for s in torch._C._jit_get_all_schemas()
                  if s.name.startswith("softkernels::")}
    assert registered == set(OPS)


@pytest.mark.parametrize("op", OPS)
def test_raw_op_survives_hostile_arguments(op):
    r = subprocess.run([sys.executable, str(HOSTILE), op], capture_output=True, text=True,
                       timeout=600, env=dict(os.environ))
    lines = r.stdout.strip().splitlines()
    assert r.returncode == 0, (f"{op} died (rc {r.returncode}) after {lines[-1:]}:\n"
                               f"{r.stderr[-4000:]}")
    assert lines[-1].startswith("done "), lines[-3:]
    results = dict(line.split(": ", 1) for line in lines[:-1])
    assert results["valid"] == "ok"
    assert int(lines[-1].split()[1]) == len(results) > 20


def _raw_soft_embed(logits, emb, k, top_k, pool, kind):
    return torch.ops.softkernels.soft_embed(
        logits, emb, k, 1.0, top_k, 1.0, 0.0, 0, 0, None, None, None, None, None, None, None,
        None, kind, 0.5, 1.0, -1.5, 3.0, 4.0, 0.1, pool)


@pytest.mark.parametrize("top_k,kind", [(40, 0), (0, 2), (9, 1)])
def test_soft_embed_pool_smaller_than_the_row_needs_is_refused(top_k, kind):
    # Used to overflow the per-row scratch (heap corruption / SIGSEGV).
    logits, emb = torch.randn(2, 50), torch.randn(50, 4)
    with pytest.raises(RuntimeError, match="candidate pool larger than pool = 2"):
        _raw_soft_embed(logits, emb, 2, top_k, 2, kind)


def test_soft_embed_pool_per_row_top_k_flags_the_row():
    logits, emb = torch.randn(3, 50), torch.randn(50, 4)
    rows = torch.tensor([0, 3, 2 ** 62])
    out = torch.ops.softkernels.soft_embed(
        logits, emb, 2, 1.0, 0, 1.0, 0.0, 0, 0, None, rows, None, None, None, None, None, None, 2,
        0.5, 1.0, -1.5, 3.0, 4.0, 0.1, 3)
    status = out[6]
    # Row 0 (top_k off) and row 2 (top_k >= V: off) need the whole vocabulary under Dirichlet.
    assert status.tolist() == [4, 0, 4]
    assert torch.isnan(out[2][0]).all() and torch.isfinite(out[2][1]).all()


@pytest.mark.parametrize("kind", [0, 1, 3])
def test_soft_embed_backward_ignores_ids_outside_the_table(kind):
    # Used to read and write out of bounds (ids index logits' rows and the embedding table).
    B, V, D, k = 3, 20, 4, 3
    logits, emb = torch.randn(B, V, dtype=torch.float64), torch.randn(V + 5, D, dtype=torch.float64)
    ids = torch.tensor([[1, -7, V + 2], [2 ** 62, 3, -2 ** 62], [V, V + 4, 4]])
    w = torch.full((B, k), 1.0 / k, dtype=torch.float64)
    g_prime = torch.zeros(B, k, dtype=torch.float64)
    ge = torch.randn(B, D, dtype=torch.float64)
    gl, gE = torch.ops.softkernels.soft_embed_backward(
        ge, None, torch.ones(B, k, dtype=torch.float64) if kind == 1 else None, logits, emb, ids,
        w, g_prime, None, 1.0, None, kind, 0.5, True, True)
    # Only in-range ids receive gradient: ids in [0, V) for the logits, [0, V_e) for the table.
    touched_logits = (gl != 0).any(0).nonzero().flatten().tolist()
    assert set(touched_logits) <= {1, 3, 4}
    touched_rows = (gE != 0).any(1).nonzero().flatten().tolist()
    assert set(touched_rows) == {1, V + 2, 3, V, V + 4, 4}
    assert torch.allclose(gE[V + 4], ge[2] / k)


@pytest.mark.parametrize("op", ["slot_logprob", "slot_logprob_backward"])
def test_slot_logprob_ids_out_of_range_give_nan_rows(op):
    # The raw op reads no id outside [0, V): such rows come back NaN (flagged in the forward).
    B, V, k = 3, 20, 3
    logits = torch.randn(B, V, dtype=torch.float64)
    ids = torch.tensor([[1, 2, 2 ** 62], [V, 0, 1], [-1, 5, 6]])
    hard = torch.tensor([False, False, True])
    draws = torch.rand(B, k, dtype=torch.float64)
    args = (4, 1.0, 1.0, -5.0, 3.0, 0.05, 0.15, 0.05)
    lp, lse, status = torch.ops.softkernels.slot_logprob(logits, ids, draws, hard, *args)
    assert status.tolist() == [16, 16, 16] and torch.isnan(lp).all()
    ok = torch.tensor([[1, 2, 3], [4, 0, 1], [7, V + 5, -3]])     # row 2 is hard: slot 0 only
    lp, lse, status = torch.ops.softkernels.slot_logprob(logits, ok, draws, hard, *args)
    assert status.tolist() == [0, 0, 0] and torch.isfinite(lp).all()
    if op == "slot_logprob_backward":
        g = torch.ops.softkernels.slot_logprob_backward(torch.ones(B, dtype=torch.float64),
                                                        logits, ids, draws, hard, lse, *args)
        assert torch.isnan(g).all()     # the forward's finite lse does not make them readable
