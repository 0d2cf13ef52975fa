"""RL-style rollout through vLLM with soft thinking, then the trainer's forward in Hugging Face.

1. rollout: vLLM (softkernels.vllm plug-in) generates a group of answers per prompt: the first
   ``--think-tokens`` steps are Gumbel-noised soft tokens (SofT-GRPO style), then the budget
   switches the row to sampled hard tokens; vLLM returns the raw log-probability of each sampled
   token (``logprobs=0``), softkernels.vllm.pop_traces the per-step trace;
2. training forward: ``softkernels.soft_inputs_from_trace`` rebuilds the exact input embeddings
   the rollout fed (soft steps: the recorded mixtures), one Hugging Face forward gives the
   policy's logits at every step, and ``softkernels.gumbel_logprob`` scores soft steps (the
   Gumbel log-density of the rollout's draws) and answer tokens (their log-probability) in one
   fused call;
3. a GRPO-style loss on group-normalised rewards and its gradient.

Check printed: with unchanged weights the trainer's log-probability of every answer token equals
the one vLLM sampled it with (|ratio - 1| small: the engines' fp32 logits differ in the last
bits), and the soft steps' recovered Gumbel draws are finite.

    .venv-vllm/bin/python examples/vllm_rollout.py [--prompts 2] [--group 4] [--new-tokens 24]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

QUESTIONS = ["What is 3 + 4?", "What is 6 times 7?", "What is 10 minus 3?", "What is 9 + 9?"]


def _positive(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description="RL-style soft-thinking rollout through vLLM")
    ap.add_argument("--prompts", type=_positive, default=2)
    ap.add_argument("--group", type=_positive, default=4, help="rollouts per prompt")
    ap.add_argument("--new-tokens", type=_positive, default=24)
    ap.add_argument("--think-tokens", type=_positive, default=8)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    if a.think_tokens >= a.new_tokens:
        ap.error("--think-tokens must be smaller than --new-tokens")

    import vllm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import softkernels as sk
    import softkernels.vllm as skv
    from softkernels.hf.smollm import cache_dir, load_smollm2

    load_smollm2()
    path = str(cache_dir())
    tok = AutoTokenizer.from_pretrained(path)
    llm = vllm.LLM(model=path, dtype="float32", enforce_eager=True, block_size=32,
                   max_model_len=512, seed=a.seed, **skv.engine_kwargs())

    # 1. rollouts: every row gets its own seed (its own Gumbel draws)
    gumbel = sk.Gumbel(tau=0.5)
    prompts, params = [], []
    for i in range(a.prompts):
        text = tok.apply_chat_template([{"role": "user", "content": QUESTIONS[i % 4]}],
                                       add_generation_prompt=True, tokenize=False)
        for g in range(a.group):
            cfg = sk.SoftThinkingConfig(k=8, noise=gumbel, max_think_tokens=a.think_tokens,
                                        seed=a.seed * 10_007 + i * a.group + g)
            prompts.append(text)
            # answer tokens sampled from softmax(logits) exactly: T = 1, no top-k / top-p
            params.append(vllm.SamplingParams(temperature=1.0, top_p=1.0, top_k=0,
                                              max_tokens=a.new_tokens, logprobs=0,
                                              seed=a.seed + i * a.group + g,
                                              extra_args=skv.request_args(cfg)))
    outs = llm.generate(prompts, params, use_tqdm=False)
    traces = skv.pop_traces(llm, [o.request_id for o in outs])

    # 2. the trainer's forward, one rollout at a time (no padding needed)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    emb = model.get_input_embeddings()
    worst, soft_steps, lps, rewards = 0.0, 0, [], []
    for o in outs:
        tr = traces[o.request_id]
        gen = list(o.outputs[0].token_ids)
        T = min(tr.num_steps, len(gen))
        seq = torch.tensor([list(o.prompt_token_ids) + gen[:T]])
        P = tr.prompt_length
        x = sk.soft_inputs_from_trace(tr, emb, seq)                # [1, P + T, D]
        logits = model(inputs_embeds=x, use_cache=False).logits[:, P - 1:P + T - 1]
        hard = tr.mode[:, :T] != 1
        ids = tr.ids[:, :T].clone()
        ids[..., 0] = torch.where(hard, seq[:, P:], ids[..., 0])
        lp = sk.gumbel_logprob(logits, ids, tr.noise[:, :T], gumbel.tau, 1.0, gumbel.clamp,
                               hard, scale=gumbel.scale)          # [1, T]
        lps.append(lp.sum())
        soft_steps += int((~hard).sum())
        # answer tokens: vLLM's sampling log-probability vs the trainer's
        for t in range(T):
            if bool(hard[0, t]) and o.outputs[0].logprobs:
                old = o.outputs[0].logprobs[t][gen[t]].logprob
                worst = max(worst, abs(float(torch.exp(lp[0, t].detach() - old)) - 1))
        rewards.append(float("7" in o.outputs[0].text or "42" in o.outputs[0].text))
        assert torch.isfinite(lp).all(), "a log-probability is not finite"

    # 3. GRPO-style objective on group-normalised rewards
    r = torch.tensor(rewards).view(a.prompts, a.group)
    adv = ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).flatten()
    loss = -(torch.stack(lps) * adv).mean()
    loss.backward()
    grad = sum(float(p.grad.norm()) ** 2 for p in model.parameters() if p.grad is not None) ** 0.5
    res = {"rollouts": len(outs), "soft_steps": soft_steps, "max_ratio_dev": worst,
           "reward_mean": float(r.mean()), "loss": loss.item(), "grad_norm": grad}
    print("RESULT", json.dumps(res))
    print(f"{len(outs)} rollouts, {soft_steps} soft steps; answer tokens: max |exp(trainer lp - "
          f"vLLM lp) - 1| = {worst:.2e}; mean reward {res['reward_mean']:.3f}; loss "
          f"{res['loss']:.4f}; grad norm {grad:.3f}")
    return res


if __name__ == "__main__":
    main(sys.argv[1:])
