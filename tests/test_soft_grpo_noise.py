"""The SofT-GRPO / RST noise kinds (TopKDirichlet, WeightGaussian, DirichletGumbel,
Gumbel(gprime="soft_grpo")) and their log-probs against the float64 reference."""

import math

import pytest
import torch

import softkernels as sk
from softkernels import reference as R
from softkernels.noise import NOISE_CLASSES, NOISE_WITH_SLOTS, noise_kind
from _compare import assert_matches_reference

NEW_NOISES = {
    "topk_dirichlet": sk.TopKDirichlet(),
    "topk_dirichlet_a4": sk.TopKDirichlet(alpha=4.0),
    "weight_gaussian": sk.WeightGaussian(),
    "weight_gaussian_big": sk.WeightGaussian(sigma=0.3),
    # alpha large enough that the Gamma shapes of the k slots are not tiny: with shapes ~1e-3
    # float32 log G carries ~1e-4 relative error and the Gumbel re-sort of negligible slots may
    # swap them (the weights still agree); see check().
    "dirichlet_gumbel": sk.DirichletGumbel(alpha=200.0),
    "dirichlet_gumbel_clamped": sk.DirichletGumbel(alpha=100.0, tau=1.0, scale=0.5,
                                                   clamp=(-1.5, 3.0)),
    "gumbel_soft_grpo": sk.Gumbel(tau=1.0, gprime="soft_grpo"),
    "gumbel_soft_grpo_half": sk.Gumbel(tau=0.5, scale=0.5, gprime="soft_grpo"),
}


def check(out, logits, emb, **kw):
    """assert_matches_reference, except for DirichletGumbel's g' on slots of negligible weight
    (< 1e-20): tiny Gamma shapes give log G = log(U) / shape of -1e2 and less, which float32
    computes to ~1e-4 relative (or underflows to -inf). There g' is taken from the reference;
    every other value, and the weights of those slots, are compared."""
    if isinstance(kw["noise"], sk.DirichletGumbel) and logits.dtype != torch.float64 and len(logits):
        ref = R.soft_embed_reference(logits.cpu(), emb.cpu(), **{
            key: (v.cpu() if isinstance(v, torch.Tensor) else v) for key, v in kw.items()})
        under = torch.isfinite(ref.noise) & (ref.weights < 1e-20)
        fixed = torch.where(under, ref.noise.float(), out.noise.cpu()).to(out.noise.device)
        out = sk.SoftTokens(out.embeds, out.ids, out.weights, out.entropy, out.max_prob, fixed)
    return assert_matches_reference(out, logits, emb, **kw)


def _inputs(B, V, D, device, dtype=torch.float32, scale=3.0):
    logits = (torch.randn(B, V) * scale).to(dtype).to(device)
    emb = torch.randn(V + 3, D).to(device)
    return logits, emb


@pytest.mark.parametrize("B,V,D,k", [(0, 17, 8, 2), (1, 1, 8, 1), (1, 2, 8, 2), (3, 17, 8, 17),
                                     (3, 17, 8, 1), (16, 300, 8, 5), (4, 5000, 16, 30)])
@pytest.mark.parametrize("name", list(NEW_NOISES))
@pytest.mark.parametrize("filters", [dict(top_k=5), dict(temperature=0.6, top_k=30, top_p=0.95,
                                                         min_p=0.001), dict(top_p=0.8)])
def test_matches_reference(device, B, V, D, k, name, filters):
    noise = NEW_NOISES[name]
    if noise_kind(noise) == sk.noise.NOISE_DIRICHLET_GUMBEL and V > 1024 and "top_k" not in filters:
        pytest.skip("Dirichlet noise needs top_k when V > 1024 (tested in test_soft_embed_errors)")
    logits, emb = _inputs(B, V, D, device)
    kw = dict(k=k, noise=noise, seed=77, offset=3, **filters)
    out = sk.soft_embed(logits, emb, **kw)
    assert out.noise is not None and out.noise.shape == (B, k)
    check(out, logits, emb, **kw)


@pytest.mark.parametrize("name", list(NEW_NOISES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_dtypes_per_row_hard_ties_masked(device, name, dtype):
    torch.manual_seed(5)
    B, V, k = 12, 40, 6
    logits, emb = _inputs(B, V, 8, device, dtype=dtype)
    logits[0, :10] = 1.0                       # ties at the top
    logits[1, 3:] = -math.inf                  # fewer finite tokens than k
    logits[2, :] = logits[2, :].round()        # many ties
    hard = torch.zeros(B, dtype=torch.bool, device=device)
    hard[4] = hard[7] = True
    kw = dict(k=k, noise=NEW_NOISES[name], hard=hard,
              seed=torch.arange(B, device=device) * 11, offset=torch.arange(B, device=device),
              temperature=torch.linspace(0.5, 1.5, B, dtype=torch.float64, device=device),
              top_k=torch.tensor([0, 3, 6, 10] * 3, device=device))
    out = sk.soft_embed(logits, emb, **kw)
    check(out, logits, emb, **kw)


def test_semantics_of_draws():
    """The returned draws are what the weights are made of, as the docstrings say."""
    torch.manual_seed(0)
    logits, emb = _inputs(64, 100, 8, "cpu")
    d = sk.soft_embed(logits, emb, k=8, top_k=5, noise=sk.TopKDirichlet(), seed=3)
    torch.testing.assert_close(d.weights, d.noise / d.noise.sum(-1, keepdim=True))
    assert bool((d.noise[:, 5:] == 0).all()) and bool((d.weights[:, 5:] == 0).all())
    g = sk.soft_embed(logits, emb, k=8, top_k=5, noise=sk.WeightGaussian(0.2), seed=3)
    # x / sum(x) with draws of both signs: the sum cancels, so the float32 error of the weights
    # grows with sum|x| / |sum x| (the kernel and this line may sum in another order).
    x = g.noise.double()
    want = x / x.sum(-1, keepdim=True)
    cond = x.abs().sum(-1, keepdim=True) / x.sum(-1, keepdim=True).abs()
    bound = 4e-7 * cond * want.abs().amax(-1, keepdim=True) + 1e-7
    err = (g.weights.double() - want).abs()
    assert bool((err <= bound).all()), f"weights != draws / sum: {float((err - bound).max())}"
    assert bool((g.weights < 0).any()), "sigma 0.2 must give some negative weights"
    assert bool((g.weights[:, 5:] != 0).any()), "filtered slots are perturbed too"
    s = sk.soft_embed(logits, emb, k=8, top_k=5, noise=sk.Gumbel(gprime="soft_grpo"), seed=3)
    assert bool(torch.isfinite(s.noise).all()), "soft_grpo g' is finite on every slot"
    plain = sk.soft_embed(logits, emb, k=8, top_k=5, noise=sk.Gumbel(), seed=3)
    assert bool(torch.isinf(plain.noise[:, 5:]).all())


def test_embedding_gradient_with_negative_weights():
    torch.manual_seed(1)
    logits = torch.randn(6, 30, dtype=torch.float64)
    emb = torch.randn(30, 5, dtype=torch.float64, requires_grad=True)
    noise = sk.WeightGaussian(0.3)
    out = sk.soft_embed(logits, emb, k=6, top_k=4, noise=noise, seed=2)
    assert bool((out.weights < 0).any())
    g = torch.randn_like(out.embeds)
    (out.embeds * g).sum().backward()
    ref = R.soft_embed_reference(logits, emb.detach().requires_grad_(), k=6, top_k=4,
                                 noise=noise, seed=2)
    want = torch.zeros_like(emb)
    want.index_add_(0, ref.ids.reshape(-1), (ref.weights[..., None] * g[:, None]).reshape(-1, 5))
    torch.testing.assert_close(emb.grad, want)


@pytest.mark.parametrize("name", list(NEW_NOISES))
def test_no_logits_gradient_and_opcheck(name):
    logits = torch.randn(4, 20, dtype=torch.float64, requires_grad=True)
    emb = torch.randn(20, 4, dtype=torch.float64)
    out = sk.soft_embed(logits, emb, k=4, top_k=6, noise=NEW_NOISES[name], seed=1)
    out.embeds.sum().backward()
    assert bool((logits.grad == 0).all()), "these kinds' weights are constants for the logits"
    args = (logits.detach(), emb, 4, 1.0, 6, 1.0, 0.0, 1, 0, None, None, None, None, None, None,
            None, None, noise_kind(NEW_NOISES[name])) + tuple(sk.noise.noise_constants(
                NEW_NOISES[name])) + (6,)
    torch.library.opcheck(torch.ops.softkernels.soft_embed.default, args)


def test_compile():
    logits, emb = _inputs(3, 50, 8, "cpu")
    f = torch.compile(lambda l: sk.soft_embed(l, emb, k=4, top_k=5, noise=sk.TopKDirichlet(),
                                              seed=9).noise, fullgraph=True)
    want = sk.soft_embed(logits, emb, k=4, top_k=5, noise=sk.TopKDirichlet(), seed=9).noise
    torch.testing.assert_close(f(logits), want)


@pytest.mark.parametrize("bad,msg", [
    (lambda: sk.TopKDirichlet(alpha=0.0), r"TopKDirichlet.alpha must be in .*got 0.0"),
    (lambda: sk.TopKDirichlet(alpha="x"), r"TopKDirichlet.alpha"),
    (lambda: sk.WeightGaussian(sigma=-1.0), r"WeightGaussian.sigma must be in .*got -1.0"),
    (lambda: sk.DirichletGumbel(tau=0.0), r"DirichletGumbel.tau must be in .*got 0.0"),
    (lambda: sk.DirichletGumbel(clamp=(3.0, 1.0)), r"DirichletGumbel.clamp"),
    (lambda: sk.Gumbel(gprime="theirs"), r"Gumbel.gprime must be one of .*'theirs'"),
])
def test_validation(bad, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        bad()


def test_raw_op_refuses_bad_kind():
    logits, emb = _inputs(2, 10, 4, "cpu")
    with pytest.raises(RuntimeError, match="bad noise kind 8"):
        torch.ops.softkernels.soft_embed(logits, emb, 2, 1.0, 0, 1.0, 0.0, 0, 0, None, None, None,
                                         None, None, None, None, None, 8, 0.5, 1.0, -1.0, 1.0,
                                         1.0, 0.05, 2)


def test_accepted_everywhere():
    from softkernels.vllm.args import request_args, config_from_args
    for noise in list(NEW_NOISES.values()) + [sk.Gumbel(), sk.Dirichlet(), sk.Gaussian()]:
        assert isinstance(noise, NOISE_CLASSES)
        cfg = sk.SoftThinkingConfig(noise=noise)
        args = request_args(cfg)
        assert all(isinstance(v, (int, float, str)) for v in args.values())
        assert config_from_args(args).noise == noise
        sk.mix_embeddings(torch.randn(5, 3), torch.tensor([[0, 1]]), torch.tensor([[0.5, 0.5]]),
                          noise=noise)
    with pytest.raises(TypeError, match="noise must be None or a softkernels noise"):
        sk.SoftThinkingConfig(noise="gumbel")
    assert NOISE_WITH_SLOTS == {noise_kind(n) for n in NEW_NOISES.values()} | {noise_kind(sk.Gumbel())}


# --------------------------------------------------------------------------------------------
# Log-probs.

def _rollout(noise, B=24, V=60, k=6, seed=4, dtype=torch.float32):
    torch.manual_seed(seed)
    logits = torch.randn(B, V) * 2
    out = sk.soft_embed(logits, torch.randn(V, 4), k=k, top_k=5, noise=noise, seed=seed)
    return logits.to(dtype), out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_topk_dirichlet_logprob_reference(dtype, temperature):
    logits, out = _rollout(sk.TopKDirichlet(), dtype=dtype)
    new = logits + 0.3 * torch.randn_like(logits.float()).to(dtype)  # the policy moved
    hard = torch.zeros(logits.shape[0], dtype=torch.bool)
    hard[3] = True
    for kw in (dict(), dict(alpha=2.0, clamp=(-3.0, 2.0), min_weight=0.2), dict(clamp=None)):
        got = sk.topk_dirichlet_logprob(new, out.ids, out.noise, temperature, hard, **kw)
        want = R.topk_dirichlet_logprob_reference(new, out.ids, out.noise, temperature, hard, **kw)
        tol = 1e-9 if dtype == torch.float64 else 2e-4
        torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_weight_gaussian_logprob_reference(dtype):
    logits, out = _rollout(sk.WeightGaussian(), dtype=dtype)
    new = logits + 0.3 * torch.randn_like(logits.float()).to(dtype)
    for kw in (dict(), dict(sigma=0.1, radius=0.05, min_weight=0.0), dict(radius=math.inf)):
        got = sk.weight_gaussian_logprob(new, out.ids, out.noise, 0.8, **kw)
        want = R.weight_gaussian_logprob_reference(new, out.ids, out.noise, 0.8, **kw)
        tol = 1e-9 if dtype == torch.float64 else 2e-4
        torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)


def test_logprob_gradients_and_shapes():
    logits, out = _rollout(sk.TopKDirichlet(), dtype=torch.float64)
    x = logits.reshape(4, 6, -1).requires_grad_()
    ids, draws = out.ids.reshape(4, 6, -1), out.noise.reshape(4, 6, -1).double()
    torch.autograd.gradcheck(lambda l: sk.topk_dirichlet_logprob(l, ids, draws), (x,))
    lp = sk.topk_dirichlet_logprob(x, ids, draws)
    assert lp.shape == (4, 6)
    _, gout = _rollout(sk.WeightGaussian(), dtype=torch.float64)
    gids, gdraws = gout.ids.reshape(4, 6, -1), gout.noise.reshape(4, 6, -1).double()
    torch.autograd.gradcheck(lambda l: sk.weight_gaussian_logprob(l, gids, gdraws, 0.7), (x,))
    f = torch.compile(lambda l: sk.weight_gaussian_logprob(l, gids, gdraws), fullgraph=True)
    torch.testing.assert_close(f(x.detach()), sk.weight_gaussian_logprob(x.detach(), gids, gdraws))


@pytest.mark.parametrize("fn,bad,msg", [
    (sk.topk_dirichlet_logprob, dict(alpha=0.0), r"topk_dirichlet_logprob: alpha must be in .*got 0.0"),
    (sk.topk_dirichlet_logprob, dict(min_weight=1.0), r"min_weight must be in .*got 1.0"),
    (sk.topk_dirichlet_logprob, dict(temperature=-1.0), r"temperature must be in .*got -1.0"),
    (sk.weight_gaussian_logprob, dict(sigma=-0.1), r"weight_gaussian_logprob: sigma must be in .*got -0.1"),
    (sk.weight_gaussian_logprob, dict(radius=0.0), r"radius must be in .*got 0.0"),
    (sk.weight_gaussian_logprob, dict(ids=torch.full((2, 3), 99)), r"ids\[0, 0\] = 99 is not a token id"),
    (sk.weight_gaussian_logprob, dict(draws=torch.full((2, 3), math.nan)), r"draws\[0, 0\] = nan is not finite"),
    (sk.topk_dirichlet_logprob, dict(draws=-torch.ones(2, 3)), r"draws\[0, 0\] = -1.0 is negative"),
    (sk.weight_gaussian_logprob, dict(draws=torch.ones(2, 4)), r"draws must have the shape of ids"),
    (sk.weight_gaussian_logprob, dict(ids=torch.ones(2, 3)), r"ids"),
])
def test_logprob_validation(fn, bad, msg):
    kw = dict(logits=torch.randn(2, 10), ids=torch.zeros(2, 3, dtype=torch.int64),
              draws=torch.ones(2, 3))
    kw.update(bad)
    with pytest.raises((ValueError, TypeError), match=msg):
        fn(**kw)
