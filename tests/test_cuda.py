"""CUDA kernels against the CPU kernels (and the float64 reference): equal ids, weights and embeds
within fp32 rounding, equal status flags, bitwise batch invariance, CUDA-graph capture and replay,
gradients. Skipped cleanly where there is no CUDA device (the CPU CI machine)."""

import math

import pytest
import torch

import softkernels as sk
from _compare import TOL, _close, assert_matches_reference

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")]

NOISES = {"none": None, "gumbel": sk.Gumbel(tau=0.5), "dirichlet": sk.Dirichlet(4.0),
          "gaussian": sk.Gaussian(0.3, relative=False)}
SOFT_THINKING = dict(temperature=0.6, top_k=30, top_p=0.95, min_p=0.001)


def _to(kw, device):
    return {key: (v.to(device) if isinstance(v, torch.Tensor) else v) for key, v in kw.items()}


def _run_both(logits, emb, **kw):
    """The same call on CUDA and on CPU. emb: a tensor or a (cpu, cuda) pair of one table."""
    emb_cpu, emb_gpu = emb if isinstance(emb, tuple) else (emb.cpu(), emb.cuda())
    gpu = sk.soft_embed(logits.cuda(), emb_gpu, **_to(kw, "cuda"))
    cpu = sk.soft_embed(logits.cpu(), emb_cpu, **_to(kw, "cpu"))
    return gpu, cpu


_TABLES = {}


def _table(rows, D, dtype):
    """A random embedding table as a (cpu, cuda) pair, drawn on the GPU and cached (big tables
    are slow to draw on the CPU)."""
    key = (rows, D, dtype)
    if key not in _TABLES:
        while len(_TABLES) >= 2:
            _TABLES.pop(next(iter(_TABLES)))
        gpu = torch.randn(rows, D, device="cuda", dtype=torch.float32).to(dtype)
        _TABLES[key] = (gpu.cpu(), gpu)
    return _TABLES[key]


def _assert_same(gpu, cpu, emb, what=""):
    stats = cpu.weights.dtype
    assert gpu.ids.device.type == "cuda" and gpu.embeds.dtype == cpu.embeds.dtype
    g_ids, g_w = gpu.ids.cpu(), gpu.weights.cpu()
    c_w = cpu.weights
    if not torch.equal(g_ids, cpu.ids):
        # The only accepted difference: two slots whose (noisy) keys agree to rounding swap places
        # (Gumbel g' within an ulp); then the rows hold the same ids with the same weights.
        bad = (g_ids != cpu.ids).any(1).nonzero().flatten().tolist()
        for b in bad:
            gi, go = g_ids[b].sort()
            ci, co = cpu.ids[b].sort()
            same_set = torch.equal(gi, ci)
            if not (same_set and torch.allclose(g_w[b][go].double(), c_w[b][co].double(),
                                                rtol=1e-4, atol=1e-6)):
                raise AssertionError(f"{what}: ids differ in rows {bad[:8]}; row {b}: cuda "
                                     f"{g_ids[b].tolist()} w {g_w[b].tolist()} / cpu "
                                     f"{cpu.ids[b].tolist()} w {c_w[b].tolist()}")
        keep = torch.ones(g_ids.shape[0], dtype=torch.bool)
        keep[bad] = False
        assert len(bad) <= max(1, g_ids.shape[0] // 50), f"{what}: {len(bad)} rows reordered"
        gpu = type(gpu)(*(x[keep.to(x.device)] if x is not None else None for x in gpu))
        cpu = type(cpu)(*(x[keep] if x is not None else None for x in cpu))
    _close(f"{what} weights", gpu.weights, cpu.weights, stats)
    _close(f"{what} entropy", gpu.entropy, cpu.entropy, stats)
    _close(f"{what} max_prob", gpu.max_prob, cpu.max_prob, stats)
    scale = float(emb.detach().abs().max()) if emb.numel() else 0.0
    # Embeds are sums of weight * row: with fp32 weights (fp32 statistics) the fp32 tolerance
    # applies even to a float64 table (the weights differ between devices at fp32 rounding).
    etol = stats if (emb.dtype == torch.float64 and stats != torch.float64) else emb.dtype
    _close(f"{what} embeds", gpu.embeds, cpu.embeds, etol, scale=scale)
    assert (gpu.noise is None) == (cpu.noise is None)
    if cpu.noise is not None:
        _close(f"{what} noise", gpu.noise, cpu.noise, stats)


def _inputs(B, V, D, ldtype=torch.float32, edtype=torch.float32, scale=3.0):
    """CPU logits and a cached (cpu, cuda) table with V_e = V + 3 rows."""
    logits = (torch.randn(B, V) * scale).to(ldtype)
    return logits, _table(V + 3, D, edtype)


# (B, V, D, k): Qwen / Llama vocabularies, every batch size of the benchmark, a last slice of one
# logit (8193), a V just over two slices, a single-slice V, and k from 1 to 64.
SHAPES = [
    (1, 151936, 4096, 10),
    (8, 151936, 896, 30),
    (64, 151936, 2048, 10),
    (256, 32000, 896, 64),
    (3, 128256, 64, 1),
    (17, 8193, 24, 30),
    (2, 16389, 16, 10),
    (5, 1031, 40, 64),
]
DTYPE_CYCLE = [(torch.bfloat16, torch.bfloat16), (torch.float32, torch.float32),
               (torch.float16, torch.bfloat16), (torch.bfloat16, torch.float32)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}-V{}-D{}-k{}".format(*s))
@pytest.mark.parametrize("noise", list(NOISES))
def test_cuda_matches_cpu_kernel(shape, noise):
    B, V, D, k = shape
    ldtype, edtype = DTYPE_CYCLE[(B + V + k) % len(DTYPE_CYCLE)]
    logits, emb = _inputs(B, V, D, ldtype, edtype)
    kw = dict(k=k, noise=NOISES[noise], seed=torch.randint(0, 2 ** 40, (B,)), offset=7,
              **SOFT_THINKING)
    gpu, cpu = _run_both(logits, emb, **kw)
    _assert_same(gpu, cpu, emb[0], f"{shape} {noise} {ldtype}/{edtype}")


@pytest.mark.parametrize("ldtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("edtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_cuda_dtypes_match_cpu_and_reference(ldtype, edtype):
    logits, emb = _inputs(6, 20000, 72, ldtype, edtype)
    for noise in (None, NOISES["gaussian"]):
        kw = dict(k=12, noise=noise, seed=5, **SOFT_THINKING)
        gpu, cpu = _run_both(logits, emb, **kw)
        _assert_same(gpu, cpu, emb[0], f"{ldtype}/{edtype}")
        if not (edtype == torch.float64 and ldtype != torch.float64):
            # (fp32 weights times an fp64 table miss the fp64 tolerance of the reference check)
            assert_matches_reference(gpu, logits.cuda(), emb[1], **kw)


@pytest.mark.parametrize("case", [
    dict(k=64, top_k=1024, top_p=0.9),          # pool of 1024: radix-select scan and merge paths
    dict(k=1024, temperature=2.0),              # k = pool = 1024: > 48 KB of shared memory
    dict(k=10, top_k=300, min_p=0.01),          # pool between 256 and 1024
    dict(k=30, top_k=1024, noise="dirichlet"),  # Dirichlet over a 1024-token support
    dict(k=16, top_p=0.5),                      # top_p against the full softmax sum
    dict(k=8, top_k=5),                         # zero-weight tail slots
    dict(k=12, min_p=0.999),
])
def test_cuda_pools_and_filters(case):
    case = dict(case)
    noise = NOISES[case.pop("noise", "none")]
    logits, emb = _inputs(4, 151936, 64, torch.bfloat16, torch.float32, scale=1.5)
    gpu, cpu = _run_both(logits, emb, noise=noise, seed=11, offset=3, **case)
    _assert_same(gpu, cpu, emb[0], str(case))


@pytest.mark.parametrize("kind", ["integer_ties", "all_equal", "mostly_masked", "few_finite",
                                  "negative_zero"])
def test_cuda_ties_and_masks(kind):
    B, V = 6, 40000
    if kind == "integer_ties":       # many exact ties: the prefilter overflows -> exact path
        logits = torch.randint(-3, 4, (B, V)).float()
    elif kind == "all_equal":
        logits = torch.zeros(B, V)
    elif kind == "mostly_masked":    # the pool is padded with -inf tokens, ties by id
        logits = torch.randn(B, V).masked_fill(torch.rand(B, V) < 0.999, -math.inf)
        logits[:, 123] = 2.0
    elif kind == "few_finite":
        logits = torch.full((B, V), -math.inf)
        logits[:, 39999] = 0.5
        logits[:, 7] = 0.5
    else:
        logits = torch.randn(B, V) * 0.0   # +0 and -0 must tie (lower id first)
        logits[:, ::3] = -0.0
    emb = torch.randn(V, 32)
    for kw in (dict(k=10, **SOFT_THINKING), dict(k=40, top_k=0), dict(k=5, noise=sk.Gumbel())):
        gpu, cpu = _run_both(logits, emb, **kw)
        _assert_same(gpu, cpu, emb, f"{kind} {kw}")


def test_cuda_status_flags_equal_cpu():
    B, V = 8, 40000
    logits = torch.randn(B, V)
    logits[1, 35000] = math.nan
    logits[2, 5] = math.inf
    logits[3] = -math.inf
    emb = torch.randn(V, 16)
    temperature = torch.tensor([1.0, 1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    top_p = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 7.0, 1.0, 1.0], dtype=torch.float64)
    hard = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1], dtype=torch.bool)
    hard_ids = torch.tensor([0, 0, 0, 0, 0, 0, 10 ** 6, 17])
    for noise in (None, sk.Gumbel()):
        kw = dict(k=4, validate=False, temperature=temperature, top_p=top_p, hard=hard,
                  hard_ids=hard_ids, noise=noise)
        gpu, cpu = _run_both(logits, emb, **kw)
        # raw op for the status flags
        raw = []
        for dev in ("cuda", "cpu"):
            out = torch.ops.softkernels.soft_embed(
                logits.to(dev), emb.to(dev), 4, 1.0, 0, 1.0, 0.0, 0, 0, temperature.to(dev), None,
                top_p.to(dev), None, None, None, hard.to(dev), hard_ids.to(dev),
                1 if noise else 0, 0.5, 1.0, -1.5, 3.0, 0.0, 0.0, 4)
            raw.append(out[6].cpu())
        assert torch.equal(raw[0], raw[1]), (raw[0], raw[1])
        assert raw[1].tolist() == [0, 1, 1, 2, 4, 4, 8, 0]
        bad = raw[1] != 0
        for name in ("weights", "embeds", "entropy", "max_prob"):
            g, c = getattr(gpu, name).cpu(), getattr(cpu, name)
            assert torch.isnan(g[bad]).all() and torch.isnan(c[bad]).all(), name
        assert torch.equal(gpu.ids.cpu(), cpu.ids)
        good = ~bad
        _close("weights", gpu.weights[good.cuda()], cpu.weights[good], torch.float32)
        assert torch.equal(gpu.embeds[7].cpu(), emb[17])  # hard row: bit for bit


@pytest.mark.parametrize("noise", list(NOISES))
def test_cuda_batch_invariance_and_determinism(noise):
    B, V, D = 64, 151936, 256
    logits = (torch.randn(B, V, device="cuda") * 2).to(torch.bfloat16)
    emb = torch.randn(V, D, device="cuda", dtype=torch.bfloat16)
    seeds = torch.randint(0, 2 ** 31, (B,), device="cuda")
    offsets = torch.randint(0, 1000, (B,), device="cuda")
    kw = dict(k=10, noise=NOISES[noise], **SOFT_THINKING)
    if noise == "dirichlet":
        kw["top_k"] = 40
    a = sk.soft_embed(logits, emb, seed=seeds, offset=offsets, **kw)
    b = sk.soft_embed(logits, emb, seed=seeds, offset=offsets, **kw)
    for x, y in zip(a, b):
        assert (x is None and y is None) or torch.equal(x, y)
    for r in (0, 1, 31, B - 1):
        one = sk.soft_embed(logits[r:r + 1], emb, seed=int(seeds[r]), offset=int(offsets[r]), **kw)
        for x, y in zip(one, a):
            assert (x is None and y is None) or torch.equal(x[0], y[r])
    sub = torch.tensor([5, 2, 40], device="cuda")  # another batch holding the same rows
    part = sk.soft_embed(logits[sub], emb, seed=seeds[sub], offset=offsets[sub], **kw)
    for x, y in zip(part, a):
        assert (x is None and y is None) or torch.equal(x, y[sub])


def test_cuda_misaligned_rows_give_the_same_bits():
    B, V, D = 4, 20000, 64
    flat = torch.randn(B * V + 1, device="cuda")
    shifted = flat[1:].view(B, V)            # rows start 4 bytes past a 16-byte boundary
    packed = shifted.clone()
    eflat = torch.randn((V + 1) * D + 1, device="cuda").to(torch.bfloat16)
    emb_shifted = eflat[1:].view(V + 1, D)   # table rows misaligned too
    emb_packed = emb_shifted.clone()
    kw = dict(k=10, **SOFT_THINKING)
    a = sk.soft_embed(shifted, emb_shifted, **kw)
    b = sk.soft_embed(packed, emb_packed, **kw)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.weights, b.weights)
    assert torch.equal(a.entropy, b.entropy) and torch.equal(a.max_prob, b.max_prob)
    assert torch.equal(a.embeds, b.embeds)
    # odd D: the scalar mixture path
    emb_odd = torch.randn(V, 37, device="cuda")
    g = sk.soft_embed(packed, emb_odd, noise=NOISES["gaussian"], seed=2, **kw)
    c = sk.soft_embed(packed.cpu(), emb_odd.cpu(), noise=NOISES["gaussian"], seed=2, **kw)
    _assert_same(g, c, emb_odd.cpu(), "odd D")


def test_cuda_k1_is_argmax_embedding_bitwise():
    for edtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        logits = torch.randn(33, 151936, device="cuda")
        emb = torch.randn(151936, 96, device="cuda").to(edtype)
        out = sk.soft_embed(logits, emb, k=1, **SOFT_THINKING)
        argmax = logits.argmax(-1)
        assert torch.equal(out.ids[:, 0], argmax)
        assert torch.equal(out.embeds, emb[argmax])


def test_cuda_batch_sizes_zero_and_one():
    emb = torch.randn(1000, 8, device="cuda")
    out = sk.soft_embed(torch.randn(0, 1000, device="cuda"), emb, k=3)
    assert out.embeds.shape == (0, 8) and out.ids.shape == (0, 3)
    logits = torch.randn(1, 1000, device="cuda")
    out = sk.soft_embed(logits, emb, k=3)
    assert_matches_reference(out, logits, emb, k=3)


def test_cuda_graph_decode_step_replays_with_fresh_noise():
    torch.manual_seed(0)
    B, V, D = 8, 151936, 512
    dev = "cuda"
    emb = torch.randn(V, D, device=dev, dtype=torch.bfloat16)
    logits = (torch.randn(B, V, device=dev) * 2).to(torch.bfloat16)
    seeds = torch.randint(0, 2 ** 40, (B,), device=dev)
    offsets = torch.zeros(B, dtype=torch.int64, device=dev)
    temperature = torch.full((B,), 0.6, dtype=torch.float64, device=dev)
    hard = torch.zeros(B, dtype=torch.bool, device=dev)
    hard[3] = True
    state = sk.RouteState.start(B, device=dev)
    noise = sk.Gumbel(tau=0.5)

    def step():
        out = sk.soft_embed(logits, emb, k=10, temperature=temperature, top_k=30, top_p=0.95,
                            min_p=0.001, noise=noise, seed=seeds, offset=offsets, hard=hard,
                            validate=False)
        r = sk.route_step(out.entropy, out.max_prob, out.ids[:, 0], state, think_end_id=7,
                          cold_stop_entropy=0.5, cold_stop_patience=2, router_threshold=0.2)
        return out, r

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        g_out, g_route = step()

    previous = None
    for t in range(4):
        offsets.copy_(torch.full((B,), 1000 + t, dtype=torch.int64))  # fresh noise, in place
        logits.copy_((torch.randn(B, V, device=dev) * 2).to(torch.bfloat16))
        graph.replay()
        torch.cuda.synchronize()
        e_out, e_route = step()  # eager, same inputs
        for x, y in zip(g_out, e_out):
            assert torch.equal(x, y)
        for x, y in zip(g_route, e_route):
            if isinstance(x, torch.Tensor):
                assert torch.equal(x, y)
            else:
                for xx, yy in zip(x, y):
                    assert torch.equal(xx, yy)
        if previous is not None:
            assert not torch.equal(g_out.noise, previous)
        previous = g_out.noise.clone()
    # And the graph's result equals the CPU kernel's.
    cpu = sk.soft_embed(logits.cpu(), emb.cpu(), k=10, temperature=temperature.cpu(), top_k=30,
                        top_p=0.95, min_p=0.001, noise=noise, seed=seeds.cpu(),
                        offset=offsets.cpu(), hard=hard.cpu(), validate=False)
    _assert_same(g_out, cpu, emb.cpu(), "graph")


@pytest.mark.parametrize("ldtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("noise", ["none", "gumbel", "gaussian", "dirichlet"])
def test_cuda_gradients_match_cpu(ldtype, noise):
    B, V, D = 12, 20000, 48
    base = torch.randn(B, V, dtype=ldtype) * 3
    base[:, :4] += 12.0            # rows share their top tokens: shared ids in grad_embedding
    emb0 = torch.randn(V + 2, D, dtype=ldtype)
    hard = torch.zeros(B, dtype=torch.bool)
    hard[[2, 7]] = True
    kw = dict(k=7, noise=NOISES[noise], temperature=0.8, top_k=20, top_p=0.95, seed=3, offset=1,
              hard=hard)
    grads = {}
    for dev in ("cuda", "cpu"):
        logits = base.to(dev).requires_grad_()
        emb = emb0.to(dev).requires_grad_()
        out = sk.soft_embed(logits, emb, **_to(kw, dev))
        gen = torch.Generator().manual_seed(5)
        ge = torch.randn(out.embeds.shape, generator=gen, dtype=ldtype).to(dev)
        gw = torch.randn(out.weights.shape, generator=gen, dtype=out.weights.dtype).to(dev)
        loss = (out.embeds * ge).sum() + (out.weights * gw).sum()
        if out.noise is not None:
            gn = torch.randn(out.noise.shape, generator=gen, dtype=out.noise.dtype).to(dev)
            loss = loss + (torch.where(torch.isinf(out.noise), 0.0, out.noise) * gn).sum()
        grads[dev] = [g.cpu() for g in torch.autograd.grad(loss, (logits, emb))]
        if dev == "cuda":  # deterministic: a second backward gives the same bits
            out = sk.soft_embed(logits, emb, **_to(kw, dev))
            loss = (out.embeds * ge).sum() + (out.weights * gw).sum()
            if out.noise is not None:
                loss = loss + (torch.where(torch.isinf(out.noise), 0.0, out.noise) * gn).sum()
            again = [g.cpu() for g in torch.autograd.grad(loss, (logits, emb))]
            assert all(torch.equal(x, y) for x, y in zip(again, grads["cuda"]))
    tol = dict(rtol=1e-4, atol=1e-5) if ldtype == torch.float32 else dict(rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(grads["cuda"][0], grads["cpu"][0], **tol)
    torch.testing.assert_close(grads["cuda"][1], grads["cpu"][1], **tol)


def test_cuda_bf16_embedding_gradient():
    B, V, D = 16, 5000, 64
    logits = (torch.randn(B, V) * 0.5)
    logits[:, 10] += 6.0
    emb0 = torch.randn(V, D).to(torch.bfloat16)
    out_g = {}
    for dev in ("cuda", "cpu"):
        emb = emb0.to(dev).requires_grad_()
        out = sk.soft_embed(logits.to(dev), emb, k=8)
        g = torch.linspace(-1, 1, B * D).view(B, D).to(torch.bfloat16).to(dev)
        (out_g[dev],) = torch.autograd.grad((out.embeds * g).sum(), (emb,))
    torch.testing.assert_close(out_g["cuda"].cpu().float(), out_g["cpu"].float(),
                               rtol=TOL[torch.bfloat16][0], atol=TOL[torch.bfloat16][1])


def test_cuda_route_step_matches_cpu():
    B = 1000
    gen_state = sk.RouteState.start(B, device="cuda")
    cpu_state = sk.RouteState.start(B)
    for _ in range(30):
        entropy = torch.rand(B) * 0.8
        max_prob = torch.rand(B)
        next_ids = torch.randint(0, 12, (B,))
        cfg = dict(think_end_id=7, cold_stop_entropy=0.3, cold_stop_patience=3,
                   router_threshold=0.3, max_think_tokens=20)
        g = sk.route_step(entropy.cuda(), max_prob.cuda(), next_ids.cuda(), gen_state, **cfg)
        c = sk.route_step(entropy, max_prob, next_ids, cpu_state, **cfg)
        assert torch.equal(g.mode.cpu(), c.mode) and torch.equal(g.token.cpu(), c.token)
        for x, y in zip(g.state, c.state):
            assert torch.equal(x.cpu(), y)
        gen_state, cpu_state = g.state, c.state
