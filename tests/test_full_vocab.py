"""soft_embed(k=None): the full-vocabulary mixture (k = V > 1024), against the float64 reference
and against the fused kernel's rules on vocabularies it can hold."""

import math

import pytest
import torch

import softkernels as sk
from softkernels.full_vocab import soft_embed_full
from _compare import assert_matches_reference


@pytest.mark.parametrize("V", [1025, 3000])
@pytest.mark.parametrize("filters", [dict(), dict(temperature=0.6, top_k=30, top_p=0.95,
                                                   min_p=0.001), dict(top_p=0.5),
                                     dict(top_k=2000), dict(min_p=0.01)])
@pytest.mark.parametrize("noise", [None, sk.Gaussian(0.1, relative=False)])
def test_matches_reference(device, V, filters, noise):
    torch.manual_seed(V)
    logits = torch.randn(3, V).to(device) * 3
    logits[1, 5:] = -math.inf
    emb = torch.randn(V + 2, 8).to(device)
    kw = dict(k=None, noise=noise, seed=4, offset=2, **filters)
    out = sk.soft_embed(logits, emb, **kw)
    assert out.ids.shape == (3, V) and out.weights.shape == (3, V)
    assert_matches_reference(out, logits, emb, **dict(kw, k=V))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
@pytest.mark.parametrize("ties", ["exact", "keep_all"])
def test_per_row_hard_ties(device, dtype, ties):
    torch.manual_seed(3)
    B, V = 6, 1200
    logits = torch.randint(0, 8, (B, V)).to(dtype).to(device)
    emb = torch.randn(V, 4).to(dtype).to(device)
    hard = torch.tensor([False, True, False, False, True, False], device=device)
    kw = dict(k=V, hard=hard, hard_ids=torch.tensor([0, 7, 0, 0, -1 + 1, 0], device=device),
              top_k=torch.tensor([0, 5, 50, 1, 3, 1199], device=device),
              top_p=torch.tensor([1.0, 0.53, 0.31, 1.0, 0.93, 0.97], dtype=torch.float64,
                                 device=device),
              temperature=torch.linspace(0.5, 2.0, B, dtype=torch.float64, device=device),
              ties=ties)
    out = sk.soft_embed(logits, emb, **kw)
    assert torch.equal(out.embeds[1], emb[7]) and torch.equal(out.embeds[4], emb[0])
    assert_matches_reference(out, logits, emb, **kw)


@pytest.mark.parametrize("ties", [False, True])
def test_same_rules_as_the_fused_kernel(ties):
    """On a vocabulary the fused kernel holds (k = V = 300), the full path gives its slots."""
    torch.manual_seed(0)
    B, V = 32, 300
    logits = torch.randint(0, 20, (B, V)).float() * 0.3
    emb = torch.randn(V, 16)
    hard = torch.rand(B) < 0.2
    kw = dict(temperature=0.7, top_k=40, top_p=0.9, min_p=0.01, seed=1, offset=0)
    fused = sk.soft_embed(logits, emb, k=V, hard=hard, ties="keep_all" if ties else "exact",
                          noise=sk.Gaussian(0.05, relative=False), **kw)
    full, status = soft_embed_full(logits, emb, noise=sk.Gaussian(0.05, relative=False),
                                   sigma=0.05, hard=hard, hard_ids=None, keep_ties=ties, **kw)
    assert int(status.abs().sum()) == 0
    assert torch.equal(full.ids, fused.ids)
    torch.testing.assert_close(full.weights, fused.weights, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(full.embeds, fused.embeds, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full.entropy, fused.entropy, rtol=1e-5, atol=1e-6)


def test_gradients_compile_and_flags():
    torch.manual_seed(1)
    V = 1100
    logits = torch.randn(2, V, dtype=torch.float64, requires_grad=True)
    emb = torch.randn(V, 3, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda l, e: sk.soft_embed(l, e, k=None, top_p=0.9).embeds,
                             (logits, emb), fast_mode=True)
    x = torch.randn(3, V)
    e32 = torch.randn(V, 4)
    f = torch.compile(lambda l: sk.soft_embed(l, e32, k=None, top_k=100).embeds, fullgraph=True)
    torch.testing.assert_close(f(x), sk.soft_embed(x, e32, k=None, top_k=100).embeds)
    bad = x.clone()
    bad[1, 3] = math.nan
    with pytest.raises(ValueError, match=r"logits row 1 contains NaN"):
        sk.soft_embed(bad, e32, k=None)
    out = sk.soft_embed(bad, e32, k=None, validate=False)
    assert bool(torch.isnan(out.embeds[1]).all()) and bool(torch.isfinite(out.embeds[0]).all())


def test_tail_mass_measurement():
    """What k = 1024 drops at temperature 1 on a 49,152-token vocabulary (SmolLM2's size) with
    N(0, 2^2) logits: printed for the docs; the full mixture must differ from the truncated one."""
    torch.manual_seed(0)
    V, D = 49152, 64
    logits = torch.randn(8, V) * 2
    emb = torch.randn(V, D)
    full = sk.soft_embed(logits, emb, k=None)
    top = sk.soft_embed(logits, emb, k=1024)
    tail = 1 - torch.softmax(logits.double(), -1).topk(1024).values.sum(-1)
    rel = ((full.embeds - top.embeds).norm(dim=-1) / full.embeds.norm(dim=-1))
    print(f"\nk=1024 vs full V={V}: dropped probability mass {float(tail.mean()):.3f} (mean of 8 "
          f"rows), relative embedding difference {float(rel.mean()):.3f}")
    assert float(rel.min()) > 1e-3
