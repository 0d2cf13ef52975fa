"""soft_embed against its float64 reference, on fresh random inputs."""

import math

import pytest
import torch

import softkernels as sk
from _compare import assert_matches_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _inputs(B, V, D, device, ldtype=torch.float32, edtype=torch.float32, scale=3.0):
    logits = (torch.randn(B, V) * scale).to(ldtype).to(device)
    emb = torch.randn(V + 3, D).to(edtype).to(device)  # V_e > V: padded vocabularies are legal
    return logits, emb


SOFT_THINKING = dict(temperature=0.6, top_k=30, top_p=0.95, min_p=0.001)


@pytest.mark.parametrize("B,V,D,k", [
    (0, 17, 8, 2), (1, 1, 8, 1), (1, 2, 8, 2), (3, 17, 8, 17), (3, 17, 8, 1), (64, 17, 8, 10),
    (3, 1000, 8, 64), (64, 1000, 896, 10), (1, 151936, 896, 10), (3, 151936, 8, 2),
])
@pytest.mark.parametrize("noise", [None, "gumbel", "dirichlet", "gaussian"])
def test_shapes_and_noise(device, B, V, D, k, noise):
    logits, emb = _inputs(B, V, D, device)
    nz = {None: None, "gumbel": sk.Gumbel(), "dirichlet": sk.Dirichlet(),
          "gaussian": sk.Gaussian(0.33)}[noise]
    kw = dict(k=k, noise=nz, seed=1234, offset=5, **SOFT_THINKING)
    if noise == "dirichlet" and V > 1024:
        kw["top_k"] = 30
    out = sk.soft_embed(logits, emb, **kw)
    assert_matches_reference(out, logits, emb, **kw)


@pytest.mark.parametrize("ldtype", DTYPES)
@pytest.mark.parametrize("edtype", DTYPES)
def test_dtypes(device, ldtype, edtype):
    logits, emb = _inputs(5, 3000, 40, device, ldtype, edtype)
    kw = dict(k=10, **SOFT_THINKING)
    out = sk.soft_embed(logits, emb, **kw)
    assert_matches_reference(out, logits, emb, **kw)


@pytest.mark.parametrize("filters", [
    dict(),                                            # nothing but the k largest
    dict(top_k=5),                                     # top_k < k: zero-weight tail slots
    dict(top_k=1),
    dict(top_k=1000),                                  # top_k near V
    dict(top_k=1024, top_p=0.5),                       # largest pool
    dict(top_p=0.3),
    dict(top_p=0.99, temperature=2.0),
    dict(min_p=0.5),
    dict(min_p=0.999),
    dict(top_k=50, top_p=0.8, min_p=0.05, temperature=0.3),
])
def test_filters(device, filters):
    logits, emb = _inputs(16, 1031, 16, device)
    kw = dict(k=12, **filters)
    out = sk.soft_embed(logits, emb, **kw)
    assert_matches_reference(out, logits, emb, **kw)


def test_per_row_parameters(device):
    B, V = 12, 500
    logits, emb = _inputs(B, V, 24, device)
    kw = dict(
        k=8,
        temperature=torch.rand(B, device=device) * 1.5 + 0.1,
        top_k=torch.randint(0, 40, (B,), device=device),
        top_p=torch.rand(B, device=device) * 0.9 + 0.1,
        min_p=torch.rand(B, device=device) * 0.1,
        seed=torch.randint(0, 2 ** 62, (B,), device=device),
        offset=torch.randint(-2 ** 40, 2 ** 40, (B,), device=device),
    )
    for noise in (None, sk.Gumbel(tau=0.7, scale=0.5), sk.Dirichlet(2.0), sk.Gaussian(0.1)):
        out = sk.soft_embed(logits, emb, noise=noise, **kw)
        assert_matches_reference(out, logits, emb, noise=noise, **kw)
    # Per-row values must act per row: a row alone with scalar parameters gives the same result.
    out = sk.soft_embed(logits, emb, **kw)
    for b in (0, B - 1):
        one = sk.soft_embed(logits[b:b + 1], emb, k=8, temperature=float(kw["temperature"][b]),
                            top_k=int(kw["top_k"][b]), top_p=float(kw["top_p"][b]),
                            min_p=float(kw["min_p"][b]))
        assert torch.equal(one.ids[0], out.ids[b])
        assert torch.equal(one.weights[0], out.weights[b])


def test_exact_ties_prefer_lower_id(device):
    V = 64
    logits = torch.zeros(4, V, device=device)
    logits[:, [5, 9, 40, 41]] = 2.0          # four-way tie at the top
    logits[1, 3] = 2.0                       # a fifth, lower id
    logits[2] = 1.0                          # all equal
    logits[3, ::2] = float("-inf")          # ties among masked and unmasked entries
    emb = torch.randn(V, 8, device=device)
    out = sk.soft_embed(logits, emb, k=3)
    assert out.ids[0].tolist() == [5, 9, 40]
    assert out.ids[1].tolist() == [3, 5, 9]
    assert out.ids[2].tolist() == [0, 1, 2]
    assert out.ids[3].tolist() == [5, 9, 41]
    assert_matches_reference(out, logits, emb, k=3)
    # ties under top_k filtering and a wide mixture
    out = sk.soft_embed(logits, emb, k=10, top_k=4)
    assert_matches_reference(out, logits, emb, k=10, top_k=4)


def test_masked_entries(device):
    B, V = 6, 300
    logits, emb = _inputs(B, V, 8, device)
    mask = torch.rand(B, V, device=device) < 0.9
    logits = logits.masked_fill(mask, float("-inf"))
    logits[0, :] = float("-inf")
    logits[0, 123] = 0.5                    # a single allowed token
    logits[1, :-2] = float("-inf")          # two allowed tokens, k larger than that
    logits[1, -2:] = torch.tensor([0.3, -0.2], device=device)
    logits[2:, 7] = 1.0                     # every row keeps at least one token
    for kw in (dict(k=10), dict(k=10, top_k=5, top_p=0.9), dict(k=4, noise=sk.Gumbel()),
               dict(k=4, noise=sk.Dirichlet(), top_k=20)):
        out = sk.soft_embed(logits, emb, **kw)
        ref = assert_matches_reference(out, logits, emb, **kw)
        # masked tokens never carry weight
        got_logit = logits.gather(1, out.ids)
        assert bool((out.weights[torch.isinf(got_logit)] == 0).all())
        assert out.ids[0, 0] == 123 and out.weights[0, 0] == 1
        assert ref.weights[1, 2:].abs().sum() == 0


def test_k1_without_noise_is_argmax_embedding_bitwise(device):
    for edtype in DTYPES:
        logits, emb = _inputs(33, 2000, 96, device, edtype=edtype)
        out = sk.soft_embed(logits, emb, k=1, **SOFT_THINKING)
        argmax = logits.argmax(-1)
        assert torch.equal(out.ids[:, 0], argmax)
        assert torch.equal(out.embeds, emb[argmax])
        assert bool((out.weights == 1).all())


def test_hard_rows(device):
    B, V = 8, 700
    logits, emb = _inputs(B, V, 32, device, edtype=torch.bfloat16)
    hard = torch.tensor([1, 0, 1, 0, 1, 1, 0, 0], dtype=torch.bool, device=device)
    hard_ids = torch.tensor([3, 0, 699, 0, 12, 0, 0, 0], device=device)
    for noise in (None, sk.Gumbel(), sk.Gaussian(0.5)):
        kw = dict(k=5, noise=noise, hard=hard, **SOFT_THINKING)
        out = sk.soft_embed(logits, emb, **kw)
        assert_matches_reference(out, logits, emb, **kw)
        argmax = logits.argmax(-1)
        assert torch.equal(out.embeds[hard], emb[argmax[hard]])  # bitwise, no noise
        out = sk.soft_embed(logits, emb, hard_ids=hard_ids, **kw)
        assert_matches_reference(out, logits, emb, hard_ids=hard_ids, **kw)
        assert torch.equal(out.ids[hard, 0], hard_ids[hard])
        assert torch.equal(out.embeds[hard], emb[hard_ids[hard]])
        assert bool((out.weights[hard, 0] == 1).all() and (out.weights[hard, 1:] == 0).all())


def test_entropy_and_max_prob_are_over_full_vocab(device):
    logits, emb = _inputs(4, 5000, 8, device)
    out = sk.soft_embed(logits, emb, k=3, top_k=2, top_p=0.1, temperature=0.7)
    p = torch.softmax(logits.double() / 0.7, -1)
    ent = -(p * p.log()).sum(-1)
    assert torch.allclose(out.entropy.double(), ent, rtol=1e-5)
    assert torch.allclose(out.max_prob.double(), p.max(-1).values, rtol=1e-5)


@pytest.mark.parametrize("noise", [None, sk.Gumbel(), sk.Dirichlet(), sk.Gaussian(0.2)])
def test_deterministic_and_batch_invariant(device, noise):
    B, V = 9, 70000  # more than one CPU slice per row
    logits, emb = _inputs(B, V, 64, device)
    seeds = torch.randint(0, 2 ** 31, (B,), device=device)
    offsets = torch.randint(0, 1000, (B,), device=device)
    kw = dict(k=10, noise=noise, top_k=40, top_p=0.9, temperature=0.8)
    a = sk.soft_embed(logits, emb, seed=seeds, offset=offsets, **kw)
    b = sk.soft_embed(logits, emb, seed=seeds, offset=offsets, **kw)
    for x, y in zip(a, b):
        assert (x is None and y is None) or torch.equal(x, y)
    for r in (0, 4, B - 1):
        one = sk.soft_embed(logits[r:r + 1], emb, seed=int(seeds[r]), offset=int(offsets[r]), **kw)
        for x, y in zip(one, a):
            assert (x is None and y is None) or torch.equal(x[0], y[r])


def test_noise_depends_on_seed_and_offset(device):
    logits, emb = _inputs(2, 1000, 16, device, scale=0.5)
    kw = dict(k=8, noise=sk.Gumbel(tau=1.0))
    a = sk.soft_embed(logits, emb, seed=1, offset=0, **kw).weights
    b = sk.soft_embed(logits, emb, seed=2, offset=0, **kw).weights
    c = sk.soft_embed(logits, emb, seed=1, offset=1, **kw).weights
    assert not torch.equal(a, b) and not torch.equal(a, c)


def test_gumbel_statistics():
    # With scale 1, no clamp, and tau -> small, the top slot is a sample from the filtered
    # distribution (Gumbel-max trick): compare frequencies with the probabilities.
    V, N = 6, 6000
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]]).expand(N, V).contiguous()
    emb = torch.eye(V)
    out = sk.soft_embed(logits, emb, k=V, noise=sk.Gumbel(tau=0.05, clamp=None),
                        seed=torch.arange(N), offset=0)
    freq = torch.bincount(out.ids[:, 0], minlength=V).double() / N
    p = torch.softmax(logits[0].double(), 0)
    assert torch.allclose(freq, p, atol=4 * math.sqrt(0.25 / N))


def test_dirichlet_statistics():
    # E[w] = p for the Dirichlet(alpha * p) draw when k covers the support.
    V, N = 5, 4000
    logits = torch.tensor([[1.0, 0.5, 0.0, -0.5, -1.0]]).expand(N, V).contiguous()
    emb = torch.eye(V)
    out = sk.soft_embed(logits, emb, k=V, noise=sk.Dirichlet(alpha=4.0),
                        seed=torch.arange(N), offset=3)
    mean = out.embeds.double().mean(0)       # embeds = w placed by id, since E = I
    p = torch.softmax(logits[0].double(), 0)
    assert torch.allclose(mean, p, atol=0.02)
    assert float(out.embeds.std(0).min()) > 0.01


def test_gaussian_noise_statistics():
    D = 4096
    logits = torch.zeros(1, 4)
    emb = torch.zeros(4, D)
    out = sk.soft_embed(logits, emb, k=1, noise=sk.Gaussian(2.0, relative=False), seed=7)
    x = out.embeds[0].double()
    assert abs(float(x.mean())) < 0.15 and abs(float(x.std()) - 2.0) < 0.1


def test_relative_gaussian_sigma_uses_embedding_rms():
    logits = torch.zeros(1, 4)
    emb = torch.full((4, 1024), 3.0)
    out = sk.soft_embed(logits, emb, k=1, noise=sk.Gaussian(0.5), seed=7)
    assert abs(float((out.embeds[0] - 3.0).std()) - 1.5) < 0.1


def test_philox_known_answers():
    # Random123's known-answer vectors for Philox 4x32-10.
    from softkernels.reference import philox4x32_10
    ctr = torch.tensor([[0, 0, 0, 0], [0xFFFFFFFF] * 4,
                        [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344]])
    key = torch.tensor([[0, 0], [0xFFFFFFFF] * 2, [0xA4093822, 0x299F31D0]])
    want = [[0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8],
            [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD],
            [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]]
    assert philox4x32_10(ctr, key).tolist() == want


def test_noncontiguous_inputs(device):
    logits, emb = _inputs(6, 400, 16, device)
    wide = torch.randn(6, 800, device=device)
    wide[:, ::2] = logits
    strided = wide[:, ::2]
    out = sk.soft_embed(strided, emb.t().contiguous().t(), k=4)
    assert_matches_reference(out, logits, emb, k=4)
    rows = torch.randn(12, 400, device=device)[::2]   # row stride 800
    out = sk.soft_embed(rows, emb, k=4)
    assert_matches_reference(out, rows, emb, k=4)
