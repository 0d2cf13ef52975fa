"""Benchmark of the fused soft_embed forward against PyTorch compositions of the same work.

Baselines, measured in the same run on the same inputs:
  eager     the op written with PyTorch ops (softmax, entropy, topk, top-p / min-p on the top-k,
            renormalise, gather, weighted sum);
  compiled  torch.compile of that composition;
  flashinfer (CUDA, when importable) top_k_renorm_probs + gather + weighted sum.
CPU: medians of wall-clock time. CUDA: medians of CUDA-event device times with a cold L2 (a 256 MB
buffer is cleared before each call, which also hides the Python launch overhead), effective GB/s = (logits read once + k rows of E
per row + outputs) / time, and its share of a device-to-device copy measured in the same run.

    python benchmarks/bench_soft_embed.py                 # CPU, the issue's shape grid
    python benchmarks/bench_soft_embed.py --device cuda   # GPU grid
    python benchmarks/bench_soft_embed.py --quick         # a few shapes (make demo, gpu_check)

Results are printed as a table and written into benchmarks/RESULTS.md (a section per device,
replaced on each run) unless --no-write.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import softkernels as sk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import replace_block, commit, machine  # noqa: E402

CFG = dict(temperature=0.6, top_k=30, top_p=0.95, min_p=0.001)  # Soft Thinking's defaults


def eager_soft_embed(logits, emb, k: int, temperature: float, top_k: int, top_p: float,
                     min_p: float):
    """The same computation as soft_embed (no noise), written with PyTorch ops."""
    z = logits.float() / temperature
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    entropy = -(p * logp).sum(-1)
    vals, idx = p.topk(max(top_k, k), dim=-1)          # sorted, descending
    max_prob = vals[:, 0]
    vals = vals[:, :top_k] / vals[:, :top_k].sum(-1, keepdim=True)
    before = vals.cumsum(-1) - vals
    keep = before < top_p
    keep[:, 0] = True
    keep &= vals >= min_p * vals[:, :1]
    w = (vals * keep)[:, :k]
    w = w / w.sum(-1, keepdim=True)
    ids = idx[:, :k]
    embeds = torch.einsum("bk,bkd->bd", w, emb[ids].float()).to(emb.dtype)
    return embeds, ids, w, entropy, max_prob


def flashinfer_soft_embed(logits, emb, k, temperature, top_k, top_p, min_p):  # pragma: no cover
    import flashinfer
    p = torch.softmax(logits.float() / temperature, dim=-1)
    p = flashinfer.sampling.top_k_renorm_probs(p, top_k)
    vals, ids = p.topk(k, dim=-1)
    w = vals / vals.sum(-1, keepdim=True)
    return torch.einsum("bk,bkd->bd", w, emb[ids].float()).to(emb.dtype)


def fused(logits, emb, k, temperature, top_k, top_p, min_p):
    return sk.soft_embed(logits, emb, k=k, temperature=temperature, top_k=top_k, top_p=top_p,
                         min_p=min_p, validate=False)


# --------------------------------------------------------------------------------------------
# Timing

def time_cpu(fn, inputs, reps: int, min_time: float = 0.3) -> float:
    """Median seconds of fn(*inputs), after warm-up."""
    fn(*inputs)
    fn(*inputs)
    samples, t_end = [], time.perf_counter() + min_time
    while len(samples) < reps or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn(*inputs)
        samples.append(time.perf_counter() - t0)
        if len(samples) >= 10 * reps:
            break
    return statistics.median(samples)


_FLUSH = None


def time_cuda(fn, input_sets, reps: int) -> float:
    """Median device seconds of one call, from CUDA events, with a cold L2.

    Before each timed call the GPU clears a 256 MB buffer (evicting the L2); the host enqueues the
    call while that runs, so the events bracket the call's kernels and not the Python / launch
    overhead (like triton.testing.do_bench). Inputs also rotate through input_sets.
    """
    global _FLUSH
    if _FLUSH is None:
        _FLUSH = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    for i in range(3):
        fn(*input_sets[i % len(input_sets)])
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for r in range(reps):
        args = input_sets[r % len(input_sets)]
        _FLUSH.zero_()
        starts[r].record()
        fn(*args)
        ends[r].record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends)) / 1e3


def copy_bandwidth_cuda() -> float:
    """Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    n = 1 << 28  # 256 Mi floats = 1 GiB
    a = torch.empty(n, dtype=torch.float32, device="cuda").uniform_()
    b = torch.empty_like(a)
    t = time_cuda(lambda x, y: y.copy_(x), [(a, b)], 20)
    return 2 * a.numel() * a.element_size() / t


# --------------------------------------------------------------------------------------------

def shapes(device: str, quick: bool):
    dtypes = [torch.float32, torch.bfloat16]
    if device == "cpu":
        if quick:
            return [(16, 151936, 896, 10, torch.float32), (1, 32000, 896, 10, torch.float32),
                    (64, 32000, 2048, 10, torch.bfloat16)]
        return [(B, V, D, 10, dt) for dt, B, V, D in
                itertools.product(dtypes, (1, 16, 64), (32000, 151936), (896, 2048))]
    if quick:
        return [(B, 151936, D, k, dt) for (B, D, k, dt) in
                [(1, 4096, 10, torch.bfloat16), (8, 4096, 10, torch.bfloat16),
                 (64, 4096, 10, torch.bfloat16), (256, 4096, 10, torch.bfloat16),
                 (64, 896, 30, torch.float32), (64, 4096, 10, torch.float32)]] + \
               [(64, 32000, 4096, 10, torch.bfloat16), (64, 128256, 4096, 10, torch.bfloat16)]
    return [(B, V, D, k, dt) for dt, B, V, D, k in
            itertools.product(dtypes, (1, 8, 64, 256), (32000, 128256, 151936), (896, 4096),
                              (10, 30))]


def bytes_moved(B, V, D, k, dt) -> int:
    es = torch.empty((), dtype=dt).element_size()
    # logits once, k rows of E per row, embeds out, ids + weights + stats out
    return B * V * es + B * k * D * es + B * D * es + B * k * (8 + 4) + B * 12


def run(device: str, quick: bool, reps: int):
    torch.manual_seed(0)
    on_cuda = device == "cuda"
    copy_bw = copy_bandwidth_cuda() if on_cuda else None
    compiled = torch.compile(eager_soft_embed, dynamic=True)
    try:
        import flashinfer  # noqa: F401
        have_fi = on_cuda
    except ImportError:
        have_fi = False
    rows = []
    for (B, V, D, k, dt) in shapes(device, quick):
        nbytes = bytes_moved(B, V, D, k, dt)
        # Enough distinct input sets to defeat a 50-60 MB L2 on the GPU.
        n_sets = 1 if not on_cuda else max(2, min(64, (160 << 20) // max(1, B * V * dt.itemsize)))
        emb = torch.randn(V, D, dtype=dt, device=device)
        sets = [((torch.randn(B, V, device=device) * 3).to(dt), emb, k, *CFG.values())
                for _ in range(n_sets)]
        # Check the fused op against the eager composition on these inputs before timing. Tied
        # logits (common in bf16) may be ordered differently by topk, so compare the logit values
        # at the chosen ids rather than the ids.
        got, want = fused(*sets[0]), eager_soft_embed(*sets[0])
        x = sets[0][0]
        assert torch.equal(x.gather(1, got.ids), x.gather(1, want[1])), "fused and eager differ"
        torch.testing.assert_close(got.weights, want[2], rtol=1e-4, atol=1e-5)
        timer = (lambda f: time_cuda(f, sets, reps)) if on_cuda else \
            (lambda f: time_cpu(f, sets[0], reps))
        t_fused = timer(fused)
        t_eager = timer(eager_soft_embed)
        t_comp = timer(compiled)
        t_fi = timer(flashinfer_soft_embed) if have_fi else None
        row = dict(B=B, V=V, D=D, k=k, dtype=str(dt).replace("torch.", ""),
                   fused_us=t_fused * 1e6, eager_us=t_eager * 1e6, compiled_us=t_comp * 1e6,
                   flashinfer_us=None if t_fi is None else t_fi * 1e6,
                   vs_eager=t_eager / t_fused, vs_compiled=t_comp / t_fused,
                   gbps=nbytes / t_fused / 1e9)
        if copy_bw:
            row["pct_copy_bw"] = 100 * nbytes / t_fused / copy_bw
        rows.append(row)
        print(format_row(row), flush=True)
        del sets, emb
    return rows, copy_bw


HEADER = ("| B | V | D | k | dtype | fused (us) | eager (us) | compiled (us) | flashinfer (us) "
          "| x eager | x compiled | GB/s | % copy BW |")


def format_row(r) -> str:
    fi = "-" if r.get("flashinfer_us") is None else f"{r['flashinfer_us']:.1f}"
    pct = f"{r['pct_copy_bw']:.0f}%" if "pct_copy_bw" in r else "-"
    return (f"| {r['B']} | {r['V']} | {r['D']} | {r['k']} | {r['dtype']} | {r['fused_us']:.1f} | "
            f"{r['eager_us']:.1f} | {r['compiled_us']:.1f} | {fi} | {r['vs_eager']:.2f} | "
            f"{r['vs_compiled']:.2f} | {r['gbps']:.1f} | {pct} |")


def results_section(device: str, rows, copy_bw, argv):
    """The RESULTS.md section of this run, as (start marker, end marker, lines)."""
    name = f"soft_embed forward, {device.upper()}"
    start, end = f"<!-- {name} start -->", f"<!-- {name} end -->"
    lines = [start, f"## {name}", "",
             f"- date: {datetime.date.today().isoformat()}",
             f"- machine: {machine(device)}",
             f"- torch {torch.__version__}, softkernels commit {commit()}",
             f"- command: `python benchmarks/bench_soft_embed.py {' '.join(argv)}`".rstrip(),
             f"- config: temperature 0.6, top_k 30, top_p 0.95, min_p 0.001, no noise; "
             f"{'CUDA-event medians of device time, L2 flushed before each call' if device == 'cuda' else 'wall-clock medians'}",
             ]
    if copy_bw:
        lines.append(f"- device-to-device copy bandwidth measured in the same run: "
                     f"{copy_bw / 1e9:.0f} GB/s (read + write)")
    lines += ["", HEADER, "|" + "---|" * 13] + [format_row(r) for r in rows] + ["", end]
    return start, end, lines


def write_results(device: str, rows, copy_bw, argv) -> None:
    start, end, lines = results_section(device, rows, copy_bw, argv)
    replace_block(start, end, "\n".join(lines))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="a few representative shapes")
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement")
    ap.add_argument("--no-write", action="store_true", help="do not update benchmarks/RESULTS.md")
    ap.add_argument("--out", default=None, help="also write the rows as JSON into this folder")
    args = ap.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_soft_embed: --device cuda but torch sees no CUDA device")
    reps = args.reps or (100 if args.device == "cuda" else 7)
    print(f"# soft_embed forward on {machine(args.device)}")
    print(HEADER)
    print("|" + "---|" * 13)
    rows, copy_bw = run(args.device, args.quick, reps)
    if copy_bw:
        print(f"# device-to-device copy bandwidth: {copy_bw / 1e9:.0f} GB/s")
    if not args.no_write:
        write_results(args.device, rows, copy_bw, sys.argv[1:] if argv is None else argv)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"bench_soft_embed_{args.device}.json").write_text(
            json.dumps(dict(rows=rows, copy_bw=copy_bw, machine=machine(args.device)), indent=1))
        _, _, lines = results_section(args.device, rows, copy_bw,
                                      sys.argv[1:] if argv is None else argv)
        (Path(args.out) / f"RESULTS_{args.device}.md").write_text("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main()
