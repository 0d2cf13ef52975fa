"""Selective-iteration ops (Think-at-Hard): select_rows, iteration_embeds, add_rows_ against their
references, on every device (the CUDA cases run where a GPU exists), errors, opcheck, and the
no-host-sync promise on CUDA."""

import math

import pytest
import torch

import softkernels as sk
from softkernels.reference import (add_rows_reference, iteration_embeds_reference,
                                   select_rows_reference)

FLOATS = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


# --------------------------------------------------------------------------------------------
# select_rows

@pytest.mark.parametrize("B", [0, 1, 7, 1023, 1024, 1025, 3001])
@pytest.mark.parametrize("dtype", FLOATS)
def test_select_rows_matches_reference(device, B, dtype):
    scores = torch.rand(B, device=device).to(dtype)
    if B > 3:
        scores[1] = float("nan")            # never hard
        scores[2] = 0.5                      # exactly at the threshold: not hard (strict <)
    for thr in (0.5, 0.0, 1.0, -math.inf, math.inf, 0.06):
        idx, count = sk.select_rows(scores, thr)
        want_idx, want_count = select_rows_reference(scores, thr)
        assert idx.device == scores.device and count.device == scores.device
        assert idx.dtype == torch.int64 and count.dtype == torch.int64 and count.shape == (1,)
        assert torch.equal(idx.cpu(), want_idx), (B, thr)
        assert torch.equal(count.cpu(), want_count), (B, thr)


def test_select_rows_layout_and_compare_in_float64():
    scores = torch.tensor([0.9, 0.1, 0.7, 0.2, 0.3], dtype=torch.float32)
    idx, count = sk.select_rows(scores, 0.5)
    assert idx.tolist() == [1, 3, 4, 0, 2] and count.tolist() == [3]
    # float32(0.1) = 0.100000001...: above 0.1 as a double, so not hard; the threshold is not
    # rounded to the scores' dtype.
    idx, count = sk.select_rows(torch.tensor([0.1], dtype=torch.float32), 0.1)
    assert count.item() == 0
    f = float(torch.tensor(0.1, dtype=torch.float32))
    assert sk.select_rows(torch.tensor([0.1], dtype=torch.float32), f).count.item() == 0
    assert sk.select_rows(torch.tensor([0.1], dtype=torch.float32), f + 1e-12).count.item() == 1
    _, count = sk.select_rows(torch.tensor([float("nan"), -math.inf]), math.inf)
    assert count.item() == 1


def test_select_rows_non_contiguous_scores(device):
    x = torch.rand(9, 2, device=device)
    idx, count = sk.select_rows(x[:, 1], 0.4)
    want_idx, want_count = select_rows_reference(x[:, 1], 0.4)
    assert torch.equal(idx.cpu(), want_idx) and torch.equal(count.cpu(), want_count)


@pytest.mark.parametrize("bad,exc,match", [
    (dict(scores=torch.zeros(2, 2)), ValueError, r"scores must be a 1-D tensor"),
    (dict(scores=torch.zeros(3, dtype=torch.int64)), TypeError, r"scores must have dtype"),
    (dict(scores=[0.1, 0.2]), TypeError, r"scores must be a torch.Tensor"),
    (dict(threshold=float("nan")), ValueError, r"threshold must be in \[-inf, inf\], got nan"),
    (dict(threshold="0.5"), TypeError, r"threshold must be a number, got str '0.5'"),
    (dict(threshold=True), TypeError, r"threshold must be a number"),
])
def test_select_rows_errors(bad, exc, match):
    args = dict(scores=torch.rand(3), threshold=0.5)
    args.update(bad)
    with pytest.raises(exc, match=match):
        sk.select_rows(args["scores"], args["threshold"])


def test_select_rows_opcheck(device):
    torch.library.opcheck(torch.ops.softkernels.select_rows.default,
                          (torch.rand(37, device=device), 0.3))
    torch.library.opcheck(torch.ops.softkernels.select_rows.default,
                          (torch.rand(0, device=device, dtype=torch.float64), 0.3))


# --------------------------------------------------------------------------------------------
# add_rows_

@pytest.mark.parametrize("dtype", FLOATS)
def test_add_rows_matches_reference(device, dtype):
    B, V = 11, 300
    logits = torch.randn(B, V, device=device).to(dtype)
    src = torch.randn(B, V, device=device).to(dtype)
    scores = torch.rand(B, device=device)
    idx, count = sk.select_rows(scores, 0.6)
    n = int(count)
    for s, c in ((src, count), (src[:n], count), (src[:max(n - 1, 0)], count),   # clamp to src
                 (src, torch.tensor([B + 5], device=device)),                    # clamp to idx
                 (src, torch.tensor([-2], device=device)), (src, 3), (src, 0)):
        want = add_rows_reference(logits, s, idx, c)
        got = logits.clone()
        out = sk.add_rows_(got, s, idx, c)
        assert out is got
        assert torch.equal(got.cpu(), want)


def test_add_rows_into_a_strided_view_and_repeated_rows(device):
    B, L, V = 4, 3, 50
    full = torch.randn(B, L, V, device=device)
    before = full.clone()
    view = full[:, -1]                                 # what the HF layer updates in place
    src = torch.randn(3, V, device=device)
    idx = torch.tensor([2, 0, 2, 1], device=device)    # row 2 twice: both additions, in order
    sk.add_rows_(view, src, idx, torch.tensor([3], device=device))
    want = add_rows_reference(before[:, -1], src, idx, 3)
    assert torch.equal(full[:, -1].cpu(), want)
    assert torch.equal(full[:, :-1], before[:, :-1])   # the other positions are untouched


def test_add_rows_out_of_range_rows(device):
    logits = torch.zeros(3, 4, device=device)
    src = torch.ones(2, 4, device=device)
    idx = torch.tensor([5, 1], device=device)
    with pytest.raises(ValueError, match=r"idx\[0\] = 5 is not a row of logits \(B = 3\)"):
        sk.add_rows_(logits, src, idx, 2)
    sk.add_rows_(logits, src, idx, 2, validate=False)   # skipped, never written out of bounds
    assert logits.cpu().tolist() == [[0.0] * 4, [1.0] * 4, [0.0] * 4]


@pytest.mark.parametrize("kw,exc,match", [
    (dict(src=torch.zeros(2, 5)), ValueError, r"src must have V = 4 columns"),
    (dict(src=torch.zeros(2, 4, dtype=torch.float64)), TypeError, r"src must have dtype"),
    (dict(idx=torch.zeros(3, dtype=torch.int32)), TypeError, r"idx must have dtype"),
    (dict(count=torch.zeros(2, dtype=torch.int64)), ValueError, r"count must be an int64 tensor"),
    (dict(count=-1), ValueError, r"count must be in \[0, 9223372036854775807\], got -1"),
    (dict(count=1.5), TypeError, r"count must be an int"),
    (dict(logits=torch.zeros(4, 3).t()), ValueError, r"logits must have contiguous rows"),
    (dict(logits=torch.zeros(3)), ValueError, r"logits must be a 2-D tensor"),
])
def test_add_rows_errors(kw, exc, match):
    args = dict(logits=torch.zeros(3, 4), src=torch.zeros(2, 4), idx=torch.tensor([0, 1, 2]),
                count=2)
    args.update(kw)
    with pytest.raises(exc, match=match):
        sk.add_rows_(args["logits"], args["src"], args["idx"], args["count"])


def test_add_rows_opcheck(device):
    logits = torch.randn(6, 40, device=device)
    args = (logits, torch.randn(4, 40, device=device), torch.tensor([3, 1, 0, 5, 2, 4], device=device),
            torch.tensor([3], device=device))
    torch.library.opcheck(torch.ops.softkernels.add_rows_.default, args)


# --------------------------------------------------------------------------------------------
# iteration_embeds and max_prob

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_iteration_embeds_matches_reference(device, dtype):
    B, V, D = 6, 3000, 48
    logits = (torch.randn(B, V, device=device) * 3).to(dtype)
    E = torch.randn(V, D, device=device)
    rows = torch.tensor([4, 1, 5], device=device)
    got = sk.iteration_embeds(logits, E, rows, top_m=100)
    want = iteration_embeds_reference(logits.cpu()[rows.cpu()], E, top_m=100)
    assert got.shape == (3, D) and got.dtype == E.dtype
    torch.testing.assert_close(got.cpu().double(), want, atol=2e-5, rtol=2e-5)
    every = sk.iteration_embeds(logits, E)              # rows=None: every row
    torch.testing.assert_close(every[rows], got, atol=0, rtol=0)


def test_iteration_embeds_top_m_is_clamped_to_v(device):
    logits = torch.randn(2, 30, device=device)
    E = torch.randn(30, 8, device=device)
    got = sk.iteration_embeds(logits, E, top_m=100)      # M = V = 30: the full softmax mixture
    want = torch.softmax(logits.double(), -1) @ E.double()
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


def test_iteration_embeds_errors():
    with pytest.raises(ValueError, match=r"top_m must be in \[1, 1024\]"):
        sk.iteration_embeds(torch.zeros(2, 5), torch.zeros(5, 3), top_m=0)
    with pytest.raises(TypeError, match=r"rows must have dtype"):
        sk.iteration_embeds(torch.zeros(2, 5), torch.zeros(5, 3), torch.zeros(1))


def test_max_prob(device):
    x = torch.randn(5, 77, device=device) * 4
    torch.testing.assert_close(sk.max_prob(x), torch.softmax(x, -1).amax(-1))


# --------------------------------------------------------------------------------------------
# No host sync on CUDA: select -> iteration input -> add, all with device-side counts.

def test_iteration_step_without_host_sync(device):
    # select -> iteration input -> add with the count kept on the device; on CUDA the sync debug
    # mode turns any host sync into an error.
    B, V, D = 16, 5000, 64
    logits = torch.randn(B, V, device=device) * 3
    E = torch.randn(V, D, device=device)
    iter_logits = torch.randn(B, V, device=device)
    thr = float(sk.max_prob(logits).median())      # half the rows are hard
    ridx, rcount = select_rows_reference(sk.max_prob(logits), thr)
    # src[j] is the iteration's row for hard row idx[j], as the op receives it below.
    want = add_rows_reference(logits, iter_logits.cpu().index_select(0, ridx), ridx, rcount)
    cuda = logits.is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        idx, count = sk.select_rows(sk.max_prob(logits), thr)
        mix = sk.iteration_embeds(logits, E, idx, validate=False)   # all B rows, static shape
        sk.add_rows_(logits, iter_logits.index_select(0, idx), idx, count, validate=False)
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
    assert 0 < int(rcount) < B
    assert torch.equal(idx.cpu(), ridx) and torch.equal(count.cpu(), rcount)
    assert mix.shape == (B, D)
    assert torch.equal(logits.cpu(), want)
