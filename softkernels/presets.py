"""Each paper's released settings as a :class:`softkernels.SoftThinkingConfig`, by name.

Every function returns the configuration that the paper's released code and run scripts use
for the soft-thinking phase, and takes keyword overrides with :func:`dataclasses.replace`
semantics: ``soft_thinking(k=5)`` is ``replace(soft_thinking(), k=5)``, validated like any
SoftThinkingConfig; an unknown keyword raises TypeError naming it.

Citations are ``repo@commit:path:line`` into the released repositories:

* ST   = eric-ai-lab/Soft-Thinking@b97407c60d5e (sglang fork under
  ``sglang_soft_thinking_pkg/python/sglang/srt/``, abbreviated ``srt/``)
* RST  = WJMacro/Randomized-Soft-Thinking@4a95b5a58ac8 (same layout)
* SGRPO = zz1358m/SofT-GRPO-master@2b9d8ec6d8f0 (rollout sampler under
  ``Soft-Thinking+noise+loss-main/sglang_soft_thinking_pkg/python/sglang/srt/``, abbreviated
  ``srt/``; trainer under ``verl-0.4.x/``)
* TaH  = thu-nics/TaH@1e07bc3db37b

What a SoftThinkingConfig does not hold (the answer phase's sampling, the token budget of the
whole generation) is given in each docstring as ``generate`` arguments. docs/fidelity.md lists,
per paper, where softkernels still differs from the released code and by how much (measured).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from .hf.config import ColdStop, ConfidenceRouter, IterateHard, SoftThinkingConfig
from .noise import Dirichlet, Gaussian, Gumbel, TopKDirichlet, WeightGaussian

__all__ = ["soft_thinking", "randomized_soft_thinking", "soft_grpo", "soft_tokens_hard_truths",
           "think_router", "think_at_hard"]

_FIELDS = tuple(f.name for f in dataclasses.fields(SoftThinkingConfig))


def _build(fn: str, base: dict, overrides: dict) -> SoftThinkingConfig:
    unknown = [k for k in overrides if k not in _FIELDS]
    if unknown:
        raise TypeError(f"softkernels.presets.{fn}: unknown keyword {unknown[0]!r}; "
                        f"SoftThinkingConfig fields: {', '.join(_FIELDS)}")
    return SoftThinkingConfig(**{**base, **overrides})


def _choice(fn: str, name: str, value, allowed):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"softkernels.presets.{fn}: {name} must be one of "
                         f"{', '.join(repr(a) for a in allowed)}, got {value!r}")
    return value


def soft_thinking(**overrides) -> SoftThinkingConfig:
    """Soft Thinking (Zhang et al., 2025), as in ST's math script ``scripts/st/qwq32b_st_math.sh``.

    =====================  ================================================================
    k = 10                 ST:scripts/st/qwq32b_st_math.sh:8 (``--max_topk 10``)
    temperature = 0.6      ST:scripts/st/qwq32b_st_math.sh:10
    top_p = 0.95           ST:scripts/st/qwq32b_st_math.sh:11
    top_k = 30             ST:scripts/st/qwq32b_st_math.sh:12
    min_p = 0.001          ST:scripts/st/qwq32b_st_math.sh:13
    noise = None           ST:scripts/st/qwq32b_st_math.sh:5-27 (no ``--add_noise_*`` flag;
                           the noises are off by default: ST:run_sglang_softthinking.py:56-57)
    think_end="</think>"   ST:run_sglang_softthinking.py:72 (``--think_end_str`` default)
    ColdStop(0.01, 256,    ST:scripts/st/qwq32b_st_math.sh:18-19; the counter also runs in the
    answer_abort=True)     answer phase and aborts the request: ST:srt/managers/
                           schedule_batch.py:761-769 (thinking: :737-750)
    ties = "keep_all"      ST:srt/layers/sampler.py:149-150 (FlashInfer's top_k_renorm_prob /
                           top_p_renorm_prob keep every token tied at the cut)
    =====================  ================================================================

    The answer phase samples with temperature 0.6, top_p 0.95, top_k 30, min_p 0
    (qwq32b_st_math.sh:14-17) and the whole generation has 32768 new tokens (:9): pass
    ``do_sample=True, temperature=0.6, top_p=0.95, top_k=30, max_new_tokens=32768`` to
    ``generate``. ``think_end`` as a string needs ``patch(model, config, tokenizer=...)``.
    """
    base = dict(k=10, temperature=0.6, top_p=0.95, top_k=30, min_p=0.001, noise=None,
                think_end="</think>", ties="keep_all",
                cold_stop=ColdStop(entropy_threshold=0.01, patience=256, answer_abort=True))
    return _build("soft_thinking", base, overrides)


def randomized_soft_thinking(noise: str = "gumbel", **overrides) -> SoftThinkingConfig:
    """Randomized Soft Thinking (Wu et al., 2025), as in RST's ``scripts/st/st_with_gumbel.sh``
    and ``scripts/st/st_with_dirichlet.sh`` (their AIME 2024/2025 and AMC 23 runs).

    Args:
        noise: ``"gumbel"`` (Gumbel-softmax on the top-k weights) or ``"dirichlet"`` (Dirichlet
            on the filtered distribution, before the top-k cut).

    =====================  ================================================================
    k = 15                 RST:scripts/st/st_with_gumbel.sh:16, st_with_dirichlet.sh:13
                           (their math500 / gpqa_diamond runs use k = 10 and tau = 0.6:
                           st_with_gumbel.sh:46, :64-65; override ``k=10`` for those)
    temperature = 0.6      RST:scripts/st/st_with_gumbel.sh:18, st_with_dirichlet.sh:15
    top_p = 0.95           RST:scripts/st/st_with_gumbel.sh:19, st_with_dirichlet.sh:16
    top_k = 30             RST:scripts/st/st_with_gumbel.sh:20, st_with_dirichlet.sh:17
    min_p = 0.0            RST:scripts/st/st_with_gumbel.sh:21, st_with_dirichlet.sh:18
    Gumbel(tau=0.5,        RST:scripts/st/st_with_gumbel.sh:34-35; ``F.gumbel_softmax(log w,
    scale=1, clamp=None)`` tau)``, no clamp, no factor: RST:srt/layers/sampler.py:236-238
    Dirichlet(alpha=4.0)   RST:scripts/st/st_with_dirichlet.sh:31; concentration alpha * p on
                           the filtered distribution before top-k: RST:srt/layers/
                           sampler.py:221-230
    think_end="</think>"   RST:run_sglang_softthinking.py:66-70
    ColdStop(0.1, 32768,   RST:scripts/st/st_with_gumbel.sh:26-27, st_with_dirichlet.sh:23-24;
    normalized=True,       entropy / ln V: RST:srt/layers/sampler.py:175-176; answer-phase
    answer_abort=True)     abort: RST:srt/managers/schedule_batch.py:2642-2649. With 32768
                           new tokens in all (st_with_gumbel.sh:17) it never fires.
    ties = "keep_all"      RST:srt/layers/sampler.py:205-214 (Soft Thinking's FlashInfer
                           top-k / top-p renorm: every token tied at the cut stays)
    =====================  ================================================================

    The answer phase samples with temperature 0.6, top_p 0.95, top_k 30, min_p 0
    (st_with_gumbel.sh:22-25): ``generate(do_sample=True, temperature=0.6, top_p=0.95, top_k=30,
    max_new_tokens=32768)``. Both noises at once (RST's sampler allows it: sampler.py:221 then
    :236) is the override ``noise=softkernels.DirichletGumbel(alpha=4.0, tau=0.5)``.
    """
    fn = "randomized_soft_thinking"
    kind = _choice(fn, "noise", noise, ("gumbel", "dirichlet"))
    nz = Gumbel(tau=0.5, scale=1.0, clamp=None) if kind == "gumbel" else Dirichlet(alpha=4.0)
    base = dict(k=15, temperature=0.6, top_p=0.95, top_k=30, min_p=0.0, noise=nz,
                think_end="</think>", ties="keep_all",
                cold_stop=ColdStop(entropy_threshold=0.1, patience=32768, answer_abort=True,
                                   normalized=True))
    return _build(fn, base, overrides)


def soft_grpo(noise: str = "gumbel", **overrides) -> SoftThinkingConfig:
    """SofT-GRPO rollouts, as in SGRPO's ``SofT-GRPO-deepscaler-8k.sh``
    (``-dir.sh`` and ``-gau.sh`` for the other noises).

    Args:
        noise: ``"gumbel"`` (their main runs), ``"dirichlet"`` (``-dir``: Dirichlet with alpha 1
            on the k renormalised weights, after top-k) or ``"gaussian"`` (``-gau``, also their
            sampler's default branch: N(w, 0.05^2) on the k weights).

    =====================  ================================================================
    k = 5                  ``max_topk`` is the rollout's top_k: SGRPO:verl-0.4.x/verl/workers/
                           rollout/sglang_rollout/sglang_rollout.py:394, with
                           SofT-GRPO-deepscaler-8k.sh:30 (``rollout.top_k=5``)
    temperature = 1.0      SofT-GRPO-deepscaler-8k.sh:31
    top_p = 0.95           SofT-GRPO-deepscaler-8k.sh:29
    top_k = 5              SofT-GRPO-deepscaler-8k.sh:30
    min_p = 0.0            not set by the script: sglang_rollout.py:418 default
    Gumbel(tau=0.1,        SofT-GRPO-deepscaler-8k.sh:35 (gumbel_softmax_temperature), :40
    scale=1.0,             (noise_factor=1; the trainer config's default is 0.5:
    clamp=(-1.5, 3.0),     verl/trainer/config/ppo_trainer.yaml:132); clamp and
    gprime="soft_grpo")    g' = log(w + 1e-6) + factor * g: SGRPO:srt/layers/sampler.py:184-193
    TopKDirichlet(1.0)     SofT-GRPO-deepscaler-8k-dir.sh:38; alpha 1 on the top-k weights:
                           SGRPO:srt/layers/sampler.py:165-178
    WeightGaussian(0.05)   SofT-GRPO-deepscaler-8k-gau.sh (no noise flag: the default branch),
                           SGRPO:srt/layers/sampler.py:206-215
    think_end="</think>"   sglang_rollout.py:424
    cold_stop = None       early_stopping_entropy_threshold 0.0 (off): sglang_rollout.py:426
    ties = "keep_all"      SGRPO:srt/layers/sampler.py:149-150 (FlashInfer's top_k_renorm_prob /
                           top_p_renorm_prob keep every token tied at the cut)
    =====================  ================================================================

    The answer phase samples with temperature 1, top_p 0.95 and top_k 5 (8k.sh:32-34) for at
    most 8192 response tokens (8k.sh:9): ``generate(do_sample=True, temperature=1.0, top_p=0.95,
    top_k=5, max_new_tokens=8192)``. Their trainer scores the rollouts with the log-prob of the
    noise (:func:`softkernels.gumbel_logprob`, :func:`softkernels.topk_dirichlet_logprob`,
    :func:`softkernels.weight_gaussian_logprob`) on detached input embeddings:
    docs/training.md and docs/fidelity.md say how to match it.
    """
    fn = "soft_grpo"
    kind = _choice(fn, "noise", noise, ("gumbel", "dirichlet", "gaussian"))
    if kind == "gumbel":
        nz = Gumbel(tau=0.1, scale=1.0, clamp=(-1.5, 3.0), gprime="soft_grpo")
    elif kind == "dirichlet":
        nz = TopKDirichlet(alpha=1.0)
    else:
        nz = WeightGaussian(sigma=0.05)
    base = dict(k=5, temperature=1.0, top_p=0.95, top_k=5, min_p=0.0, noise=nz,
                think_end="</think>", cold_stop=None, ties="keep_all")
    return _build(fn, base, overrides)


def soft_tokens_hard_truths(**overrides) -> SoftThinkingConfig:
    """Soft Tokens, Hard Truths (Butt et al., 2025, arXiv:2509.19170): "soft tokens".

    No released code was found; the values follow the paper: the mixture is over the whole
    next-token distribution at CoT temperature 0.5 ("fuzzy tokens": temperature 1e-4, override
    ``temperature=1e-4``), with Gaussian noise on the mixed input embedding. Its scale, 0.33 x
    the RMS of the embedding matrix, is the value :class:`softkernels.Gaussian` documents for this
    paper (its default); it was not re-checked against the paper's text for this preset.

    =====================  ================================================================
    k = None               the whole distribution: k = V, soft_embed's full-vocabulary path
                           (ATen ops over all V tokens; docs/semantics.md). vLLM refuses
                           k=None: pass ``k=1024`` there (the tail beyond the 1024 most likely
                           tokens is then dropped, measured in docs/fidelity.md)
    top_k = 0, top_p = 1,  no filter: every token of the distribution is mixed
    min_p = 0
    temperature = 0.5      the paper's soft-token CoT temperature
    Gaussian(0.33,         noise on the input embedding, relative to the embedding RMS
    relative=True)
    think_end="</think>"   the reasoning models' think-end tag (override per model)
    =====================  ================================================================
    """
    base = dict(k=None, temperature=0.5, top_k=0, top_p=1.0, min_p=0.0,
                noise=Gaussian(sigma=0.33, relative=True), think_end="</think>", cold_stop=None)
    return _build("soft_tokens_hard_truths", base, overrides)


def think_router(threshold: float, **overrides) -> SoftThinkingConfig:
    """ThinkRouter (Xu et al., 2026, arXiv:2602.11683): a thinking step whose top probability is
    below ``threshold`` is taken as a hard (discrete) token, the others are soft.

    No released code was found. The paper builds on Soft Thinking's sampler and Cold Stop and
    tunes one value, the routing threshold, per model on a validation set (hence no default);
    every other value here is :func:`soft_thinking`'s (Soft Thinking's released math script),
    plus ``router=ConfidenceRouter(threshold)``.

    Args:
        threshold: confidence threshold in (0, 1] (``ConfidenceRouter.threshold``).
    """
    st = soft_thinking()
    base = {f: getattr(st, f) for f in _FIELDS}
    base["router"] = ConfidenceRouter(threshold)
    return _build("think_router", base, overrides)


def think_at_hard(threshold: Optional[float] = None, *, decider: Optional[Callable] = None,
                  adapter: Optional[str] = None, **overrides) -> SoftThinkingConfig:
    """Think-at-Hard (TaH): hard decoding with one extra latent iteration for the
    tokens a decider judges hard, as in TaH's ``script/recipes/qwen3_1.7/eval_tah.yaml``.

    Args:
        threshold: the :class:`softkernels.IterateHard` threshold. With ``decider`` it defaults to
            1 - 0.9 = 0.1: TaH iterates when its decider's probability to continue exceeds 0.9
            (TaH:script/recipes/qwen3_1.7/eval_tah.yaml:30, TaH:tah/model/iter_decider.py:300),
            and this preset scores rows with ``1 - decider(h, logits)``. Without a decider
            (score = max_prob of the cumulative logits) there is no TaH value: pass one.
        decider: TaH's decider as a callable ``(hidden_states, logits) -> p_continue [N]`` (the
            preset wraps it as ``1 - p``), or None.
        adapter: the name of TaH's LoRA adapter enabled during iterations, or None.

    =====================  ================================================================
    max_iter = 2           TaH:script/recipes/qwen3_1.7/eval_tah.yaml:10
    top_m = 100            the iteration input's top-M: eval_tah.yaml:13 (``topk: 100``)
    max_think_tokens = 0   TaH decodes hard tokens: no soft thinking (think_end None)
    =====================  ================================================================

    Hard decoding samples with temperature 0.6, top_p 0.95, top_k 20, min_p 0 for 4096 tokens
    (eval_tah.yaml:3-7): ``generate(do_sample=True, temperature=0.6, top_p=0.95, top_k=20,
    max_new_tokens=4096)``.
    """
    fn = "think_at_hard"
    if threshold is None:
        if decider is None:
            raise TypeError(f"softkernels.presets.{fn}: without a decider pass threshold= (the "
                            "max_prob below which a token is hard; TaH has no such value)")
        threshold = 1.0 - 0.9
    wrapped = None
    if decider is not None:
        if not callable(decider):
            raise TypeError(f"softkernels.presets.{fn}: decider must be a callable "
                            f"(hidden_states, logits) -> p_continue, got "
                            f"{type(decider).__name__} {decider!r}")

        def wrapped(hidden_states, logits, _p=decider):
            return 1.0 - _p(hidden_states, logits)

    ih = IterateHard(max_iter=2, threshold=threshold, top_m=100, decider=wrapped, adapter=adapter)
    base = dict(iterate_hard=ih, max_think_tokens=0, think_end=None, cold_stop=None)
    return _build(fn, base, overrides)
