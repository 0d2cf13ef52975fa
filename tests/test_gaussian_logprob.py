"""gaussian_logprob (Soft Tokens, Hard Truths) against its float64 reference: values, gradients,
broadcasting, gradcheck, opcheck and bad input."""

import math

import pytest
import torch

import softkernels as sk
from softkernels.reference import gaussian_logprob_reference

# (rtol, atol) of the logprob (stats dtype; values are O(D)) and of the gradients (input dtype).
TOL = {
    torch.float64: ((1e-10, 1e-9), (1e-9, 1e-11)),
    torch.float32: ((1e-5, 1e-3), (1e-5, 1e-6)),
    torch.bfloat16: ((1e-5, 1e-3), (1e-2, 1e-2)),
    torch.float16: ((1e-5, 1e-3), (2e-3, 1e-3)),
}
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def _check(x, mean, sigma, device):
    dtype = x.dtype
    (vr, va), (gr, ga) = TOL[dtype]
    xs = x.to(device).requires_grad_()
    ms = mean.to(device).requires_grad_()
    sig = sigma.to(device).requires_grad_() if isinstance(sigma, torch.Tensor) else sigma
    out = sk.gaussian_logprob(xs, ms, sig)
    stats = torch.float64 if dtype == torch.float64 else torch.float32
    batch = torch.broadcast_shapes(x.shape[:-1], mean.shape[:-1])
    assert out.dtype == stats and out.shape == batch and out.device.type == device
    xr = x.double().requires_grad_()
    mr = mean.double().requires_grad_()
    sr = sigma.double().requires_grad_() if isinstance(sigma, torch.Tensor) else sigma
    ref = gaussian_logprob_reference(xr, mr, sr)
    torch.testing.assert_close(out.double().cpu(), ref, rtol=vr, atol=va)
    w = torch.randn(batch, dtype=torch.float64)
    inputs = [xs, ms] + ([sig] if isinstance(sig, torch.Tensor) else [])
    rinputs = [xr, mr] + ([sr] if isinstance(sr, torch.Tensor) else [])
    grads = torch.autograd.grad((out * w.to(device, out.dtype)).sum(), inputs)
    rgrads = torch.autograd.grad((ref * w).sum(), rinputs)
    for name, g, rg, inp in zip(("x", "mean", "sigma"), grads, rgrads, inputs):
        assert g.shape == inp.shape and g.dtype == inp.dtype, name
        tol = (gr, ga)
        if name == "sigma":
            # sum over broadcast rows of w (q / s^3 - D / s): fp32 error scales with the terms.
            q = ((x.detach().double() - mean.detach().double()) ** 2).sum(-1)
            s = sigma.detach().double().expand(batch)
            terms = (w.abs() * (q / s ** 3 + x.shape[-1] / s)).sum_to_size(sigma.shape)
            tol = (1e-6, 2e-6 * float(terms.max()))
        torch.testing.assert_close(g.double().cpu(), rg, rtol=tol[0], atol=tol[1],
                                   msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 16), (2, 3, 64), (7,), (3, 2, 2, 1000), (0, 8)])
def test_matches_reference(device, dtype, shape):
    x = torch.randn(shape).to(dtype)
    mean = (torch.randn(shape) * 0.5).to(dtype)
    _check(x, mean, 0.33, device)


@pytest.mark.parametrize("sigma_shape", [(), (4, 5), (4, 1), (5,)])
def test_tensor_sigma(device, sigma_shape):
    x, mean = torch.randn(4, 5, 32), torch.randn(4, 5, 32)
    sigma = torch.rand(sigma_shape, dtype=torch.float64) + 0.2
    _check(x, mean, sigma, device)


def test_broadcast_mean(device):
    x = torch.randn(3, 4, 24)
    _check(x, torch.randn(24), 0.7, device)                  # one mean for every row
    _check(x, torch.randn(3, 1, 24), 0.7, device)
    _check(torch.randn(24), torch.randn(3, 24), 1.5, device)


def test_strided_inputs(device):
    big = torch.randn(3, 9, 40, device=device)
    x = big[:, ::2]                                           # strided rows
    mean = torch.randn(3, 5, 40, device=device)
    torch.testing.assert_close(sk.gaussian_logprob(x, mean, 0.5),
                               sk.gaussian_logprob(x.contiguous(), mean, 0.5), rtol=0, atol=0)
    xt = torch.randn(3, 40, 5, device=device).transpose(1, 2)  # last dim strided
    torch.testing.assert_close(sk.gaussian_logprob(xt, mean, 0.5),
                               sk.gaussian_logprob(xt.contiguous(), mean, 0.5), rtol=0, atol=0)


def test_known_value():
    x = torch.zeros(1, 4)
    mean = torch.ones(1, 4)
    # q = 4, sigma = 2: -4 / 8 - 2 log(8 pi)
    torch.testing.assert_close(sk.gaussian_logprob(x, mean, 2.0),
                               torch.tensor([-0.5 - 2 * math.log(8 * math.pi)]))


def test_gradcheck(device):
    x = torch.randn(3, 4, 6, dtype=torch.float64, device=device, requires_grad=True)
    mean = torch.randn(4, 6, dtype=torch.float64, device=device, requires_grad=True)
    sigma = (torch.rand(3, 1, dtype=torch.float64, device=device) + 0.3).requires_grad_()
    assert torch.autograd.gradcheck(sk.gaussian_logprob, (x, mean, sigma))
    assert torch.autograd.gradcheck(lambda a, b: sk.gaussian_logprob(a, b, 0.4), (x, mean))


def test_opcheck(device):
    x = torch.randn(3, 4, 16, device=device, requires_grad=True)
    mean = torch.randn(3, 4, 16, device=device, requires_grad=True)
    sigma = (torch.rand(3, 4, device=device) + 0.5).requires_grad_()
    torch.library.opcheck(torch.ops.softkernels.gaussian_logprob.default, (x, mean, sigma, 1.0))
    torch.library.opcheck(torch.ops.softkernels.gaussian_logprob.default, (x, mean, None, 0.3))
    grad = torch.randn(3, 4, device=device)
    for flags in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(torch.ops.softkernels.gaussian_logprob_backward.default,
                              (grad, x.detach(), mean.detach(), None, 0.3) + flags)


@pytest.mark.parametrize("call,exc,match", [
    (lambda x, m: sk.gaussian_logprob(x.numpy(), m, 1.0), TypeError, r"x must be a torch.Tensor"),
    (lambda x, m: sk.gaussian_logprob(x, m.int(), 1.0), TypeError, r"mean must have dtype in"),
    (lambda x, m: sk.gaussian_logprob(x, m.double(), 1.0), TypeError,
     r"x and mean must have one dtype, got x torch.float32 and mean torch.float64"),
    (lambda x, m: sk.gaussian_logprob(x[0, 0, 0], m, 1.0), ValueError,
     r"must be \[..., D\] tensors, got shapes \(\) and \(2, 3, 8\)"),
    (lambda x, m: sk.gaussian_logprob(x, m[..., :4], 1.0), ValueError,
     r"share a last dimension D >= 1, got shapes \(2, 3, 8\) and \(2, 3, 4\)"),
    (lambda x, m: sk.gaussian_logprob(x, m[:, :2], 1.0), ValueError,
     r"leading shapes of x \(2, 3, 8\) and mean \(2, 2, 8\) do not broadcast"),
    (lambda x, m: sk.gaussian_logprob(x, m, 0.0), ValueError, r"sigma must be in \(0.0, inf\), got 0.0"),
    (lambda x, m: sk.gaussian_logprob(x, m, -1), ValueError, r"sigma .* got -1"),
    (lambda x, m: sk.gaussian_logprob(x, m, math.inf), ValueError, r"sigma .* got inf"),
    (lambda x, m: sk.gaussian_logprob(x, m, "1"), TypeError, r"sigma must be a number"),
    (lambda x, m: sk.gaussian_logprob(x, m, torch.ones(2, 3, dtype=torch.long)), TypeError,
     r"sigma must be a number or a floating-point tensor, got torch.int64"),
    (lambda x, m: sk.gaussian_logprob(x, m, torch.ones(3, 2)), ValueError,
     r"sigma must broadcast to the leading shape \(2, 3\), got shape \(3, 2\)"),
    (lambda x, m: sk.gaussian_logprob(x, m, torch.ones(2, 3, 8)), ValueError,
     r"sigma must broadcast to the leading shape \(2, 3\), got shape \(2, 3, 8\)"),
    (lambda x, m: sk.gaussian_logprob(x, m, torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])),
     ValueError, r"sigma must be finite and > 0, got sigma\[0, 1\] = 0.0"),
    (lambda x, m: sk.gaussian_logprob(x, m, torch.tensor([1.0, math.nan, 1.0])),
     ValueError, r"got sigma\[1\] = nan"),
    (lambda x, m: sk.gaussian_logprob(x, m, 1.0, validate="yes"), TypeError,
     r"validate must be a bool"),
])
def test_bad_arguments(call, exc, match):
    x, m = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    with pytest.raises(exc, match=match):
        call(x, m)


def test_unvalidated_bad_sigma_gives_nan_rows():
    x, m = torch.randn(2, 8), torch.randn(2, 8)
    s = torch.tensor([1.0, -1.0, 0.0, math.inf, math.nan]).reshape(5, 1)
    xs = x.expand(5, 2, 8).clone().requires_grad_()
    out = sk.gaussian_logprob(xs, m, s, validate=False)
    assert torch.isfinite(out[0]).all() and torch.isnan(out[1:]).all()
    out[0].sum().backward()
    assert torch.isfinite(xs.grad[0]).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bad_devices():
    x, m = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"mean is on cuda.* but x is on cpu"):
        sk.gaussian_logprob(x, m.cuda(), 1.0)
    with pytest.raises(ValueError, match=r"sigma is on cuda"):
        sk.gaussian_logprob(x, m, torch.ones(2, 3, device="cuda"))


@pytest.mark.cuda
def test_cuda_matches_cpu():
    for dtype in DTYPES:
        x = torch.randn(5, 7, 2048).to(dtype)
        m = torch.randn(2048).to(dtype)
        a = sk.gaussian_logprob(x, m, 0.3)
        b = sk.gaussian_logprob(x.cuda(), m.cuda(), 0.3)
        torch.testing.assert_close(b.cpu(), a, **dict(zip(("rtol", "atol"), TOL[dtype][0])))
