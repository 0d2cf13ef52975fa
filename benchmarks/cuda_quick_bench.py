"""Quick device timing of the CUDA soft_embed (used by benchmarks/gpu_check.sh).

For each shape: the kernel's device time per call (a CUDA graph of calls over rotating input
buffers, replayed and timed with events: no Python or launch overhead), the same through eager
Python calls (validate=False), and an eager PyTorch composition of the same computation. Bytes
moved = logits + the k embedding rows + the output; the floor is bytes / measured copy bandwidth.
The lead's benchmarks/bench_soft_embed.py is the reference benchmark; this is a sanity check.
"""

import argparse
import math
import statistics

import torch

import softkernels as sk

ST = dict(temperature=0.6, top_k=30, top_p=0.95, min_p=0.001)


def _events():
    return torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)


def copy_bandwidth() -> float:
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    ts = []
    for _ in range(10):
        e0, e1 = _events()
        e0.record()
        b.copy_(a)
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1) * 1e-3)
    del a, b
    return 2 * n / statistics.median(ts)


def graph_time(calls, reps=20) -> float:
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for f in calls:
            f()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for f in calls:
            f()
    g.replay()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        e0, e1 = _events()
        e0.record()
        g.replay()
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1) * 1e-3)
    return statistics.median(ts) / len(calls)


def eager_time(calls, reps=5) -> float:
    for f in calls:
        f()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        e0, e1 = _events()
        e0.record()
        for f in calls:
            f()
        e1.record()
        e1.synchronize()
        ts.append(e0.elapsed_time(e1) * 1e-3)
    return statistics.median(ts) / len(calls)


def torch_eager(logits, emb, k, temperature, top_k, top_p, min_p):
    """The same soft token with stock PyTorch ops (no noise)."""
    z = logits.float() / temperature
    logp = torch.log_softmax(z, -1)
    p = logp.exp()
    entropy = -(p * logp).sum(-1)
    vals, idx = p.topk(top_k, -1)
    max_prob = vals[:, 0]
    vals = vals / vals.sum(-1, keepdim=True)
    before = vals.cumsum(-1) - vals
    keep = (before < top_p) & (vals >= min_p * vals[:, :1])
    keep[:, 0] = True
    vals = torch.where(keep, vals, torch.zeros_like(vals))[:, :k]
    w = vals / vals.sum(-1, keepdim=True)
    ids = idx[:, :k]
    embeds = torch.einsum("bk,bkd->bd", w, emb[ids].float()).to(emb.dtype)
    return embeds, ids, w, entropy, max_prob


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="1x151936x4096x10,8x151936x4096x10,64x151936x4096x10,"
                                        "256x128256x4096x10,64x32000x896x30")
    ap.add_argument("--dtypes", default="bf16,fp32")
    args = ap.parse_args()
    dt = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}
    torch.manual_seed(0)
    bw = copy_bandwidth()
    print(f"quick_bench: device {torch.cuda.get_device_name()}, copy bandwidth "
          f"{bw / 1e12:.2f} TB/s (read + write)", flush=True)
    tables = {}
    for spec in args.shapes.split(","):
        B, V, D, k = (int(x) for x in spec.split("x"))
        for dname in args.dtypes.split(","):
            ldtype = dt[dname]
            edtype = torch.bfloat16 if ldtype == torch.float32 else ldtype
            key = (V, D, edtype)
            if key not in tables:
                tables.clear()
                tables[key] = torch.randn(V, D, device="cuda", dtype=edtype)
            emb = tables[key]
            lbytes = B * V * ldtype.itemsize
            nbuf = max(2, min(16, math.ceil(256e6 / max(lbytes, 1))))
            bufs = [(torch.randn(B, V, device="cuda") * 2).to(ldtype) for _ in range(nbuf)]
            calls = [lambda x=x: sk.soft_embed(x, emb, k=k, validate=False, **ST) for x in bufs]
            t_graph = graph_time(calls)
            t_py = eager_time(calls)
            base = [lambda x=x: torch_eager(x, emb, k, **ST) for x in bufs]
            t_torch = eager_time(base, reps=3)
            moved = lbytes + B * k * D * edtype.itemsize + B * D * edtype.itemsize
            floor = moved / bw
            print(f"quick_bench: B={B:<4d} V={V:<6d} D={D:<5d} k={k:<3d} {dname:<4s}: "
                  f"kernel {t_graph * 1e6:8.1f} us ({moved / t_graph / 1e12:.2f} TB/s, "
                  f"{100 * floor / t_graph:3.0f}% of copy bw, floor {floor * 1e6:.1f} us) | "
                  f"python eager {t_py * 1e6:8.1f} us | torch eager {t_torch * 1e6:8.1f} us "
                  f"(x{t_torch / t_graph:.1f} vs kernel)", flush=True)
            del bufs, calls, base
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
