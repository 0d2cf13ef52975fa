"""soft_embed(ties="keep_all"): FlashInfer's keep-every-tie cut at top_k / top_p, against the
float64 reference and an independent port of FlashInfer's rule (tests/ports/flashinfer_renorm.py)."""

import pytest
import torch

import softkernels as sk
from _compare import assert_matches_reference
from ports import flashinfer_renorm as fi


def _tied_logits(B, V, device, dtype=torch.float32, levels=6):
    # Few distinct values: ties at every cut.
    return torch.randint(0, levels, (B, V)).to(dtype).to(device)


@pytest.mark.parametrize("B,V,k", [(0, 10, 2), (1, 1, 1), (5, 12, 12), (40, 50, 8), (7, 3000, 16)])
@pytest.mark.parametrize("filters", [dict(top_k=4), dict(top_p=0.7), dict(top_k=10, top_p=0.5),
                                     dict(top_k=3, min_p=0.2), dict()])
@pytest.mark.parametrize("noise", [None, sk.Gumbel(), sk.Dirichlet(), sk.TopKDirichlet(),
                                   sk.WeightGaussian()])
@pytest.mark.parametrize("ties", ["exact", "keep_all"])
def test_matches_reference(device, B, V, k, filters, noise, ties):
    if isinstance(noise, sk.Dirichlet) and V > 1024 and "top_k" not in filters:
        pytest.skip("Dirichlet needs top_k when V > 1024")
    torch.manual_seed(B + V)
    logits = _tied_logits(B, V, device)
    emb = torch.randn(V, 4).to(device)
    kw = dict(k=k, noise=noise, seed=3, ties=ties, **filters)
    out = sk.soft_embed(logits, emb, **kw)
    assert_matches_reference(out, logits, emb, **kw)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_per_row_top_k_and_dtypes(device, dtype):
    torch.manual_seed(1)
    logits = _tied_logits(16, 80, device, dtype)
    emb = torch.randn(80, 4).to(device)
    kw = dict(k=12, top_k=torch.tensor([0, 1, 3, 79, 80, 200, 5, 2] * 2, device=device),
              top_p=torch.linspace(0.3, 1.0, 16, dtype=torch.float64, device=device),
              ties="keep_all")
    out = sk.soft_embed(logits, emb, **kw)
    assert_matches_reference(out, logits, emb, **kw)


def test_support_vs_flashinfer_port():
    """With k = V every survivor is a weighted slot: the support and the renormalised weights of
    soft_embed(ties="keep_all") must be FlashInfer's; ties="exact" differs on tied rows."""
    torch.manual_seed(2)
    B, V, top_k, top_p = 300, 40, 5, 0.6
    logits = (torch.randn(B, V) * 2).to(torch.bfloat16).float()  # bf16: many exact ties
    probs = torch.softmax(logits.double(), -1)
    theirs = fi.top_p_renorm(fi.top_k_renorm(probs, top_k), top_p)
    diffs = {}
    for ties in ("keep_all", "exact"):
        out = sk.soft_embed(logits, torch.zeros(V, 1), k=V, top_k=top_k, top_p=top_p, ties=ties)
        mine = torch.zeros(B, V, dtype=torch.float64).scatter(1, out.ids, out.weights.double())
        rows = ((mine > 0) != (theirs > 0)).any(-1)
        diffs[ties] = int(rows.sum())
        if ties == "keep_all":
            assert diffs[ties] == 0
            dw = float((mine - theirs).abs().max())
            assert dw < 1e-6
    print(f"\nties vs FlashInfer port (bf16 logits, N={B} rows, top_k={top_k}, top_p={top_p}): "
          f"support differs in {diffs['keep_all']} rows with keep_all (max |w diff| {dw:.1e}), "
          f"{diffs['exact']} rows with exact")
    assert diffs["exact"] > 0, "the inputs must contain ties at a cut"


def test_validation():
    logits = torch.randn(2, 10)
    with pytest.raises(ValueError, match=r"soft_embed: ties must be one of \('exact', 'keep_all'\), got 'all'"):
        sk.soft_embed(logits, torch.randn(10, 2), k=2, ties="all")
    with pytest.raises(RuntimeError, match="bad ties rule 2"):
        torch.ops.softkernels.soft_embed(logits, torch.randn(10, 2), 2, 1.0, 0, 1.0, 0.0, 0, 0,
                                         None, None, None, None, None, None, None, None, 0, 0.0,
                                         0.0, -1.0, 1.0, 0.0, 0.0, 2, 2)


def test_default_is_exact():
    logits = _tied_logits(30, 20, "cpu")
    emb = torch.randn(20, 3)
    a = sk.soft_embed(logits, emb, k=6, top_k=3)
    b = sk.soft_embed(logits, emb, k=6, top_k=3, ties="exact")
    c = sk.soft_embed(logits, emb, k=6, top_k=3, ties="keep_all")
    assert torch.equal(a.weights, b.weights) and torch.equal(a.ids, b.ids)
    assert int((a.weights > 0).sum()) < int((c.weights > 0).sum())
