"""mix_embeddings: soft_embed's mixture on given ids and weights. Bitwise equal to soft_embed's
embeds (every noise kind, table dtype, width, per-row keys), against the float64 reference,
gradients (gradcheck, reference autograd), opcheck, torch.compile and bad input."""

import math

import pytest
import torch

import softkernels as sk
from softkernels.reference import mix_embeddings_reference

NOISES = {"none": None, "gumbel": sk.Gumbel(tau=0.5), "dirichlet": sk.Dirichlet(4.0),
          "gaussian": sk.Gaussian(0.4), "gaussian0": sk.Gaussian(0.0)}
TABLE_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a float tensor (so that -0 != +0 and NaN payloads count)."""
    return t.contiguous().view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def assert_bitwise(a: torch.Tensor, b: torch.Tensor, what=""):
    assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape, a.dtype, b.dtype)
    same = bits(a) == bits(b)
    if not bool(same.all()):
        i = tuple(int(x) for x in (~same).nonzero()[0])
        raise AssertionError(f"{what}: not bitwise equal at {i}: {a[i].item()!r} vs {b[i].item()!r}"
                             f" ({int((~same).sum())} elements differ)")


@pytest.mark.parametrize("noise", list(NOISES))
@pytest.mark.parametrize("table_dtype", TABLE_DTYPES)
@pytest.mark.parametrize("D", [37, 64, 200])
def test_bitwise_equal_to_soft_embed(device, noise, table_dtype, D):
    B, V, k = 11, 300, 7
    nz = NOISES[noise]
    for logits_dtype in (torch.float32, torch.bfloat16, torch.float64):
        logits = (torch.randn(B, V) * 3).to(logits_dtype).to(device)
        E = torch.randn(V + 5, D).to(table_dtype).to(device)
        seed = torch.randint(-2 ** 62, 2 ** 62, (B,), device=device)
        offset = torch.randint(0, 1000, (B,), device=device)
        # Per-row temperatures and top_k: some rows keep fewer than k survivors (zero weights).
        top_k = torch.randint(1, 12, (B,), device=device)
        out = sk.soft_embed(logits, E, k=k, temperature=0.7, top_k=top_k, top_p=0.95,
                            min_p=0.01, noise=nz, seed=seed, offset=offset)
        got = sk.mix_embeddings(E, out.ids, out.weights, noise=nz, seed=seed, offset=offset)
        assert_bitwise(got, out.embeds, f"{noise} {table_dtype} D={D} logits {logits_dtype}")
        assert (out.weights == 0).any()          # the zero-weight skip was exercised
    # scalar keys
    out = sk.soft_embed(logits, E, k=k, noise=nz, seed=5, offset=9)
    assert_bitwise(sk.mix_embeddings(E, out.ids, out.weights, noise=nz, seed=5, offset=9),
                   out.embeds, "scalar keys")


def test_strided_table_and_leading_shape(device):
    V, D, k = 50, 24, 4
    big = torch.randn(V, 2 * D, device=device)
    E = big[:, :D]                               # rows strided, not contiguous as a whole
    logits = torch.randn(6, V, device=device)
    seed = torch.arange(6, device=device)
    out = sk.soft_embed(logits, E, k=k, noise=sk.Gaussian(0.3, relative=False), seed=seed,
                        offset=3)
    got = sk.mix_embeddings(E, out.ids.view(2, 3, k), out.weights.view(2, 3, k),
                            noise=sk.Gaussian(0.3, relative=False), seed=seed.view(2, 3),
                            offset=torch.full((2, 3), 3, device=device))
    assert got.shape == (2, 3, D)
    assert_bitwise(got.reshape(6, D), out.embeds)


@pytest.mark.parametrize("noise", ["none", "gaussian"])
def test_matches_reference(device, noise):
    N, V, D, k = 9, 40, 33, 5
    E = torch.randn(V, D, dtype=torch.float64, device=device)
    ids = torch.randint(0, V, (N, k), device=device)
    w = torch.rand(N, k, dtype=torch.float64, device=device)
    w[:, -2:] = 0
    nz = NOISES[noise]
    seed = torch.randint(-2 ** 40, 2 ** 40, (N,), device=device)
    got = sk.mix_embeddings(E, ids, w, noise=nz, seed=seed, offset=4)
    want = mix_embeddings_reference(E.cpu(), ids.cpu(), w.cpu(), noise=nz, seed=seed.cpu(),
                                    offset=4)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-12, atol=1e-12)
    got32 = sk.mix_embeddings(E.float(), ids, w.float(), noise=nz, seed=seed, offset=4)
    torch.testing.assert_close(got32.double().cpu(), want, rtol=1e-5, atol=1e-5)


def test_zero_weight_slots_are_not_read(device):
    E = torch.randn(10, 8, device=device)
    ids = torch.tensor([[3, -1, 99], [2, 5, 7]], device=device)
    w = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.25, 0.25]], device=device)
    got = sk.mix_embeddings(E, ids, w)
    torch.testing.assert_close(got[0], E[3])
    torch.testing.assert_close(got[1], 0.5 * E[2] + 0.25 * E[5] + 0.25 * E[7])


def test_bad_id_with_weight(device):
    E = torch.randn(10, 8, device=device)
    ids = torch.tensor([[3, 4], [2, 10]], device=device)
    w = torch.tensor([[0.5, 0.5], [0.5, 0.5]], device=device)
    with pytest.raises(ValueError, match=r"row \(1,\) gives weight to an id outside \[0, V_e\) = "
                                         r"\[0, 10\)"):
        sk.mix_embeddings(E, ids, w)
    got = sk.mix_embeddings(E, ids, w, validate=False)
    assert torch.isfinite(got[0]).all() and torch.isnan(got[1]).all()


def test_gradients_match_reference_autograd(device):
    N, V, D, k = 7, 20, 12, 4
    for dtype in (torch.float64, torch.float32):
        E = torch.randn(V, D, dtype=dtype, device=device, requires_grad=True)
        ids = torch.randint(0, V, (N, k), device=device)
        ids[0] = ids[0, 0]                       # a repeated id within a row accumulates
        w = torch.rand(N, k, dtype=dtype, device=device)
        w[2, 3] = 0                              # zero weight: its w still gets d/dw
        w.requires_grad_()
        g = torch.randn(N, D, dtype=dtype, device=device)
        out = sk.mix_embeddings(E, ids, w, noise=sk.Gaussian(0.2), seed=1)
        gE, gw = torch.autograd.grad(out, (E, w), g)
        E64 = E.detach().double().cpu().requires_grad_()
        w64 = w.detach().double().cpu().requires_grad_()
        ref = mix_embeddings_reference(E64, ids.cpu(), w64, noise=sk.Gaussian(0.2), seed=1)
        rE, rw = torch.autograd.grad(ref, (E64, w64), g.double().cpu())
        tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(gE.double().cpu(), rE, **tol)
        torch.testing.assert_close(gw.double().cpu(), rw, **tol)
        assert gE.dtype == dtype and gw.dtype == dtype


def test_gradcheck(device):
    N, V, D, k = 4, 9, 5, 3
    E = torch.randn(V, D, dtype=torch.float64, device=device, requires_grad=True)
    ids = torch.randint(0, V, (N, k), device=device)
    w = torch.rand(N, k, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda e, ww: sk.mix_embeddings(e, ids, ww, noise=sk.Gaussian(0.1, relative=False),
                                        seed=2), (E, w))


def test_bf16_table_gradients(device):
    E = torch.randn(30, 16, device=device).to(torch.bfloat16).requires_grad_()
    ids = torch.randint(0, 30, (5, 3), device=device)
    w = torch.softmax(torch.randn(5, 3, device=device), -1).requires_grad_()
    out = sk.mix_embeddings(E, ids, w)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert E.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    want = E.detach().float()[ids].sum(-1)       # d/dw = <1, E[id]>
    torch.testing.assert_close(w.grad, want, rtol=1e-5, atol=1e-5)


def test_opcheck(device):
    E = torch.randn(20, 8, device=device, requires_grad=True)
    ids = torch.randint(0, 20, (6, 3), device=device)
    w = torch.rand(6, 3, device=device, requires_grad=True)
    seed = torch.arange(6, device=device)
    op = torch.ops.softkernels.mix_embeddings.default
    torch.library.opcheck(op, (E, ids, w, 3, 4, None, None, False, 0.0))
    torch.library.opcheck(op, (E, ids, w, 0, 0, seed, seed + 1, True, 0.5))
    torch.library.opcheck(op, (E.detach().double(), ids, w.detach().double(), 0, 0, None, None,
                               True, 0.5))


def test_compiles_without_graph_breaks():
    import torch._dynamo
    torch._dynamo.reset()

    def f(E, ids, w, seed):
        return sk.mix_embeddings(E, ids, w, noise=sk.Gaussian(0.3, relative=False), seed=seed,
                                 offset=2).square().sum()

    E = torch.randn(20, 8, requires_grad=True)
    ids = torch.randint(0, 20, (2, 3, 4))
    w = torch.rand(2, 3, 4, requires_grad=True)
    seed = torch.arange(6).view(2, 3)
    explanation = torch._dynamo.explain(f)(E, ids, w, seed)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    gc = torch.autograd.grad(compiled(E, ids, w, seed), (E, w))
    ge = torch.autograd.grad(f(E, ids, w, seed), (E, w))
    for a, b in zip(gc, ge):
        torch.testing.assert_close(a, b)


def test_empty_inputs(device):
    E = torch.randn(10, 4, device=device)
    out = sk.mix_embeddings(E, torch.zeros(0, 3, dtype=torch.long, device=device),
                            torch.zeros(0, 3, device=device))
    assert out.shape == (0, 4)
    out = sk.mix_embeddings(E, torch.zeros(2, 0, 3, dtype=torch.long, device=device),
                            torch.zeros(2, 0, 3, device=device))
    assert out.shape == (2, 0, 4)


@pytest.mark.parametrize("call,exc,match", [
    (lambda E, i, w: sk.mix_embeddings(E.numpy(), i, w), TypeError, r"embedding must be a torch"),
    (lambda E, i, w: sk.mix_embeddings(E[0], i, w), ValueError, r"embedding must be a 2-D"),
    (lambda E, i, w: sk.mix_embeddings(E, i.float(), w), TypeError, r"ids must have dtype in"),
    (lambda E, i, w: sk.mix_embeddings(E, i, w.long()), TypeError, r"weights must have dtype in"),
    (lambda E, i, w: sk.mix_embeddings(E, i, w[:, :2]), ValueError,
     r"weights must have the shape of ids \(4, 3\), got \(4, 2\)"),
    (lambda E, i, w: sk.mix_embeddings(E, i, w, seed=torch.zeros(3, dtype=torch.long)),
     ValueError, r"seed must be an int or a tensor of the leading shape \(4,\)"),
    (lambda E, i, w: sk.mix_embeddings(E, i, w, offset=1.5), TypeError,
     r"offset must be an int or an integer tensor"),
    (lambda E, i, w: sk.mix_embeddings(E, i, w, seed=torch.zeros(4)), TypeError,
     r"seed must be an int or an integer tensor, got torch.float32"),
    (lambda E, i, w: sk.mix_embeddings(E, i, w, noise="gaussian"), TypeError, r"noise must be"),
    (lambda E, i, w: sk.mix_embeddings(E, i, w, validate=1), TypeError, r"validate must be a bool"),
    (lambda E, i, w: sk.mix_embeddings(E, i[0, 0], w[0, 0]), ValueError, r"last dimension"),
])
def test_bad_arguments(call, exc, match):
    E = torch.randn(10, 4)
    ids = torch.randint(0, 10, (4, 3))
    w = torch.rand(4, 3)
    with pytest.raises(exc, match=match):
        call(E, ids, w)


def test_reduced_precision_weights_are_widened():
    E = torch.randn(10, 4)
    ids = torch.randint(0, 10, (4, 3))
    w = torch.rand(4, 3).to(torch.bfloat16)
    assert torch.equal(sk.mix_embeddings(E, ids, w), sk.mix_embeddings(E, ids, w.float()))


def test_reference_gaussian_keys():
    """The reference's noise is the Philox stream soft_embed documents (seed, offset, dim)."""
    from softkernels.reference import gaussian_noise
    E = torch.zeros(3, 10, dtype=torch.float64)
    ids = torch.zeros(2, 1, dtype=torch.long)
    w = torch.ones(2, 1, dtype=torch.float64)
    ref = mix_embeddings_reference(E, ids, w, noise=sk.Gaussian(2.0, relative=False),
                                   seed=torch.tensor([7, 8]), offset=3)
    torch.testing.assert_close(ref[1], 2.0 * gaussian_noise(8, 3, 10))
    assert math.isfinite(float(ref.sum()))
