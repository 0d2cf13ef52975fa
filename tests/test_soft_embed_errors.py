"""Every bad input to soft_embed raises a clear error naming the argument, before any kernel runs."""

import math

import pytest
import torch

import softkernels as sk


def _ok(B=3, V=50, D=8):
    return torch.randn(B, V), torch.randn(V, D)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(k=0), ValueError, r"k must be in \[1, 50\], got 0"),
    (dict(k=51), ValueError, r"k must be in \[1, 50\], got 51"),
    (dict(k=2.0), TypeError, r"k must be an int"),
    (dict(k=True), TypeError, r"k must be an int"),
    (dict(k=2, temperature=0.0), ValueError, r"temperature must be in \(0.0, inf\), got 0.0"),
    (dict(k=2, temperature=-1.0), ValueError, r"temperature .* got -1.0"),
    (dict(k=2, temperature=math.inf), ValueError, r"temperature .* got inf"),
    (dict(k=2, temperature=math.nan), ValueError, r"temperature .* got nan"),
    (dict(k=2, temperature="hot"), TypeError, r"temperature must be a number"),
    (dict(k=2, top_k=-1), ValueError, r"top_k must be in .*got -1"),
    (dict(k=2, top_k=1.5), TypeError, r"top_k must be an int"),
    (dict(k=2, top_p=0.0), ValueError, r"top_p must be in \(0.0, 1.0\], got 0.0"),
    (dict(k=2, top_p=1.01), ValueError, r"top_p .* got 1.01"),
    (dict(k=2, min_p=1.0), ValueError, r"min_p must be in \[0.0, 1.0\), got 1.0"),
    (dict(k=2, min_p=-0.1), ValueError, r"min_p .* got -0.1"),
    (dict(k=2, seed=2 ** 64), ValueError, r"seed must be in"),
    (dict(k=2, seed="x"), TypeError, r"seed must be an int"),
    (dict(k=2, offset=1.0), TypeError, r"offset must be an int"),
    (dict(k=2, noise="gumbel"), TypeError, r"noise must be None, softkernels.Gumbel"),
    (dict(k=2, validate=1), TypeError, r"validate must be a bool"),
])
def test_bad_scalars(kwargs, exc, match):
    logits, emb = _ok()
    with pytest.raises(exc, match=match):
        sk.soft_embed(logits, emb, **kwargs)


def test_bad_tensors():
    logits, emb = _ok()
    with pytest.raises(TypeError, match="logits must be a torch.Tensor"):
        sk.soft_embed([[1.0]], emb, k=1)
    with pytest.raises(ValueError, match=r"logits must be a 2-D tensor \[B, V\], got shape \(50,\)"):
        sk.soft_embed(logits[0], emb, k=1)
    with pytest.raises(TypeError, match=r"logits must have dtype in .*got torch.int64"):
        sk.soft_embed(logits.long(), emb, k=1)
    with pytest.raises(ValueError, match=r"embedding must be a 2-D tensor \[V_e, D\]"):
        sk.soft_embed(logits, emb[0], k=1)
    with pytest.raises(TypeError, match=r"embedding must have dtype"):
        sk.soft_embed(logits, emb.to(torch.complex64), k=1)
    with pytest.raises(ValueError, match=r"embedding has 49 rows but logits have V = 50"):
        sk.soft_embed(logits, emb[:49], k=1)
    with pytest.raises(ValueError, match=r"at least one column"):
        sk.soft_embed(torch.randn(3, 0), emb, k=1)
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"embedding is on cuda"):
            sk.soft_embed(logits, emb.cuda(), k=1)


def test_bad_row_tensors():
    B = 3
    logits, emb = _ok(B)
    with pytest.raises(ValueError, match=r"temperature must be a number or a \[B\] = \[3\] tensor, got shape \(2,\)"):
        sk.soft_embed(logits, emb, k=2, temperature=torch.ones(2))
    with pytest.raises(TypeError, match=r"top_k must be an integer tensor, got torch.float32"):
        sk.soft_embed(logits, emb, k=2, top_k=torch.ones(B))
    with pytest.raises(TypeError, match=r"top_p must be a floating-point tensor"):
        sk.soft_embed(logits, emb, k=2, top_p=torch.ones(B, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"temperature\[1\] = 0.0 is outside \(0.0, inf\)"):
        sk.soft_embed(logits, emb, k=2, temperature=torch.tensor([1.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match=r"top_p\[2\] = 1.5 is outside \(0.0, 1.0\]"):
        sk.soft_embed(logits, emb, k=2, top_p=torch.tensor([1.0, 0.5, 1.5]))
    with pytest.raises(ValueError, match=r"min_p\[0\] = nan"):
        sk.soft_embed(logits, emb, k=2, min_p=torch.tensor([math.nan, 0.0, 0.0]))
    with pytest.raises(ValueError, match=r"top_k\[1\] = -2 is outside"):
        sk.soft_embed(logits, emb, k=2, top_k=torch.tensor([0, -2, 3]))


def test_bad_hard():
    B = 3
    logits, emb = _ok(B)
    with pytest.raises(TypeError, match=r"hard must have dtype in \(bool\)"):
        sk.soft_embed(logits, emb, k=2, hard=torch.ones(B, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"hard must have shape \[B\] = \[3\]"):
        sk.soft_embed(logits, emb, k=2, hard=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"hard_ids was given without hard"):
        sk.soft_embed(logits, emb, k=2, hard_ids=torch.zeros(B, dtype=torch.int64))
    hard = torch.tensor([True, False, True])
    with pytest.raises(ValueError, match=r"hard_ids\[2\] = 50 is not a token id in \[0, V\) = \[0, 50\)"):
        sk.soft_embed(logits, emb, k=2, hard=hard, hard_ids=torch.tensor([0, 99, 50]))
    with pytest.raises(ValueError, match=r"hard_ids\[0\] = -1"):
        sk.soft_embed(logits, emb, k=2, hard=hard, hard_ids=torch.tensor([-1, 0, 0]))
    with pytest.raises(TypeError, match=r"hard_ids must have dtype"):
        sk.soft_embed(logits, emb, k=2, hard=hard, hard_ids=torch.zeros(B))


def test_pool_limits():
    logits, emb = torch.randn(2, 3000), torch.randn(3000, 4)
    with pytest.raises(ValueError, match=r"top_k = 2000 is larger than the candidate pool \(1024"):
        sk.soft_embed(logits, emb, k=2, top_k=2000)
    with pytest.raises(ValueError, match=r"Dirichlet noise .* needs 1 <= top_k <= 1024 .*got top_k = 0"):
        sk.soft_embed(logits, emb, k=2, noise=sk.Dirichlet())
    with pytest.raises(ValueError, match=r"top_k\[1\] = 1500 needs a candidate pool larger than 1024"):
        sk.soft_embed(logits, emb, k=2, top_k=torch.tensor([5, 1500]))
    # top_k >= V means off and is fine; so is the largest pool.
    sk.soft_embed(logits, emb, k=2, top_k=3000)
    sk.soft_embed(logits, emb, k=2, top_k=10 ** 9)
    sk.soft_embed(logits, emb, k=2, top_k=1024, top_p=0.9)
    with pytest.raises(ValueError, match=r"k = 1025 is above the fused kernel's 1024 slots but "
                                         r"below V = 3000"):
        sk.soft_embed(logits, emb, k=1025)
    with pytest.raises(ValueError, match=r"k must be in \[1, 3000\], got 3001"):
        sk.soft_embed(logits, emb, k=3001)
    with pytest.raises(ValueError, match=r"full-vocabulary mixture .* takes noise None or "
                                         r"Gaussian\(...\), got Gumbel"):
        sk.soft_embed(logits, emb, k=None, noise=sk.Gumbel())


@pytest.mark.parametrize("bad,match", [
    (math.nan, r"logits row 1 contains NaN or \+inf"),
    (math.inf, r"logits row 1 contains NaN or \+inf"),
])
def test_non_finite_logits(device, bad, match):
    logits, emb = _ok(4, 40000)
    emb = torch.randn(40000, 4)
    logits[1, 35000] = bad          # second slice of the row
    logits[3, 5] = bad
    with pytest.raises(ValueError, match=match):
        sk.soft_embed(logits.to(device), emb.to(device), k=3)
    # validate=False: no exception, the flagged rows are NaN and the others are fine.
    out = sk.soft_embed(logits.to(device), emb.to(device), k=3, validate=False)
    assert torch.isnan(out.weights[1]).all() and torch.isnan(out.embeds[1]).all()
    assert torch.isnan(out.weights[3]).all()
    good = sk.soft_embed(logits[[0, 2]].to(device), emb.to(device), k=3)
    assert torch.equal(out.weights[[0, 2]], good.weights)


def test_all_masked_row(device):
    logits, emb = _ok(3)
    logits[2] = -math.inf
    with pytest.raises(ValueError, match=r"every logit of row 2 is -inf"):
        sk.soft_embed(logits.to(device), emb.to(device), k=3)
    out = sk.soft_embed(logits.to(device), emb.to(device), k=3, validate=False)
    assert torch.isnan(out.embeds[2]).all() and not torch.isnan(out.embeds[:2]).any()


def test_unchecked_bad_row_params_give_nan_rows_not_crashes(device):
    # validate=False skips the Python range checks: the kernel must still refuse the bad rows.
    logits, emb = _ok(4)
    logits, emb = logits.to(device), emb.to(device)
    out = sk.soft_embed(logits, emb, k=3, validate=False,
                        temperature=torch.tensor([1.0, -1.0, 1.0, 1.0], device=device),
                        top_p=torch.tensor([1.0, 1.0, 7.0, 1.0], device=device))
    assert torch.isnan(out.weights[1]).all() and torch.isnan(out.weights[2]).all()
    assert not torch.isnan(out.weights[[0, 3]]).any()
    hard = torch.tensor([True, True, False, False], device=device)
    out = sk.soft_embed(logits, emb, k=3, validate=False, hard=hard,
                        hard_ids=torch.tensor([10 ** 6, 2, 0, 0], device=device))
    assert torch.isnan(out.embeds[0]).all()
    assert torch.equal(out.embeds[1], emb[2])
