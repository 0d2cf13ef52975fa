"""Comparison of kernel outputs with the float64 reference."""

import math

import torch

from softkernels.noise import Gaussian
from softkernels.reference import soft_embed_reference

TOL = {  # (rtol, atol) per dtype of the value being compared
    torch.float64: (1e-9, 1e-10),
    torch.float32: (1e-5, 1e-6),
    torch.bfloat16: (1e-2, 1e-2),
    torch.float16: (1e-2, 1e-3),
}


def _close(name, got, want, dtype, row_hint="", scale=0.0, cond=None):
    """|got - want| <= (atol + rtol * (|want| + scale)) * cond; scale covers sums whose terms are
    larger than their result (cancellation); cond (one factor per row, >= 1) covers values
    divided by such a sum, whose relative error grows by the same factor."""
    rtol, atol = TOL[dtype]
    got = got.detach().to(torch.float64).cpu()
    want = want.detach().to(torch.float64).cpu()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    cond = (torch.ones_like(got) if cond is None
            else cond.reshape(-1, *([1] * (got.dim() - 1))).expand_as(got))
    # -inf / NaN patterns must agree exactly.
    assert torch.equal(torch.isinf(got), torch.isinf(want)), f"{name}: inf pattern differs{row_hint}"
    assert not torch.isnan(got).any(), f"{name}: NaN in kernel output{row_hint}"
    fin = torch.isfinite(want)
    if fin.any():
        err = (got[fin] - want[fin]).abs()
        bound = (atol + rtol * (want[fin].abs() + scale)) * cond[fin]
        worst = int(torch.argmax(err - bound))
        assert bool((err <= bound).all()), (
            f"{name}: max error {float(err.max()):.3g} exceeds tolerance (rtol={rtol}, atol={atol}, "
            f"scale={scale}, cond={float(cond[fin][worst]):.3g}){row_hint}; got "
            f"{float(got[fin][worst])}, want {float(want[fin][worst])}")


def check_ids(out_ids, ref, logits, temperature, reordered=False):
    """ids must equal the reference's, except that two slots may swap where the reference's
    probabilities of the two tokens agree to ~1e-6 (a near-tie that fp32 rounding may order
    either way).

    With ``reordered`` (noise that re-sorts the slots by a random draw: Gumbel, the Dirichlet
    kinds, WeightGaussian) the order follows the draws, not the logits: a slot may then differ
    where the reference's weight there ties a neighbouring slot's to 1e-5 of the row's largest
    weight, or is negligible (<= 1e-6 of it). A wrong token with a real weight still fails the
    embeds comparison, which does not depend on the order of the slots."""
    got = out_ids.cpu()
    want = ref.ids
    if torch.equal(got, want):
        return
    X = logits.detach().to(torch.float64).cpu()
    W = ref.weights.detach().to(torch.float64).cpu()
    for b in range(got.shape[0]):
        if torch.equal(got[b], want[b]):
            continue
        T = float(temperature[b]) if isinstance(temperature, torch.Tensor) else float(temperature)
        z = X[b] / T
        w0 = float(W[b].abs().max()) if W.shape[1] else 0.0
        for j in (got[b] != want[b]).nonzero().flatten().tolist():
            if reordered:
                wj = float(W[b, j])
                near = [abs(wj - float(W[b, i])) for i in (j - 1, j + 1) if 0 <= i < W.shape[1]]
                assert abs(wj) <= 1e-6 * w0 or (near and min(near) <= 1e-5 * w0), (
                    f"ids differ in row {b} slot {j}: got {int(got[b, j])}, want "
                    f"{int(want[b, j])} (reference weight {wj}, neighbours not tied)")
                continue
            zg, zw = float(z[got[b, j]]), float(z[want[b, j]])
            assert math.isclose(zg, zw, rel_tol=1e-6, abs_tol=1e-6), (
                f"ids differ in row {b} slot {j}: got {int(got[b, j])} (z={zg}), "
                f"want {int(want[b, j])} (z={zw})")


def assert_matches_reference(out, logits, embedding, **kw):
    """Runs the reference on the same inputs and compares every output of ``out``."""
    ref = soft_embed_reference(logits.cpu(), embedding.cpu(), **{
        key: (v.cpu() if isinstance(v, torch.Tensor) else v) for key, v in kw.items()})
    B = logits.shape[0]
    k = kw["k"]
    assert out.ids.shape == (B, k) and out.ids.dtype == torch.int64
    assert out.embeds.shape == (B, embedding.shape[1]) and out.embeds.dtype == embedding.dtype
    stats = torch.float64 if logits.dtype == torch.float64 else torch.float32
    assert out.weights.dtype == stats and out.entropy.dtype == stats
    assert out.ids.device == logits.device
    noise = kw.get("noise")
    check_ids(out.ids, ref, logits, kw.get("temperature", 1.0),
              reordered=noise is not None and not isinstance(noise, Gaussian))
    # Weights are stats-dtype computations on exactly the same inputs: fp32 tolerance even for
    # bf16 logits (the reference upcasts the very same values). WeightGaussian's weights are
    # x / sum x with x of either sign: the sum's relative rounding error, and so every weight's,
    # grows by cond = sum|x| / |sum x| = sum|w| (1 for weights that are all >= 0).
    cond = ref.weights.detach().to(torch.float64).abs().sum(-1).clamp_min(1.0)
    _close("weights", out.weights, ref.weights, stats, cond=cond)
    _close("entropy", out.entropy, ref.entropy, stats)
    _close("max_prob", out.max_prob, ref.max_prob, stats)
    # embeds are sums of rows of E: the error scales with the size of those rows.
    # (each weight's error, cond relative, is multiplied by up to sum|w| = cond in the sum.)
    _close("embeds", out.embeds, ref.embeds, embedding.dtype,
           scale=float(embedding.detach().abs().max()) if embedding.numel() else 0.0,
           cond=cond ** 2)
    if ref.noise is None:
        assert out.noise is None
    else:
        _close("noise", out.noise, ref.noise, stats)
    if B:
        assert bool(((out.weights.sum(-1).double().cpu() - 1).abs() <= 1e-5 * cond).all())
    return ref
