"""Small CUDA workload for compute-sanitizer (memcheck / racecheck / synccheck / initcheck).

Runs every code path of the CUDA kernels once on small shapes: forward with each noise kind,
single- and multi-slice rows, the prefilter and the exact (radix-select) candidate paths, pools up
to 1024 (> 48 KB of shared memory), hard rows, NaN / -inf / all -inf rows, refused per-row
parameters, misaligned rows and tables, odd D, B = 0 and 1; backward (logits and embedding);
route_step; mix_embeddings, gumbel_logprob, slot_logprob (topk_dirichlet / weight_gaussian),
gaussian_logprob, select_rows and add_rows_. Prints one line per case and "sanitize_check: ok" at the end. Run it under
`PYTORCH_NO_CUDA_MEMORY_CACHING=1` so that every tensor is its own allocation and memcheck sees
overruns precisely.
"""

import math
import sys

import torch

import softkernels as sk


def case(name, fn):
    fn()
    torch.cuda.synchronize()
    print(f"  {name}: ok", flush=True)


def main() -> int:
    assert torch.cuda.is_available(), "needs a CUDA device"
    torch.manual_seed(0)
    dev = "cuda"
    ST = dict(temperature=0.6, top_k=30, top_p=0.95, min_p=0.001)
    noises = [None, sk.Gumbel(), sk.Dirichlet(), sk.Gaussian(0.3, relative=False)]

    def fwd(B, V, D, k, ldtype=torch.bfloat16, edtype=torch.bfloat16, **kw):
        logits = (torch.randn(B, V, device=dev) * 2).to(ldtype)
        emb = torch.randn(V + 1, D, device=dev).to(edtype)
        return sk.soft_embed(logits, emb, k=k, validate=False, **kw)

    for noise in noises:
        nm = type(noise).__name__ if noise else "none"
        case(f"single slice V=3000 {nm}", lambda: fwd(3, 3000, 40, 8, noise=noise, seed=1, **ST))
        case(f"three slices V=20000 {nm}", lambda: fwd(2, 20000, 64, 10, noise=noise, seed=2, **ST))
    case("fp32 / fp16 / fp64", lambda: (fwd(2, 9000, 32, 5, torch.float32, torch.float16, **ST),
                                        fwd(2, 9000, 32, 5, torch.float64, torch.float64, **ST)))
    case("tiny V=1, V=17", lambda: (fwd(1, 1, 8, 1), fwd(3, 17, 8, 17, noise=sk.Gumbel())))
    case("B=0", lambda: fwd(0, 500, 8, 3))
    case("pool 1024, multi-slice", lambda: fwd(2, 17000, 16, 64, top_k=1024, top_p=0.9))
    case("k=1024 (> 48 KB smem)", lambda: fwd(1, 9000, 16, 1024))
    case("pool 300 (bitonic)", lambda: fwd(2, 17000, 16, 10, top_k=300))

    def ties():
        emb = torch.randn(20000, 16, device=dev)
        sk.soft_embed(torch.zeros(2, 20000, device=dev), emb, k=40, validate=False)
        sk.soft_embed(torch.randint(-2, 3, (2, 20000), device=dev).float(), emb, k=10,
                      validate=False, **ST)
    case("ties (prefilter overflow -> radix path)", ties)

    def bad_rows():
        V = 20000
        logits = torch.randn(6, V, device=dev)
        logits[0, 19999] = math.nan
        logits[1, 3] = math.inf
        logits[2] = -math.inf
        logits[3, : V - 2] = -math.inf
        emb = torch.randn(V, 24, device=dev)
        hard = torch.tensor([0, 0, 0, 0, 1, 1], dtype=torch.bool, device=dev)
        hard_ids = torch.tensor([0, 0, 0, 0, 10 ** 7, 5], device=dev)
        temp = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, -2.0], dtype=torch.float64, device=dev)
        for noise in (None, sk.Gumbel()):
            sk.soft_embed(logits, emb, k=5, noise=noise, validate=False, hard=hard,
                          hard_ids=hard_ids, temperature=temp)
            sk.soft_embed(logits, emb, k=5, noise=noise, validate=False, hard=hard)
    case("NaN / inf / masked / bad params / hard rows", bad_rows)

    def misaligned():
        V, D = 10000, 24
        flat = torch.randn(2 * V + 1, device=dev)
        emb = torch.randn((V + 1) * D + 1, device=dev)[1:].view(V + 1, D)
        sk.soft_embed(flat[1:].view(2, V), emb, k=6, validate=False, **ST)
        sk.soft_embed(flat[1:].view(2, V), torch.randn(V, 37, device=dev), k=6, validate=False,
                      noise=sk.Gaussian(0.2, relative=False))
    case("misaligned rows and table, odd D", misaligned)

    def backward():
        for ldtype in (torch.float32, torch.float64):
            for noise in (None, sk.Gumbel(), sk.Gaussian(0.1, relative=False)):
                logits = torch.randn(3, 9000, device=dev, dtype=ldtype, requires_grad=True)
                emb = torch.randn(9000, 16, device=dev, dtype=ldtype, requires_grad=True)
                out = sk.soft_embed(logits, emb, k=4, noise=noise, seed=3, validate=False,
                                    hard=torch.tensor([0, 1, 0], dtype=torch.bool, device=dev))
                loss = out.embeds.sum() + out.weights[:, 0].sum()
                if out.noise is not None:
                    loss = loss + torch.where(torch.isinf(out.noise), 0.0, out.noise).sum()
                loss.backward()
        emb = torch.randn(500, 16, device=dev, dtype=torch.bfloat16, requires_grad=True)
        sk.soft_embed(torch.randn(4, 500, device=dev), emb, k=3).embeds.float().sum().backward()
    case("backward", backward)

    def route():
        state = sk.RouteState.start(300, device=dev)
        for _ in range(3):
            r = sk.route_step(torch.rand(300, device=dev), torch.rand(300, device=dev),
                              torch.randint(0, 9, (300,), device=dev), state, think_end_id=3,
                              cold_stop_entropy=0.5, cold_stop_patience=2, router_threshold=0.3,
                              max_think_tokens=2)
            state = r.state
        sk.route_step(torch.rand(0, device=dev), torch.rand(0, device=dev),
                      torch.zeros(0, dtype=torch.long, device=dev), sk.RouteState.start(0, dev))
    case("route_step", route)

    def mix():
        emb = torch.randn(700, 24, device=dev, requires_grad=True)
        ids = torch.randint(0, 700, (2, 3, 5), device=dev)
        w = torch.softmax(torch.randn(2, 3, 5, device=dev), -1).requires_grad_()
        out = sk.mix_embeddings(emb, ids, w, noise=sk.Gaussian(0.2, relative=False), seed=4,
                                validate=False)
        out.sum().backward()
        sk.mix_embeddings(emb.detach().bfloat16(), ids[0], w.detach()[0], validate=False)
    case("mix_embeddings (+ backward)", mix)

    def logprobs():
        logits = torch.randn(2, 3, 4000, device=dev, requires_grad=True)
        ids = torch.randint(0, 4000, (2, 3, 5), device=dev)
        g = torch.randn(2, 3, 5, device=dev)
        g[..., 4] = -math.inf
        hard = torch.tensor([[False, True, False], [False, False, True]], device=dev)
        lp = sk.gumbel_logprob(logits, ids, g, 0.5, temperature=0.7, hard=hard, validate=False)
        x = torch.randn(2, 3, 32, device=dev, requires_grad=True)
        mean = torch.randn(2, 3, 32, device=dev, requires_grad=True)
        (lp.sum() + sk.gaussian_logprob(x, mean, 0.3).sum()).backward()
    case("gumbel_logprob / gaussian_logprob (+ backward)", logprobs)

    def slot_logprobs():
        for k in (5, 700):
            logits = torch.randn(2, 3, 4000, device=dev, requires_grad=True)
            ids = torch.randint(0, 4000, (2, 3, k), device=dev)
            ids[1, 2, 0] = 4000                   # out of range: a NaN row, never read
            hard = torch.tensor([[False, True, False], [False, False, True]], device=dev)
            gamma = torch.rand(2, 3, k, device=dev)
            gamma[..., 1] = 0.0
            lp = sk.topk_dirichlet_logprob(logits, ids, gamma, 0.7, hard, validate=False)
            lp2 = sk.weight_gaussian_logprob(logits, ids, gamma, 0.7, None, validate=False)
            (lp.nansum() + lp2.nansum()).backward()
    case("topk_dirichlet_logprob / weight_gaussian_logprob (+ backward)", slot_logprobs)

    def iterate():
        logits = torch.randn(3001, 50, device=dev)
        sel = sk.select_rows(sk.max_prob(logits), 0.2)
        sk.add_rows_(logits, torch.randn(3001, 50, device=dev), sel.idx, sel.count)
        sel0 = sk.select_rows(torch.rand(0, device=dev), 0.5)
        sk.add_rows_(torch.randn(0, 4, device=dev), torch.randn(0, 4, device=dev), sel0.idx,
                     sel0.count)
    case("select_rows / add_rows_", iterate)
    print("sanitize_check: ok", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
