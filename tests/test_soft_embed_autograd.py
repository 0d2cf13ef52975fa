"""Gradients of soft_embed: gradcheck in float64, the reference's autograd, opcheck, compile."""

import pytest
import torch

import softkernels as sk
from softkernels.reference import soft_embed_reference


def _f64(B, V, D, device, scale=2.0):
    logits = (torch.randn(B, V, dtype=torch.float64) * scale).to(device).requires_grad_()
    emb = torch.randn(V + 2, D, dtype=torch.float64).to(device).requires_grad_()
    return logits, emb


NOISES = [None, sk.Gumbel(tau=0.7, scale=0.8), sk.Gaussian(0.3, relative=False)]


@pytest.mark.parametrize("noise", NOISES + [sk.Dirichlet(3.0)])
@pytest.mark.parametrize("filters", [dict(), dict(top_k=4, top_p=0.9, min_p=0.02, temperature=0.7)])
def test_gradcheck(device, noise, filters):
    logits, emb = _f64(3, 9, 4, device)
    hard = torch.tensor([False, True, False], device=device)

    def fn(x, e):
        out = sk.soft_embed(x, e, k=3, noise=noise, seed=11, offset=2, hard=hard, **filters)
        parts = [out.embeds, out.weights]
        if out.noise is not None:
            parts.append(torch.where(torch.isinf(out.noise), 0.0, out.noise))
        return tuple(parts)

    if isinstance(noise, sk.Dirichlet):
        # Dirichlet draws are random constants by definition (no pathwise gradient to the logits;
        # see docs/semantics.md), so only the embedding is checked.
        logits = logits.detach()
    assert torch.autograd.gradcheck(fn, (logits, emb), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("noise", NOISES)
@pytest.mark.parametrize("ldtype", [torch.float32, torch.float64])
def test_grads_match_reference_autograd(device, noise, ldtype):
    B, V, D = 6, 300, 16
    logits = (torch.randn(B, V) * 2).to(ldtype).to(device).requires_grad_()
    emb = torch.randn(V, D, dtype=ldtype).to(device).requires_grad_()
    kw = dict(k=7, noise=noise, temperature=0.8, top_k=20, top_p=0.95, seed=3, offset=1,
              hard=torch.tensor([0, 0, 1, 0, 0, 0], dtype=torch.bool, device=device))
    out = sk.soft_embed(logits, emb, **kw)
    ge, gw = torch.randn_like(out.embeds), torch.randn_like(out.weights)
    loss = (out.embeds * ge).sum() + (out.weights * gw).sum()
    if out.noise is not None:
        gn = torch.randn_like(out.noise)
        loss = loss + (torch.where(torch.isinf(out.noise), 0.0, out.noise) * gn).sum()
    gl, gE = torch.autograd.grad(loss, (logits, emb))

    rl = logits.detach().cpu().double().requires_grad_()
    rE = emb.detach().cpu().double().requires_grad_()
    ref = soft_embed_reference(rl, rE, **{key: (v.cpu() if isinstance(v, torch.Tensor) else v)
                                         for key, v in kw.items()})
    rloss = (ref.embeds * ge.cpu().double()).sum() + (ref.weights * gw.cpu().double()).sum()
    if ref.noise is not None:
        rloss = rloss + (torch.where(torch.isinf(ref.noise), 0.0, ref.noise) * gn.cpu().double()).sum()
    rgl, rgE = torch.autograd.grad(rloss, (rl, rE))
    tol = dict(rtol=1e-4, atol=1e-5) if ldtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(gl.cpu().double(), rgl, **tol)
    torch.testing.assert_close(gE.cpu().double(), rgE, **tol)


def test_dirichlet_weights_carry_no_logit_gradient(device):
    logits, emb = _f64(2, 20, 4, device)
    out = sk.soft_embed(logits, emb, k=3, noise=sk.Dirichlet(), seed=1)
    gl, gE = torch.autograd.grad(out.embeds.sum(), (logits, emb))
    assert gl.abs().sum() == 0 and gE.abs().sum() > 0


def test_entropy_and_max_prob_are_not_differentiable(device):
    logits, emb = _f64(2, 20, 4, device)
    out = sk.soft_embed(logits, emb, k=3)
    assert not out.entropy.requires_grad and not out.max_prob.requires_grad
    assert out.embeds.requires_grad and out.weights.requires_grad


@pytest.mark.parametrize("noise", [None, sk.Gumbel()])
def test_opcheck(device, noise):
    from softkernels.noise import noise_kind
    logits = torch.randn(4, 64, device=device, requires_grad=True)
    emb = torch.randn(64, 8, device=device, requires_grad=True)
    lo, hi = noise.bounds if noise is not None else (0.0, 0.0)
    args = (logits, emb, 5, 0.7, 10, 0.9, 0.0, 1, 2,
            torch.rand(4, dtype=torch.float64, device=device) + 0.5, None, None, None, None, None,
            torch.tensor([False, True, False, False], device=device), None, noise_kind(noise),
            0.5, 1.0, lo, hi, 0.0, 0.0, 10)
    torch.library.opcheck(torch.ops.softkernels.soft_embed.default, args)


def test_torch_compile_fullgraph():
    logits = torch.randn(4, 300, requires_grad=True)
    emb = torch.randn(300, 16, requires_grad=True)

    def step(x, e):
        out = sk.soft_embed(x, e, k=5, temperature=0.6, top_k=30, top_p=0.95, min_p=0.001,
                            noise=sk.Gumbel(), seed=3)
        return (out.embeds ** 2).sum() + out.weights[:, 0].sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(logits, emb)
    loss.backward()
    g1 = logits.grad.clone()
    logits.grad = None
    step(logits, emb).backward()
    torch.testing.assert_close(loss, step(logits, emb))
    torch.testing.assert_close(logits.grad, g1)


def test_grads_of_row_strided_logits(device):
    # logits whose rows are not packed (a view with row stride 2V) reach the kernel as they are;
    # their gradient must land in the right rows of the (packed) grad_logits.
    B, V, D = 6, 400, 8
    wide = torch.randn(2 * B, V, dtype=torch.float64, device=device)
    strided = wide[::2].detach().requires_grad_()
    packed = wide[::2].contiguous().requires_grad_()
    emb = torch.randn(V, D, dtype=torch.float64, device=device)
    kw = dict(k=5, top_k=20, temperature=0.7, noise=sk.Gumbel(tau=0.7), seed=3)
    a = sk.soft_embed(strided, emb, **kw)
    b = sk.soft_embed(packed, emb, **kw)
    g = torch.randn_like(a.embeds)
    (ga,) = torch.autograd.grad((a.embeds * g).sum() + a.weights[:, 0].sum(), (strided,))
    (gb,) = torch.autograd.grad((b.embeds * g).sum() + b.weights[:, 0].sum(), (packed,))
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)
