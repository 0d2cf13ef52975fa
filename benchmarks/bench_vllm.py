"""Throughput of soft thinking in vLLM: plain vLLM vs soft-thinking vLLM vs HF patched generate.

Same model (SmolLM2-135M-Instruct, fp32), same process, same chat prompts, exactly N new tokens
per request (vLLM: ignore_eos; HF: min_new_tokens = max_new_tokens), greedy. Soft thinking uses
Soft Thinking's defaults (k 10, T 0.6, top_k 30, top_p 0.95, min_p 0.001), no think-end token,
no budget: every generated token is a soft step (the worst case). "plain vLLM" is a stock engine
(no plug-in: no prompt-embeds path, no logits processor); "soft vLLM" is an engine made with
``softkernels.vllm.engine_kwargs()``. Both vLLM engines run eager (``enforce_eager``; CUDA graphs
and torch.compile are a GPU-session measurement). The variants alternate within each repeat so
that machine drift hits all alike; the table gives medians of tokens/s (generated tokens over
wall time of the whole batch, prefill included).

    make bench-vllm
    .venv-vllm/bin/python benchmarks/bench_vllm.py [--batch-sizes 1 8 32] [--new-tokens 64]
        [--repeats 3] [--write]      # --write appends the table to benchmarks/RESULTS.md

Runs on a GPU too (``--device cuda``: the same script, vLLM's CUDA build).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_generate import PROMPTS  # noqa: E402  (the same prompts as the HF benchmark)
from results import append_to_section, commit, machine  # noqa: E402

SECTION = "## vLLM plug-in throughput"


_OWN = [0.0]


def instrument_plugin():
    """Accumulate the time spent in the plug-in's own per-step work (inputs hook, logits
    processor, sampling hook) into _OWN[0]: its cost as a share of the soft engine's wall time, a
    figure that machine load barely moves."""
    from softkernels.vllm import _worker
    for name in ("before_forward", "apply", "after_sample"):
        fn = getattr(_worker.SoftThinking, name)

        def timed(self, *a, _fn=fn, **kw):
            t = time.perf_counter()
            try:
                return _fn(self, *a, **kw)
            finally:
                _OWN[0] += time.perf_counter() - t
        setattr(_worker.SoftThinking, name, timed)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--no-hf", action="store_true", help="skip the Hugging Face baseline")
    ap.add_argument("--write", action="store_true", help="append the table to RESULTS.md")
    a = ap.parse_args(argv)
    if a.new_tokens < 1 or a.repeats < 1 or min(a.batch_sizes) < 1:
        ap.error("--new-tokens, --repeats and every batch size must be >= 1")

    import vllm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import softkernels as sk
    import softkernels.vllm as skv
    from softkernels.hf.smollm import cache_dir, load_smollm2

    load_smollm2()
    path = str(cache_dir())
    tok = AutoTokenizer.from_pretrained(path)
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                     tokenize=False) for p in PROMPTS]
    common = dict(model=path, dtype="float32", enforce_eager=True, seed=0,
                  max_model_len=512, max_num_seqs=max(a.batch_sizes))
    if a.device == "cpu":
        common["block_size"] = 32
    instrument_plugin()
    plain_llm = vllm.LLM(**common)
    soft_llm = vllm.LLM(**common, **skv.engine_kwargs())
    cfg = sk.SoftThinkingConfig()            # Soft Thinking's defaults, no think-end: all soft
    N = a.new_tokens
    sp_plain = vllm.SamplingParams(temperature=0.0, max_tokens=N, ignore_eos=True)
    sp_soft = vllm.SamplingParams(temperature=0.0, max_tokens=N, ignore_eos=True,
                                  extra_args=skv.request_args(cfg))
    hf = None
    if not a.no_hf:
        hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(a.device).eval()
        sk.patch(hf, cfg)
        tok.padding_side = "left"

    own_share = []

    def run_vllm(llm, sp, B):
        prompts = [texts[i % len(texts)] for i in range(B)]
        own0 = _OWN[0]
        t = time.perf_counter()
        outs = llm.generate(prompts, sp, use_tqdm=False)
        dt = time.perf_counter() - t
        assert all(len(o.outputs[0].token_ids) == N for o in outs)
        if sp is sp_soft:
            own_share.append((_OWN[0] - own0) / dt)
            skv.pop_traces(llm, [o.request_id for o in outs])
        return B * N / dt

    def run_hf(B):
        enc = tok([texts[i % len(texts)] for i in range(B)], return_tensors="pt", padding=True,
                  add_special_tokens=False).to(a.device)
        t = time.perf_counter()
        with torch.no_grad():
            out = hf.generate(**enc, max_new_tokens=N, min_new_tokens=N, do_sample=False)
        dt = time.perf_counter() - t
        assert out.shape[1] - enc.input_ids.shape[1] == N
        return B * N / dt

    rows = []
    for B in a.batch_sizes:
        run_vllm(plain_llm, sp_plain, B)     # warm-up of this batch size
        run_vllm(soft_llm, sp_soft, B)
        res = {"plain": [], "soft": [], "hf": []}
        own_share.clear()
        for _ in range(a.repeats):
            res["plain"].append(run_vllm(plain_llm, sp_plain, B))
            res["soft"].append(run_vllm(soft_llm, sp_soft, B))
            if hf is not None:
                res["hf"].append(run_hf(B))
            gc.collect()
        med = {k: statistics.median(v) if v else float("nan") for k, v in res.items()}
        med["own"] = statistics.median(own_share)
        rows.append((B, med, res))
        print(f"batch {B:3d}: plain vLLM {med['plain']:8.1f} tok/s | soft vLLM "
              f"{med['soft']:8.1f} tok/s ({med['soft'] / med['plain'] - 1:+.1%}) | HF patched "
              f"{med['hf']:8.1f} tok/s (vLLM soft / HF {med['soft'] / med['hf']:.2f}x) | plug-in's "
              f"own work {med['own']:.1%} of soft wall time", flush=True)

    if a.write:
        date = _dt.date.today().isoformat()
        lines = [f"\n### {date}, commit {commit()}, {machine(a.device)}, vllm {vllm.__version__}\n",
                 f"`benchmarks/bench_vllm.py --batch-sizes {' '.join(map(str, a.batch_sizes))} "
                 f"--new-tokens {N} --repeats {a.repeats}` (SmolLM2-135M-Instruct fp32, greedy, "
                 f"{N} new tokens per request, every step soft, eager, medians of {a.repeats})\n",
                 "| batch | plain vLLM tok/s | soft vLLM tok/s | soft vs plain | plug-in's own work "
                 "| HF patched tok/s | vLLM soft / HF |", "|---|---|---|---|---|---|---|"]
        for B, med, _ in rows:
            lines.append(f"| {B} | {med['plain']:.1f} | {med['soft']:.1f} | "
                         f"{med['soft'] / med['plain'] - 1:+.1%} | {med['own']:.1%} | "
                         f"{med['hf']:.1f} | {med['soft'] / med['hf']:.2f}x |")
        append_to_section(SECTION, "Throughput of the vLLM plug-in (softkernels.vllm) against a "
                          "stock vLLM engine and the Hugging Face layer, same process.",
                          "\n".join(lines) + "\n")
        print("appended to benchmarks/RESULTS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
